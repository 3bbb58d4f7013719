"""The LGWAN push listener (SPEC §5): ``PUT /push/<flow>/<name>`` over mutual TLS.

A peer that pushes (the MPN centre's 速報) connects to ``[listeners.push] address``.
Each connection passes, in order:

1. **Address** — outside every peer's ``push_allow``: closed before the TLS handshake
   (:class:`~kei_gateway.runtime.listeners.AllowListFactory`, reason ``address``).
2. **TLS** — the gateway presents ``tls.certificate``; the client must present a
   certificate chaining to the ``ca`` of a peer whose ``push_allow`` holds the source
   address, and matching that peer's ``pins`` if it has any. Otherwise the handshake
   fails (reasons ``no_certificate``, ``certificate``, ``pin``, ``handshake``).
   Connections from one address beyond ``max_connections_per_source`` are closed before
   the handshake too (:class:`~kei_gateway.runtime.listeners.PerSourceLimit`, ``connections``).
3. **Headers** — complete within ``header_timeout`` of the connection (or of a further
   request's first byte), else ``408`` (``header_timeout``); at most ``max_header_bytes`` and
   ``max_headers``, else ``431`` (``header_size``, ``header_count``); what Twisted itself
   refuses as malformed is its ``400`` (``bad_request``). Each is answered and closed at once.
4. **Request** — ``/push/<flow>/<name>`` with a known push flow and a spool name
   (else ``404``, reason ``path``), method ``PUT`` (else ``405``, ``method``), a flow
   whose ``peer`` is the peer so identified (else ``403``, ``flow``), a body of at most
   :data:`MAX_PUSH_BYTES` (else ``413``, ``too_large``), a free slot (``max_pushes``, half
   of them per source, else ``503``, ``busy``).
5. **Body** — at least ``min_body_rate`` bytes a second over each :data:`BODY_RATE_WINDOW`
   (else ``408``, ``slow_body``; a window in which the gateway itself paused the
   connection does not count). A connection silent for :data:`IDLE_TIMEOUT` is closed by
   Twisted (``idle_timeout``, counted unless it sat idle after a finished request).

Every refusal is counted in ``kei_gateway_denied_connections_total{listener="push",reason}``
and logged once per burst (:class:`~kei_gateway.runtime.bursts.BurstLog`).

The body is streamed into the encrypted store and validated on the way
(:class:`~kei_gateway.flows.inbound.intake.StreamIntake`; Twisted's own request spooling,
which would write large bodies to an unencrypted temporary file, is never used).
Then: a known name with the same SHA-256 → ``204`` (the new blob is deleted); a
known name with other content → ``409``; an invalid file → quarantined and ``422``
with the (masked) errors; else the inbound transfer is committed ``VALIDATED`` and
the answer is ``201``, after which the flow's relay takes it (``relay.relay(row, received_at)``,
not awaited). The decision is :func:`kei_gateway.core.settle.settle`, the same as for a pulled file. Ledger or store trouble → ``503`` with ``Retry-After``.

:func:`make_push_listener` builds it all (the daemon's builder is
:func:`kei_gateway.flows.inbound.build.build_push_listener`); the composition root
listens with its ``factory``. The allow-lists, CAs and pins are read through
``config_source`` for every new connection (TLS contexts are cached per configuration
object and rebuilt when it changes, so a reload, which hands a new configuration, re-reads
them); connections already open keep the context they started with. ``reconfigure``
drops the cached contexts without a new configuration (CA files replaced in place).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from OpenSSL import SSL
from twisted.internet import defer, interfaces
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from zope.interface import implementer

from kei_gateway.adapters.ports import TransferLedgerPort
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.adapters.transport.push_tls import ConnectionTrust, PushTLS, PushTLSFactory
from kei_gateway.config import Config
from kei_gateway.flows.inbound.intake import StreamIntake
from kei_gateway.flows.inbound.push import (
    AcceptedPush,
    BODY_RATE_WINDOW,
    BUSY_RETRY_AFTER_SECONDS,
    IDLE_TIMEOUT,
    PushReceiver,
    RETRY_AFTER_SECONDS,
)
from kei_gateway.flows.inbound.push_routing import Refusal, Response
from kei_gateway.flows.inbound.relay import Relay
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.listeners import AllowListFactory, PerSourceLimit
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["PushResource", "PushSite", "PushListener", "make_push_listener"]


# --------------------------------------------------------------------------- HTTP adapter


_REASON_PHRASES = {201: b"Created", 204: b"No Content", 403: b"Forbidden", 404: b"Not Found",
                   405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict",
                   413: b"Content Too Large", 422: b"Unprocessable Content",
                   431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def _raw_response(response: Response) -> bytes:
    """A whole response, sent before the request is complete and followed by a close."""
    body = response.body.encode("utf-8")
    lines = [b"HTTP/1.1 %d %s" % (response.status, _REASON_PHRASES.get(response.status, b"Error"))]
    lines += [name.encode("ascii") + b": " + value.encode("ascii") for name, value in response.headers.items()]
    lines += [b"Content-Type: text/plain; charset=utf-8", b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _PushRequest(server.Request):
    """A request whose body goes to a :class:`StreamIntake` as it arrives, never to a spool file.

    Headers are complete when :meth:`gotLength` runs, so the push is decided there;
    the method and path are read from the channel (``HTTPChannel._command``/``_path``,
    as :mod:`kei_gateway.sim.dav` does), since the Request learns them only later.
    """

    push: AcceptedPush | Refusal | None = None
    _body_bytes = 0
    _early = False
    _pump_busy = False
    _body_done = False
    _failed = False
    _finished_body: defer.Deferred[Response] | None = None
    _rate_call: Any = None
    _rate_mark = 0
    _paused_in_window = False

    @property
    def _site(self) -> PushSite:
        return self.channel.site  # type: ignore[no-any-return, union-attr, attr-defined]

    def source(self) -> str:
        peer = self.channel.transport.getPeer() if self.channel and self.channel.transport else None  # type: ignore[union-attr]
        return str(getattr(peer, "host", ""))

    def gotLength(self, length: int | None) -> None:
        import io

        self.content = io.BytesIO()  # stays empty: the body goes to the intake
        self._pending: list[bytes] = []
        site = self._site
        trust = site.tls.trust_of(self.channel.transport) if site.tls is not None else None  # type: ignore[union-attr]
        peers = trust.peers if trust is not None else site.assumed_peers
        channel: Any = self.channel
        self.push = site.receiver.begin(method=channel._command, path=channel._path, peers=peers,
                                        source=self.source(), content_length=length)
        if isinstance(self.push, Refusal):
            expects = (self.requestHeaders.getRawHeaders(b"expect") or [b""])[0].lower() == b"100-continue"
            if self.push.status == 413 or expects:
                # Answer now, before the body is sent, and close: nothing of the body is read.
                self.requestHeaders.removeHeader(b"expect")
                self._respond_early(_refusal_response(self.push))
                return
        if length != 0:
            self._watch_rate()

    # -- the body rate (min_body_rate over each BODY_RATE_WINDOW)

    def _watch_rate(self) -> None:
        self._rate_mark = self._body_bytes
        self._paused_in_window = self._pump_busy
        self._rate_call = self._site.clock.callLater(BODY_RATE_WINDOW, self._check_rate)

    def _stop_rate(self) -> None:
        if self._rate_call is not None and self._rate_call.active():
            self._rate_call.cancel()
        self._rate_call = None

    def _check_rate(self) -> None:
        self._rate_call = None
        if self._early or self._failed or self._body_done or self.channel is None:
            return
        if self._paused_in_window or self._pump_busy:  # the gateway held the body back: this window is not judged
            self._watch_rate()
            return
        received = self._body_bytes - self._rate_mark
        if received >= self._site.receiver.limits().min_body_rate * BODY_RATE_WINDOW:
            self._watch_rate()
            return
        push = self.push
        if isinstance(push, Refusal):  # refused and counted already: answer now rather than wait for the body
            self._respond_early(_refusal_response(push))
            return
        if isinstance(push, AcceptedPush):
            self._failed = True
            self._site.receiver.slow_body(push, received, BODY_RATE_WINDOW)
        self._respond_early(Response(408, f"the body came too slowly ({received} bytes in {BODY_RATE_WINDOW:g} s); "
                                          "push it again\n"))
    def handleContentChunk(self, data: bytes) -> None:
        if self._early or self._failed:
            return
        self._body_bytes += len(data)
        push = self.push
        if isinstance(push, Refusal) or push is None:
            if self._body_bytes > self._site.receiver.max_bytes:
                self.channel.transport.abortConnection()  # type: ignore[union-attr]  # refused and still sending
            return
        if self._body_bytes > self._site.receiver.max_bytes:
            self._failed = True
            self._site.receiver.too_large(push, self.source())
            self._respond_early(Response(413, f"body over {self._site.receiver.max_bytes} bytes\n"))
            return
        self._pending.append(data)
        self._pump()

    def _pump(self) -> None:
        push = self.push
        assert isinstance(push, AcceptedPush)
        while self._pending and not self._pump_busy and not self._failed:
            waited = push.intake.put(self._pending.pop(0))
            if waited is not None:
                self._pump_busy = True
                self._paused_in_window = True
                self.channel.transport.pauseProducing()  # type: ignore[union-attr]
                waited.addCallbacks(self._pump_ready, self._pump_failed)
        if not self._pending and not self._pump_busy and self._body_done and self._finished_body is None \
                and not self._failed:
            self._finished_body = self._site.receiver.complete(push)
            self._finished_body.addCallback(self._respond)

    def _pump_ready(self, _: object) -> None:
        self._pump_busy = False
        if not self._body_done and not self._failed and self.channel is not None:
            self.channel.transport.resumeProducing()  # type: ignore[union-attr]
        self._pump()

    def _pump_failed(self, failure: Failure) -> None:
        self._pump_busy = False
        if self._failed:
            return
        self._failed = True
        push = self.push
        assert isinstance(push, AcceptedPush)
        response = self._site.receiver.store_failed(push, failure)
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.resumeProducing()  # type: ignore[attr-defined]
        self._respond_early(response)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._body_done = True
        self._stop_rate()
        super().requestReceived(command, path, version)

    def start_response(self) -> Any:
        """Called by :class:`PushResource` once the request is complete."""
        if self._early or self._failed:
            return server.NOT_DONE_YET
        push = self.push
        if isinstance(push, Refusal):
            return self._render(_refusal_response(push))
        if push is None:
            return self._render(Response(404))
        self._pump()
        return server.NOT_DONE_YET

    def _render(self, response: Response) -> bytes:
        self.setResponseCode(response.status)
        for name, value in response.headers.items():
            self.setHeader(name.encode("ascii"), value.encode("ascii"))
        body = response.body.encode("utf-8")
        if response.status in (204, 304):
            return b""
        self.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return body

    def _respond(self, response: Response) -> None:
        if self.finished or self._disconnected:
            return
        body = self._render(response)
        if body:
            self.setHeader(b"content-length", b"%d" % len(body))
            self.write(body)
        self.finish()

    def _respond_early(self, response: Response) -> None:
        """Write a whole response straight to the transport and close (the request is not complete)."""
        self._early = True
        self._stop_rate()
        transport: Any = self.channel.transport if self.channel else None
        if transport is not None:
            transport.write(_raw_response(response))
            transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._stop_rate()
        push = self.push
        if isinstance(push, AcceptedPush) and not self._body_done and not self._failed:
            self._failed = True
            self._site.receiver.broken(push, reason.type.__name__ if reason.type else "connection lost")
        super().connectionLost(reason)


def _refusal_response(refusal: Refusal) -> Response:
    headers = {"allow": "PUT"} if refusal.status == 405 else {}
    if refusal.status == 503:
        wait = BUSY_RETRY_AFTER_SECONDS if refusal.reason == "busy" else RETRY_AFTER_SECONDS
        headers = {"retry-after": str(wait)}
    return Response(refusal.status, f"refused: {refusal.detail}\n", headers)


@implementer(interfaces.IHandshakeListener)
class _PushChannel(http.HTTPChannel):
    """HTTP/1.1 only, with the listener's limits on the request headers (see the module docstring).

    Reports a TLS handshake that failed (the request layer never sees one), refuses headers
    that are late (408), too large or too many (431) itself, and counts what Twisted
    refuses on its own: a malformed request (its ``400``) and a silent connection it closes.
    """

    _handshaken = False
    _refused = False
    _header_call: Any = None
    _awaiting_headers = True
    _requests_done = 0

    @property
    def _push_site(self) -> PushSite:
        return self.site  # type: ignore[attr-defined, no-any-return]

    def _source(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        return str(getattr(peer, "host", ""))

    def connectionMade(self) -> None:
        limits = self._push_site.receiver.limits()
        self._max_header_bytes, self._max_headers = limits.max_header_bytes, limits.max_headers
        self._header_timeout = limits.header_timeout
        # Twisted's own checks sit at the same limits; ours run first and answer 431, not 400.
        self.totalHeadersSize = self.MAX_LENGTH = self._max_header_bytes
        self.maxHeaders = self._max_headers
        super().connectionMade()
        self._start_header_clock()

    def _start_header_clock(self) -> None:
        self._header_call = self._push_site.clock.callLater(self._header_timeout, self._headers_late)

    def _stop_header_clock(self) -> None:
        if self._header_call is not None and self._header_call.active():
            self._header_call.cancel()
        self._header_call = None

    def _headers_late(self) -> None:
        self._header_call = None
        self._refuse(408, "header_timeout", f"the request headers did not arrive within {self._header_timeout:g} s")

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        """Count, answer *status* (if TLS is up) and close; nothing more of the connection is read."""
        if self._refused:
            return
        self._refused = True
        self._stop_header_clock()
        self._push_site.receiver.denied(self._source(), reason, detail, status)
        if self.transport is None:
            return
        if self._handshaken or self._push_site.tls is None:
            self.transport.write(_raw_response(Response(status, f"refused: {detail}\n")))
            self.transport.loseConnection()
        else:  # still in the TLS handshake: nothing can be said
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def handshakeCompleted(self) -> None:
        self._handshaken = True

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._awaiting_headers and self._header_call is None:
            self._start_header_clock()  # the first byte of a further request on a kept-alive connection
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize + len(line) > self._max_header_bytes:
            self._refuse(431, "header_size", f"request line and headers over {self._max_header_bytes} bytes")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(431, "header_size", f"a request line or header over {self._max_header_bytes} bytes")

    def headerReceived(self, line: bytes) -> bool:
        if self._refused:
            return False
        if self._receivedHeaderCount >= self._max_headers:
            self._refuse(431, "header_count", f"more than {self._max_headers} header fields")
            return False
        return super().headerReceived(line)  # type: ignore[no-any-return]

    def allHeadersReceived(self) -> None:
        self._awaiting_headers = False
        self._stop_header_clock()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        self._awaiting_headers = True  # the next request's clock starts with its first byte
        self._requests_done += 1
        super().requestDone(request)

    def _respondToBadRequestAndDisconnect(self) -> None:
        if self._refused:
            return
        self._push_site.receiver.denied(self._source(), "bad_request", "malformed request (answered 400)", 400)
        self._refused = True
        self._stop_header_clock()
        super()._respondToBadRequestAndDisconnect()

    def timeoutConnection(self) -> None:
        idle_between_requests = self._awaiting_headers and self._header_call is None and self._requests_done
        if not self._refused and not idle_between_requests:
            self._push_site.receiver.denied(self._source(), "idle_timeout", f"silent for {IDLE_TIMEOUT:g} s",
                                            "closed")
        self._refused = True
        self._stop_header_clock()
        super().timeoutConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_header_clock()
        site = self._push_site
        if not self._handshaken and not self._refused and site.tls is not None and isinstance(reason.value, SSL.Error):
            trust = site.tls.trust_of(self.transport)
            source = trust.source if trust is not None else ""
            kind, detail = _handshake_failure(trust, reason.value)
            site.receiver.denied(source, kind, detail, "handshake")
        super().connectionLost(reason)


def _handshake_failure(trust: ConnectionTrust | None, error: SSL.Error) -> tuple[str, str]:
    if trust is not None and trust.failure is not None:
        return trust.failure
    texts = " ".join(str(part) for item in (error.args[0] if error.args else []) for part in
                     (item if isinstance(item, tuple) else (item,)))
    if "did not return a certificate" in texts or "certificate required" in texts:
        return "no_certificate", "the client presented no certificate"
    return "handshake", f"TLS handshake failed ({texts[:200] or type(error).__name__})"


class PushResource(resource.Resource):
    """Every path: the request itself knows what to answer (decided when its headers arrived)."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        if isinstance(request, _PushRequest):
            return request.start_response()
        request.setResponseCode(500)
        return b""


