"""Error values: place, plain words, masking of personal values, the error cap."""

from __future__ import annotations

import dataclasses

from kei_gateway.layouts import JNKS_PAYMENTS, MPN_SLIPS, LayoutError, mask

from .helpers import OPTIONS, dummy_records, put, validate


def test_when_a_value_has_8_or_more_characters_then_the_mask_keeps_only_the_last_4() -> None:
    assert mask("DMY12-000012345678") == "****5678"
    assert mask("12345678") == "****5678"


def test_when_a_value_is_shorter_than_8_characters_then_the_mask_hides_all_of_it() -> None:
    assert mask("1234") == "****"
    assert mask("ダミー太郎") == "****"


def test_when_a_personal_field_is_wrong_then_the_log_message_masks_and_the_quarantine_message_shows_it() -> None:
    record = put(JNKS_PAYMENTS, dummy_records(JNKS_PAYMENTS, 1)[0], "chassis_no", b"DMY-a1234567".ljust(20))
    error = validate(record, JNKS_PAYMENTS).errors[0]
    assert error.key == "chassis_no" and error.personal
    assert "DMY-a1234567" not in error.message() and "****4567" in error.message()
    assert "DMY-a1234567" in error.message(full_values=True)
    assert error.as_dict()["value"] == "****4567"


def test_when_a_name_is_invalid_then_no_part_of_it_reaches_the_log_message() -> None:
    record = dummy_records(MPN_SLIPS, 1)[0]
    name = "ダミー①".encode("cp932")
    broken = put(MPN_SLIPS, record, "payer_name", name + b"\x81\x40" * ((80 - len(name)) // 2))
    error = validate(broken, MPN_SLIPS).errors[0]
    assert "ダミー" not in error.message() and "ダミー①" in error.message(full_values=True)


def test_when_a_code_field_is_wrong_then_its_value_is_shown_in_full() -> None:
    record = put(JNKS_PAYMENTS, dummy_records(JNKS_PAYMENTS, 1)[0], "vehicle_type", b"99")
    message = validate(record, JNKS_PAYMENTS).errors[0].message()
    assert message == ("record 1, byte 44: 車種コード (vehicle_type): not a known code "
                       "(allowed: 11, 21, 31, 32, 33, 34) [value '99']")


def test_when_an_error_is_about_the_whole_file_then_the_message_says_file() -> None:
    assert LayoutError(None, 0, "the file is empty").message() == "file, byte 0: the file is empty"


def test_when_errors_reach_the_maximum_then_that_many_are_kept_and_validation_stops_there() -> None:
    """Rewritten for issue 11 item 5 (bounded CPU): it used to count all 30 errors."""
    records = [put(JNKS_PAYMENTS, r, "vehicle_type", b"99") for r in dummy_records(JNKS_PAYMENTS, 30)]
    report = validate(b"".join(records), JNKS_PAYMENTS, dataclasses.replace(OPTIONS, max_errors=10))
    assert len(report.errors) == 10 and report.error_count == 10 and not report.truncated
    assert [e.record for e in report.errors] == list(range(1, 11))
    assert report.records == report.stopped_at == 10 and not report.valid
    assert "validation stopped after record 10" in report.stop_note


def test_when_one_record_has_several_errors_then_the_maximum_stops_after_that_whole_record() -> None:
    records = dummy_records(JNKS_PAYMENTS, 5)
    records[1] = put(JNKS_PAYMENTS, put(JNKS_PAYMENTS, records[1], "vehicle_type", b"99"), "payment_status", b"9")
    report = validate(b"".join(records), JNKS_PAYMENTS, dataclasses.replace(OPTIONS, max_errors=1))
    assert [(e.record, e.key) for e in report.errors] == [(2, "vehicle_type")]
    assert report.error_count == 2 and report.truncated and report.stopped_at == 2


def test_when_errors_stay_under_the_maximum_then_every_record_is_checked() -> None:
    records = [put(JNKS_PAYMENTS, r, "vehicle_type", b"99") for r in dummy_records(JNKS_PAYMENTS, 30)]
    report = validate(b"".join(records), JNKS_PAYMENTS, dataclasses.replace(OPTIONS, max_errors=31))
    assert report.error_count == 30 and report.records == 30 and report.stopped_at is None and not report.stop_note


def test_when_the_default_maximum_applies_then_it_is_1000() -> None:
    assert OPTIONS.max_errors == 1000


def test_when_a_record_has_several_problems_then_each_is_reported_in_field_order() -> None:
    record = dummy_records(JNKS_PAYMENTS, 1)[0]
    record = put(JNKS_PAYMENTS, record, "record_kind", b"7")
    record = put(JNKS_PAYMENTS, record, "tax_year", b"1999")
    assert [e.key for e in validate(record, JNKS_PAYMENTS).errors] == ["record_kind", "tax_year"]


def test_when_lg_code_is_given_then_records_with_another_valid_code_are_rejected() -> None:
    record = put(JNKS_PAYMENTS, dummy_records(JNKS_PAYMENTS, 1)[0], "lg_code", b"131041")
    assert validate(record, JNKS_PAYMENTS).valid
    report = validate(record, JNKS_PAYMENTS, dataclasses.replace(OPTIONS, lg_code="131202"))
    assert [(e.key, e.reason) for e in report.errors] == [("lg_code", "is not this gateway's code 131202")]


def test_when_updated_on_is_tomorrow_then_it_is_in_the_future_but_today_is_fine() -> None:
    tomorrow = (OPTIONS.today.toordinal() + 1)
    import datetime
    day = datetime.date.fromordinal(tomorrow).strftime("%Y%m%d").encode()
    today = OPTIONS.today.strftime("%Y%m%d").encode()
    record = dummy_records(JNKS_PAYMENTS, 1)[0]
    record = put(JNKS_PAYMENTS, record, "valid_until", b"20991231")
    assert validate(put(JNKS_PAYMENTS, record, "updated_on", today), JNKS_PAYMENTS).valid
    report = validate(put(JNKS_PAYMENTS, record, "updated_on", day), JNKS_PAYMENTS)
    assert [e.key for e in report.errors] == ["updated_on"] and "future" in report.errors[0].reason
