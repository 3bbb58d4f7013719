"""MPN 納付結果 (SPEC §2.4, flow ``mpn-results``): relay each payment result exactly once.

A results file arrives by pull (:class:`~kei_gateway.flows.inbound.downloads.DownloadPoller`)
or push (:mod:`kei_gateway.flows.inbound.push.PushReceiver`) and is committed as an inbound transfer in
``VALIDATED`` with its encrypted blob. :class:`ResultRelay` then, one file at a time:

1. in ONE ledger transaction, reads the stored file a batch of :data:`RELAY_BATCH`
   records at a time, computes each record's identity (keyed digests,
   :mod:`kei_gateway.core.results`) and records the new results (the dedupe key is
   unique); results already recorded — from push and pull, a repeated 速報, a repeat
   anywhere in the file (the transaction sees its own earlier batches) — are duplicates;
2. meanwhile writes the new records, byte for byte, as ``inbox/.<name>.part`` (fsync
   the file and the directory at the end) — a dotfile the tax system does not take;
3. sets the relay name on the transfer and commits that transaction;
4. renames ``.<name>.part`` to ``<name>`` (fsync the directory), then ``<name>.end``
   when the flow asks for markers;
5. marks the transfer ``DONE``.

Memory holds one batch whatever the file's size (a 1,000,000-result push is 258 MB;
SPEC §4). Why this order gives exactly once under kill -9: before step 3 nothing is recorded,
so a restart starts again (the ``.part`` is rewritten under the same name). After
step 3 the decision is durable: if ``.<name>.part`` still exists the rename did not
happen and is done now; if it is gone the rename happened — the file is in the inbox,
or the tax system has already taken it — and is never written again. A file whose
results are all duplicates writes nothing and becomes ``DONE`` in step 3.
"""

from __future__ import annotations

import datetime
import os
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from kei_gateway.adapters.ledger import TransferRow
from kei_gateway.adapters.ledger.leases import Fence, Fenced
from kei_gateway.adapters.ledger.results import DuplicateResult
from kei_gateway.adapters.ports import ResultLedgerPort, TransferLedgerPort
from kei_gateway.adapters.spool import publish_staged, stage_for_inbox, staged_name
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.adapters.transport.names import remote_name
from kei_gateway.core.results import (
    ResultKeyer,
    facts_of,
    unconfirmed_counts,
)
from kei_gateway.core.lease import LeaseKind
from kei_gateway.core.results.identity import raw_fields
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.layouts import get_layout
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking, retry_transient
from kei_gateway.runtime.crashpoints import crashpoint
from kei_gateway.runtime.leases import NodeLeases
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.runtime.timeline import TIMELINE

__all__ = ["ResultRelay", "RelayOutcome", "relay_stored_results", "KIND_LABELS",
           "UNCONFIRMED_CHECK_INTERVAL", "UNCONFIRMED_WINDOW", "RELAY_BATCH", "record_batches"]

FLOW = "mpn-results"
KIND_LABELS = {1: "provisional", 2: "final", 3: "cancellation"}
"""``kind`` label of ``kei_gateway_payment_results_total`` for 収納区分 1 速報, 2 確報, 3 速報取消."""
UNCONFIRMED_CHECK_INTERVAL = 300.0
"""Seconds between refreshes of ``kei_gateway_unconfirmed_results`` and retries of failed relays."""
UNCONFIRMED_WINDOW = datetime.timedelta(days=35)
"""Only 速報 this recent count in the gauge: one nobody will ever confirm stops alerting after a month
(``results reconcile`` still lists it for its day)."""
_ATTEMPTS = 3
RELAY_BATCH = 2_000
"""Records looked up, recorded and staged at a time: about 8 MB of records, digests and insert parameters
(10,000 a batch held 52 MB for the same speed; docs/performance.md)."""

log = Logger(namespace="kei_gateway.flows.mpn_results")


@dataclass(frozen=True)
class RelayOutcome:
    """What relaying one received file did."""

    transfer_id: int
    relay_name: str | None
    """The inbox file of its new results; None when every result was a duplicate."""
    relayed: Counter[int] = field(default_factory=Counter)
    """New results by 収納区分."""
    duplicates: Counter[int] = field(default_factory=Counter)
    """Results already relayed before (or repeated in the file), by 収納区分."""
    already_done: bool = False
    """The transfer was DONE already: nothing happened now."""
    recovered: bool = False
    """The relay had been decided before a stop or crash; only its last steps ran now."""


