"""The ledger twins keep the ledgers' contract: each test runs on the SQLAlchemy adapters (an in-memory
SQLite database, migrated) and on kei_gateway.testing's InMemoryLedger / InMemoryResultLedger."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from kei_gateway.adapters.ledger import TransferLedger, TransferNotFound, upgrade
from kei_gateway.adapters.ledger.results import DuplicateResult, NotRelayable, RelayDecision, ResultLedger
from kei_gateway.core.results import KIND_FINAL, KIND_PROVISIONAL, ResultFacts
from kei_gateway.core.transfer import InvalidTransition, Transition
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.testing import InMemoryLedger, InMemoryResultLedger

NOW = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.timezone.utc)
JST = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture(params=["sqlalchemy", "twin"])
def ledgers(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    if request.param == "twin":
        ledger = InMemoryLedger()
        yield ledger, InMemoryResultLedger(ledger)
        return
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    upgrade(engine)
    yield TransferLedger(engine), ResultLedger(engine)
    engine.dispose()


def add(ledger: Any, name: str, state: S = S.QUEUED, *, direction: str = "out", flow: str = "jnks-payments",
        when: dt.datetime = NOW, **fields: Any) -> Any:
    return ledger.add_transfer(flow=flow, direction=direction, peer="jnks", local_name=name, state=state, size=10,
                               sha256="ab" * 32, record_count=1, blob_id=f"blob-{name}", now=when, **fields)


def facts(n: int, kind: int = KIND_PROVISIONAL, match: str | None = None) -> ResultFacts:
    return ResultFacts(identity_key=f"id{n}-{kind}", match_key=match or f"m{n}", amount_key=f"a{n}", kind=kind,
                       channel="01", tax_item="01", pay_method="1",
                       received_at=dt.datetime(2026, 11, 20, 10, n, tzinfo=JST), slip_hint="****0001",
                       record_index=n)


def test_when_transfers_are_added_then_they_read_back_with_their_state_as_a_transfer_state(ledgers: Any) -> None:
    ledger, _ = ledgers
    row = add(ledger, "a.dat", S.HELD)
    assert ledger.get(row.id) == row
    assert row.state is S.HELD and str(row.state) == "HELD"
    with pytest.raises(TransferNotFound):
        ledger.get(row.id + 100)


def test_when_a_transition_is_illegal_then_both_refuse_it_with_the_same_words(ledgers: Any) -> None:
    ledger, _ = ledgers
    row = add(ledger, "a.dat", S.DONE)
    with pytest.raises(InvalidTransition, match="a DONE transfer cannot become QUEUED"):
        ledger.transition(row.id, S.QUEUED, NOW)


def test_when_a_decision_is_applied_then_state_and_fields_change_together(ledgers: Any) -> None:
    ledger, _ = ledgers
    row = add(ledger, "a.dat", S.SENDING)
    later = NOW + dt.timedelta(minutes=5)
    after = ledger.apply(row.id, Transition(S.RETRY_WAIT, {"next_attempt_at": later, "last_error": "x"}), NOW)
    assert (after.state, after.next_attempt_at, after.last_error) == (S.RETRY_WAIT, later, "x")


def test_when_the_daemon_restarts_then_only_sending_transfers_are_queued_again(ledgers: Any) -> None:
    ledger, _ = ledgers
    sending, held = add(ledger, "a.dat", S.SENDING), add(ledger, "b.dat", S.HELD)
    assert ledger.requeue_sending(NOW) == 1
    assert (ledger.get(sending.id).state, ledger.get(held.id).state) == (S.QUEUED, S.HELD)


def test_when_transfers_wait_then_due_lists_queued_and_ripe_retries_in_order(ledgers: Any) -> None:
    ledger, _ = ledgers
    first = add(ledger, "a.dat")
    ripe = add(ledger, "b.dat", S.SENDING)
    ledger.transition(ripe.id, S.RETRY_WAIT, NOW, next_attempt_at=NOW - dt.timedelta(seconds=1))
    unripe = add(ledger, "c.dat", S.SENDING)
    ledger.transition(unripe.id, S.RETRY_WAIT, NOW, next_attempt_at=NOW + dt.timedelta(hours=1))
    add(ledger, "d.dat", S.QUEUED, direction="in")
    assert [r.id for r in ledger.due("jnks-payments", NOW)] == [first.id, ripe.id]
    assert [r.id for r in ledger.due("jnks-payments", NOW, limit=1)] == [first.id]


def test_when_transfers_are_listed_then_filters_order_and_counts_agree(ledgers: Any) -> None:
    ledger, _ = ledgers
    a = add(ledger, "a.dat", when=NOW - dt.timedelta(hours=2))
    b = add(ledger, "b.dat", S.HELD)
    c = add(ledger, "c.dat", flow="jnks-receipts", direction="in", state=S.VALIDATED, remote_name="c.dat")
    assert [r.id for r in ledger.list_transfers()] == [c.id, b.id, a.id]
    assert [r.id for r in ledger.list_transfers(oldest_first=True, limit=2)] == [a.id, b.id]
    assert [r.id for r in ledger.list_transfers(state=S.HELD)] == [b.id]
    assert [r.id for r in ledger.list_transfers(flow="jnks-receipts")] == [c.id]
    assert ledger.queue_counts() == {("jnks-payments", "QUEUED"): 1, ("jnks-payments", "HELD"): 1,
                                     ("jnks-receipts", "VALIDATED"): 1}
    assert ledger.oldest_queued() == {"jnks-payments": NOW - dt.timedelta(hours=2)}
    assert ledger.referenced_blobs() == {"blob-a.dat", "blob-b.dat", "blob-c.dat"}


def test_when_names_are_looked_up_then_inbound_is_newest_first_and_outbound_by_remote_name(ledgers: Any) -> None:
    ledger, _ = ledgers
    older = add(ledger, "r.dat", S.QUARANTINED, direction="in", remote_name="r.dat")
    newer = add(ledger, "r.dat", S.VALIDATED, direction="in", remote_name="r.dat")
    sent = add(ledger, "p.dat", remote_name="X_1.dat")
    assert [r.id for r in ledger.inbound_for("jnks-payments", "r.dat")] == [newer.id, older.id]
    assert ledger.by_remote_name("jnks-payments", "X_1.dat").id == sent.id
    assert ledger.by_remote_name("jnks-payments", "r.dat") is None
    assert ledger.unremoved_source("jnks-payments", "p.dat", "ab" * 32).id == sent.id
    ledger.update(sent.id, NOW, source_removed=True)
    assert ledger.unremoved_source("jnks-payments", "p.dat", "ab" * 32) is None


def test_when_results_are_relayed_then_they_are_recorded_with_the_decision_and_a_repeat_is_refused(
        ledgers: Any) -> None:
    ledger, results = ledgers
    row = add(ledger, "r.dat", S.VALIDATED, direction="in", flow="mpn-results", remote_name="r.dat")
    results.record_relay(row.id, [facts(1), facts(2)], "r.dat", NOW, "2 new", done=True)
    done = ledger.get(row.id)
    assert (done.state, done.relay_name, done.receipt_summary) == (S.DONE, "r.dat", "2 new")
    assert results.known_identities({"id1-1", "id9-1"}) == {"id1-1"}
    assert results.identities_of_transfer(row.id) == {"id1-1", "id2-1"}
    again = add(ledger, "r2.dat", S.VALIDATED, direction="in", flow="mpn-results", remote_name="r2.dat")
    with pytest.raises(DuplicateResult):
        results.record_relay(again.id, [facts(2)], "r2.dat", NOW, "0 new", done=True)
    assert ledger.get(again.id).state is S.VALIDATED, "nothing written"


def test_when_a_final_result_arrives_then_its_provisional_is_no_longer_open(ledgers: Any) -> None:
    ledger, results = ledgers
    row = add(ledger, "r.dat", S.VALIDATED, direction="in", flow="mpn-results", remote_name="r.dat")
    results.record_relay(row.id, [facts(1), facts(2)], None, NOW, "decided", done=False)
    assert [r.identity_key for r in results.open_provisional(NOW)] == ["id1-1", "id2-1"]
    final = add(ledger, "f.dat", S.VALIDATED, direction="in", flow="mpn-results", remote_name="f.dat")
    results.record_relay(final.id, [facts(1, KIND_FINAL, match="m1")], "f.dat", NOW, "1 new", done=False)
    results.finish_relay(final.id, NOW)
    assert [r.identity_key for r in results.open_provisional(NOW)] == ["id2-1"]
    assert ledger.get(final.id).state is S.DONE
    day = dt.date(2026, 11, 20)
    assert [r.identity_key for r in results.results_received_on(day)] == ["id1-1", "id1-2", "id2-1"]


def test_when_several_relays_are_committed_together_then_each_is_done_with_its_results_or_none_is(
        ledgers: Any) -> None:
    """commit_relays (issue 16): one commit for the small files ready at once; all of them, or nothing."""
    ledger, results = ledgers
    a, b, c = (add(ledger, f"{n}.dat", S.VALIDATED, direction="in", flow="mpn-results", remote_name=f"{n}.dat")
               for n in "abc")
    results.commit_relays([RelayDecision(a.id, [facts(1), facts(2)], "A.dat", "2 new"),
                           RelayDecision(b.id, [], None, "0 new, 1 repeated")], NOW)
    assert [(r.state, r.relay_name, r.receipt_summary) for r in (ledger.get(a.id), ledger.get(b.id))] == [
        (S.DONE, "A.dat", "2 new"), (S.DONE, None, "0 new, 1 repeated")]
    assert results.identities_of_transfer(a.id) == {"id1-1", "id2-1"}
    d = add(ledger, "d.dat", S.VALIDATED, direction="in", flow="mpn-results", remote_name="d.dat")
    with pytest.raises(DuplicateResult):  # id2-1 was recorded by a
        results.commit_relays([RelayDecision(c.id, [facts(3)], "C.dat", "1 new"),
                               RelayDecision(d.id, [facts(2)], "D.dat", "1 new")], NOW)
    with pytest.raises(NotRelayable):  # a is DONE already
        results.commit_relays([RelayDecision(c.id, [facts(3)], "C.dat", "1 new"),
                               RelayDecision(a.id, [facts(4)], "A.dat", "1 new")], NOW)
    assert [ledger.get(t.id).state for t in (c, d)] == [S.VALIDATED, S.VALIDATED], "nothing written"
    assert results.known_identities({"id3-1", "id4-1"}) == set()


def test_when_a_file_is_accepted_and_relayed_in_one_transaction_then_all_is_committed_or_nothing(
        ledgers: Any) -> None:
    """accept_relay (issue 16): the transfer, its results and DONE in one commit; a failure leaves no transfer."""
    from kei_gateway.adapters.ledger.ledger import NewTransfer

    ledger, results = ledgers
    first = add(ledger, "first.dat", S.VALIDATED, direction="in", flow="mpn-results", remote_name="first.dat")
    results.commit_relays([RelayDecision(first.id, [facts(1)], "F.dat", "1 new")], NOW)

    def new(name: str) -> NewTransfer:
        return NewTransfer(flow="mpn-results", direction="in", peer="mpn", local_name=name, state=S.VALIDATED,
                           size=10, sha256="cd" * 32, record_count=2, blob_id=f"blob-{name}", now=NOW,
                           remote_name=name)

    seen: list[tuple[Any, set[str]]] = []

    def decide(row: Any, known: Any) -> RelayDecision:
        seen.append((row, known({"id1-1", "id2-1"})))
        return RelayDecision(row.id, [facts(2)], f"R{row.id}.dat", "1 new, 1 repeated")

    row = results.accept_relay(new("p.dat"), None, decide, NOW)
    (inserted, known), = seen
    assert (inserted.id, inserted.state, inserted.local_name) == (row.id, S.VALIDATED, "p.dat")
    assert known == {"id1-1"}, "looked up in the accepting transaction"
    stored = ledger.get(row.id)
    assert (row.state, row.relay_name, row.receipt_summary) == (S.DONE, f"R{row.id}.dat", "1 new, 1 repeated")
    assert (stored.state, stored.relay_name, stored.receipt_summary) == (row.state, row.relay_name, row.receipt_summary)
    assert results.identities_of_transfer(row.id) == {"id2-1"}
    count = len(ledger.list_transfers())
    with pytest.raises(DuplicateResult):  # id2-1 recorded already: nothing written, not even the transfer
        results.accept_relay(new("q.dat"), None, lambda r, k: RelayDecision(r.id, [facts(2)], "Q.dat", "1 new"), NOW)

    def broken(row: Any, known: Any) -> RelayDecision:
        raise OSError("the inbox is not writable")

    with pytest.raises(OSError):
        results.accept_relay(new("r.dat"), None, broken, NOW)
    assert len(ledger.list_transfers()) == count, "no transfer left by a failed accept"
    assert ledger.inbound_for("mpn-results", "q.dat") == [] and ledger.inbound_for("mpn-results", "r.dat") == []
