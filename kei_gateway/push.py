"""The LGWAN push listener (SPEC §5): ``PUT /push/<flow>/<name>`` over mutual TLS.

A peer that pushes (the MPN centre's 速報) connects to ``[listeners.push] address``.
Each connection passes, in order:

1. **Address** — outside every peer's ``push_allow``: closed before the TLS handshake
   (:class:`~kei_gateway.listeners.AllowListFactory`, reason ``address``).
2. **TLS** — the gateway presents ``tls.certificate``; the client must present a
   certificate chaining to the ``ca`` of a peer whose ``push_allow`` holds the source
   address, and matching that peer's ``pins`` if it has any. Otherwise the handshake
   fails (reasons ``no_certificate``, ``certificate``, ``pin``, ``handshake``).
3. **Request** — ``/push/<flow>/<name>`` with a known push flow and a spool name
   (else ``404``, reason ``path``), method ``PUT`` (else ``405``, ``method``), a flow
   whose ``peer`` is the peer so identified (else ``403``, ``flow``), a body of at most
   :data:`MAX_PUSH_BYTES` (else ``413``, ``too_large``).

The body is streamed into the encrypted store and validated on the way
(:class:`~kei_gateway.flows.intake.StreamIntake`; Twisted's own request spooling,
which would write large bodies to an unencrypted temporary file, is never used).
Then: a known name with the same SHA-256 → ``204`` (the new blob is deleted); a
known name with other content → ``409``; an invalid file → quarantined and ``422``
with the (masked) errors; else the inbound transfer is committed ``VALIDATED`` and
the answer is ``201``, after which ``on_committed(row, received_at)`` runs (not
awaited). Ledger or store trouble → ``503`` with ``Retry-After``.

:func:`make_push_listener` builds it all; the composition root listens with its
``factory`` and calls its ``reconfigure`` after a reload. The allow-lists, CAs and
pins are read through ``config_source`` for every new connection (TLS contexts are
cached per configuration object and rebuilt when it changes); connections already
open keep the context they started with.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet import defer, interfaces
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from zope.interface import implementer

from kei_gateway import events
from kei_gateway.allowlist import Network, address_allowed
from kei_gateway.blocking import Blocking
from kei_gateway.config import Config
from kei_gateway.crashpoints import crashpoint
from kei_gateway.flows.intake import Received, StreamIntake, count_quarantined, first_error, quarantine_received
from kei_gateway.jst import today_in_jst
from kei_gateway.layouts import ValidationOptions, get_layout
from kei_gateway.ledger import TransferLedger, TransferRow
from kei_gateway.ledger.models import TransferState as S
from kei_gateway.listeners import AllowListFactory
from kei_gateway.metrics import GatewayMetrics
from kei_gateway.spool import NAME_PATTERN
from kei_gateway.store import BlobStore
from kei_gateway.transport.tls import base_context, spki_pin

__all__ = [
    "make_push_listener", "PushListener", "PushReceiver", "PushTLS", "route_push", "PushTarget", "Refusal",
    "Response", "OnCommitted", "PUSH_FLOWS", "DENIAL_REASONS", "MAX_PUSH_BYTES", "MAX_CONCURRENT_PUSHES",
    "RETRY_AFTER_SECONDS", "BUSY_RETRY_AFTER_SECONDS", "IDLE_TIMEOUT",
]

PUSH_FLOWS = ("mpn-results",)
"""Inbound flows a peer may push to."""
DENIAL_REASONS = ("address", "handshake", "no_certificate", "certificate", "pin", "path", "method", "flow",
                  "too_large")
"""The ``reason`` label values of ``kei_gateway_denied_connections_total{listener="push"}``."""
MAX_PUSH_BYTES = 256 * 1024 * 1024
"""Largest body accepted (about a million 258-byte MPN result records)."""
MAX_CONCURRENT_PUSHES = 2
"""Bodies received at once; more are answered ``503`` with ``Retry-After`` (each holds store-writer threads)."""
RETRY_AFTER_SECONDS = 30
"""``Retry-After`` of a 503 for store or ledger trouble (it takes a person or some minutes to clear)."""
BUSY_RETRY_AFTER_SECONDS = 2
"""``Retry-After`` of a 503 ``busy`` (too many pushes at once): it clears as soon as one finishes."""
IDLE_TIMEOUT = 60.0
"""Seconds a connection may stay silent (handshake, headers or body) before it is closed."""

OnCommitted = Callable[[TransferRow, float], "defer.Deferred[Any] | None"]
"""The hook run after a ``201``: the committed row and the time (Unix seconds) the push request started."""

_PATH_PREFIX = b"/push/"


# --------------------------------------------------------------------------- pure routing


@dataclass(frozen=True)
class PushTarget:
    """Where an acceptable push goes."""

    flow: str
    name: str
    peer: str


@dataclass(frozen=True)
class Refusal:
    """A push refused before its body is taken. *reason* is in :data:`DENIAL_REASONS` (or ``busy``)."""

    status: int
    reason: str
    detail: str


@dataclass(frozen=True)
class Response:
    """What the peer is told."""

    status: int
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


def route_push(method: bytes, path: bytes, peers: Collection[str], config: Config,
               content_length: int | None, max_bytes: int = MAX_PUSH_BYTES) -> PushTarget | Refusal:
    """Decide what to do with a request from a connection identified as *peers* (pure).

    The order is path (404), method (405), flow ownership (403), size (413).
    """
    if not path.startswith(_PATH_PREFIX):
        return Refusal(404, "path", "not /push/<flow>/<name>")
    parts = path[len(_PATH_PREFIX):].split(b"/")
    if len(parts) != 2:
        return Refusal(404, "path", "not /push/<flow>/<name>")
    try:
        flow, name = (part.decode("ascii") for part in parts)
    except UnicodeDecodeError:
        return Refusal(404, "path", "not /push/<flow>/<name>")
    if flow not in PUSH_FLOWS or flow not in config.flows:
        return Refusal(404, "path", "no such push flow")
    if not NAME_PATTERN.fullmatch(name):
        return Refusal(404, "path", "file name not allowed ([A-Za-z0-9][A-Za-z0-9._-]{0,127})")
    if method != b"PUT":
        return Refusal(405, "method", "only PUT is served")
    owner = config.flows[flow].peer
    if owner not in peers:
        return Refusal(403, "flow", f"flow {flow} belongs to another peer")
    if content_length is not None and content_length > max_bytes:
        return Refusal(413, "too_large", f"body over {max_bytes} bytes")
    return PushTarget(flow, name, owner)


# --------------------------------------------------------------------------- TLS: who is on the other end


@dataclass
class _ConnectionTrust:
    """What the TLS layer learned about one connection."""

    source: str
    candidates: tuple[str, ...]
    policy: _Policy
    context: SSL.Context
    chain: set[str] = field(default_factory=set)
    peers: frozenset[str] = frozenset()
    failure: tuple[str, str] | None = None


@dataclass(frozen=True)
class _PeerTrust:
    name: str
    ca_path: str
    anchors: frozenset[str]
    pins: frozenset[str]
    push_allow: tuple[Network, ...]


def _fingerprint(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


class _Policy:
    """The push TLS policy of one configuration: each peer's CA, pins and push_allow; contexts per candidate set."""

    def __init__(self, config: Config, environ: Mapping[str, str], verify: Callable[..., bool]) -> None:
        self.config = config
        self._environ = environ
        self._verify = verify
        self.peers: dict[str, _PeerTrust] = {}
        for name, peer in sorted(config.peers.items()):
            if not peer.push_allow:
                continue
            ca_path = config.file_path(peer.ca, environ)
            with open(ca_path, "rb") as bundle:
                anchors = frozenset(_fingerprint(c) for c in x509.load_pem_x509_certificates(bundle.read()))
            self.peers[name] = _PeerTrust(name, ca_path, anchors, frozenset(peer.pins), tuple(peer.push_allow))
        self._contexts: dict[tuple[str, ...], SSL.Context] = {}

    def allowed_networks(self) -> list[Network]:
        return [net for peer in self.peers.values() for net in peer.push_allow]

    def candidates(self, source: str) -> tuple[str, ...]:
        return tuple(name for name, peer in self.peers.items() if address_allowed(source, peer.push_allow))

    def context(self, candidates: tuple[str, ...]) -> SSL.Context:
        context = self._contexts.get(candidates)
        if context is None:
            context = self._build(candidates)
            self._contexts[candidates] = context
        return context

    def _build(self, candidates: tuple[str, ...]) -> SSL.Context:
        # The same policy as the client side (TLS minimum, ECDHE + AEAD suites, options): transport.tls.
        tls = self.config.tls
        context = base_context(self.config.file_path(tls.certificate, self._environ),
                                self.config.file_path(tls.private_key, self._environ), tls.min_version)
        for name in candidates:  # these peers' CA bundles only: never the system store
            path = self.peers[name].ca_path
            context.load_verify_locations(path.encode())
            with open(path, "rb") as bundle:
                for authority in x509.load_pem_x509_certificates(bundle.read()):
                    context.add_client_ca(authority)
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        # No session resumption: every connection runs the verify callback that identifies the peer.
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        return context


