"""The column-wise fast path equals the precise checker (hypothesis): per record, and for whole files.

A record the fast path accepts must be one the precise checker accepts unchanged, and the
other way round (else the fast path is only slow, but the tests want it exact).  Files are
compared whole too: errors, counts, the bytes passed on, 外字 substitutions and 縮退.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kei_gateway.layouts import LAYOUTS, Kind, Layout, ValidationOptions, validate_bytes
from kei_gateway.layouts.columnar import as_matrix, columnar_plan
from kei_gateway.layouts.precise import RecordChecker

from .helpers import OPTIONS, TODAY, dummy_records

LAYOUT_LIST = list(LAYOUTS.values())
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Byte units a field can be made of: what valid fields hold and what breaks them at every kind.
ASCII_UNITS = [bytes([b]) for b in b"0123456789 AZaz-9/.\x00\x7f"] + [b"\r", b"\xa0", b"\xb1"]
WIDE_UNITS = ["ア".encode("cp932"), "高".encode("cp932"), "あ".encode("cp932"), "Ａ".encode("cp932"),
              "１".encode("cp932"), "\u3000".encode("cp932"), "々".encode("cp932"), "ー".encode("cp932"),
              b"\xfb\xfc", b"\xee\xe0", b"\x87\x40", b"\x87\x9a", b"\xf0\x40", b"\x81\x20", b"\x85\x40", b"\xeb\x40"]


@st.composite
def field_bytes(draw: st.DrawFn, width: int, kind: Kind) -> bytes:
    """Bytes for one field: mostly the kind's own alphabet, sometimes anything."""
    mode = draw(st.sampled_from(["kind", "kind", "mixed", "raw", "pad"]))
    if mode == "raw":
        return draw(st.binary(min_size=width, max_size=width))
    units = WIDE_UNITS if kind is Kind.K else ASCII_UNITS
    if mode == "mixed":
        units = WIDE_UNITS + ASCII_UNITS
    body = b"".join(draw(st.lists(st.sampled_from(units), min_size=0, max_size=width)))
    if mode == "pad":
        body = body[:draw(st.integers(0, width))]
    padding = "\u3000".encode("cp932") if kind is Kind.K else (b"0" if kind is Kind.N else b" ")
    if kind is Kind.N:
        body = body.rjust(width, b"0")
    while len(body) < width:
        body += padding
    return body[:width]


def precise_accepts(layout: Layout, options: ValidationOptions, record: bytes) -> bool:
    check = RecordChecker(layout, options).check(record[:-2], 1, 0)
    return not check.errors and check.output == record[:-2] and record.endswith(b"\r\n")


@pytest.mark.parametrize("charset", ["jisx0208", "cp932"])
@pytest.mark.parametrize("layout", LAYOUT_LIST, ids=lambda layout: layout.name)
@PROPERTY
@given(data=st.data())
def test_when_one_field_of_a_record_is_replaced_then_the_fast_path_accepts_it_exactly_when_the_precise_one_does(
        layout: Layout, charset: str, data: st.DataObject) -> None:
    options = dataclasses.replace(OPTIONS, charset=charset, lg_code=data.draw(st.sampled_from([None, "131202"])))
    records = dummy_records(layout, 4, seed=data.draw(st.integers(0, 5), label="seed"))
    item = data.draw(st.sampled_from(layout.fields), label="field")
    raw = data.draw(field_bytes(item.width, item.kind), label="bytes")
    index = data.draw(st.integers(0, 3), label="record")
    start = layout.offsets[item.key]
    records[index] = records[index][:start] + raw + records[index][start + item.width:]
    block = b"".join(records)
    matrix = as_matrix(block, layout.record_length)
    if matrix is None:  # the new bytes hold an LF: not a block of whole records (the validator halves it)
        assert b"\n" in raw
        return
    fast = columnar_plan(layout, options.rule_context).check(block, matrix)
    assert [bool(ok) for ok in fast] == [precise_accepts(layout, options, record) for record in records], (
        item.key, raw)


@pytest.mark.parametrize("layout", LAYOUT_LIST, ids=lambda layout: layout.name)
def test_when_records_are_valid_then_the_fast_path_accepts_every_one(layout: Layout) -> None:
    block = b"".join(dummy_records(layout, 500, seed=11))
    matrix = as_matrix(block, layout.record_length)
    assert matrix is not None
    assert columnar_plan(layout, OPTIONS.rule_context).check(block, matrix).all()


def run(data: bytes, layout: Layout, options: ValidationOptions, fast_path: bool) -> tuple[object, ...]:
    out: list[bytes] = []
    report = validate_bytes(data, layout, options, sink=out.append, fast_path=fast_path)
    return ([e.message(full_values=True) for e in report.errors], report.error_count, report.records,
            report.gaiji_substituted, report.degenerated, report.degenerations, b"".join(out) if report.valid else b"")


