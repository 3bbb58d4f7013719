"""The AIRIS 突合 layouts of SPEC §13 (interface v1), as data.

Three tables:

* ``airis-vehicles`` (:data:`AIRIS_VEHICLES`): the CSV inside the AIRIS ZIP — CP932, CRLF,
  RFC 4180 quoting, a header row with exactly the v1 names, one vehicle a row.  Each
  column has its Japanese name, key, kind and rule; :func:`parse_airis_csv` checks every
  row against them and names row, column and reason (personal values masked).
* ``tax-register-2w`` (:data:`TAX_REGISTER_2W`): the tax system's 小型二輪 register,
  fixed-length CP932 as SPEC §2, 229 bytes per record.
* ``airis-reconcile`` (:data:`AIRIS_RECONCILE`): the 突合結果 record, 226 bytes.

AIRIS's own specification is not public: when it is, its table replaces
:data:`AIRIS_COLUMNS` (names, order, kinds) and nothing else changes.  The dummy-data
generator (:func:`generate_airis_case`) builds a register and an AIRIS download that
differ in exactly the planted ways, for tests, the demo and the benchmark.
"""

from __future__ import annotations

import csv
import datetime
import enum
import operator
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, overload

from kei_gateway.layouts.codes import DEREGISTERED_FLAGS, PLATE_KANA_LETTERS, VEHICLE_TYPES
from kei_gateway.layouts.encoding import IDEOGRAPHIC_SPACE, JISX0208_CHARS
from kei_gateway.layouts.errors import mask
from kei_gateway.layouts.fields import (
    Codes, Field, IntRange, Kind, Layout, NotAllZero, NotBlank, NotInFuture, Value,
)
from kei_gateway.layouts.tables import JNKS_PAYMENTS

__all__ = [
    "AIRIS_COLUMNS",
    "AIRIS_RECONCILE",
    "AIRIS_VEHICLES",
    "AirisCase",
    "AirisColumn",
    "AirisCsvError",
    "AirisVehicle",
    "AirisVehicles",
    "CATEGORIES",
    "CsvKind",
    "CsvProblem",
    "MAX_AIRIS_LINE_BYTES",
    "NORMALISATIONS",
    "OUTSIDE_JISX0208",
    "TAX_REGISTER_2W",
    "airis_csv_bytes",
    "generate_airis_case",
    "parse_airis_csv",
]

# --------------------------------------------------------------------------- code tables

CATEGORIES: Final[dict[str, str]] = {
    "01": "一致",
    "02": "所有者氏名相違",
    "03": "所有者住所相違",
    "04": "標板番号相違",
    "05": "台帳のみ",
    "06": "AIRISのみ",
    "07": "車台番号下7桁のみ一致",
    "08": "重複",
}
"""突合区分 (SPEC §13)."""

NORMALISATIONS: Final[dict[str, str]] = {
    "00": "なし",
    "01": "全角半角・空白",
    "02": "縮退",
    "03": "住所表記",
}
"""正規化 (SPEC §13): the normalisation that made values equal; the highest when several applied."""

SMALL_MOTORCYCLE: Final = "11"
"""車種コード of 小型二輪 (SPEC §2.6)."""

# --------------------------------------------------------------------------- fixed-length layouts

TAX_REGISTER_2W: Final[Layout] = Layout(
    name="tax-register-2w",
    title="軽自動車税台帳（小型二輪）",
    fields=(
        Field("納税義務者番号", "taxpayer_id", Kind.N, 15, (NotAllZero(),), personal=True),
        JNKS_PAYMENTS["plate_office"],
        JNKS_PAYMENTS["plate_class"],
        JNKS_PAYMENTS["plate_kana"],
        JNKS_PAYMENTS["plate_serial"],
        JNKS_PAYMENTS["chassis_no"],
        Field("車種コード", "vehicle_type", Kind.N, 2, (Codes({SMALL_MOTORCYCLE: VEHICLE_TYPES[SMALL_MOTORCYCLE]}),)),
        Field("所有者氏名", "owner_name", Kind.K, 60, (NotBlank(),), personal=True),
        Field("所有者住所", "owner_address", Kind.K, 100, (NotBlank(),), personal=True),
        Field("課税年度", "tax_year", Kind.N, 4, (IntRange(2000, 2099),), as_int=True),
        Field("登録年月日", "registered_on", Kind.D, 8, (NotInFuture(),)),
        Field("抹消フラグ", "deregistered", Kind.N, 1, (Codes(DEREGISTERED_FLAGS),)),
    ),
)
"""The tax system's 小型二輪 register (SPEC §13), 229 bytes per record incl. CRLF."""

