"""The ``airis-reconcile`` daemon flow (SPEC §13): the reactor side of :func:`run_flow_once`.

:class:`AirisReconcileService` checks both outboxes when inotify says something arrived (and every
30 s as a safety net), runs :func:`~kei_gateway.flows.airis_reconcile.run_flow_once` through the
blocking door one run at a time, then logs the run (``airis.reconciled`` or ``airis.rejected``, whose
audit record the run committed with its outcome) and counts ``kei_gateway_airis_vehicles_total{category}``.
:func:`build_airis_flow` is its builder (the composition root calls it like every flow's).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from typing import Any, Final

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from kei_gateway.flows.dependencies import FlowDependencies
from kei_gateway.runtime.one_at_a_time import OneAtATime
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.flows.airis_reconcile import (
    FLOW, MAX_INPUT_BYTES, ErasedInput, FlowPaths, FlowRun, run_flow_once,
)
from kei_gateway.layouts.airis import CATEGORIES
from kei_gateway.layouts.encoding import GaijiPolicy
from kei_gateway.layouts.gaiji import GaijiFallback
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["AirisReconcileService", "RESCAN_INTERVAL", "build_airis_flow"]

RESCAN_INTERVAL: Final = 30.0


class AirisReconcileService(service.Service):
    """The ``airis-reconcile`` flow: inotify on both outboxes wakes a check, a rescan is the safety net."""

    log = Logger()

    def __init__(self, *, paths: FlowPaths, lg_code: str, clock: Any, blocking: Blocking, ledger: Any, store: Any,
                 metrics: GatewayMetrics, note_erased: Callable[[Sequence[ErasedInput], datetime.datetime], object],
                 use_inotify: bool = True, rescan_interval: float = RESCAN_INTERVAL,
                 gaiji: GaijiPolicy = "degenerate", gaiji_fallback: GaijiFallback = "substitute",
                 max_file_size: Callable[[], int] = lambda: MAX_INPUT_BYTES) -> None:
        self.setName(f"flow:{FLOW}")
        self.paths = paths
        self.lg_code = lg_code
        self.clock = clock
        self.blocking = blocking
        self.ledger = ledger
        self.store = store
        self.metrics = metrics
        self.note_erased = note_erased
        self.gaiji: GaijiPolicy = gaiji
        self.gaiji_fallback: GaijiFallback = gaiji_fallback
        self.max_file_size = max_file_size
        """``[gateway] max_file_size`` of the current configuration (reload=live: read at each check)."""
        self._use_inotify = use_inotify
        self._notifier: Any = None
        self._rescan = task.LoopingCall(self.scan_soon)
        self._rescan.clock = clock
        self._rescan_interval = rescan_interval
        self._checks = OneAtATime(self._start_check, may_start=lambda: bool(self.running))
        for code in CATEGORIES:
            metrics.airis_vehicles.labels(category=code)  # exported as 0 from the start

    def startService(self) -> None:
        from kei_gateway.adapters.spool import SHARED_DIR_MODE, ensure_directory

        super().startService()
        for directory in (self.paths.airis_outbox, self.paths.register_outbox):
            ensure_directory(directory, SHARED_DIR_MODE)
        if self._use_inotify:
            from twisted.internet import inotify
            from twisted.python.filepath import FilePath

            self._notifier = inotify.INotify(reactor=self.clock)
            self._notifier.startReading()
            mask = inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_CREATE | inotify.IN_ATTRIB
            for directory in (self.paths.airis_outbox, self.paths.register_outbox):
                self._notifier.watch(FilePath(directory), mask=mask, callbacks=[lambda *_: self.scan_soon()])
        self._rescan.start(self._rescan_interval, now=True)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._rescan.running:
            self._rescan.stop()
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        return self._checks.in_flight

    def scan_soon(self) -> defer.Deferred[None] | None:
        """Check now, or once more after the run in flight."""
        return self._checks.request()

    def _start_check(self) -> defer.Deferred[None]:
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        d: defer.Deferred[None] = self.blocking.run(
            run_flow_once, self.paths, lg_code=self.lg_code, store=self.store, ledger=self.ledger, now=now,
            note_erased=self.note_erased, gaiji=self.gaiji, gaiji_fallback=self.gaiji_fallback,
            max_input_bytes=self.max_file_size()).addCallback(self._report)
        return d.addErrback(self._failed)

    def _report(self, run: FlowRun | None) -> None:
        if run is None:
            return
        # the audit record was committed with the run's outcome (TransferLedger.audit_writer): the observer skips it
        recorded = bool(getattr(self.ledger, "records_audit", False))
        if run.reconciled is not None:
            for code, count in run.counts.items():
                self.metrics.airis_vehicles.labels(category=code).inc(count)
            events.emit(self.log, events.AIRIS_RECONCILED, audit_recorded=recorded, **run.reconciled)
        elif run.rejected is not None:
            events.emit(self.log, events.AIRIS_REJECTED, flow=FLOW, reason=run.rejected, audit_recorded=recorded)
        self.scan_soon()  # another set of inputs may be waiting

    def _failed(self, failure: Any) -> None:
        events.emit(self.log, events.AIRIS_REJECTED, flow=FLOW,
                    reason=f"the run failed: {events.describe_error(failure.value)}; the inputs stay for the next try")


def build_airis_flow(flow: str, config_source: Callable[[], Any], deps: FlowDependencies) -> list[service.Service]:
    """The flow's service (``[flows.airis-reconcile]`` of the current configuration); the composition
    root calls it like every other flow's builder.

    Its settings (``[flows.airis-reconcile]``, ``gateway.lg_code``, ``gateway.spool_dir``) are
    ``reload=restart`` in the schema, so they are read here once; ``gateway.max_file_size`` is
    ``reload=live`` and read at each check. *deps.note_erased* lists the
    plaintext inputs a run erased in the day's 消去報告 (the purge's report, which flows do not
    import: the composition root passes it in).
    """
    config = config_source()
    settings = config.flows[flow]
    paths = FlowPaths(
        airis_outbox=config.spool_path(settings.airis_outbox), register_outbox=config.spool_path(settings.register_outbox),
        inbox=config.spool_path(settings.inbox), quarantine=config.spool_path(os.path.join("quarantine", flow)),
        airis_label=settings.airis_outbox.rstrip("/"),
        register_label=settings.register_outbox.rstrip("/"))
    return [AirisReconcileService(paths=paths, lg_code=config.gateway.lg_code, clock=deps.clock, blocking=deps.blocking,
                                  ledger=deps.ledger, store=deps.store, metrics=deps.metrics,
                                  note_erased=deps.note_erased, use_inotify=deps.use_inotify,
                                  gaiji=settings.gaiji, gaiji_fallback=settings.gaiji_fallback,
                                  max_file_size=lambda: config_source().gateway.max_file_size)]
