"""The daemon's audit hook: a log observer that turns audited events into audit records.

Every event the gateway emits (:func:`kei_gateway.runtime.events.emit`) passes through the global
log publisher; :class:`AuditObserver` keeps those whose type is audited (:data:`AUDITED`:
every declared event but ``message``, debug-level ones and ``audit.purged``, which
:meth:`AuditLog.purge_before` writes itself) as records with the actor ``kei-gateway``, in a
bounded in-memory queue. A flush every second (and at stop) appends them in batches, one
transaction per batch, through the blocking door — never on the reactor thread. If the
database is down the records stay queued (up to ``max_queue``), ``audit.write_failed`` is
logged once per outage (and once a minute while it lasts) and events beyond the bound are
dropped and counted in ``kei_gateway_audit_dropped_events_total``: never silently.

An event logged with ``audit_recorded=True`` is skipped: its record was written in the
transaction of the action itself (STYLE 14: ingests, quarantines, sends, relays, accepted and
quarantined pushes, approvals, purge erasures, through ``TransferLedger.audit_writer``), or
just before the action (a reload), which no kill -9 can separate from it.

The records that remain (no ledger transaction: a denied connection, a refused push, the
daemon's start and stop) are also written to the daemon's pending file as they are queued
(:mod:`kei_gateway.operations.audit.spool`, when :meth:`AuditObserver.start` is given one):
a kill -9 loses none of them; the next start chains them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel
from zope.interface import implementer

from kei_gateway.operations.audit.chain import ANCHOR_EVENT, AuditRecord, ChainReport
from kei_gateway.operations.audit.log import AuditLog
from kei_gateway.operations.audit.operator_action import record_from_fields
from kei_gateway.operations.audit.spool import AuditSpool
from kei_gateway.runtime import events

if TYPE_CHECKING:
    from kei_gateway.runtime.blocking import Blocking
    from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["AuditObserver", "AUDITED", "audited_event_names", "verify_now", "DAEMON_ACTOR", "VERIFY_INTERVAL"]

DAEMON_ACTOR = "kei-gateway"
VERIFY_INTERVAL = 24 * 3600.0
_NOT_AUDITED = {"message", ANCHOR_EVENT}
_WARN_EVERY = 60.0


def audited_event_names(event_types: Iterable[events.EventType] = events.ALL_EVENTS) -> frozenset[str]:
    """The events that become audit records: all but ``message``, debug-level ones and ``audit.purged``."""
    return frozenset(e.name for e in event_types if e.name not in _NOT_AUDITED and e.level != LogLevel.debug)


AUDITED = audited_event_names()


@implementer(ILogObserver)
class AuditObserver:
    """Queues audited log events as records; :meth:`start` begins writing them to an :class:`AuditLog`.

    Install it on the global log publisher as early as possible (events before :meth:`start`
    are kept, within the bound). Thread-safe: events logged from worker threads are queued too.
    """

    log = Logger(namespace="kei_gateway.audit")

    def __init__(self, clock: Any, *, audited: frozenset[str] = AUDITED, actor: str = DAEMON_ACTOR,
                 max_queue: int = 10_000, batch_size: int = 500, interval: float = 1.0,
                 log: Logger | None = None) -> None:
        if log is not None:
            self.log = log
        self._clock = clock
        self._audited = audited
        self._actor = actor
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval = interval
        self._queue: deque[AuditRecord] = deque()
        self._lock = threading.RLock()  # reentrant: an event may be logged from a signal handler mid-append
        self._audit_log: AuditLog | None = None
        self._blocking: Blocking | None = None
        self._metrics: GatewayMetrics | None = None
        self._loop: task.LoopingCall | None = None
        self._flushing: defer.Deferred[int] | None = None
        self._spool: AuditSpool | None = None
        self.dropped = 0
        self.written = 0
        self._failing_since: float | None = None
        self._last_warning = 0.0

    # --- the observer ---------------------------------------------------------------

    def __call__(self, event: LogEvent) -> None:
        try:
            name = event.get("kei_event")
            if name not in self._audited or event.get("audit_recorded"):
                return  # not audited, or its record was committed with the action (TransferLedger.audit_writer)
            when = datetime.fromtimestamp(float(event.get("log_time") or self._clock.seconds()), timezone.utc)
            record = record_from_fields(str(name), self._actor, when, event)
            with self._lock:
                if len(self._queue) >= self.max_queue:
                    self.dropped += 1
                    dropped = True
                else:
                    self._queue.append(record)
                    if self._spool is not None:
                        self._spool.write(record)  # in the kernel before the event's emit returns
                    dropped = False
            if dropped and self._metrics is not None:
                self._metrics.audit_dropped.inc()
        except Exception:
            pass  # a log observer must never raise into the logging system

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    # --- writing --------------------------------------------------------------------

    def start(self, audit_log: AuditLog, blocking: Blocking, metrics: GatewayMetrics | None = None,
              spool: AuditSpool | None = None) -> None:
        """Begin flushing every :attr:`interval` seconds (the first flush at once); with *spool*, every record
        queued from now on (and those queued already) is also in its file until chained."""
        self._audit_log, self._blocking, self._metrics = audit_log, blocking, metrics
        if spool is not None:
            with self._lock:
                spool.open(list(self._queue))
                self._spool = spool
        if metrics is not None and self.dropped:
            metrics.audit_dropped.inc(self.dropped)
        self._loop = task.LoopingCall(self.flush)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=True).addErrback(lambda f: None)

    def flush(self) -> defer.Deferred[int]:
        """Append everything queued, batch by batch; fires with the number written (0 on failure)."""
        if self._flushing is not None:
            return self._flushing  # one flush at a time, so batches keep their order
        if self._audit_log is None or self._blocking is None:
            return defer.succeed(0)
        self._flushing = self._flush_all()
        self._flushing.addBoth(self._flushed)
        return self._flushing

    def _flushed(self, result: Any) -> Any:
        self._flushing = None
        return result

    @defer.inlineCallbacks
    def _flush_all(self) -> Any:
        assert self._audit_log is not None and self._blocking is not None
        total = 0
        while True:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
                if not batch and self._spool is not None:
                    self._spool.emptied()  # nothing queued, nothing in flight: every spooled record is chained
            if not batch:
                break
            try:
                yield self._blocking.run(self._audit_log.append_batch, batch)
            except Exception as error:
                if _database_unavailable(error):
                    with self._lock:
                        self._queue.extendleft(reversed(batch))  # back in front, in order
                    self._write_failed(events.describe_error(error))
                    return total
                # The database answers but refuses something in the batch (a value it cannot store):
                # retrying would stop the trail for good, so write the records one by one and drop
                # (and count, and log) only the refused ones.
                written = yield self._append_one_by_one(batch)
                if written is None:
                    return total
                total += written
                continue
            total += len(batch)
            self._counted(batch)
            if self._spool is not None:
                with self._lock:
                    self._spool.compact(list(self._queue))
        self._failing_since = None
        return total

    def _counted(self, records: list[AuditRecord]) -> None:
        self.written += len(records)
        if self._metrics is not None:
            for record in records:
                self._metrics.audit_events.labels(event=record.event).inc()

    @defer.inlineCallbacks
    def _append_one_by_one(self, batch: list[AuditRecord]) -> Any:
        """Append *batch* record by record; None (the rest queued again) if the database goes away meanwhile."""
        assert self._audit_log is not None and self._blocking is not None
        written = 0
        for index, record in enumerate(batch):
            try:
                yield self._blocking.run(self._audit_log.append_batch, [record])
            except Exception as error:
                if _database_unavailable(error):
                    with self._lock:
                        self._queue.extendleft(reversed(batch[index:]))
                    self._write_failed(events.describe_error(error))
                    return None
                self.dropped += 1
                if self._metrics is not None:
                    self._metrics.audit_dropped.inc()
                events.emit(self.log, events.AUDIT_WRITE_FAILED,
                            reason=f"the database refused the record of {record.event}: {events.describe_error(error)}",
                            queued=self.queued, dropped=self.dropped)
                continue
            written += 1
            self._counted([record])
        return written

    def _write_failed(self, reason: str) -> None:
        now = self._clock.seconds()
        if self._failing_since is None or now - self._last_warning >= _WARN_EVERY:
            if self._failing_since is None:
                self._failing_since = now
            self._last_warning = now
            events.emit(self.log, events.AUDIT_WRITE_FAILED, reason=reason, queued=self.queued, dropped=self.dropped)

    def stop(self) -> defer.Deferred[int]:
        """Stop the timer and flush what is queued (call after every other service has stopped)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        waiting = self._flushing if self._flushing is not None else defer.succeed(0)

        def last(_: object) -> defer.Deferred[int]:
            return self.flush()

        def report(written: int) -> int:
            left = self.queued
            if left:
                kept = " (kept in the pending file for the next start)" if self._spool is not None else ""
                events.emit(self.log, events.AUDIT_WRITE_FAILED, reason=f"stopping with the database unavailable{kept}",
                            queued=left, dropped=self.dropped + (0 if self._spool is not None else left))
            if self._spool is not None:
                self._spool.close()
            return written

        return waiting.addBoth(last).addCallback(report)


