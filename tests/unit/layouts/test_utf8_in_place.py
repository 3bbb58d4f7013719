"""The 外字 policy applied in place to UTF-8 blocks (the 縮退 fast path) equals the record-by-record conversion.

A UTF-8 record whose only fault is a 外字 in a ``K`` field has its 外字 replaced in the
block's CP932 bytes and only its ``K`` checks made again; everything else goes through
:func:`convert_utf8_record`.  Files are compared whole against the precise path (errors,
counts, the 縮退 list, the bytes passed on), with MJ characters at the start and the end of
every ``K`` field, several a record, unmapped, with several candidates, mapped to several
characters, with variation selectors, half-width kana and the block's own stand-ins.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kei_gateway.layouts import LAYOUTS, Kind, Layout, ValidationOptions, validate_bytes
from kei_gateway.layouts import validator as validator_module
from kei_gateway.layouts.columnar import as_matrix, columnar_plan
from kei_gateway.layouts.generator import DUMMY_MJ_CHARS
from kei_gateway.layouts.utf8 import _MARK_ERRORS, _needs_conversion, utf8_block

from .helpers import OPTIONS, dummy_records

WIDE_LAYOUTS = [layout for layout in LAYOUTS.values() if any(item.kind is Kind.K for item in layout.fields)]
MJ = [mj for mj, _ in DUMMY_MJ_CHARS]
"""One unique 縮退 candidate each: CP932 extension kanji (髙 﨑 …), and outside CP932 (𠮷 beyond U+FFFF, 圡 鷗)."""
ODD = ["\ue000",  # private use (CP932's user-defined area): in no map
       "\u3404",  # 㐄: two JIS X 0208 candidates (井, 牛)
       "\u2162",  # Ⅲ: 縮退 to three characters (ＩＩＩ)
       "葛\U000e0100", "𠮷\U000e0100",  # variation selectors
       "ｶﾞ", "ｱ",  # half-width katakana: widened
       "\ufeff", "\ufffe", "\u0800", "\u0fff",  # a BOM, the block's marks and stand-ins as input
       "①", "A", "〜", "−"]
PLAIN = ["高", "橋", "ダ", "\u3000"]


def run(data: bytes, layout: Layout, options: ValidationOptions, fast_path: bool) -> tuple[object, ...]:
    out: list[bytes] = []
    report = validate_bytes(data, layout, options, sink=out.append, fast_path=fast_path)
    return ([e.message(full_values=True) for e in report.errors], report.error_count, report.records,
            report.gaiji_substituted, report.degenerated, report.degenerations, b"".join(out) if report.valid else b"")


@st.composite
def wide_text(draw: st.DrawFn, chars: int) -> str:
    """A ``K`` field's characters: MJ characters at its start, its end or anywhere, several, odd ones sometimes."""
    pieces = draw(st.lists(st.sampled_from(MJ + PLAIN + (ODD if draw(st.booleans()) else [])), min_size=1,
                           max_size=6))
    where = draw(st.sampled_from(["start", "end", "full", "any"]))
    text = "".join(pieces)
    if where == "end":
        text = text.rjust(chars, "ダ")[-chars:]
    elif where == "full":
        text = (text * chars)[:chars]
    return text[:chars].ljust(chars, "\u3000")


@pytest.mark.parametrize("layout", WIDE_LAYOUTS, ids=lambda layout: layout.name)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_when_utf8_records_hold_mj_characters_in_k_fields_then_the_in_place_path_equals_the_precise_one(
        layout: Layout, data: st.DataObject) -> None:
    options = dataclasses.replace(OPTIONS, encoding="utf-8",
                                  gaiji=data.draw(st.sampled_from(["degenerate", "degenerate", "substitute"])),
                                  gaiji_fallback=data.draw(st.sampled_from(["reject", "substitute"])),
                                  charset=data.draw(st.sampled_from(["jisx0208", "cp932"])))
    lines = [record.decode("cp932") for record in dummy_records(layout, 40, seed=data.draw(st.integers(0, 5)))]
    wide = [item for item in layout.fields if item.kind is Kind.K]
    for _ in range(data.draw(st.integers(1, 12), label="edits")):
        index = data.draw(st.integers(0, len(lines) - 1), label="record")
        for item in data.draw(st.lists(st.sampled_from(wide), min_size=1, unique=True), label="fields"):
            start = sum(field.chars for field in layout.fields[:layout.fields.index(item)])
            text = data.draw(wide_text(item.chars), label=item.key)
            lines[index] = lines[index][:start] + text + lines[index][start + item.chars:]
    file = "".join(lines).encode("utf-8")
    block_size = data.draw(st.sampled_from([1 << 10, 1 << 18]))  # several blocks, or one
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validator_module, "_UTF8_BLOCK_SIZE", block_size)
        assert run(file, layout, options, True) == run(file, layout, options, False)


