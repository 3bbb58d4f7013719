"""What a layout is made of: field kinds, fields, rules and the layout table itself.

A :class:`Layout` is data — a tuple of :class:`Field` rows (Japanese name, key,
kind, byte width, rules) plus record rules that relate several fields.  The
engine derives parsing, rendering, validation, the docs table and the dummy
data generator from it.  Every rule knows two things about itself:

* ``describe()`` — the text of the docs table's "rule" column;
* ``check(value, ctx)`` — the precise check of a typed value, returning a reason
  in plain words (never containing the value) or ``None``.

The column-wise form of each rule, for whole blocks of records, is in
:mod:`kei_gateway.layouts.columnar` (a rule it does not know is checked there per
distinct value with ``check``).
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field as dataclass_field
from typing import Protocol, Union

from kei_gateway.layouts.checkdigits import gs1_check_digit, is_valid_gs1_cvs_code, lg_code_check_digit
from kei_gateway.layouts.encoding import Charset

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


class FieldRule(Protocol):
    """A rule about one field's value."""

    def describe(self) -> str: ...

    def check(self, value: Value, ctx: RuleContext) -> str | None: ...

@dataclass(frozen=True)
class Codes:
    """The value is one of a code table's codes."""

    table: Mapping[str, str]

    def describe(self) -> str:
        return ", ".join(f"`{code}` {meaning}" for code, meaning in self.table.items())

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        if value in self.table:
            return None
        return f"not a known code (allowed: {', '.join(self.table)})"

@dataclass(frozen=True)
class IntRange:
    """The number is within ``low..high``."""

    low: int
    high: int

    def describe(self) -> str:
        return f"{self.low}–{self.high}"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        number = int(value) if isinstance(value, (int, str)) else None
        if number is not None and self.low <= number <= self.high:
            return None
        return f"out of range (allowed {self.low}–{self.high})"

@dataclass(frozen=True)
class NotBlank:
    """The value is not blank (not all padding)."""

    def describe(self) -> str:
        return "not blank"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        return "is blank but is required" if value == "" else None

@dataclass(frozen=True)
class Blank:
    """The value is blank (all padding)."""

    def describe(self) -> str:
        return "blank"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        return None if value == "" else "must be blank here"

@dataclass(frozen=True)
class NotAllZero:
    """A numeric value that is not all zeros."""

    def describe(self) -> str:
        return "not all zero"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        return "is all zeros" if isinstance(value, str) and value.strip("0") == "" else None

@dataclass(frozen=True)
class NotAllLetters:
    """An ``X`` value with at least one digit (a 分類番号 is not letters only)."""

    def describe(self) -> str:
        return "not all letters"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        return None if isinstance(value, str) and any(c.isdigit() for c in value) else "needs at least one digit"

@dataclass(frozen=True)
class WideChars:
    """A ``K`` value made only of ``chars`` (no padding inside), e.g. kanji/kana or one hiragana."""

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

@dataclass(frozen=True)
class LgCode:
    """A 全国地方公共団体コード: valid check digit; equal to the gateway's code when one is set."""

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

@dataclass(frozen=True)
class Gs1CvsCode:
    """A コンビニ収納 code: 44 digits, GS1-128 AI ``91``, valid check digit."""

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

@dataclass(frozen=True)
class NotInFuture:
    """A date not after today (JST)."""

    def describe(self) -> str:
        return "not in the future"

    def check(self, value: Value, ctx: RuleContext) -> str | None:
        day = value.date() if isinstance(value, datetime.datetime) else value
        if isinstance(day, datetime.date) and day > ctx.today:
            return f"is in the future (today is {ctx.today:%Y-%m-%d})"
        return None

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
