"""Deciding and committing pushes (SPEC §5): the push listener's intake and its outcomes.

:class:`PushReceiver` takes the body of a routed push into the store and settles it
(``201``/``204``/``409``/``422``/``503``); :mod:`kei_gateway.flows.inbound.push_listener` is the HTTP
door that turns requests into calls on it.
"""

from __future__ import annotations

import datetime
import os
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from kei_gateway.adapters.ledger import TransferRow
from kei_gateway.adapters.ledger.leases import Fence
from kei_gateway.adapters.ports import TransferLedgerPort
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.config import Config, HostPort, ListenerSection
from kei_gateway.core.jst import today_in_jst
from kei_gateway.core.settle import Door, Settlement
from kei_gateway.flows.inbound.intake import (
    Received,
    Settled,
    StreamIntake,
    count_quarantined,
    first_error,
    settle_received,
)
from kei_gateway.flows.inbound.push_routing import (
    DENIAL_REASONS,
    MAX_PUSH_BYTES,
    PushTarget,
    Refusal,
    Response,
    route_push,
)
from kei_gateway.flows.inbound.relay import Relay
from kei_gateway.layouts import ValidationOptions, get_layout
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.bursts import BurstLog
from kei_gateway.runtime.leases import NodeLeases
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.runtime.timeline import TIMELINE

__all__ = ["PushReceiver", "RETRY_AFTER_SECONDS", "BUSY_RETRY_AFTER_SECONDS", "IDLE_TIMEOUT", "BODY_RATE_WINDOW",
           "AcceptedPush", "DEFAULT_LIMITS"]

DEFAULT_LIMITS = ListenerSection(address=HostPort("127.0.0.1", 0))
"""The listener limits of the schema's defaults (``[listeners.push]``), for a receiver built without that section."""
BODY_RATE_WINDOW = 10.0
"""Seconds over which ``min_body_rate`` is measured."""
RETRY_AFTER_SECONDS = 30
"""``Retry-After`` of a 503 for store or ledger trouble (it takes a person or some minutes to clear)."""
BUSY_RETRY_AFTER_SECONDS = 2
"""``Retry-After`` of a 503 ``busy`` (too many pushes at once): it clears as soon as one finishes."""
IDLE_TIMEOUT = 60.0
"""Seconds a connection may stay silent (handshake, headers or body) before it is closed."""


# --------------------------------------------------------------------------- the intake and its outcomes


class AcceptedPush:
    """A push being received: its target, intake and start time."""

    def __init__(self, target: PushTarget, intake: StreamIntake, started_at: float, source: str = "") -> None:
        self.target = target
        self.intake = intake
        self.started_at = started_at
        self.source = source
        self.released = False


