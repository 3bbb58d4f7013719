"""The airis-vehicles CSV layout: every bad input is named by row, column and reason, values masked."""

from __future__ import annotations

import re

import pytest

from kei_gateway.layouts.airis import (
    AIRIS_COLUMNS, AirisCsvError, airis_csv_bytes, generate_airis_case, parse_airis_csv,
)

HEADER = [column.name for column in AIRIS_COLUMNS]


def rows(count: int = 3) -> list[dict[str, str]]:
    return generate_airis_case(count, seed=7).airis


def problems(data: bytes) -> list[str]:
    with pytest.raises(AirisCsvError) as raised:
        parse_airis_csv([data[i:i + 100] for i in range(0, len(data), 100)])
    return [problem.message() for problem in raised.value.problems]


def test_when_the_csv_follows_the_v1_layout_then_every_vehicle_comes_back_with_its_row() -> None:
    data = airis_csv_bytes(rows(5))
    vehicles = parse_airis_csv([data])
    assert [vehicle.row for vehicle in vehicles] == [2, 3, 4, 5, 6]
    assert list(parse_airis_csv([airis_csv_bytes([])])) == []


def test_when_a_column_is_missing_then_the_error_names_it() -> None:
    header = [name for name in HEADER if name != "所有者住所"]
    assert problems(airis_csv_bytes([], header=header)) == [
        "row 1: column 所有者住所 missing from the header (the v1 header has exactly 36 columns: see docs/airis.md)"]


def test_when_an_extra_column_is_there_then_the_error_names_it() -> None:
    found = problems(airis_csv_bytes([], header=HEADER + ["備考"]))
    assert found == ["row 1: column '備考' is not in the v1 header: remove it, or update the layout when AIRIS's "
                     "specification changes (docs/airis.md)"]


def test_when_the_csv_is_utf8_then_the_error_says_so_and_what_to_do() -> None:
    text = airis_csv_bytes(rows()).decode("cp932").encode("utf-8")
    (found,) = problems(text)
    assert re.match(r"row 1: \S+ \(\w+\): not valid CP932 at byte \d+", found) and "UTF-8" in found  # row and column
    (bom,) = problems(b"\xef\xbb\xbf" + text)
    assert "byte-order mark" in bom


def test_when_a_cell_breaks_its_rule_then_row_and_column_are_named_and_personal_values_masked() -> None:
    data = rows()
    data[1]["registered_on"] = "20230230"
    data[2]["chassis_no"] = "DMY12-０００１２３４５６７８９０１２３４５"
    data[0]["plate_serial"] = "0"
    found = problems(airis_csv_bytes(data))
    assert found[0] == "row 2: 登録番号_一連番号 (plate_serial): zero: a 一連番号 is 1–9999 [value '****']"
    assert found[1] == ("row 3: 登録年月日 (registered_on): does not follow the rule: `YYYYMMDD`, a real calendar "
                        "date [value '20230230']")
    assert found[2].startswith("row 4: 車台番号 (chassis_no): more than 20 characters without spaces [value '****")
    assert all("DMY12" not in message for message in found)


def test_when_a_row_has_the_wrong_number_of_cells_or_is_empty_then_it_is_named() -> None:
    data = airis_csv_bytes(rows(2)) + b"a,b\r\n"
    assert problems(data) == ["row 4: has 2 cells, the header has 36"]
    assert problems(b"") == ["file: empty: no header row (an AIRIS v1 CSV has a header and one vehicle a row)"]


def test_when_a_required_cell_is_empty_then_the_error_says_required() -> None:
    data = rows(1)
    data[0]["owner_name"] = ""
    assert problems(airis_csv_bytes(data)) == ["row 2: 所有者氏名 (owner_name): empty: the column is required"]