def record_batches(chunks: Iterable[bytes], record_length: int, size: int = RELAY_BATCH) -> Iterator[list[bytes]]:
    """The whole records of a fixed-length file given in chunks, *size* at a time, in file order."""
    pending = b""
    batch: list[bytes] = []
    for chunk in chunks:
        pending += chunk
        whole = len(pending) - len(pending) % record_length
        for offset in range(0, whole, record_length):
            batch.append(pending[offset:offset + record_length])
            if len(batch) == size:
                yield batch
                batch = []
        pending = pending[whole:]
    if pending:
        raise ValueError(f"the stored file ends with {len(pending)} bytes that are not a whole record")
    if batch:
        yield batch


@retry_transient
def relay_stored_results(*, transfer_id: int, ledger: TransferLedgerPort, results: ResultLedgerPort, store: BlobStore,
                         keyer: ResultKeyer, inbox_dir: str, marker: bool, lg_code: str,
                         now: datetime.datetime, fence: Fence | None = None) -> RelayOutcome:
    """Blocking: relay the new results of the received file of *transfer_id* (see the module docstring); with
    *fence* (SPEC §14) the decision and ``DONE`` commit only while that lease is this node's (else
    :class:`~kei_gateway.adapters.ledger.leases.Fenced`, nothing written)."""
    for _ in range(_ATTEMPTS):
        row = ledger.get(transfer_id)
        if row.state == S.DONE.value:
            return RelayOutcome(transfer_id, row.relay_name, already_done=True)
        if row.state != S.VALIDATED.value or row.blob_id is None:
            raise ValueError(f"transfer {transfer_id} is {row.state}, not a stored VALIDATED results file")
        if row.relay_name is not None:  # decided before a stop or crash: finish it
            publish_staged(inbox_dir, row.relay_name, marker)
            crashpoint("results.published")
            results.finish_relay(transfer_id, now, fence=fence,
                                 audit=(events.RESULTS_RELAY_FINISHED.name, {"flow": FLOW, "name": row.relay_name}))
            return RelayOutcome(transfer_id, row.relay_name, recovered=True)
        try:
            return _relay_once(row, results, store, keyer, inbox_dir, marker, lg_code, now, fence)
        except DuplicateResult:
            continue  # recorded meanwhile by another relay: compute the new ones again
    raise RuntimeError(f"transfer {transfer_id}: its results kept changing while being relayed")


def _relay_once(row: TransferRow, results: ResultLedgerPort, store: BlobStore, keyer: ResultKeyer, inbox_dir: str,
                marker: bool, lg_code: str, now: datetime.datetime, fence: Fence | None = None) -> RelayOutcome:
    assert row.blob_id is not None
    layout = get_layout(FLOW)
    widths = {item.key: item.width for item in layout.fields}
    blob_id = row.blob_id  # narrowed by the assert above, also inside new_records below
    name = remote_name(lg_code, FLOW, row.created_at, row.id)
    relayed: Counter[int] = Counter()
    total: Counter[int] = Counter()
    with results.relay_transaction(row.id, name, now, fence) as relay:
        def new_records() -> Iterator[bytes]:
            index = 0
            for records in record_batches(store.read(blob_id), layout.record_length, RELAY_BATCH):
                # Validated at intake and AEAD-verified as it is read: only the identity fields are sliced out.
                fields = raw_fields((b"".join(records),), layout.offsets, widths, layout.record_length)
                facts = [facts_of(item, index + n, keyer) for n, item in enumerate(fields)]
                fresh = relay.record(facts)
                total.update(item.kind for item in facts)
                relayed.update(item.kind for item in fresh)
                if fresh:
                    yield b"".join(records[item.record_index - index] for item in fresh)
                index += len(records)
            TIMELINE.stamp(row.id, "looked_up")  # every result looked up and inserted; the .part's fsyncs follow

        stage_for_inbox(inbox_dir, name, new_records())
        TIMELINE.stamp(row.id, "staged")
        crashpoint("results.staged")
        if not relayed:  # every result a duplicate: nothing goes to the inbox
            os.unlink(os.path.join(inbox_dir, staged_name(name)))
        # DONE here when every result was a duplicate: the relay's record commits with it
        relay.finish(_summary(sum(relayed.values()), sum(total.values())),
                     audit=_relayed(None, 0, sum(total.values())))
    duplicates = total - relayed
    if not relayed:
        return RelayOutcome(row.id, None, relayed, duplicates)
    TIMELINE.stamp(row.id, "recorded")
    crashpoint("results.recorded")
    publish_staged(inbox_dir, name, marker)
    TIMELINE.stamp(row.id, "published")
    crashpoint("results.published")
    results.finish_relay(row.id, now, audit=_relayed(name, sum(relayed.values()), sum(duplicates.values())),
                         fence=fence)
    return RelayOutcome(row.id, name, relayed, duplicates)