AIRIS_RECONCILE: Final[Layout] = Layout(
    name="airis-reconcile",
    title="AIRIS 突合結果",
    fields=(
        Field("突合区分", "category", Kind.N, 2, (Codes(CATEGORIES),)),
        Field("納税義務者番号", "taxpayer_id", Kind.N, 15, personal=True, note="zeros for `06` and an AIRIS-side `08`"),
        Field("車台番号", "chassis_no", Kind.X, 20, (NotBlank(),), allowed="A-Z0-9\\-", personal=True,
              note="from AIRIS (NFKC, upper case, spaces removed); from the register for `05` and a register-side `08`"),
        JNKS_PAYMENTS["plate_office"],
        JNKS_PAYMENTS["plate_class"],
        JNKS_PAYMENTS["plate_kana"],
        JNKS_PAYMENTS["plate_serial"],
        Field("AIRIS 所有者氏名", "airis_owner_name", Kind.K, 60, personal=True,
              note="blank for `05` and a register-side `08`; cut at 30 characters (the .csv has it whole)"),
        Field("AIRIS 所有者住所", "airis_owner_address", Kind.K, 100, personal=True,
              note="blank for `05` and a register-side `08`; cut at 50 characters (the .csv has it whole)"),
        Field("AIRIS 登録年月日", "airis_registered_on", Kind.N, 8,
              note="`YYYYMMDD`; `00000000` for `05` and a register-side `08`"),
        Field("正規化", "normalised", Kind.N, 2, (Codes(NORMALISATIONS),)),
    ),
)
"""The 突合結果 record (SPEC §13), 226 bytes per record incl. CRLF; plates from AIRIS (register for 05)."""

# --------------------------------------------------------------------------- the AIRIS CSV


class CsvKind(enum.Enum):
    """Kinds of the AIRIS CSV's columns (text cells, not fixed-width fields)."""

    TEXT = "text"
    """Any characters but control characters."""
    ALNUM = "alnum"
    """ASCII letters and digits."""
    DIGITS = "digits"
    """ASCII digits."""
    DECIMAL = "decimal"
    """ASCII digits with at most one decimal point."""
    DATE = "date"
    """``YYYYMMDD``, a real calendar date."""
    YEAR_MONTH = "year-month"
    """``YYYYMM``."""


_YEAR: Final = "(?!0000)[0-9]{4}"
_LEAP_YEAR: Final = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
_DATE: Final = (
    "(?:" + _YEAR + "(?:(?:0[13578]|1[02])(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)(?:0[1-9]|[12][0-9]|30)"
    "|02(?:0[1-9]|1[0-9]|2[0-8]))|(?!0000)" + _LEAP_YEAR + "0229)"
)
"""Exactly the real calendar dates ``YYYYMMDD`` of years 0001–9999 (a regex: the CSV row is checked by one)."""


def _char_class(chars: frozenset[str]) -> str:
    """The body of a regex character class matching exactly *chars* (as code point ranges)."""
    points = sorted(ord(char) for char in chars)
    parts: list[str] = []
    start = previous = points[0]
    for point in points[1:] + [-1]:
        if point == previous + 1:
            previous = point
            continue
        parts.append(f"\\U{start:08x}" if start == previous else f"\\U{start:08x}-\\U{previous:08x}")
        start = previous = point
    return "".join(parts)


OUTSIDE_JISX0208: Final = re.compile(f"[^{_char_class(JISX0208_CHARS)}]")
"""Finds a character outside JIS X 0208 (a 外字 for the ``K`` fields of the results)."""
_TEXT_CHAR: Final = "[^\\x00-\\x1f\\x7f-\\x9f\\uf8f0-\\uf8f3]"
_KANJI_KANA: Final = "\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff\u3041-\u3096\u30a1-\u30fa\u3005\u30fc"
_PLATE_KANA: Final = "\u3041-\u3093" + PLATE_KANA_LETTERS + "ABEHKMTY"
_CHASSIS_CHAR: Final = "[0-9A-Za-z\\-\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\uff0d]"
_END: Final = "(?:\\x1f|\\Z)"
"""Where a cell ends, in a lookahead: the separator of the joined row, or the end of a lone cell."""


