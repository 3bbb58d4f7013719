"""The JNKS simulator's independent check of §2.1 records and its §2.2 result records."""

from __future__ import annotations

import datetime

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.sim.dav import DavPath, DavStore
from kei_gateway.sim.jnks import (
    ERROR_MESSAGES, RESULT_BYTES, JnksOptions, JnksPersonality, Problem, RecordOutcome, check_file, check_record,
    lg_code_ok, render_result_record,
)
from kei_gateway.testing import SynchronousBlocking
from tests.unit.helpers import temporary_directory

TODAY = datetime.date(2026, 11, 20)
VALID = dict(record_kind="1", plate_office="練馬", plate_class="580", plate_kana="あ", plate_serial="0001",
             chassis_no="DUMMY-000001", lg_code="131202", vehicle_type="31", tax_year="2026", payment_status="1",
             valid_until="20270531", deregistered="0", updated_on="20260401")


def record(**changes: str) -> bytes:
    """A hand-made §2.1 record (ダミーデータ) with *changes*, CRLF included."""
    f = {**VALID, **changes}
    return (f["record_kind"].encode() + f["plate_office"].ljust(4, "\u3000").encode("cp932")
            + f["plate_class"].ljust(3).encode() + f["plate_kana"].encode("cp932") + f["plate_serial"].encode()
            + f["chassis_no"].ljust(20).encode() + f["lg_code"].encode() + f["vehicle_type"].encode()
            + f["tax_year"].encode() + f["payment_status"].encode() + f["valid_until"].encode()
            + f["deregistered"].encode() + f["updated_on"].encode() + b"\r\n")


def codes(data: bytes) -> list[str]:
    return [p.code for p in check_record(data[:-2], TODAY)]


class CheckTests(SynchronousTestCase):
    def test_when_a_hand_made_record_is_valid_then_it_is_accepted(self) -> None:
        self.assertEqual(len(record()), 70)
        self.assertEqual(codes(record()), [])
        self.assertEqual(codes(record(plate_office="袖ヶ浦", plate_kana="Ｍ", plate_class="50", record_kind="3")), [])

    def test_when_fields_are_broken_then_each_is_rejected_with_its_code(self) -> None:
        cases = {
            "E101": record(record_kind="4"),
            "E102": record(plate_office=""),
            "E103": record(plate_class="ABC"),
            "E104": record(plate_kana="ア"),
            "E105": record(plate_serial="0000"),
            "E106": record(chassis_no="dummy-000001"),
            "E107": record(lg_code="131203"),
            "E108": record(vehicle_type="99"),
            "E109": record(tax_year="1999"),
            "E110": record(payment_status="6"),
            "E111": record(valid_until="20260230"),
            "E112": record(deregistered="2"),
            "E113": record(updated_on="20261121"),
            "E114": record(valid_until="20260331"),
        }
        for code, data in cases.items():
            with self.subTest(code=code):
                self.assertEqual(len(data), 70)
                self.assertEqual(codes(data), [code])

    def test_when_a_record_has_the_wrong_length_or_bytes_then_it_is_rejected(self) -> None:
        self.assertEqual(codes(record()[:-3] + b"\r\n"), ["E001"])
        self.assertEqual(codes(record()[:9] + b"\x81 0" + record()[12:]), ["E002"])  # a lone CP932 lead byte
        full_width_year = record()[:46] + "２０".encode("cp932") + record()[50:]
        self.assertEqual(codes(full_width_year), ["E002"])  # full-width where ASCII belongs

    def test_when_lg_codes_are_checked_then_the_spec_examples_pass(self) -> None:
        for good in ("131041", "131202", "011002", "131130"):
            self.assertTrue(lg_code_ok(good), good)
        self.assertFalse(lg_code_ok("131040"))
        self.assertFalse(lg_code_ok("13120"))

    def test_when_a_file_is_checked_then_one_outcome_per_record_with_duplicates_and_the_last_crlf(self) -> None:
        data = record() + record(chassis_no="DUMMY-000002") + record(record_kind="9") + record()
        outcomes = check_file(data, TODAY)
        self.assertEqual([o.line_no for o in outcomes], [1, 2, 3, 4])
        self.assertEqual([o.problems[0].code if o.problems else None for o in outcomes],
                         [None, None, "E101", "E115"])
        self.assertEqual(outcomes[1].chassis_no, "DUMMY-000002")
        unterminated = check_file(record() + record(chassis_no="DUMMY-000002")[:-2], TODAY)
        self.assertEqual([o.accepted for o in unterminated], [True, False])
        self.assertEqual(check_file(b"", TODAY), [])

    def test_when_lg_code_is_configured_then_other_codes_are_rejected(self) -> None:
        outcomes = check_file(record(lg_code="131041"), TODAY, JnksOptions(lg_code="131202"))
        self.assertEqual(outcomes[0].problems, (Problem("E116"),))

    def test_when_reject_lines_or_rate_are_set_then_valid_records_are_rejected_with_e900(self) -> None:
        data = b"".join(record(chassis_no=f"DUMMY-{n:06d}") for n in range(1, 11))
        outcomes = check_file(data, TODAY, JnksOptions(reject_lines=frozenset({3, 7})))
        self.assertEqual([o.line_no for o in outcomes if not o.accepted], [3, 7])
        self.assertEqual({o.problems[0].code for o in outcomes if not o.accepted}, {"E900"})
        everything = check_file(data, TODAY, JnksOptions(reject_rate=1.0))
        self.assertFalse(any(o.accepted for o in everything))
        some = [o.accepted for o in check_file(data, TODAY, JnksOptions(reject_rate=0.5, seed=4), "x.dat")]
        self.assertEqual(some, [o.accepted for o in check_file(data, TODAY, JnksOptions(reject_rate=0.5, seed=4),
                                                                "x.dat")])

    def test_when_the_layout_generator_makes_a_valid_file_then_the_independent_check_accepts_it(self) -> None:
        from kei_gateway.layouts import generate_file, get_layout

        data = b"".join(generate_file(get_layout("jnks-payments"), 300, seed=7, today=TODAY))
        outcomes = check_file(data, TODAY, JnksOptions(lg_code="131202"))
        self.assertEqual(len(outcomes), 300)
        self.assertEqual([o for o in outcomes if not o.accepted], [])


