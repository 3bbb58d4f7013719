"""Taking a file from a peer into the encrypted store as it streams (SPEC §3 "Download", §5, §7).

One implementation for every inbound path (the results poller's ``GET`` and the push
listener's ``PUT``): chunks arrive on the reactor thread, go through a bounded queue
to a store writer running behind the blocking door, and are validated on the way
(:class:`~kei_gateway.layouts.Validator` with a rereadable key filter; suspects are
settled by re-reading the stored blob). Nothing is buffered whole, nothing is written
in plaintext.

:class:`StreamIntake` is the streaming part. :func:`settle_received` is the one
blocking step after it, for pull and push alike: it asks the pure decision
(:func:`kei_gateway.core.settle.settle`) what the stored file is and carries it out —
commit a new ``VALIDATED`` transfer, quarantine an invalid file
(:func:`quarantine_received`: encrypted blob kept, errors file for a person,
``QUARANTINED`` transfer row), or drop the new blob of a repeat or a conflict.
"""

from __future__ import annotations

import datetime
import queue
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from kei_gateway.adapters.ledger import TransferRow
from kei_gateway.adapters.ledger.leases import Fence, Hold
from kei_gateway.adapters.ledger.ledger import AuditEvent, NewTransfer
from kei_gateway.adapters.ledger.results import DuplicateResult
from kei_gateway.adapters.ports import TransferLedgerPort
from kei_gateway.adapters.spool import QUARANTINE_DIR_MODE, ensure_directory, free_name, write_errors_file
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.core.settle import Door, SettleDecision, Settlement, settle
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.inbound.relay import AcceptRelay
from kei_gateway.flows.outbound.ingest import errors_file_lines
from kei_gateway.layouts import Layout, ValidationOptions, ValidationReport, Validator
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.crashpoints import crashpoint
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["Received", "StreamIntake", "Settled", "settle_received", "quarantine_received", "count_quarantined", "new_inbound_blob_id",
           "first_error", "first_error_summary", "QUEUE_SIZE", "QUEUE_TIMEOUT"]

QUEUE_SIZE = 16
"""Chunks held between the reactor and the store writer (the writer starts once this many wait, or at the end)."""
QUEUE_TIMEOUT = 120.0
"""Seconds a chunk may wait for the store writer (or the writer for a chunk) before the intake is abandoned."""

_END = object()


def new_inbound_blob_id() -> str:
    """A fresh store id for an inbound file."""
    return f"in-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Received:
    """A file durably in the store: its blob, size, SHA-256 and validation report."""

    blob_id: str
    size: int
    sha256: str
    report: ValidationReport
    data: bytes | None = None
    """The file's bytes, when it was no larger than the intake's *keep* (for a relay inside the accepting commit)."""


