"""Certificates the gateway watches: expiry facts (pure) and :class:`CertificateWatch`, the service that reads them.

The watch reads the gateway's certificate and each peer's CA bundle at start and every
:data:`CERTIFICATE_CHECK_INTERVAL`, takes each peer's server certificate from the TLS
handshakes (:meth:`CertificateWatch.peer_certificate_seen`), sets the expiry gauges and
warns 30 days ahead (once a day per role); its :meth:`~CertificateWatch.readiness`
is one of ``/readyz``'s checks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from kei_gateway.config import Config
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.health import CheckResult
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["CertificateInfo", "read_certificate_info", "read_bundle_info", "expiry_warning", "WARN_BEFORE_SECONDS",
           "GATEWAY_ROLE", "peer_role", "ca_role", "CertificateWatch", "CERTIFICATE_CHECK_INTERVAL",
           "EXPIRY_WARNING_REPEAT"]

CERTIFICATE_CHECK_INTERVAL = 6 * 3600.0
EXPIRY_WARNING_REPEAT = 86400.0
"""A certificate's expiry warning repeats at most once a day per role (checks and handshakes are more frequent)."""

GATEWAY_ROLE = "gateway"
"""The ``role`` label of the gateway's own certificate (``tls.certificate``)."""


def peer_role(peer: str) -> str:
    """The ``role`` label of *peer*'s server certificate, as seen in the last verified TLS handshake."""
    return f"peer:{peer}"


def ca_role(peer: str) -> str:
    """The ``role`` label of *peer*'s configured CA bundle (``peers.<name>.ca``): its earliest-expiring certificate."""
    return f"ca:{peer}"

WARN_BEFORE_SECONDS = 30 * 86400


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    not_after: datetime

    @property
    def not_after_timestamp(self) -> float:
        return self.not_after.timestamp()


def read_certificate_info(pem: bytes) -> CertificateInfo:
    """The first certificate of a PEM bundle. Raises ValueError if there is none."""
    cert = x509.load_pem_x509_certificate(pem)
    return CertificateInfo(cert.subject.rfc4514_string(), cert.not_valid_after_utc)


def read_bundle_info(pem: bytes) -> CertificateInfo:
    """The certificate of a PEM bundle that expires first (a CA bundle is only as good as it).

    Raises ValueError if there is none.
    """
    bundle = x509.load_pem_x509_certificates(pem)
    first = min(bundle, key=lambda cert: cert.not_valid_after_utc)
    return CertificateInfo(first.subject.rfc4514_string(), first.not_valid_after_utc)


def expiry_warning(info: CertificateInfo, now: float) -> str | None:
    """``"expired"``, ``"expiring"`` (within 30 days) or None."""
    remaining = info.not_after_timestamp - now
    if remaining <= 0:
        return "expired"
    if remaining <= WARN_BEFORE_SECONDS:
        return "expiring"
    return None


