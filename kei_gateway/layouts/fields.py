"""What a layout is made of: field kinds, fields, rules and the layout table itself.

A :class:`Layout` is data — a tuple of :class:`Field` rows (Japanese name, key,
kind, byte width, rules) plus record rules that relate several fields.  The
engine derives parsing, rendering, validation, the docs table and the dummy
data generator from it.  Every rule knows four things about itself:

* ``describe()`` — the text of the docs table's "rule" column;
* ``check(value, ctx)`` — the precise check of a typed value, returning a reason
  in plain words (never containing the value) or ``None``;
* ``pattern(field, ctx)`` — a bytes-regex fragment the raw field bytes match
  exactly when the rule holds, used by the fast path; ``None`` when a regex
  cannot say it (a check digit, a date relative to today);
* ``column_ok(values, ctx)`` — for rules without a pattern, a vectorised check
  of a column of raw values from many records at once.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field as dataclass_field
from operator import add, lt, ne
from typing import Final, Protocol, Union

from kei_gateway.layouts.checkdigits import (
    gs1_check_digit, is_valid_gs1_cvs_code, is_valid_lg_code, lg_code_check_digit,
)
from kei_gateway.layouts.encoding import Charset, allowed_wide_chars, wide_char_pattern

__all__ = [
    "Kind",
    "Value",
    "RuleContext",
    "FieldRule",
    "RecordRule",
    "Field",
    "Layout",
    "Codes",
    "IntRange",
    "NotBlank",
    "Blank",
    "NotAllZero",
    "NotAllLetters",
    "WideChars",
    "LgCode",
    "Gs1CvsCode",
    "NotInFuture",
    "SumEquals",
    "NotBefore",
    "When",
    "Unique",
    "int_range_pattern",
    "DATE_PATTERN",
    "TIME_PATTERN",
]

Value = Union[str, int, datetime.date, datetime.datetime]
"""A typed field value: ``str`` (codes, X, K), ``int`` (quantities), ``date`` (D), ``datetime`` (T)."""


class Kind(enum.Enum):
    """The five field kinds of SPEC §2."""

    N = "N"
    """Numeric: ASCII digits, right-aligned, zero-padded."""
    X = "X"
    """Half-width alphanumeric: ASCII, left-aligned, space-padded; allowed set per field."""
    K = "K"
    """Full-width: CP932 double-byte, left-aligned, padded with U+3000."""
    D = "D"
    """Date ``YYYYMMDD``, a real calendar date."""
    T = "T"
    """Date-time ``YYYYMMDDhhmmss`` (JST)."""


@dataclass(frozen=True)
class RuleContext:
    """What rules need beyond the record: today's date (JST), the gateway's code, the charset."""

    today: datetime.date
    lg_code: str | None = None
    charset: Charset = "jisx0208"


_YEAR = rb"(?!0000)[0-9]{4}"
_LEAP_YEAR = rb"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
DATE_PATTERN: Final[bytes] = (
    rb"(?:" + _YEAR + rb"(?:(?:0[13578]|1[02])(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)(?:0[1-9]|[12][0-9]|30)"
    rb"|02(?:0[1-9]|1[0-9]|2[0-8]))|(?!0000)" + _LEAP_YEAR + rb"0229)"
)
"""Exactly the real calendar dates ``YYYYMMDD`` of years 0001–9999."""
TIME_PATTERN: Final[bytes] = rb"(?:[01][0-9]|2[0-3])[0-5][0-9][0-5][0-9]"
"""``hhmmss``, 00:00:00–23:59:59."""


def int_range_pattern(low: int, high: int, width: int) -> bytes:
    """A regex matching exactly the zero-padded ``width``-digit numbers in ``low..high``."""

    def span(lo: str, hi: str) -> str:
        if lo == hi:
            return lo
        if lo == "0" * len(lo) and hi == "9" * len(hi):
            return f"[0-9]{{{len(lo)}}}"
        if len(lo) == 1:
            return f"[{lo}-{hi}]"
        if lo[0] == hi[0]:
            return lo[0] + span(lo[1:], hi[1:])
        rest = len(lo) - 1
        parts = [lo[0] + span(lo[1:], "9" * rest)]
        if int(hi[0]) - int(lo[0]) > 1:
            parts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}][0-9]{{{rest}}}")
        parts.append(hi[0] + span("0" * rest, hi[1:]))
        return "(?:" + "|".join(parts) + ")"

    return span(f"{low:0{width}d}", f"{high:0{width}d}").encode("ascii")


class FieldRule(Protocol):
    """A rule about one field's value.

    ``exact`` rules have a consuming pattern that matches only well-formed
    values of the field's kind, so the fast path needs no kind pattern next to it.
    """

    exact: bool
    always_column_check: bool
    """The pattern gives the shape only; ``column_ok`` must still run (check digits)."""

    def describe(self) -> str: ...

    def check(self, value: Value, ctx: RuleContext) -> str | None: ...

    def pattern(self, field: "Field", ctx: RuleContext) -> bytes | None: ...

    def column_ok(self, values: Sequence[bytes], ctx: RuleContext) -> bool: ...

    def text_pattern(self, field: "Field", ctx: RuleContext) -> str | None: ...


class _PatternRule:
    """Base of rules a regex says completely: no column check needed."""

    exact = False
    always_column_check = False

    def column_ok(self, values: Sequence[bytes], ctx: RuleContext) -> bool:
        return True

    def text_pattern(self, field: "Field", ctx: RuleContext) -> str | None:
        """For ``K`` fields: a lookahead on one decoded field followed by LF, or ``None``."""
        return None


def _padding(field: "Field") -> bytes:
    return b"\\x81\\x40" if field.kind is Kind.K else b" "


def _units(field: "Field") -> int:
    return field.width // 2 if field.kind is Kind.K else field.width


@dataclass(frozen=True)
class Codes(_PatternRule):
    """The value is one of a code table's codes."""

    exact = True

    table: Mapping[str, str]

    def describe(self) -> str:
        return ", ".join(f"`{code}` {meaning}" for code, meaning in self.table.items())

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        if value in self.table:
            return None
        return f"not a known code (allowed: {', '.join(self.table)})"

    def pattern(self, field: "Field", ctx: RuleContext) -> bytes | None:
        codes = [re.escape(code.ljust(field.width).encode("ascii")) for code in self.table]
        return b"(?:" + b"|".join(codes) + b")"