class StreamIntake:
    """One file, streamed from the reactor thread into the store and validated on the way.

    Call :meth:`put` for each chunk, then :meth:`finish` (or :meth:`abort`), all on
    the reactor thread. :meth:`put` returns ``None`` when the chunk was queued at once
    and a Deferred when the caller must wait (pause its producer) before the next
    chunk: never call :meth:`put` again before that Deferred fired.

    The store writer takes a thread of the blocking door only once :data:`QUEUE_SIZE`
    chunks wait or the file is complete, so a small file holds no thread while it
    crosses the network (and, with a synchronous door in tests, small files work
    without threads). The writer never leaves a blob behind when the intake is
    aborted or the writer fails.
    """

    def __init__(self, *, layout: Layout, options: ValidationOptions, store: BlobStore, blocking: Blocking,
                 blob_id: str | None = None, queue_size: int = QUEUE_SIZE, timeout: float = QUEUE_TIMEOUT,
                 keep: int = 0) -> None:
        self.blob_id = blob_id or new_inbound_blob_id()
        self._keep = keep
        """A file of at most this many bytes is also kept in memory (:attr:`Received.data`): the relay of a small
        push stages it from there in the commit that accepts it (issue 16). Bounded: the caller's choice."""
        self._kept: list[bytes] | None = [] if keep > 0 else None
        self._kept_size = 0
        self.store = store
        self.blocking = blocking
        self._timeout = timeout
        self._chunks: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        # The raw bytes are what goes into the store, so the blob can be read again when the
        # uniqueness filter leaves suspect keys: fixed memory whatever the file size.
        # The full-size filter: a peer's announced size is not trusted to shrink it.
        self.validator = Validator(layout, options, rereadable=True)
        self._written: defer.Deferred[Any] | None = None
        self._writer_failure: Failure | None = None
        self._waiting: defer.Deferred[None] | None = None
        self._done = False

    # -- the writer (a thread of the blocking door)

    def _source(self) -> Iterator[bytes]:
        while True:
            chunk = self._chunks.get(timeout=self._timeout)  # never wait forever on a sender that vanished
            if chunk is _END:
                self.validator.close()
                return
            if isinstance(chunk, BaseException):
                raise chunk
            self.validator.feed(chunk)
            if self._kept is not None:
                self._kept_size += len(chunk)
                if self._kept_size <= self._keep:
                    self._kept.append(chunk)
                else:
                    self._kept = None  # larger than kept: read back from the store when relayed
            yield chunk

    def _start_writer(self) -> defer.Deferred[Any]:
        if self._written is None:
            written: defer.Deferred[Any] = self.blocking.run(self.store.write, self.blob_id, self._source())
            self._written = written

            def writer_failed(failure: Failure) -> Failure:
                # Free the queue, so a put waiting for room wakes up and sees the failure.
                self._writer_failure = failure
                self._drain_queue()
                return failure

            written.addErrback(writer_failed)
        return self._written

    def _drain_queue(self) -> None:
        while True:
            try:
                self._chunks.get_nowait()
            except queue.Empty:
                return

    # -- the reactor side

    def put(self, chunk: bytes | object) -> defer.Deferred[None] | None:
        """Queue the next *chunk*; a Deferred when the caller must wait before the next one."""
        if self._waiting is not None:
            raise RuntimeError("put() before the previous put's Deferred fired")
        if self._writer_failure is not None:
            return defer.fail(self._writer_failure)
        try:
            self._chunks.put_nowait(chunk)
            return None
        except queue.Full:
            pass
        self._start_writer()

        def settled(result: object) -> object:
            self._waiting = None
            if self._writer_failure is not None and not isinstance(result, Failure):
                return self._writer_failure
            return result

        # In a worker thread: waits while the writer is behind (the caller pauses its producer
        # meanwhile) and gives up after the timeout, so no thread hangs on a full queue.
        waited: defer.Deferred[None] = self.blocking.run(self._chunks.put, chunk, True, self._timeout)
        waited.addBoth(settled)
        if not waited.called:
            self._waiting = waited
        return waited

    def finish(self) -> defer.Deferred[Received]:
        """The whole file was put: wait for the writer, settle the uniqueness check; fire with :class:`Received`.

        On failure no blob is left in the store.
        """
        self._done = True
        queued = self.put(_END)
        ended: defer.Deferred[Any] = queued if queued is not None else defer.succeed(None)
        ended.addCallback(lambda _: self._start_writer())

        def settled(info: Any) -> defer.Deferred[Received]:
            d: defer.Deferred[Any] = defer.succeed(None)
            if self.validator.needs_rescan:
                d = self.blocking.run(lambda: self.validator.rescan(self.store.read(self.blob_id)))
                d.addErrback(lambda failure: self.blocking.run(self.store.delete, self.blob_id)
                             .addBoth(lambda _: failure))
            kept = b"".join(self._kept) if self._kept is not None else None
            return d.addCallback(lambda _: Received(self.blob_id, info.size, info.sha256, self.validator.report, kept))

        return ended.addCallback(settled)

    def abort(self, error: BaseException) -> defer.Deferred[None]:
        """Give up (the sender vanished, the body is too large…): the writer, if started, discards its blob."""
        if self._done:
            return defer.succeed(None)
        self._done = True
        if self._written is None:
            self._drain_queue()  # nothing reached the store
            return defer.succeed(None)
        written = self._written

        def tell_writer(_: object = None) -> None:
            if self._writer_failure is None:
                self.put(error)  # the writer raises it, so no blob is left behind

        if self._waiting is not None:
            self._waiting.addBoth(tell_writer)
        else:
            tell_writer()
        done: defer.Deferred[None] = defer.Deferred()
        written.addBoth(lambda _: done.callback(None))
        return done


