"""Nodes, leases and fenced commits in the real ledger (SPEC §14), on SQLite and on PostgreSQL.

Two nodes are two LeaseLedger/TransferLedger pairs on one database (their own engines, as
two processes have); times are passed in. The PostgreSQL-only tests race real threads on
real row locks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine

from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine, upgrade
from kei_gateway.adapters.ledger.leases import Fence, Fenced, LeaseLedger, NodeRefused
from kei_gateway.core.lease import ClaimOutcome
from kei_gateway.core.transfer import TransferState as S

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 2, 7, 0, tzinfo=timezone.utc)
LEASE = 15.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def engines(ledger_url: str) -> Iterator[tuple[Engine, Engine]]:
    first = create_ledger_engine(ledger_url)
    upgrade(first)
    second = create_ledger_engine(ledger_url)
    yield first, second
    first.dispose()
    second.dispose()


def add(ledger: TransferLedger, name: str, state: S = S.QUEUED) -> int:
    return ledger.add_transfer(flow="jnks-payments", direction="out", peer="jnks", local_name=name, state=state,
                               size=10, sha256="ab" * 32, record_count=1, blob_id=f"blob-{name}", now=T0).id


def never_alive(pid: int) -> bool:
    return False


def always_alive(pid: int) -> bool:
    return True


def test_when_two_nodes_claim_one_piece_of_work_then_one_holds_it_until_it_expires_and_then_the_other_takes_over(
        engines: tuple[Engine, Engine]) -> None:
    a, b = LeaseLedger(engines[0], "a", LEASE), LeaseLedger(engines[1], "b", LEASE)
    first = a.claim("purge", "daily", T0)
    assert first.outcome is ClaimOutcome.GRANTED and first.lease is not None and first.lease.token == 1
    assert b.claim("purge", "daily", at(LEASE - 1)).outcome is ClaimOutcome.BUSY
    taken = b.claim("purge", "daily", at(LEASE + 1))
    assert taken.outcome is ClaimOutcome.TAKEN_OVER and taken.previous_holder == "a"
    assert taken.lease is not None and taken.lease.token == 2
    assert a.renew([Fence("purge", "daily", "a", 1)], at(LEASE + 2)) == [Fence("purge", "daily", "a", 1)]
    assert b.renew([Fence("purge", "daily", "b", 2)], at(LEASE + 2)) == []
    assert not a.release(Fence("purge", "daily", "a", 1)), "the old holder cannot release what it lost"
    assert b.release(Fence("purge", "daily", "b", 2))
    again = a.claim("purge", "daily", at(LEASE + 3))
    assert again.outcome is ClaimOutcome.GRANTED and again.lease is not None and again.lease.token == 3


def test_when_a_stalled_node_commits_on_a_transfer_taken_over_then_the_commit_is_fenced_and_nothing_is_written(
        engines: tuple[Engine, Engine]) -> None:
    ledger_a, ledger_b = TransferLedger(engines[0]), TransferLedger(engines[1])
    transfer = add(ledger_a, "a.dat")
    claimed_a = ledger_a.claim_due("jnks-payments", T0, "a", LEASE)
    assert claimed_a is not None and claimed_a.row.id == transfer and claimed_a.fence.token == 1
    ledger_a.transition(transfer, S.SENDING, T0, attempts=1, fence=claimed_a.fence)
    assert ledger_b.claim_due("jnks-payments", at(LEASE - 1), "b", LEASE) is None, "a holds it live"
    # a stalls past its lease; b takes the transfer over: SENDING → QUEUED (the restart rule), a new token
    claimed_b = ledger_b.claim_due("jnks-payments", at(LEASE + 1), "b", LEASE)
    assert claimed_b is not None and claimed_b.decision.outcome is ClaimOutcome.TAKEN_OVER
    assert claimed_b.row.state is S.QUEUED and claimed_b.fence.token == 2
    ledger_b.transition(transfer, S.SENDING, at(LEASE + 1), attempts=2, fence=claimed_b.fence)
    with pytest.raises(Fenced, match="no longer node 'a'"):
        ledger_a.transition(transfer, S.DONE, at(LEASE + 2), fence=claimed_a.fence, release=True,
                            receipt_summary="from a")
    row = ledger_a.get(transfer)
    assert (row.state, row.receipt_summary, row.attempts) == (S.SENDING, None, 2), "the fenced commit wrote nothing"
    done = ledger_b.transition(transfer, S.DONE, at(LEASE + 3), fence=claimed_b.fence, release=True)
    assert done.state is S.DONE
    assert LeaseLedger(engines[0], "a", LEASE).live_leases(at(LEASE + 3)) == {}, "released with DONE"


def test_when_a_node_starts_then_it_requeues_its_own_and_dead_nodes_sends_but_leaves_a_live_nodes_upload(
        engines: tuple[Engine, Engine]) -> None:
    ledger_a, ledger_b = TransferLedger(engines[0]), TransferLedger(engines[1])
    mine, theirs, unleased = add(ledger_a, "a.dat"), add(ledger_a, "b.dat"), add(ledger_a, "c.dat")
    claim_mine = ledger_a.claim_due("jnks-payments", T0, "a", LEASE)
    assert claim_mine is not None and claim_mine.row.id == mine
    ledger_a.transition(mine, S.SENDING, T0, fence=claim_mine.fence)
    claim_theirs = ledger_b.claim_due("jnks-payments", T0, "b", LEASE)
    assert claim_theirs is not None and claim_theirs.row.id == theirs
    ledger_b.transition(theirs, S.SENDING, T0, fence=claim_theirs.fence)
    ledger_a.transition(unleased, S.SENDING, T0)  # a ledger from before leases
    assert ledger_a.requeue_sending(at(1), node="a") == 2
    assert [ledger_a.get(t).state for t in (mine, theirs, unleased)] == [S.QUEUED, S.SENDING, S.QUEUED]
    with pytest.raises(Fenced):
        ledger_a.transition(mine, S.SENDING, at(2), fence=claim_mine.fence)  # its lease was revoked at the start
    assert ledger_a.requeue_sending(at(LEASE + 1), node="a") == 1, "b's lease expired: b is gone"
    assert ledger_a.get(theirs).state is S.QUEUED


def test_when_the_only_candidate_is_held_by_another_node_then_the_next_one_is_claimed(
        engines: tuple[Engine, Engine]) -> None:
    ledger_a, ledger_b = TransferLedger(engines[0]), TransferLedger(engines[1])
    first, second = add(ledger_a, "a.dat"), add(ledger_a, "b.dat")
    claimed_a = ledger_a.claim_due("jnks-payments", T0, "a", LEASE)
    claimed_b = ledger_b.claim_due("jnks-payments", T0, "b", LEASE)
    assert claimed_a is not None and claimed_b is not None
    assert (claimed_a.row.id, claimed_b.row.id) == (first, second)
    assert ledger_b.claim_due("jnks-payments", T0, "b", LEASE) is not None, "b renews its own claim"
    assert TransferLedger(engines[0]).claim_due("jnks-payments", T0, "c", LEASE) is None


def test_when_a_node_joins_under_an_id_another_live_start_uses_then_it_is_refused_naming_node_id(
        engines: tuple[Engine, Engine]) -> None:
    first, second = LeaseLedger(engines[0], "gw1", LEASE), LeaseLedger(engines[1], "gw1", LEASE)
    first.join("inc-1", T0, "host-1", 100, pid_alive=always_alive)
    first.heartbeat("inc-1", at(5))
    expected = r"database\.url is a SQLite ledger" if first.single_node else r"gateway\.node_id = 'gw1'"
    with pytest.raises(NodeRefused, match=expected):
        second.join("inc-2", at(10), "host-2", 200, pid_alive=always_alive)
    second.join("inc-2", at(5 + LEASE + 1), "host-2", 200, pid_alive=always_alive)  # the first stopped beating
    with pytest.raises(NodeRefused, match="taken its place"):
        first.heartbeat("inc-1", at(30))


def test_when_a_crashed_start_of_this_host_left_its_row_then_the_restart_joins_at_once(
        engines: tuple[Engine, Engine]) -> None:
    first, second = LeaseLedger(engines[0], "gw1", LEASE), LeaseLedger(engines[1], "gw1", LEASE)
    first.join("inc-1", T0, "host-1", 100, pid_alive=always_alive)
    second.join("inc-2", at(1), "host-1", 101, pid_alive=never_alive)
    assert [status.node.incarnation for status in second.nodes(at(1))] == ["inc-2"]


def test_when_a_node_leaves_cleanly_then_its_leases_are_free_and_its_row_gone(engines: tuple[Engine, Engine]) -> None:
    a, b = LeaseLedger(engines[0], "a", LEASE), LeaseLedger(engines[1], "b", LEASE)
    a.join("inc-a", T0, "host-a", 1, pid_alive=always_alive)
    a.claim("verify", "audit", T0)
    statuses = a.nodes(at(1))
    assert [(s.node.node_id, s.holds) for s in statuses] == [("a", {"verify": 1})]
    a.leave("inc-a")
    assert a.nodes(at(1)) == []
    assert b.claim("verify", "audit", at(1)).outcome is ClaimOutcome.GRANTED


def test_when_a_second_node_joins_a_sqlite_ledger_then_it_is_refused_naming_database_url(tmp_path: object) -> None:
    engine = create_ledger_engine(f"sqlite:///{tmp_path}/ledger.sqlite3")
    try:
        upgrade(engine)
        LeaseLedger(engine, "gw1", LEASE).join("inc-1", T0, "host-1", 100, pid_alive=always_alive)
        with pytest.raises(NodeRefused, match=r"database\.url is a SQLite ledger, which serves one node only"):
            LeaseLedger(engine, "gw2", LEASE).join("inc-2", at(1), "host-1", 101, pid_alive=always_alive)
        LeaseLedger(engine, "gw2", LEASE).join("inc-2", at(1), "host-1", 101, pid_alive=never_alive)
    finally:
        engine.dispose()


def test_when_the_ledger_is_postgresql_then_a_heartbeat_returns_the_databases_time(postgresql_url: str) -> None:
    engine = create_ledger_engine(postgresql_url)
    try:
        upgrade(engine)
        leases = LeaseLedger(engine, "gw1", LEASE)
        now = datetime.now(timezone.utc)
        leases.join("inc", now, "h", 1, pid_alive=always_alive)
        database_now = leases.heartbeat("inc", now)
        assert database_now is not None and abs((database_now - now).total_seconds()) < 5
        assert database_now.utcoffset() == timedelta(0)
    finally:
        engine.dispose()


def test_when_many_nodes_race_for_transfers_on_postgresql_then_each_transfer_is_claimed_exactly_once(
        postgresql_url: str) -> None:
    setup = create_ledger_engine(postgresql_url)
    upgrade(setup)
    ids = [add(TransferLedger(setup), f"f{n}.dat") for n in range(40)]
    engines = [create_ledger_engine(postgresql_url) for _ in range(4)]
    claims: dict[str, list[int]] = {f"n{i}": [] for i in range(4)}
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def node(index: int) -> None:
        name, ledger = f"n{index}", TransferLedger(engines[index])
        try:
            barrier.wait(10)
            while True:
                claimed = ledger.claim_due("jnks-payments", T0, name, LEASE, scan=5)
                if claimed is None:
                    return
                claims[name].append(claimed.row.id)
                ledger.transition(claimed.row.id, S.SENDING, T0, fence=claimed.fence)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not errors, errors
        assert sorted(sum(claims.values(), [])) == ids, "every transfer claimed, none twice"
        assert sum(1 for got in claims.values() if got) >= 2, "the work was spread over the nodes"
        rows = TransferLedger(setup).list_transfers(limit=100)
        assert sorted(row.id for row in rows if row.state is S.SENDING) == ids
        assert LeaseLedger(setup, "x", LEASE).live_leases(T0) == {"transfer": 40}
    finally:
        for engine in engines:
            engine.dispose()
        setup.dispose()


def test_when_the_purge_lost_its_lease_then_its_erasures_are_fenced_and_the_ledger_keeps_the_payload(
        engines: tuple[Engine, Engine]) -> None:
    from kei_gateway.operations.purge.execute import LEDGER_PRUNABLE_STATES, PurgeLedger

    ledger = TransferLedger(engines[0])
    transfer = add(ledger, "a.dat", S.QUEUED)
    ledger.transition(transfer, S.CANCELLED, T0)
    a, b = LeaseLedger(engines[0], "a", LEASE), LeaseLedger(engines[1], "b", LEASE)
    granted = a.claim("purge", "daily", T0).lease
    assert granted is not None
    purge = PurgeLedger(engines[0])
    purge.fence = Fence("purge", "daily", "a", granted.token)
    purge.check_fence()  # still a's
    assert b.claim("purge", "daily", at(LEASE + 1)).outcome is ClaimOutcome.TAKEN_OVER
    with pytest.raises(Fenced):
        purge.forget_blob(transfer, "blob-a.dat", LEDGER_PRUNABLE_STATES)
    with pytest.raises(Fenced):
        purge.delete_transfers([transfer], at(10 ** 6))
    assert ledger.get(transfer).blob_id == "blob-a.dat", "nothing erased by the node that lost the purge"


def test_when_a_stalled_node_relays_a_pulled_file_taken_over_then_its_decision_and_done_are_fenced(
        engines: tuple[Engine, Engine]) -> None:
    """The relay streams its results on a bare connection (a temporary table): its decision still locks the lease
    row in its own transaction, on SQLite and on PostgreSQL (issue 15 item 2)."""
    from kei_gateway.adapters.ledger.results import ResultLedger
    from kei_gateway.core.results import KIND_PROVISIONAL, ResultFacts

    jst = timezone(timedelta(hours=9))
    ledger_a = TransferLedger(engines[0])
    results_a, results_b = ResultLedger(engines[0]), ResultLedger(engines[1])
    a, b = LeaseLedger(engines[0], "a", LEASE), LeaseLedger(engines[1], "b", LEASE)
    transfer = ledger_a.add_transfer(flow="mpn-results", direction="in", peer="mpn", local_name="r.dat",
                                     state=S.VALIDATED, size=10, sha256="ab" * 32, record_count=1, blob_id="blob-r",
                                     now=T0, remote_name="r.dat").id
    facts = [ResultFacts(identity_key=f"id{n}", match_key=f"m{n}", amount_key=f"a{n}", kind=KIND_PROVISIONAL,
                         channel="01", tax_item="01", pay_method="1",
                         received_at=datetime(2026, 12, 1, 10, n, tzinfo=jst), slip_hint="****0001", record_index=n)
               for n in range(3)]
    granted = a.claim("pull", "mpn-results", T0)
    assert granted.lease is not None
    fence_a = Fence("pull", "mpn-results", "a", granted.lease.token)
    with pytest.raises(Fenced, match="no longer node 'a'"):
        with results_a.relay_transaction(transfer, "r.dat", T0, fence_a) as relay:
            assert len(relay.record(facts)) == 3
            taken = b.claim("pull", "mpn-results", at(LEASE + 1))  # a stalled while reading the file
            assert taken.outcome is ClaimOutcome.TAKEN_OVER
            relay.finish("3 new")
    assert results_a.identities_of_transfer(transfer) == set(), "a's decision wrote nothing"
    assert taken.lease is not None
    fence_b = Fence("pull", "mpn-results", "b", taken.lease.token)
    with results_b.relay_transaction(transfer, "r.dat", at(LEASE + 2), fence_b) as relay:
        assert len(relay.record(facts)) == 3
        relay.finish("3 new")
    assert ledger_a.get(transfer).state is S.DONE, "the decision and DONE are one commit (issue 16)"
    with pytest.raises(Fenced):  # a's late step of an earlier version's two-step relay: refused too
        results_a.finish_relay(transfer, at(LEASE + 3), fence=fence_a)
    assert results_a.identities_of_transfer(transfer) == {"id0", "id1", "id2"}


def test_when_a_node_stops_inside_a_transaction_then_postgresql_ends_it_and_its_row_locks_free_the_others(
        postgresql_url: str) -> None:
    """A node stopped (SIGSTOP) in the middle of a commit holds its row locks — the audit chain's head, a lease row —
    only as long as ``idle_in_transaction`` (the daemon passes its lease): then the server ends its session."""
    import time

    from sqlalchemy import select
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.orm import Session

    from kei_gateway.adapters.ledger.leases import check_fence
    from kei_gateway.adapters.ledger.models import LeaseRow

    stalled_engine = create_ledger_engine(postgresql_url, idle_in_transaction=1.0)
    upgrade(stalled_engine)
    other_engine = create_ledger_engine(postgresql_url, idle_in_transaction=1.0)
    try:
        decision = LeaseLedger(other_engine, "b", LEASE).claim("pull", "jnks-receipts", T0)
        assert decision.lease is not None
        fence_b = Fence("pull", "jnks-receipts", "b", decision.lease.token)
        stalled = Session(stalled_engine)
        stalled.begin()
        stalled.scalars(select(LeaseRow).where(LeaseRow.kind == "pull").with_for_update()).all()  # then stops
        started = time.monotonic()
        with Session(other_engine) as session, session.begin():
            check_fence(session, fence_b)  # waits for the row lock the stopped node holds
        waited = time.monotonic() - started
        assert 0.5 < waited < 10, f"the lock was freed after {waited:.1f}s"
        with pytest.raises(DBAPIError):  # the stopped node continues: its transaction is gone, nothing committed
            stalled.scalars(select(LeaseRow)).all()
            stalled.commit()
        stalled.close()
    finally:
        stalled_engine.dispose()
        other_engine.dispose()