@dataclass(frozen=True)
class AirisColumn:
    """One column of the AIRIS CSV: header name, key, kind, limits and rule (the docs derive from it)."""

    name: str
    key: str
    kind: CsvKind
    max_chars: int
    required: bool = False
    personal: bool = False
    rule: str = ""
    pattern: str = ""
    """A regex (``str``) one cell matches exactly when the column's rule holds; derived from kind when empty."""

    def cell_pattern(self) -> str:
        if self.pattern:
            body = self.pattern
        elif self.kind is CsvKind.TEXT:
            body = f"{_TEXT_CHAR}{{1,{self.max_chars}}}"
        elif self.kind is CsvKind.ALNUM:
            body = f"[0-9A-Za-z]{{1,{self.max_chars}}}"
        elif self.kind is CsvKind.DIGITS:
            body = f"[0-9]{{1,{self.max_chars}}}"
        elif self.kind is CsvKind.DECIMAL:
            body = f"(?=[0-9.]{{1,{self.max_chars}}}(?:\\x1f|\\Z))[0-9]+(?:\\.[0-9]+)?"
        elif self.kind is CsvKind.DATE:
            body = _DATE
        else:
            body = "(?!0000)[0-9]{4}(?:0[1-9]|1[0-2])"
        return body if self.required else f"(?:{body})?"

    def describe(self) -> str:
        """The docs table's rule column."""
        kind = {
            CsvKind.TEXT: f"text, at most {self.max_chars} characters, no control characters",
            CsvKind.ALNUM: f"ASCII letters and digits, at most {self.max_chars}",
            CsvKind.DIGITS: f"ASCII digits, at most {self.max_chars}",
            CsvKind.DECIMAL: f"ASCII number with an optional decimal point, at most {self.max_chars} characters",
            CsvKind.DATE: "`YYYYMMDD`, a real calendar date",
            CsvKind.YEAR_MONTH: "`YYYYMM`",
        }[self.kind]
        parts = [self.rule or kind, "required" if self.required else "may be empty"]
        if self.personal:
            parts.append("personal: masked in errors")
        return "; ".join(parts)


def _text(name: str, key: str, chars: int, *, required: bool = False, personal: bool = False) -> AirisColumn:
    return AirisColumn(name, key, CsvKind.TEXT, chars, required, personal)


def _number(name: str, key: str, digits: int, unit: str = "") -> AirisColumn:
    return AirisColumn(name, key, CsvKind.DIGITS, digits, rule=f"ASCII digits, at most {digits}{unit}")


AIRIS_COLUMNS: Final[tuple[AirisColumn, ...]] = (
    AirisColumn("登録番号_運輸支局", "plate_office", CsvKind.TEXT, 4, True, True, "1–4 kanji/kana",
                f"[{_KANJI_KANA}]{{1,4}}"),
    AirisColumn("登録番号_分類番号", "plate_class", CsvKind.ALNUM, 3, True, True,
                "1–3 of `0-9A-Z`, not all letters", "(?=[A-Z]{0,2}[0-9])[0-9A-Z]{1,3}"),
    AirisColumn("登録番号_かな", "plate_kana", CsvKind.TEXT, 1, True, True,
                "one hiragana, or one of `ＡＢＥＨＫＭＴＹ` (full or half width)", f"[{_PLATE_KANA}]"),
    AirisColumn("登録番号_一連番号", "plate_serial", CsvKind.DIGITS, 4, True, True, "1–9999, zero-padded or not",
                f"(?!0{{1,4}}{_END})[0-9]{{1,4}}"),
    AirisColumn("車台番号", "chassis_no", CsvKind.ALNUM, 20, True, True,
                "`[A-Z0-9-]` after NFKC and upper case, 1–20 without spaces",
                f"[ \u3000]*(?:{_CHASSIS_CHAR}[ \u3000]*){{1,20}}"),
    _text("所有者氏名", "owner_name", 100, required=True, personal=True),
    _text("所有者住所", "owner_address", 200, required=True, personal=True),
    _text("使用者氏名", "user_name", 100, personal=True),
    _text("使用者住所", "user_address", 200, personal=True),
    _text("使用の本拠の位置", "base_location", 200, personal=True),
    AirisColumn("登録年月日", "registered_on", CsvKind.DATE, 8, True),
    AirisColumn("初度登録年月", "first_registered", CsvKind.YEAR_MONTH, 6),
    AirisColumn("総排気量又は定格出力", "displacement", CsvKind.DECIMAL, 8, rule="number (L or kW), at most 8 characters"),
    _text("燃料の種類", "fuel", 20),
    _number("型式指定番号", "type_designation_no", 5),
    _number("類別区分番号", "classification_no", 4),
    _text("車名", "make", 40),
    _number("乗車定員", "capacity", 3, " (persons)"),
    _number("最大積載量", "max_load", 6, " (kg)"),
    _number("車両重量", "weight", 6, " (kg)"),
    _number("車両総重量", "gross_weight", 6, " (kg)"),
    _text("型式", "model", 40),
    _text("原動機の型式", "engine_model", 40),
    _number("長さ", "length", 4, " (cm)"),
    _number("幅", "width", 4, " (cm)"),
    _number("高さ", "height", 4, " (cm)"),
    _number("前前軸重", "axle_ff", 6, " (kg)"),
    _number("前後軸重", "axle_fr", 6, " (kg)"),
    _number("後前軸重", "axle_rf", 6, " (kg)"),
    _number("後後軸重", "axle_rr", 6, " (kg)"),
    _text("自動車の種別", "vehicle_class", 20),
    _text("用途", "use", 20),
    _text("自家用事業用の別", "private_or_commercial", 10),
    _text("車体の形状", "body_shape", 20),
    AirisColumn("有効期限の満了する日", "inspection_expires_on", CsvKind.DATE, 8),
    _text("閲覧条件", "access_condition", 40),
)
"""The v1 columns of the AIRIS CSV, in order (SPEC §13, items of seed 資料9-3)."""


