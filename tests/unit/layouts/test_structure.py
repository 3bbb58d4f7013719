"""Structural errors are caught with their place (SPEC §2: CRLF, no BOM, nothing after the last CRLF)."""

from __future__ import annotations

import dataclasses

import pytest

from kei_gateway.layouts import JNKS_PAYMENTS, MPN_SLIPS, ValidationOptions, Validator

from .helpers import OPTIONS, dummy_records, validate

RECORDS = dummy_records(JNKS_PAYMENTS, 3)
SIZE = JNKS_PAYMENTS.record_length


def errors(data: bytes, options: ValidationOptions = OPTIONS) -> list[tuple[int | None, int, str | None, str]]:
    report = validate(data, JNKS_PAYMENTS, options)
    return [(e.record, e.offset, e.key, e.reason) for e in report.errors]


def test_when_the_file_is_empty_then_it_is_invalid_as_a_whole() -> None:
    assert errors(b"") == [(None, 0, None, "the file is empty; a file has at least one record")]


def test_when_the_file_starts_with_a_bom_then_record_1_is_reported_at_byte_0() -> None:
    found = errors(b"\xef\xbb\xbf" + b"".join(RECORDS))
    assert found[0][:3] == (1, 0, None) and "byte order mark" in found[0][3]
    assert len(found) == 1


def test_when_a_utf8_file_starts_with_a_bom_then_record_1_is_reported() -> None:
    data = "\ufeff".encode("utf-8") + b"".join(RECORDS).decode("cp932").encode("utf-8")
    found = errors(data, dataclasses.replace(OPTIONS, encoding="utf-8"))
    assert [(r, o) for r, o, _, _ in found] == [(1, 0)] and "byte order mark" in found[0][3]


def test_when_a_record_ends_with_a_bare_lf_then_the_lf_is_reported_at_its_offset() -> None:
    data = RECORDS[0] + RECORDS[1][:-2] + b"\n" + RECORDS[2]
    found = errors(data)
    assert found[0][:2] == (2, 2 * SIZE - 2) and "bare LF" in found[0][3]
    assert all(record == 2 for record, _, _, _ in found)


def test_when_a_record_lacks_its_lf_then_the_cr_and_the_length_are_reported_at_that_record() -> None:
    data = RECORDS[0] + RECORDS[1][:-1] + RECORDS[2]
    found = errors(data)
    assert {record for record, _, _, _ in found} == {2}
    assert any("CR without LF" in reason for _, _, _, reason in found)
    assert any(f"is {2 * SIZE - 3} bytes long" in reason for _, _, _, reason in found)


def test_when_a_record_is_one_byte_short_then_its_length_is_reported() -> None:
    data = RECORDS[0] + RECORDS[1][:10] + RECORDS[1][11:] + RECORDS[2]
    assert errors(data) == [(2, SIZE, None, f"is {SIZE - 3} bytes long without CR LF, expected {SIZE - 2} "
                                            f"(jnks-payments records are {SIZE} bytes including CR LF)")]


def test_when_bytes_follow_the_last_crlf_then_they_are_reported_as_trailing_data() -> None:
    found = errors(b"".join(RECORDS) + b"EOF")
    assert [(r, o) for r, o, _, _ in found] == [(4, 3 * SIZE + 3)]
    assert "3 bytes of data after the last CR LF" in found[0][3]


def test_when_the_last_record_has_no_crlf_then_it_is_reported() -> None:
    found = errors(RECORDS[0] + RECORDS[1][:-2])
    assert found[0][0] == 2 and "not terminated by CR LF" in found[0][3]


def test_when_the_last_record_ends_with_cr_only_then_the_missing_lf_is_reported() -> None:
    found = errors(RECORDS[0] + RECORDS[1][:-1])
    assert found[0][0] == 2 and "CR but no LF" in found[0][3]


def test_when_a_nul_byte_is_in_a_field_then_it_is_reported_at_its_exact_offset() -> None:
    position = SIZE + JNKS_PAYMENTS.offsets["chassis_no"] + 3
    data = bytearray(b"".join(RECORDS))
    data[position] = 0
    assert errors(bytes(data))[0][:3] == (2, position, "chassis_no")
    assert "NUL" in errors(bytes(data))[0][3]


def test_when_a_k_field_has_bytes_that_are_not_cp932_then_the_field_and_byte_are_named() -> None:
    position = JNKS_PAYMENTS.offsets["plate_office"] + 2
    data = bytearray(b"".join(RECORDS))
    data[position:position + 2] = b"\x85\x40"  # row 9: no character in CP932
    found = errors(bytes(data))
    assert found[0][:3] == (1, position, "plate_office") and "not valid CP932" in found[0][3]


def test_when_a_double_byte_character_is_cut_at_the_field_end_then_it_is_not_valid_cp932() -> None:
    record = dummy_records(MPN_SLIPS, 1)[0]
    end = MPN_SLIPS.offsets["payer_name"] + 80
    broken = record[:end - 2] + b"\x40\x88" + record[end:]  # the field's last byte is a lead byte without trail
    report = validate(broken, MPN_SLIPS)
    assert [(e.key, "not valid CP932" in e.reason) for e in report.errors] == [("payer_name", True)]


@pytest.mark.parametrize("piece", [1, 7, 69, 70, 71, 4096])
def test_when_a_file_arrives_in_pieces_of_any_size_then_the_result_is_the_same(piece: int) -> None:
    data = bytearray(b"".join(dummy_records(JNKS_PAYMENTS, 50)))
    data[25 * SIZE + 40] = ord("X")
    validator = Validator(JNKS_PAYMENTS, OPTIONS)
    for start in range(0, len(data), piece):
        validator.feed(bytes(data[start:start + piece]))
    report = validator.close()
    assert [(e.record, e.key) for e in report.errors] == [(26, "lg_code")]
    assert report.records == 50


def test_when_the_file_is_valid_then_the_sink_receives_exactly_the_file() -> None:
    data = b"".join(dummy_records(JNKS_PAYMENTS, 20))
    out: list[bytes] = []
    report = validate_with_sink(data, out)
    assert report.valid and b"".join(out) == data


def validate_with_sink(data: bytes, out: list[bytes]):  # type: ignore[no-untyped-def]
    validator = Validator(JNKS_PAYMENTS, OPTIONS, out.append)
    validator.feed(data)
    return validator.close()
