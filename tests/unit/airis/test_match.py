"""The AIRIS matcher (SPEC §13): planted discrepancies come out exactly, variants change only `normalised`."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kei_gateway.core.airis_match import (
    MatchRow, RegisterVehicle, category_counts, match_vehicles, normalise_address, normalise_chassis,
    register_vehicle,
)
from kei_gateway.layouts.airis import AirisCase, AirisVehicle, airis_csv_bytes, generate_airis_case, parse_airis_csv

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(case: AirisCase) -> tuple[list[MatchRow], list[RegisterVehicle], list[AirisVehicle]]:
    register = [register_vehicle(record) for record in case.register]
    airis = parse_airis_csv([airis_csv_bytes(case.airis)])
    return match_vehicles(register, airis), register, airis


planted = st.fixed_dictionaries({code: st.integers(0, 6) for code in ("02", "03", "04", "05", "06", "07")}).flatmap(
    lambda plant: st.sampled_from([0, 2, 3, 4, 5]).map(lambda dup: {**plant, "08": dup}))


@PROPERTY
@given(plant=planted, seed=st.integers(0, 2 ** 32), extra=st.integers(0, 40))
def test_when_k_discrepancies_of_each_category_are_planted_then_exactly_k_rows_are_in_it_and_the_rest_match(
        plant: dict[str, int], seed: int, extra: int) -> None:
    groups = plant["08"] // 2  # 08 is planted as groups of two (three for an odd count) of one vehicle each
    vehicles = sum(k for code, k in plant.items() if code != "08") + groups + extra
    case = generate_airis_case(vehicles, plant, seed=seed)
    rows, register, airis = run(case)
    counts = category_counts(rows)
    assert counts == case.expected
    for code, k in plant.items():
        assert counts[code] == k
    assert counts["01"] == extra  # every vehicle not planted matches
    assert {row.normalised for row in rows if row.category == "01"} <= {"00"}


@PROPERTY
@given(seed=st.integers(0, 2 ** 32), width=st.integers(0, 5), degenerate=st.integers(0, 5),
       address=st.integers(0, 5), plain=st.integers(0, 20))
def test_when_a_name_or_address_differs_only_by_variant_kanji_width_or_chome_form_then_only_normalised_changes(
        seed: int, width: int, degenerate: int, address: int, plain: int) -> None:
    variants = {"width": width, "degenerate": degenerate, "address": address}
    case = generate_airis_case(width + degenerate + address + plain, seed=seed, variants=variants)
    rows, _, _ = run(case)
    assert {row.category for row in rows} <= {"01"}
    assert len(rows) == width + degenerate + address + plain
    found = Counter(row.normalised for row in rows)
    assert {code: found.get(code, 0) for code in case.expected_normalised} == case.expected_normalised


def vehicle(chassis: str, *, name: str = "ダミー　太郎", address: str = "練馬区ダミー町１－２－３",
            serial: str = "0012", taxpayer: str = "1", deregistered: bool = False) -> RegisterVehicle:
    return RegisterVehicle(taxpayer.rjust(15, "0"), "練馬", "500", "あ", serial, chassis, name, address, deregistered)


def seen(chassis: str, *, name: str = "ダミー　太郎", address: str = "練馬区ダミー町１－２－３",
         serial: str = "12", office: str = "練馬") -> AirisVehicle:
    return AirisVehicle(office, "500", "あ", serial, chassis, name, address, "20240401", 2)


def test_when_one_side_has_a_chassis_number_twice_then_each_copy_is_08_and_the_counterpart_is_05_or_06() -> None:
    rows = match_vehicles([vehicle("DMY-1"), vehicle("dmy 1"), vehicle("DMY-2")], [seen("DMY1"), seen("DMY-2")])
    assert [(row.category, row.register, row.airis) for row in rows] == [
        ("01", 2, 1), ("06", None, 0), ("08", 0, None), ("08", 1, None)]
    rows = match_vehicles([vehicle("DMY-3")], [seen("DMY-3"), seen("ＤＭＹ３")])
    assert [(row.category, row.register, row.airis) for row in rows] == [
        ("05", 0, None), ("08", None, 0), ("08", None, 1)]


def test_when_only_the_last_7_characters_and_the_plate_agree_then_one_07_row_names_both() -> None:
    rows = match_vehicles([vehicle("ABC-1234567")], [seen("XY-1234567")])
    assert rows == [MatchRow("07", 0, 0, "00")]
    rows = match_vehicles([vehicle("ABC-1234567")], [seen("XY-1234567", serial="13")])
    assert [row.category for row in rows] == ["05", "06"]


def test_when_two_leftovers_share_the_last_7_and_plate_then_no_07_is_guessed() -> None:
    rows = match_vehicles([vehicle("ABC-1234567"), vehicle("DEF-1234567")], [seen("XY-1234567")])
    assert [row.category for row in rows] == ["05", "05", "06"]


def test_when_a_deregistered_register_row_is_not_in_airis_then_it_is_05() -> None:
    assert match_vehicles([vehicle("DMY-9", deregistered=True)], []) == [MatchRow("05", 0, None, "00")]


def test_when_name_address_and_plate_all_differ_then_the_vehicle_has_one_row_per_category() -> None:
    rows = match_vehicles([vehicle("DMY-1")], [seen("DMY-1", name="別人　花子", address="他市１", office="品川")])
    assert [row.category for row in rows] == ["02", "03", "04"]


def test_when_several_normalisations_applied_then_the_row_carries_the_highest() -> None:
    rows = match_vehicles([vehicle("DMY-1", name="高試験　太郎", address="練馬区ダミー町１－２－３")],
                          [seen("dmy-1", name="髙試験 太郎", address="練馬区ダミー町一丁目二番三号")])
    assert rows == [MatchRow("01", 0, 0, "03")]


@pytest.mark.parametrize(("text", "expected"), [
    ("一丁目二番三号", "1-2-3"), ("十二番地", "12"), ("二十三番四", "23-4"), ("百五号", "105"),
    ("１－２－３", "１－２－３"), ("1ー2", "1-2"), ("3丁目10番地の1", "3-10-の1"),
])
def test_when_an_address_has_kanji_numerals_or_chome_forms_then_they_become_digits_and_dashes(
        text: str, expected: str) -> None:
    assert normalise_address(text) == expected


def test_when_chassis_numbers_differ_in_width_case_spaces_or_hyphens_then_they_normalise_equal() -> None:
    assert normalise_chassis("ＤＭＹ１２－０００１") == normalise_chassis("dmy12 0001") == "DMY120001"


@PROPERTY
@given(plant=planted, seed=st.integers(0, 2 ** 32), extra=st.integers(0, 40))
def test_when_both_sides_are_read_packed_as_the_run_reads_them_then_the_vehicles_and_rows_are_the_same(
        plant: dict[str, int], seed: int, extra: int) -> None:
    """The run keeps the register as its bytes and AIRIS packed (bounded memory): iterating, indexing and the
    車台番号 streams must give what the plain tuples give, and the same rows."""
    from kei_gateway.flows.airis_reconcile import RegisterRecords
    from kei_gateway.layouts import render_records
    from kei_gateway.layouts.airis import TAX_REGISTER_2W

    case = generate_airis_case(sum(plant.values()) + extra + 1, plant, seed=seed, variants={"degenerate": 1})
    rows, register, airis = run(case)
    streamed = RegisterRecords(b"".join(render_records(TAX_REGISTER_2W, case.register)))
    assert list(streamed) == register == [streamed[index] for index in range(len(streamed))]
    assert list(streamed.chassis_numbers()) == [vehicle.chassis_no for vehicle in register]
    assert list(airis) == [airis[index] for index in range(len(airis))]
    assert list(airis.chassis_numbers()) == [vehicle.chassis_no for vehicle in airis]  # type: ignore[attr-defined]
    assert match_vehicles(streamed, airis, register_chassis=streamed.chassis_numbers(),
                          airis_chassis=airis.chassis_numbers()) == rows  # type: ignore[attr-defined]
