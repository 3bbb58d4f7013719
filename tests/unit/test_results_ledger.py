"""payment_results in a real ledger (SQLite and PostgreSQL) built by the migrations (kei_gateway.adapters.ledger.results)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from kei_gateway.adapters.ledger import TransferLedger, TransferNotFound, create_ledger_engine, upgrade
from kei_gateway.adapters.ledger.models import PaymentResult, TransferState as S
from kei_gateway.adapters.ledger.results import DuplicateResult, RelayDecision, ResultLedger
from kei_gateway.core.jst import JST
from kei_gateway.core.results import (
    ResultFacts,
    ResultKeyer,
    facts_from_records,
    facts_of,
    fresh_results,
    reconcile,
)
from kei_gateway.core.transfer import InvalidTransition
from kei_gateway.layouts import Record, ValidationOptions, generate_file, get_layout, parse_records

TODAY = dt.date(2026, 11, 21)
NOW = dt.datetime(2026, 11, 21, 9, 0, tzinfo=dt.timezone.utc)
LAYOUT = get_layout("mpn-results")
OLD_KEY, NEW_KEY = b"\x01" * 32, b"\x02" * 32
OLD, ROTATED = ResultKeyer([OLD_KEY]), ResultKeyer([NEW_KEY, OLD_KEY])
RECORDS: list[Record] = list(parse_records([b"".join(generate_file(LAYOUT, 40, seed=3, today=TODAY))], LAYOUT,
                                           ValidationOptions(today=TODAY)))


@pytest.fixture
def ledgers(ledger_url: str) -> Iterator[tuple[TransferLedger, ResultLedger]]:
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    yield TransferLedger(engine), ResultLedger(engine)
    engine.dispose()


def inbound(transfers: TransferLedger, name: str = "r.dat", state: S = S.VALIDATED) -> int:
    return transfers.add_transfer(flow="mpn-results", direction="in", peer="mpn", local_name=name, state=state,
                                  size=258, sha256="ab" * 32, record_count=1, blob_id=f"blob-{name}", now=NOW).id


def result(number: int, keyer: ResultKeyer = ROTATED, index: int = 0, **changes: Any) -> ResultFacts:
    return facts_of({**RECORDS[number], **changes}, index, keyer)


def test_when_a_relay_is_recorded_then_rows_transfer_and_state_change_together(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    transfer = inbound(transfers)
    facts = facts_from_records(RECORDS[:3], ROTATED)
    results.record_relay(transfer, facts, "mpn-20261121-0001.dat", NOW, "3 results: 3 new", done=True)
    row = transfers.get(transfer)
    assert (row.state, row.relay_name, row.receipt_summary) == ("DONE", "mpn-20261121-0001.dat", "3 results: 3 new")
    assert results.known_identities({f.identity_key for f in facts} | {"f" * 64}) == {f.identity_key for f in facts}
    assert results.identities_of_transfer(transfer) == {f.identity_key for f in facts}
    stored = {s.identity_key: s for s in results.results_since(dt.datetime(1999, 1, 1, tzinfo=JST))}
    first = stored[facts[0].identity_key]
    assert (first.match_key, first.amount_key, first.kind, first.channel, first.tax_item, first.pay_method,
            first.slip_hint) == (facts[0].match_key, facts[0].amount_key, facts[0].kind, facts[0].channel,
                                 facts[0].tax_item, facts[0].pay_method, facts[0].slip_hint)
    assert first.received_at == facts[0].received_at and first.received_at.utcoffset() == dt.timedelta(hours=9)
    assert (first.transfer_id, first.relay_name, first.recorded_at) == (transfer, "mpn-20261121-0001.dat", NOW)
    assert first.recorded_at.utcoffset() == dt.timedelta(0), "UTC whatever the database server's time zone"


def test_when_recorded_without_done_then_finish_relay_is_the_second_step(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    transfer = inbound(transfers)
    results.record_relay(transfer, [result(0)], "x.dat", NOW, "1 new", done=False)
    assert transfers.get(transfer).state == "VALIDATED" and transfers.get(transfer).relay_name == "x.dat"
    later = NOW + dt.timedelta(seconds=5)
    results.finish_relay(transfer, later)
    assert transfers.get(transfer).state == "DONE" and transfers.get(transfer).updated_at == later
    with pytest.raises(TransferNotFound):
        results.finish_relay(999, NOW)


def test_when_a_file_holds_only_known_results_then_the_decision_is_recorded_without_rows(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    transfer = inbound(transfers)
    results.record_relay(transfer, [], None, NOW, "2 results: 0 new, 2 duplicates", done=True)
    row = transfers.get(transfer)
    assert (row.state, row.relay_name, row.receipt_summary) == ("DONE", None, "2 results: 0 new, 2 duplicates")


def test_when_a_result_was_recorded_meanwhile_then_nothing_of_the_relay_is_written(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    first, second = inbound(transfers, "a.dat"), inbound(transfers, "b.dat")
    results.record_relay(first, [result(0)], "a-relay.dat", NOW, "1 new", done=True)
    with pytest.raises(DuplicateResult, match="recompute the new results") as caught:
        results.record_relay(second, [result(1), result(0)], "b-relay.dat", NOW, "2 new", done=True)
    assert caught.value.transfer_id == second
    row = transfers.get(second)
    assert (row.state, row.relay_name, row.receipt_summary) == ("VALIDATED", None, None), "rolled back whole"
    assert results.known_identities({result(1).identity_key}) == set()
    assert results.identities_of_transfer(second) == set()


def test_when_the_transfer_cannot_become_done_then_nothing_is_written(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    transfer = inbound(transfers, state=S.RECEIVED)
    with pytest.raises(InvalidTransition):
        results.record_relay(transfer, [result(0)], "x.dat", NOW, "1 new", done=True)
    assert results.known_identities({result(0).identity_key}) == set()
    with pytest.raises(TransferNotFound):
        results.record_relay(999, [result(0)], "x.dat", NOW, "1 new", done=True)
    with pytest.raises(ValueError, match="repeat an identity"):
        results.record_relay(transfer, [result(0), result(0, index=1)], "x.dat", NOW, "", done=False)


def test_when_the_key_was_rotated_then_results_recorded_under_the_old_key_are_still_known(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    results.record_relay(inbound(transfers, "a.dat"), [result(0, OLD)], "a.dat", NOW, "1 new", done=True)
    again = result(0, ROTATED)
    assert again.identity_key != result(0, OLD).identity_key, "new rows would use the new key"
    known = results.known_identities(ROTATED.identity_candidates(again))
    assert known == {result(0, OLD).identity_key}
    assert fresh_results([again, result(1, ROTATED)], known) == [result(1, ROTATED)]
    later = inbound(transfers, "b.dat")
    with pytest.raises(DuplicateResult):  # even if a caller skipped the lookup, the old-key row is found
        results.record_relay(later, [again], "b.dat", NOW, "1 new", done=True)
    assert transfers.get(later).state == "VALIDATED"


def test_when_a_final_arrives_after_a_rotation_then_it_is_recorded_under_its_provisionals_key_and_matches(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    provisional = result(0, OLD, result_kind="1")
    other = result(1, ROTATED, result_kind="1")
    results.record_relay(inbound(transfers, "a.dat"), [provisional], "a.dat", NOW, "1 new", done=True)
    final = result(0, ROTATED, result_kind="2")
    other_final = result(1, ROTATED, result_kind="2")
    assert final.match_key != provisional.match_key
    results.record_relay(inbound(transfers, "b.dat"), [other], "b.dat", NOW, "1 new", done=True)
    results.record_relay(inbound(transfers, "c.dat"), [final, other_final], "c.dat", NOW, "2 new", done=True)
    rows = results.results_since(dt.datetime(1999, 1, 1, tzinfo=JST))
    stored_final = next(r for r in rows if r.kind == 2 and r.slip_hint == provisional.slip_hint)
    assert stored_final.match_key == provisional.match_key and stored_final.identity_key == final.under(1).identity_key
    assert next(r for r in rows if r.kind == 2 and r.slip_hint == other.slip_hint).match_key == other.match_key, \
        "a group under the current key stays there"
    report = reconcile(rows, NOW, 3 * 86400)
    assert report.total.confirmed == 2 and report.problems == ()


def test_when_relays_commit_together_after_a_rotation_then_a_final_joins_its_provisionals_key_and_an_old_row_is_found(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    """commit_relays (issue 16) keeps record_relay's rules for a previous store key."""
    transfers, results = ledgers
    provisional = result(0, OLD, result_kind="1")
    results.record_relay(inbound(transfers, "a.dat"), [provisional], "a.dat", NOW, "1 new", done=True)
    final, other = result(0, ROTATED, result_kind="2"), result(1, ROTATED, result_kind="1")
    b, c = inbound(transfers, "b.dat"), inbound(transfers, "c.dat")
    results.commit_relays([RelayDecision(b, [other], "b.dat", "1 new"), RelayDecision(c, [final], "c.dat", "1 new")],
                          NOW)
    rows = results.results_since(dt.datetime(1999, 1, 1, tzinfo=JST))
    stored_final = next(r for r in rows if r.kind == 2)
    assert (stored_final.match_key, stored_final.transfer_id) == (provisional.match_key, c)
    assert [transfers.get(t).state for t in (b, c)] == [S.DONE.value, S.DONE.value]
    later = inbound(transfers, "d.dat")
    with pytest.raises(DuplicateResult):  # the provisional again, under the new key: its old-key row is found
        results.commit_relays([RelayDecision(later, [result(0, ROTATED, result_kind="1")], "d.dat", "1 new")], NOW)
    assert transfers.get(later).state == S.VALIDATED.value


