"""Watching an outbox: inotify wakes a scan, a periodic rescan is the safety net (SPEC §4).

Scans run one at a time through the blocking door; an event during a scan asks
for one more scan afterwards, so nothing is missed and nothing runs twice at once.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from kei_gateway.adapters.ledger.leases import Fence, Fenced
from kei_gateway.adapters.ledger.ledger import FencedLedger
from kei_gateway.adapters.ports import TransferLedgerPort
from kei_gateway.adapters.spool import NAME_PATTERN, SHARED_DIR_MODE, classify, ensure_directory, list_entries
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.config import OutboundFlowSection
from kei_gateway.core.jst import today_in_jst
from kei_gateway.core.lease import LeaseKind
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.outbound.ingest import DEFAULT_MAX_FILE_SIZE, IngestResult, ingest_file, quarantine_refused
from kei_gateway.layouts import ValidationOptions, get_layout
from kei_gateway.runtime.one_at_a_time import OneAtATime
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.leases import NodeLeases
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["OutboxWatcher", "RESCAN_INTERVAL", "loggable_name"]

RESCAN_INTERVAL = 30.0


def loggable_name(name: str) -> str:
    """An outbox name fit for one log line: an allowed name as it is, any other escaped (no newline, ASCII only)."""
    return name if NAME_PATTERN.fullmatch(name) else ascii(name)


class OutboxWatcher(service.Service):
    """Ingests the ready files of one outbound flow's outbox."""

    log = Logger()

    leases: NodeLeases | None = None
    """This node's leases (SPEC §14), set by the flow's builder: a scan runs only under the outbox's lease and
    commits fenced by it. None: the outbox is this process's alone."""

    def __init__(self, *, flow: str, settings: OutboundFlowSection, outbox_dir: str, quarantine_dir: str,
                 lg_code: str, clock: Any, blocking: Blocking, ledger: TransferLedgerPort, store: BlobStore,
                 metrics: GatewayMetrics, on_ingested: Callable[[IngestResult], None] = lambda result: None,
                 use_inotify: bool = True, rescan_interval: float = RESCAN_INTERVAL,
                 max_file_size: Callable[[], int] = lambda: DEFAULT_MAX_FILE_SIZE) -> None:
        self.setName(f"outbox:{flow}")
        self.flow = flow
        self.settings = settings
        self.outbox_dir = outbox_dir
        self.quarantine_dir = quarantine_dir
        self.lg_code = lg_code
        self.clock = clock
        self.blocking = blocking
        self.ledger = ledger
        self.store = store
        self.metrics = metrics
        self.on_ingested = on_ingested
        self.max_file_size = max_file_size
        """``[gateway] max_file_size``, read at each scan (a reload changes it)."""
        self.layout = get_layout(flow)
        self._use_inotify = use_inotify
        self._notifier: Any = None
        self._rescan = task.LoopingCall(self.scan_soon)
        self._rescan.clock = clock
        self._rescan_interval = rescan_interval
        self._scans = OneAtATime(self._start_scan, may_start=lambda: bool(self.running))
        self._stuck: dict[str, str] = {}
        """The entries the last scan left in the outbox (name → reason), reported once until that changes."""
        self.scans = 0

    def startService(self) -> None:
        super().startService()
        ensure_directory(self.outbox_dir, SHARED_DIR_MODE)
        if self._use_inotify:
            from twisted.internet import inotify

            self._notifier = inotify.INotify(reactor=self.clock)
            self._notifier.startReading()
            mask = inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_CREATE | inotify.IN_ATTRIB
            self._notifier.watch(FilePath(self.outbox_dir), mask=mask, callbacks=[lambda *_: self.scan_soon()])
        self._rescan.start(self._rescan_interval, now=True)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._rescan.running:
            self._rescan.stop()
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        return self._scans.in_flight  # a scan in flight finishes its file before the stop completes

    def scan_soon(self) -> defer.Deferred[None] | None:
        """Scan now, or once more after the scan in flight."""
        return self._scans.request()

    def _start_scan(self) -> defer.Deferred[Any]:
        leases = self.leases
        if leases is None:
            d: defer.Deferred[Any] = self.blocking.run(self._scan, self.clock.seconds(), None)
            return d.addCallback(self._report).addErrback(self._scan_failed)

        def claimed(fence: Fence | None) -> Any:
            if fence is None:
                return None  # another node scans this outbox now (or this node may not claim): its next scan
            scanned: defer.Deferred[Any] = self.blocking.run(self._scan, self.clock.seconds(), fence)
            scanned.addCallback(self._report)

            def finished(result: Any) -> Any:
                if isinstance(result, Failure) and result.check(Fenced):
                    leases.fenced(fence)
                    return None
                # The scan is over once the lease is free: a next scan's claim must not race the release (a
                # release landing after the next claim renewed the same token would fence that scan's commits).
                return leases.release(fence).addCallback(lambda _: result)

            return scanned.addBoth(finished).addErrback(self._scan_failed)

        return leases.claim(LeaseKind.INGEST, self.flow).addCallback(claimed)

    def _scan(self, seconds: float, fence: Fence | None = None) -> list[IngestResult]:
        """Blocking: list, refuse what must be refused, ingest what is ready; with *fence* (the outbox's lease,
        SPEC §14) every commit is fenced, so two nodes never ingest one file twice."""
        ledger: Any = self.ledger if fence is None else FencedLedger(self.ledger, fence)
        self.scans += 1
        now = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
        decision = classify(list_entries(self.outbox_dir), self.settings.ready)
        max_file_size = self.max_file_size()
        results = []
        for refusal in decision.refused:
            try:
                results.append(quarantine_refused(self.flow, self.outbox_dir, self.quarantine_dir, refusal.name,
                                                  refusal.reason, refusal.detail, ledger, self.settings.peer,
                                                  now, self.store, max_file_size=max_file_size))
            except Fenced:
                raise  # another node holds this outbox now: this scan stops
            except PermissionError as error:  # e.g. a 0555 directory cannot be moved: it costs that entry only
                results.append(IngestResult(refusal.name, "skipped", reason=(
                    f"{refusal.reason}: {refusal.detail}; it cannot be moved to quarantine "
                    f"({error.strerror}): remove it from the outbox")))
            except Exception as error:  # one entry's failure must not stop the others
                results.append(IngestResult(refusal.name, "failed", reason=events.describe_error(error)))
        options = ValidationOptions(today=today_in_jst(seconds), encoding=self.settings.encoding,  # type: ignore[arg-type]
                                    charset=self.settings.charset, gaiji=self.settings.gaiji,  # type: ignore[arg-type]
                                    gaiji_fallback=self.settings.gaiji_fallback,  # type: ignore[arg-type]
                                    lg_code=self.lg_code if self.flow == "jnks-payments" else None)
        for name in decision.ready:
            try:
                results.append(ingest_file(
                    flow=self.flow, peer=self.settings.peer, outbox_dir=self.outbox_dir,
                    quarantine_dir=self.quarantine_dir, name=name, marker=decision.markers.get(name),
                    layout=self.layout, options=options, hold_over_records=self.settings.hold_over_records,
                    store=self.store, ledger=ledger, now=now, max_file_size=max_file_size))
            except Fenced:
                raise
            except Exception as error:  # one file's failure must not stop the others; it stays for the next scan
                results.append(IngestResult(name, "failed", reason=events.describe_error(error)))
        return results

    def _report(self, results: list[IngestResult]) -> None:
        stuck = {result.name: result.reason for result in results if result.outcome in ("skipped", "failed")}
        recorded = self.ledger.records_audit  # each ingest's record was committed with its transfer
        for result in results:
            if result.outcome in ("skipped", "failed") and self._stuck.get(result.name) == result.reason:
                continue  # said once already: an entry left in the outbox is not reported at every scan
            result = dataclasses.replace(result, name=loggable_name(result.name))
            if result.outcome in ("queued", "held", "resumed"):
                events.emit(self.log, events.INGEST_QUEUED, flow=self.flow, name=result.name, records=result.records,
                            transfer_id=result.transfer_id, sha256=result.sha256, degenerated=result.degenerated,
                            state=S.HELD if result.outcome == "held" else S.QUEUED, audit_recorded=recorded)
                if result.outcome != "resumed":
                    self.metrics.records.labels(flow=self.flow, outcome="accepted").inc(result.records)
                    if result.degenerated:
                        self.metrics.degenerated_characters.labels(flow=self.flow).inc(result.degenerated)
            elif result.outcome == "quarantined":
                events.emit(self.log, events.INGEST_QUARANTINED, flow=self.flow, name=result.name,
                            transfer_id=result.transfer_id, reason=result.reason, records=result.records,
                            audit_recorded=recorded)
                self.metrics.transfers.labels(flow=self.flow, outcome="quarantined").inc()
                if result.records:
                    self.metrics.records.labels(flow=self.flow, outcome="rejected").inc(result.records)
            elif result.outcome in ("skipped", "failed"):
                events.emit(self.log, events.INGEST_FAILED, flow=self.flow, name=result.name, reason=result.reason)
            self.on_ingested(result)
        self._stuck = stuck

    def _scan_failed(self, failure: Any) -> None:
        events.emit(self.log, events.INGEST_FAILED, flow=self.flow, name="(scan)",
                    reason=events.describe_error(failure.value))
