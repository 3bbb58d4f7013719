"""The layout engine: streaming validation, parsing and rendering of record files.

Pure: no clock, no files.  Bytes go in through :meth:`Validator.feed` (or the
helpers :func:`validate_bytes` / :func:`validate_stream`); a
:class:`ValidationReport` comes out.  ``today`` (JST) is passed in.

Speed comes from a fast path: per layout and options, one compiled bytes regex
that matches exactly a *valid* record, applied with ``findall`` to a block of
records at once, plus column checks done in C-level ``map`` calls (check
digits, sums, dates against each other and today, uniqueness).  A block the
fast path does not accept whole is re-checked record by record with the
precise validator, which finds every error and its place.  The two must agree:
the fast path accepts a record only if the precise validator does (property
tests check this).
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field as dataclass_field
from functools import lru_cache
from heapq import merge
from itertools import compress, islice
from operator import not_
from typing import Final, NamedTuple

from kei_gateway.layouts.degenerate import clusters
from kei_gateway.layouts.encoding import (
    IDEOGRAPHIC_SPACE, Charset, GaijiPolicy, InputEncoding, allowed_wide_chars,
    normalize_variants, wide_char_pattern, widen_halfwidth_katakana,
)
from kei_gateway.layouts._keyfilter import DEFAULT_FILTER_BITS_LOG2, KeyFilter, filter_bits_for, lane_width
from kei_gateway.layouts.errors import InvalidFileError, LayoutError
from kei_gateway.layouts.gaiji import GaijiFallback, Replacement, apply_gaiji_policy
from kei_gateway.layouts.fields import (
    DATE_PATTERN, TIME_PATTERN, Field, FieldRule, Kind, Layout, LgCode, NotBefore, RuleContext, SumEquals, Unique, Value,
    When, char_class, left_aligned_pattern,
)

__all__ = [
    "ValidationOptions",
    "ValidationReport",
    "Validator",
    "Record",
    "validate_bytes",
    "validate_stream",
    "parse_records",
    "parse_record",
    "render_record",
    "render_records",
    "DEFAULT_MAX_ERRORS",
    "DEFAULT_MAX_DEGENERATIONS",
    "Degenerated",
    "parse_degenerations",
]

Record = dict[str, Value]
"""A parsed record: field key → typed value."""

DEFAULT_MAX_ERRORS: Final = 1000
DEFAULT_MAX_DEGENERATIONS: Final = 100_000
"""縮退 kept in a report's list (about 25 bytes each, packed); counting goes on past it."""
BOM: Final = b"\xef\xbb\xbf"
_BLOCK_SIZE: Final = 1 << 18
"""Bytes gathered before a block is validated (whole records only)."""


@dataclass(frozen=True)
class ValidationOptions:
    """How a file is read and checked: the flow's settings plus today's date (JST)."""

    today: datetime.date
    encoding: InputEncoding = "cp932"
    charset: Charset = "jisx0208"
    gaiji: GaijiPolicy = "reject"
    gaiji_fallback: GaijiFallback = "reject"
    """Under ``gaiji = "degenerate"``: what happens to a 外字 with no unique 縮退 candidate."""
    lg_code: str | None = None
    """The gateway's 全国地方公共団体コード; when ``None`` only the check digit is verified."""
    max_errors: int = DEFAULT_MAX_ERRORS
    """Errors kept in the report; counting goes on past it."""
    max_degenerations: int = DEFAULT_MAX_DEGENERATIONS
    """縮退 kept in the report's list; counting goes on past it."""

    @property
    def rule_context(self) -> RuleContext:
        return RuleContext(today=self.today, lg_code=self.lg_code, charset=self.charset)


@dataclass
class ValidationReport:
    """The outcome of validating one file."""

    layout: str
    records: int = 0
    """Records read (complete lines), valid or not."""
    errors: list[LayoutError] = dataclass_field(default_factory=list)
    """The first ``max_errors`` errors, in file order."""
    error_count: int = 0
    """All errors found, including those past ``max_errors``."""
    gaiji_substituted: int = 0
    """外字 replaced by 〓 under ``gaiji = "substitute"`` (or ``degenerate`` with fallback ``substitute``)."""
    degenerated: int = 0
    """外字 replaced by their 縮退 candidate under ``gaiji = "degenerate"``."""
    degeneration_lines: bytearray = dataclass_field(default_factory=bytearray, repr=False)
    """The first ``max_degenerations`` 縮退, packed as UTF-8 lines ``record TAB key TAB from TAB to``.

    Personal data (characters of names): keep it encrypted, never log it.  Read it with
    :attr:`degenerations`.
    """

    uniqueness_pending: bool = False
    """Suspect keys are waiting for :meth:`Validator.rescan`; until then the report is not final."""

    @property
    def valid(self) -> bool:
        return self.error_count == 0 and not self.uniqueness_pending

    @property
    def truncated(self) -> bool:
        return self.error_count > len(self.errors)

    @property
    def degenerations(self) -> list[Degenerated]:
        """The kept 縮退 in file order (record, field key, from, to)."""
        return parse_degenerations(bytes(self.degeneration_lines))

    def add_degenerations(self, record: int, key: str, replacements: Iterable[Replacement], limit: int) -> None:
        for replacement in replacements:
            self.degenerated += 1
            if self.degenerated <= limit:
                self.degeneration_lines += (f"{record}\t{key}\t{replacement.source}\t{replacement.target}\n"
                                            .encode("utf-8"))


class Degenerated(NamedTuple):
    """One 縮退 made in a file: 1-based record number, field key, the character before and after."""

    record: int
    key: str
    source: str
    target: str


def parse_degenerations(data: bytes) -> list[Degenerated]:
    """The entries of :attr:`ValidationReport.degeneration_lines` (e.g. read back from the store)."""
    entries = []
    for line in data.decode("utf-8").splitlines():
        if line.startswith("#"):
            continue
        record, key, source, target = line.split("\t")
        entries.append(Degenerated(int(record), key, source, target))
    return entries


# --------------------------------------------------------------------------- precise record checks


@dataclass(frozen=True)
class _FieldResult:
    value: Value | None
    reason: str | None = None
    reason_offset: int = 0
    shown: str | None = None
    output: bytes = b""
    substituted: int = 0
    replacements: tuple[Replacement, ...] = ()


def _ascii_text(raw: bytes) -> str:
    return raw.decode("cp932", errors="replace")


@lru_cache(maxsize=None)
def _allowed_x(allowed: str) -> re.Pattern[bytes]:
    return re.compile(b"[" + allowed.encode("ascii") + b"]*")


def _describe_allowed(allowed: str) -> str:
    return "printable ASCII" if allowed == " -~" else f"[{allowed.replace(chr(92), '')}]"


