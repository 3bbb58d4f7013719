"""gaiji = "degenerate" (SPEC §2): 外字 replaced by their unique 縮退 candidate, listed, counted; else the fallback."""

from __future__ import annotations

import datetime

import pytest

from kei_gateway.layouts import (
    Degenerated, ValidationOptions, generate_file, get_layout, parse_degenerations, validate_bytes,
)
from kei_gateway.layouts.degenerate import degenerate_char
from kei_gateway.layouts.encoding import GETA, IDEOGRAPHIC_SPACE, JISX0208_CHARS
from kei_gateway.layouts.generator import DUMMY_MJ_CHARS

TODAY = datetime.date(2026, 11, 21)
SLIPS = get_layout("mpn-slips")
NAME_AT = SLIPS.offsets["payer_name"]
NAME_CHARS = SLIPS["payer_name"].width // 2


BASE = b"".join(generate_file(SLIPS, 8, seed=7, today=TODAY)).decode("cp932").splitlines(keepends=True)


def slip_text(name: str, number: int = 1) -> str:
    """Valid mpn-slips record *number* as text, its payer_name replaced by *name* (padded with U+3000)."""
    line = BASE[number - 1]
    return line[:NAME_AT] + name.ljust(NAME_CHARS, IDEOGRAPHIC_SPACE) + line[NAME_AT + NAME_CHARS:]


def expected_cp932(name: str, number: int = 1) -> bytes:
    return slip_text(name, number).encode("cp932")


def run(data: bytes, **settings: object) -> tuple[object, bytes]:
    out: list[bytes] = []
    report = validate_bytes(data, SLIPS, ValidationOptions(today=TODAY, **settings), sink=out.append)  # type: ignore[arg-type]
    return report, b"".join(out)


@pytest.mark.parametrize("fast_path", [True, False])
def test_when_utf8_names_hold_mj_characters_then_they_are_degenerated_listed_and_sent_as_jisx0208(
        fast_path: bool) -> None:
    data = (slip_text("髙橋　𠮷田") + slip_text("山田", 2) + slip_text("﨑山", 3)).encode("utf-8")
    out: list[bytes] = []
    report = validate_bytes(data, SLIPS, ValidationOptions(today=TODAY, encoding="utf-8", gaiji="degenerate"),
                            sink=out.append, fast_path=fast_path)
    assert report.valid and report.degenerated == 3 and report.gaiji_substituted == 0
    assert report.degenerations == [Degenerated(1, "payer_name", "髙", "高"), Degenerated(1, "payer_name", "𠮷", "吉"),
                                    Degenerated(3, "payer_name", "﨑", "崎")]
    assert b"".join(out) == expected_cp932("高橋　吉田") + expected_cp932("山田", 2) + expected_cp932("崎山", 3)


@pytest.mark.parametrize("fast_path", [True, False])
def test_when_cp932_extension_kanji_arrive_under_jisx0208_then_they_are_degenerated(fast_path: bool) -> None:
    # 髙 as the IBM extended kanji 0xFBFC and as NEC-selected 0xEEE0; 﨑 as IBM 0xFAB1.
    name = b"\xfb\xfc" + "橋".encode("cp932") + b"\xee\xe0\xfa\xb1"
    plain = expected_cp932("田田田田")
    raw = plain[:NAME_AT] + name + plain[NAME_AT + len(name):]
    out: list[bytes] = []
    report = validate_bytes(raw, SLIPS, ValidationOptions(today=TODAY, gaiji="degenerate"), sink=out.append,
                            fast_path=fast_path)
    assert report.valid and report.degenerations == [Degenerated(1, "payer_name", "髙", "高"),
                                                     Degenerated(1, "payer_name", "髙", "高"),
                                                     Degenerated(1, "payer_name", "﨑", "崎")]
    assert b"".join(out) == expected_cp932("高橋高崎")


def test_when_charset_is_cp932_then_its_extension_kanji_are_kept_and_not_degenerated() -> None:
    raw = expected_cp932("髙橋")
    report, out = run(raw, charset="cp932", gaiji="degenerate")
    assert report.valid and report.degenerated == 0 and out == raw  # type: ignore[attr-defined]


