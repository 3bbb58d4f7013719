"""Check digits of SPEC §2.5."""

from __future__ import annotations

import random

import pytest

from kei_gateway.layouts import (
    JNKS_PAYMENTS, MPN_RESULTS, gs1_check_digit, is_valid_gs1_cvs_code, is_valid_lg_code, lg_code_check_digit,
    render_record,
)
from kei_gateway.layouts.generator import generate_record

from .helpers import TODAY, dummy_records, put, validate


@pytest.mark.parametrize("code", ["131041", "131202", "011002", "131130"])
def test_when_an_lg_code_is_a_spec_example_then_its_check_digit_is_valid(code: str) -> None:
    assert is_valid_lg_code(code)
    assert lg_code_check_digit(code[:5]) == int(code[5])


@pytest.mark.parametrize("code", ["131040", "131042", "131200", "011003", "13104", "1310411", "13104A", "１３１０４１"])
def test_when_an_lg_code_has_a_wrong_digit_or_shape_then_it_is_invalid(code: str) -> None:
    assert not is_valid_lg_code(code)


@pytest.mark.parametrize(("first_five", "check"), [("13104", 1), ("13120", 2), ("01100", 2), ("13113", 0),
                                                    ("00000", 1), ("27100", 4)])
def test_when_the_weights_654_32_are_applied_then_the_check_digit_is_11_minus_sum_mod_11_mod_10(
        first_five: str, check: int) -> None:
    assert lg_code_check_digit(first_five) == check


def test_when_the_lg_code_check_digit_is_wrong_then_the_error_says_what_it_should_be() -> None:
    record = put(JNKS_PAYMENTS, dummy_records(JNKS_PAYMENTS, 1)[0], "lg_code", b"131040")
    report = validate(record, JNKS_PAYMENTS)
    assert [e.message() for e in report.errors] == [
        "record 1, byte 38: 全国地方公共団体コード (lg_code): check digit should be 1, got 0 [value '131040']"]


def _gs1(body43: str) -> str:
    return body43 + str(gs1_check_digit(body43))


@pytest.mark.parametrize(("digits", "check"), [
    # position 2 (weight 3) is the last digit given; (3A + B) mod 10 then complement.
    ("1", 7),              # A = 1: 3 → 7
    ("12", 3),             # A = 2, B = 1: 7 → 3
    ("490123456789", 4),   # the JAN (EAN-13, same algorithm) 4901234567894
])
def test_when_digits_are_weighted_3_1_from_the_right_then_the_gs1_check_digit_matches(digits: str, check: int) -> None:
    assert gs1_check_digit(digits) == check


def test_when_a_cvs_code_is_44_digits_with_ai_91_and_right_check_digit_then_it_is_valid() -> None:
    code = _gs1("91" + "0" * 11 + "12345678901234567890" + "1" * 10)
    assert len(code) == 44 and is_valid_gs1_cvs_code(code)


@pytest.mark.parametrize("change", ["check", "ai", "short", "letter"])
def test_when_a_cvs_code_is_altered_then_it_is_invalid(change: str) -> None:
    code = _gs1("91" + "3" * 41)
    bad = {
        "check": code[:-1] + str((int(code[-1]) + 1) % 10),
        "ai": "92" + code[2:],
        "short": code[:-1],
        "letter": code[:10] + "A" + code[11:],
    }[change]
    assert not is_valid_gs1_cvs_code(bad)


def test_when_a_convenience_store_result_has_a_wrong_cvs_check_digit_then_the_error_names_cvs_code() -> None:
    rng = random.Random(3)
    record = generate_record(MPN_RESULTS, rng, 1, TODAY)
    record.update(channel="05", bank_code="0000")
    good = render_record(MPN_RESULTS, {**record, "cvs_code": _gs1("91" + "5" * 41)})
    assert validate(good, MPN_RESULTS).valid
    code = _gs1("91" + "5" * 41)
    bad = put(MPN_RESULTS, good, "cvs_code", (code[:-1] + str((int(code[-1]) + 1) % 10)).encode())
    report = validate(bad, MPN_RESULTS)
    assert [(e.key, e.reason.split(" when")[0]) for e in report.errors] == [
        ("cvs_code", f"check digit should be {code[-1]}, got {(int(code[-1]) + 1) % 10}")]
