"""The watchdog pings systemd while the reactor turns and a ledger check ends in time — answered or refused (issue 15)."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from twisted.logger import globalLogPublisher

from kei_gateway.adapters.ledger.db import is_database_failure
from kei_gateway.core.watchdog import ProbeOutcome, WatchdogVerdict, judge_probe
from kei_gateway.runtime.sdnotify import SystemdNotifier, Watchdog, reloading_message, watchdog_interval
from kei_gateway.testing import RecordingNotifier


class WatchdogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.notifier = RecordingNotifier()
        self.health: list[bool] = []

    def make(self, probe: object) -> Watchdog:
        watchdog = Watchdog(self.clock, self.notifier, probe, interval=5.0, on_health=self.health.append)  # type: ignore[arg-type]
        watchdog.start()
        return watchdog

    def test_when_the_database_answers_then_every_interval_pings(self) -> None:
        watchdog = self.make(lambda: defer.succeed(None))
        self.clock.advance(5.0)
        self.clock.advance(5.0)
        self.assertEqual(self.notifier.states("WATCHDOG=1"), ["WATCHDOG=1"] * 3)
        self.assertEqual(self.health, [True, True, True])
        watchdog.stop()

    def test_when_the_database_stalls_then_pings_stop_and_resume_after_it_answers(self) -> None:
        pending: list[defer.Deferred[None]] = []

        def probe() -> defer.Deferred[None]:
            d: defer.Deferred[None] = defer.Deferred()
            pending.append(d)
            return d

        watchdog = self.make(probe)
        for _ in range(4):
            self.clock.advance(5.0)
        self.assertEqual(self.notifier.states("WATCHDOG=1"), [])
        self.assertEqual(len(pending), 1, "no new probe piles up behind a stalled one")
        self.assertIn(False, self.health)
        pending[0].callback(None)  # answered, but far too late: still no ping
        self.assertEqual(self.notifier.states("WATCHDOG=1"), [])
        self.clock.advance(5.0)
        pending[-1].callback(None)
        self.assertEqual(self.notifier.states("WATCHDOG=1"), ["WATCHDOG=1"])
        watchdog.stop()

    def test_when_the_database_refuses_then_pings_go_on_and_the_database_is_reported_down_then_back(self) -> None:
        """A PostgreSQL outage is not a stuck daemon: a restart would not bring it back (issue 15)."""
        refusing = [True]

        def probe() -> defer.Deferred[None]:
            return defer.fail(DatabaseDown("connection refused")) if refusing[0] else defer.succeed(None)

        watchdog = Watchdog(self.clock, self.notifier, probe, interval=5.0, on_health=self.health.append,
                            is_database_failure=lambda error: isinstance(error, DatabaseDown))
        with capture_events() as logged:
            watchdog.start()
            for _ in range(10):  # 50 s: longer than any WatchdogSec= here
                self.clock.advance(5.0)
            refusing[0] = False
            self.clock.advance(5.0)
        self.assertEqual(self.notifier.states("WATCHDOG=1"), ["WATCHDOG=1"] * 12)
        self.assertEqual(self.health, [False] * 11 + [True])
        self.assertEqual([e["kei_event"] for e in logged], ["database.unavailable", "database.available"],
                         "one event when it goes, one when it is back")
        self.assertEqual(logged[1]["seconds"], "55")
        watchdog.stop()

    def test_when_the_check_breaks_in_the_daemon_then_no_ping_is_sent(self) -> None:
        """An error of our own (the connection pool's wait, a bug) is not the database's answer."""
        watchdog = Watchdog(self.clock, self.notifier, lambda: defer.fail(RuntimeError("pool timeout")),
                            interval=5.0, on_health=self.health.append,
                            is_database_failure=lambda error: isinstance(error, DatabaseDown))
        with capture_events() as logged:
            watchdog.start()
            self.clock.advance(5.0)
        self.assertEqual(self.notifier.states("WATCHDOG=1"), [])
        self.assertEqual([e["kei_event"] for e in logged], ["watchdog.starved"], "said once")
        watchdog.stop()

    def test_when_a_ledger_call_hangs_in_the_blocking_pool_then_the_feed_stops_within_the_interval(self) -> None:
        """A pool whose threads never return (a ledger call past every network bound, a hung mount): the check
        queued behind them never ends, and the watchdog goes unfed until systemd restarts the daemon."""
        pool = WedgedPool()
        watchdog = Watchdog(self.clock, self.notifier, lambda: pool.run(lambda: None), interval=5.0,
                            on_health=self.health.append)
        with capture_events() as logged:
            watchdog.start()
            self.assertEqual(self.notifier.states("WATCHDOG=1"), [])
            for _ in range(6):
                self.clock.advance(5.0)
        self.assertEqual(self.notifier.states("WATCHDOG=1"), [])
        self.assertEqual(len(pool.waiting), 1, "no new check piles up behind the wedged one")
        self.assertEqual(sorted(e["kei_event"] for e in logged), ["database.unavailable", "watchdog.starved"],
                         "each said once")
        starved = next(e for e in logged if e["kei_event"] == "watchdog.starved")
        self.assertIn("has not ended after 5.0s", starved["reason"])
        self.assertEqual(set(self.health), {False}, "/readyz and the gauge: no answer")
        watchdog.stop()
        self.assertTrue(pool.waiting[0].called, "stopping cancels the pending check")


class DatabaseDown(Exception):
    """Stands for the driver's error (``sqlalchemy.exc.DBAPIError``)."""


class WedgedPool:
    """A blocking pool whose every thread hangs: work handed to it never runs."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred[object]] = []

    def run(self, f: object) -> defer.Deferred[object]:
        d: defer.Deferred[object] = defer.Deferred()
        d.addErrback(lambda failure: failure.trap(defer.CancelledError))
        self.waiting.append(d)
        return d


class capture_events:
    """The gateway events logged while in the block (their fields)."""

    def __enter__(self) -> list[dict[str, object]]:
        self.logged: list[dict[str, object]] = []
        globalLogPublisher.addObserver(self._observe)
        return self.logged

    def _observe(self, event: dict[str, object]) -> None:
        if "kei_event" in event:
            self.logged.append(event)

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self._observe)


class RuleTests(SynchronousTestCase):
    """:func:`judge_probe`: what feeds the watchdog and what stops it."""

    def test_when_the_check_ends_within_its_bound_then_the_watchdog_is_fed_whatever_the_database_said(self) -> None:
        self.assertEqual(judge_probe(ProbeOutcome.ANSWERED, 0.01, 15.0), WatchdogVerdict(True, True))
        self.assertEqual(judge_probe(ProbeOutcome.REFUSED, 14.9, 15.0, "OperationalError: connection refused"),
                         WatchdogVerdict(True, False, "OperationalError: connection refused"))

    def test_when_the_check_ends_late_then_the_watchdog_is_not_fed_but_the_answer_still_counts(self) -> None:
        late = judge_probe(ProbeOutcome.ANSWERED, 15.5, 15.0)
        self.assertEqual((late.feed, late.database_up), (False, True))
        self.assertIn("took 15.5s (bound 15s)", late.starved)
        refused_late = judge_probe(ProbeOutcome.REFUSED, 40.0, 15.0, "timeout expired")
        self.assertEqual((refused_late.feed, refused_late.database_up, refused_late.database_reason),
                         (False, False, "timeout expired"))

    def test_when_the_check_is_pending_then_nothing_is_fed_and_past_its_bound_it_is_a_hang(self) -> None:
        self.assertEqual(judge_probe(ProbeOutcome.PENDING, 3.0, 15.0), WatchdogVerdict(False, None))
        hung = judge_probe(ProbeOutcome.PENDING, 15.0, 15.0)
        self.assertEqual((hung.feed, hung.database_up, hung.database_reason), (False, False, "no answer within 15s"))
        self.assertIn("hangs", hung.starved)

    def test_when_the_check_breaks_in_the_daemon_then_it_is_not_fed_and_the_database_is_not_judged(self) -> None:
        broken = judge_probe(ProbeOutcome.BROKEN, 0.1, 15.0, "TimeoutError")
        self.assertEqual((broken.feed, broken.database_up), (False, None))
        self.assertIn("TimeoutError", broken.starved)

    def test_when_the_error_is_the_drivers_then_it_is_the_databases_failure_else_the_daemons(self) -> None:
        from sqlalchemy.exc import OperationalError, TimeoutError as PoolTimeout

        self.assertTrue(is_database_failure(OperationalError("SELECT 1", {}, Exception("connection refused"))))
        self.assertFalse(is_database_failure(PoolTimeout("QueuePool limit of size 5 overflow 10 reached")))
        self.assertFalse(is_database_failure(RuntimeError("bug")))


class EnvironmentTests(SynchronousTestCase):
    def test_when_systemd_sets_watchdog_usec_then_the_interval_is_half_of_it(self) -> None:
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "30000000"}), 15.0)
        self.assertIsNone(watchdog_interval({}))
        self.assertIsNone(watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2))
        self.assertEqual(watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, pid=7), 1.0)

    def test_when_there_is_no_notify_socket_then_notifications_are_no_ops(self) -> None:
        notifier = SystemdNotifier({})
        self.assertFalse(notifier.enabled)
        notifier.notify("READY=1")  # must not raise or try to import a socket

    def test_when_reloading_then_monotonic_usec_is_included(self) -> None:
        self.assertEqual(reloading_message(42), "RELOADING=1\nMONOTONIC_USEC=42")


class LedgerBoundsTests(SynchronousTestCase):
    def test_when_the_ledger_is_on_postgresql_then_every_connection_has_network_bounds(self) -> None:
        """connect_timeout, TCP keepalives and tcp_user_timeout on every connection: a database host that vanishes
        fails a ledger call within seconds instead of holding a pool thread for the kernel's TCP timeouts."""
        from sqlalchemy import event

        from kei_gateway.adapters.ledger.db import POSTGRESQL_NETWORK_BOUNDS, create_ledger_engine

        engine = create_ledger_engine("postgresql+psycopg://kei@db.invalid/ledger", idle_in_transaction=15.0)
        seen: dict[str, object] = {}

        class Captured(Exception):
            pass

        @event.listens_for(engine, "do_connect")
        def capture(dialect: object, record: object, cargs: object, cparams: dict[str, object]) -> None:
            seen.update(cparams)
            raise Captured()  # before any socket

        with self.assertRaises(Captured):
            engine.connect()
        engine.dispose()
        for name, value in POSTGRESQL_NETWORK_BOUNDS.items():
            self.assertEqual(seen.get(name), value, name)
        self.assertLessEqual(POSTGRESQL_NETWORK_BOUNDS["connect_timeout"]
                             + POSTGRESQL_NETWORK_BOUNDS["tcp_user_timeout"] / 1000, 15 / 2,
                             "a check to a vanished host ends well within the unit's 15 s ping interval")