@dataclass(frozen=True)
class IntRange(_PatternRule):
    """The number is within ``low..high``."""

    exact = True

    low: int
    high: int

    def describe(self) -> str:
        return f"{self.low}–{self.high}"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        number = int(value) if isinstance(value, (int, str)) else None
        if number is not None and self.low <= number <= self.high:
            return None
        return f"out of range (allowed {self.low}–{self.high})"

    def pattern(self, field: "Field", ctx: RuleContext) -> bytes | None:
        return int_range_pattern(self.low, self.high, field.width)


@dataclass(frozen=True)
class NotBlank(_PatternRule):
    """The value is not blank (not all padding)."""

    def describe(self) -> str:
        return "not blank"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        return "is blank but is required" if value == "" else None

    def pattern(self, field: "Field", ctx: RuleContext) -> bytes | None:
        return b"(?!(?:" + _padding(field) + b"){" + str(_units(field)).encode() + b"})"

    def text_pattern(self, field: "Field", ctx: RuleContext) -> str | None:
        return f"(?!\u3000{{{field.width // 2}}}\n)"


@dataclass(frozen=True)
class Blank(_PatternRule):
    """The value is blank (all padding)."""

    exact = True

    def describe(self) -> str:
        return "blank"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        return None if value == "" else "must be blank here"

    def pattern(self, field: "Field", ctx: RuleContext) -> bytes | None:
        return b"(?:" + _padding(field) + b"){" + str(_units(field)).encode() + b"}"

    def text_pattern(self, field: "Field", ctx: RuleContext) -> str | None:
        return f"(?=\u3000{{{field.width // 2}}}\n)"


@dataclass(frozen=True)
class NotAllZero(_PatternRule):
    """A numeric value that is not all zeros."""

    def describe(self) -> str:
        return "not all zero"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        return "is all zeros" if isinstance(value, str) and value.strip("0") == "" else None

    def pattern(self, field: "Field", ctx: RuleContext) -> bytes | None:
        return b"(?!0{" + str(field.width).encode() + b"})"