class PushSite(server.Site):
    """The push site: our request and channel classes, no access log (events say what happened)."""

    noisy = False
    displayTracebacks = False
    requestFactory = _PushRequest
    protocol = _PushChannel  # type: ignore[assignment]

    def __init__(self, receiver: PushReceiver, tls: PushTLS | None, reactor: Any,
                 assumed_peers: frozenset[str] = frozenset()) -> None:
        super().__init__(PushResource(), timeout=IDLE_TIMEOUT, reactor=reactor)
        self.clock = reactor
        self.receiver = receiver
        self.tls = tls
        self.assumed_peers = assumed_peers
        """Peers a connection is taken to be when there is no TLS layer (unit tests only)."""

    def log(self, request: Any) -> None:
        pass


# --------------------------------------------------------------------------- composition


class PushListener(NamedTuple):
    """What :func:`make_push_listener` returns: listen with *factory*; *reconfigure* re-reads the TLS files."""

    factory: Factory
    reconfigure: Callable[[Config], None]
    receiver: PushReceiver


def make_push_listener(config_source: Callable[[], Config], reactor: Any, *, ledger: TransferLedgerPort,
                       store: BlobStore, blocking: Blocking, metrics: GatewayMetrics,
                       environ: Mapping[str, str] = os.environ,
                       relay: Relay | None = None,
                       intake_blocking: Blocking | None = None) -> PushListener:
    """The push listener's protocol factory (allow-list guard → TLS → HTTP) and its reload hook.

    *config_source* returns the live configuration; it is read for every new
    connection, so after a reload new connections use the new allow-lists, CAs and
    pins while open ones finish with what they started with. ``reconfigure(config)``
    also drops the cached TLS contexts, so CA, certificate and key files replaced
    under the same names are re-read. *relay* takes each file answered ``201`` (not awaited).
    """
    receiver = PushReceiver(config_source=config_source, ledger=ledger, store=store, blocking=blocking,
                            clock=reactor, metrics=metrics, relay=relay,
                            intake_blocking=intake_blocking)
    tls = PushTLS(config_source, environ)
    site = PushSite(receiver, tls, reactor)
    limited = PerSourceLimit(PushTLSFactory(tls, site, reactor),
                             lambda: receiver.limits().max_connections_per_source, receiver.denied_connections)
    guarded = AllowListFactory(limited, "push", tls.allowed_networks, receiver.denied_address, log_each=False)

    def reconfigure(config: Config) -> None:
        tls.reset()

    return PushListener(guarded, reconfigure, receiver)