@pytest.mark.parametrize("layout", WIDE_LAYOUTS, ids=lambda layout: layout.name)
def test_when_k_fields_hold_only_mapped_mj_characters_then_only_invalid_records_are_converted_on_their_own(
        layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-place path is the one taken: a record is converted record by record only if it is invalid."""
    lines = [record.decode("cp932") for record in dummy_records(layout, 30, seed=3)]
    wide = [item for item in layout.fields if item.kind is Kind.K and item.chars > 1]
    for index in range(1, len(lines), 3):  # not record 1: a BOM there is the precise path's
        for number, item in enumerate(wide):
            start = sum(field.chars for field in layout.fields[:layout.fields.index(item)])
            mj = MJ[(index + number) % len(MJ)]
            text = mj + lines[index][start + 1:start + item.chars - 1] + mj  # the field's first and last place
            lines[index] = lines[index][:start] + text + lines[index][start + item.chars:]
    file = "".join(lines).encode("utf-8")
    options = dataclasses.replace(OPTIONS, encoding="utf-8", gaiji="degenerate", charset="jisx0208")
    converted: list[str] = []
    whole_record = validator_module.convert_utf8_record

    def counted(layout: Layout, text: str, *args: object) -> object:
        converted.append(text)
        return whole_record(layout, text, *args)  # type: ignore[arg-type]
    monkeypatch.setattr(validator_module, "convert_utf8_record", counted)
    report = validate_bytes(file, layout, options)
    monkeypatch.undo()
    invalid = {error.record for error in report.errors}
    assert {lines.index(text + "\r\n") + 1 for text in converted} <= invalid
    assert report.degenerated > 0
    assert run(file, layout, options, True) == run(file, layout, options, False)


def test_when_a_name_holds_mj_characters_then_the_list_names_record_field_and_characters_in_order() -> None:
    layout = LAYOUTS["mpn-slips"]
    lines = [record.decode("cp932") for record in dummy_records(layout, 5, seed=1)]
    start = sum(field.chars for field in layout.fields[:layout.fields.index(layout["payer_name"])])
    lines[2] = lines[2][:start] + "髙𠮷鷗" + lines[2][start + 3:]
    options = dataclasses.replace(OPTIONS, encoding="utf-8", gaiji="degenerate")
    report = validate_bytes("".join(lines).encode("utf-8"), layout, options)
    assert report.valid and report.degenerated == 3
    assert [(d.record, d.key, d.source, d.target) for d in report.degenerations] == [
        (3, "payer_name", "髙", "高"), (3, "payer_name", "𠮷", "吉"), (3, "payer_name", "鷗", "鴎")]


@pytest.mark.parametrize("extra", ["", "\U000e0100", "\u0800", "𠮷" * 2100],
                         ids=["planes-1-3", "an-ivs-of-plane-14", "a-stand-in-as-input", "too-many"])
def test_when_a_block_holds_characters_beyond_ffff_then_they_encode_as_marks_and_are_given_back(extra: str) -> None:
    text = "髙𠮷ダ\r\n𡈽鷗𠀋" + extra + "\r\n"
    converted = utf8_block(text.encode("utf-8"))
    assert converted is not None
    assert converted.cp932 == text.encode("cp932", errors=_MARK_ERRORS)
    assert "".join(map(converted.char, converted.text)) == text
    assert not converted.astral or max(converted.text) < "\U00010000"  # two bytes a character in memory


def test_when_a_block_is_not_utf8_beyond_ffff_then_it_is_none() -> None:
    assert utf8_block("𠮷".encode("utf-8")[:3] + b"\r\n") is None
    assert utf8_block(b"\xf0\x80\x80\x80\r\n") is None  # an overlong form


@pytest.mark.parametrize("layout", WIDE_LAYOUTS, ids=lambda layout: layout.name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_when_k_field_bytes_change_then_only_the_wide_checks_can_change_their_verdict(
        layout: Layout, data: st.DataObject) -> None:
    """What check_split calls narrow reads no K field; check_wide of the changed records completes it."""
    records = dummy_records(layout, 6, seed=data.draw(st.integers(0, 5)))
    block = b"".join(records)
    matrix = as_matrix(block, layout.record_length)
    assert matrix is not None
    plan = columnar_plan(layout, OPTIONS.rule_context)
    ok, narrow = plan.check_split(matrix)
    assert list(ok) == list(plan.check(block, matrix))
    changed = matrix.copy()
    for item in [item for item in layout.fields if item.kind is Kind.K]:
        start = layout.offsets[item.key]
        raw = data.draw(st.binary(min_size=item.width, max_size=item.width).filter(lambda raw: b"\n" not in raw))
        changed[:, start:start + item.width] = np.frombuffer(raw, dtype=np.uint8)
    ok_changed, narrow_changed = plan.check_split(changed)
    assert list(narrow_changed) == list(narrow)
    assert list(ok_changed) == list(narrow & plan.check_wide(changed))


HALFWIDTH_OR_BOM = re.compile(rb"\xef(?:\xbd[\xa1-\xbf]|\xbe[\x80-\x9f]|\xbb\xbf)")
"""Half-width katakana (U+FF61–U+FF9F) and the BOM in UTF-8: the reference for the block's pre-check."""


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(["ｱ", "ﾟ", "｡", "\ufeff", "～", "ａ", "ｚ", "｀", "￠", "Ａ", "０", "\uffef",
                                              "\ufeb0", "\ufefe", "ア", "𠮷", "A", "\n"]), max_size=40))
def test_when_a_block_is_checked_for_halfwidth_kana_and_boms_then_the_answer_is_the_regex_one(text: str) -> None:
    block = text.encode("utf-8")
    assert _needs_conversion(block) == (HALFWIDTH_OR_BOM.search(block) is not None)