def test_when_an_ivs_follows_a_character_then_the_pair_degenerates_to_the_base_and_the_field_is_repadded() -> None:
    data = slip_text("葛\U000e0100飾").encode("utf-8")
    report, out = run(data, encoding="utf-8", gaiji="degenerate")
    assert report.valid, report.errors  # type: ignore[attr-defined]
    assert report.degenerations == [Degenerated(1, "payer_name", "葛\U000e0100", "葛")]  # type: ignore[attr-defined]
    assert out == expected_cp932("葛飾")


def test_when_no_map_has_a_candidate_and_the_fallback_is_reject_then_the_record_names_gaiji_fallback() -> None:
    report, _ = run(slip_text("田\ue000").encode("utf-8"), encoding="utf-8", gaiji="degenerate")
    assert not report.valid and report.error_count == 1  # type: ignore[attr-defined]
    error = report.errors[0]  # type: ignore[attr-defined]
    assert error.record == 1 and error.key == "payer_name" and "gaiji_fallback" in error.reason
    assert "外字 at character 2" in error.reason and "\ue000" not in error.message()


def test_when_no_map_has_a_candidate_and_the_fallback_is_substitute_then_geta_and_the_others_degenerate() -> None:
    report, out = run(slip_text("髙\ue000").encode("utf-8"), encoding="utf-8", gaiji="degenerate",
                      gaiji_fallback="substitute")
    assert report.valid and report.gaiji_substituted == 1 and report.degenerated == 1  # type: ignore[attr-defined]
    assert out == expected_cp932("高" + GETA)


def test_when_a_cp932_user_defined_character_arrives_then_the_fallback_decides() -> None:
    raw = expected_cp932("田中")
    raw = raw[:NAME_AT + 2] + b"\xf0\x40" + raw[NAME_AT + 4:]  # 中 → the user-defined area (Unicode private use)
    rejected, _ = run(raw, gaiji="degenerate")
    assert not rejected.valid and "gaiji_fallback" in rejected.errors[0].reason  # type: ignore[attr-defined]
    substituted, out = run(raw, gaiji="degenerate", gaiji_fallback="substitute")
    assert substituted.valid and out == expected_cp932("田" + GETA)  # type: ignore[attr-defined]


def test_when_more_are_degenerated_than_are_kept_then_all_are_counted_and_the_first_listed() -> None:
    data = "".join(slip_text("髙", number) for number in range(1, 6)).encode("utf-8")
    report, _ = run(data, encoding="utf-8", gaiji="degenerate", max_degenerations=2)
    assert report.valid and report.degenerated == 5  # type: ignore[attr-defined]
    assert [d.record for d in report.degenerations] == [1, 2]  # type: ignore[attr-defined]


def test_when_the_policy_is_reject_then_the_message_names_every_policy() -> None:
    report, _ = run(slip_text("髙").encode("utf-8"), encoding="utf-8")
    assert 'gaiji = "substitute" or "degenerate"' in report.errors[0].reason  # type: ignore[attr-defined]


def test_when_the_list_is_read_back_then_header_lines_are_skipped() -> None:
    assert parse_degenerations("# degenerated 1 listed 1\n4\tpayer_name\t髙\t高\n".encode("utf-8")) == [
        Degenerated(4, "payer_name", "髙", "高")]


def test_when_dummy_mj_characters_are_listed_then_each_is_outside_jisx0208_and_degenerates_to_its_pair() -> None:
    for mj, target in DUMMY_MJ_CHARS:
        assert mj not in JISX0208_CHARS and degenerate_char(mj) == target


@pytest.mark.parametrize("layout_name", ["mpn-slips", "mpn-results", "jnks-payments"])
@pytest.mark.parametrize("encoding", ["utf-8", "cp932"])
def test_when_dummy_files_carry_mj_names_then_degenerate_takes_them_and_reject_does_not(
        layout_name: str, encoding: str) -> None:
    layout = get_layout(layout_name)
    data = b"".join(generate_file(layout, 300, seed=5, today=TODAY, encoding=encoding,  # type: ignore[arg-type]
                                  mj_rate=0.1, lg_code="131202"))
    options = {"today": TODAY, "encoding": encoding, "lg_code": "131202"}
    report = validate_bytes(data, layout, ValidationOptions(gaiji="degenerate", **options))  # type: ignore[arg-type]
    assert report.valid, report.errors[:3]
    assert 10 < report.degenerated < 60
    rejected = validate_bytes(data, layout, ValidationOptions(**options))  # type: ignore[arg-type]
    assert rejected.error_count == report.degenerated