@dataclass(frozen=True)
class CsvLayout:
    """A CSV layout: title, name and columns in order."""

    name: str
    title: str
    columns: tuple[AirisColumn, ...]

    def __getitem__(self, key: str) -> AirisColumn:
        for column in self.columns:
            if column.key == key:
                return column
        raise KeyError(key)


AIRIS_VEHICLES: Final = CsvLayout("airis-vehicles", "AIRIS 車検証情報（小型二輪）", AIRIS_COLUMNS)
"""The CSV inside the AIRIS ZIP (SPEC §13)."""

MAX_AIRIS_LINE_BYTES: Final = 64 * 1024
"""A CSV line longer than this is an error: no row of the v1 layout comes near it (bounded memory)."""

_SEPARATOR: Final = "\x1f"
_ROW_PATTERN: Final = re.compile(_SEPARATOR.join(column.cell_pattern() for column in AIRIS_COLUMNS))
_CELL_PATTERNS: Final = tuple(re.compile(column.cell_pattern()) for column in AIRIS_COLUMNS)
_INDEX: Final = {column.key: index for index, column in enumerate(AIRIS_COLUMNS)}
_CHASSIS_SPACES: Final = str.maketrans("", "", " \u3000")


class AirisVehicle(NamedTuple):
    """What the matcher needs of one AIRIS row (the other columns are checked, then dropped)."""

    plate_office: str
    plate_class: str
    plate_kana: str
    plate_serial: str
    chassis_no: str
    owner_name: str
    owner_address: str
    registered_on: str
    """``YYYYMMDD`` as in the CSV."""
    row: int
    """The CSV row (the header is row 1), for the tax division's reference."""


@dataclass(frozen=True)
class CsvProblem:
    """One problem in the AIRIS CSV: row (header = 1; ``None`` for the file), column, reason, value."""

    row: int | None
    reason: str
    column: str | None = None
    key: str | None = None
    value: str | None = None
    personal: bool = False

    def message(self, *, full_values: bool = False) -> str:
        text = "file: " if self.row is None else f"row {self.row}: "
        if self.column is not None:
            text += f"{self.column} ({self.key}): "
        text += self.reason
        if self.value is not None:
            shown = self.value if full_values or not self.personal else mask(self.value)
            text += f" [value {shown!r}]"
        return text


class AirisCsvError(ValueError):
    """The AIRIS CSV is invalid; ``problems`` names every row and column (values masked in ``str``)."""

    def __init__(self, problems: list[CsvProblem], total: int | None = None) -> None:
        self.problems = problems
        self.total = total if total is not None else len(problems)
        shown = "; ".join(problem.message() for problem in problems[:5])
        more = f" (and {self.total - 5} more)" if self.total > 5 else ""
        super().__init__(shown + more)


