"""Bounded cost on any input (issue 11 items 4–5): no record is buffered past its layout's width, and
validation stops after ``max_errors`` errors, so an endless or all-invalid input ends early."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import pytest

from kei_gateway.layouts import JNKS_PAYMENTS, MPN_RESULTS, Layout, Validator, validate_bytes, validate_stream

from kei_gateway.layouts import validator as validator_module

from .helpers import OPTIONS, dummy_records, put

UTF8 = dataclasses.replace(OPTIONS, encoding="utf-8")


def counted(chunks: Iterator[bytes], taken: list[int]) -> Iterator[bytes]:
    for chunk in chunks:
        taken[0] += 1
        yield chunk


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16])
def test_when_an_endless_input_has_no_line_end_then_validation_stops_at_record_1_within_its_width(chunk: int) -> None:
    taken = [0]
    endless = counted(itertools.repeat(b"\x00" * chunk), taken)  # what /dev/zero gives
    report = validate_stream(endless, JNKS_PAYMENTS, OPTIONS)
    assert not report.valid and report.stopped_at == 1 and report.records == 1
    assert [(e.record, e.offset) for e in report.errors] == [(1, 0)]
    assert "has no CR LF within 73 bytes (jnks-payments records are 70 bytes including CR LF)" in report.errors[0].reason
    assert taken[0] * chunk <= 73 + chunk  # read no further than the width (and the chunk that crossed it)


def test_when_records_come_before_the_endless_line_then_they_are_checked_and_the_error_names_the_next_record() -> None:
    records = dummy_records(JNKS_PAYMENTS, 3)
    records[1] = put(JNKS_PAYMENTS, records[1], "vehicle_type", b"99")
    validator = Validator(JNKS_PAYMENTS, OPTIONS)
    for piece in (b"".join(records), b"A" * 40, b"B" * 40):
        validator.feed(piece)
    assert validator.stopped and not validator._pieces  # nothing of the long line is kept
    validator.feed(b"C" * 10_000)  # ignored once stopped
    report = validator.close()
    assert [(e.record, e.key) for e in report.errors] == [(2, "vehicle_type"), (4, None)]
    assert report.errors[1].offset == 3 * JNKS_PAYMENTS.record_length and report.records == 4
    assert report.stopped_at == 4


def test_when_the_input_is_utf8_then_the_width_allows_four_bytes_a_character() -> None:
    chars = sum(item.chars for item in MPN_RESULTS.fields)
    longest = 3 + 4 * chars + 2
    exactly = validate_stream(iter([b"\xe3\x81\x82" * (longest // 3)]), MPN_RESULTS, UTF8)
    assert exactly.stopped_at is None  # a long line at the bound is checked as a record, not refused unread
    beyond = validate_stream(iter([b"x" * (longest + 1)]), MPN_RESULTS, UTF8)
    assert beyond.stopped_at == 1 and f"no CR LF within {longest} bytes" in beyond.errors[0].reason


def test_when_a_line_is_too_long_but_ends_within_one_read_then_it_is_an_ordinary_length_error() -> None:
    record = dummy_records(JNKS_PAYMENTS, 1)[0]
    report = validate_bytes(record[:-2] + b"X" * 10 + b"\r\n" + record, JNKS_PAYMENTS, OPTIONS)
    assert report.stopped_at is None and report.records == 2
    assert "is 78 bytes long without CR LF, expected 68" in report.errors[0].reason


@pytest.mark.parametrize("layout", [JNKS_PAYMENTS, MPN_RESULTS], ids=lambda layout: layout.name)
def test_when_every_record_is_invalid_then_validation_stops_after_max_errors_records(layout: Layout) -> None:
    record = bytearray(dummy_records(layout, 1)[0])
    record[0:1] = b"#"  # every copy invalid in its first field
    options = dataclasses.replace(OPTIONS, max_errors=50)
    taken = [0]
    chunk = bytes(record) * 1000
    chunks = counted(itertools.repeat(chunk), taken)  # endless, all invalid
    report = validate_stream(chunks, layout, options)
    assert report.stopped_at == 50 and report.records == 50 and len(report.errors) == 50
    assert (taken[0] - 1) * len(chunk) < validator_module._BLOCK_SIZE  # one block read, not the rest


def test_when_duplicates_come_before_the_stop_then_both_uniqueness_checks_report_them_and_none_after() -> None:
    records = dummy_records(JNKS_PAYMENTS, 40)
    for target in (5, 30):  # record 6 repeats record 1's key; record 31 would repeat record 2's
        records[target] = records[0 if target == 5 else 1]
    for index in (10, 12, 14):
        records[index] = put(JNKS_PAYMENTS, records[index], "vehicle_type", b"99")
    data = b"".join(records)
    options = dataclasses.replace(OPTIONS, max_errors=3)
    exact = Validator(JNKS_PAYMENTS, options)
    exact.feed(data)
    in_memory = exact.close()
    filtered = validate_bytes(data, JNKS_PAYMENTS, options, filter_bits_log2=6)  # every key a suspect
    for report in (in_memory, filtered):
        assert [(e.record, e.key) for e in report.errors] == [(6, "chassis_no"), (11, "vehicle_type"),
                                                               (13, "vehicle_type")]
        assert report.error_count == 4 and report.stopped_at == 15 and report.records == 15
