"""How reports are laid out for people: terminal tables with Japanese text, and CSV for Excel. Pure.

Text: Japanese (full-width) characters take two terminal columns, so tables are padded by
display width (:func:`display_width`, :func:`ljust`, :func:`rjust`).

CSV — UTF-8 with a BOM, CRLF, no formulas:

Reports (``results reconcile --csv``, ``audit report --csv``, the daily deletion report)
are opened by tax-division staff in Excel. Excel reads a UTF-8 file as UTF-8 only with a
byte-order mark, and treats a cell starting with ``=``, ``+``, ``-``, ``@`` (or a tab or
carriage return) as a formula — so a free-text value such as an operator's cancel
reason could run as one (CSV injection). Such text cells get a leading ``'``, which
Excel shows as text; numbers are written as they are.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Sequence

__all__ = ["BOM", "csv_rows", "safe_cell", "display_width", "ljust", "rjust"]

BOM = "\ufeff"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """*value* as a CSV cell: text that Excel would take for a formula is prefixed with ``'``."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def csv_rows(rows: Iterable[Sequence[object]], *, bom: bool = True) -> bytes:
    """*rows* as UTF-8 CSV with CRLF line ends (an empty sequence is an empty line), with the BOM first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        writer.writerow([safe_cell(value) for value in row])
    return ((BOM if bom else "") + out.getvalue()).encode("utf-8")


def display_width(text: str) -> int:
    """Terminal columns of *text*: full-width and wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def ljust(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def rjust(text: str, width: int) -> str:
    return " " * max(0, width - display_width(text)) + text
