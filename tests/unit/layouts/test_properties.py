"""Property tests per layout: round trip, single-byte corruption, every rule violation (hypothesis)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kei_gateway.layouts import (
    LAYOUTS, Kind, Layout, parse_records, render_record, render_records, validate_bytes,
)
from kei_gateway.layouts.generator import generate_record, violations

from .helpers import OPTIONS, TODAY, dummy_records, validate

LAYOUT_LIST = list(LAYOUTS.values())
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def records_strategy(layout: Layout, max_size: int = 6) -> st.SearchStrategy[list[dict[str, object]]]:
    return st.lists(st.randoms(use_true_random=False), min_size=1, max_size=max_size).map(
        lambda rngs: [generate_record(layout, rng, number, TODAY) for number, rng in enumerate(rngs, start=1)])


@pytest.mark.parametrize("layout", LAYOUT_LIST, ids=lambda layout: layout.name)
@FAST
@given(data=st.data())
def test_when_valid_records_are_rendered_then_parsing_gives_them_back_and_the_file_is_valid(
        layout: Layout, data: st.DataObject) -> None:
    records = data.draw(records_strategy(layout))
    rendered = b"".join(render_records(layout, records))
    assert len(rendered) == layout.record_length * len(records)
    report = validate(rendered, layout)
    assert report.valid, [e.message(full_values=True) for e in report.errors]
    assert report.records == len(records)
    assert list(parse_records([rendered], layout, OPTIONS)) == records
    assert b"".join(render_records(layout, parse_records([rendered], layout, OPTIONS))) == rendered


def _field_at(layout: Layout, position: int) -> str | None:
    for item in layout.fields:
        start = layout.offsets[item.key]
        if start <= position < start + item.width:
            return item.key
    return None


def _foreign(layout: Layout, key: str | None, value: int) -> bool:
    """Whether byte ``value`` can never appear at this place of a valid record."""
    if key is None:
        return True  # CR or LF replaced by anything else
    item = layout[key]
    if item.kind in (Kind.N, Kind.D, Kind.T):
        return not 0x30 <= value <= 0x39
    if item.kind is Kind.X:
        return not 0x20 <= value <= 0x7E
    return value < 0x40 or value in (0x7F, 0xFD, 0xFE, 0xFF)


@pytest.mark.parametrize("layout", LAYOUT_LIST, ids=lambda layout: layout.name)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_when_one_byte_is_corrupted_then_the_error_is_at_that_record_and_fast_and_precise_paths_agree(
        layout: Layout, data: st.DataObject) -> None:
    records = dummy_records(layout, 4, seed=data.draw(st.integers(0, 3), label="seed"))
    index = data.draw(st.integers(0, len(records) - 1), label="record")
    position = data.draw(st.integers(0, layout.record_length - 1), label="position")
    original = records[index][position]
    value = data.draw(st.integers(0, 255).filter(lambda v: v != original), label="byte")
    broken = bytearray(records[index])
    broken[position] = value
    corrupted = b"".join(records[:index]) + bytes(broken) + b"".join(records[index + 1:])
    report = validate(corrupted, layout)
    precise = validate_bytes(corrupted, layout, OPTIONS, fast_path=False)
    assert [e.message() for e in report.errors] == [e.message() for e in precise.errors]
    number = index + 1
    key = _field_at(layout, position)
    assert all(e.record in (number, number + 1) or "repeats" in e.reason for e in report.errors), report.errors
    if _foreign(layout, key, value):
        assert not report.valid
        assert report.errors[0].record == number
        if key is not None and value not in (0x0A, 0x0D):
            assert key in {e.key for e in report.errors if e.record == number}


@pytest.mark.parametrize("layout", LAYOUT_LIST, ids=lambda layout: layout.name)
def test_when_any_rule_is_broken_in_a_record_then_that_record_and_field_are_reported(layout: Layout) -> None:
    """Every violation the generator knows, applied to record 3 of 5 in turn (a table of all rules)."""
    records = dummy_records(layout, 5, seed=5)
    ways = violations(layout, TODAY)
    assert ways
    for way in ways:
        broken = way.apply(records[2], records[1])
        data = b"".join(records[:2]) + broken + b"".join(records[3:])
        for fast_path in (True, False):
            report = validate_bytes(data, layout, OPTIONS, fast_path=fast_path)
            assert not report.valid, way.description
            assert {e.record for e in report.errors} == {3}, (way.description, report.errors)
            assert way.key in {e.key for e in report.errors}, (way.description, report.errors)


@pytest.mark.parametrize("layout", LAYOUT_LIST, ids=lambda layout: layout.name)
@FAST
@given(data=st.data())
def test_when_a_random_rule_is_broken_in_a_random_record_then_it_is_found_there(
        layout: Layout, data: st.DataObject) -> None:
    records = [render_record(layout, record) for record in data.draw(records_strategy(layout, 5))]
    ways = violations(layout, TODAY)
    way = data.draw(st.sampled_from(ways), label="violation")
    candidates = range(1 if way.needs_previous else 0, len(records))
    if not candidates:
        return
    index = data.draw(st.sampled_from(list(candidates)), label="record")
    records[index] = way.apply(records[index], records[index - 1] if index else records[index])
    report = validate(b"".join(records), layout)
    assert (index + 1, way.key) in {(e.record, e.key) for e in report.errors}, (way.description, report.errors)


@pytest.mark.parametrize("layout", LAYOUT_LIST, ids=lambda layout: layout.name)
def test_when_a_file_spans_many_blocks_then_an_error_deep_inside_is_found_at_its_record(layout: Layout) -> None:
    records = dummy_records(layout, 3000, seed=9)
    target = 2500
    way = next(w for w in violations(layout, TODAY) if not w.needs_previous)
    records[target - 1] = way.apply(records[target - 1], records[target - 2])
    report = validate(b"".join(records), layout)
    assert {(e.record, e.key) for e in report.errors} >= {(target, way.key)}
    assert report.records == 3000


def test_when_a_record_repeats_a_unique_key_in_a_later_block_then_it_is_reported() -> None:
    layout = LAYOUTS["mpn-slips"]
    records = dummy_records(layout, 3000, seed=3)
    copy = records[5][:layout.offsets["pay_class"]]
    records[2900] = copy + records[2900][len(copy):]
    report = validate(b"".join(records), layout)
    assert [(e.record, e.key) for e in report.errors] == [(2901, "slip_no")]
    assert "repeats" in report.errors[0].reason


def test_when_a_generator_seed_is_reused_then_the_records_are_the_same() -> None:
    layout = LAYOUTS["mpn-results"]
    assert dummy_records(layout, 20, seed=4) == dummy_records(layout, 20, seed=4)
    assert dummy_records(layout, 20, seed=4) != dummy_records(layout, 20, seed=5)


@pytest.mark.parametrize("layout", LAYOUT_LIST, ids=lambda layout: layout.name)
def test_when_records_are_generated_then_names_are_invented_dummy_names(layout: Layout) -> None:
    from kei_gateway.layouts.generator import DUMMY_FAMILY_NAMES, DUMMY_GIVEN_NAMES

    for record in (generate_record(layout, random.Random(seed), 1, TODAY) for seed in range(30)):
        if "payer_name" in record:
            family, given = str(record["payer_name"]).split("\u3000")
            assert family in DUMMY_FAMILY_NAMES and given in DUMMY_GIVEN_NAMES
        if "chassis_no" in record and layout.name == "jnks-payments":
            assert str(record["chassis_no"]).startswith("DMY")


PROBE_BYTES = (0x00, 0x0A, 0x0D, 0x20, 0x2D, 0x30, 0x39, 0x41, 0x5A, 0x61, 0x7F, 0x81, 0x82, 0x87, 0xA0, 0xB1, 0xF0, 0xFF)


@pytest.mark.parametrize("layout", LAYOUT_LIST, ids=lambda layout: layout.name)
def test_when_any_byte_position_gets_a_probe_byte_then_fast_and_precise_paths_report_the_same(layout: Layout) -> None:
    """Every position × a set of telling byte values (digits, space, CR, LF, NUL, lead and trail bytes ...)."""
    records = dummy_records(layout, 3, seed=2)
    for position in range(layout.record_length):
        for value in PROBE_BYTES:
            if records[1][position] == value:
                continue
            broken = bytearray(records[1])
            broken[position] = value
            data = records[0] + bytes(broken) + records[2]
            fast = validate_bytes(data, layout, OPTIONS)
            precise = validate_bytes(data, layout, OPTIONS, fast_path=False)
            assert [e.message() for e in fast.errors] == [e.message() for e in precise.errors], (position, value)


@pytest.mark.parametrize("layout", LAYOUT_LIST, ids=lambda layout: layout.name)
def test_when_errors_are_spread_over_many_blocks_then_fast_and_precise_paths_report_the_same(layout: Layout) -> None:
    from kei_gateway.layouts import generate_file

    data = b"".join(generate_file(layout, 4000, seed=13, today=TODAY, invalid_rate=0.01))
    fast = validate_bytes(data, layout, OPTIONS)
    precise = validate_bytes(data, layout, OPTIONS, fast_path=False)
    assert fast.error_count > 10
    assert [e.message() for e in fast.errors] == [e.message() for e in precise.errors]
    assert (fast.records, fast.error_count) == (precise.records, precise.error_count)
