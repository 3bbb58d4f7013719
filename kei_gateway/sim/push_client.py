"""The MPN simulator's push client: ``PUT {push_url}/{name}`` over mutual TLS, with bounded retries.

A real joint-use centre pushes 速報 files to the city's LGWAN listener (SPEC §5).
This client does the same for the simulator: it presents the simulator's client
certificate, verifies the gateway's server certificate against the given CA and
the host in the URL (TLS 1.2 minimum), and retries on connection errors and on
``503``/``429`` (waiting at least the ``Retry-After`` the gateway asked for),
with exponential back-off (:func:`push_backoff`), at most ``attempts`` times.

Every attempt's outcome is kept in :class:`PushOutcome` (status codes, or
``error:<type>`` for a connection that failed), for tests. The client never
raises for a failed push: the caller decides what to do with a file that could
not be delivered (the MPN personality leaves it in ``results/`` for the gateway
to pull, so nothing is lost).

Like the rest of :mod:`kei_gateway.sim`, it deliberately does not use the
gateway's own transport code: the simulator is a second, independent peer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as _Protocol
from twisted.internet.ssl import (
    Certificate, PrivateCertificate, TLSVersion, optionsForClientTLS, trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IPolicyForHTTPS
from zope.interface import implementer

from kei_gateway.adapters.transport import parse_retry_after
from kei_gateway.adapters.transport.webdav import BytesBody

__all__ = ["PushOutcome", "Pusher", "PushClient", "ClientTLSPolicy", "push_backoff",
           "RETRY_STATUSES"]

RETRY_STATUSES = frozenset({429, 503})
"""Statuses worth another attempt (with ``Retry-After`` honoured); any other non-2xx status is final."""
MAX_RETRY_AFTER = 600.0
"""A ``Retry-After`` longer than this is waited as this (a simulator should not sleep for hours)."""

log = Logger(namespace="kei_gateway.sim.push")


@dataclass(frozen=True)
class PushOutcome:
    """What happened to one push: every attempt's status (``"201"``, ``"503"``, ``"error:ConnectError"``)."""

    name: str
    url: str
    statuses: tuple[str, ...]
    delivered: bool
    """True when the last attempt got a 2xx (201 created, 204 already there with the same content)."""

    @property
    def attempts(self) -> int:
        return len(self.statuses)


class Pusher(Protocol):
    """What the MPN personality needs from a push client (a fake in unit tests)."""

    def push(self, name: str, data: bytes) -> Deferred[PushOutcome]: ...


def push_backoff(attempt: int, first_delay: float, max_delay: float) -> float:
    """Seconds to wait after failed attempt number *attempt* (1-based): first·2^(n−1), at most *max_delay*."""
    if attempt < 1:
        raise ValueError("attempts are numbered from 1")
    return float(min(max_delay, first_delay * 2 ** (attempt - 1)))


def _certificates(pem: bytes) -> list[Certificate]:
    return [Certificate(crypto.X509.from_cryptography(c)) for c in x509.load_pem_x509_certificates(pem)]


@implementer(IPolicyForHTTPS)
class ClientTLSPolicy:
    """TLS for the push: our client certificate, the server verified against *ca_pem* and the URL's host."""

    def __init__(self, client_cert_pem: bytes, client_key_pem: bytes, ca_pem: bytes) -> None:
        leaf = x509.load_pem_x509_certificates(client_cert_pem)[0]
        self._client = PrivateCertificate.loadPEM(leaf.public_bytes(Encoding.PEM) + client_key_pem)
        self._trust = trustRootFromCertificates(_certificates(ca_pem))

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust, clientCertificate=self._client,
                                   extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2})


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class _Discard(_Protocol):
    """Reads and drops a response body; ``done`` fires when it ends (however it ends)."""

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.callback(None)


class PushClient:
    """``push(name, data)`` → ``PUT {push_url}/{name}``; see the module docstring.

    *agent* replaces the real Agent (unit tests); *clock* drives waits and timeouts.
    """

    def __init__(self, clock: IReactorTime, push_url: str, *, agent: IAgent, attempts: int = 5,
                 first_delay: float = 1.0, max_delay: float = 30.0, timeout: float = 60.0) -> None:
        if attempts < 1:
            raise ValueError("push attempts must be at least 1")
        self._clock = clock
        self.push_url = push_url.rstrip("/")
        self._agent = agent
        self.attempts = attempts
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.timeout = timeout

    @classmethod
    def over_tls(cls, reactor: Any, push_url: str, client_cert_pem: bytes, client_key_pem: bytes, ca_pem: bytes,
                 **settings: Any) -> PushClient:
        """The real client: a Twisted Agent with :class:`ClientTLSPolicy`, no persistent connections."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        pool._factory = _QuietClientFactory  # no "Starting factory" line per connection
        agent = Agent(reactor, contextFactory=ClientTLSPolicy(client_cert_pem, client_key_pem, ca_pem), pool=pool)
        return cls(reactor, push_url, agent=agent, **settings)

    def url_for(self, name: str) -> str:
        return f"{self.push_url}/{quote(name)}"

    def push(self, name: str, data: bytes) -> Deferred[PushOutcome]:
        return Deferred.fromCoroutine(self._push(name, data))

    async def _push(self, name: str, data: bytes) -> PushOutcome:
        url = self.url_for(name)
        statuses: list[str] = []
        for attempt in range(1, self.attempts + 1):
            wait: float | None = None
            try:
                code, retry_after = await self._attempt(url, data)
            except Exception as error:  # connection refused/reset, TLS failure, timeout: all worth a retry
                statuses.append(f"error:{type(error).__name__}")
            else:
                statuses.append(str(code))
                if 200 <= code < 300:
                    return PushOutcome(name, url, tuple(statuses), True)
                if code not in RETRY_STATUSES:
                    break
                wait = retry_after
            if attempt == self.attempts:
                break
            delay = push_backoff(attempt, self.first_delay, self.max_delay)
            if wait is not None:
                delay = max(delay, min(wait, MAX_RETRY_AFTER))
            log.info("mpn push of {name}: attempt {attempt} got {status}; retrying in {delay:.1f}s",
                     name=name, attempt=attempt, status=statuses[-1], delay=delay)
            await task.deferLater(self._clock, delay, lambda: None)
        return PushOutcome(name, url, tuple(statuses), False)

    async def _attempt(self, url: str, data: bytes) -> tuple[int, float | None]:
        headers = Headers({b"content-type": [b"application/octet-stream"]})
        d = self._agent.request(b"PUT", url.encode("ascii"), headers, BytesBody(data))
        d.addTimeout(self.timeout, self._clock)
        response = await d
        drain = _Discard()
        response.deliverBody(drain)
        finished = drain.done
        finished.addTimeout(self.timeout, self._clock)
        await finished
        retry_after = parse_retry_after(_first(response.headers.getRawHeaders(b"retry-after")),
                                          self._clock.seconds())
        return int(response.code), retry_after


def _first(values: Sequence[bytes] | None) -> bytes | None:
    return values[0] if values else None

