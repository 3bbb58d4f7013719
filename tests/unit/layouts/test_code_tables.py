"""Every code table (SPEC §2.1–§2.6): each code accepted, anything else rejected at its field."""

from __future__ import annotations

import random

import pytest

from kei_gateway.layouts import JNKS_PAYMENTS, JNKS_RECEIPTS, MPN_RESULTS, MPN_SLIPS, Layout, render_record
from kei_gateway.layouts.codes import (
    CHANNELS, DEREGISTERED_FLAGS, PAY_METHODS, PAYMENT_STATUSES, RECEIPT_RESULTS, RECORD_KINDS, RESULT_KINDS,
    TAX_ITEMS, VEHICLE_TYPES,
)
from kei_gateway.layouts.generator import generate_record

from .helpers import TODAY, put, validate

TABLES = [
    (JNKS_PAYMENTS, "record_kind", RECORD_KINDS, {"1", "2", "3"}),
    (JNKS_PAYMENTS, "vehicle_type", VEHICLE_TYPES, {"11", "21", "31", "32", "33", "34"}),
    (JNKS_PAYMENTS, "payment_status", PAYMENT_STATUSES, {"1", "2", "3", "4", "5"}),
    (JNKS_PAYMENTS, "deregistered", DEREGISTERED_FLAGS, {"0", "1"}),
    (JNKS_RECEIPTS, "result", RECEIPT_RESULTS, {"0", "9"}),
    (MPN_SLIPS, "tax_item", TAX_ITEMS, {"01", "02", "03", "99"}),
    (MPN_RESULTS, "pay_method", PAY_METHODS, {"01", "02", "03", "04", "05"}),
    (MPN_RESULTS, "result_kind", RESULT_KINDS, {"1", "2", "3"}),
    (MPN_RESULTS, "channel", CHANNELS, {f"{n:02d}" for n in range(1, 10)}),
]


CROSS_RULED = {("result", "0"), ("tax_item", "02")}


def base_record(layout: Layout) -> dict[str, object]:
    record = dict(generate_record(layout, random.Random(21), 1, TODAY))
    if layout is MPN_RESULTS or layout is MPN_SLIPS:
        record.update(tax_item="01", installment="03")
    if layout is MPN_RESULTS:
        record.update(channel="06", bank_code="0000", cvs_code="")
    if layout is JNKS_RECEIPTS:
        record.update(result="9", error_code="E001", message="ダミーエラー")
    return record


@pytest.mark.parametrize(("layout", "key", "table", "codes"), TABLES, ids=lambda v: getattr(v, "name", None))
def test_when_a_code_table_is_declared_then_it_has_exactly_the_spec_codes(
        layout: Layout, key: str, table: dict[str, str], codes: set[str]) -> None:
    assert set(table) == codes


@pytest.mark.parametrize(("layout", "key", "table", "codes"), TABLES, ids=lambda v: getattr(v, "name", None))
def test_when_a_field_holds_any_code_of_its_table_then_the_record_is_valid_and_any_other_value_is_not(
        layout: Layout, key: str, table: dict[str, str], codes: set[str]) -> None:
    record = render_record(layout, base_record(layout))
    width = layout[key].width
    for code in codes:
        if (key, code) in CROSS_RULED or (key == "channel" and code in ("01", "02", "03", "04", "05")):
            continue  # these codes require other fields to change too; the cross-rule tests below cover them
        data = put(layout, record, key, code.ljust(width).encode())
        assert validate(data, layout).valid, (key, code)
    others = {f"{n:0{width}d}" for n in range(10 ** width)} - codes
    for other in sorted(others)[:40]:
        report = validate(put(layout, record, key, other.encode()), layout)
        assert key in {e.key for e in report.errors}, (key, other)


@pytest.mark.parametrize("channel", ["01", "02", "03", "04"])
def test_when_the_channel_is_a_bank_then_a_bank_code_is_required_and_0000_is_not(channel: str) -> None:
    record = render_record(MPN_RESULTS, base_record(MPN_RESULTS))
    record = put(MPN_RESULTS, record, "channel", channel.encode())
    assert validate(put(MPN_RESULTS, record, "bank_code", b"0005"), MPN_RESULTS).valid
    report = validate(put(MPN_RESULTS, record, "bank_code", b"0000"), MPN_RESULTS)
    assert [e.key for e in report.errors] == ["bank_code"]


def test_when_the_channel_is_not_a_bank_then_the_bank_code_must_be_0000() -> None:
    record = render_record(MPN_RESULTS, base_record(MPN_RESULTS))
    report = validate(put(MPN_RESULTS, record, "bank_code", b"0005"), MPN_RESULTS)
    assert [e.key for e in report.errors] == ["bank_code"]


