"""Certificate facts the gateway watches: expiry (metrics and warnings)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509

__all__ = ["CertificateInfo", "read_certificate_info", "read_bundle_info", "expiry_warning", "WARN_BEFORE_SECONDS",
           "GATEWAY_ROLE", "peer_role", "ca_role"]

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
