"""The watchdog pings systemd only while the reactor and the database answer."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

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

    def test_when_the_database_fails_then_no_ping_is_sent(self) -> None:
        watchdog = self.make(lambda: defer.fail(RuntimeError("disk I/O error")))
        self.clock.advance(5.0)
        self.assertEqual(self.notifier.states("WATCHDOG=1"), [])
        self.assertEqual(self.health, [False, False])
        watchdog.stop()


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