@dataclass(frozen=True)
class NotAllLetters(_PatternRule):
    """An ``X`` value with at least one digit (a 分類番号 is not letters only)."""

    def describe(self) -> str:
        return "not all letters"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        return None if isinstance(value, str) and any(c.isdigit() for c in value) else "needs at least one digit"

    def pattern(self, field: "Field", ctx: RuleContext) -> bytes | None:
        return b"(?=[A-Z]{0," + str(field.width - 1).encode() + b"}[0-9])"


@dataclass(frozen=True)
class WideChars(_PatternRule):
    """A ``K`` value made only of ``chars`` (no padding inside), e.g. kanji/kana or one hiragana."""

    exact = True

    chars: Callable[[str], bool]
    description: str
    max_chars: int | None = None

    def describe(self) -> str:
        return self.description

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        text = str(value)
        if self.max_chars is not None and len(text) > self.max_chars:
            return f"has {len(text)} characters, at most {self.max_chars} allowed"
        if not all(self.chars(c) for c in text):
            return f"has a character that is not allowed ({self.description})"
        return None

    def pattern(self, field: "Field", ctx: RuleContext) -> bytes | None:
        allowed = frozenset(c for c in allowed_wide_chars(ctx.charset) if self.chars(c) and c != "\u3000")
        units = field.width // 2 if self.max_chars is None else min(self.max_chars, field.width // 2)
        return (left_aligned_pattern(wide_char_pattern(allowed).encode("ascii"), b"\\x81\\x40", units)
                + b"(?:\\x81\\x40){" + str(field.width // 2 - units).encode() + b"}")

    def text_pattern(self, field: "Field", ctx: RuleContext) -> str | None:
        allowed = frozenset(c for c in allowed_wide_chars(ctx.charset) if self.chars(c) and c != "\u3000")
        units = field.width // 2 if self.max_chars is None else min(self.max_chars, field.width // 2)
        return f"(?=[{char_class(allowed)}]{{1,{units}}}\u3000*\n)"


def char_class(chars: frozenset[str]) -> str:
    """The body of a ``str`` regex character class matching exactly ``chars`` (as code point ranges)."""
    points = sorted(ord(c) for c in chars)
    parts: list[str] = []
    start = prev = points[0]
    for point in points[1:] + [-1]:
        if point == prev + 1:
            prev = point
            continue
        parts.append(f"\\U{start:08x}" if start == prev else f"\\U{start:08x}-\\U{prev:08x}")
        start = prev = point
    return "".join(parts)


def left_aligned_pattern(char: bytes, padding: bytes, units: int) -> bytes:
    """Exactly ``units`` units: some ``char`` then only ``padding`` (linear-time nesting)."""
    pattern = b""
    for count in range(1, units + 1):
        pattern = b"(?:" + char + pattern + b"|(?:" + padding + b"){" + str(count).encode() + b"})"
    return pattern


@dataclass(frozen=True)
class LgCode:
    """A 全国地方公共団体コード: valid check digit; equal to the gateway's code when one is set."""

    exact = True
    always_column_check = False

    def describe(self) -> str:
        return "valid check digit (§2.5); must equal the gateway's `lg_code`"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        code = str(value)
        expected = lg_code_check_digit(code[:5])
        if int(code[5]) != expected:
            return f"check digit should be {expected}, got {code[5]}"
        if ctx.lg_code is not None and code != ctx.lg_code:
            return f"is not this gateway's code {ctx.lg_code}"
        return None

    def pattern(self, field: "Field", ctx: RuleContext) -> bytes | None:
        if ctx.lg_code is not None:
            return re.escape(ctx.lg_code.encode("ascii")) if is_valid_lg_code(ctx.lg_code) else b"(?!)"
        return None

    def text_pattern(self, field: "Field", ctx: RuleContext) -> str | None:
        return None

    def column_ok(self, values: Sequence[bytes], ctx: RuleContext) -> bool:
        return all(is_valid_lg_code(code.decode("ascii")) for code in set(values))


@dataclass(frozen=True)
class Gs1CvsCode:
    """A コンビニ収納 code: 44 digits, GS1-128 AI ``91``, valid check digit."""

    exact = True
    always_column_check = True

    def describe(self) -> str:
        return "44-digit GS1-128 (AI `91`) with valid check digit (§2.5)"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        code = str(value)
        if len(code) != 44 or not code.isdigit():
            return "must be 44 digits"
        if not code.startswith("91"):
            return "must start with the application identifier 91"
        if not is_valid_gs1_cvs_code(code):
            return f"check digit should be {gs1_check_digit(code[:-1])}, got {code[-1]}"
        return None

    def pattern(self, field: "Field", ctx: RuleContext) -> bytes | None:
        return b"91[0-9]{42}"

    def text_pattern(self, field: "Field", ctx: RuleContext) -> str | None:
        return None

    def column_ok(self, values: Sequence[bytes], ctx: RuleContext) -> bool:
        return all(map(_gs1_digits_ok, values))


def _gs1_digits_ok(code: bytes) -> bool:
    """The GS1 check digit of a 44-digit code given as ASCII bytes (shape already checked)."""
    if len(code) != 44 or not code.isdigit():
        return False
    a = sum(code[-2::-2]) - 48 * 22
    b = sum(code[-3::-2]) - 48 * 21
    return (10 - (3 * a + b) % 10) % 10 == code[-1] - 48


@dataclass(frozen=True)
class NotInFuture:
    """A date not after today (JST)."""

    exact = False
    always_column_check = False

    def describe(self) -> str:
        return "not in the future"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        day = value.date() if isinstance(value, datetime.datetime) else value
        if isinstance(day, datetime.date) and day > ctx.today:
            return f"is in the future (today is {ctx.today:%Y-%m-%d})"
        return None

    def pattern(self, field: "Field", ctx: RuleContext) -> bytes | None:
        return None

    def text_pattern(self, field: "Field", ctx: RuleContext) -> str | None:
        return None

    def column_ok(self, values: Sequence[bytes], ctx: RuleContext) -> bool:
        return not values or max(values)[:8] <= ctx.today.strftime("%Y%m%d").encode("ascii")


class RecordRule(Protocol):
    """A rule relating several fields of one record (or of all records of a file, :class:`Unique`)."""

    @property
    def keys(self) -> tuple[str, ...]: ...

    def describe(self, layout: "Layout") -> str: ...

    def check(self, values: Mapping[str, Value], ctx: RuleContext) -> list[tuple[str, str]]: ...


@dataclass(frozen=True)
class SumEquals:
    """``total`` = sum of ``parts`` (e.g. 請求金額 = 本税金額 + 延滞金額)."""

    total: str
    parts: tuple[str, str]

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.total, *self.parts)

    def describe(self, layout: "Layout") -> str:
        return f"{layout[self.total].name} = " + " + ".join(layout[key].name for key in self.parts)

    def check(self, values: Mapping[str, Value], ctx: RuleContext) -> list[tuple[str, str]]:
        total, first, second = (values[key] for key in self.keys)
        assert isinstance(total, int) and isinstance(first, int) and isinstance(second, int)
        if total == first + second:
            return []
        return [(self.total, f"is not the sum of {self.parts[0]} and {self.parts[1]} "
                             f"(differs by {total - first - second:+d})")]

    def columns_ok(self, total: Sequence[bytes], first: Sequence[bytes], second: Sequence[bytes]) -> bool:
        return not any(map(ne, map(int, total), map(add, map(int, first), map(int, second))))


@dataclass(frozen=True)
class NotBefore:
    """Date ``later`` ≥ date ``earlier`` (e.g. 有効年月日 ≥ 更新年月日)."""

    later: str
    earlier: str

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.later, self.earlier)

    def describe(self, layout: "Layout") -> str:
        return f"{layout[self.later].name} ≥ {layout[self.earlier].name}"

    def check(self, values: Mapping[str, Value], ctx: RuleContext) -> list[tuple[str, str]]:
        later, earlier = values[self.later], values[self.earlier]
        assert isinstance(later, datetime.date) and isinstance(earlier, datetime.date)
        if later >= earlier:
            return []
        return [(self.later, f"is before {self.earlier} ({earlier:%Y-%m-%d})")]

    def columns_ok(self, later: Sequence[bytes], earlier: Sequence[bytes]) -> bool:
        return not any(map(lt, later, earlier))