@implementer(interfaces.IOpenSSLServerConnectionCreator)
class PushTLS:
    """Server TLS for the push listener: one context per set of peers a source address may be.

    The verify callback records, per connection, which configured peers the client
    certificate belongs to (its chain holds a certificate of the peer's CA bundle and
    its key matches the peer's pins, if any); a failed check aborts the handshake and
    its kind is kept for the log. :meth:`trust_of` reads it back from the TLS protocol.
    """

    def __init__(self, config_source: Callable[[], Config], environ: Mapping[str, str]) -> None:
        self._config_source = config_source
        self._environ = environ
        self._policy: _Policy | None = None
        self._trust: WeakKeyDictionary[Any, _ConnectionTrust] = WeakKeyDictionary()

    def policy(self) -> _Policy:
        """The policy of the current configuration (rebuilt when the configuration object changes)."""
        config = self._config_source()
        if self._policy is None or self._policy.config is not config:
            self._policy = _Policy(config, self._environ, self._verify)
        return self._policy

    def reset(self) -> None:
        """Forget the cached contexts (re-read CA bundles, certificate and key at the next connection)."""
        self._policy = None

    def allowed_networks(self) -> list[Network]:
        try:
            return self.policy().allowed_networks()
        except Exception:
            # A CA file unreadable after a reload: still refuse by address, from the config alone.
            config = self._config_source()
            return [net for peer in config.peers.values() for net in peer.push_allow]

    def prepare(self, tls_protocol: Any, source: str) -> None:
        """Before the handshake of *tls_protocol* (from *source*): pick the peers it may be and their context.

        Raises when the context cannot be built (a CA, certificate or key file unreadable).
        """
        policy = self.policy()
        candidates = policy.candidates(source)
        context = policy.context(candidates)
        self._trust[tls_protocol] = _ConnectionTrust(source, candidates, policy, context)

    def trust_of(self, tls_protocol: Any) -> _ConnectionTrust | None:
        return self._trust.get(tls_protocol)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        trust = self._trust[tlsProtocol]  # set by prepare() when the protocol was built
        connection = SSL.Connection(trust.context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_accept_state()
        return connection

    def _verify(self, connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int,
                ok: int) -> bool:
        trust = self._trust.get(connection.get_app_data())
        if trust is None:
            return False
        if not ok:
            trust.failure = trust.failure or ("certificate", f"certificate at depth {depth} chains to no CA of "
                                              f"a peer allowed from this address (OpenSSL verify error {errno})")
            return False
        leaf = certificate.to_cryptography()
        trust.chain.add(_fingerprint(leaf))
        if depth != 0:
            return True
        policy = trust.policy
        chained = [name for name in trust.candidates
                   if name in policy.peers and policy.peers[name].anchors & trust.chain]
        if not chained:
            trust.failure = ("certificate", "certificate chains to no CA of a peer allowed from this address")
            return False
        pin = spki_pin(leaf)
        pinned = frozenset(name for name in chained if not policy.peers[name].pins or pin in policy.peers[name].pins)
        if not pinned:
            trust.failure = ("pin", f"client key {pin} matches none of the pins of {', '.join(chained)}")
            return False
        trust.peers = pinned
        return True


class _PushTLSFactory(TLSMemoryBIOFactory):
    """TLS around the push site; tells :class:`PushTLS` each connection's source address."""

    def __init__(self, tls: PushTLS, site: server.Site, clock: Any) -> None:
        super().__init__(tls, False, site, clock)
        self._tls = tls

    log = Logger()

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        if protocol is None:
            return None
        try:
            self._tls.prepare(protocol, str(getattr(addr, "host", "")))
        except Exception as error:  # e.g. a CA file unreadable after a reload: refuse, say why, keep serving
            events.emit(self.log, events.INTERNAL_ERROR,
                        reason=f"push listener TLS setup: {events.describe_error(error)}")
            return None
        return protocol


# --------------------------------------------------------------------------- the intake and its outcomes


class _Accepted:
    """A push being received: its target, intake and start time."""

    def __init__(self, target: PushTarget, intake: StreamIntake, started_at: float) -> None:
        self.target = target
        self.intake = intake
        self.started_at = started_at


class PushReceiver:
    """Decides and commits pushes; the HTTP adapter (:class:`_PushRequest`) turns requests into calls on it."""

    log = Logger()

    def __init__(self, *, config_source: Callable[[], Config], ledger: TransferLedger, store: BlobStore,
                 blocking: Blocking, clock: Any, metrics: GatewayMetrics, on_committed: OnCommitted | None = None,
                 max_bytes: int = MAX_PUSH_BYTES, max_concurrent: int = MAX_CONCURRENT_PUSHES,
                 intake_blocking: Blocking | None = None) -> None:
        self.config_source = config_source
        self.ledger, self.store, self.blocking = ledger, store, blocking
        self.intake_blocking = intake_blocking or blocking
        """The door of the store writers, which wait on the network for the whole body."""
        self.clock, self.metrics = clock, metrics
        self.on_committed = on_committed
        self.max_bytes = max_bytes
        self.max_concurrent = max_concurrent
        self._in_flight: set[tuple[str, str]] = set()
        for reason in DENIAL_REASONS:  # exported as 0 from the start
            metrics.denied_connections.labels(listener="push", reason=reason)

    # -- refusals

    def denied(self, source: str, reason: str, detail: str, status: int | str, peer: str = "-") -> None:
        """Count and log a refused connection or request."""
        if reason in DENIAL_REASONS:
            self.metrics.denied_connections.labels(listener="push", reason=reason).inc()
        events.emit(self.log, events.PUSH_REFUSED, source=source, reason=reason, status=status, detail=detail,
                    peer=peer)

    def denied_address(self, listener: str, source: str) -> None:
        """For :class:`AllowListFactory`: a connection closed before the handshake (it logs the event itself)."""
        self.metrics.denied_connections.labels(listener=listener, reason="address").inc()

    # -- a request

    def begin(self, *, method: bytes, path: bytes, peers: Collection[str], source: str,
              content_length: int | None) -> _Accepted | Refusal:
        """Headers are in: refuse the request, or open an intake for its body."""
        started_at = self.clock.seconds()
        peer_label = ",".join(sorted(peers)) or "-"
        decision = route_push(method, path, peers, self.config_source(), content_length, self.max_bytes)
        if isinstance(decision, Refusal):
            self.denied(source, decision.reason, decision.detail, decision.status, peer_label)
            return decision
        key = (decision.flow, decision.name)
        if key in self._in_flight or len(self._in_flight) >= self.max_concurrent:
            detail = ("the same name is being received on another connection" if key in self._in_flight
                      else f"{len(self._in_flight)} pushes already in progress")
            events.emit(self.log, events.PUSH_REFUSED, source=source, reason="busy", status=503, detail=detail,
                        peer=decision.peer, flow=decision.flow)
            return Refusal(503, "busy", detail)
        self._in_flight.add(key)
        options = ValidationOptions(today=today_in_jst(self.clock.seconds()))
        intake = StreamIntake(layout=get_layout(decision.flow), options=options, store=self.store,
                              blocking=self.intake_blocking)
        return _Accepted(decision, intake, started_at)

    def too_large(self, accepted: _Accepted, source: str) -> defer.Deferred[None]:
        """The body grew past the limit: nothing is kept."""
        self._in_flight.discard((accepted.target.flow, accepted.target.name))
        self.denied(source, "too_large", f"body over {self.max_bytes} bytes", 413, accepted.target.peer)
        return accepted.intake.abort(ValueError("push body too large"))

    def broken(self, accepted: _Accepted, reason: str) -> defer.Deferred[None]:
        """The connection went away before the body was complete: nothing is kept or committed."""
        self._in_flight.discard((accepted.target.flow, accepted.target.name))
        events.emit(self.log, events.PUSH_FAILED, flow=accepted.target.flow, peer=accepted.target.peer,
                    name=accepted.target.name, reason=f"body incomplete: {reason}")
        return accepted.intake.abort(ConnectionError("push body incomplete"))

    def store_failed(self, accepted: _Accepted, failure: Failure) -> Response:
        """The store writer died mid-body (disk, timeout): the intake leaves no blob; the peer tries again later."""
        self._in_flight.discard((accepted.target.flow, accepted.target.name))
        accepted.intake.abort(ConnectionError("store writer failed"))
        return self._unavailable(failure, accepted)

    def complete(self, accepted: _Accepted) -> defer.Deferred[Response]:
        """The whole body arrived: finish storing it, then decide and commit. Never fails: errors become 503."""
        key = (accepted.target.flow, accepted.target.name)
        def done(response: Response) -> Response:
            self._in_flight.discard(key)
            return response

        d: defer.Deferred[Any] = accepted.intake.finish()
        d.addCallback(lambda received: self._settle(accepted, received))
        d.addErrback(lambda failure: self._unavailable(failure, accepted))
        return d.addCallback(done)

    @defer.inlineCallbacks
    def _settle(self, accepted: _Accepted, received: Received) -> Any:
        target = accepted.target
        try:
            known: list[TransferRow] = yield self.blocking.run(self.ledger.inbound_for, target.flow, target.name)
        except Exception:
            yield self._discard(received.blob_id)
            raise
        kept = [row for row in known if row.state != S.QUARANTINED.value]
        same = next((row for row in kept if row.sha256 == received.sha256), None)
        if same is not None:
            yield self._discard(received.blob_id)
            events.emit(self.log, events.PUSH_REPEATED, flow=target.flow, peer=target.peer, name=target.name,
                        transfer_id=same.id, sha256=received.sha256)
            return Response(204)
        if kept:
            yield self._discard(received.blob_id)
            events.emit(self.log, events.PUSH_CONFLICT, flow=target.flow, peer=target.peer, name=target.name,
                        transfer_id=kept[0].id, sha256=received.sha256)
            return Response(409, f"{target.name} was already received with other content (transfer {kept[0].id}); "
                                 "push it under a new name\n")
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        report = received.report
        if not report.valid:
            if any(row.sha256 == received.sha256 for row in known):
                yield self._discard(received.blob_id)  # the same bad file again: quarantined once is enough
            else:
                config = self.config_source()
                quarantine_dir = config.spool_path(os.path.join("quarantine", target.flow))
                try:
                    yield self.blocking.run(
                        quarantine_received, ledger=self.ledger, flow=target.flow, peer=target.peer,
                        name=target.name, quarantine_dir=quarantine_dir, received=received, now=now,
                        note="refused to the peer with 422")
                except Exception:
                    yield self._discard(received.blob_id)
                    raise
                count_quarantined(self.metrics, target.flow, report)
            events.emit(self.log, events.PUSH_QUARANTINED, flow=target.flow, peer=target.peer, name=target.name,
                        reason=first_error(report), sha256=received.sha256, records=report.records)
            return Response(422, "\n".join(_error_lines(target, report)) + "\n")
        # The commit: from here on a failure may leave a row pointing at the blob, so the blob stays
        # (an unreferenced one is the purge's to remove).
        crashpoint("push.stored")
        row: TransferRow = yield self.blocking.run(
            self.ledger.add_transfer, flow=target.flow, direction="in", peer=target.peer, local_name=target.name,
            state=S.VALIDATED, size=received.size, sha256=received.sha256, record_count=report.records,
            blob_id=received.blob_id, now=now, remote_name=target.name)
        crashpoint("push.committed")
        self.metrics.transfers.labels(flow=target.flow, outcome="received").inc()
        events.emit(self.log, events.PUSH_ACCEPTED, flow=target.flow, peer=target.peer, name=target.name,
                    records=report.records, transfer_id=row.id, sha256=row.sha256)
        self._hand_over(row, accepted.started_at)
        return Response(201, headers={"location": f"/push/{target.flow}/{target.name}"})

    def _hand_over(self, row: TransferRow, started_at: float) -> None:
        if self.on_committed is None:
            return

        def failed(failure: Failure) -> None:
            events.emit(self.log, events.INTERNAL_ERROR, flow=row.flow, peer=row.peer, transfer_id=row.id,
                        reason=f"after push commit: {_describe(failure)}")

        try:
            result = self.on_committed(row, started_at)
        except Exception as error:
            failed(Failure(error))
            return
        if isinstance(result, defer.Deferred):
            result.addErrback(failed)

    def _discard(self, blob_id: str) -> defer.Deferred[Any]:
        d = self.blocking.run(self.store.delete, blob_id)
        return d.addErrback(lambda failure: None)  # a leftover blob is the purge's to remove

    def _unavailable(self, failure: Failure, accepted: _Accepted) -> Response:
        target = accepted.target
        events.emit(self.log, events.PUSH_FAILED, flow=target.flow, peer=target.peer, name=target.name,
                    reason=_describe(failure))
        return Response(503, "the gateway cannot store the file now; try again later\n",
                        {"retry-after": str(RETRY_AFTER_SECONDS)})


def _describe(failure: Failure) -> str:
    return events.describe_error(failure.value) if failure.value is not None else "unknown error"


def _error_lines(target: PushTarget, report: Any) -> list[str]:
    """The 422 body: every kept error, masked (no personal value leaves in a response)."""
    lines = [f"# {target.name}: rejected by kei-gateway, flow {target.flow}, layout {report.layout}",
             f"# {report.error_count} error(s) in {report.records} record(s); nothing of this file was relayed."]
    lines += [error.message() for error in report.errors]
    if report.error_count > len(report.errors):
        lines.append(f"... and {report.error_count - len(report.errors)} more error(s) not listed")
    return lines


# --------------------------------------------------------------------------- HTTP adapter


_REASON_PHRASES = {201: b"Created", 204: b"No Content", 403: b"Forbidden", 404: b"Not Found",
                   405: b"Method Not Allowed", 409: b"Conflict", 413: b"Content Too Large",
                   422: b"Unprocessable Content", 503: b"Service Unavailable"}


class _PushRequest(server.Request):
    """A request whose body goes to a :class:`StreamIntake` as it arrives, never to a spool file.

    Headers are complete when :meth:`gotLength` runs, so the push is decided there;
    the method and path are read from the channel (``HTTPChannel._command``/``_path``,
    as :mod:`kei_gateway.sim.dav` does), since the Request learns them only later.
    """

    push: _Accepted | Refusal | None = None
    _body_bytes = 0
    _early = False
    _pump_busy = False
    _body_done = False
    _failed = False
    _finished_body: defer.Deferred[Response] | None = None

    @property
    def _site(self) -> _PushSite:
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
        assert isinstance(push, _Accepted)
        while self._pending and not self._pump_busy and not self._failed:
            waited = push.intake.put(self._pending.pop(0))
            if waited is not None:
                self._pump_busy = True
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
        assert isinstance(push, _Accepted)
        response = self._site.receiver.store_failed(push, failure)
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.resumeProducing()  # type: ignore[attr-defined]
        self._respond_early(response)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._body_done = True
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
        body = response.body.encode("utf-8")
        lines = [b"HTTP/1.1 %d %s" % (response.status, _REASON_PHRASES.get(response.status, b"Error"))]
        lines += [name.encode("ascii") + b": " + value.encode("ascii") for name, value in response.headers.items()]
        lines += [b"Content-Type: text/plain; charset=utf-8", b"Content-Length: %d" % len(body),
                  b"Connection: close"]
        transport: Any = self.channel.transport if self.channel else None
        if transport is not None:
            transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        push = self.push
        if isinstance(push, _Accepted) and not self._body_done and not self._failed:
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
    """HTTP/1.1 only; reports a TLS handshake that failed (the request layer never sees one)."""

    _handshaken = False

    def handshakeCompleted(self) -> None:
        self._handshaken = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        site: _PushSite = self.site  # type: ignore[attr-defined]
        if not self._handshaken and site.tls is not None and isinstance(reason.value, SSL.Error):
            trust = site.tls.trust_of(self.transport)
            source = trust.source if trust is not None else ""
            kind, detail = _handshake_failure(trust, reason.value)
            site.receiver.denied(source, kind, detail, "handshake")
        super().connectionLost(reason)


def _handshake_failure(trust: _ConnectionTrust | None, error: SSL.Error) -> tuple[str, str]:
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


class _PushSite(server.Site):
    """The push site: our request and channel classes, no access log (events say what happened)."""

    noisy = False
    displayTracebacks = False
    requestFactory = _PushRequest
    protocol = _PushChannel  # type: ignore[assignment]

    def __init__(self, receiver: PushReceiver, tls: PushTLS | None, reactor: Any,
                 assumed_peers: frozenset[str] = frozenset()) -> None:
        super().__init__(PushResource(), timeout=IDLE_TIMEOUT, reactor=reactor)
        self.receiver = receiver
        self.tls = tls
        self.assumed_peers = assumed_peers
        """Peers a connection is taken to be when there is no TLS layer (unit tests only)."""

    def log(self, request: Any) -> None:
        pass


# --------------------------------------------------------------------------- composition


class PushListener(NamedTuple):
    """What :func:`make_push_listener` returns: listen with *factory*; call *reconfigure* after a reload."""

    factory: Factory
    reconfigure: Callable[[Config], None]
    receiver: PushReceiver


def make_push_listener(config_source: Callable[[], Config], reactor: Any, *, ledger: TransferLedger,
                       store: BlobStore, blocking: Blocking, metrics: GatewayMetrics,
                       environ: Mapping[str, str] = os.environ,
                       on_committed: OnCommitted | None = None,
                       intake_blocking: Blocking | None = None) -> PushListener:
    """The push listener's protocol factory (allow-list guard → TLS → HTTP) and its reload hook.

    *config_source* returns the live configuration; it is read for every new
    connection, so after a reload new connections use the new allow-lists, CAs and
    pins while open ones finish with what they started with. ``reconfigure(config)``
    also drops the cached TLS contexts, so CA, certificate and key files replaced
    under the same names are re-read. *on_committed* runs after each ``201``.
    """
    receiver = PushReceiver(config_source=config_source, ledger=ledger, store=store, blocking=blocking,
                            clock=reactor, metrics=metrics, on_committed=on_committed,
                            intake_blocking=intake_blocking)
    tls = PushTLS(config_source, environ)
    site = _PushSite(receiver, tls, reactor)
    guarded = AllowListFactory(_PushTLSFactory(tls, site, reactor), "push", tls.allowed_networks,
                               receiver.denied_address)

    def reconfigure(config: Config) -> None:
        tls.reset()

    return PushListener(guarded, reconfigure, receiver)