@dataclass(frozen=True)
class Settled:
    """What :func:`settle_received` did: the decision, and the transfer committed or quarantined (else None)."""

    decision: SettleDecision
    row: TransferRow | None
    fence: Fence | None = None
    """A new file's ``received`` lease, written in the commit that accepted it (SPEC §14; None: no lease asked)."""
    relayed: bool = False
    """The file was relayed in the commit that accepted it (*relay* of :func:`settle_received`): *row* is DONE."""

    @property
    def settlement(self) -> Settlement:
        return self.decision.settlement


_COMMIT_POINTS = {Door.PULL: (None, "download.committed"), Door.PUSH: ("push.stored", "push.committed")}
"""The crash points around the commit of a new inbound file, by door (kei_gateway.runtime.crashpoints)."""
_AUDIT_EVENTS: dict[Door, tuple[str, str]] = {
    Door.PULL: (events.DOWNLOAD_RECEIVED.name, events.DOWNLOAD_QUARANTINED.name),  # then download.relayed
    Door.PUSH: (events.PUSH_ACCEPTED.name, events.PUSH_QUARANTINED.name),
}
"""The audit records committed with a new inbound file (accepted, quarantined), by door (issue 11)."""


def settle_received(*, door: Door, ledger: TransferLedgerPort, store: BlobStore, flow: str, peer: str, name: str,
                    received: Received, quarantine_dir: str, now: datetime.datetime, note: str,
                    known: list[TransferRow] | None = None, size: int | None = None,
                    remote_etag: str | None = None, relay: AcceptRelay | None = None,
                    hold: Hold | None = None) -> Settled:
    """Blocking: settle a file now in the store (:func:`~kei_gateway.core.settle.settle`) and carry the decision out.

    *known* are the transfers under *name* (newest first), read here when not given. NEW is
    committed as an inbound transfer ``VALIDATED`` (from then on a failure may leave a row
    pointing at the blob, so the blob stays: an unreferenced one is the purge's to remove);
    INVALID is quarantined (*note* ends its errors file; *size* and *remote_etag* are what the
    peer listed); any other settlement drops the new blob. A failure before the commit drops
    the new blob too, and is raised.

    With *relay* (the flow's relay, free and able to take this file: ``Relay.relay_on_accept``) and the
    file's bytes kept by the intake, NEW is committed by *relay* instead: the transfer, its relay and both
    audit records in ONE transaction (issue 16), and :attr:`Settled.relayed` is True. If another relay
    recorded one of its results meanwhile, the transfer is committed alone, as without *relay*. A failure of
    *relay* keeps the blob (its commit may have happened; an unreferenced blob is the purge's to remove).

    With *hold* (two nodes, SPEC §14) a new file committed alone gets its ``received`` lease in the commit that
    accepts it (:attr:`Settled.fence`): this node relays it, and no other node's pending pass takes it while
    the lease lives. A file relayed in its accepting commit needs none (it is ``DONE`` in that commit).
    """
    accepted_event, quarantined_event = _AUDIT_EVENTS[door]
    try:
        if known is None:
            known = ledger.inbound_for(flow, name)
        decision = settle(door, known, received.sha256, received.report.valid)
        if decision.settlement is Settlement.INVALID:
            audit = (quarantined_event, {"flow": flow, "peer": peer, "reason": first_error(received.report),
                                         "sha256": received.sha256, "records": received.report.records})
            quarantined = quarantine_received(ledger=ledger, flow=flow, peer=peer, name=name,
                                              quarantine_dir=quarantine_dir, received=received, now=now, note=note,
                                              size=size, remote_etag=remote_etag, audit=audit)
            return Settled(decision, quarantined)
    except Exception:
        _discard(store, received.blob_id)
        raise
    if not decision.keeps_blob:
        _discard(store, received.blob_id)
        return Settled(decision, None)
    stored, committed = _COMMIT_POINTS[door]
    if stored is not None:
        crashpoint(stored)
    accepted = (accepted_event, {"flow": flow, "peer": peer, "records": received.report.records,
                                 "sha256": received.sha256})
    transfer = NewTransfer(flow=flow, direction="in", peer=peer, local_name=name, state=S.VALIDATED,
                           size=received.size, sha256=received.sha256, record_count=received.report.records,
                           blob_id=received.blob_id, now=now, remote_name=name, remote_etag=remote_etag)
    if relay is not None and received.data is not None:
        try:
            row = relay(transfer, accepted, received.data)
        except DuplicateResult:
            pass  # nothing written: committed alone below, then relayed by the caller
        else:
            crashpoint(committed)
            return Settled(decision, row, relayed=True)
    row = ledger.add_transfer(**transfer.arguments(), audit=accepted, hold=hold)
    crashpoint(committed)
    return Settled(decision, row, hold.fence(row.id) if hold is not None else None)