@dataclass(frozen=True)
class When:
    """Rules for field ``then_key`` that depend on the code in field ``key``.

    When ``key`` is one of ``codes``, ``then_rules`` apply to ``then_key``;
    otherwise ``else_rules`` do.
    """

    key: str
    codes: frozenset[str]
    then_key: str
    then_rules: tuple[FieldRule, ...] = ()
    else_rules: tuple[FieldRule, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, self.then_key)

    def describe(self, layout: "Layout") -> str:
        codes = ", ".join(f"`{code}`" for code in sorted(self.codes))
        text = ""
        if self.then_rules:
            text += f"{layout[self.key].name} {codes}: " + "; ".join(rule.describe() for rule in self.then_rules)
        if self.else_rules:
            text += ("; otherwise " if text else f"unless {layout[self.key].name} {codes}: ")
            text += "; ".join(rule.describe() for rule in self.else_rules)
        return text

    def applicable(self, values: Mapping[str, Value]) -> tuple[FieldRule, ...]:
        return self.then_rules if values[self.key] in self.codes else self.else_rules

    def check(self, values: Mapping[str, Value], ctx: RuleContext) -> list[tuple[str, str]]:
        problems = []
        for rule in self.applicable(values):
            reason = rule.check(values[self.then_key], ctx)
            if reason is not None:
                problems.append((self.then_key, f"{reason} when {self.key} is {values[self.key]}"))
        return problems