def verify_now(audit_log: AuditLog, blocking: Blocking, metrics: GatewayMetrics | None = None,
               log: Logger | None = None, *, clock: Any = None) -> defer.Deferred[ChainReport | None]:
    """Walk the chain off the reactor; set ``kei_gateway_audit_chain_ok`` and log the outcome.

    Fires with the report, or ``None`` when the walk could not run (``audit.verify_failed``;
    the gauge is then 0: an unverified chain is not called OK). With a *clock*, either way
    ``kei_gateway_audit_chain_checked_timestamp_seconds`` says when, so a 0 before the first
    check since the start is not taken for a broken chain.
    """
    logger = log if log is not None else AuditObserver.log

    def checked(ok: bool) -> None:
        if metrics is not None:
            metrics.audit_chain_ok.set(1 if ok else 0)
            if clock is not None:
                metrics.audit_chain_checked.set(clock.seconds())

    def done(report: ChainReport) -> ChainReport:
        checked(report.ok)
        if report.problem is None:
            events.emit(logger, events.AUDIT_CHAIN_VERIFIED, count=report.count)
            if report.warning:  # e.g. a head not yet authenticated after the upgrade to 0006
                events.emit(logger, events.MESSAGE, text=f"audit chain: {report.warning}")
        else:
            events.emit(logger, events.AUDIT_CHAIN_BROKEN, sequence=report.problem.sequence,
                        kind=report.problem.kind, reason=report.problem.detail)
        return report

    def failed(failure: Any) -> None:
        checked(False)
        events.emit(logger, events.AUDIT_VERIFY_FAILED, reason=events.describe_error(failure.value))
        return None

    d: defer.Deferred[ChainReport | None] = blocking.run(audit_log.verify).addCallbacks(done, failed)
    return d


def _database_unavailable(error: BaseException) -> bool:
    """Trouble that passes (the database down, locked, a connection lost), as opposed to a refused value."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(error, (OperationalError, OSError)):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)
