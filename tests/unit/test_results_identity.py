"""Payment-result identity: keyed digests, slip hint, key rotation (kei_gateway.core.results.identity)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from kei_gateway.adapters.store.keys import StoreKeyring
from kei_gateway.core.jst import JST
from kei_gateway.core.results import (
    ResultKeyer, earlier_match_keys, facts_from_records, facts_of, fresh_results, slip_hint, under_recorded_keys,
)
from kei_gateway.core.results.identity import HKDF_INFO, IDENTITY_ITEMS
from kei_gateway.layouts import Record, ValidationOptions, generate_file, get_layout, parse_records

TODAY = datetime.date(2026, 11, 21)
LAYOUT = get_layout("mpn-results")
OLD_KEY, NEW_KEY = b"\x01" * 32, b"\x02" * 32


def dummy_records(count: int, seed: int = 1) -> list[Record]:
    data = b"".join(generate_file(LAYOUT, count, seed=seed, today=TODAY))
    return list(parse_records([data], LAYOUT, ValidationOptions(today=TODAY)))


RECORDS = dummy_records(20)
KEYER = ResultKeyer([NEW_KEY])


def test_when_a_record_is_keyed_then_the_facts_hold_codes_times_and_a_masked_slip_only() -> None:
    record = RECORDS[0]
    facts = facts_of(record, 7, KEYER)
    assert facts.record_index == 7
    assert facts.kind == int(str(record["result_kind"])) and facts.channel == record["channel"]
    assert facts.tax_item == record["tax_item"] and facts.pay_method == record["pay_method"]
    received = record["received_at"]
    assert isinstance(received, datetime.datetime)
    assert facts.received_at == received.replace(tzinfo=JST) and facts.received_at.utcoffset() == datetime.timedelta(hours=9)
    slip = str(record["slip_no"])
    assert facts.slip_hint == "…" + slip[-4:]
    text = repr(facts)
    for personal in (slip, str(record["payer_name"]), str(record["confirm_no"])):
        assert personal not in text
    for digest in (facts.identity_key, facts.match_key, facts.amount_key):
        assert len(digest) == 64 and int(digest, 16) >= 0
    assert len({facts.identity_key, facts.match_key, facts.amount_key}) == 3


def test_when_a_file_is_keyed_then_every_record_gets_its_position() -> None:
    facts = facts_from_records(RECORDS, KEYER)
    assert [f.record_index for f in facts] == list(range(len(RECORDS)))
    assert len({f.identity_key for f in facts}) == len(RECORDS), "the generator's records are distinct"


def raw(record: Record) -> dict[str, str]:
    """The record as the raw strings of its fields (what a caller without typed values would pass)."""
    values: dict[str, str] = {}
    for key, value in record.items():
        if isinstance(value, datetime.datetime):
            values[key] = value.strftime("%Y%m%d%H%M%S")
        elif isinstance(value, int):
            values[key] = f"{value:0{LAYOUT[key].width}d}"
        else:
            values[key] = str(value)
    return values


def test_when_given_raw_strings_instead_of_typed_values_then_the_facts_are_the_same() -> None:
    for record in RECORDS[:5]:
        assert facts_of(raw(record), 0, KEYER) == facts_of(record, 0, KEYER)


def with_kind(record: Record, kind: str, **changes: Any) -> Record:
    return {**record, "result_kind": kind, **changes}


def test_when_a_final_shares_the_first_six_items_then_it_has_the_provisional_match_key_and_its_own_identity() -> None:
    provisional = facts_of(with_kind(RECORDS[0], "1"), 0, KEYER)
    final = facts_of(with_kind(RECORDS[0], "2"), 0, KEYER)
    cancel = facts_of(with_kind(RECORDS[0], "3"), 0, KEYER)
    assert provisional.match_key == final.match_key == cancel.match_key
    assert len({provisional.identity_key, final.identity_key, cancel.identity_key}) == 3
    assert provisional.amount_key == final.amount_key, "same match key, same amount"
    other_amount = facts_of(with_kind(RECORDS[0], "2", amount_paid=int(str(RECORDS[0]["amount_paid"])) + 1), 0, KEYER)
    assert other_amount.amount_key != provisional.amount_key and other_amount.identity_key == final.identity_key


def test_when_the_amount_is_equal_but_the_match_differs_then_the_amount_keys_differ() -> None:
    first = facts_of(RECORDS[0], 0, KEYER)
    second = facts_of({**RECORDS[0], "confirm_no": "999999" if RECORDS[0]["confirm_no"] != "999999" else "000000"}, 0, KEYER)
    assert first.amount_key != second.amount_key, "an amount key does not reveal equal amounts across payments"


IDENTITY_VALUES = {
    "tax_item": st.sampled_from(["01", "02", "03", "99"]),
    "slip_no": st.from_regex(r"\A[0-9]{20}\Z"),
    "confirm_no": st.from_regex(r"\A[0-9]{6}\Z"),
    "pay_class": st.from_regex(r"\A[0-9]{4}\Z"),
    "channel": st.sampled_from([f"{n:02d}" for n in range(1, 10)]),
    "received_at": st.datetimes(min_value=datetime.datetime(2000, 1, 1), max_value=datetime.datetime(2099, 12, 31)
                                ).map(lambda d: d.replace(microsecond=0)),
    "result_kind": st.sampled_from(["1", "2", "3"]),
}
OTHER_VALUES = {
    "payer_name": st.sampled_from(["テスト\u3000花子", "ダミー\u3000太郎"]),
    "amount_billed": st.integers(0, 10 ** 10 - 1),
    "amount_tax": st.integers(0, 10 ** 10 - 1),
    "pay_method": st.sampled_from(["01", "02", "03", "04", "05"]),
    "bank_code": st.from_regex(r"\A[0-9]{4}\Z"),
    "branch_code": st.from_regex(r"\A[0-9]{3}\Z"),
    "fiscal_year": st.integers(2000, 2099),
}


@st.composite
def one_identity_change(draw: st.DrawFn) -> tuple[Record, str, object]:
    record = draw(st.sampled_from(RECORDS))
    item = draw(st.sampled_from(IDENTITY_ITEMS))
    value = draw(IDENTITY_VALUES[item].filter(lambda v: v != record[item]))
    return record, item, value


@settings(max_examples=150, deadline=None)
@given(one_identity_change())
def test_when_any_identity_item_differs_then_the_identity_key_differs(change: tuple[Record, str, object]) -> None:
    record, item, value = change
    before = facts_of(record, 0, KEYER)
    after = facts_of({**record, item: value}, 0, KEYER)
    assert after.identity_key != before.identity_key
    assert (after.match_key == before.match_key) == (item == "result_kind")


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(RECORDS), st.fixed_dictionaries({}, optional=OTHER_VALUES))
def test_when_only_other_fields_differ_then_identity_and_match_keys_are_equal(record: Record,
                                                                              changes: dict[str, object]) -> None:
    before = facts_of(record, 0, KEYER)
    after = facts_of({**record, **changes}, 0, KEYER)
    assert (after.identity_key, after.match_key, after.amount_key) == (
        before.identity_key, before.match_key, before.amount_key)


def test_when_the_key_differs_then_every_digest_differs() -> None:
    mine, theirs = facts_of(RECORDS[0], 0, KEYER), facts_of(RECORDS[0], 0, ResultKeyer([OLD_KEY]))
    assert mine.identity_key != theirs.identity_key and mine.match_key != theirs.match_key
    assert mine.amount_key != theirs.amount_key


def test_when_the_key_is_rotated_then_new_facts_use_the_new_key_and_candidates_include_the_old_one() -> None:
    old = facts_of(RECORDS[0], 0, ResultKeyer([OLD_KEY]))
    rotated_keyer = ResultKeyer([NEW_KEY, OLD_KEY])
    rotated = facts_of(RECORDS[0], 0, rotated_keyer)
    assert rotated.identity_key == facts_of(RECORDS[0], 0, KEYER).identity_key, "new rows use the current key"
    assert rotated_keyer.identity_candidates(rotated) == {rotated.identity_key, old.identity_key}
    assert rotated_keyer.match_candidates(rotated) == {rotated.match_key, old.match_key}
    under_old = rotated.under(1)
    assert (under_old.identity_key, under_old.match_key, under_old.amount_key) == (
        old.identity_key, old.match_key, old.amount_key)


def test_when_a_group_was_recorded_under_the_old_key_then_its_result_stays_under_it_else_the_new_one() -> None:
    rotated = ResultKeyer([NEW_KEY, OLD_KEY])
    joins, alone = facts_of(RECORDS[0], 0, rotated), facts_of(RECORDS[1], 1, rotated)
    old_match = facts_of(RECORDS[0], 0, ResultKeyer([OLD_KEY])).match_key
    assert earlier_match_keys([joins, alone]) == {joins.variants[1].match_key, alone.variants[1].match_key}

    chosen = under_recorded_keys([joins, alone], found={old_match})
    assert chosen[0].match_key == old_match and chosen[0].identity_key == joins.variants[1].identity_key
    assert chosen[1] == alone, "no earlier group: the current key"
    both = under_recorded_keys([joins], found={old_match, joins.match_key})
    assert both[0].match_key == joins.match_key, "a group already under the current key stays there"


def test_when_built_from_the_store_keyring_then_the_current_key_comes_first() -> None:
    keyring = StoreKeyring(NEW_KEY, [OLD_KEY])
    keyer = ResultKeyer.from_keyring(keyring)
    assert keyer.key_count == 2
    assert facts_of(RECORDS[0], 0, keyer) == facts_of(RECORDS[0], 0, KEYER)
    assert "x02" not in repr(keyer) and repr(keyer) == "ResultKeyer(2 keys)"


def test_when_derived_then_the_hmac_key_is_hkdf_of_the_store_key_not_the_store_key() -> None:
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    items = "|".join(["identity", "02", "1" * 20, "123456", "0001", "05", "20261121093000", "1"]).encode()
    record = {"tax_item": "02", "slip_no": "1" * 20, "confirm_no": "123456", "pay_class": "0001", "channel": "05",
              "received_at": "20261121093000", "result_kind": "1", "pay_method": "01", "amount_paid": "0000001000"}
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(NEW_KEY)
    assert facts_of(record, 0, KEYER).identity_key == hmac.new(derived, items, hashlib.sha256).hexdigest()
    assert facts_of(record, 0, KEYER).identity_key != hmac.new(NEW_KEY, items, hashlib.sha256).hexdigest()


def test_when_results_are_known_or_repeated_then_fresh_results_keeps_only_the_first_new_ones() -> None:
    keyer = ResultKeyer([NEW_KEY, OLD_KEY])
    facts = facts_from_records([RECORDS[0], RECORDS[1], RECORDS[2], RECORDS[1]], keyer)
    known_under_old_key = {facts[0].variants[1].identity_key}
    fresh = fresh_results(facts, known_under_old_key)
    assert [f.record_index for f in fresh] == [1, 2]


def test_when_a_field_is_malformed_then_the_error_names_the_field_not_the_value() -> None:
    bad = {**raw(RECORDS[0]), "slip_no": "12345"}
    with pytest.raises(ValueError, match="slip_no") as caught:
        facts_of(bad, 0, KEYER)
    assert "12345" not in str(caught.value)
    with pytest.raises(ValueError, match="result_kind"):
        facts_of({**RECORDS[0], "result_kind": "4"}, 0, KEYER)
    for impossible in ("20261321093000", "20260230093000", "20261121246000"):  # month 13, 30 Feb, 24:60
        with pytest.raises(ValueError, match="received_at") as caught:
            facts_of({**raw(RECORDS[0]), "received_at": impossible}, 0, KEYER)
        assert impossible not in str(caught.value)


def test_when_the_time_comes_as_raw_digits_or_as_a_datetime_then_the_facts_are_the_same() -> None:
    """Issue 16: raw digits are parsed without strptime and kept as their own canonical form."""
    assert facts_of(raw(RECORDS[3]), 0, KEYER) == facts_of(RECORDS[3], 0, KEYER)
    assert facts_of(raw(RECORDS[3]), 0, KEYER).received_at == RECORDS[3]["received_at"].replace(tzinfo=JST)


def test_when_a_slip_number_is_masked_then_only_the_last_four_digits_show() -> None:
    assert slip_hint("12345678901234560123") == "…0123"


def test_when_no_key_is_given_then_the_keyer_refuses() -> None:
    with pytest.raises(ValueError):
        ResultKeyer([])