def test_when_more_identities_than_one_query_holds_are_asked_then_all_are_found(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    base = dt.datetime(2026, 1, 1, 9, 0)
    facts = [result(0, ROTATED, index=i, received_at=base + dt.timedelta(minutes=i)) for i in range(1200)]
    results.record_relay(inbound(transfers), facts, "big.dat", NOW, "1200 new", done=True)
    wanted = {f.identity_key for f in facts}
    assert results.known_identities(wanted | {"0" * 64}) == wanted


def test_when_asked_for_a_day_then_the_day_is_taken_in_jst(ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    times = {"late-20th": dt.datetime(2026, 11, 20, 23, 59, 59), "early-21st": dt.datetime(2026, 11, 21, 0, 0, 0),
             "late-21st": dt.datetime(2026, 11, 21, 23, 59, 59), "22nd": dt.datetime(2026, 11, 22, 0, 0, 0)}
    facts = {label: result(i, received_at=when, index=i) for i, (label, when) in enumerate(times.items())}
    results.record_relay(inbound(transfers), list(facts.values()), "r.dat", NOW, "4 new", done=True)
    on_21st = results.results_received_on(dt.date(2026, 11, 21))
    assert [r.identity_key for r in on_21st] == [facts["early-21st"].identity_key, facts["late-21st"].identity_key]
    with Session(results.engine) as session:  # stored as UTC: 00:00 JST is 15:00 the day before
        stored = session.scalars(select(PaymentResult.received_at).where(
            PaymentResult.identity_key == facts["early-21st"].identity_key)).one()
    if stored.tzinfo is not None:  # PostgreSQL's timestamptz: the instant, shown in the server's time zone
        stored = stored.astimezone(dt.timezone.utc)
    assert stored.replace(tzinfo=None) == dt.datetime(2026, 11, 20, 15, 0, 0)
    since = results.results_since(dt.datetime(2026, 11, 21, 12, 0, tzinfo=JST))
    assert [r.identity_key for r in since] == [facts["late-21st"].identity_key, facts["22nd"].identity_key]


def test_when_asked_for_open_provisionals_then_only_those_without_final_or_cancel_come(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    recent = dt.datetime(2026, 11, 20, 10, 0)
    long_ago = dt.datetime(2026, 9, 1, 10, 0)
    facts = [result(0, result_kind="1", received_at=recent), result(0, result_kind="2", received_at=recent),
             result(1, result_kind="1", received_at=recent), result(1, result_kind="3", received_at=recent),
             result(2, result_kind="1", received_at=recent), result(3, result_kind="1", received_at=long_ago),
             result(4, result_kind="2", received_at=recent)]
    facts = [dataclasses.replace(f, record_index=i) for i, f in enumerate(facts)]
    results.record_relay(inbound(transfers), facts, "r.dat", NOW, "7 new", done=True)
    open_ones = results.open_provisional(NOW)
    assert {r.identity_key for r in open_ones} == {facts[4].identity_key, facts[5].identity_key}
    assert [r.identity_key for r in results.open_provisional(NOW, within=dt.timedelta(days=30))] == [
        facts[4].identity_key]


def test_when_a_relay_is_recorded_batch_by_batch_then_repeats_across_batches_are_dropped_and_all_commits_at_once(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    earlier = inbound(transfers, "a.dat")
    results.record_relay(earlier, [result(0)], "a-relay.dat", NOW, "1 new", done=True)
    transfer = inbound(transfers, "b.dat")
    with results.relay_transaction(transfer, "b-relay.dat", NOW) as relay:
        assert [f.record_index for f in relay.record([result(0, index=0), result(1, index=1), result(2, index=2)])] \
            == [1, 2]
        assert [f.record_index for f in relay.record([result(1, index=3), result(3, index=4)])] == [4]
        assert relay.finish("新規 3, 重複 2 (of 5 results)") is True
    with Session(results.engine) as session:
        rows = session.scalars(select(PaymentResult).where(PaymentResult.transfer_id == transfer)).all()
        assert sorted(r.relay_name for r in rows) == ["b-relay.dat"] * 3
    row = transfers.get(transfer)
    assert (row.state, row.relay_name) == (S.DONE.value, "b-relay.dat")  # decided and DONE in one commit


def test_when_a_batched_relay_fails_half_way_then_nothing_of_it_is_recorded(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    transfer = inbound(transfers)
    with pytest.raises(OSError):
        with results.relay_transaction(transfer, "x.dat", NOW) as relay:
            relay.record([result(0), result(1, index=1)])
            raise OSError("the store could not be read")
    assert results.known_identities({result(0).identity_key, result(1).identity_key}) == set()
    assert transfers.get(transfer).relay_name is None


def test_when_every_result_of_a_batched_relay_is_known_then_the_transfer_is_done_without_a_relay_name(
        ledgers: tuple[TransferLedger, ResultLedger]) -> None:
    transfers, results = ledgers
    results.record_relay(inbound(transfers, "a.dat"), [result(0)], "a-relay.dat", NOW, "1 new", done=True)
    transfer = inbound(transfers, "b.dat")
    with results.relay_transaction(transfer, "b-relay.dat", NOW) as relay:
        assert relay.record([result(0)]) == []
        assert relay.finish("新規 0, 重複 1 (of 1 results)") is False
    row = transfers.get(transfer)
    assert (row.state, row.relay_name) == (S.DONE.value, None)


def test_when_a_batched_relay_is_open_then_other_writers_commit_meanwhile_and_it_still_commits_after_them(
        ledger_url: str) -> None:
    """The new results wait in a temporary table: the ledger's tables are not locked until the decision."""
    engine = create_ledger_engine(ledger_url, busy_timeout=0.2)
    upgrade(engine)
    try:
        transfers, results = TransferLedger(engine), ResultLedger(engine)
        transfer = inbound(transfers, "big.dat")
        with results.relay_transaction(transfer, "big-relay.dat", NOW) as relay:
            assert len(relay.record([result(0, index=0), result(1, index=1)])) == 2
            other = inbound(transfers, "meanwhile.dat")  # another writer: not blocked (busy timeout 0.2 s)
            results.record_relay(other, [result(2)], "meanwhile-relay.dat", NOW, "1 new", done=True)
            assert len(relay.record([result(2, index=2), result(3, index=3)])) == 1  # sees what committed meanwhile
            assert relay.finish("新規 3, 重複 1 (of 4 results)") is True
        assert results.identities_of_transfer(transfer) == {result(n).identity_key for n in (0, 1, 3)}
        assert transfers.get(transfer).relay_name == "big-relay.dat"
    finally:
        engine.dispose()