class ResultRecordTests(SynchronousTestCase):
    def test_when_a_record_is_accepted_then_the_result_is_100_bytes_with_blank_code_and_message(self) -> None:
        data = render_result_record(RecordOutcome(12, "DUMMY-000001"))
        self.assertEqual(len(data), RESULT_BYTES)
        self.assertTrue(data.endswith(b"\r\n"))
        self.assertEqual(data[:32], b"00000012    DUMMY-000001        ")
        self.assertEqual(data[32:98].decode("cp932"), "\u3000" * 33)

    def test_when_a_record_is_rejected_then_code_and_full_width_message_fill_their_widths(self) -> None:
        for code, message in ERROR_MESSAGES.items():
            with self.subTest(code=code):
                self.assertLessEqual(len(message), 33)
                data = render_result_record(RecordOutcome(9_999_999, "", (Problem(code),)))
                self.assertEqual(len(data), RESULT_BYTES)
                self.assertEqual(data[:12], b"99999999" + code.encode())
                self.assertEqual(data[12:32], b" " * 20)
                text = data[32:98].decode("cp932")
                self.assertEqual(text.rstrip("\u3000"), message)

    def test_when_a_line_number_does_not_fit_then_rendering_refuses(self) -> None:
        self.assertRaises(ValueError, render_result_record, RecordOutcome(10_000_000, ""))


class PersonalityTests(SynchronousTestCase):
    def test_when_a_final_upload_is_stored_then_its_result_file_is_written_and_parts_are_ignored(self) -> None:
        store = DavStore(temporary_directory(self), ("upload", "results"))
        clock = task.Clock()
        clock.advance(datetime.datetime(2026, 11, 20, 3, tzinfo=datetime.timezone.utc).timestamp())
        jnks = JnksPersonality(store, clock, SynchronousBlocking())
        store.write_bytes(DavPath("upload", "x.dat.part"), record())
        jnks.on_stored(DavPath("upload", "x.dat.part"))
        self.assertEqual(jnks.receipts, [])
        store.write_bytes(DavPath("upload", "x.dat"), record() + record(record_kind="0"))
        jnks.on_stored(DavPath("upload", "x.dat"))
        [receipt] = jnks.receipts
        self.assertEqual((receipt.name, receipt.records, receipt.accepted, receipt.rejected), ("x.dat", 2, 1, 1))
        result = store.path_of(DavPath("results", "x.dat.result")).read_bytes()
        self.assertEqual(len(result), 200)
        self.assertEqual(result[100:112], b"90000002E101")
