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
def wide_code_table(charset: Charset, predicate: Callable[[str], bool] | None = None) -> npt.NDArray[np.bool_]:
    """65,536 booleans: which double-byte codes a ``K`` field accepts (padding included) under ``charset``.

    With ``predicate``: only the codes of allowed characters it accepts (a :class:`WideChars` rule).
    """
    allowed = allowed_wide_chars(charset)
    table = np.zeros(1 << 16, dtype=np.bool_)
    for code, char in CP932_PAIRS.items():
        if char in allowed and (predicate is None or predicate(char)) and len(char.encode("cp932")) == 2:
            table[code[0] << 8 | code[1]] = True
    if predicate is None:
        table[_PAD] = True
    return table


@lru_cache(maxsize=None)
def _ascii_table(allowed: str) -> npt.NDArray[np.bool_]:
    """256 booleans: the bytes an ``X`` field with this allowed set may hold (space included)."""
    pattern = re.compile(b"[" + allowed.encode("ascii") + b"]")
    table = np.zeros(256, dtype=np.bool_)
    for byte in range(0x20, 0x7F):
        table[byte] = byte == 0x20 or pattern.fullmatch(bytes((byte,))) is not None
    return table


# Byte classes: one translate of the block gives each byte its class bit; each position of a
# record accepts a set of classes (digits for N/D/T, the field's set for X, CR/LF at the end,
# anything in K fields, whose pairs the code table checks).  CR and LF share a class: a
# block is only taken as a matrix when its LFs are exactly the records' last bytes.
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
    """One block's matrix, with the per-field views and numbers the checks share (computed once)."""

    def __init__(self, matrix: Matrix) -> None:
        self.matrix = matrix
        self.count = matrix.shape[0]
        self._numbers: dict[tuple[int, int], npt.NDArray[np.int64]] = {}

    def column(self, start: int, width: int) -> Matrix:
        return self.matrix[:, start:start + width]

    def digits(self, start: int, width: int) -> Mask:
        return (self.column(start, width) - np.uint8(0x30)) < 10

    def spaces(self, start: int, width: int) -> Mask:
        return self.column(start, width) == 0x20

    def number(self, start: int, width: int) -> npt.NDArray[np.int64]:
        """The field as a number (meaningful when it is digits; width ≤ 18)."""
        key = (start, width)
        if key not in self._numbers:
            digits = self.column(start, width).astype(np.int64) - 0x30
            self._numbers[key] = digits @ _POWERS[-width:]
        return self._numbers[key]

    def packed(self, start: int, width: int) -> npt.NDArray[np.uint64]:
        """The field's bytes as one big-endian integer per record (width ≤ 8)."""
        lanes = np.zeros((self.count, 8), dtype=np.uint8)
        lanes[:, 8 - width:] = self.column(start, width)
        return lanes.view(">u8").ravel().astype(np.uint64)

    def wide_codes(self, start: int, width: int) -> npt.NDArray[Any]:
        column = self.column(start, width)
        return (column[:, 0::2].astype(np.uint16) << 8) | column[:, 1::2]


_POWERS: Final = 10 ** np.arange(17, -1, -1, dtype=np.int64)


def _pack_code(code: str, width: int) -> int:
    return int.from_bytes(code.ljust(width).encode("ascii"), "big")


def _code_check(start: int, width: int, codes: list[str]) -> FieldCheck:
    """The field's bytes are one of ``codes`` (each left-aligned and space-padded to the width)."""
    packed = [_pack_code(code, width) for code in codes if len(code) <= width]
    if width <= 2:  # a table indexed by the field's bytes
        table = np.zeros(1 << (8 * width), dtype=np.bool_)
        table[packed] = True
        if width == 1:
            return lambda block: table[block.matrix[:, start]]
        return lambda block: table[(block.matrix[:, start].astype(np.intp) << 8) | block.matrix[:, start + 1]]
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
"""Per record: whether the check holds."""


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
            ok = _always(block) if classes is not None else _all_rows(table[block.column(start, width)])
            spaces = block.spaces(start, width)
            if inner_spaces:  # only a leading space before a value is wrong
                return ok & ~(spaces[:, 0] & ~_all_rows(spaces))
            if width > 1:  # a space followed by a non-space: leading or inner
                ok &= ~_any_rows(spaces[:, :-1] & ~spaces[:, 1:])
            return ok
        if classes is not None and width == 1:
            return classes, None  # one byte: no alignment to check
        return (classes if classes is not None else 0xFF), x_check
    if item.kind is Kind.K:
        codes_ok = wide_code_table(ctx.charset)

        def k_check(block: _Block) -> Mask:
            codes = block.wide_codes(start, width)
            ok = _all_rows(codes_ok[codes])
            pads = codes == _PAD
            return ok & ~(pads[:, 0] & ~_all_rows(pads))
        return 0xFF, k_check
    if item.kind is Kind.D:
        return _DIGIT, lambda block: _real_dates(block, start)

    def t_check(block: _Block) -> Mask:
        hours, minutes, seconds = (block.number(start + offset, 2) for offset in (8, 10, 12))
        return _real_dates(block, start) & (hours < 24) & (minutes < 60) & (seconds < 60)
    return _DIGIT, t_check


def _real_dates(block: _Block, start: int) -> Mask:
    """``YYYYMMDD`` (digits, checked by class) forming a real calendar date of years 0001–9999."""
    year, month, day = block.number(start, 4), block.number(start + 4, 2), block.number(start + 6, 2)
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    valid_month = (month >= 1) & (month <= 12)
    days = _DAYS_IN_MONTH[np.where(valid_month, month, 0)] + ((month == 2) & leap)
    return (year >= 1) & valid_month & (day >= 1) & (day <= days)


