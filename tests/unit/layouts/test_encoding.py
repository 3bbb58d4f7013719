"""CP932 widths, UTF-8 input conversion, character sets and the 外字 policies (SPEC §2)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from kei_gateway.layouts import JNKS_PAYMENTS, MPN_SLIPS, ValidationOptions, render_record, validate_bytes
from kei_gateway.layouts.generator import generate_record

from .helpers import OPTIONS, TODAY, put

UTF8 = dataclasses.replace(OPTIONS, encoding="utf-8")


def slip(**changes: object) -> dict[str, object]:
    record = dict(generate_record(MPN_SLIPS, random.Random(11), 1, TODAY))
    record.update(changes)
    return record


def cp932_slip(name_bytes: bytes) -> bytes:
    """A valid MPN slip whose 納税義務者氏名 field is replaced by ``name_bytes`` padded with U+3000."""
    base = render_record(MPN_SLIPS, slip())
    return put(MPN_SLIPS, base, "payer_name", name_bytes + b"\x81\x40" * ((80 - len(name_bytes)) // 2))


def utf8_slip(name: str) -> bytes:
    """The same slip as UTF-8: fields sliced by characters, the name field 40 characters."""
    text = render_record(MPN_SLIPS, slip()).decode("cp932")
    start = 32  # tax_item 2 + slip_no 20 + confirm_no 6 + pay_class 4 characters
    return (text[:start] + name.ljust(40, "\u3000") + text[start + 40:]).encode("utf-8")


def converted(data: bytes, options: ValidationOptions = UTF8) -> tuple[bytes, list[str], int]:
    out: list[bytes] = []
    report = validate_bytes(data, MPN_SLIPS, options, sink=out.append)
    return b"".join(out), [f"{e.key}: {e.reason}" for e in report.errors], report.gaiji_substituted


def name_bytes(output: bytes) -> bytes:
    return output[32:112]


def test_when_a_k_field_is_8_bytes_then_it_holds_4_full_width_characters() -> None:
    record = put(JNKS_PAYMENTS, render_record(JNKS_PAYMENTS, generate_record(JNKS_PAYMENTS, random.Random(1), 1, TODAY)),
                 "plate_office", "尾張小牧".encode("cp932"))
    assert validate_bytes(record, JNKS_PAYMENTS, OPTIONS).valid


def test_when_a_k_field_holds_a_half_width_letter_then_it_is_an_error_not_widened() -> None:
    report = validate_bytes(cp932_slip("ﾀﾞﾐｰ".encode("cp932") + b"AB"), MPN_SLIPS, OPTIONS)
    assert [(e.key, "half-width" in e.reason) for e in report.errors] == [("payer_name", True)]


def test_when_cp932_input_has_half_width_katakana_in_a_k_field_then_it_is_an_error() -> None:
    report = validate_bytes(cp932_slip("ﾀﾞﾐｰ".encode("cp932")), MPN_SLIPS, OPTIONS)
    assert not report.valid and report.errors[0].key == "payer_name"


def test_when_utf8_input_has_half_width_katakana_in_a_k_field_then_it_becomes_full_width_and_is_repadded() -> None:
    output, errors, _ = converted(utf8_slip("ﾀﾞﾐｰ\u3000ﾀﾛｳ"))
    assert errors == []
    assert name_bytes(output) == "ダミー\u3000タロウ".ljust(40, "\u3000").encode("cp932")
    assert len(output) == MPN_SLIPS.record_length


def test_when_utf8_input_has_a_half_width_letter_in_a_k_field_then_it_is_an_error() -> None:
    _, errors, _ = converted(utf8_slip("ダミーA"))
    assert len(errors) == 1 and errors[0].startswith("payer_name: has a half-width character at character 4")


@pytest.mark.parametrize(("variant", "cp932"), [
    ("\u301c", b"\x81\x60"), ("\u2016", b"\x81\x61"), ("\u2212", b"\x81\x7c"),
    ("\u00a2", b"\x81\x91"), ("\u00a3", b"\x81\x92"), ("\u00ac", b"\x81\xca"),
])
def test_when_utf8_input_has_a_mapping_variant_then_it_becomes_the_cp932_character(variant: str, cp932: bytes) -> None:
    output, errors, _ = converted(utf8_slip("ダミー" + variant))
    assert errors == []
    assert name_bytes(output).startswith("ダミー".encode("cp932") + cp932)


def test_when_utf8_input_has_the_cp932_code_points_already_then_they_are_kept() -> None:
    output, errors, _ = converted(utf8_slip("ダミー～∥－￠￡￢"))
    assert errors == [] and name_bytes(output).startswith("ダミー～∥－￠￡￢".encode("cp932"))


EXTENSIONS = ["髙", "﨑", "①", "㈱"]


@pytest.mark.parametrize("char", EXTENSIONS)
def test_when_charset_is_jisx0208_then_cp932_extension_bytes_are_gaiji_and_rejected(char: str) -> None:
    report = validate_bytes(cp932_slip(f"ダミー{char}".encode("cp932")), MPN_SLIPS, OPTIONS)
    assert [e.key for e in report.errors] == ["payer_name"]
    assert "外字 at character 4" in report.errors[0].reason


@pytest.mark.parametrize("char", EXTENSIONS)
def test_when_charset_is_jisx0208_then_the_same_characters_in_utf8_are_gaiji_and_rejected(char: str) -> None:
    _, errors, _ = converted(utf8_slip(f"ダミー{char}"))
    assert len(errors) == 1 and "外字 at character 4" in errors[0]


@pytest.mark.parametrize("char", EXTENSIONS)
def test_when_charset_is_cp932_then_extension_characters_are_accepted_from_either_encoding(char: str) -> None:
    cp932_options = dataclasses.replace(OPTIONS, charset="cp932")
    assert validate_bytes(cp932_slip(f"ダミー{char}".encode("cp932")), MPN_SLIPS, cp932_options).valid
    output, errors, _ = converted(utf8_slip(f"ダミー{char}"), dataclasses.replace(UTF8, charset="cp932"))
    assert errors == [] and name_bytes(output).startswith(f"ダミー{char}".encode("cp932"))


@pytest.mark.parametrize("charset", ["jisx0208", "cp932"])
def test_when_a_character_is_outside_cp932_then_it_is_gaiji_under_every_charset(charset: str) -> None:
    _, errors, _ = converted(utf8_slip("𠮷野"), dataclasses.replace(UTF8, charset=charset))  # type: ignore[arg-type]
    assert len(errors) == 1 and "外字 at character 1" in errors[0]


@pytest.mark.parametrize("charset", ["jisx0208", "cp932"])
def test_when_a_cp932_user_defined_character_appears_then_it_is_gaiji_under_every_charset(charset: str) -> None:
    options = dataclasses.replace(OPTIONS, charset=charset)  # type: ignore[arg-type]
    report = validate_bytes(cp932_slip("ダミー".encode("cp932") + b"\xf0\x40"), MPN_SLIPS, options)
    assert [e.key for e in report.errors] == ["payer_name"]


def test_when_gaiji_is_substitute_then_each_gaiji_becomes_geta_and_is_counted_from_cp932() -> None:
    options = dataclasses.replace(OPTIONS, gaiji="substitute")
    output, errors, count = converted(cp932_slip("髙橋　﨑①".encode("cp932")), options)
    assert errors == [] and count == 3
    assert name_bytes(output).startswith("〓橋　〓〓".encode("cp932"))


def test_when_gaiji_is_substitute_then_each_gaiji_becomes_geta_and_is_counted_from_utf8() -> None:
    output, errors, count = converted(utf8_slip("𠮷野　髙"), dataclasses.replace(UTF8, gaiji="substitute"))
    assert errors == [] and count == 2
    assert name_bytes(output).startswith("〓野　〓".encode("cp932"))


def test_when_gaiji_are_substituted_then_no_error_or_message_carries_the_value() -> None:
    options = dataclasses.replace(OPTIONS, gaiji="substitute")
    report = validate_bytes(cp932_slip("髙".encode("cp932")), MPN_SLIPS, options)
    assert report.valid and report.errors == [] and report.gaiji_substituted == 1


def test_when_utf8_input_is_valid_then_the_sink_gets_the_same_bytes_as_the_cp932_rendering() -> None:
    output, errors, _ = converted(utf8_slip("ダミー\u3000花子"))
    assert errors == []
    assert output == render_record(MPN_SLIPS, slip(payer_name="ダミー\u3000花子"))


def test_when_utf8_input_has_a_non_ascii_character_in_an_x_or_n_field_then_it_is_an_error() -> None:
    text = utf8_slip("ダミー").decode("utf-8")
    data = ("０" + text[1:]).encode("utf-8")
    report = validate_bytes(data, MPN_SLIPS, UTF8)
    assert [(e.record, e.key, e.offset) for e in report.errors] == [(1, "tax_item", 0)]


def test_when_utf8_errors_are_reported_then_offsets_are_byte_offsets_in_the_utf8_input() -> None:
    text = utf8_slip("ダミー\u3000太郎").decode("utf-8")
    bad = text[:112 - 40] + "X" + text[112 - 40 + 1:]  # 請求金額's first character (after 40 K characters)
    report = validate_bytes(bad.encode("utf-8"), MPN_SLIPS, UTF8)
    name_start = 32
    expected = name_start + len(text[32:72].encode("utf-8"))
    assert [(e.key, e.offset) for e in report.errors] == [("amount_billed", expected)]


def test_when_utf8_input_is_not_valid_utf8_then_the_error_names_the_first_byte_of_the_broken_character() -> None:
    data = utf8_slip("ダミー")
    bad = data[:40] + b"\xff" + data[41:]
    report = validate_bytes(bad, MPN_SLIPS, UTF8)
    assert report.errors[0].offset == 38 and "not valid UTF-8" in report.errors[0].reason


@pytest.mark.parametrize("name", ["ダミー\u3000花子", "ダミー\u301c\u2016\u2212\u00a2\u00a3\u00ac", "ﾀﾞﾐｰ\u3000ﾊﾅｺ", "髙橋\u3000𠮷子",
                                  "ダミーA", "\u3000ダミー"])
@pytest.mark.parametrize("gaiji", ["reject", "substitute"])
def test_when_utf8_input_is_validated_then_the_block_fast_path_and_the_per_field_conversion_agree(
        name: str, gaiji: str) -> None:
    """Many records, so the whole-block conversion is tried; the results must be the per-record ones."""
    one = utf8_slip(name)
    base = render_record(MPN_SLIPS, slip()).decode("cp932")
    many = b"".join((base[:2] + f"{n:020d}" + base[22:32] + name.ljust(40, "\u3000") + base[72:]).encode("utf-8")
                    for n in range(1, 400))
    options = dataclasses.replace(UTF8, gaiji=gaiji)  # type: ignore[arg-type]
    for data in (one, many):
        fast_out: list[bytes] = []
        precise_out: list[bytes] = []
        fast = validate_bytes(data, MPN_SLIPS, options, sink=fast_out.append)
        precise = validate_bytes(data, MPN_SLIPS, options, sink=precise_out.append, fast_path=False)
        assert [e.message() for e in fast.errors] == [e.message() for e in precise.errors]
        assert fast.gaiji_substituted == precise.gaiji_substituted
        if precise.valid:
            assert b"".join(fast_out) == b"".join(precise_out)


def test_when_a_utf8_mapping_variant_is_in_a_half_width_field_then_it_is_an_error_on_both_paths() -> None:
    base = render_record(MPN_SLIPS, slip()).decode("cp932")
    bad = ("\u2212" + base[1:]).encode("utf-8") * 3
    for fast_path in (True, False):
        report = validate_bytes(bad, MPN_SLIPS, UTF8, fast_path=fast_path)
        assert [(e.record, e.key) for e in report.errors] == [(1, "tax_item"), (2, "tax_item"), (3, "tax_item")]
