"""Listeners: an allow-list guard around any protocol factory, and the metrics/health site."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from kei_gateway.core.allowlist import Network, address_allowed
from kei_gateway.runtime import events
from kei_gateway.runtime.health import HealthChecks, HealthReport
from kei_gateway.runtime.metrics import CONTENT_TYPE_LATEST, exposition

__all__ = ["AllowListFactory", "PerSourceLimit", "metrics_site", "MetricsResource", "HealthResource"]


class AllowListFactory(Factory):
    """Wraps a factory: connections from outside the allow-list get no protocol.

    Twisted closes a connection whose factory returns None from ``buildProtocol``
    at once, so nothing of the request is ever read. The allow-list is fetched per
    connection from *allowed*, so a reloaded configuration applies to the next one.
    """

    log = Logger()
    noisy = False

    def __init__(self, wrapped: Any, listener: str, allowed: Callable[[], Iterable[Network]],
                 on_denied: Callable[[str, str], None], log_each: bool = True) -> None:
        self.wrapped = wrapped
        self.listener = listener
        self._allowed = allowed
        self._on_denied = on_denied
        self._log_each = log_each
        """False: *on_denied* logs (the push listener logs once per burst)."""

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        host = str(getattr(addr, "host", ""))
        if not address_allowed(host, self._allowed()):
            self._on_denied(self.listener, host)
            if self._log_each:
                events.emit(self.log, events.LISTENER_DENIED, listener=self.listener, source=host, reason="address")
            return None
        return self.wrapped.buildProtocol(addr)  # type: ignore[no-any-return, return-value]


class _SourceCounted(ProtocolWrapper):
    source = ""


class PerSourceLimit(WrappingFactory):
    """Wraps a factory: at most ``limit()`` connections open at once from one source address.

    A connection over the limit gets no protocol (closed at once, before anything — a TLS
    handshake included — is read) and *on_refused(source, limit)* is called. Twisted's own
    ``LimitConnectionsByPeer`` indexes addresses as tuples, which ``IPv4Address`` no longer is.
    The count lives only while connections are open: one entry per source with one open.
    """

    protocol = _SourceCounted
    noisy = False

    def __init__(self, wrapped: Any, limit: Callable[[], int], on_refused: Callable[[str, int], None]) -> None:
        super().__init__(wrapped)
        self._limit = limit
        self._on_refused = on_refused
        self.open_by_source: Counter[str] = Counter()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        host = str(getattr(addr, "host", ""))
        limit = self._limit()
        if self.open_by_source[host] >= limit:
            self._on_refused(host, limit)
            return None
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        wrapper = _SourceCounted(self, inner)  # type: ignore[arg-type]
        wrapper.source = host
        self.open_by_source[host] += 1
        return wrapper

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        host = getattr(p, "source", "")
        self.open_by_source[host] -= 1
        if self.open_by_source[host] <= 0:
            del self.open_by_source[host]


class MetricsResource(resource.Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return exposition(self._registry)


class HealthResource(resource.Resource):
    """JSON health report: 200 when every check passes, else 503."""

    isLeaf = True

    def __init__(self, check: Callable[[], Any]) -> None:
        super().__init__()
        self._check = check

    def render_GET(self, request: Any) -> int:
        def respond(report: HealthReport) -> None:
            request.setResponseCode(200 if report.ok else 503)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.write(json.dumps(report.as_json(), sort_keys=True).encode() + b"\n")
            request.finish()

        d = self._check()
        d.addCallback(respond)
        d.addErrback(lambda failure: (request.setResponseCode(503), request.finish()))
        return server.NOT_DONE_YET  # type: ignore[no-any-return]


class _QuietSite(server.Site):
    """No access log: Prometheus scrapes every few seconds, and the journal is for events."""

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


class _Root(resource.Resource):
    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return resource.NoResource("Try /metrics, /healthz or /readyz.")


def metrics_site(registry: CollectorRegistry, health: HealthChecks) -> server.Site:
    """The site of the metrics listener: /metrics, /healthz, /readyz."""
    root = _Root()
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"healthz", HealthResource(health.healthz))
    root.putChild(b"readyz", HealthResource(health.readyz))
    return _QuietSite(root)
