"""A relay commits only under a lease that is still its node's (SPEC §14, issue 15 item 2).

A node paused or cut off past its lease while it relays a pulled file (or the pending files)
must not commit the relay decision or ``DONE`` once another node holds the work: the check is
made in the commit's own transaction, not only before acting. The contract runs on the
SQLAlchemy ledgers (in-memory SQLite) and on the twins; the flows on the twins.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool
from twisted.internet import task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.adapters.ledger import TransferLedger, upgrade
from kei_gateway.adapters.ledger.leases import Fence, Fenced, LeaseLedger
from kei_gateway.adapters.ledger.results import ResultLedger
from kei_gateway.core.results import KIND_PROVISIONAL, ResultFacts, ResultKeyer
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.inbound.downloads import DownloadPoller
from kei_gateway.flows.inbound.mpn_results import ResultRelay
from kei_gateway.flows.inbound.relay import InboxRelay
from kei_gateway.flows.peer_link import FixedPeerLink
from kei_gateway.layouts import generate_file, get_layout
from kei_gateway.runtime.leases import NodeLeases
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.testing import InMemoryBlobStore, InMemoryLedger, InMemoryLeases, InMemoryPeer, \
    InMemoryResultLedger, SynchronousBlocking
from tests.unit.helpers import temporary_directory

NOW = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.timezone.utc)
LATER = NOW + dt.timedelta(seconds=16)  # past a 15 s lease
JST = dt.timezone(dt.timedelta(hours=9))


# -- the ledgers' contract ------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlalchemy", "twin"])
def ledgers(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any, Any, Any]]:
    """(transfers, results, node a's lease store, node b's) on one database."""
    if request.param == "twin":
        ledger = InMemoryLedger()
        yield (ledger, InMemoryResultLedger(ledger), InMemoryLeases(ledger.leases, "a", 15.0),
               InMemoryLeases(ledger.leases, "b", 15.0))
        return
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    upgrade(engine)
    yield TransferLedger(engine), ResultLedger(engine), LeaseLedger(engine, "a", 15.0), LeaseLedger(engine, "b", 15.0)
    engine.dispose()


def facts(n: int) -> ResultFacts:
    return ResultFacts(identity_key=f"id{n}", match_key=f"m{n}", amount_key=f"a{n}", kind=KIND_PROVISIONAL,
                       channel="01", tax_item="01", pay_method="1",
                       received_at=dt.datetime(2026, 11, 20, 10, n, tzinfo=JST), slip_hint="****0001",
                       record_index=n)


def received(ledger: Any, name: str) -> Any:
    return ledger.add_transfer(flow="mpn-results", direction="in", peer="mpn", local_name=name, state=S.VALIDATED,
                               size=10, sha256="ab" * 32, record_count=1, blob_id=f"blob-{name}", now=NOW,
                               remote_name=name)


def claimed(store: Any, when: dt.datetime) -> Fence:
    decision = store.claim("pull", "mpn-results", when)
    assert decision.lease is not None
    return Fence("pull", "mpn-results", store.node_id, decision.lease.token)


def test_when_the_lease_was_taken_over_during_the_relay_then_its_decision_commits_nothing(ledgers: Any) -> None:
    ledger, results, a, b = ledgers
    row = received(ledger, "r.dat")
    fence = claimed(a, NOW)
    with pytest.raises(Fenced):
        with results.relay_transaction(row.id, "r.dat", NOW, fence) as relay:
            relay.record([facts(1), facts(2)])
            claimed(b, LATER)  # a stalled past its lease while it read the file; b took the pull over
            relay.finish("2 new")
    assert results.identities_of_transfer(row.id) == set(), "no result recorded"
    after = ledger.get(row.id)
    assert (after.state, after.relay_name) == (S.VALIDATED, None)


def test_when_the_lease_was_taken_over_after_an_earlier_versions_decision_then_done_is_not_committed(
        ledgers: Any) -> None:
    """Since issue 16 the decision and DONE are one commit; a transfer decided by an earlier version (relay name
    committed, not yet DONE) is finished by finish_relay, which is fenced too."""
    ledger, results, a, b = ledgers
    row = received(ledger, "r.dat")
    fence = claimed(a, NOW)
    results.record_relay(row.id, [facts(1)], "r.dat", NOW, "1 new", done=False)
    claimed(b, LATER)
    with pytest.raises(Fenced):
        results.finish_relay(row.id, LATER, fence=fence)
    with pytest.raises(Fenced):
        ledger.update(row.id, LATER, fence=fence, receipt_summary="stale")
    assert ledger.get(row.id).state is S.VALIDATED
    assert ledger.get(row.id).receipt_summary == "1 new"
    results.finish_relay(row.id, LATER, fence=claimed(b, LATER))  # the holder finishes it
    assert ledger.get(row.id).state is S.DONE


def test_when_every_result_is_a_duplicate_and_the_lease_was_lost_then_the_transfer_stays_validated(
        ledgers: Any) -> None:
    ledger, results, a, b = ledgers
    first = received(ledger, "r1.dat")
    results.record_relay(first.id, [facts(1)], "r1.dat", NOW, "1 new", done=True)
    row = received(ledger, "r2.dat")
    fence = claimed(a, NOW)
    claimed(b, LATER)
    with pytest.raises(Fenced):
        with results.relay_transaction(row.id, "r2.dat", NOW, fence) as relay:
            assert relay.record([facts(1)]) == []
            relay.finish("0 new")
    assert ledger.get(row.id).state is S.VALIDATED


def test_when_small_files_are_relayed_together_and_one_lease_was_lost_then_none_of_them_commits(
        ledgers: Any) -> None:
    """Issue 16: a group's commit checks each file's fence; one lost lease and nothing of the group is written."""
    from kei_gateway.adapters.ledger.results import RelayDecision

    ledger, results, a, b = ledgers
    pushed, pulled = received(ledger, "pushed.dat"), received(ledger, "pulled.dat")
    fence = claimed(a, NOW)
    claimed(b, LATER)
    with pytest.raises(Fenced):
        results.commit_relays([RelayDecision(pushed.id, [facts(1)], "p.dat", "1 new"),
                               RelayDecision(pulled.id, [facts(2)], "q.dat", "1 new", fence=fence)], LATER)
    assert [ledger.get(t.id).state for t in (pushed, pulled)] == [S.VALIDATED, S.VALIDATED]
    assert results.known_identities({"id1", "id2"}) == set()


# -- the flows ------------------------------------------------------------------------------------------------

RESULTS_URL = "https://127.0.0.1:9/results/"
NAME = "pay-001.dat.result"


def node_leases(ledger: InMemoryLedger, name: str, clock: task.Clock) -> NodeLeases:
    store = InMemoryLeases(ledger.leases, name, 15.0)
    store.join(f"inc-{name}", dt.datetime.fromtimestamp(clock.seconds(), dt.timezone.utc), name, 1)
    leases = NodeLeases(store=store, incarnation=f"inc-{name}", clock=clock, blocking=SynchronousBlocking(),
                        metrics=GatewayMetrics(CollectorRegistry(), process=False))
    leases.startService()
    return leases


class FlowCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(temporary_directory(self))
        self.ledger = InMemoryLedger()
        self.store = InMemoryBlobStore()
        self.clock = task.Clock()
        self.clock.advance(NOW.timestamp())
        self.metrics = GatewayMetrics(CollectorRegistry(), process=False)
        self.inbox = self.base / "inbox"
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def take_over_on_read(self, kind: str, key: str) -> None:
        """The next read of the store (the relay reading the received file) is where this node stalls past its
        lease: node b takes (*kind*, *key*) over meanwhile — after every check made before acting."""
        original = self.store.read
        b = InMemoryLeases(self.ledger.leases, "b", 15.0)

        def read(blob_id: str) -> Any:
            self.store.read = original  # type: ignore[method-assign]
            assert b.claim(kind, key, LATER).lease is not None
            return original(blob_id)

        self.store.read = read  # type: ignore[method-assign]

    def events(self) -> list[Any]:
        return [entry.get("kei_event") for entry in self.logged]


class PulledReceiptTests(FlowCase):
    def poller(self) -> tuple[DownloadPoller, InMemoryPeer]:
        data = b"".join(generate_file(get_layout("jnks-receipts"), 3, seed=4, today=dt.date(2026, 11, 21)))
        client = InMemoryPeer("jnks", {RESULTS_URL + NAME: data})
        leases = node_leases(self.ledger, "a", self.clock)
        relay = InboxRelay(flow="jnks-receipts", peer="jnks", inbox_dir=str(self.inbox), marker=False,
                           ledger=self.ledger, store=self.store, blocking=SynchronousBlocking(), clock=self.clock,
                           metrics=self.metrics)
        relay.leases = leases
        poller = DownloadPoller(
            flow="jnks-receipts", layout_name="jnks-receipts", link=FixedPeerLink("jnks", client, results_url=RESULTS_URL),
            quarantine_dir=str(self.base / "quarantine"), relay=relay, ledger=self.ledger, store=self.store,
            blocking=SynchronousBlocking(), clock=self.clock, metrics=self.metrics, poll_interval=60.0)
        poller.leases = leases
        return poller, client

    def test_when_the_received_file_is_taken_over_while_it_is_relayed_then_nothing_is_relayed_nor_deleted(
            self) -> None:
        poller, client = self.poller()
        self.take_over_on_read("received", "1")  # the pulled file's relay lease, written with its commit
        poller.startService()
        self.addCleanup(poller.stopService)
        [row] = self.ledger.inbound_for("jnks-receipts", NAME)
        self.assertEqual((row.state, row.relay_name), (S.VALIDATED, None), "the relay decision was refused")
        self.assertFalse((self.inbox / NAME).exists())
        self.assertNotIn("DELETE", client.methods())
        self.assertIn("lease.fenced", self.events())
        self.assertNotIn(("received", "1"), set(poller.leases.held))

    def test_when_the_pull_is_taken_over_while_the_receipt_is_relayed_then_it_is_relayed_once_and_not_deleted(
            self) -> None:
        """The relay is the received file's own work (its lease, this node's): it commits; the DELETE at the
        peer is the pull's, and the pull is another node's now (it finds the file DONE and deletes it)."""
        poller, client = self.poller()
        self.take_over_on_read("pull", "jnks-receipts")
        poller.startService()
        self.addCleanup(poller.stopService)
        [row] = self.ledger.inbound_for("jnks-receipts", NAME)
        self.assertIs(row.state, S.DONE)
        self.assertTrue((self.inbox / NAME).exists())
        self.assertNotIn("DELETE", client.methods())
        self.assertIn("lease.fenced", self.events())
        self.assertIsNone(self.ledger.leases.leases[("received", "1")].holder, "released with DONE")
        self.assertNotIn(("pull", "jnks-receipts"), {(f.kind, f.key) for f in poller.leases.held.values()})


class PendingResultsTests(FlowCase):
    def setUp(self) -> None:
        super().setUp()
        self.results = InMemoryResultLedger(self.ledger)
        self.relay = ResultRelay(inbox_dir=str(self.inbox), marker=False, lg_code="131041", ledger=self.ledger,
                                 results=self.results, keyer=ResultKeyer([b"\x05" * 32]), store=self.store,
                                 blocking=SynchronousBlocking(), clock=self.clock, metrics=self.metrics,
                                 unconfirmed_after=3 * 86400.0)
        data = b"".join(generate_file(get_layout("mpn-results"), 4, seed=7, today=dt.date(2026, 11, 21)))
        info = self.store.write("in-r", [data])
        self.row = self.ledger.add_transfer(flow="mpn-results", direction="in", peer="mpn", local_name="r.dat",
                                            state=S.VALIDATED, size=len(data), sha256=info.sha256, record_count=4,
                                            blob_id="in-r", now=NOW, remote_name="r.dat")

    def test_when_another_node_relays_the_pending_files_then_this_one_leaves_them(self) -> None:
        other = node_leases(self.ledger, "b", self.clock)
        self.assertIsNotNone(self.successResultOf(other.claim("relay", "mpn-results")))
        self.relay.leases = node_leases(self.ledger, "a", self.clock)
        self.relay.startService()  # its first check relays what is pending
        self.addCleanup(self.relay.stopService)
        self.assertIs(self.ledger.get(self.row.id).state, S.VALIDATED)

    def test_when_the_pending_pass_runs_then_it_relays_under_the_relay_lease_and_releases_it(self) -> None:
        self.relay.leases = node_leases(self.ledger, "a", self.clock)
        self.relay.startService()  # its first check relays what is pending
        self.addCleanup(self.relay.stopService)
        self.assertIs(self.ledger.get(self.row.id).state, S.DONE)
        self.assertIsNone(self.ledger.leases.leases[("relay", "mpn-results")].holder)

    def test_when_the_files_lease_is_taken_over_mid_relay_then_no_result_is_recorded_and_the_event_says_so(
            self) -> None:
        self.relay.leases = node_leases(self.ledger, "a", self.clock)
        self.take_over_on_read("received", str(self.row.id))
        self.relay.startService()  # its first check relays what is pending
        self.addCleanup(self.relay.stopService)
        self.assertIs(self.ledger.get(self.row.id).state, S.VALIDATED)
        self.assertEqual(self.results.identities_of_transfer(self.row.id), set())
        self.assertFalse(self.inbox.exists() and [p for p in self.inbox.iterdir() if not p.name.startswith(".")])
        self.assertIn("lease.fenced", self.events())