def _lines(chunks: Iterable[bytes], problems: list[CsvProblem]) -> Iterator[str]:
    """Decoded CSV lines (line ends kept for the csv module); stops at the first bad one."""
    pending = b""
    number = 0

    def decode(raw: bytes) -> str | None:
        nonlocal number
        number += 1
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            problems.append(CsvProblem(1, "starts with a UTF-8 byte-order mark: the file is UTF-8; the AIRIS v1 "
                                          "CSV is CP932 — download it again or convert it to CP932"))
            return None
        try:
            return raw.decode("cp932")
        except UnicodeDecodeError as error:
            hint = ""
            try:
                raw.decode("utf-8")
                hint = " (it is valid UTF-8: the AIRIS v1 CSV is CP932 — convert it or download it again)"
            except UnicodeDecodeError:
                pass
            column = _column_at(raw[:error.start].decode("cp932"))
            problems.append(CsvProblem(number, f"not valid CP932 at byte {error.start} of the line{hint}",
                                       column.name if column else None, column.key if column else None))
            return None

    for chunk in chunks:
        pending += chunk
        end = pending.rfind(b"\n")
        if end < 0:
            if len(pending) > MAX_AIRIS_LINE_BYTES:
                problems.append(CsvProblem(number + 1, f"a line longer than {MAX_AIRIS_LINE_BYTES} bytes: "
                                                       "not an AIRIS v1 CSV"))
                return
            continue
        block, pending = pending[:end], pending[end + 1:]
        for line in block.split(b"\n"):
            if len(line) > MAX_AIRIS_LINE_BYTES:
                problems.append(CsvProblem(number + 1, f"a line longer than {MAX_AIRIS_LINE_BYTES} bytes: "
                                                       "not an AIRIS v1 CSV"))
                return
            text = decode(line)
            if text is None:
                return
            yield text + "\n"
    if pending:
        text = decode(pending)
        if text is not None:
            yield text


def _column_at(prefix: str) -> AirisColumn | None:
    """The column whose cell a line's text *prefix* ends in (cells counted as RFC 4180 splits them)."""
    try:
        cells = next(csv.reader([prefix]), [""])
    except csv.Error:
        return None
    index = max(len(cells), 1) - 1
    return AIRIS_COLUMNS[index] if index < len(AIRIS_COLUMNS) else None


def _cell_problem(row: int, index: int, value: str) -> CsvProblem | None:
    column = AIRIS_COLUMNS[index]
    if _CELL_PATTERNS[index].fullmatch(value):
        return None
    specific = _SPECIFIC_REASONS.get(column.key)
    reason = specific(value) if specific is not None and value else None
    if reason is not None:
        pass
    elif not value:
        reason = "empty: the column is required"
    elif len(value) > column.max_chars and column.kind is CsvKind.TEXT and not column.pattern:
        reason = f"longer than {column.max_chars} characters"
    else:
        reason = f"does not follow the rule: {column.describe().split('; ')[0]}"
    return CsvProblem(row, reason, column.name, column.key, value or None, column.personal)


def _plate_class_reason(value: str) -> str | None:
    if re.fullmatch("[0-9A-Z]{1,3}", value) and not any(char.isdigit() for char in value):
        return "letters only: a 分類番号 has at least one digit"
    return None


def _serial_reason(value: str) -> str | None:
    return "zero: a 一連番号 is 1–9999" if value.isdigit() and int(value) == 0 and len(value) <= 4 else None


def _chassis_reason(value: str) -> str | None:
    chassis = value.translate(_CHASSIS_SPACES)
    if not chassis:
        return "only spaces"
    if len(chassis) > 20 and re.fullmatch(f"{_CHASSIS_CHAR}+", chassis):
        return "more than 20 characters without spaces"
    return None


_SPECIFIC_REASONS: Final = {"plate_class": _plate_class_reason, "plate_serial": _serial_reason,
                            "chassis_no": _chassis_reason}
"""Words for the rules a kind alone does not say, used when a cell fails its pattern."""


class AirisVehicles(Sequence[AirisVehicle]):
    """The vehicles of a checked AIRIS CSV, in file order, each kept as one string (bounded memory).

    A vehicle is its matching cells and row number joined with U+001F (no valid cell holds it):
    one object of about 250 bytes instead of a tuple of nine, which matters at a prefecture's
    size; :class:`AirisVehicle` is made when a vehicle is looked at.
    """

    def __init__(self) -> None:
        self._packed: list[str] = []

    def append(self, cells: Sequence[str], row: int) -> None:
        self._packed.append(f"{_SEPARATOR.join(_PICK(cells))}{_SEPARATOR}{row}")

    def __len__(self) -> int:
        return len(self._packed)

    @overload
    def __getitem__(self, index: int) -> AirisVehicle: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[AirisVehicle]: ...

    def __getitem__(self, index: int | slice) -> AirisVehicle | Sequence[AirisVehicle]:
        if isinstance(index, slice):
            return [_unpack(packed) for packed in self._packed[index]]
        return _unpack(self._packed[index])

    def __iter__(self) -> Iterator[AirisVehicle]:
        return map(_unpack, self._packed)

    def chassis_numbers(self) -> Iterator[str]:
        """Every vehicle's 車台番号 as in the CSV, in order, without making the vehicles."""
        position = AirisVehicle._fields.index("chassis_no")
        for packed in self._packed:
            yield packed.split(_SEPARATOR, position + 1)[position]


