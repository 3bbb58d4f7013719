"""PurgeService: the daily schedule at gateway.purge_at (JST) and the missed purge at start, on a task.Clock."""

from __future__ import annotations

import datetime
from typing import Any, cast

from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.operations.purge.execute import PurgeBusy, PurgeOutcome
from kei_gateway.operations.purge.plan import PurgePlan
from kei_gateway.operations.purge.report import ErasedItem, PurgeRun
from kei_gateway.operations.purge.service import RETRY_AFTER_FAILURE, PurgeService
from kei_gateway.runtime.metrics import GatewayMetrics

UTC = datetime.timezone.utc
JST = datetime.timezone(datetime.timedelta(hours=9))


def at(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> float:
    return datetime.datetime(year, month, day, hour, minute, second, tzinfo=JST).timestamp()


class Harness:
    def __init__(self, case: SynchronousTestCase, start: float, last: datetime.datetime | None,
                 outcomes: list[Any] | None = None) -> None:
        self.clock = task.Clock()
        self.clock.advance(start)
        self.runs: list[float] = []
        self.after = 0
        self.outcomes = outcomes or []
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, process=False)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        case.addCleanup(globalLogPublisher.removeObserver, observer)
        self.service = PurgeService(clock=self.clock, purge_at=lambda: (0, 30), purge=self.purge,
                                    last_completed=lambda: defer.succeed(last), metrics=self.metrics,
                                    after_purge=[self.after_purge])

    def purge(self) -> defer.Deferred[PurgeOutcome]:
        self.runs.append(self.clock.seconds())
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), UTC)
        result = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(result, Exception):
            return defer.fail(result)
        items = [ErasedItem(now, "store", "done.dat", "ab" * 32, 10, "c", "r"),
                 ErasedItem(now, "inbox", "inbox/x/R.dat", "cd" * 32, 5, "c", "r")]
        errors = ["store x.dat: PermissionError: Permission denied"] if result == "partial" else []
        run = PurgeRun(now, now, items, errors)
        return defer.succeed(PurgeOutcome(PurgePlan(now), run, ("/r/erasure.csv", "/r/erasure.txt")))

    def after_purge(self) -> None:
        self.after += 1

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def kinds(self) -> list[str]:
        return [e["kei_event"] for e in self.events if str(e.get("kei_event", "")).startswith("purge.")]