UTF8_PIECES = ["ダミー", "高橋", "髙", "𠮷", "﨑", "葛\U000e0100", "ｶﾞ", "〜", "−", "\u3000", "A", "1", " ", "①",
               "\ue000", "鷗", "濵"]


@pytest.mark.parametrize("gaiji", ["reject", "substitute", "degenerate"])
@pytest.mark.parametrize("layout", [LAYOUTS["mpn-slips"], LAYOUTS["jnks-payments"]], ids=lambda layout: layout.name)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_when_utf8_files_hold_gaiji_variants_and_kana_then_both_paths_give_the_same_report_and_bytes(
        layout: Layout, gaiji: str, data: st.DataObject) -> None:
    options = dataclasses.replace(OPTIONS, encoding="utf-8", gaiji=gaiji,
                                  gaiji_fallback=data.draw(st.sampled_from(["reject", "substitute"])))
    lines = [record.decode("cp932") for record in dummy_records(layout, 6, seed=data.draw(st.integers(0, 5)))]
    wide = [item for item in layout.fields if item.kind is Kind.K]
    for _ in range(data.draw(st.integers(0, 4), label="edits")):
        index = data.draw(st.integers(0, len(lines) - 1), label="record")
        item = data.draw(st.sampled_from(wide), label="field")
        start = sum(field.chars for field in layout.fields[:layout.fields.index(item)])
        text = "".join(data.draw(st.lists(st.sampled_from(UTF8_PIECES), max_size=4), label="text"))
        text = text[:item.chars].ljust(item.chars, "\u3000")
        lines[index] = lines[index][:start] + text + lines[index][start + item.chars:]
    file = "".join(lines).encode("utf-8")
    assert run(file, layout, options, True) == run(file, layout, options, False)


@pytest.mark.parametrize("layout", LAYOUT_LIST, ids=lambda layout: layout.name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_when_cp932_files_hold_extension_kanji_then_both_paths_give_the_same_report_and_bytes(
        layout: Layout, data: st.DataObject) -> None:
    options = dataclasses.replace(OPTIONS, gaiji=data.draw(st.sampled_from(["reject", "substitute", "degenerate"])),
                                  charset=data.draw(st.sampled_from(["jisx0208", "cp932"])))
    records = dummy_records(layout, 8, seed=data.draw(st.integers(0, 5)))
    wide = [item for item in layout.fields if item.kind is Kind.K]
    for _ in range(data.draw(st.integers(0, 3), label="edits")):
        index = data.draw(st.integers(0, len(records) - 1))
        item = data.draw(st.sampled_from(wide))
        raw = data.draw(field_bytes(item.width, Kind.K))
        start = layout.offsets[item.key]
        records[index] = records[index][:start] + raw + records[index][start + item.width:]
    file = b"".join(records)
    assert run(file, layout, options, True) == run(file, layout, options, False)


def test_when_a_block_is_not_whole_records_then_it_is_no_matrix() -> None:
    layout = LAYOUTS["jnks-payments"]
    block = b"".join(dummy_records(layout, 3))
    assert as_matrix(block, layout.record_length) is not None
    assert as_matrix(block[:-1], layout.record_length) is None
    assert as_matrix(block[:30] + b"\n" + block[31:], layout.record_length) is None  # a bare LF inside
    moved = block[:68] + b"\n\r" + block[70:]  # the LF one byte early: still 3 LFs, but not each record's last byte
    assert as_matrix(moved, layout.record_length) is None
    assert np.asarray(as_matrix(block, layout.record_length)).shape == (3, 70)


def test_when_dates_are_checked_then_leap_years_and_month_ends_follow_the_calendar() -> None:
    layout = LAYOUTS["jnks-payments"]
    plan = columnar_plan(layout, OPTIONS.rule_context)
    record = dummy_records(layout, 1)[0]
    start = layout.offsets["valid_until"]
    for text, valid in [("20240229", True), ("20230229", False), ("21000229", False), ("20000229", True),
                        ("20250431", False), ("20251231", True), ("20251301", False), ("20250100", False),
                        ("00000101", False), ("99991231", True)]:
        changed = record[:start] + text.encode() + record[start + 8:]
        matrix = as_matrix(changed, layout.record_length)
        assert matrix is not None
        updated = layout.offsets["updated_on"]
        if valid and text < changed[updated:updated + 8].decode():
            continue  # valid_until ≥ updated_on would fail for another reason
        assert bool(plan.check(changed, matrix)[0]) == valid, text
    assert TODAY.year == 2025


def test_when_a_mapping_variant_is_encoded_then_its_bytes_are_those_of_its_cp932_character() -> None:
    """The UTF-8 block conversion relies on it instead of mapping the variants first."""
    from kei_gateway.layouts.encoding import MAPPING_VARIANTS

    for variant, cp932_char in MAPPING_VARIANTS.items():
        assert variant.encode("cp932") == cp932_char.encode("cp932")