def test_when_the_channel_is_a_convenience_store_then_a_cvs_code_is_required_and_otherwise_forbidden() -> None:
    record = render_record(MPN_RESULTS, base_record(MPN_RESULTS))
    cvs = put(MPN_RESULTS, record, "channel", b"05")
    assert [e.key for e in validate(cvs, MPN_RESULTS).errors] == ["cvs_code"]
    filled = put(MPN_RESULTS, record, "cvs_code", b"91" + b"0" * 42)
    assert [e.key for e in validate(filled, MPN_RESULTS).errors] == ["cvs_code"]


@pytest.mark.parametrize(("tax_item", "installment", "valid"), [
    ("02", "01", True), ("02", "02", False), ("02", "12", False),
    ("01", "01", True), ("01", "12", True), ("01", "13", False), ("03", "00", False), ("99", "06", True),
])
def test_when_the_installment_is_checked_then_only_01_is_allowed_for_the_kei_car_tax(
        tax_item: str, installment: str, valid: bool) -> None:
    record = render_record(MPN_SLIPS, base_record(MPN_SLIPS))
    record = put(MPN_SLIPS, put(MPN_SLIPS, record, "tax_item", tax_item.encode()), "installment", installment.encode())
    report = validate(record, MPN_SLIPS)
    assert report.valid is valid
    if not valid:
        assert {e.key for e in report.errors} == {"installment"}


@pytest.mark.parametrize(("billed", "tax", "late", "valid"), [
    (1500, 1000, 500, True), (1000, 1000, 0, True), (1501, 1000, 500, False), (0, 0, 0, True),
    (9_999_999_999, 9_999_999_998, 1, True), (999, 1000, 0, False),
])
def test_when_the_billed_amount_is_checked_then_it_must_be_tax_plus_late_fee(
        billed: int, tax: int, late: int, valid: bool) -> None:
    record = base_record(MPN_SLIPS)
    record.update(amount_billed=billed, amount_tax=tax, amount_late=late)
    report = validate(render_record(MPN_SLIPS, record), MPN_SLIPS)
    assert report.valid is valid
    if not valid:
        assert [e.key for e in report.errors] == ["amount_billed"]


def test_when_the_paid_amount_is_not_tax_plus_late_fee_then_amount_paid_is_reported() -> None:
    record = base_record(MPN_RESULTS)
    record.update(amount_paid=100, paid_tax=90, paid_late=9)
    report = validate(render_record(MPN_RESULTS, record), MPN_RESULTS)
    assert [e.key for e in report.errors] == ["amount_paid"]


def test_when_a_receipt_is_accepted_then_error_code_and_message_must_be_blank() -> None:
    record = base_record(JNKS_RECEIPTS)
    assert validate(render_record(JNKS_RECEIPTS, record), JNKS_RECEIPTS).valid
    record["result"] = "0"
    report = validate(render_record(JNKS_RECEIPTS, record), JNKS_RECEIPTS)
    assert [e.key for e in report.errors] == ["error_code", "message"]


@pytest.mark.parametrize(("kana", "valid"), [("あ", True), ("ん", True), ("Ｙ", True), ("Ｅ", True),
                                             ("ア", False), ("Ｃ", False), ("亜", False)])
def test_when_the_plate_kana_is_checked_then_one_hiragana_or_abehkmty_is_allowed(kana: str, valid: bool) -> None:
    record = render_record(JNKS_PAYMENTS, base_record(JNKS_PAYMENTS))
    report = validate(put(JNKS_PAYMENTS, record, "plate_kana", kana.encode("cp932")), JNKS_PAYMENTS)
    assert report.valid is valid


@pytest.mark.parametrize(("plate_class", "valid"), [("5  ", True), ("580", True), ("30A", True), ("A1 ", True),
                                                    ("ABC", False), ("A  ", False), (" 58", False), ("5 8", False),
                                                    ("5a ", False)])
def test_when_the_plate_class_is_checked_then_it_is_1_to_3_of_0_9a_z_left_aligned_not_all_letters(
        plate_class: str, valid: bool) -> None:
    record = render_record(JNKS_PAYMENTS, base_record(JNKS_PAYMENTS))
    report = validate(put(JNKS_PAYMENTS, record, "plate_class", plate_class.encode()), JNKS_PAYMENTS)
    assert report.valid is valid


@pytest.mark.parametrize(("date", "valid"), [("20240229", True), ("20230229", False), ("20000229", True),
                                             ("19000229", False), ("20240431", False), ("20241231", True),
                                             ("00000101", False), ("20240100", False)])
def test_when_a_date_field_is_checked_then_only_real_calendar_dates_pass(date: str, valid: bool) -> None:
    record = base_record(MPN_SLIPS)
    data = put(MPN_SLIPS, render_record(MPN_SLIPS, record), "due_date", date.encode())
    assert validate(data, MPN_SLIPS).valid is valid