class PurgeServiceTests(SynchronousTestCase):
    def test_when_the_daemon_starts_after_a_missed_purge_then_it_runs_at_once_and_then_daily(self) -> None:
        h = Harness(self, at(2026, 11, 22, 9, 0), last=datetime.datetime(2026, 11, 21, 0, 30, 5, tzinfo=JST))
        h.service.startService()
        self.assertEqual(h.runs, [at(2026, 11, 22, 9, 0)])
        self.assertEqual(h.kinds(), ["purge.missed", "purge.done"])
        self.assertEqual(h.after, 1)
        self.assertEqual(h.service.next_run, datetime.datetime(2026, 11, 23, 0, 30, tzinfo=JST))
        self.assertEqual(h.value("kei_gateway_purged_files_total", area="store"), 1)
        self.assertEqual(h.value("kei_gateway_purged_files_total", area="inbox"), 1)
        self.assertEqual(h.value("kei_gateway_purged_files_total", area="quarantine"), 0)
        self.assertEqual(h.value("kei_gateway_last_purge_timestamp_seconds"), at(2026, 11, 22, 9, 0))

    def test_when_the_last_purge_is_recent_then_start_runs_nothing_and_sets_the_gauge(self) -> None:
        last = datetime.datetime(2026, 11, 22, 0, 30, 2, tzinfo=JST)
        h = Harness(self, at(2026, 11, 22, 9, 0), last=last)
        h.service.startService()
        self.assertEqual(h.runs, [])
        self.assertEqual(h.after, 0)
        self.assertEqual(h.value("kei_gateway_last_purge_timestamp_seconds"), last.timestamp())

    def test_when_the_clock_crosses_midnight_then_the_purge_fires_at_0030_jst_every_day(self) -> None:
        h = Harness(self, at(2026, 11, 21, 23, 0), last=datetime.datetime(2026, 11, 21, 0, 30, 1, tzinfo=JST))
        h.service.startService()
        self.assertEqual(h.runs, [])
        h.clock.advance(at(2026, 11, 22, 0, 29, 59) - h.clock.seconds())
        self.assertEqual(h.runs, [])
        h.clock.advance(1)
        self.assertEqual(h.runs, [at(2026, 11, 22, 0, 30)])
        h.clock.advance(86400 - 1)
        self.assertEqual(len(h.runs), 1)
        h.clock.advance(1)
        self.assertEqual(h.runs, [at(2026, 11, 22, 0, 30), at(2026, 11, 23, 0, 30)])
        self.assertEqual(h.after, 2)

    def test_when_a_run_fails_then_it_is_tried_again_an_hour_later_and_not_marked_done(self) -> None:
        h = Harness(self, at(2026, 11, 22, 0, 29), last=datetime.datetime(2026, 11, 21, 0, 30, 1, tzinfo=JST),
                    outcomes=["partial", OSError("disk"), "ok"])
        h.service.startService()
        h.clock.advance(60)
        self.assertEqual(h.kinds(), ["purge.failed"])
        self.assertEqual(h.value("kei_gateway_last_purge_timestamp_seconds"),
                         datetime.datetime(2026, 11, 21, 0, 30, 1, tzinfo=JST).timestamp())
        self.assertEqual(h.value("kei_gateway_purged_files_total", area="store"), 1)  # what it did erase counts
        h.clock.advance(RETRY_AFTER_FAILURE)
        self.assertEqual(h.kinds(), ["purge.failed", "purge.failed"])
        h.clock.advance(RETRY_AFTER_FAILURE)
        self.assertEqual(h.kinds(), ["purge.failed", "purge.failed", "purge.done"])
        self.assertEqual(len(h.runs), 3)
        self.assertEqual(h.after, 3)  # the verification runs after every run
        self.assertEqual(h.service.next_run, datetime.datetime(2026, 11, 23, 0, 30, tzinfo=JST))

    def test_when_another_run_holds_the_lock_then_the_run_says_so_and_is_tried_again_an_hour_later(self) -> None:
        """A node stopped in the middle of its purge (or an operator's run) holds the lock: this node's run gives
        up at once (PurgeBusy), says why in our own words, and looks again after RETRY_AFTER_FAILURE."""
        h = Harness(self, at(2026, 11, 22, 0, 29), last=datetime.datetime(2026, 11, 21, 0, 30, 1, tzinfo=JST),
                    outcomes=[PurgeBusy("/state/reports/.purge.lock", 5.0), "ok"])
        h.service.startService()
        h.clock.advance(60)
        failed = [e for e in h.events if e.get("kei_event") == "purge.failed"]
        self.assertEqual(len(failed), 1)
        self.assertIn("another purge run holds /state/reports/.purge.lock", failed[0]["reason"])
        self.assertEqual(h.service.next_run, datetime.datetime(2026, 11, 22, 1, 30, tzinfo=JST))
        h.clock.advance(RETRY_AFTER_FAILURE)
        self.assertEqual(h.kinds(), ["purge.failed", "purge.done"])
        self.assertEqual(len(h.runs), 2)

    def test_when_the_service_stops_then_no_purge_fires_later(self) -> None:
        h = Harness(self, at(2026, 11, 21, 23, 0), last=datetime.datetime(2026, 11, 21, 0, 30, 1, tzinfo=JST))
        h.service.startService()
        h.service.stopService()
        h.clock.advance(3 * 86400)
        self.assertEqual(h.runs, [])
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_when_a_run_is_in_progress_then_stopping_waits_for_it_and_a_second_run_is_not_started(self) -> None:
        h = Harness(self, at(2026, 11, 22, 9, 0), last=datetime.datetime(2026, 11, 22, 0, 30, 1, tzinfo=JST))
        pending: defer.Deferred[PurgeOutcome] = defer.Deferred()
        h.service._purge = lambda: pending
        h.service.startService()
        first = h.service.run_now()
        self.assertIs(h.service.run_now(), first)
        stopped = h.service.stopService()
        assert stopped is not None
        self.assertNoResult(stopped)
        now = datetime.datetime.fromtimestamp(h.clock.seconds(), UTC)
        pending.callback(PurgeOutcome(PurgePlan(now), PurgeRun(now, now, []), ("a", "b")))
        self.successResultOf(stopped)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_when_another_node_holds_the_purge_then_this_one_skips_it_and_looks_again_an_hour_later(self) -> None:
        last = [datetime.datetime(2026, 11, 21, 0, 30, 1, tzinfo=JST)]
        h = Harness(self, at(2026, 11, 22, 0, 29), last=last[0])
        h.service._last_completed = lambda: defer.succeed(last[0])
        elsewhere = [True]

        def purge() -> defer.Deferred[PurgeOutcome | None]:
            if elsewhere[0]:
                return defer.succeed(None)  # the lease is the other node's
            return h.purge()  # type: ignore[return-value]

        h.service._purge = purge
        h.service.startService()
        h.clock.advance(60)
        self.assertEqual((h.runs, h.kinds(), h.after), ([], [], 0), "no run here, no failure, no verification")
        last[0] = datetime.datetime(2026, 11, 22, 0, 31, tzinfo=JST)  # the other node completed it
        h.clock.advance(RETRY_AFTER_FAILURE)
        self.assertEqual(h.runs, [])
        self.assertEqual(h.service.next_run, datetime.datetime(2026, 11, 23, 0, 30, tzinfo=JST))
        elsewhere[0] = False
        h.clock.advance(at(2026, 11, 23, 0, 30) - h.clock.seconds())
        self.assertEqual(h.runs, [at(2026, 11, 23, 0, 30)])