class PushReceiver:
    """Decides and commits pushes; the HTTP adapter (:class:`_PushRequest`) turns requests into calls on it."""

    log = Logger()

    def __init__(self, *, config_source: Callable[[], Config], ledger: TransferLedgerPort, store: BlobStore,
                 blocking: Blocking, clock: Any, metrics: GatewayMetrics, relay: Relay | None = None,
                 max_bytes: int = MAX_PUSH_BYTES, intake_blocking: Blocking | None = None) -> None:
        self.config_source = config_source
        self.ledger, self.store, self.blocking = ledger, store, blocking
        self.intake_blocking = intake_blocking or blocking
        """The door of the store writers, which wait on the network for the whole body."""
        self.clock, self.metrics = clock, metrics
        self.relay = relay
        """Where a committed push goes (:mod:`kei_gateway.flows.inbound.relay`); its 201 does not wait for it."""
        self.max_bytes = max_bytes
        self.bursts = BurstLog(clock)
        """Refusals are logged once per burst (source, reason); each is counted."""
        self._in_flight: set[tuple[str, str]] = set()
        self._pushes_by_source: Counter[str] = Counter()
        for reason in DENIAL_REASONS:  # exported as 0 from the start
            metrics.denied_connections.labels(listener="push", reason=reason)

    leases: NodeLeases | None = None
    """This node's leases (SPEC §14), set by the builder: a file accepted here is relayed here, under a
    ``received`` lease written in the commit that accepts it. None: this process is alone."""

    def limits(self) -> ListenerSection:
        """The listener's limits (``[listeners.push]``) of the live configuration."""
        return self.config_source().listeners.push or DEFAULT_LIMITS

    # -- refusals

    def denied(self, source: str, reason: str, detail: str, status: int | str, peer: str = "-") -> None:
        """Count a refused connection or request; log it if it starts a burst (source, reason)."""
        if reason in DENIAL_REASONS:
            self.metrics.denied_connections.labels(listener="push", reason=reason).inc()
        self.bursts.refused(events.PUSH_REFUSED, listener="push", source=source, reason=reason,
                            fields={"status": status, "detail": detail, "peer": peer})

    def denied_address(self, listener: str, source: str) -> None:
        """For :class:`AllowListFactory`: a connection closed before the handshake."""
        self.metrics.denied_connections.labels(listener=listener, reason="address").inc()
        self.bursts.refused(events.LISTENER_DENIED, listener=listener, source=source, reason="address", fields={})

    def denied_connections(self, source: str, limit: int) -> None:
        """A connection over ``max_connections_per_source``, closed before the handshake."""
        self.denied(source, "connections", f"{limit} connections from this address are open already", "closed")

    # -- a request

    def begin(self, *, method: bytes, path: bytes, peers: Collection[str], source: str,
              content_length: int | None) -> AcceptedPush | Refusal:
        """Headers are in: refuse the request, or open an intake for its body."""
        started_at = self.clock.seconds()
        peer_label = ",".join(sorted(peers)) or "-"
        decision = route_push(method, path, peers, self.config_source(), content_length, self.max_bytes)
        if isinstance(decision, Refusal):
            self.denied(source, decision.reason, decision.detail, decision.status, peer_label)
            return decision
        key = (decision.flow, decision.name)
        limits = self.limits()
        per_source = max(1, limits.max_pushes // 2)
        if key in self._in_flight:
            detail = "the same name is being received on another connection"
        elif len(self._in_flight) >= limits.max_pushes:
            detail = f"{len(self._in_flight)} pushes already in progress (max_pushes)"
        elif self._pushes_by_source[source] >= per_source:
            detail = f"{per_source} pushes from this address already in progress (half of max_pushes)"
        else:
            detail = ""
        if detail:
            self.denied(source, "busy", detail, 503, decision.peer)
            return Refusal(503, "busy", detail)
        self._in_flight.add(key)
        self._pushes_by_source[source] += 1
        options = ValidationOptions(today=today_in_jst(self.clock.seconds()))
        keep = self.relay.accept_bytes if self.relay is not None else 0  # a small body for a relay in its commit
        intake = StreamIntake(layout=get_layout(decision.flow), options=options, store=self.store,
                              blocking=self.intake_blocking, keep=keep)
        accepted = AcceptedPush(decision, intake, started_at, source)
        TIMELINE.stamp(accepted, "received")
        return accepted

    def _release(self, accepted: AcceptedPush) -> None:
        """The push no longer holds a slot (done, refused or broken): once only."""
        if accepted.released:
            return
        accepted.released = True
        TIMELINE.drop(accepted)  # a push relayed was re-keyed by its transfer id before this
        self._in_flight.discard((accepted.target.flow, accepted.target.name))
        self._pushes_by_source[accepted.source] -= 1
        if self._pushes_by_source[accepted.source] <= 0:
            del self._pushes_by_source[accepted.source]

    def too_large(self, accepted: AcceptedPush, source: str) -> defer.Deferred[None]:
        """The body grew past the limit: nothing is kept."""
        self._release(accepted)
        self.denied(source, "too_large", f"body over {self.max_bytes} bytes", 413, accepted.target.peer)
        return accepted.intake.abort(ValueError("push body too large"))

    def slow_body(self, accepted: AcceptedPush, received: int, window: float) -> defer.Deferred[None]:
        """The body came slower than ``min_body_rate``: nothing is kept, the slot is free again."""
        self._release(accepted)
        self.denied(accepted.source, "slow_body", f"{received} body bytes in {window:g} s, under min_body_rate "
                    f"({self.limits().min_body_rate} bytes/s)", 408, accepted.target.peer)
        return accepted.intake.abort(ConnectionError("push body too slow"))

    def broken(self, accepted: AcceptedPush, reason: str) -> defer.Deferred[None]:
        """The connection went away before the body was complete: nothing is kept or committed."""
        self._release(accepted)
        events.emit(self.log, events.PUSH_FAILED, flow=accepted.target.flow, peer=accepted.target.peer,
                    name=accepted.target.name, reason=f"body incomplete: {reason}")
        return accepted.intake.abort(ConnectionError("push body incomplete"))

    def store_failed(self, accepted: AcceptedPush, failure: Failure) -> Response:
        """The store writer died mid-body (disk, timeout): the intake leaves no blob; the peer tries again later."""
        self._release(accepted)
        accepted.intake.abort(ConnectionError("store writer failed"))
        return self._unavailable(failure, accepted)

    def complete(self, accepted: AcceptedPush) -> defer.Deferred[Response]:
        """The whole body arrived: finish storing it, then decide and commit. Never fails: errors become 503."""
        def done(response: Response) -> Response:
            self._release(accepted)
            return response

        def stored(received: Received) -> Received:
            TIMELINE.stamp(accepted, "stored")
            return received

        TIMELINE.stamp(accepted, "body")
        d: defer.Deferred[Any] = accepted.intake.finish()
        d.addCallback(stored)
        d.addCallback(lambda received: self._settle(accepted, received))
        d.addErrback(lambda failure: self._unavailable(failure, accepted))
        return d.addCallback(done)

    @defer.inlineCallbacks
    def _settle(self, accepted: AcceptedPush, received: Received) -> Any:
        target = accepted.target
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        config = self.config_source()
        # A small valid file and a free relay: relayed in the commit that accepts it (issue 16), else after it.
        inline = self.relay.relay_on_accept(received.report.records, accepted.started_at, accepted) \
            if self.relay is not None and received.data is not None and received.report.valid else None
        try:
            settled: Settled = yield self.blocking.run(
                settle_received, door=Door.PUSH, ledger=self.ledger, store=self.store, flow=target.flow,
                peer=target.peer, name=target.name, received=received,
                quarantine_dir=config.spool_path(os.path.join("quarantine", target.flow)), now=now,
                note="refused to the peer with 422", relay=inline,
                hold=self.leases.hold_received() if self.leases is not None else None)
        except BaseException:
            if inline is not None:
                inline.end(None)
            raise
        if inline is not None and not settled.relayed:
            inline.end(None)  # free again: the file (if new) is handed to it after its commit
        if settled.fence is not None and self.leases is not None:
            self.leases.adopt_held(settled.fence)  # committed alone: renewed while this node relays it
        decision = settled.decision
        report = received.report
        if decision.settlement is Settlement.IDENTICAL_REPEAT:
            events.emit(self.log, events.PUSH_REPEATED, flow=target.flow, peer=target.peer, name=target.name,
                        transfer_id=decision.transfer_id, sha256=received.sha256)
            return Response(204)
        if decision.settlement is Settlement.SAME_NAME_OTHER_CONTENT:
            events.emit(self.log, events.PUSH_CONFLICT, flow=target.flow, peer=target.peer, name=target.name,
                        transfer_id=decision.transfer_id, sha256=received.sha256)
            return Response(409, f"{target.name} was already received with other content "
                                 f"(transfer {decision.transfer_id}); push it under a new name\n")
        if decision.settlement in (Settlement.INVALID, Settlement.KNOWN_INVALID):
            if decision.settlement is Settlement.INVALID:
                count_quarantined(self.metrics, target.flow, report)
            recorded = decision.settlement is Settlement.INVALID and self.ledger.records_audit  # with its transfer
            events.emit(self.log, events.PUSH_QUARANTINED, flow=target.flow, peer=target.peer, name=target.name,
                        reason=first_error(report), sha256=received.sha256, records=report.records,
                        transfer_id=settled.row.id if settled.row is not None else "-", audit_recorded=recorded)
            return Response(422, "\n".join(_error_lines(target, report)) + "\n")
        row = settled.row
        assert row is not None
        if not settled.relayed:
            TIMELINE.stamp(accepted, "committed")
        TIMELINE.rekey(accepted, row.id)
        self.metrics.transfers.labels(flow=target.flow, outcome="received").inc()
        events.emit(self.log, events.PUSH_ACCEPTED, flow=target.flow, peer=target.peer, name=target.name,
                    records=report.records, transfer_id=row.id, sha256=row.sha256,
                    audit_recorded=self.ledger.records_audit)  # committed with the transfer
        if inline is not None and settled.relayed:
            inline.end(row)  # counts the relay (its metrics and log line, relayed with the accept) and frees it
        else:
            self._hand_over(row, accepted.started_at, settled.fence)
        return Response(201, headers={"location": f"/push/{target.flow}/{target.name}"})

    def _hand_over(self, row: TransferRow, started_at: float, fence: Fence | None = None) -> None:
        """The committed file to the flow's relay (under its ``received`` lease, *fence*), not awaited (the peer
        has its 201); a failure is logged and the file stays VALIDATED for the relay's next check."""
        if self.relay is None:
            return

        def failed(failure: Failure) -> None:
            events.emit(self.log, events.INTERNAL_ERROR, flow=row.flow, peer=row.peer, transfer_id=row.id,
                        reason=f"after push commit: {_describe(failure)}")

        try:
            result = self.relay.relay(row, started_at, fence)
        except Exception as error:
            failed(Failure(error))
            return
        if isinstance(result, defer.Deferred):
            result.addErrback(failed)

    def _unavailable(self, failure: Failure, accepted: AcceptedPush) -> Response:
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


