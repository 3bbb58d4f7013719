"""NodeLeases (kei_gateway.runtime.leases): heartbeat, renewal, takeover and loss, clock skew, an unreachable
database — two nodes on one in-memory lease table, a task.Clock, no thread, no database."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.runtime.leases import NodeLeases
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.testing import InMemoryLeases, LeaseTable, SynchronousBlocking

LEASE = 15.0
START = 1_796_000_000.0


class NodeLeasesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(START)
        self.table = LeaseTable()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.registry = CollectorRegistry()
        self.a = self.node("a", self.registry)
        self.b = self.node("b", CollectorRegistry())

    def node(self, name: str, registry: CollectorRegistry) -> NodeLeases:
        store = InMemoryLeases(self.table, name, LEASE)
        store.join(f"inc-{name}", self._now(), f"host-{name}", 1)
        return NodeLeases(store=store, incarnation=f"inc-{name}", clock=self.clock, blocking=SynchronousBlocking(),
                          metrics=GatewayMetrics(registry, process=False))

    def _now(self) -> Any:
        import datetime

        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)

    def logged(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("kei_event") == name]

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def test_when_a_node_starts_then_it_heartbeats_may_claim_and_exports_itself_up(self) -> None:
        self.a.startService()
        self.assertTrue(self.a.may_claim)
        self.assertTrue(self.a.readiness().ok)
        self.assertEqual(self.value("kei_gateway_node_up", node="a"), 1.0)
        self.assertEqual(self.value("kei_gateway_node_up", node="b"), 1.0)
        self.assertEqual(self.value("kei_gateway_leases", kind="purge"), 0.0)
        self.a.stopService()

    def test_when_one_node_holds_a_lease_then_the_other_is_busy_and_the_holder_renews_it_while_working(self) -> None:
        self.a.startService()
        self.b.startService()
        fence = self.successResultOf(self.a.claim("purge", "daily"))
        assert fence is not None
        self.assertIsNone(self.successResultOf(self.b.claim("purge", "daily")))
        for _ in range(12):  # a minute: every beat renews
            self.clock.advance(LEASE / 3)
            self.assertIsNone(self.successResultOf(self.b.claim("purge", "daily")))
        self.assertTrue(self.a.holds(fence))
        self.assertEqual(self.value("kei_gateway_leases", kind="purge"), 1.0)
        self.successResultOf(self.a.release(fence))
        self.assertIsNotNone(self.successResultOf(self.b.claim("purge", "daily")))
        self.a.stopService()
        self.b.stopService()

    def test_when_the_holder_stalls_past_its_lease_then_the_other_takes_over_and_the_holder_learns_it_lost_it(
            self) -> None:
        self.a.startService()
        self.b.startService()
        fence = self.successResultOf(self.a.claim("transfer", "7"))
        assert fence is not None
        self.a._loop.stop()  # a stalls: it beats no more
        self.clock.advance(LEASE + 1)
        taken = self.successResultOf(self.b.claim("transfer", "7"))
        assert taken is not None and taken.token == fence.token + 1
        [takeover] = self.logged("lease.takeover")
        self.assertEqual((takeover["node"], takeover["previous"], takeover["kind"]), ("b", "a", "transfer"))
        self.assertEqual(self.b.metrics.registry.get_sample_value("kei_gateway_lease_takeovers_total",
                                                                   {"kind": "transfer"}), 1.0)
        self.successResultOf(self.a.beat())  # a wakes up (SIGCONT)
        self.assertFalse(self.a.holds(fence))
        [lost] = self.logged("lease.lost")
        self.assertEqual((lost["node"], lost["key"]), ("a", "7"))
        self.assertTrue(self.a.may_claim, "and goes on as a normal member")
        self.b.stopService()

    def test_when_the_clock_is_off_the_databases_then_the_node_claims_nothing_and_says_so_once(self) -> None:
        self.table.clock_offset = 5.0
        self.a.startService()
        self.clock.advance(LEASE / 3)
        self.assertFalse(self.a.may_claim)
        self.assertIsNone(self.successResultOf(self.a.claim("purge", "daily")))
        [skew] = self.logged("node.clock_skew")
        self.assertIn("-5.0s off the database's", skew["reason"])
        self.assertFalse(self.a.readiness().ok)
        self.table.clock_offset = 0.5
        self.clock.advance(LEASE / 3)
        self.assertTrue(self.a.may_claim)
        self.a.stopService()

    def test_when_the_database_does_not_answer_then_the_node_claims_nothing_until_it_is_back(self) -> None:
        self.a.startService()
        self.table.unreachable = True
        self.clock.advance(LEASE / 3)
        self.assertFalse(self.a.may_claim)
        self.assertIn("does not answer", self.a.readiness().detail)
        self.assertIsNone(self.successResultOf(self.a.claim("purge", "daily")))
        self.table.unreachable = False
        self.clock.advance(LEASE / 3)
        self.assertTrue(self.a.may_claim)
        self.assertIsNotNone(self.successResultOf(self.a.claim("purge", "daily")))
        self.a.stopService()

    def test_when_a_node_stops_then_it_leaves_the_ledger_and_its_leases_are_free_at_once(self) -> None:
        self.a.startService()
        self.b.startService()
        self.assertIsNotNone(self.successResultOf(self.a.claim("verify", "audit")))
        self.successResultOf(self.a.stopService())  # type: ignore[arg-type]
        self.assertEqual(sorted(self.table.nodes), ["b"])
        self.assertIsNotNone(self.successResultOf(self.b.claim("verify", "audit")))
        self.clock.advance(LEASE / 3)
        self.assertEqual(self.b.metrics.registry.get_sample_value("kei_gateway_node_up", {"node": "a"}), 0.0)
        self.b.stopService()

    def test_when_a_commit_was_fenced_then_the_event_names_the_work_and_the_lease_is_no_longer_renewed(self) -> None:
        self.a.startService()
        fence = self.successResultOf(self.a.claim("transfer", "9"))
        assert fence is not None
        self.a.fenced(fence)
        self.assertFalse(self.a.holds(fence))
        [fenced] = self.logged("lease.fenced")
        self.assertEqual((fenced["node"], fenced["kind"], fenced["key"]), ("a", "transfer", "9"))
        self.a.stopService()

    def test_when_work_is_claimed_before_the_first_heartbeat_came_back_then_the_claim_waits_for_it(self) -> None:
        from twisted.internet import defer

        held: list[tuple[defer.Deferred[Any], Any]] = []

        class HeldBlocking:
            def run(self, f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
                d: defer.Deferred[Any] = defer.Deferred()
                held.append((d, lambda: f(*args, **kwargs)))
                return d

        self.a.blocking = HeldBlocking()
        self.a.startService()  # its first beat waits in the pool
        claim = self.a.claim("purge", "daily")
        self.assertNoResult(claim)
        while held:
            d, work = held.pop(0)
            defer.maybeDeferred(work).chainDeferred(d)
        fence = self.successResultOf(claim)
        assert fence is not None and (fence.kind, fence.node) == ("purge", "a")
        self.a.stopService()
        while held:
            d, work = held.pop(0)
            defer.maybeDeferred(work).chainDeferred(d)