def _blank(item: Field, start: int) -> FieldCheck | None:
    """The typed value is ``""`` (``X``: all spaces; ``K``: all padding); ``None`` when it never is."""
    width = item.width
    if item.kind is Kind.X:
        return lambda block: _all_rows(block.spaces(start, width))
    if item.kind is Kind.K:
        return lambda block: _all_rows(block.wide_codes(start, width) == _PAD)
    return None


def _all_rows(mask: Mask) -> Mask:
    """Per row: all true.  When the whole block is (valid files), one flat test instead of a row-wise one."""
    return np.True_ if mask.all() else mask.all(axis=1)


def _any_rows(mask: Mask) -> Mask:
    """Per row: any true; one flat test when none is."""
    return mask.any(axis=1) if mask.any() else np.False_


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
        return lambda block: _any_rows(block.column(start, width) != 0x30)
    if isinstance(rule, NotAllZero) and item.kind is Kind.X:
        return lambda block: _any_rows((block.column(start, width) != 0x30) & ~block.spaces(start, width))
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
        return lambda block: block.number(start, 8) <= today
    return _DistinctValues(item, start, (rule,), ctx).check


def _wide_chars_check(rule: WideChars, start: int, width: int, ctx: RuleContext) -> FieldCheck:
    """Every character of the value (padding stripped from the right) is allowed; at most ``max_chars``."""
    table = wide_code_table(ctx.charset, rule.chars)

    def check(block: _Block) -> Mask:
        codes = block.wide_codes(start, width)
        not_pad = codes != _PAD
        in_value = np.logical_or.accumulate(not_pad[:, ::-1], axis=1)[:, ::-1]
        ok = ~_any_rows(in_value & ~table[codes])
        if rule.max_chars is not None:
            ok &= in_value.sum(axis=1) <= rule.max_chars
        return ok
    return check


def _lg_code_check(start: int, ctx: RuleContext) -> FieldCheck:
    expected = None if ctx.lg_code is None else np.uint64(_pack_code(ctx.lg_code, 6))

    def check(block: _Block) -> Mask:
        total = np.zeros(block.count, dtype=np.int64)
        for index, weight in enumerate((6, 5, 4, 3, 2)):
            total += weight * (block.matrix[:, start + index].astype(np.int64) - 0x30)
        ok = (11 - total % 11) % 10 == block.matrix[:, start + 5].astype(np.int64) - 0x30
        if expected is not None:
            ok &= block.packed(start, 6) == expected
        return ok
    return check


def _gs1_ok(block: _Block, start: int) -> Mask:
    """44 digits starting ``91`` with a valid GS1 check digit (positions counted from the right)."""
    column = block.column(start, 44).astype(np.int64) - 0x30
    ok = _all_rows(block.digits(start, 44)) & (column[:, 0] == 9) & (column[:, 1] == 1)
    even = column[:, 42::-2].sum(axis=1)  # positions 2, 4, ... from the right
    odd = column[:, 41::-2].sum(axis=1)   # positions 3, 5, ...
    return ok & ((10 - (3 * even + odd) % 10) % 10 == column[:, 43])


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
            return lambda block: block.number(offsets[later.key], 8) >= block.number(offsets[earlier.key], 8)
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
            for check in then_checks:
                ok &= ~chosen | check(block)
            for check in else_checks:
                ok &= chosen | check(block)
            return ok
        return when
    if isinstance(rule, Unique):
        return None
    raise TypeError(f"no column form for record rule {rule!r}")  # pragma: no cover - a new kind of record rule


@dataclass(frozen=True)
class ColumnarPlan:
    """The checks of one layout under one rule context, built once."""

    layout: Layout
    accepted: npt.NDArray[np.uint8]
    """Per byte position of a record: the byte classes it accepts."""
    checks: tuple[FieldCheck, ...]

    def check(self, block: bytes, matrix: Matrix) -> Mask:
        """Per record of ``matrix`` (``block`` as ``n × record_length``): whether it is valid as it is."""
        classes = np.frombuffer(block.translate(_CLASS_TABLE), dtype=np.uint8).reshape(matrix.shape)
        ok = np.ones(matrix.shape[0], dtype=np.bool_)
        ok &= _all_rows((classes & self.accepted) != 0)
        columns = _Block(matrix)
        for check in self.checks:
            ok &= check(columns)
        return ok


@lru_cache(maxsize=64)
def columnar_plan(layout: Layout, ctx: RuleContext) -> ColumnarPlan:
    checks: list[FieldCheck] = []
    accepted = np.zeros(layout.record_length, dtype=np.uint8)
    accepted[-2:] = _EOL
    for item in layout.fields:
        start = layout.offsets[item.key]
        classes, kind_check = _kind_check(item, start, ctx)
        accepted[start:start + item.width] = classes
        if kind_check is not None:
            checks.append(kind_check)
        checks.extend(_rule_check(rule, item, start, layout, ctx) for rule in item.rules)
    for rule in layout.record_rules:
        check = _record_rule_check(rule, layout, ctx)
        if check is not None:
            checks.append(check)
    return ColumnarPlan(layout, accepted, tuple(checks))


def as_matrix(block: bytes, record_length: int) -> Matrix | None:
    """The block as an ``n × record_length`` matrix when it is whole records each ending in LF, else None."""
    count, rest = divmod(len(block), record_length)
    if rest or not count:
        return None
    matrix = np.frombuffer(block, dtype=np.uint8).reshape(count, record_length)
    if block.count(b"\n") != count or not (matrix[:, record_length - 1] == 0x0A).all():
        return None
    return matrix