@dataclass(frozen=True)
class Unique:
    """Within one file, the combination of ``keys`` is unique."""

    keys: tuple[str, ...]

    def describe(self, layout: "Layout") -> str:
        return "(" + ", ".join(self.keys) + ") unique within a file"

    def check(self, values: Mapping[str, Value], ctx: RuleContext) -> list[tuple[str, str]]:
        return []  # a file-level rule: the validator keeps the keys it has seen


@dataclass(frozen=True)
class Field:
    """One row of a layout table."""

    name: str
    """The Japanese item name (項目), as in SPEC §2."""
    key: str
    """The stable English key used in code, errors and JSON."""
    kind: Kind
    width: int
    """Width in bytes (CP932)."""
    rules: tuple[FieldRule, ...] = ()
    allowed: str = " -~"
    """``X`` fields: regex class body of the allowed ASCII characters (default: printable ASCII)."""
    as_int: bool = False
    """``N`` fields: parse to ``int`` (amounts, years, counts) instead of a digit string (codes, numbers)."""
    personal: bool = False
    """Personal or payment data: masked in every message meant for a log."""
    note: str = ""
    """Extra words for the docs table's rule column."""

    def __post_init__(self) -> None:
        if self.kind is Kind.K and self.width % 2:
            raise ValueError(f"{self.key}: a K field has an even byte width")
        if self.kind is Kind.D and self.width != 8:
            raise ValueError(f"{self.key}: a D field is 8 bytes")
        if self.kind is Kind.T and self.width != 14:
            raise ValueError(f"{self.key}: a T field is 14 bytes")

    @property
    def chars(self) -> int:
        """Width in characters when the input is UTF-8: w/2 for ``K``, w otherwise."""
        return self.width // 2 if self.kind is Kind.K else self.width


@dataclass(frozen=True, eq=False)
class Layout:
    """A fixed-length record layout: fields in order, then CRLF.

    Compared and hashed by identity: each layout is one table object.
    """

    name: str
    """The flow name it belongs to (``jnks-payments`` ...)."""
    title: str
    """Japanese title (JNKS 納付情報 ...)."""
    fields: tuple[Field, ...]
    record_rules: tuple[RecordRule, ...] = ()
    offsets: dict[str, int] = dataclass_field(init=False, repr=False, compare=False)
    _by_key: dict[str, Field] = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        offsets: dict[str, int] = {}
        position = 0
        for item in self.fields:
            if item.key in offsets:
                raise ValueError(f"{self.name}: field key {item.key} appears twice")
            offsets[item.key] = position
            position += item.width
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "_by_key", {item.key: item for item in self.fields})
        for rule in self.record_rules:
            for key in rule.keys:
                if key not in offsets:
                    raise ValueError(f"{self.name}: record rule names unknown field {key}")

    def __getitem__(self, key: str) -> Field:
        return self._by_key[key]

    @property
    def data_length(self) -> int:
        """Bytes of one record without its CRLF."""
        return sum(item.width for item in self.fields)

    @property
    def record_length(self) -> int:
        """Bytes of one record including its CRLF."""
        return self.data_length + 2

    @property
    def unique_keys(self) -> tuple[str, ...] | None:
        for rule in self.record_rules:
            if isinstance(rule, Unique):
                return rule.keys
        return None
