"""Sending queued transfers of one outbound flow to its peer (SPEC §3, §6).

One transfer at a time per flow: ``QUEUED``/due ``RETRY_WAIT`` → ``SENDING`` (attempt
counted) → upload (``PUT .part``, ``MOVE``) → ``DONE``; on failure the typed transport
error decides: retry on the persisted back-off schedule, ``FAILED`` for a human, or —
for a refused address or a failed identity check — back to ``QUEUED`` with the flow
paused until the configuration is reloaded, since retrying cannot help.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from kei_gateway.adapters.ledger import TransferRow
from kei_gateway.adapters.ledger.leases import Fence, Fenced
from kei_gateway.adapters.ledger.ledger import Claimed
from kei_gateway.adapters.ports import PeerClient, TransferLedgerPort
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.adapters.transport import BodySourceError, HttpError, OutboundDenied, PeerIdentityError, RemoteConflict, TransportError, remote_name
from kei_gateway.config import RetryPolicy
from kei_gateway.flows.peer_link import PeerLink
from kei_gateway.core.lease import renew_interval
from kei_gateway.core.transfer import FailureKind, after_send_failure
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.runtime.one_at_a_time import OneAtATime
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.crashpoints import crashpoint
from kei_gateway.runtime.leases import NodeLeases
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["UploadSender", "SEND_POLL_INTERVAL"]

SEND_POLL_INTERVAL = 5.0


def _with_crashpoint(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for number, chunk in enumerate(chunks):
        if number == 1:
            crashpoint("send.mid-put")
        yield chunk


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


class UploadSender(service.Service):
    """Drains one flow's queue to its peer, one transfer at a time."""

    log = Logger()

    def __init__(self, *, flow: str, lg_code: str, link: PeerLink, ledger: TransferLedgerPort, store: BlobStore,
                 blocking: Blocking, clock: Any, metrics: GatewayMetrics,
                 poll_interval: float = SEND_POLL_INTERVAL) -> None:
        """*link* gives the peer's current upload URL, retry policy and client (a reload changes them there)."""
        self.setName(f"sender:{flow}")
        self.flow, self.peer, self.lg_code, self.link = flow, link.peer, lg_code, link
        self.ledger, self.store = ledger, store
        self.blocking, self.clock, self.metrics = blocking, clock, metrics
        self.paused: str | None = None
        """Why sending is paused for a person (address refused, identity check failed); cleared by :meth:`resume`."""
        self._passes = OneAtATime(self._start_pass, may_start=lambda: bool(self.running) and self.paused is None,
                                  more=lambda sent: sent is True,  # one sent: look for the next at once
                                  schedule=lambda again: clock.callLater(0, again))  # drain without recursion
        self._poll = task.LoopingCall(self.kick)
        self._poll.clock = clock
        self._poll_interval = poll_interval

    @property
    def client(self) -> PeerClient:
        return self.link.client()

    @property
    def dir_url(self) -> str:
        return str(self.link.settings().url)

    @property
    def policy(self) -> RetryPolicy:
        policy: RetryPolicy = self.link.settings().retry
        return policy

    @property
    def poll_interval(self) -> float:
        """Seconds between passes: *poll_interval*, and on a shared ledger at most a renewal interval (a third of
        the lease), so a transfer whose holder died is taken over within a lease and a third of it, whatever the
        lease (SPEC §14: within two) — a fixed 5 s poll would dominate a short lease."""
        if self.leases is None:
            return self._poll_interval
        return min(self._poll_interval, renew_interval(self.leases.duration))

    def startService(self) -> None:
        super().startService()
        self._poll.start(self.poll_interval, now=True)

    def stopService(self) -> defer.Deferred[Any] | None:
        super().stopService()
        if self._poll.running:
            self._poll.stop()
        # The transfer in flight ends (done, or back to a waiting state) before the stop; then idle
        # connections kept for reuse are closed.
        done = defer.maybeDeferred(lambda: self._passes.in_flight)
        return done.addBoth(lambda _: self.link.close())

    def resume(self) -> None:
        """After a reload: try again what was paused for a person."""
        self.paused = None
        self.kick()

    leases: NodeLeases | None = None
    """This node's leases (SPEC §14), set by the flow's builder: each transfer is claimed before it is sent and
    every commit on it is fenced. None: the ledger's queue is this process's alone (tests, a bare ledger)."""

    def kick(self) -> defer.Deferred[Any] | None:
        """Send what is due now; if busy, look again when the current transfer ends."""
        return self._passes.request()

    _ledger_away = False
    """The last pass could not reach the ledger (said once per outage: the watchdog's ``database.unavailable``
    is the alert; the daemon now outlives an outage, SQLite's included, and a line every pass would be noise)."""

    def _start_pass(self) -> defer.Deferred[Any]:
        def crashed(failure: Any) -> bool:
            if failure.check(OperationalError, InterfaceError):
                if not self._ledger_away:
                    self._ledger_away = True
                    events.emit(self.log, events.MESSAGE, flow=self.flow,
                                text=f"{self.flow}: the sender cannot reach the ledger "
                                     f"({events.describe_error(failure.value)}); it looks again every pass")
                return False
            events.emit(self.log, events.INTERNAL_ERROR, flow=self.flow,
                        reason=f"sender: {events.describe_error(failure.value)}")
            return False

        def reached(result: Any) -> Any:
            self._ledger_away = False
            return result

        now = _utc(self.clock.seconds())
        leases = self.leases
        if leases is None:
            d: defer.Deferred[Any] = self.blocking.run(self.ledger.due, self.flow, now, 1)
            d.addCallback(reached)
            d.addCallback(lambda due: self._send_first(due[0], None) if due else False)
            return d.addErrback(crashed)
        if not leases.may_claim:
            return defer.succeed(False)  # the database is away, or the clock off: claim nothing (SPEC §14)

        def claimed(claim: Claimed | None) -> Any:
            if claim is None:
                return False
            leases.adopt(claim.fence, claim.decision)
            return self._send_first(claim.row, claim.fence)

        d = self.blocking.run(self.ledger.claim_due, self.flow, now, leases.node_id, leases.duration)
        d.addCallback(reached)
        d.addCallback(claimed)
        return d.addErrback(crashed)

    @defer.inlineCallbacks
    def _send_first(self, row: TransferRow, fence: Fence | None) -> Any:
        try:
            sent = yield self._send(row, fence)
        except Fenced:
            assert fence is not None and self.leases is not None
            self.leases.fenced(fence)  # another node took it over: it finishes the transfer; nothing is committed here
            return True
        if fence is not None and self.leases is not None:
            self.leases.forget(fence)  # released with the commit that ended the attempt
        return sent

    @defer.inlineCallbacks
    def _send(self, row: TransferRow, fence: Fence | None) -> Any:
        started = self.clock.seconds()
        name = row.remote_name or remote_name(self.lg_code, self.flow, row.created_at, row.id)
        row = yield self.blocking.run(self.ledger.transition, row.id, S.SENDING, _utc(started), fence=fence,
                                      attempts=row.attempts + 1, remote_name=name)
        blob_id = row.blob_id
        try:
            if blob_id is None:
                raise BodySourceError(self.peer, "the stored payload is gone (purged or cancelled)")
            result = yield self.client.put(self.dir_url, name, lambda: _with_crashpoint(self.store.read(blob_id)),
                                           row.size, row.sha256 or "")
        except TransportError as error:
            yield self._failed(row, error, fence)
            return True
        crashpoint("send.after-move")
        now = self.clock.seconds()
        summary = "already present at the peer (same SHA-256)" if getattr(result, "already_present", False) else None
        sent = {"flow": self.flow, "peer": self.peer, "records": row.record_count, "sha256": row.sha256}
        yield self.blocking.run(self.ledger.transition, row.id, S.DONE, _utc(now), last_error=None,
                                next_attempt_at=None, receipt_summary=summary, audit=("transfer.sent", sent),
                                fence=fence, release=True)
        self.metrics.transfers.labels(flow=self.flow, outcome="done").inc()
        self.metrics.transfer_bytes.labels(flow=self.flow).inc(row.size)
        self.metrics.transfer_duration.labels(flow=self.flow).observe(now - started)
        self.metrics.last_success.labels(flow=self.flow).set(now)
        self.metrics.peer_up.labels(peer=self.peer).set(1)
        events.emit(self.log, events.TRANSFER_SENT, flow=self.flow, peer=self.peer, transfer_id=row.id,
                    remote_name=name, size=row.size, records=row.record_count, sha256=row.sha256,
                    audit_recorded=self.ledger.records_audit)  # committed with DONE
        return True

    @defer.inlineCallbacks
    def _failed(self, row: TransferRow, error: TransportError, fence: Fence | None = None) -> Any:
        now = _utc(self.clock.seconds())
        self.metrics.peer_up.labels(peer=self.peer).set(0)
        decision = after_send_failure(kind=failure_kind(error), attempts=row.attempts, policy=self.policy, now=now,
                                      reason=str(error),
                                      retry_after=error.retry_after if isinstance(error, HttpError) else None)
        yield self.blocking.run(self.ledger.apply, row.id, decision.transition, now, fence=fence, release=True)
        if decision.pause:
            # Retrying cannot cure it: back in the queue, attempt not counted, flow paused for a person.
            self.paused = str(error)
            if isinstance(error, OutboundDenied):
                self.metrics.denied_connections.labels(listener="outbound", reason=error.reason).inc()
                events.emit(self.log, events.PEER_DENIED, flow=self.flow, peer=self.peer, transfer_id=row.id,
                            reason=error.reason)
            else:
                events.emit(self.log, events.PEER_IDENTITY_FAILED, flow=self.flow, peer=self.peer,
                            transfer_id=row.id, reason=error.kind)
            self.metrics.transfers.labels(flow=self.flow, outcome=f"refused_{error.kind}").inc()
            return
        next_attempt_at = decision.transition.fields.get("next_attempt_at")
        if decision.state is S.FAILED:
            self.metrics.transfers.labels(flow=self.flow, outcome="failed").inc()
            events.emit(self.log, events.TRANSFER_FAILED, flow=self.flow, peer=self.peer, transfer_id=row.id,
                        attempts=row.attempts, reason=error.kind + ": " + error.detail[:200])
        else:
            self.metrics.retries.labels(peer=self.peer).inc()
            events.emit(self.log, events.TRANSFER_RETRY, flow=self.flow, peer=self.peer, transfer_id=row.id,
                        attempts=row.attempts, reason=error.kind,
                        next_attempt_at=next_attempt_at.isoformat() if next_attempt_at else "")


def failure_kind(error: TransportError) -> FailureKind:
    """The transport's typed error as the transfer core sees it (:class:`~kei_gateway.core.transfer.FailureKind`)."""
    if isinstance(error, OutboundDenied) or (isinstance(error, PeerIdentityError) and error.alert):
        return FailureKind.REFUSED
    if isinstance(error, (RemoteConflict, BodySourceError)) or not error.retryable:
        return FailureKind.PERMANENT
    return FailureKind.TRANSIENT
