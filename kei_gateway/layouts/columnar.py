"""The fast path: every rule of SPEC §2 evaluated column-wise over a block of whole records.

A block of ``n`` records of a layout is an ``n × record_length`` byte matrix (a numpy
view, no copy).  :meth:`ColumnarPlan.check` returns, for each record, whether the
precise checker (:mod:`kei_gateway.layouts.precise`) would accept it *unchanged*:
every field well-formed for its kind (digits; the field's ASCII set, left-aligned;
CP932 double-byte pairs of the flow's charset looked up in a 65,536-entry table indexed
by ``lead << 8 | trail``; real calendar dates and times), every field rule and every
record rule (sums, dates in order, conditional rules) holding, and CR LF at the end.
Uniqueness across records is left to :mod:`kei_gateway.layouts.uniqueness`.

The answer must be exact for speed only: a record marked ``False`` goes to the precise
checker, which names the record, field and reason (and applies the 外字 policy).  A
record marked ``True`` must be one the precise checker accepts as it is — property tests
compare the two paths on valid files and on every single-field corruption.

Rules this module does not know are checked per distinct value of the column with the
precise checker (cached), so a new rule kind is correct before it is fast.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from kei_gateway.layouts.encoding import CP932_PAIRS, Charset, allowed_wide_chars
from kei_gateway.layouts.fields import (
    Blank, Codes, Field, FieldRule, Gs1CvsCode, IntRange, Kind, Layout, LgCode, NotAllLetters, NotAllZero, NotBefore,
    NotBlank, NotInFuture, RuleContext, SumEquals, Unique, When, WideChars,
)

__all__ = ["ColumnarPlan", "columnar_plan", "wide_code_table"]

Matrix = npt.NDArray[np.uint8]
Mask = Any
"""A boolean array, one per record (``Any``: numpy's reductions are typed as scalar-or-array)."""
_PAD: Final = 0x8140
"""U+3000 in CP932, the padding of ``K`` fields."""
_DISTINCT_LIMIT: Final = 1 << 14
"""Good distinct values kept per column by the per-distinct-value fallback."""


# --------------------------------------------------------------------------- lookup tables


@lru_cache(maxsize=None)
def _wide_codes_of(charset: Charset) -> tuple[npt.NDArray[np.intp], tuple[str, ...]]:
    """The double-byte codes (``lead << 8 | trail``) of the characters a ``K`` field accepts under ``charset``
    (each one CP932 double-byte character), and those characters."""
    allowed = allowed_wide_chars(charset)
    pairs = [(code[0] << 8 | code[1], char) for code, char in CP932_PAIRS.items() if char in allowed]
    if len("".join(char for _, char in pairs).encode("cp932")) != 2 * len(pairs):  # one encode for all of them
        pairs = [(code, char) for code, char in pairs if len(char.encode("cp932")) == 2]
    return np.array([code for code, _ in pairs], dtype=np.intp), tuple(char for _, char in pairs)


@lru_cache(maxsize=None)
def wide_code_table(charset: Charset, predicate: Callable[[str], bool] | None = None) -> npt.NDArray[np.bool_]:
    """65,536 booleans: which double-byte codes a ``K`` field accepts (padding included) under ``charset``.

    With ``predicate``: only the codes of allowed characters it accepts (a :class:`WideChars` rule).
    """
    codes, chars = _wide_codes_of(charset)
    table = np.zeros(1 << 16, dtype=np.bool_)
    if predicate is None:
        table[codes] = True
        table[_PAD] = True
    else:
        table[codes[np.fromiter(map(predicate, chars), dtype=np.bool_, count=len(chars))]] = True
    return table


@lru_cache(maxsize=None)
def _ascii_table(allowed: str) -> npt.NDArray[np.bool_]:
    """256 booleans: the bytes an ``X`` field with this allowed set may hold (space included)."""
    pattern = re.compile(b"[" + allowed.encode("ascii") + b"]")
    table = np.zeros(256, dtype=np.bool_)
    for byte in range(0x20, 0x7F):
        table[byte] = byte == 0x20 or pattern.fullmatch(bytes((byte,))) is not None
    return table


# Byte classes: a translate gives each byte its class bit; each position of a record accepts a
# set of classes (digits for N/D/T, the field's set for X, CR/LF at the end, anything in K
# fields, whose pairs the code table checks).  Runs of digit positions are checked by their
# minimum and maximum instead (:func:`_class_checks`); CR and LF by checks of their own (a
# block is only taken as a matrix when its LFs are exactly the records' last bytes).
_DIGIT, _UPPER, _LOWER, _HYPHEN, _SPACE, _OTHER, _EOL, _NOT_ASCII = (1 << bit for bit in range(8))


def _class_of(byte: int) -> int:
    if 0x30 <= byte <= 0x39:
        return _DIGIT
    if 0x41 <= byte <= 0x5A:
        return _UPPER
    if 0x61 <= byte <= 0x7A:
        return _LOWER
    if byte == 0x2D:
        return _HYPHEN
    if byte == 0x20:
        return _SPACE
    if 0x21 <= byte <= 0x7E:
        return _OTHER
    if byte in (0x0D, 0x0A):
        return _EOL
    return _NOT_ASCII  # control characters, DEL and every byte ≥ 0x80


_CLASS_TABLE: Final = bytes(_class_of(byte) for byte in range(256))


def _accepted_classes(allowed: str) -> int | None:
    """The classes whose union is exactly the bytes an ``X`` field of this set holds; None if there is none."""
    table = _ascii_table(allowed)
    accepted = 0
    for byte in range(256):
        if table[byte]:
            accepted |= _CLASS_TABLE[byte]
    exact = all(bool(table[byte]) == bool(_CLASS_TABLE[byte] & accepted) for byte in range(256))
    return accepted if exact else None


_DAYS_IN_MONTH: Final = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


# --------------------------------------------------------------------------- one block's columns


class _Block:
    """One block's records, with the per-field rows and numbers the checks share (computed once).

    The checks read the block *transposed*: :attr:`rows` is a ``record_length × n`` copy
    in which byte position ``p`` of every record is one contiguous row, made once per
    block (cache-blocked, ~0.2 ms for 512 KiB).  A field is then a few contiguous rows, and
    every operation on it runs over contiguous memory (a strided column of the ``n ×
    record_length`` matrix cost about ten times as much per operation, and a block takes
    dozens of them).  Per-record results are reductions over axis 0.  ``packed`` still
    reads the matrix: one strided 8-byte load per field.
    """

    _CHUNK: Final = 512
    """Records transposed at a time: the chunk's source and destination stay in cache."""

    def __init__(self, matrix: Matrix) -> None:
        self.matrix = matrix
        self.count = matrix.shape[0]
        self._rows: Matrix | None = None
        self._numbers: dict[tuple[int, int], npt.NDArray[Any]] = {}
        self._codes: dict[tuple[int, int], npt.NDArray[np.uint16]] = {}
        self._packed: dict[tuple[int, int], npt.NDArray[np.uint64]] = {}
        self._spaces: dict[tuple[int, int], Mask] = {}

    @property
    def rows(self) -> Matrix:
        if self._rows is None:
            rows = np.empty((self.matrix.shape[1], self.count), dtype=np.uint8)
            chunk = self._CHUNK
            for first in range(0, self.count, chunk):
                rows[:, first:first + chunk] = self.matrix[first:first + chunk].T
            self._rows = rows
        return self._rows

    def field(self, start: int, width: int) -> Matrix:
        """The field's bytes, ``width × n`` (row ``i``: byte ``i`` of the field in every record)."""
        return self.rows[start:start + width]

    def column(self, start: int, width: int) -> Matrix:
        """The field's bytes, ``n × width`` (a strided view of the matrix)."""
        return self.matrix[:, start:start + width]

    def digits(self, start: int, width: int) -> Mask:
        return (self.field(start, width) - np.uint8(0x30)) < 10

    def spaces(self, start: int, width: int) -> Mask:
        key = (start, width)
        if key not in self._spaces:
            self._spaces[key] = self.field(start, width) == 0x20
        return self._spaces[key]

    def number(self, start: int, width: int) -> npt.NDArray[Any]:
        """The field as a number (meaningful when it is digits; width ≤ 18), by Horner's rule over its rows."""
        key = (start, width)
        if key not in self._numbers:
            self._numbers[key] = _number(self.field(start, width))
        return self._numbers[key]

    def date_number(self, start: int) -> npt.NDArray[Any]:
        """``YYYYMMDD`` at ``start`` as the number ``YYYY * 10000 + MMDD`` (date order)."""
        key = (start, -8)
        if key not in self._numbers:
            self._numbers[key] = self.number(start, 4).astype(np.int64) * 10_000 + self.number(start + 4, 4)
        return self._numbers[key]

    def packed(self, start: int, width: int) -> npt.NDArray[np.uint64]:
        """The field's bytes as one big-endian integer per record (width ≤ 8): equal fields, equal integers."""
        key = (start, width)
        if key not in self._packed:
            if start + width >= 8:  # the 8 bytes ending with the field, masked to the field
                view = np.ndarray((self.count,), dtype=">u8", buffer=self.matrix, offset=start + width - 8,
                                  strides=(self.matrix.shape[1],))
                value = view.astype(np.uint64)
                if width < 8:
                    value &= np.uint64((1 << (8 * width)) - 1)
            else:
                lanes = np.zeros((self.count, 8), dtype=np.uint8)
                lanes[:, 8 - width:] = self.column(start, width)
                value = lanes.view(">u8").ravel().astype(np.uint64)
            self._packed[key] = value
        return self._packed[key]

    def wide_codes(self, start: int, width: int) -> npt.NDArray[np.uint16]:
        """A ``K`` field as ``lead << 8 | trail`` codes, ``width / 2 × n``."""
        key = (start, width)
        if key not in self._codes:
            field = self.field(start, width)
            codes = field[0::2].astype(np.uint16)
            codes <<= 8
            codes |= field[1::2]
            self._codes[key] = codes
        return self._codes[key]


def _number(rows: Matrix) -> npt.NDArray[Any]:
    """Each record's digits (``width × n`` rows) as a number; exact for digits, which the byte classes check.

    ``int32`` up to 8 digits, ``int64`` up to 18.  Other bytes give some number (wrapping
    silently), never an error: such records fail their class check anyway.
    """
    width = rows.shape[0]
    kind = np.int32 if width <= 8 else np.int64
    total = rows[0].astype(kind)
    for index in range(1, width):
        total *= 10
        total += rows[index]
    return total - kind(0x30 * int("1" * width))  # type: ignore[no-any-return]


def _pack_code(code: str, width: int) -> int:
    return int.from_bytes(code.ljust(width).encode("ascii"), "big")


def _code_check(start: int, width: int, codes: list[str]) -> FieldCheck:
    """The field's bytes are one of ``codes`` (each left-aligned and space-padded to the width)."""
    packed = [_pack_code(code, width) for code in codes if len(code) <= width]
    if width <= 2:  # a table indexed by the field's bytes
        table = np.zeros(1 << (8 * width), dtype=np.bool_)
        table[packed] = True
        if width == 1:
            return lambda block: np.take(table, block.rows[start])
        return lambda block: np.take(table, (block.rows[start].astype(np.intp) << 8) | block.rows[start + 1])
    wanted = np.array(packed, dtype=np.uint64)
    if len(packed) <= 4:
        def few(block: _Block) -> Mask:
            values = block.packed(start, width)
            found = np.zeros(block.count, dtype=np.bool_)
            for code in wanted:
                found |= values == code
            return found
        return few
    return lambda block: np.isin(block.packed(start, width), wanted)


# --------------------------------------------------------------------------- checks


FieldCheck = Callable[[_Block], Mask]
"""Per record: whether the check holds.  (Table look-ups are ``np.take``: 2–3 times as fast as
``table[index]`` over a block.)"""


def _kind_check(item: Field, start: int, ctx: RuleContext) -> tuple[int, FieldCheck | None]:
    """The field is well-formed for its kind (what the precise decoder accepts without a reason).

    Returns the byte classes each of its positions accepts (checked for all fields at once
    in :meth:`ColumnarPlan.check`) and the check of what classes cannot say, if any.
    """
    width = item.width
    if item.kind is Kind.N:
        return _DIGIT, None
    if item.kind is Kind.X:
        classes = _accepted_classes(item.allowed)
        table = _ascii_table(item.allowed)
        inner_spaces = " " in item.allowed

        def x_check(block: _Block) -> Mask:
            ok = _always(block) if classes is not None else _all_rows(np.take(table, block.field(start, width)))
            spaces = block.spaces(start, width)
            if inner_spaces:  # only a leading space before a value is wrong
                return ok & ~(spaces[0] & ~_all_rows(spaces))
            if width > 1:  # a space followed by a non-space: leading or inner
                ok &= ~_any_rows(spaces[:-1] > spaces[1:])
            return ok
        if classes is not None and width == 1:
            return classes, None  # one byte: no alignment to check
        return (classes if classes is not None else 0xFF), x_check
    if item.kind is Kind.K:
        codes_ok = wide_code_table(ctx.charset)

        def k_check(block: _Block) -> Mask:
            codes = block.wide_codes(start, width)
            ok = _all_rows(np.take(codes_ok, codes))
            leading = codes[0] == _PAD
            if not leading.any():
                return ok
            return ok & ~(leading & ~(codes == _PAD).all(axis=0))
        return 0xFF, k_check
    if item.kind is Kind.D:
        return _DIGIT, lambda block: _real_dates(block, start)

    def t_check(block: _Block) -> Mask:
        hours, minutes, seconds = (block.number(start + offset, 2) for offset in (8, 10, 12))
        return _real_dates(block, start) & (hours < 24) & (minutes < 60) & (seconds < 60)
    return _DIGIT, t_check


def _month_days_table() -> npt.NDArray[np.bool_]:
    """16,384 booleans indexed by ``MMDD``: a day of that month in a leap year (false from 10,000)."""
    table = np.zeros(1 << 14, dtype=np.bool_)
    for month in range(1, 13):
        days = int(_DAYS_IN_MONTH[month]) + (month == 2)
        table[month * 100 + 1:month * 100 + days + 1] = True
    return table


_MONTH_DAYS: Final = _month_days_table()


def _real_dates(block: _Block, start: int) -> Mask:
    """``YYYYMMDD`` (digits, checked by class) forming a real calendar date of years 0001–9999.

    ``MMDD`` is looked up in a table of the days of a leap year; only the 29ths of
    February are then checked against their year.  (No ``%`` over the block: an integer
    division costs ten times an addition.)
    """
    month_day = block.number(start + 4, 4)
    year = block.number(start, 4)
    ok = np.take(_MONTH_DAYS, month_day & 0x3FFF)  # (non-digits, which the byte classes reject, stay in range)
    ok &= year >= 1
    february_29 = np.flatnonzero(month_day == 229)
    if february_29.size:
        leap = year[february_29]
        ok[february_29] &= ((leap % 4 == 0) & (leap % 100 != 0)) | (leap % 400 == 0)
    return ok


def _blank(item: Field, start: int) -> FieldCheck | None:
    """The typed value is ``""`` (``X``: all spaces; ``K``: all padding); ``None`` when it never is."""
    # The field's kind check (always part of the record's verdict) lets a value start with a
    # space or the padding only when it is all spaces or padding: the first place tells.
    if item.kind is Kind.X:
        return lambda block: block.rows[start] == 0x20
    if item.kind is Kind.K:
        return lambda block: block.wide_codes(start, item.width)[0] == _PAD
    return None


def _all_rows(mask: Mask) -> Mask:
    """Per record (``mask`` is ``positions × n``): all rows true.  One flat test when all are (valid files)."""
    return np.True_ if mask.all() else mask.all(axis=0)


def _any_rows(mask: Mask) -> Mask:
    """Per record: any row true; one flat test when none is."""
    return mask.any(axis=0) if mask.any() else np.False_


def _never(block: _Block) -> Mask:
    return np.zeros(block.count, dtype=np.bool_)


def _always(block: _Block) -> Mask:
    return np.ones(block.count, dtype=np.bool_)


def _rule_check(rule: FieldRule, item: Field, start: int, layout: Layout, ctx: RuleContext) -> FieldCheck:
    """Whether ``rule`` holds for the field's typed value (its kind check assumed to hold)."""
    width = item.width
    if isinstance(rule, NotBlank) or isinstance(rule, Blank):
        blank = _blank(item, start)
        if isinstance(rule, Blank):
            return blank or _never
        return (lambda block: ~blank(block)) if blank is not None else _always
    if isinstance(rule, Codes) and item.kind in (Kind.N, Kind.X) and not item.as_int and width <= 8:
        return _code_check(start, width, [code for code in rule.table if code == code.rstrip(" ")])
    if isinstance(rule, IntRange) and item.kind is Kind.N and width <= 18:
        low, high = rule.low, rule.high
        return lambda block: (lambda number: (number >= low) & (number <= high))(block.number(start, width))
    if isinstance(rule, NotAllZero) and item.kind is Kind.N:
        if item.as_int:
            return _always
        return lambda block: _any_rows(block.field(start, width) != 0x30)
    if isinstance(rule, NotAllZero) and item.kind is Kind.X:
        return lambda block: _any_rows((block.field(start, width) != 0x30) & ~block.spaces(start, width))
    if isinstance(rule, NotAllLetters) and item.kind in (Kind.N, Kind.X):
        if item.as_int:
            return _never
        return lambda block: _any_rows(block.digits(start, width))
    if isinstance(rule, WideChars) and item.kind is Kind.K:
        return _wide_chars_check(rule, start, width, ctx)
    if isinstance(rule, LgCode) and item.kind is Kind.N and width == 6:
        return _lg_code_check(start, ctx)
    if isinstance(rule, Gs1CvsCode) and item.kind is Kind.X and width == 44:
        return lambda block: _gs1_ok(block, start)
    if isinstance(rule, NotInFuture) and item.kind in (Kind.D, Kind.T):
        today = int(ctx.today.strftime("%Y%m%d"))
        return lambda block: block.date_number(start) <= today
    return _DistinctValues(item, start, (rule,), ctx).check


def _wide_chars_check(rule: WideChars, start: int, width: int, ctx: RuleContext) -> FieldCheck:
    """Every character of the value (padding stripped from the right) is allowed; at most ``max_chars``."""
    table = wide_code_table(ctx.charset, rule.chars)

    def check(block: _Block) -> Mask:
        codes = block.wide_codes(start, width)
        not_pad = codes != _PAD
        in_value = np.logical_or.accumulate(not_pad[::-1], axis=0)[::-1]
        ok = ~_any_rows(in_value & ~np.take(table, codes))
        if rule.max_chars is not None:
            ok &= in_value.sum(axis=0) <= rule.max_chars
        return ok
    return check


_BAD, _PAD_CHAR, _RULE_OK, _OTHER_OK = range(4)
"""Classes of a ``K`` field's code: not of the charset, the padding, allowed by the field's
:class:`WideChars` rule (any character of the charset when there is none), of the charset only."""
_SHORT_WIDE_CHARS: Final = 4


def _short_wide_check(item: Field, start: int, ctx: RuleContext) -> FieldCheck | None:
    """A ``K`` field of up to 4 characters with only blank and :class:`WideChars` rules: one verdict table.

    Each code's class (2 bits) goes in its position's place of an 8-bit index; the verdict
    of each of the 4^n class sequences is worked out here, once, by the rules of
    :func:`_kind_check` and :func:`_rule_check` (charset; left-aligned, padding at the end;
    blank or not; the rule's characters before the trailing padding, at most ``max_chars``).
    """
    chars = item.width // 2
    wide_rules = [rule for rule in item.rules if isinstance(rule, WideChars)]
    if item.kind is not Kind.K or chars > _SHORT_WIDE_CHARS or len(wide_rules) > 1 \
            or not all(isinstance(rule, (NotBlank, Blank, WideChars)) for rule in item.rules):
        return None
    kind_ok = wide_code_table(ctx.charset)
    rule_ok = wide_code_table(ctx.charset, wide_rules[0].chars) if wide_rules else kind_ok
    classes = np.full(1 << 16, _OTHER_OK, dtype=np.uint8)
    classes[rule_ok] = _RULE_OK
    classes[_PAD] = _PAD_CHAR
    classes[~kind_ok] = _BAD
    pad_in_rule = bool(rule_ok[_PAD]) and bool(wide_rules)
    tables = [classes << np.uint8(2 * position) for position in range(chars)]
    verdicts = np.zeros(1 << (2 * chars), dtype=np.bool_)
    for sequence in itertools.product(range(4), repeat=chars):
        pads = [code == _PAD_CHAR for code in sequence]
        length = max((position + 1 for position, pad in enumerate(pads) if not pad), default=0)
        ok = _BAD not in sequence and not (pads[0] and length > 0)
        for rule in item.rules:
            if isinstance(rule, NotBlank):
                ok &= length > 0
            elif isinstance(rule, Blank):
                ok &= length == 0
            else:
                assert isinstance(rule, WideChars)
                ok &= all(code == _RULE_OK or (code == _PAD_CHAR and pad_in_rule) for code in sequence[:length])
                ok &= rule.max_chars is None or length <= rule.max_chars
        verdicts[sum(code << (2 * position) for position, code in enumerate(sequence))] = ok

    def check(block: _Block) -> Mask:
        codes = block.wide_codes(start, item.width)
        index = np.take(tables[0], codes[0])
        for position in range(1, chars):
            index |= np.take(tables[position], codes[position])
        return np.take(verdicts, index)
    return check


_LG_CHECK_DIGITS: Final = (11 - np.arange(1 << 12) % 11) % 10
"""The 全国地方公共団体コード check digit of each weighted sum (digits give 0–180; others any index)."""
_GS1_CHECK_DIGITS: Final = (10 - np.arange(1 << 10) % 10) % 10
"""The GS1 check digit of each ``3A + B`` (digits give 0–756)."""


def _lg_code_check(start: int, ctx: RuleContext) -> FieldCheck:
    if ctx.lg_code is not None and not re.fullmatch("[0-9]{6}", ctx.lg_code):
        return _never  # no record's digits equal it
    expected = None if ctx.lg_code is None else int(ctx.lg_code)

    def check(block: _Block) -> Mask:
        digits = block.field(start, 6).astype(np.int32) - 0x30
        total = 6 * digits[0]
        for index, weight in enumerate((5, 4, 3, 2), start=1):
            total += weight * digits[index]
        ok = np.take(_LG_CHECK_DIGITS, total & 0xFFF) == digits[5]
        if expected is not None:
            ok &= block.number(start, 6) == expected
        return ok
    return check


def _gs1_ok(block: _Block, start: int) -> Mask:
    """44 digits starting ``91`` with a valid GS1 check digit (positions counted from the right)."""
    digits = block.field(start, 44).astype(np.int32) - 0x30
    ok = _all_rows(block.digits(start, 44)) & (digits[0] == 9) & (digits[1] == 1)
    even = digits[42::-2].sum(axis=0)  # positions 2, 4, ... from the right
    odd = digits[41::-2].sum(axis=0)   # positions 3, 5, ...
    return ok & (np.take(_GS1_CHECK_DIGITS, (3 * even + odd) & 0x3FF) == digits[43])


class _DistinctValues:
    """Fallback for a rule without a column form: each distinct value checked once, precisely."""

    def __init__(self, item: Field, start: int, rules: tuple[FieldRule, ...], ctx: RuleContext) -> None:
        self.item, self.start, self.rules, self.ctx = item, start, rules, ctx
        self.good: set[bytes] = set()

    def check(self, block: _Block) -> Mask:
        from kei_gateway.layouts.precise import decode_field_unchanged

        column = np.ascontiguousarray(block.column(self.start, self.item.width))
        values = column.view(f"S{self.item.width}").ravel() if self.item.width else column.ravel()
        distinct, inverse = np.unique(values, return_inverse=True)
        verdicts = np.zeros(len(distinct), dtype=np.bool_)
        for index, value in enumerate(distinct.tolist()):
            raw = value.ljust(self.item.width, b"\x00")  # numpy strips trailing NULs of S values
            if raw in self.good:
                verdicts[index] = True
                continue
            parsed = decode_field_unchanged(self.item, raw, self.ctx)
            verdicts[index] = parsed is not None and all(rule.check(parsed, self.ctx) is None for rule in self.rules)
            if verdicts[index]:
                if len(self.good) >= _DISTINCT_LIMIT:
                    self.good.clear()
                self.good.add(raw)
        return verdicts[inverse.reshape(-1)]


def _record_rule_check(rule: object, layout: Layout, ctx: RuleContext) -> FieldCheck | None:
    offsets = layout.offsets
    if isinstance(rule, SumEquals):
        total, (first, second) = rule.total, rule.parts
        widths = [layout[key].width for key in (total, first, second)]
        if all(layout[key].kind is Kind.N and layout[key].as_int for key in (total, first, second)) \
                and max(widths) <= 18:
            return lambda block: (block.number(offsets[total], layout[total].width)
                                  == block.number(offsets[first], layout[first].width)
                                  + block.number(offsets[second], layout[second].width))
        raise TypeError(f"no column form for {rule!r}")  # pragma: no cover - the tables sum N fields
    if isinstance(rule, NotBefore):
        later, earlier = layout[rule.later], layout[rule.earlier]
        if later.kind is Kind.D and earlier.kind is Kind.D:
            return lambda block: block.date_number(offsets[later.key]) >= block.date_number(offsets[earlier.key])
        raise TypeError(f"no column form for {rule!r}")  # pragma: no cover - the tables compare D fields
    if isinstance(rule, When):
        cond = layout[rule.key]
        target = layout[rule.then_key]
        if cond.as_int or cond.kind not in (Kind.N, Kind.X) or cond.width > 8:
            raise TypeError(f"no column form for {rule!r}")  # pragma: no cover - codes are N or X fields
        chosen_by = _code_check(offsets[cond.key], cond.width, list(rule.codes))
        start = offsets[target.key]
        then_checks = [_rule_check(r, target, start, layout, ctx) for r in rule.then_rules]
        else_checks = [_rule_check(r, target, start, layout, ctx) for r in rule.else_rules]

        def when(block: _Block) -> Mask:
            chosen = chosen_by(block)
            ok = np.ones(block.count, dtype=np.bool_)
            for checks, rows in ((then_checks, chosen), (else_checks, ~chosen)):
                if not checks:
                    continue
                where = np.flatnonzero(rows)
                if 4 * where.size > block.count:  # most rows: checking all of them is cheaper than copying
                    for check in checks:
                        ok &= ~rows | check(block)
                    continue
                if not where.size:
                    continue
                # Only the rows the branch applies to, as a block of their own (e.g. the few paid at a
                # convenience store, for the GS1 check over 44 digits).
                part = _Block(np.ascontiguousarray(block.matrix[where]))
                for check in checks:
                    ok[where] &= check(part)
            return ok
        return when
    if isinstance(rule, Unique):
        return None
    raise TypeError(f"no column form for record rule {rule!r}")  # pragma: no cover - a new kind of record rule


def _class_checks(accepted: npt.NDArray[np.uint8]) -> list[FieldCheck]:
    """Per record: every byte is of a class its position accepts; one check per run of positions alike.

    A run of digit positions (``N``, ``D``, ``T`` fields and ``X`` fields of ``0-9``, which
    adjoin in most layouts) is one minimum and one maximum over its rows when the block is
    fine; other runs (an ``X`` field's set) have their bytes translated to classes.  ``K``
    positions accept any byte (their code table decides), and CR LF have checks of their own.
    Record by record only when a run has a byte it rejects.
    """
    checks: list[FieldCheck] = []
    position, size = 0, len(accepted)
    while position < size:
        classes = int(accepted[position])
        end = position + 1
        while end < size and int(accepted[end]) == classes:
            end += 1
        if classes == _DIGIT:
            checks.append(_digit_run(position, end))
        elif classes not in (0xFF, _EOL):
            checks.append(_class_run(position, end, classes))
        position = end
    return checks


def _digit_run(start: int, end: int) -> FieldCheck:
    def check(block: _Block) -> Mask:
        rows = block.rows[start:end]
        if rows.min() >= 0x30 and rows.max() <= 0x39:
            return np.True_
        return ((rows - np.uint8(0x30)) < 10).all(axis=0)
    return check


def _class_run(start: int, end: int, classes: int) -> FieldCheck:
    rejected = np.uint8(~classes & 0xFF)

    def check(block: _Block) -> Mask:
        found = np.frombuffer(block.rows[start:end].tobytes().translate(_CLASS_TABLE), dtype=np.uint8) & rejected
        if not found.any():
            return np.True_
        return ~found.reshape(end - start, block.count).any(axis=0)
    return check


@dataclass(frozen=True)
class ColumnarPlan:
    """The checks of one layout under one rule context, built once."""

    layout: Layout
    accepted: npt.NDArray[np.uint8]
    """Per byte position of a record: the byte classes it accepts (checked by the first checks)."""
    checks: tuple[FieldCheck, ...]
    wide_from: int = 0
    """``checks[wide_from:]`` are the ones that read a ``K`` field's bytes; those before read none."""

    def check(self, block: bytes, matrix: Matrix) -> Mask:
        """Per record of ``matrix`` (``block`` as ``n × record_length``): whether it is valid as it is."""
        columns = _Block(matrix)
        ok = np.ones(matrix.shape[0], dtype=np.bool_)
        for check in self.checks:
            ok &= check(columns)
        return ok

    def check_split(self, matrix: Matrix) -> tuple[Mask, Mask]:
        """:meth:`check`, and per record whether the checks that read no ``K`` field hold.

        A record that fails only the second kind can be made valid by changing its ``K``
        fields alone (the 外字 policy), and then :meth:`check_wide` of the changed record says.
        """
        columns = _Block(matrix)
        ok = np.ones(matrix.shape[0], dtype=np.bool_)
        for check in self.checks[:self.wide_from]:
            ok &= check(columns)
        narrow = ok.copy()
        for check in self.checks[self.wide_from:]:
            ok &= check(columns)
        return ok, narrow

    def check_wide(self, matrix: Matrix) -> Mask:
        """Per record: the checks that read a ``K`` field's bytes hold (those of :meth:`check_split` left out)."""
        columns = _Block(matrix)
        ok = np.ones(matrix.shape[0], dtype=np.bool_)
        for check in self.checks[self.wide_from:]:
            ok &= check(columns)
        return ok


@lru_cache(maxsize=64)
def columnar_plan(layout: Layout, ctx: RuleContext) -> ColumnarPlan:
    checks: list[FieldCheck] = []
    wide: list[FieldCheck] = []  # the checks that read a K field's bytes: last (see ColumnarPlan.check_split)
    accepted = np.zeros(layout.record_length, dtype=np.uint8)
    accepted[-2:] = _EOL
    for item in layout.fields:
        start = layout.offsets[item.key]
        short = _short_wide_check(item, start, ctx)
        if short is not None:  # kind and rules in one table look-up
            accepted[start:start + item.width] = 0xFF
            wide.append(short)
            continue
        classes, kind_check = _kind_check(item, start, ctx)
        accepted[start:start + item.width] = classes
        into = wide if item.kind is Kind.K else checks
        if kind_check is not None:
            into.append(kind_check)
        into.extend(_rule_check(rule, item, start, layout, ctx) for rule in item.rules)
    size = layout.record_length
    checks[:0] = _class_checks(accepted)  # K positions accept every class: no class check reads them
    checks.append(lambda block: block.rows[size - 2] == 0x0D)  # CR; the LF is the matrix's own
    for rule in layout.record_rules:
        check = _record_rule_check(rule, layout, ctx)
        if check is not None:
            reads = _record_rule_fields(rule)
            (wide if reads is None or any(layout[key].kind is Kind.K for key in reads) else checks).append(check)
    return ColumnarPlan(layout, accepted, tuple(checks + wide), len(checks))


def _record_rule_fields(rule: object) -> tuple[str, ...] | None:
    """The fields a record rule's check reads; None when not known (then it counts as reading a ``K`` field)."""
    if isinstance(rule, SumEquals):
        return (rule.total, *rule.parts)
    if isinstance(rule, NotBefore):
        return (rule.later, rule.earlier)
    if isinstance(rule, When):
        return (rule.key, rule.then_key)
    return None


def as_matrix(block: bytes, record_length: int, *, count_lines: bool = True) -> Matrix | None:
    """The block as an ``n × record_length`` matrix when it is whole records each ending in LF, else None.

    ``count_lines=False`` leaves out the check that no other byte is an LF (a pass over the
    block): the caller counts them only when :meth:`ColumnarPlan.check` rejects a record,
    since it accepts none with an LF inside.
    """
    count, rest = divmod(len(block), record_length)
    if rest or not count:
        return None
    matrix = np.frombuffer(block, dtype=np.uint8).reshape(count, record_length)
    if (count_lines and block.count(b"\n") != count) or not (matrix[:, record_length - 1] == 0x0A).all():
        return None
    return matrix
