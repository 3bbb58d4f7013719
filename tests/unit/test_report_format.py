"""Report formatting: CSV that Excel opens as UTF-8 and never as formulas; tables padded by display width."""

from __future__ import annotations

from kei_gateway.core.report_format import BOM, csv_rows, display_width, ljust, rjust


def test_when_a_text_cell_starts_like_a_formula_then_it_is_written_as_text() -> None:
    data = csv_rows([["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tx", "plain", -5, 0]])
    assert data.startswith(BOM.encode("utf-8"))
    text = data.decode("utf-8").removeprefix(BOM)
    assert text == "\"'=HYPERLINK(\"\"http://x\"\")\",'+1,'-2,'@SUM(A1),'\tx,plain,-5,0\r\n"


def test_when_no_bom_is_asked_then_rows_append_to_an_existing_file() -> None:
    assert csv_rows([["a"], [], ["消去"]], bom=False) == "a\r\n\r\n消去\r\n".encode("utf-8")


def test_when_text_is_full_width_then_it_takes_two_columns() -> None:
    assert display_width("確報ab") == 6
    assert ljust("確報", 6) == "確報  " and rjust("確報", 5) == " 確報"