def days_left(info: CertificateInfo, now: float) -> int:
    return int((info.not_after_timestamp - now) // 86400)


def format_utc(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class CertificateWatch(service.Service):
    """Reads the configured certificates now and every :data:`CERTIFICATE_CHECK_INTERVAL`; gauges and warnings.

    *config_source* returns the live configuration (a reload changes the peers and files read).
    :attr:`first_check` fires once the check made at start is done, so ``READY=1`` waits for it.
    """

    log = Logger()

    def __init__(self, config_source: Callable[[], Config], clock: Any, blocking: Blocking,
                 metrics: GatewayMetrics, environ: Mapping[str, str]) -> None:
        self.setName("certificates")
        self.config_source = config_source
        self.clock = clock
        self.blocking = blocking
        self.metrics = metrics
        self.environ = environ
        self.first_check: defer.Deferred[None] = defer.Deferred()
        self._certificate: CertificateInfo | None = None
        self._certificate_error: str | None = None
        self._loop: task.LoopingCall | None = None
        self._expiry_roles: set[str] = set()
        self._expiry_warned: dict[str, float] = {}

    def startService(self) -> None:
        super().startService()
        # The certificate is read before READY=1, so /readyz and the expiry metric are right from the start.
        self.check_certificate().chainDeferred(self.first_check)
        self._loop = task.LoopingCall(self.check_certificate)
        self._loop.clock = self.clock
        self._loop.start(CERTIFICATE_CHECK_INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def check_certificate(self) -> defer.Deferred[None]:
        """Read the gateway's certificate and each peer's CA bundle; set the expiry gauges; warn 30 days ahead."""
        config = self.config_source()
        path = config.file_path(config.tls.certificate, self.environ)

        def read() -> CertificateInfo:
            with open(path, "rb") as f:
                return read_certificate_info(f.read())

        def got(info: CertificateInfo) -> None:
            self._certificate, self._certificate_error = info, None
            self._certificate_expiry(GATEWAY_ROLE, info)

        def failed(failure: Any) -> None:
            self._certificate, self._certificate_error = None, f"{path}: {failure.getErrorMessage()}"
            events.emit(self.log, events.INTERNAL_ERROR, reason=f"cannot read the gateway certificate {path}: {failure.getErrorMessage()}")

        d = self.blocking.run(read).addCallbacks(got, failed)
        return d.addCallback(lambda _: self.check_ca_certificates())

    def check_ca_certificates(self) -> defer.Deferred[None]:
        """Each configured peer's CA bundle: gauge ``role="ca:<peer>"`` = its earliest notAfter; warn 30 days ahead.

        Gauges of peers no longer configured are removed, so the labels stay bounded by the configuration.
        """
        config = self.config_source()
        bundles = {name: config.file_path(peer.ca, self.environ) for name, peer in sorted(config.peers.items())}
        self._forget_unconfigured_roles()

        def read() -> dict[str, CertificateInfo | str]:
            found: dict[str, CertificateInfo | str] = {}
            for name, path in bundles.items():
                try:
                    with open(path, "rb") as f:
                        found[name] = read_bundle_info(f.read())
                except (OSError, ValueError) as error:
                    found[name] = f"{path}: {events.describe_error(error)}"
            return found

        def got(found: dict[str, CertificateInfo | str]) -> None:
            for name, info in found.items():
                if isinstance(info, str):
                    events.emit(self.log, events.INTERNAL_ERROR, peer=name,
                                reason=f"cannot read the CA bundle of peer {name}: {info}")
                else:
                    self._certificate_expiry(ca_role(name), info)

        return self.blocking.run(read).addCallback(got)

    def peer_certificate_seen(self, peer: str, not_after: datetime) -> None:
        """A peer's server certificate passed every TLS check: gauge ``role="peer:<peer>"``; warn 30 days ahead.

        Called from the TLS verify callback of every handshake, so the warning is rate-limited (once a day per role).
        """
        if peer not in self.config_source().peers:
            return
        self._certificate_expiry(peer_role(peer), CertificateInfo(f"peer {peer}", not_after))

    def _certificate_expiry(self, role: str, info: CertificateInfo) -> None:
        self.metrics.certificate_expiry.labels(role=role).set(info.not_after_timestamp)
        self._expiry_roles.add(role)
        now = self.clock.seconds()
        warning = expiry_warning(info, now)
        if warning is None:
            self._expiry_warned.pop(role, None)
            return
        last = self._expiry_warned.get(role)
        if last is not None and now - last < EXPIRY_WARNING_REPEAT:
            return
        self._expiry_warned[role] = now
        if warning == "expired":
            events.emit(self.log, events.CERTIFICATE_EXPIRED, role=role, not_after=format_utc(info.not_after))
        else:
            events.emit(self.log, events.CERTIFICATE_EXPIRING, role=role,
                        days=days_left(info, now), not_after=format_utc(info.not_after))

    def _forget_unconfigured_roles(self) -> None:
        config = self.config_source()
        wanted = {GATEWAY_ROLE} | {role for name in config.peers for role in (peer_role(name), ca_role(name))}
        for role in sorted(self._expiry_roles - wanted):
            self.metrics.certificate_expiry.remove(role)
            self._expiry_roles.discard(role)
            self._expiry_warned.pop(role, None)

    def readiness(self) -> CheckResult:
        """The ``certificate`` check of ``/readyz``: read, and not expired."""
        if self._certificate is None:
            return CheckResult("certificate", False, self._certificate_error or "not read yet")
        if expiry_warning(self._certificate, self.clock.seconds()) == "expired":
            return CheckResult("certificate", False, f"expired {format_utc(self._certificate.not_after)}")
        return CheckResult("certificate", True, f"valid until {format_utc(self._certificate.not_after)}")
