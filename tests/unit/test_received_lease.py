"""A received file's relay lease (kind ``received``, issue 15, SPEC §14): two nodes never relay one file at once.

The node that accepts a file (push or pull) writes the file's ``received`` lease in the commit that accepts it,
renews it while it relays, and releases it with ``DONE``. Another node's pending pass relays the file only once
that lease has expired (a takeover), and the stalled node's commit is then fenced; each relay stages under its
own token, so the fenced node removes only its own copy and the restart rule publishes only the committer's.

The pure rule, the ledgers' contract (SQLAlchemy on in-memory SQLite, and the twins) and the flow on the twins.
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
from kei_gateway.adapters.ledger.leases import Fenced, Hold, LeaseLedger
from kei_gateway.adapters.ledger.results import RelayDecision, ResultLedger
from kei_gateway.core.lease import FIRST_TOKEN, ClaimOutcome, LeaseKind, StagedAction, staged_action
from kei_gateway.core.results import ResultKeyer
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.inbound.mpn_results import ResultRelay, finish_published
from kei_gateway.layouts import generate_file, get_layout
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.testing import InMemoryBlobStore, InMemoryLedger, InMemoryLeases, InMemoryResultLedger, \
    SynchronousBlocking
from tests.unit.helpers import temporary_directory
from tests.unit.test_relay_fencing import facts, node_leases

NOW = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.timezone.utc)
LATER = NOW + dt.timedelta(seconds=16)  # past a 15 s lease
RECEIVED = LeaseKind.RECEIVED.value


# -- the rule -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("done", "relay_name", "tag", "committed", "action"), [
    (False, None, 1, None, StagedAction.LEAVE),  # its relay stages it again and decides
    (True, "x.dat", 2, 2, StagedAction.PUBLISH),  # the committer's copy, cut off before its rename
    (True, "x.dat", 1, 2, StagedAction.DISCARD),  # a node fenced (or killed) before it could remove its copy
    (True, "x.dat", 1, None, StagedAction.DISCARD),
    (True, "x.dat", None, None, StagedAction.PUBLISH),  # one node, no tag: the rule of before
    (True, None, 2, 2, StagedAction.DISCARD),  # DONE with nothing new
    (True, "y.dat", None, None, StagedAction.DISCARD),
])
def test_only_the_committing_relays_staged_copy_is_published(done: bool, relay_name: str | None, tag: int | None,
                                                             committed: int | None, action: StagedAction) -> None:
    assert staged_action(done=done, relay_name=relay_name, name="x.dat", tag=tag, committed=committed) is action


# -- the ledgers' contract ------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlalchemy", "twin"])
def ledgers(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any, Any]]:
    """(transfers, results, a lease store to read leases with) on one database."""
    if request.param == "twin":
        ledger = InMemoryLedger()
        yield ledger, InMemoryResultLedger(ledger), InMemoryLeases(ledger.leases, "x", 15.0)
        return
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    upgrade(engine)
    yield TransferLedger(engine), ResultLedger(engine), LeaseLedger(engine, "x", 15.0)
    engine.dispose()


def accepted(ledger: Any, name: str, node: str = "a") -> Any:
    return ledger.add_transfer(flow="mpn-results", direction="in", peer="mpn", local_name=name, state=S.VALIDATED,
                               size=10, sha256="ab" * 32, record_count=1, blob_id=f"blob-{name}", now=NOW,
                               remote_name=name, hold=Hold(RECEIVED, node, 15.0))


def test_when_a_file_is_accepted_with_a_hold_then_its_lease_is_the_accepting_nodes_in_the_same_commit(
        ledgers: Any) -> None:
    ledger, _, _ = ledgers
    row = accepted(ledger, "r.dat")
    assert ledger.received_token(row.id) == FIRST_TOKEN
    assert ledger.claim_received(row.id, "b", NOW + dt.timedelta(seconds=5), 15.0) is None, "live: a's to relay"
    mine = ledger.claim_received(row.id, "a", NOW + dt.timedelta(seconds=5), 15.0)
    assert mine is not None and mine.decision.outcome is ClaimOutcome.RENEWED and mine.fence.token == FIRST_TOKEN


def test_when_the_accepting_node_stalls_past_its_lease_then_another_takes_the_file_over_and_the_first_is_fenced(
        ledgers: Any) -> None:
    ledger, results, _ = ledgers
    row = accepted(ledger, "r.dat")
    first = Hold(RECEIVED, "a", 15.0).fence(row.id)
    taken = ledger.claim_received(row.id, "b", LATER, 15.0)
    assert taken is not None and taken.decision.outcome is ClaimOutcome.TAKEN_OVER
    assert (taken.decision.previous_holder, taken.fence.token) == ("a", FIRST_TOKEN + 1)
    with pytest.raises(Fenced):
        results.commit_relays([RelayDecision(row.id, [facts(1)], "r.dat", "1 new", fence=first)], LATER)
    assert ledger.get(row.id).state is S.VALIDATED and results.known_identities({"id1"}) == set()
    results.commit_relays([RelayDecision(row.id, [facts(1)], "r.dat", "1 new", fence=taken.fence)], LATER)
    assert ledger.get(row.id).state is S.DONE
    assert ledger.received_token(row.id) == taken.fence.token, "released with DONE, the committer's token kept"
    assert ledger.claim_received(row.id, "a", LATER + dt.timedelta(seconds=60), 15.0) is None, "DONE: never again"


def test_when_a_large_files_relay_commits_then_its_lease_is_released_with_done(ledgers: Any) -> None:
    ledger, results, store = ledgers
    row = accepted(ledger, "big.dat")
    with results.relay_transaction(row.id, "big.dat", NOW, Hold(RECEIVED, "a", 15.0).fence(row.id)) as relay:
        relay.record([facts(1), facts(2)])
        relay.finish("2 new")
    assert ledger.get(row.id).state is S.DONE
    assert store.live_leases(NOW).get(RECEIVED, 0) == 0, "released in the DONE commit"
    assert ledger.received_token(row.id) == FIRST_TOKEN


def test_when_a_file_was_accepted_without_a_lease_then_a_pending_pass_may_claim_it(ledgers: Any) -> None:
    """A file accepted by a version before the lease (or on one node) has no lease row: granted, first token."""
    ledger, _, _ = ledgers
    row = ledger.add_transfer(flow="mpn-results", direction="in", peer="mpn", local_name="old.dat",
                              state=S.VALIDATED, size=10, sha256="ab" * 32, record_count=1, blob_id="blob-old",
                              now=NOW, remote_name="old.dat")
    assert ledger.received_token(row.id) is None
    claimed = ledger.claim_received(row.id, "b", NOW, 15.0)
    assert claimed is not None and claimed.decision.outcome is ClaimOutcome.GRANTED
    assert claimed.fence.token == FIRST_TOKEN


# -- the flow: two nodes' relays on one ledger (twins) --------------------------------------------------------


class TwoNodesTests(SynchronousTestCase):
    """Nodes a and b share the transfers, the results, the store and the inbox; each has its own clock (a stalled
    node's clock does not move, so it does not renew)."""

    def setUp(self) -> None:
        self.inbox = Path(temporary_directory(self)) / "inbox"
        self.ledger = InMemoryLedger()
        self.results = InMemoryResultLedger(self.ledger)
        self.store = InMemoryBlobStore()
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        self.clocks = {name: task.Clock() for name in ("a", "b")}
        for clock in self.clocks.values():
            clock.advance(NOW.timestamp())
        self.leases = {name: node_leases(self.ledger, name, clock) for name, clock in self.clocks.items()}
        self.relays = {name: self.relay_of(name) for name in ("a", "b")}
        self.data = b"".join(generate_file(get_layout("mpn-results"), 4, seed=7, today=dt.date(2026, 11, 21)))

    def relay_of(self, name: str) -> ResultRelay:
        relay = ResultRelay(inbox_dir=str(self.inbox), marker=True, lg_code="131041", ledger=self.ledger,
                            results=self.results, keyer=ResultKeyer([b"\x05" * 32]), store=self.store,
                            blocking=SynchronousBlocking(), clock=self.clocks[name],
                            metrics=GatewayMetrics(CollectorRegistry(), process=False), unconfirmed_after=3 * 86400.0)
        relay.leases = self.leases[name]
        relay.startService()  # (nothing pending yet)
        self.addCleanup(relay.stopService)
        return relay

    def accept_on_a(self) -> Any:
        """What node a's push listener does: the file stored, committed VALIDATED with its lease held by a."""
        info = self.store.write("in-r", [self.data])
        hold = self.leases["a"].hold_received()
        assert hold is not None
        row = self.ledger.add_transfer(flow="mpn-results", direction="in", peer="mpn", local_name="r.dat",
                                       state=S.VALIDATED, size=len(self.data), sha256=info.sha256, record_count=4,
                                       blob_id="in-r", now=NOW, remote_name="r.dat", hold=hold)
        self.leases["a"].adopt_held(hold.fence(row.id))
        return row, hold.fence(row.id)

    def inbox_files(self) -> list[str]:
        return sorted(p.name for p in self.inbox.iterdir()) if self.inbox.exists() else []

    def events(self) -> list[Any]:
        return [entry.get("kei_event") for entry in self.logged]

    def test_when_the_accepting_node_relays_a_file_then_the_others_pending_pass_leaves_it(self) -> None:
        row, _ = self.accept_on_a()
        self.clocks["b"].advance(5)  # within a's lease
        self.successResultOf(self.relays["b"].relay_pending())
        self.assertIs(self.ledger.get(row.id).state, S.VALIDATED, "b left it to a")
        self.assertEqual(self.inbox_files(), [])

    def test_when_the_accepting_node_stalls_then_the_others_pass_takes_the_file_over_within_a_lease_and_a_third(
            self) -> None:
        """On a shared ledger the pending pass runs every third of the lease (not every 5 minutes): a file whose
        node stopped renewing is relayed by the other node within ``lease + lease/3`` of its last renewal."""
        row, _ = self.accept_on_a()
        self.assertEqual(self.relays["b"].pending_interval(), 5.0)
        self.clocks["b"].advance(10)  # a is stopped (its clock does not move): its lease runs out at 15 s
        self.assertIs(self.ledger.get(row.id).state, S.VALIDATED)
        self.clocks["b"].advance(10)
        self.assertIs(self.ledger.get(row.id).state, S.DONE)
        self.assertIn("lease.takeover", self.events())

    def test_when_a_stalls_between_its_lookup_and_its_staging_then_b_relays_it_and_a_commits_and_publishes_nothing(
            self) -> None:
        """The race of issue 16's notes: a looked the results up before b's commit and stages after b's commit and
        rename. With one staging name a's copy was left ``.name.part`` of a transfer DONE under that name, and the
        restart rule published it a second time. Now a stages under its own token, is fenced, removes its copy."""
        row, fence = self.accept_on_a()
        original = self.results.known_identities
        b_ran: list[bool] = []

        def known_identities(keys: Any) -> set[str]:
            found = original(keys)  # a's lookup: nothing known yet
            if not b_ran:
                b_ran.append(True)
                self.results.known_identities = original  # type: ignore[method-assign]
                self.clocks["b"].advance(16)  # a stalls here past its lease; b's pending pass runs meanwhile
                self.successResultOf(self.relays["b"].relay_pending())
            return found

        self.results.known_identities = known_identities  # type: ignore[method-assign]
        self.failureResultOf(self.relays["a"].relay(row, fence=fence), Fenced)
        name = self.ledger.get(row.id).relay_name
        self.assertIs(self.ledger.get(row.id).state, S.DONE)
        self.assertEqual(self.inbox_files(), [name, f"{name}.end"], "b's copy, once; nothing of a's left staged")
        self.assertEqual(finish_published(ledger=self.ledger, inbox_dir=str(self.inbox)), [])
        self.assertEqual(self.inbox_files(), [name, f"{name}.end"])
        self.assertEqual(len(self.results.identities_of_transfer(row.id)), 4)
        self.assertIn("lease.takeover", self.events())
        self.assertIn("lease.fenced", self.events())
        takeovers = self.relays["b"].leases.metrics.lease_takeovers.labels(kind=RECEIVED)._value.get()  # type: ignore[union-attr]
        self.assertEqual(takeovers, 1)
        self.assertEqual(self.leases["a"].held, {}, "a no longer renews it")
        self.assertEqual(self.leases["b"].held.get((RECEIVED, str(row.id))), None, "released with DONE")

    def test_when_a_crash_leaves_copies_of_two_relays_staged_then_only_the_committers_is_published(self) -> None:
        """a staged its copy and was killed; b took the file over, committed it and was killed before its rename:
        the restart rule publishes b's copy and removes a's."""
        row, _ = self.accept_on_a()
        taken = self.ledger.claim_received(row.id, "b", LATER, 15.0)
        assert taken is not None
        name = "131041_mpn-results_x_%d.dat" % row.id
        from kei_gateway.adapters.spool import stage_relays

        stage_relays(str(self.inbox), [(name, [b"a's copy"])], marker=False, tags={name: FIRST_TOKEN})
        stage_relays(str(self.inbox), [(name, [b"b's copy"])], marker=False, tags={name: taken.fence.token})
        self.results.commit_relays([RelayDecision(row.id, [facts(1)], name, "1 new", fence=taken.fence)], LATER)
        self.assertEqual(finish_published(ledger=self.ledger, inbox_dir=str(self.inbox)), [name])
        self.assertEqual(self.inbox_files(), [name])
        self.assertEqual((self.inbox / name).read_bytes(), b"b's copy")