_KEPT: Final = tuple(_INDEX[key] for key in AirisVehicle._fields if key != "row")
"""The columns a vehicle keeps (the others are checked, then dropped)."""
_PICK: Final = operator.itemgetter(*_KEPT)


def _unpack(packed: str) -> AirisVehicle:
    office, plate_class, kana, serial, chassis, name, address, registered_on, row = packed.split(_SEPARATOR)
    return AirisVehicle(office, plate_class, kana, serial, chassis, name, address, registered_on, int(row))


def parse_airis_csv(chunks: Iterable[bytes], *, max_errors: int = 1000) -> AirisVehicles:
    """Check the AIRIS CSV (bytes in chunks) against :data:`AIRIS_COLUMNS`; the vehicles, in file order.

    Every row is checked; :class:`AirisCsvError` lists the first ``max_errors`` problems (row,
    column, reason, masked value) and counts all.  Only the matching columns are kept, one
    string a vehicle, so memory is a fraction of the file's.  A file with a header and no
    rows is valid (no vehicles).
    """
    problems: list[CsvProblem] = []
    total = 0

    def add(problem: CsvProblem) -> None:
        nonlocal total
        total += 1
        if len(problems) < max_errors:
            problems.append(problem)

    decode_problems: list[CsvProblem] = []
    reader = csv.reader(_lines(chunks, decode_problems), strict=True)
    vehicles = AirisVehicles()
    expected = [column.name for column in AIRIS_COLUMNS]
    try:
        header = next(reader, None)
        if header is None:
            if not decode_problems:
                add(CsvProblem(None, "empty: no header row (an AIRIS v1 CSV has a header and one vehicle a row)"))
        elif header != expected:
            for name in expected:
                if name not in header:
                    add(CsvProblem(1, f"column {name} missing from the header (the v1 header has exactly "
                                      f"{len(expected)} columns: see docs/airis.md)"))
            for name in header:
                if name not in expected:
                    add(CsvProblem(1, f"column {name!r} is not in the v1 header: remove it, or update the "
                                      "layout when AIRIS's specification changes (docs/airis.md)"))
            if not problems:
                add(CsvProblem(1, "the header's columns are out of order (see docs/airis.md for the v1 order)"))
        else:
            width = len(expected)
            for cells in reader:
                row = reader.line_num
                if len(cells) != width:
                    if cells:
                        add(CsvProblem(row, f"has {len(cells)} cells, the header has {width}"))
                    else:
                        add(CsvProblem(row, "empty line"))
                    continue
                if _ROW_PATTERN.fullmatch(_SEPARATOR.join(cells)) is None:
                    for index, value in enumerate(cells):
                        found = _cell_problem(row, index, value)
                        if found is not None:
                            add(found)
                    continue
                if total:
                    continue  # already invalid: keep checking, stop collecting
                vehicles.append(cells, row)
    except csv.Error as error:
        add(CsvProblem(reader.line_num, f"broken CSV quoting ({error}): an AIRIS v1 CSV follows RFC 4180"))
    for problem in decode_problems:
        add(problem)
    if total:
        raise AirisCsvError(sorted(problems, key=lambda p: p.row or 0), total)
    return vehicles


def airis_csv_bytes(rows: Iterable[Mapping[str, str]], *, header: Sequence[str] | None = None) -> bytes:
    """Rows (column key → cell text) as an AIRIS v1 CSV: CP932, CRLF, RFC 4180 quoting, the header first."""
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header if header is not None else [column.name for column in AIRIS_COLUMNS])
    for row in rows:
        writer.writerow([row.get(column.key, "") for column in AIRIS_COLUMNS])
    return out.getvalue().encode("cp932")


# --------------------------------------------------------------------------- ダミーデータ with planted discrepancies

_FAMILY: Final = ("ダミー", "試験", "見本", "仮名", "例示", "高試験", "崎見本")
_GIVEN: Final = ("太郎", "花子", "一郎", "次郎", "さくら", "ハナ")
_WARDS: Final = ("練馬区ダミー町", "品川区見本町", "足立区試験台", "多摩市仮名丘")
_OFFICES: Final = ("練馬", "品川", "足立", "多摩", "八王子", "横浜")
_KANJI_DIGITS: Final = "〇一二三四五六七八九"
_WIDE_DIGITS: Final = str.maketrans("0123456789-", "０１２３４５６７８９－")