def _discard(store: BlobStore, blob_id: str) -> None:
    try:
        store.delete(blob_id)
    except Exception:
        pass  # a leftover blob is the purge's to remove


def quarantine_received(*, ledger: TransferLedgerPort, flow: str, peer: str, name: str, quarantine_dir: str,
                        received: Received, now: datetime.datetime, note: str, size: int | None = None,
                        remote_etag: str | None = None, audit: AuditEvent | None = None) -> TransferRow:
    """Blocking: keep an invalid inbound file encrypted, write its errors for a person, record it ``QUARANTINED``.

    *note* ends the errors file (what happened to the file at the peer's side).
    """
    report = received.report
    ensure_directory(quarantine_dir, QUARANTINE_DIR_MODE)
    # The same name may come again with other invalid content (a push, a file replaced at the peer):
    # each keeps its own errors file (name.2.errors.txt …), as it keeps its own blob and row.
    write_errors_file(quarantine_dir, free_name(quarantine_dir, name), errors_file_lines(flow, name, report)
                      + [f"# stored encrypted as blob {received.blob_id} (SHA-256 {received.sha256}); {note}"])
    return ledger.add_transfer(flow=flow, direction="in", peer=peer, local_name=name, state=S.QUARANTINED,
                               size=size or received.size, sha256=received.sha256, record_count=report.records,
                               blob_id=received.blob_id, now=now, last_error=first_error_summary(report),
                               remote_name=name, remote_etag=remote_etag, audit=audit)


def first_error_summary(report: ValidationReport) -> str:
    """``"N error(s); first: …"`` (masked) for the ledger's last_error."""
    return f"{report.error_count} error(s); first: {first_error(report)}"


def first_error(report: ValidationReport) -> str:
    """The first error, masked, or ``"invalid"``."""
    return report.errors[0].message() if report.errors else "invalid"


def count_quarantined(metrics: GatewayMetrics, flow: str, report: ValidationReport) -> None:
    """Count a received file quarantined: a transfer, and for payment results its records as rejected.

    An invalid results file's records are not classified (速報/確報/取消 may be what is
    broken), so they count with ``kind="unknown"``.
    """
    metrics.transfers.labels(flow=flow, outcome="quarantined").inc()
    if flow == "mpn-results":
        metrics.payment_results.labels(kind="unknown", outcome="rejected").inc(report.records)