def _relayed(name: str | None, new: int, repeated: int) -> tuple[str, dict[str, Any]]:
    """The relay's audit record, chained in the transaction that makes the transfer DONE."""
    return events.RESULTS_RELAYED.name, {"flow": FLOW, "name": name or "-", "records": new, "duplicates": repeated}


def _summary(fresh: int, total: int) -> str:
    return f"新規 {fresh}, 重複 {total - fresh} (of {total} results)"


class ResultRelay(service.Service):
    """Relays received ``mpn-results`` files one at a time; keeps the unconfirmed gauge current.

    :meth:`relay` is what the pull poller and the push listener call once a file is
    committed; on start, every received file not yet relayed (a stop or crash came
    first) is relayed.
    """

    def __init__(self, *, inbox_dir: str, marker: bool, lg_code: str, ledger: TransferLedgerPort,
                 results: ResultLedgerPort, keyer: ResultKeyer, store: BlobStore, blocking: Blocking, clock: Any,
                 metrics: GatewayMetrics, unconfirmed_after: float,
                 check_interval: float = UNCONFIRMED_CHECK_INTERVAL) -> None:
        self.setName("relay:mpn-results")
        self.inbox_dir, self.marker, self.lg_code = inbox_dir, marker, lg_code
        self.ledger, self.results, self.keyer, self.store = ledger, results, keyer, store
        self.blocking, self.clock, self.metrics = blocking, clock, metrics
        self.unconfirmed_after = unconfirmed_after
        self._lock = defer.DeferredLock()
        self._overdue = 0
        self._check = task.LoopingCall(self._periodic)
        self._check.clock = clock
        self._check_interval = check_interval
        self._recovering: defer.Deferred[Any] | None = None
        for kind in KIND_LABELS.values():
            for outcome in ("relayed", "duplicate"):
                metrics.payment_results.labels(kind=kind, outcome=outcome)
        for age in ("pending", "overdue"):
            metrics.unconfirmed_results.labels(age=age)

    def startService(self) -> None:
        super().startService()
        self._check.start(self._check_interval, now=True)  # relays what is pending at once (see _periodic)

    def _periodic(self) -> defer.Deferred[None]:
        """Every check interval (and at start): relay the files still pending, refresh the unconfirmed gauge.

        Relaying pending files again is what retries a relay that failed (inbox not
        writable, database locked past its retries): nothing else would, since the push
        listener and the poller hand a file over once, and a repeated push is a ``204``.
        """
        if self._recovering is None or self._recovering.called:
            def unlisted(failure: Failure) -> None:
                events.emit(log, events.INTERNAL_ERROR, flow=FLOW,
                            reason=f"listing the results files to relay: {failure.getErrorMessage()}")

            self._recovering = self.relay_pending()
            self._recovering.addErrback(unlisted)
        return self.check_unconfirmed()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._check.running:
            self._check.stop()
        # Whatever relay is running finishes (its steps are short and local); then stop.
        return self._lock.run(lambda: defer.succeed(None))

    def relay(self, row: TransferRow, received_at: float | None = None,
              fence: Fence | None = None) -> defer.Deferred[RelayOutcome]:
        """Relay the committed results file *row*; *received_at* (clock seconds) times a push; *fence*: see
        :class:`~kei_gateway.flows.inbound.relay.Relay`.

        When it fails, the file stays ``VALIDATED`` and is tried again at the next check interval.
        """
        return self._lock.run(self._relay, row.id, received_at, fence)

    leases: NodeLeases | None = None
    """This node's leases (SPEC §14), set by the composition root: the pass over pending files runs under the
    flow's relay lease, on one node at a time, and its commits are fenced by it. None: this process's alone."""

    @defer.inlineCallbacks
    def relay_pending(self) -> Any:
        """Relay every received file still VALIDATED (a stop, crash or failed relay came between)."""
        leases = self.leases
        if leases is None:
            yield self._relay_pending(None)
            return
        fence = yield leases.claim(LeaseKind.RELAY, FLOW)
        if fence is None:
            return  # another node relays the pending files now (or this node may not claim): the next check
        try:
            yield self._relay_pending(fence)
        except Fenced:
            leases.fenced(fence)
            return
        yield leases.release(fence)

    @defer.inlineCallbacks
    def _relay_pending(self, fence: Fence | None) -> Any:
        pending: list[TransferRow] = yield self.blocking.run(
            self.ledger.list_transfers, state=S.VALIDATED.value, flow=FLOW, limit=100_000, oldest_first=True)
        for row in sorted(pending, key=lambda r: r.id):
            if not self.running:
                return
            try:
                yield self.relay(row, fence=fence)
            except Fenced:
                raise  # another node relays the pending files now: this pass stops, its commit refused
            except Exception as error:  # one file's trouble must not keep the others back
                events.emit(log, events.INTERNAL_ERROR, flow=FLOW, transfer_id=row.id,
                            reason=f"relaying the results: {events.describe_error(error)}")

    @defer.inlineCallbacks
    def _relay(self, transfer_id: int, received_at: float | None, fence: Fence | None = None) -> Any:
        TIMELINE.stamp(transfer_id, "relay_start")
        now_seconds = self.clock.seconds()
        now = datetime.datetime.fromtimestamp(now_seconds, datetime.timezone.utc)
        outcome: RelayOutcome = yield self.blocking.run(
            relay_stored_results, transfer_id=transfer_id, ledger=self.ledger, results=self.results,
            store=self.store, keyer=self.keyer, inbox_dir=self.inbox_dir, marker=self.marker, lg_code=self.lg_code,
            now=now, fence=fence)
        TIMELINE.close(transfer_id, "done")  # a push's line (nothing for a pulled file)
        if outcome.already_done:
            return outcome
        if received_at is not None and outcome.relay_name is not None and not outcome.recovered:
            # Push received → its new results durable in the inbox (nothing is written for duplicates).
            self.metrics.relay_latency.observe(max(0.0, self.clock.seconds() - received_at))
        for kind, count in outcome.relayed.items():
            self.metrics.payment_results.labels(kind=KIND_LABELS.get(kind, "unknown"), outcome="relayed").inc(count)
        for kind, count in outcome.duplicates.items():
            self.metrics.payment_results.labels(kind=KIND_LABELS.get(kind, "unknown"), outcome="duplicate").inc(count)
        new, repeated = sum(outcome.relayed.values()), sum(outcome.duplicates.values())
        self.metrics.transfers.labels(flow=FLOW, outcome="relayed" if outcome.relay_name else "duplicate").inc()
        self.metrics.last_success.labels(flow=FLOW).set(self.clock.seconds())
        recorded = self.results.records_audit  # the record was committed with DONE
        if outcome.recovered:
            events.emit(log, events.RESULTS_RELAY_FINISHED, flow=FLOW, transfer_id=transfer_id,
                        name=outcome.relay_name, audit_recorded=recorded)
        else:
            events.emit(log, events.RESULTS_RELAYED, flow=FLOW, transfer_id=transfer_id,
                        name=outcome.relay_name or "-", records=new, duplicates=repeated, audit_recorded=recorded)
        return outcome

    def check_unconfirmed(self) -> defer.Deferred[None]:
        """Refresh ``kei_gateway_unconfirmed_results``; warn when more 速報 are overdue than at the last check."""
        now_seconds = self.clock.seconds()
        now = datetime.datetime.fromtimestamp(now_seconds, datetime.timezone.utc)

        def counted(rows: Any) -> None:
            counts = unconfirmed_counts(rows, now, self.unconfirmed_after)
            for age, count in counts.items():
                self.metrics.unconfirmed_results.labels(age=age).set(count)
            overdue = counts.get("overdue", 0)
            if overdue > self._overdue:
                events.emit(log, events.RESULTS_UNCONFIRMED, flow=FLOW, records=overdue,
                            limit=f"{self.unconfirmed_after / 86400:g}d")
            self._overdue = overdue

        def failed(failure: Any) -> None:
            events.emit(log, events.INTERNAL_ERROR, flow=FLOW,
                        reason=f"counting unconfirmed results: {failure.getErrorMessage()}")

        return self.blocking.run(self.results.open_provisional, now, UNCONFIRMED_WINDOW).addCallbacks(counted, failed)