VARIANTS: Final = ("width", "degenerate", "address")
"""Kinds of variant :func:`generate_airis_case` can write into AIRIS values of matching vehicles."""


@dataclass
class AirisCase:
    """A dummy register and AIRIS download, and what matching them must give."""

    register: list[dict[str, Value]]
    """Register records (typed values of :data:`TAX_REGISTER_2W`)."""
    airis: list[dict[str, str]]
    """AIRIS rows (column key → cell text)."""
    expected: dict[str, int]
    """Rows per category the matcher must produce."""
    expected_normalised: dict[str, int]
    """Among the matched vehicles, how many carry each ``normalised`` code."""


def _kanji_number(number: int) -> str:
    """1–99 in kanji numerals (十二, 二十三)."""
    tens, ones = divmod(number, 10)
    return ((_KANJI_DIGITS[tens] if tens > 1 else "") + ("十" if tens else "")
            + (_KANJI_DIGITS[ones] if ones else ""))


def generate_airis_case(vehicles: int, plant: Mapping[str, int] | None = None, *, seed: int = 0,
                        variants: Mapping[str, int] | None = None, today: datetime.date | None = None,
                        tax_year: int = 2025) -> AirisCase:
    """``vehicles`` dummy 小型二輪 on the register and in AIRIS, with planted discrepancies.

    ``plant`` maps a category (``"02"``–``"08"``) to how many rows of it to plant; every
    other vehicle is ``01``.  ``08`` plants groups of two (three for an odd count) with one
    chassis number on one side and no counterpart.  ``variants`` maps ``"width"``,
    ``"degenerate"``, ``"address"`` to how many ``01`` vehicles get that change in their AIRIS
    values (expected ``normalised`` 01, 02, 03).  Deterministic for a seed; dummy values only.
    """
    plant = dict(plant or {})
    variants = dict(variants or {})
    today = today or datetime.date(2025, 6, 30)
    rng = random.Random(seed)
    register: list[dict[str, Value]] = []
    airis: list[dict[str, str]] = []
    expected = {code: 0 for code in CATEGORIES}
    expected_normalised = {code: 0 for code in NORMALISATIONS}
    serials = iter(range(1, 10 ** 7))

    def base() -> tuple[dict[str, Value], dict[str, str]]:
        number = next(serials)
        family = rng.choice(_FAMILY)
        given = rng.choice(_GIVEN)
        chome, ban, go = rng.randint(1, 9), rng.randint(1, 30), rng.randint(1, 20)
        ward = rng.choice(_WARDS)
        address = f"{ward}{chome}-{ban}-{go}".translate(_WIDE_DIGITS)
        office = rng.choice(_OFFICES)
        plate_class = rng.choice(("1", "2", "3", "100", "500"))
        kana = rng.choice("あいうえかきくけこさすせそたちつてとなにぬねのはひふほまみむめもやゆよらりるれろわ")
        serial = rng.randint(1, 9999)
        prefix = rng.choice(("DMY", "TST", "EXM"))
        chassis = f"{prefix}{rng.randint(10, 99)}-{number:07d}"
        registered = today - datetime.timedelta(days=rng.randint(30, 3000))
        record: dict[str, Value] = {
            "taxpayer_id": f"{rng.randint(1, 99999):05d}{number:010d}",
            "plate_office": office, "plate_class": plate_class, "plate_kana": kana, "plate_serial": f"{serial:04d}",
            "chassis_no": chassis, "vehicle_type": SMALL_MOTORCYCLE,
            "owner_name": f"{family}{IDEOGRAPHIC_SPACE}{given}", "owner_address": address,
            "tax_year": tax_year, "registered_on": registered, "deregistered": "0",
        }
        row = {column.key: "" for column in AIRIS_COLUMNS}
        row.update({
            "plate_office": office, "plate_class": plate_class, "plate_kana": kana, "plate_serial": str(serial),
            "chassis_no": chassis, "owner_name": f"{family}{IDEOGRAPHIC_SPACE}{given}", "owner_address": address,
            "user_name": f"{family}{IDEOGRAPHIC_SPACE}{given}", "user_address": address, "base_location": address,
            "registered_on": registered.strftime("%Y%m%d"), "first_registered": registered.strftime("%Y%m"),
            "displacement": rng.choice(("0.12", "0.24", "0.39", "0.74")), "fuel": "ガソリン",
            "type_designation_no": f"{rng.randint(1, 99999)}", "classification_no": f"{rng.randint(1, 9999)}",
            "make": "ダミー", "capacity": "2", "weight": f"{rng.randint(100, 300)}",
            "gross_weight": f"{rng.randint(210, 410)}", "model": f"DMY-{rng.randint(10, 99)}",
            "engine_model": f"E{rng.randint(100, 999)}", "length": f"{rng.randint(180, 240)}",
            "width": f"{rng.randint(70, 90)}", "height": f"{rng.randint(100, 140)}",
            "vehicle_class": "小型", "use": "乗用", "private_or_commercial": "自家用", "body_shape": "二輪自動車",
            "inspection_expires_on": (today + datetime.timedelta(days=rng.randint(1, 700))).strftime("%Y%m%d"),
        })
        return record, row

    kinds: list[str] = []
    for code in ("02", "03", "04", "05", "06", "07"):
        kinds += [code] * plant.get(code, 0)
    duplicates = plant.get("08", 0)
    if duplicates == 1:
        raise ValueError("08 rows come in groups of two or more: plant 0 or at least 2")
    groups = [2] * (duplicates // 2)
    if duplicates % 2:
        groups[-1] = 3
    variant_kinds: list[str] = []
    for name in VARIANTS:
        variant_kinds += [name] * variants.get(name, 0)
    plain = vehicles - len(kinds) - len(variant_kinds) - len(groups)
    if plain < 0:
        raise ValueError(f"{vehicles} vehicles cannot hold {len(kinds) + len(variant_kinds) + len(groups)} planted ones")
    kinds += ["variant:" + name for name in variant_kinds] + ["01"] * plain + [f"08:{size}" for size in groups]
    rng.shuffle(kinds)

    for kind in kinds:
        record, row = base()
        if kind == "01":
            expected["01"] += 1
            expected_normalised["00"] += 1
        elif kind.startswith("variant:"):
            change = kind.split(":")[1]
            expected["01"] += 1
            if change == "width":
                row["owner_name"] = str(record["owner_name"]).replace(IDEOGRAPHIC_SPACE, " ").replace(
                    "ダミー", "ﾀﾞﾐｰ")
                row["chassis_no"] = str(record["chassis_no"]).lower()
                expected_normalised["01"] += 1
            elif change == "degenerate":
                family = rng.choice(("高試験", "崎見本"))
                record["owner_name"] = f"{family}{IDEOGRAPHIC_SPACE}{rng.choice(_GIVEN)}"
                row["owner_name"] = str(record["owner_name"]).replace("高", "髙").replace("崎", "﨑")
                expected_normalised["02"] += 1
            else:
                chome, ban, go = rng.randint(1, 9), rng.randint(1, 30), rng.randint(1, 20)
                ward = rng.choice(_WARDS)
                record["owner_address"] = f"{ward}{chome}-{ban}-{go}".translate(_WIDE_DIGITS)
                row["owner_address"] = f"{ward}{_kanji_number(chome)}丁目{_kanji_number(ban)}番{_kanji_number(go)}号"
                expected_normalised["03"] += 1
        elif kind == "02":
            row["owner_name"] = f"別人{IDEOGRAPHIC_SPACE}{rng.choice(_GIVEN)}"
            expected["02"] += 1
        elif kind == "03":
            row["owner_address"] = "転居先市ダミー町１－１－１"
            expected["03"] += 1
        elif kind == "04":
            row["plate_serial"] = str(int(row["plate_serial"]) % 9999 + 1)
            expected["04"] += 1
        elif kind == "05":
            row = {}
            record["deregistered"] = rng.choice("01")
            expected["05"] += 1
        elif kind == "06":
            record = {}
            expected["06"] += 1
        elif kind == "07":
            chassis = str(record["chassis_no"])
            row["chassis_no"] = "ZZ" + chassis[2:]  # the same last 7, another full number
            expected["07"] += 1
        else:
            size = int(kind.split(":")[1])
            expected["08"] += size
            on_register = rng.random() < 0.5
            first_chassis = str(record["chassis_no"])
            for copy in range(size):
                if copy:
                    record, row = base()
                    record["chassis_no"] = row["chassis_no"] = first_chassis
                if on_register:
                    register.append(record)
                else:
                    airis.append(row)
            continue
        if record:
            register.append(record)
        if row:
            airis.append(row)
    rng.shuffle(airis)
    return AirisCase(register, airis, expected, expected_normalised)