def _decode_field(item: Field, raw: bytes, options: ValidationOptions) -> _FieldResult:
    """Decode and check the encoding-level shape of one field; no rules yet."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        return _FieldResult(None, "contains a NUL byte (0x00); the file is damaged or not a text file", nul)
    kind = item.kind
    if kind is Kind.N:
        if not (raw.isascii() and raw.isdigit()):
            return _FieldResult(None, "must be digits 0-9, right-aligned and zero-padded", 0, _ascii_text(raw))
        text = raw.decode("ascii")
        return _FieldResult(int(text) if item.as_int else text, output=raw)
    if kind is Kind.X:
        for position, byte in enumerate(raw):
            if not 0x20 <= byte <= 0x7E:
                what = "a control character" if byte < 0x20 or byte == 0x7F else "a non-ASCII (full-width?) byte"
                return _FieldResult(None, f"has {what} at byte {position + 1} of the field; only half-width "
                                          f"{_describe_allowed(item.allowed)} is allowed", position,
                                   _ascii_text(raw).rstrip())
        value = raw.rstrip(b" ")
        if value and raw[:1] == b" ":
            return _FieldResult(None, "is not left-aligned (starts with a space)", 0, _ascii_text(raw).strip())
        if _allowed_x(item.allowed + (" " if " " in item.allowed else "")).fullmatch(value) is None:
            return _FieldResult(None, f"has characters outside {_describe_allowed(item.allowed)}"
                                      f"{'' if ' ' in item.allowed else ' (no spaces inside)'}", 0,
                                _ascii_text(raw).rstrip())
        return _FieldResult(value.decode("ascii"), output=raw)
    if kind is Kind.K:
        try:
            text = raw.decode("cp932")
        except UnicodeDecodeError as exc:
            return _FieldResult(None, "has bytes that are not valid CP932 (a double-byte character may be cut "
                                      "at the field's end)", exc.start, None)
        return _check_wide_text(text, options, raw)
    digits = raw.isascii() and raw.isdigit()
    if kind is Kind.D:
        if digits:
            try:
                day = datetime.date(int(raw[:4]), int(raw[4:6]), int(raw[6:8]))
                return _FieldResult(day, output=raw)
            except ValueError:
                pass
        return _FieldResult(None, "is not a real calendar date YYYYMMDD", 0, _ascii_text(raw))
    if digits:
        try:
            moment = datetime.datetime(int(raw[:4]), int(raw[4:6]), int(raw[6:8]),
                                       int(raw[8:10]), int(raw[10:12]), int(raw[12:14]))
            return _FieldResult(moment, output=raw)
        except ValueError:
            pass
    return _FieldResult(None, "is not a real date-time YYYYMMDDhhmmss", 0, _ascii_text(raw))


_INVALID_SINGLE_BYTE_CHARS: Final = frozenset("\x80\uf8f0\uf8f1\uf8f2\uf8f3")
"""What Python's cp932 codec makes of bytes 0x80, 0xA0, 0xFD–0xFF, which CP932 does not define."""


