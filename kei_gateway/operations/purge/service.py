"""The daily purge in the daemon: :class:`PurgeService` runs it at ``gateway.purge_at`` (JST) and at start
when the last one was missed, then calls its ``after_purge`` hook (the audit chain's daily verification)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from kei_gateway.adapters.ledger.leases import Fence, Fenced
from kei_gateway.adapters.ledger.ledger import AuditWriter
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.core.lease import LeaseKind
from kei_gateway.operations.purge.execute import (
    AuditPruner,
    PurgeBusy,
    PurgeLedger,
    PurgeOutcome,
    last_completed,
    reports_directory,
    run_purge,
)
from kei_gateway.operations.purge.plan import AREAS
from kei_gateway.operations.purge.schedule import missed_run, next_scheduled
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.leases import NodeLeases

if TYPE_CHECKING:
    from kei_gateway.config import Config

__all__ = ["PurgeService", "RETRY_AFTER_FAILURE", "make_purge_service", "audit_pruner", "purge_audit_writer"]

RETRY_AFTER_FAILURE = 3600.0
"""A run that failed (in part) is tried again after this long, if the next daily run is later."""


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


class PurgeService(service.Service):
    """Runs *purge* every day at ``purge_at()`` JST, and at start if the last completed run is older than
    the most recent scheduled time.

    *purge* starts one run (off the reactor) and fires with its :class:`PurgeOutcome`;
    *last_completed* fires with the time of the last completed run (from the
    reports), or None. Both are injected, as is the clock, so tests drive the
    schedule with :class:`twisted.internet.task.Clock`.
    """

    log = Logger(namespace="kei_gateway.purge")

    def __init__(self, *, clock: Any, purge_at: Callable[[], tuple[int, int]],
                 purge: Callable[[], defer.Deferred[PurgeOutcome | None]],
                 last_completed: Callable[[], defer.Deferred[datetime.datetime | None]],
                 metrics: Any = None, after_purge: Sequence[Callable[[], object]] = ()) -> None:
        """*purge* fires with None when another node holds the purge's lease (SPEC §14): it runs there, and
        this node looks again after :data:`RETRY_AFTER_FAILURE` whether a run is still missed."""
        self.setName("purge")
        self.clock = clock
        self.purge_at = purge_at
        self._purge = purge
        self._last_completed = last_completed
        self.metrics = metrics
        self.after_purge: list[Callable[[], object]] = list(after_purge)
        """Called after every run, done or failed (the audit chain's daily verification); may return a Deferred."""
        self._call: IDelayedCall | None = None
        self.running_run: defer.Deferred[PurgeOutcome | None] | None = None
        self._busy = False
        self.next_run: datetime.datetime | None = None
        if metrics is not None:
            for area in AREAS:
                metrics.purged_files.labels(area=area)  # exported as 0 from the start

    def startService(self) -> None:
        super().startService()
        self._check_missed()

    def _check_missed(self) -> None:
        d = self._last_completed()
        d.addCallbacks(self._started, self._cannot_tell)

    def _started(self, last: datetime.datetime | None) -> None:
        if not self.running:
            return
        if last is not None and self.metrics is not None:
            self.metrics.last_purge.set(last.timestamp())
        now = _utc(self.clock.seconds())
        due = missed_run(last, now, self.purge_at())
        if due is not None:
            events.emit(self.log, events.PURGE_MISSED, due=due.isoformat(timespec="seconds"),
                        last=last.isoformat(timespec="seconds") if last is not None else "never")
            self.run_now()
        else:
            self._schedule()

    def _cannot_tell(self, failure: Any) -> None:
        events.emit(self.log, events.PURGE_FAILED, reason=f"cannot read the deletion reports: {failure.getErrorMessage()}")
        if self.running:
            self.run_now()

    def _schedule(self, at: datetime.datetime | None = None) -> None:
        if not self.running:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        now = _utc(self.clock.seconds())
        self.next_run = at if at is not None else next_scheduled(now, self.purge_at())
        self._call = self.clock.callLater(max(0.0, (self.next_run - now).total_seconds()), self.run_now)

    def run_now(self) -> defer.Deferred[PurgeOutcome | None]:
        """Start a run now (unless one is running); fires with its outcome, or None if it failed outright."""
        if self.running_run is not None:
            return self.running_run
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._busy = True
        self._elsewhere = False
        started: defer.Deferred[Any] = defer.maybeDeferred(self._purge)
        started.addCallbacks(self._finished, self._failed)
        d: defer.Deferred[PurgeOutcome | None] = started.addBoth(self._after)
        if self._busy:  # not finished synchronously
            self.running_run = d
        return d

    _elsewhere = False

    def _finished(self, outcome: PurgeOutcome | None) -> PurgeOutcome | None:
        if outcome is None:
            self._elsewhere = True
            self.log.info("the daily purge runs on another node (it holds the purge's lease)")
            return None
        counts = outcome.counts()
        if self.metrics is not None:
            for area, count in counts.items():
                if count:
                    self.metrics.purged_files.labels(area=area).inc(count)
        report = outcome.report_paths[1] if outcome.report_paths else "-"
        total = sum(counts.values())
        if outcome.ok:
            if self.metrics is not None and outcome.run is not None:
                self.metrics.last_purge.set(outcome.run.finished_at.timestamp())
            events.emit(self.log, events.PURGE_DONE, files=total, records=total, report=report,
                        store=counts.get("store", 0), inbox=counts.get("inbox", 0),
                        quarantine=counts.get("quarantine", 0), ledger=counts.get("ledger", 0),
                        kept_failed=len(outcome.plan.kept_failed))
        else:
            errors = outcome.run.errors if outcome.run is not None else []
            events.emit(self.log, events.PURGE_FAILED, files=total, records=total,
                        reason=f"{len(errors)} item(s) not erased, first: {errors[0] if errors else '?'}; "
                               f"{total} erased, report {report}")
        return outcome

    def _failed(self, failure: Any) -> None:
        if failure.check(PurgeBusy):  # another run holds the lock (our own words): tried again later
            events.emit(self.log, events.PURGE_FAILED, reason=str(failure.value))
            return None
        events.emit(self.log, events.PURGE_FAILED,
                    reason=events.describe_error(failure.value) if isinstance(failure.value, BaseException) else "?")
        return None

    def _after(self, outcome: PurgeOutcome | None) -> PurgeOutcome | None:
        self._busy = False
        self.running_run = None
        now = _utc(self.clock.seconds())
        daily = next_scheduled(now, self.purge_at())
        if self._elsewhere:
            # Another node runs it: look again later whether it completed (the reports are shared).
            if self.running:
                self._call = self.clock.callLater(RETRY_AFTER_FAILURE, self._check_missed)
            return outcome
        if outcome is None or not outcome.ok:
            retry = now + datetime.timedelta(seconds=RETRY_AFTER_FAILURE)
            self._schedule(min(retry, daily))
        else:
            self._schedule(daily)
        for after in self.after_purge:
            try:
                hook = after()
                if isinstance(hook, defer.Deferred):
                    hook.addErrback(lambda f: events.emit(self.log, events.INTERNAL_ERROR,
                                                          reason=f"after the purge: {f.getErrorMessage()}"))
            except Exception as error:
                events.emit(self.log, events.INTERNAL_ERROR, reason=f"after the purge: {events.describe_error(error)}")
        return outcome

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self.running_run is not None:
            # Let a run in progress finish: its last steps need the blocking pool, stopped after us.
            waiting: defer.Deferred[None] = defer.Deferred()

            def finished(result: object) -> object:
                waiting.callback(None)
                return result

            self.running_run.addBoth(finished)
            return waiting
        return None


def audit_pruner(config: Config, engine: Engine, environ: Mapping[str, str],
                 now: Callable[[], datetime.datetime], actor: str = "kei-gateway") -> AuditPruner | None:
    """Blocking: the audit trail's pruning for the purge, or None when the ledger has no audit table.

    Old records go through :meth:`kei_gateway.operations.audit.AuditLog.purge_before`, which leaves
    an anchor record so the chain stays verifiable.
    """
    log = _audit_log(config, engine, environ)
    if log is None:
        return None
    return lambda cutoff: log.purge_before(cutoff, now(), actor=actor).deleted


def purge_audit_writer(config: Config, engine: Engine, environ: Mapping[str, str],
                       actor: str = "kei-gateway") -> AuditWriter | None:
    """Blocking: what chains a ``purge.erased`` record in the transaction of each ledger erasure (the payload
    forgotten, the metadata deleted), or None when the ledger has no audit table."""
    log = _audit_log(config, engine, environ)
    if log is None:
        return None
    return partial(log.append_in, actor=actor)


def _audit_log(config: Config, engine: Engine, environ: Mapping[str, str]) -> Any:
    from kei_gateway.operations.audit import AuditLog, audit_key_from_config

    log = AuditLog(engine, audit_key_from_config(config, environ))
    return log if log.available() else None


def make_purge_service(*, config: Callable[[], Config], clock: Any, engine: Engine, store: BlobStore,
                       blocking: Blocking, metrics: Any, environ: Mapping[str, str],
                       leases: NodeLeases | None = None) -> PurgeService:
    """The daemon's :class:`PurgeService`: *config* is read at each run (a reload changes the retention
    and ``purge_at``), the work runs through *blocking*. With *leases* (SPEC §14) a run first claims
    the purge's lease and erases only while it holds it: one node purges."""
    ledger = PurgeLedger(engine)

    def now() -> datetime.datetime:
        return _utc(clock.seconds())

    def one_run(fence: Fence | None) -> PurgeOutcome:
        current = config()
        ledger.fence = fence
        ledger.audit_writer = purge_audit_writer(current, engine, environ)
        return run_purge(current, ledger, store, now=now, audit_pruner=audit_pruner(current, engine, environ, now))

    def purge() -> defer.Deferred[PurgeOutcome | None]:
        if leases is None:
            return blocking.run(one_run, None)

        def claimed(fence: Fence | None) -> defer.Deferred[PurgeOutcome | None] | None:
            if fence is None:
                return None
            ran: defer.Deferred[PurgeOutcome | None] = blocking.run(one_run, fence)

            def finished(result: object) -> object:
                if isinstance(result, Failure) and result.check(Fenced):
                    leases.fenced(fence)
                    return result
                return leases.release(fence).addCallback(lambda _: result)  # before a next run can claim

            return ran.addBoth(finished)

        return leases.claim(LeaseKind.PURGE, "daily").addCallback(claimed)

    return PurgeService(clock=clock, purge_at=lambda: config().gateway.purge_at,
                        purge=purge,
                        last_completed=lambda: blocking.run(last_completed, reports_directory(config())),
                        metrics=metrics)