def _check_wide_text(text: str, options: ValidationOptions, raw: bytes) -> _FieldResult:
    """Check the characters of a decoded ``K`` field; apply the 外字 policy (substitute, degenerate)."""
    byte_position = 0
    shape_problem: _FieldResult | None = None
    for index, char in enumerate(text):
        if char in _INVALID_SINGLE_BYTE_CHARS:
            shape_problem = _FieldResult(None, "has a byte that is not valid CP932", byte_position)
        elif len(char.encode("cp932")) == 1:
            shape_problem = _FieldResult(None, f"has a half-width character at character {index + 1}; a full-width "
                                               "field takes full-width characters only (they are not widened)",
                                         byte_position, text.rstrip(IDEOGRAPHIC_SPACE))
        if shape_problem is not None:
            text_before = text[:index]
            break
        byte_position += 2
    else:
        text_before = text
    # Every character before the first malformed one is double-byte, so character i is at byte 2i.
    outcome = apply_gaiji_policy(text_before, allowed_wide_chars(options.charset), charset=options.charset,
                                 gaiji=options.gaiji, fallback=options.gaiji_fallback)
    if outcome.problem is not None:
        return _FieldResult(None, outcome.problem, 2 * outcome.problem_index, text.rstrip(IDEOGRAPHIC_SPACE))
    if shape_problem is not None:
        return shape_problem
    chars = outcome.chars
    value = "".join(chars).rstrip(IDEOGRAPHIC_SPACE)
    if value and chars[0] == IDEOGRAPHIC_SPACE:
        return _FieldResult(None, "is not left-aligned (starts with a full-width space)", 0, text.strip(IDEOGRAPHIC_SPACE))
    output = raw
    if outcome.substituted or outcome.replacements:
        output = value.ljust(len(raw) // 2, IDEOGRAPHIC_SPACE).encode("cp932")
        if len(output) != len(raw):
            return _FieldResult(None, f"is longer than its {len(raw)} bytes after 縮退 (a character became several); "
                                      "shorten it in the tax system", 0, text.rstrip(IDEOGRAPHIC_SPACE))
    return _FieldResult(value, output=output, substituted=outcome.substituted, replacements=outcome.replacements)


def _shown(item: Field, value: Value) -> str:
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y%m%d%H%M%S")
    if isinstance(value, datetime.date):
        return value.strftime("%Y%m%d")
    return str(value)


@dataclass
class _RecordCheck:
    values: Record
    errors: list[LayoutError]
    output: bytes
    substituted: int
    unique_key: bytes | None = None
    """The unique fields' raw bytes, joined (fixed width), when they decoded."""
    replacements: list[tuple[str, tuple[Replacement, ...]]] = dataclass_field(default_factory=list)
    """縮退 made, per field key."""


class _RecordChecker:
    """The precise validator of one record's bytes (without CRLF)."""

    def __init__(self, layout: Layout, options: ValidationOptions) -> None:
        self.layout = layout
        self.options = options
        self.ctx = options.rule_context
        self.slices = [(item, layout.offsets[item.key], layout.offsets[item.key] + item.width)
                       for item in layout.fields]
        self.record_rules = [rule for rule in layout.record_rules if not isinstance(rule, Unique)]
        self.unique_keys = layout.unique_keys

    def check(self, data: bytes, number: int, offset: int,
              field_offsets: Sequence[int] | None = None) -> _RecordCheck:
        errors: list[LayoutError] = []
        values: Record = {}
        outputs: list[bytes] = []
        substituted = 0
        replacements: list[tuple[str, tuple[Replacement, ...]]] = []
        for index, (item, start, end) in enumerate(self.slices):
            field_offset = offset + start if field_offsets is None else field_offsets[index]
            result = _decode_field(item, data[start:end], self.options)
            outputs.append(result.output or data[start:end])
            if result.reason is not None:
                errors.append(LayoutError(number, field_offset + result.reason_offset, result.reason, item.name,
                                          item.key, result.shown, item.personal))
                continue
            assert result.value is not None
            substituted += result.substituted
            if result.replacements:
                replacements.append((item.key, result.replacements))
            values[item.key] = result.value
            for rule in item.rules:
                reason = rule.check(result.value, self.ctx)
                if reason is not None:
                    errors.append(LayoutError(number, field_offset, reason, item.name, item.key,
                                              _shown(item, result.value), item.personal))
                    break
        for record_rule in self.record_rules:
            if not all(key in values for key in record_rule.keys):
                continue
            for key, reason in record_rule.check(values, self.ctx):
                item = self.layout[key]
                index = self.layout.fields.index(item)
                field_offset = offset + self.layout.offsets[key] if field_offsets is None else field_offsets[index]
                errors.append(LayoutError(number, field_offset, reason, item.name, key,
                                          _shown(item, values[key]), item.personal))
        unique_key = None
        if self.unique_keys is not None and all(key in values for key in self.unique_keys):
            unique_key = b"".join(data[self.layout.offsets[key]:self.layout.offsets[key] + self.layout[key].width]
                                  for key in self.unique_keys)
        return _RecordCheck(values, errors, b"".join(outputs), substituted, unique_key, replacements)


# --------------------------------------------------------------------------- the fast path


def _wrap(pattern: bytes) -> bytes:
    return b"(?=" + pattern + b")"


def _base_pattern(item: Field, ctx: RuleContext) -> bytes:
    """The regex of a well-formed field of ``item``'s kind, exactly ``item.width`` bytes."""
    width = str(item.width).encode()
    if item.kind is Kind.N:
        return b"[0-9]{" + width + b"}"
    if item.kind is Kind.D:
        return DATE_PATTERN
    if item.kind is Kind.T:
        return DATE_PATTERN + TIME_PATTERN
    if item.kind is Kind.X:
        allowed = item.allowed.encode("ascii")
        if " " in item.allowed:
            return b"(?:(?! )[" + allowed + b"]{" + width + b"}| {" + width + b"})"
        if item.width <= _NESTED_X_MAX_WIDTH:
            return left_aligned_pattern(b"[" + allowed + b"]", b" ", item.width)
        # Wider fields: left alignment without inner spaces is checked on the column (_left_aligned_check).
        return b"[" + allowed + b" ]{" + width + b"}"
    units = str(item.width // 2).encode()
    wide = wide_char_pattern(allowed_wide_chars(ctx.charset), exclude=IDEOGRAPHIC_SPACE).encode("ascii")
    return (b"(?:(?!\\x81\\x40)(?:\\x81\\x40|" + wide + b"){" + units + b"}|(?:\\x81\\x40){" + units + b"})")


class _Columns:
    """Columns of a block of valid-shaped records, cut out with strided slices (C speed, no per-record objects)."""

    def __init__(self, layout: Layout, block: bytes) -> None:
        self.layout = layout
        self.block = block
        self.count = len(block) // layout.record_length
        self._joined: dict[str, bytes] = {}
        self._values: dict[str, list[bytes]] = {}

    def joined(self, key: str) -> bytes:
        """The field of every record, each followed by LF (valid fields never contain LF)."""
        if key not in self._joined:
            width, start, size = self.layout[key].width, self.layout.offsets[key], self.layout.record_length
            column = bytearray(b"\n" * (self.count * (width + 1)))
            for index in range(width):
                column[index::width + 1] = self.block[start + index::size]
            self._joined[key] = bytes(column)
        return self._joined[key]

    def keys(self, keys: tuple[str, ...]) -> list[bytes]:
        """The named fields of every record concatenated, one ``bytes`` per record (unique keys)."""
        if len(keys) == 1:
            return self.values(keys[0])
        size = self.layout.record_length
        parts = [(self.layout.offsets[key], self.layout[key].width) for key in keys]
        lane = sum(width for _, width in parts) + 1
        column = bytearray(b"\n" * (self.count * lane))
        position = 0
        for start, width in parts:
            for index in range(width):
                column[position::lane] = self.block[start + index::size]
                position += 1
        return bytes(column).split(b"\n")[:-1]

    def packed_keys(self, keys: tuple[str, ...], lane: int) -> bytearray:
        """The named fields of every record concatenated, each record's key zero-padded to ``lane`` bytes."""
        size = self.layout.record_length
        column = bytearray(self.count * lane)
        position = 0
        for key in keys:
            start = self.layout.offsets[key]
            for index in range(self.layout[key].width):
                column[position::lane] = self.block[start + index::size]
                position += 1
        return column

    def values(self, key: str) -> list[bytes]:
        """The field's raw bytes, one per record."""
        if key not in self._values:
            self._values[key] = self.joined(key).split(b"\n")[:-1]
        return self._values[key]


ColumnCheck = Callable[[_Columns], bool]

_SPACE_BEFORE_VALUE: Final = re.compile(rb" [^ \n]")
_NESTED_X_MAX_WIDTH: Final = 4
"""X fields up to this width check left alignment in the regex; wider ones on the column (cheaper)."""
_DISTINCT_K_MAX_WIDTH: Final = 8
"""Narrow K fields (plate office and kana) repeat: checked per distinct value; wider ones decoded as a column."""
_DISTINCT_CACHE_LIMIT: Final = 1 << 16
_SPLIT_BELOW: Final = 32
"""A block that fails the fast path is halved until it has fewer records than this; then record by record."""


@dataclass
class _FastPlan:
    regex: re.Pattern[bytes]
    """Matches (``fullmatch``) a run of whole valid-shaped records."""
    checks: list[ColumnCheck]


def _when_pattern(layout: Layout, rule: When, ctx: RuleContext) -> tuple[bytes, list[FieldRule], list[FieldRule]]:
    cond = layout[rule.key]
    target = layout[rule.then_key]
    codes = b"(?:" + b"|".join(re.escape(code.ljust(cond.width).encode("ascii")) for code in sorted(rule.codes)) + b")"
    to_cond = b".{" + str(layout.offsets[rule.key]).encode() + b"}"
    to_target = b".{" + str(layout.offsets[rule.then_key]).encode() + b"}"
    then_left = [r for r in rule.then_rules if r.pattern(target, ctx) is None or r.always_column_check]
    else_left = [r for r in rule.else_rules if r.pattern(target, ctx) is None or r.always_column_check]
    then_pattern = b"".join(_wrap(p) for r in rule.then_rules if (p := r.pattern(target, ctx)) is not None)
    else_pattern = b"".join(_wrap(p) for r in rule.else_rules if (p := r.pattern(target, ctx)) is not None)
    pattern = (b"(?=(?=" + to_cond + codes + b")" + to_target + then_pattern
               + b"|(?!" + to_cond + codes + b")" + to_target + else_pattern + b")")
    return pattern, then_left, else_left


@lru_cache(maxsize=64)
def _fast_plan(layout: Layout, ctx: RuleContext) -> _FastPlan:
    checks: list[ColumnCheck] = []
    prefix = b""
    for rule in layout.record_rules:
        if isinstance(rule, When):
            pattern, then_left, else_left = _when_pattern(layout, rule, ctx)
            prefix += pattern
            if then_left or else_left:
                codes = frozenset(code.ljust(layout[rule.key].width).encode("ascii") for code in rule.codes)
                checks.append(_when_column_check(rule.key, rule.then_key, codes, then_left, else_left, ctx))
        elif isinstance(rule, SumEquals):
            checks.append(_sum_check(rule, *rule.keys))
        elif isinstance(rule, NotBefore):
            checks.append(_not_before_check(rule, rule.later, rule.earlier))
        elif not isinstance(rule, Unique):  # pragma: no cover - a new kind of record rule needs a fast path
            raise TypeError(f"no fast path for record rule {rule!r}")
    # Fields whose every byte a When rule's lookahead already fixes (e.g. cvs_code: GS1 or blank).
    shaped = {rule.then_key for rule in layout.record_rules if isinstance(rule, When)
              and _shapes(rule.then_rules, layout[rule.then_key], ctx)
              and _shapes(rule.else_rules, layout[rule.then_key], ctx)}
    # Dates other checks read anyway are checked per distinct value; the others by the date regex.
    date_columns = {key for rule in layout.record_rules if isinstance(rule, NotBefore) for key in rule.keys}
    body = b""
    for item in layout.fields:
        if item.key in shaped and not item.rules:
            body += b".{" + str(item.width).encode() + b"}"
            continue
        if item.kind is Kind.K and item.width <= _DISTINCT_K_MAX_WIDTH:
            checks.append(_distinct_values_check(item, ctx))
            body += b".{" + str(item.width).encode() + b"}"
            continue
        if item.kind is Kind.K and all(r.text_pattern(item, ctx) is not None for r in item.rules):
            checks.append(_wide_column_check(item, ctx))
            body += b".{" + str(item.width).encode() + b"}"
            continue
        if (item.kind is Kind.D and all(r.pattern(item, ctx) is None for r in item.rules)
                and (item.key in date_columns or item.rules)):
            checks.append(_date_column_check(item.key))
            checks.extend(_field_column_check(r, item.key, ctx) for r in item.rules)
            body += b"[0-9]{8}"
            continue
        lookaheads = b""
        consumer: bytes | None = None
        for field_rule in item.rules:
            rule_pattern = field_rule.pattern(item, ctx)
            if rule_pattern is None:
                checks.append(_field_column_check(field_rule, item.key, ctx))
            elif field_rule.exact and consumer is None:
                consumer = rule_pattern
            else:
                lookaheads += _wrap(rule_pattern)
        if consumer is None:
            consumer = _base_pattern(item, ctx)
            if item.kind is Kind.X and " " not in item.allowed and item.width > _NESTED_X_MAX_WIDTH:
                checks.append(_left_aligned_check(item.key))
        body += b"(?:" + lookaheads + consumer + b")"
    regex = re.compile(b"(?:" + prefix + body + b"\r\n)*+", re.DOTALL)
    return _FastPlan(regex=regex, checks=checks)


def _left_aligned_check(key: str) -> ColumnCheck:
    """No space before or inside any value: no space followed by a non-space within a field."""
    return lambda columns: _SPACE_BEFORE_VALUE.search(columns.joined(key)) is None


def _shapes(rules: tuple[FieldRule, ...], item: Field, ctx: RuleContext) -> bool:
    """Whether one of ``rules`` has a pattern that alone says every byte of a well-formed value."""
    return any(rule.exact and rule.pattern(item, ctx) is not None for rule in rules)


def _wide_column_check(item: Field, ctx: RuleContext) -> ColumnCheck:
    """A ``K`` column decoded at once (CP932 pairs checked by the codec), then one ``str`` regex over it."""
    units = item.width // 2
    allowed = char_class(allowed_wide_chars(ctx.charset) | {IDEOGRAPHIC_SPACE})
    lookaheads = "".join(rule.text_pattern(item, ctx) or "" for rule in item.rules)
    line = re.compile(f"(?:{lookaheads}(?:(?!\u3000)[{allowed}]{{{units}}}|\u3000{{{units}}})\n)*+")

    def check(columns: _Columns) -> bool:
        try:
            text = columns.joined(item.key).decode("cp932")
        except UnicodeDecodeError:
            return False
        return line.fullmatch(text) is not None
    return check


def _distinct_values_check(item: Field, ctx: RuleContext) -> ColumnCheck:
    """Check each distinct value of a narrow, repetitive field once with the precise checks (cached per plan)."""
    options = ValidationOptions(today=ctx.today, charset=ctx.charset, lg_code=ctx.lg_code)

    def precise(raw: bytes) -> bool:
        result = _decode_field(item, raw, options)
        return (result.reason is None and result.value is not None and result.substituted == 0
                and not result.replacements
                and all(rule.check(result.value, ctx) is None for rule in item.rules))

    return _KnownGood(item.key, precise).check


class _KnownGood:
    """A column check for repetitive fields: distinct values not seen before get the precise check; good ones are kept."""

    def __init__(self, key: str, precise: Callable[[bytes], bool]) -> None:
        self.key = key
        self.precise = precise
        self.good: set[bytes] = set()

    def check(self, columns: _Columns) -> bool:
        new = set(columns.values(self.key)) - self.good
        if not new:
            return True
        if not all(map(self.precise, new)):
            return False
        if len(self.good) > _DISTINCT_CACHE_LIMIT:
            self.good.clear()
        self.good |= new
        return True


def _is_real_date(raw: bytes) -> bool:
    try:
        datetime.date(int(raw[:4]), int(raw[4:6]), int(raw[6:8]))
    except ValueError:
        return False
    return True


def _date_column_check(key: str) -> ColumnCheck:
    """Dates repeat: check each distinct value once."""
    return _KnownGood(key, _is_real_date).check


def _sum_check(rule: SumEquals, total: str, first: str, second: str) -> ColumnCheck:
    """total = first + second for every record, as decimal addition on whole columns at once.

    Each digit position of a field, taken from every record with a strided
    slice, is one big integer whose bytes are that digit of each record (the
    fast-path regex has made sure they are ASCII digits).  Adding the columns
    from the right with a carry lane keeps every byte below 20, so no byte
    spills into its neighbour: a decimal adder run on all records in parallel.
    """
    def check(columns: _Columns) -> bool:
        layout, block, size, count = columns.layout, columns.block, columns.layout.record_length, columns.count
        widths = {layout[key].width for key in (total, first, second)}
        if len(widths) != 1:  # pragma: no cover - the tables sum fields of one width
            return rule.columns_ok(columns.values(total), columns.values(first), columns.values(second))
        width = widths.pop()
        ones = int.from_bytes(b"\x01" * count, "big")
        zeros, carry_bias = 0x30 * ones, 0x76 * ones  # ASCII '0'; 0x76 + s ≥ 0x80 exactly when s ≥ 10
        starts = layout.offsets[total], layout.offsets[first], layout.offsets[second]
        carry = 0
        for index in reversed(range(width)):
            t, a, b = (int.from_bytes(block[start + index::size], "big") - zeros for start in starts)
            digit_sum = a + b + carry
            carry = ((digit_sum + carry_bias) >> 7) & ones
            if digit_sum - 10 * carry != t:
                return False
        return carry == 0
    return check


def _not_before_check(rule: NotBefore, later: str, earlier: str) -> ColumnCheck:
    return lambda columns: rule.columns_ok(columns.values(later), columns.values(earlier))


def _field_column_check(rule: FieldRule, key: str, ctx: RuleContext) -> ColumnCheck:
    if isinstance(rule, LgCode):
        return _lg_code_column_check(key)
    return lambda columns: rule.column_ok(columns.values(key), ctx)


_DIGIT_VALUES: Final = bytes.maketrans(b"0123456789", bytes(range(10)))
_LG_CHECK_DIGITS: Final = bytes(0x30 + (11 - total % 11) % 10 for total in range(256))
"""Weighted sum of the first five digits → the ASCII check digit of a 全国地方公共団体コード."""


def _lg_code_column_check(key: str) -> ColumnCheck:
    """Check digits of a whole column at once: one byte per record holds its weighted sum (≤ 180)."""
    def check(columns: _Columns) -> bool:
        block, size, start = columns.block, columns.layout.record_length, columns.layout.offsets[key]
        total = 0
        for index, weight in enumerate((6, 5, 4, 3, 2)):
            total += weight * int.from_bytes(block[start + index::size].translate(_DIGIT_VALUES), "big")
        expected = total.to_bytes(columns.count, "big").translate(_LG_CHECK_DIGITS)
        return expected == block[start + 5::size]
    return check


def _when_column_check(cond_key: str, target_key: str, codes: frozenset[bytes], then_left: list[FieldRule],
                       else_left: list[FieldRule], ctx: RuleContext) -> ColumnCheck:
    def check(columns: _Columns) -> bool:
        conditions, targets = columns.values(cond_key), columns.values(target_key)
        if then_left:
            chosen = list(map(bytes.rstrip, compress(targets, map(codes.__contains__, conditions))))
            if not all(rule.column_ok(chosen, ctx) for rule in then_left):
                return False
        if else_left:
            others = list(map(bytes.rstrip, compress(targets, map(not_, map(codes.__contains__, conditions)))))
            if not all(rule.column_ok(others, ctx) for rule in else_left):
                return False
        return True
    return check


# --------------------------------------------------------------------------- UTF-8 input


class _Utf8Conversion(NamedTuple):
    record: bytes | None
    """The CP932 record, ``None`` when a field cannot be converted."""
    field_offsets: list[int]
    """The input byte offset of each field."""
    errors: list[LayoutError]
    substituted: int
    """外字 replaced by 〓."""
    replacements: list[tuple[str, tuple[Replacement, ...]]]
    """縮退 made, per field key."""


def _convert_utf8_record(layout: Layout, text: str, options: ValidationOptions, number: int,
                         offset: int) -> _Utf8Conversion:
    """Slice a UTF-8 record by characters and convert each field to CP932 (SPEC §2)."""
    errors: list[LayoutError] = []
    pieces: list[bytes] = []
    field_offsets: list[int] = []
    replacements: list[tuple[str, tuple[Replacement, ...]]] = []
    position = 0
    byte_offset = offset
    substituted = 0
    allowed = allowed_wide_chars(options.charset)
    for item in layout.fields:
        chunk = text[position:position + item.chars]
        position += item.chars
        field_offsets.append(byte_offset)
        byte_offset += len(chunk.encode("utf-8"))
        if item.kind is not Kind.K:
            if not chunk.isascii():
                errors.append(LayoutError(number, field_offsets[-1], "has a non-ASCII character; this field takes "
                                          "half-width ASCII only", item.name, item.key, chunk, item.personal))
                continue
            pieces.append(chunk.encode("ascii"))
            continue
        chars = clusters(widen_halfwidth_katakana(normalize_variants(chunk)).rstrip(IDEOGRAPHIC_SPACE))
        problem = None
        checked = len(chars)
        for index, char in enumerate(chars):
            try:
                width = len(char.encode("cp932"))
            except UnicodeEncodeError:
                width = 2  # outside CP932 altogether (e.g. 𠮷, or a character with an IVS): a 外字
            if width == 1 and char not in allowed:
                problem = (f"has a half-width character at character {index + 1}; a full-width field takes "
                           "full-width characters only (they are not widened)")
                checked = index
                break
        outcome = apply_gaiji_policy(chars[:checked], allowed, charset=options.charset, gaiji=options.gaiji,
                                     fallback=options.gaiji_fallback)
        if outcome.problem is not None:
            problem = outcome.problem
        value = "".join(outcome.chars)
        if problem is None and len(value) > item.width // 2:
            problem = (f"is longer than its {item.width // 2} characters after 縮退 (a character became several); "
                       "shorten it in the tax system")
        if problem is not None:
            errors.append(LayoutError(number, field_offsets[-1], problem, item.name, item.key, chunk, item.personal))
            continue
        substituted += outcome.substituted
        if outcome.replacements:
            replacements.append((item.key, outcome.replacements))
        pieces.append(value.ljust(item.width // 2, IDEOGRAPHIC_SPACE).encode("cp932"))
    if errors:
        return _Utf8Conversion(None, field_offsets, errors, substituted, replacements)
    return _Utf8Conversion(b"".join(pieces), field_offsets, errors, substituted, replacements)


_NEEDS_CONVERSION: Final = re.compile("[\uff61-\uff9f\ufeff]")
"""Half-width katakana (composed and widened in K fields) and BOMs: left to the record-by-record path."""


def _utf8_block_as_cp932(block: bytes) -> bytes | None:
    """A UTF-8 block converted in one go, when that can only give what per-field conversion gives.

    If the result then passes the fast path, every record is ASCII in its
    ``X``/``N``/``D``/``T`` fields and double-byte in its ``K`` fields, so
    slicing by characters and by bytes cut the same fields and the per-field
    conversion of SPEC §2 would produce exactly these bytes.  Anything else
    (not UTF-8, 外字, half-width katakana) returns ``None`` and goes record by
    record.
    """
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _NEEDS_CONVERSION.search(text) is not None:
        return None
    try:
        return normalize_variants(text).encode("cp932")
    except UnicodeEncodeError:
        return None


# --------------------------------------------------------------------------- uniqueness


class _ExactKeys:
    """Every key kept exactly in a set: the uniqueness check for input that can be read only once.

    About 95 bytes a record (an ``int`` when all unique fields are digits, else ``bytes``).
    """

    def __init__(self, layout: Layout) -> None:
        self.columns = layout.unique_keys or ()
        self.numeric = all(layout[key].kind is Kind.N for key in self.columns)
        self.seen: set[object] = set()

    def block(self, columns: _Columns, first_number: int) -> bool:
        """Fast path: ``False`` (nothing recorded) when a key of the block repeats an earlier one."""
        joined = columns.keys(self.columns)
        keys: list[object] = list(map(int, joined)) if self.numeric else list(joined)
        if not self.seen.isdisjoint(keys):
            return False
        before = len(self.seen)
        self.seen.update(keys)
        if len(self.seen) - before != columns.count:  # a key repeats inside the block
            self.seen.difference_update(keys)  # none was there before (disjoint), so this undoes the update
            return False
        return True

    def record(self, key: bytes, number: int) -> bool:
        """``True`` when the record repeats an earlier key."""
        exact: object = int(key) if self.numeric else key
        if exact in self.seen:
            return True
        self.seen.add(exact)
        return False


class _FilteredKeys:
    """First read: keys go into a fixed-size :class:`KeyFilter`; the "maybe seen" ones are kept as suspects.

    Nothing is reported here; a key equal to an earlier one is always a suspect,
    so :class:`_SuspectKeys` can settle uniqueness exactly in a second read.
    """

    def __init__(self, layout: Layout, bits_log2: int) -> None:
        self.columns = layout.unique_keys or ()
        self.width = sum(layout[key].width for key in self.columns)
        self.lane = lane_width(self.width)
        self.filter = KeyFilter(bits_log2)
        self.suspects: set[bytes] = set()
        self.last_suspect = 0
        """Record number of the last suspect: no duplicate can come after it."""

    def block(self, columns: _Columns, first_number: int) -> bool:
        packed = columns.packed_keys(self.columns, self.lane)
        found = self.filter.add_block(packed, self.lane)
        if found.size:
            lane, width = self.lane, self.width
            self.suspects.update(bytes(packed[i * lane:i * lane + width]) for i in found.tolist())
            self.last_suspect = first_number + int(found[-1])
        return True

    def record(self, key: bytes, number: int) -> bool:
        if self.filter.add_one(key):
            self.suspects.add(key)
            self.last_suspect = number
        return False


class _SuspectKeys:
    """Second read: only the suspect keys are followed, exactly; a repeat of one is a duplicate."""

    def __init__(self, layout: Layout, suspects: set[bytes]) -> None:
        self.columns = layout.unique_keys or ()
        self.suspects = suspects
        self.seen: set[bytes] = set()

    def block(self, columns: _Columns, first_number: int) -> bool:
        hits = list(filter(self.suspects.__contains__, columns.keys(self.columns)))
        if not hits:
            return True
        if len(set(hits)) != len(hits) or not self.seen.isdisjoint(hits):
            return False  # the record-by-record path reports it at its place
        self.seen.update(hits)
        return True

    def record(self, key: bytes, number: int) -> bool:
        if key not in self.suspects:
            return False
        if key in self.seen:
            return True
        self.seen.add(key)
        return False


_Uniqueness = _ExactKeys | _FilteredKeys | _SuspectKeys


# --------------------------------------------------------------------------- the streaming validator


class Validator:
    """Validates one file fed in pieces; push-style, so a Twisted protocol can feed it as data arrives.

    ``sink``, when given, receives the CP932 bytes to pass on (converted from
    UTF-8, 外字 substituted): use them only if the report is valid.
    ``fast_path=False`` checks every record with the precise validator only
    (same result, slower; tests compare the two).

    Uniqueness (SPEC §2: one record per key within a file) is checked one of two ways:

    * ``rereadable=False`` (the default, for input that can be read only once,
      e.g. standard input): every key is kept exactly in memory, about 95 bytes
      a record; :meth:`close` returns the final report.
    * ``rereadable=True``: keys go into a fixed-size Bloom filter
      (``2 ** filter_bits_log2`` bits, 16 MiB by default; smaller when
      ``expected_size``, the file's size in bytes, says it has fewer records
      than that serves well) and only the keys it
      cannot rule out (suspects) are kept.  If there are any after
      :meth:`close`, :attr:`needs_rescan` is true, the report is not final
      (``valid`` is false) and the caller feeds the same bytes again to
      :meth:`rescan`, which finds, exactly, the suspects that repeat an earlier
      record and reports them where the in-memory check would have.
    """

    def __init__(self, layout: Layout, options: ValidationOptions,
                 sink: Callable[[bytes], None] | None = None, *, fast_path: bool = True,
                 rereadable: bool = False, filter_bits_log2: int = DEFAULT_FILTER_BITS_LOG2,
                 expected_size: int | None = None) -> None:
        self.layout = layout
        self.options = options
        self.report = ValidationReport(layout=layout.name)
        self._sink = sink
        self._buffer = bytearray()
        self._offset = 0  # file offset of self._buffer[0]
        self._checker = _RecordChecker(layout, options)
        self._plan = _fast_plan(layout, options.rule_context) if fast_path else None
        self._unique: _Uniqueness | None = None
        if layout.unique_keys is not None:
            if rereadable:
                records = None if expected_size is None else expected_size // layout.record_length + 1
                self._unique = _FilteredKeys(layout, filter_bits_for(records, filter_bits_log2))
            else:
                self._unique = _ExactKeys(layout)
        # Only a filtered uniqueness check may need the second read, whose bytes must be the first's.
        self._digest = hashlib.sha256() if isinstance(self._unique, _FilteredKeys) else None
        self._duplicates: list[LayoutError] | None = None  # set in the second read: where duplicates go
        self._duplicate_count = 0
        self._closed = False

    @property
    def needs_rescan(self) -> bool:
        """Whether :meth:`rescan` must read the file again before the report is final."""
        return self.report.uniqueness_pending

    # -- feeding

    def feed(self, data: bytes) -> None:
        """Add the next bytes of the file."""
        if self._closed:
            raise RuntimeError("feed() after close()")
        if self._digest is not None:
            self._digest.update(data)
        self._buffer += data
        if len(self._buffer) >= _BLOCK_SIZE:
            self._drain(final=False)

    def _drain(self, *, final: bool) -> None:
        """Validate the complete lines in the buffer, in blocks of about ``_BLOCK_SIZE`` (bounded memory)."""
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= (1 if final else _BLOCK_SIZE):
            end = buffer.rfind(b"\n", start, start + _BLOCK_SIZE) + 1
            if end <= start:  # a line longer than a block: take it whole
                end = buffer.find(b"\n", start + _BLOCK_SIZE) + 1
                if end <= 0:
                    break
            self._process(bytes(buffer[start:end]))
            start = end
        del buffer[:start]

    def close(self) -> ValidationReport:
        """The file is complete: check what is left and return the report."""
        if self._closed:
            return self.report
        self._closed = True
        self._drain(final=True)
        rest = bytes(self._buffer)
        if rest:
            self._trailing(rest)
        elif self._offset == 0:
            self._error(LayoutError(None, 0, "the file is empty; a file has at least one record"))
        if isinstance(self._unique, _FilteredKeys):
            if self._unique.suspects:
                self.report.uniqueness_pending = True
            else:
                self._unique = None  # every key was new: the filter's 16 MiB can go now
        return self.report

    def rescan(self, chunks: Iterable[bytes]) -> ValidationReport:
        """Read the same bytes again to settle the suspect keys; return the final report.

        Only the duplicate errors come from this read (the same errors, at the
        same records, fields and offsets as the in-memory check gives); they are
        merged into the report in file order.  ``ValueError`` if the bytes
        differ from the first read (the file changed in between).
        """
        if not self._closed:
            raise RuntimeError("rescan() before close()")
        if not self.report.uniqueness_pending:
            return self.report
        first = self._unique
        assert isinstance(first, _FilteredKeys) and self._digest is not None
        self._unique = None  # the filter's pages go before the second read; only the suspects are needed
        second = Validator(self.layout, self.options, fast_path=self._plan is not None)
        second._unique = _SuspectKeys(self.layout, first.suspects)
        del first
        second._duplicates = []
        digest = hashlib.sha256()
        if self.options.encoding == "cp932":
            second._replay_suspects(chunks, digest)
        else:  # UTF-8: record places depend on the conversion, so validate it all again
            second._digest = digest
            for chunk in chunks:
                second.feed(chunk)
            second.close()
        if digest.digest() != self._digest.digest():
            raise ValueError("the file changed between the two reads of its validation; validate it again")
        report = self.report
        report.errors = list(islice(merge(report.errors, second._duplicates, key=_error_order),
                                    self.options.max_errors))
        report.error_count += second._duplicate_count
        report.uniqueness_pending = False
        return report

    def _replay_suspects(self, chunks: Iterable[bytes], digest: hashlib._Hash) -> None:
        """Second read of a CP932 file: only the records whose key bytes are suspects are validated again.

        Record numbers are line numbers, as in the first read.  Each line that
        could carry a suspect key (its unique fields' bytes are one) is replayed
        through the precise path at its number and offset, which settles it
        exactly and reports a duplicate where the in-memory check would.
        Runs of well-formed lines are scanned as columns, without per-record work.
        """
        unique = self._unique
        assert isinstance(unique, _SuspectKeys)
        suspects, layout = unique.suspects, self.layout
        size, length = layout.record_length, layout.data_length
        parts = [(layout.offsets[key], layout.offsets[key] + layout[key].width) for key in unique.columns]
        number = offset = 0

        def replay(line: bytes, at_number: int, at_offset: int) -> None:
            self.report.records = at_number - 1
            self._line(line, at_offset)

        def scan(piece: bytes) -> None:
            nonlocal number, offset
            count = len(piece) // size
            if (number > 0 and len(piece) == count * size and piece.count(b"\n") == count
                    and piece[size - 1::size] == b"\n" * count and piece[size - 2::size] == b"\r" * count):
                keys = _Columns(layout, piece).keys(unique.columns)
                for index in compress(range(count), map(suspects.__contains__, keys)):
                    replay(piece[index * size:(index + 1) * size], number + index + 1, offset + index * size)
                number += count
            else:
                start = 0
                while start < len(piece):
                    end = piece.index(b"\n", start) + 1
                    line = piece[start:end]
                    number += 1
                    data = line[:-2] if line.endswith(b"\r\n") else line[:-1]
                    if number == 1 or (len(data) == length
                                       and b"".join(data[a:b] for a, b in parts) in suspects):
                        replay(line, number, offset + start)
                    start = end
            offset += len(piece)

        def drain(buffer: bytearray, final: bool) -> None:
            start = 0
            while len(buffer) - start >= (1 if final else _BLOCK_SIZE):
                end = buffer.rfind(b"\n", start, start + _BLOCK_SIZE) + 1
                if end <= start:  # a line longer than a block: take it whole
                    end = buffer.find(b"\n", start + _BLOCK_SIZE) + 1
                    if end <= 0:
                        break  # what follows the last LF is no record with a key
                scan(bytes(buffer[start:end]))
                start = end
            del buffer[:start]

        buffer = bytearray()
        for chunk in chunks:
            digest.update(chunk)
            buffer += chunk
            if len(buffer) >= _BLOCK_SIZE:
                drain(buffer, False)
        drain(buffer, True)

    # -- internals

    def _error(self, error: LayoutError) -> None:
        self.report.error_count += 1
        if len(self.report.errors) < self.options.max_errors:
            self.report.errors.append(error)

    def _duplicate(self, error: LayoutError) -> None:
        if self._duplicates is None:
            self._error(error)
            return
        self._duplicate_count += 1
        if len(self._duplicates) < self.options.max_errors:
            self._duplicates.append(error)

    def _emit(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink(data)

    def _process(self, block: bytes) -> None:
        """Validate a block of whole lines (ending in LF)."""
        self._lines(block, self._offset)
        self._offset += len(block)

    def _lines(self, block: bytes, offset: int) -> None:
        """Fast path for the block; if it fails, halves (so a few bad records cost only their neighbourhood)."""
        if self._plan is not None:
            cp932 = block if self.options.encoding == "cp932" else _utf8_block_as_cp932(block)
            if cp932 is not None and self._fast_block(cp932):
                self.report.records += len(cp932) // self.layout.record_length
                self._emit(cp932)
                return
            if len(block) > _SPLIT_BELOW * self.layout.record_length:
                middle = block.rfind(b"\n", 0, len(block) // 2) + 1
                if 0 < middle < len(block):
                    self._lines(block[:middle], offset)
                    self._lines(block[middle:], offset + middle)
                    return
        start = 0
        while start < len(block):
            end = block.index(b"\n", start) + 1
            self._line(block[start:end], offset + start)
            start = end

    def _fast_block(self, block: bytes) -> bool:
        plan = self._plan
        assert plan is not None
        if plan.regex.fullmatch(block) is None:
            return False
        columns = _Columns(self.layout, block)
        for check in plan.checks:
            if not check(columns):
                return False
        # Last: a uniqueness check that accepts the block has recorded its keys.
        return self._unique is None or self._unique.block(columns, self.report.records + 1)

    def _line(self, line: bytes, offset: int) -> None:
        """Validate one line (ending in LF) precisely."""
        self.report.records += 1
        number = self.report.records
        if number == 1 and line.startswith(BOM):
            self._error(LayoutError(1, 0, "the file starts with a byte order mark (EF BB BF); save it without BOM"))
            line = line[3:]
            offset += 3
        if line.endswith(b"\r\n"):
            data = line[:-2]
        else:
            self._error(LayoutError(number, offset + len(line) - 1, "ends with a bare LF (no CR before it); "
                                                                    "records end with CR LF"))
            data = line[:-1]
        if self.options.encoding == "utf-8":
            self._utf8_record(data, number, offset)
            return
        self._cp932_record(data, number, offset)

    def _structure_ok(self, data: bytes, number: int, offset: int, expected: int, unit: str, length: int) -> bool:
        cr = data.find(b"\r")
        if cr >= 0:
            self._error(LayoutError(number, offset + cr, "has a CR without LF inside the record; "
                                                         "each record ends with CR LF"))
        nul = data.find(b"\x00")
        if length != expected:
            if nul >= 0:
                self._error(LayoutError(number, offset + nul, "contains a NUL byte (0x00); the file is damaged "
                                                               "or not a text file"))
            self._error(LayoutError(number, offset, f"is {length} {unit} long without CR LF, expected {expected} "
                                                    f"({self.layout.name} records are {self.layout.record_length} "
                                                    "bytes including CR LF)"))
            return False
        return cr < 0

    def _cp932_record(self, data: bytes, number: int, offset: int, field_offsets: Sequence[int] | None = None,
                      converted: bool = False) -> None:
        if not converted and not self._structure_ok(data, number, offset, self.layout.data_length, "bytes",
                                                    len(data)):
            return
        result = self._checker.check(data, number, offset, field_offsets)
        for error in result.errors:
            self._error(error)
        self.report.gaiji_substituted += result.substituted
        for key, replacements in result.replacements:
            self.report.add_degenerations(number, key, replacements, self.options.max_degenerations)
        if result.unique_key is not None and self._unique is not None \
                and self._unique.record(result.unique_key, number):
            keys = self.layout.unique_keys or ()
            first = self.layout[keys[0]]
            index = self.layout.fields.index(first)
            place = offset + self.layout.offsets[first.key] if field_offsets is None else field_offsets[index]
            self._duplicate(LayoutError(number, place, f"repeats the ({', '.join(keys)}) of an earlier record; "
                                                       "each must be unique within a file", first.name, first.key,
                                        str(result.values[first.key]), first.personal))
        self._emit(result.output + b"\r\n")

    def _utf8_record(self, data: bytes, number: int, offset: int) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._error(LayoutError(number, offset + exc.start, "has bytes that are not valid UTF-8; "
                                                                "check the flow's encoding setting"))
            return
        if number == 1 and text.startswith("\ufeff"):
            self._error(LayoutError(1, offset, "the file starts with a byte order mark (U+FEFF); save it without BOM"))
            text = text[1:]
            offset += 3
            data = data[3:]
        expected = sum(item.chars for item in self.layout.fields)
        if not self._structure_ok(data, number, offset, expected, "characters", len(text)):
            return
        conversion = _convert_utf8_record(self.layout, text, self.options, number, offset)
        for error in conversion.errors:
            self._error(error)
        self.report.gaiji_substituted += conversion.substituted
        if conversion.record is not None:
            for key, replacements in conversion.replacements:
                self.report.add_degenerations(number, key, replacements, self.options.max_degenerations)
            self._cp932_record(conversion.record, number, offset, conversion.field_offsets, converted=True)

    def _trailing(self, rest: bytes) -> None:
        number = self.report.records + 1
        offset = self._offset
        if rest.endswith(b"\r"):
            reason = "the last record ends with CR but no LF; records end with CR LF"
        elif self.report.records == 0 or len(rest) >= self.layout.data_length:
            reason = "the last record is not terminated by CR LF"
        else:
            reason = f"{len(rest)} bytes of data after the last CR LF; remove them or complete the record"
        self.report.records += 1
        self._error(LayoutError(number, offset + len(rest), reason))


def validate_stream(chunks: Iterable[bytes], layout: Layout, options: ValidationOptions,
                    sink: Callable[[bytes], None] | None = None, *, fast_path: bool = True,
                    reread: Callable[[], Iterable[bytes]] | None = None,
                    filter_bits_log2: int = DEFAULT_FILTER_BITS_LOG2,
                    expected_size: int | None = None) -> ValidationReport:
    """Validate a file given as an iterable of byte chunks (e.g. ``iter(partial(f.read, 1 << 16), b"")``).

    ``reread``, when the file can be read again, returns a fresh iterable of
    the same bytes: uniqueness then takes fixed memory (see :class:`Validator`)
    and ``reread`` is called only when suspect keys need the second read.
    Without it every key is kept in memory.
    """
    validator = Validator(layout, options, sink, fast_path=fast_path, rereadable=reread is not None,
                          filter_bits_log2=filter_bits_log2, expected_size=expected_size)
    for chunk in chunks:
        validator.feed(chunk)
    report = validator.close()
    if validator.needs_rescan:
        assert reread is not None
        report = validator.rescan(reread())
    return report


def validate_bytes(data: bytes, layout: Layout, options: ValidationOptions,
                   sink: Callable[[bytes], None] | None = None, *, fast_path: bool = True,
                   filter_bits_log2: int = DEFAULT_FILTER_BITS_LOG2) -> ValidationReport:
    """Validate a whole file held in memory (read twice when uniqueness needs it)."""
    return validate_stream((data,), layout, options, sink, fast_path=fast_path, reread=lambda: (data,),
                           filter_bits_log2=filter_bits_log2, expected_size=len(data))


def _error_order(error: LayoutError) -> int:
    """File order of errors: by record (``None``, the file as a whole, first); stable within a record."""
    return 0 if error.record is None else error.record


# --------------------------------------------------------------------------- parse and render


def parse_record(data: bytes, layout: Layout, options: ValidationOptions, number: int = 1) -> Record:
    """Parse one CP932 record (with or without its CRLF) into typed values; ``InvalidFileError`` if invalid."""
    body = data[:-2] if data.endswith(b"\r\n") else data
    if len(body) != layout.data_length:
        raise InvalidFileError([LayoutError(number, 0, f"is {len(body)} bytes long without CR LF, expected "
                                                       f"{layout.data_length}")])
    result = _RecordChecker(layout, options).check(body, number, 0)
    if result.errors:
        raise InvalidFileError(result.errors)
    return result.values


def parse_records(chunks: Iterable[bytes], layout: Layout, options: ValidationOptions) -> Iterator[Record]:
    """Stream typed records out of a CP932 (or UTF-8, per ``options``) file given in chunks.

    Each record is validated precisely; at the first invalid record (or a
    broken file structure) :class:`InvalidFileError` is raised with its errors.
    Uniqueness across records is not checked here — validate the file first.
    """
    pending: list[bytes] = []
    validator = Validator(layout, options, pending.append)  # it checks and converts; records come out of pending
    checker = _RecordChecker(layout, options)
    number = 0

    def drain() -> Iterator[Record]:
        nonlocal number
        if validator.report.error_count:
            raise InvalidFileError(validator.report.errors)
        size = layout.record_length
        for output in pending:  # one record, or a whole block from the fast path
            for start in range(0, len(output), size):
                number += 1
                yield checker.check(output[start:start + size - 2], number, 0).values
        pending.clear()

    for chunk in chunks:
        validator.feed(chunk)
        yield from drain()
    validator.close()
    yield from drain()


def _render_field(item: Field, value: Value) -> bytes:
    if item.kind is Kind.N:
        text = f"{value:0{item.width}d}" if isinstance(value, int) else str(value).rjust(item.width, "0")
        data = text.encode("ascii")
    elif item.kind is Kind.X:
        data = str(value).ljust(item.width).encode("ascii")
    elif item.kind is Kind.K:
        data = str(value).ljust(item.width // 2, IDEOGRAPHIC_SPACE).encode("cp932")
    elif item.kind is Kind.D:
        assert isinstance(value, datetime.date)
        data = value.strftime("%Y%m%d").encode("ascii")
    else:
        assert isinstance(value, datetime.datetime)
        data = value.strftime("%Y%m%d%H%M%S").encode("ascii")
    if len(data) != item.width:
        raise ValueError(f"{item.name} ({item.key}): value does not fit in {item.width} bytes")
    return data


def render_record(layout: Layout, record: Mapping[str, Value]) -> bytes:
    """The CP932 bytes of one record, CRLF included.  Renders; does not validate (use the validator)."""
    return b"".join(_render_field(item, record[item.key]) for item in layout.fields) + b"\r\n"


def render_records(layout: Layout, records: Iterable[Mapping[str, Value]]) -> Iterator[bytes]:
    """Render records one by one (stream them to a file or a transport)."""
    for record in records:
        yield render_record(layout, record)
