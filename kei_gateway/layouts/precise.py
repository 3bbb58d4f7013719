"""The precise checker: one record's fields decoded, checked and named (SPEC §2).

It finds every error of a record with its field, byte offset and reason, applies the
flow's 外字 policy (:mod:`kei_gateway.layouts.gaiji`) and returns the bytes to pass on.
The fast path (:mod:`kei_gateway.layouts.columnar`) decides which records need it.
Pure; no I/O.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass, field as dataclass_field
from functools import lru_cache
from typing import Final

from kei_gateway.layouts.encoding import IDEOGRAPHIC_SPACE, allowed_wide_chars
from kei_gateway.layouts.errors import LayoutError
from kei_gateway.layouts.fields import Field, Kind, Layout, RuleContext, Unique, Value
from kei_gateway.layouts.gaiji import Replacement, apply_gaiji_policy
from kei_gateway.layouts.report import ValidationOptions

__all__ = ["FieldResult", "Record", "RecordCheck", "RecordChecker", "decode_field", "decode_field_unchanged", "shown"]

Record = dict[str, Value]
"""A parsed record: field key → typed value."""


@dataclass(frozen=True)
class FieldResult:
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


def decode_field(item: Field, raw: bytes, options: ValidationOptions) -> FieldResult:
    """Decode and check the encoding-level shape of one field; no rules yet."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        return FieldResult(None, "contains a NUL byte (0x00); the file is damaged or not a text file", nul)
    kind = item.kind
    if kind is Kind.N:
        if not (raw.isascii() and raw.isdigit()):
            return FieldResult(None, "must be digits 0-9, right-aligned and zero-padded", 0, _ascii_text(raw))
        text = raw.decode("ascii")
        return FieldResult(int(text) if item.as_int else text, output=raw)
    if kind is Kind.X:
        for position, byte in enumerate(raw):
            if not 0x20 <= byte <= 0x7E:
                what = "a control character" if byte < 0x20 or byte == 0x7F else "a non-ASCII (full-width?) byte"
                return FieldResult(None, f"has {what} at byte {position + 1} of the field; only half-width "
                                          f"{_describe_allowed(item.allowed)} is allowed", position,
                                   _ascii_text(raw).rstrip())
        value = raw.rstrip(b" ")
        if value and raw[:1] == b" ":
            return FieldResult(None, "is not left-aligned (starts with a space)", 0, _ascii_text(raw).strip())
        if _allowed_x(item.allowed + (" " if " " in item.allowed else "")).fullmatch(value) is None:
            return FieldResult(None, f"has characters outside {_describe_allowed(item.allowed)}"
                                      f"{'' if ' ' in item.allowed else ' (no spaces inside)'}", 0,
                                _ascii_text(raw).rstrip())
        return FieldResult(value.decode("ascii"), output=raw)
    if kind is Kind.K:
        try:
            text = raw.decode("cp932")
        except UnicodeDecodeError as exc:
            return FieldResult(None, "has bytes that are not valid CP932 (a double-byte character may be cut "
                                      "at the field's end)", exc.start, None)
        return _check_wide_text(text, options, raw)
    digits = raw.isascii() and raw.isdigit()
    if kind is Kind.D:
        if digits:
            try:
                day = datetime.date(int(raw[:4]), int(raw[4:6]), int(raw[6:8]))
                return FieldResult(day, output=raw)
            except ValueError:
                pass
        return FieldResult(None, "is not a real calendar date YYYYMMDD", 0, _ascii_text(raw))
    if digits:
        try:
            moment = datetime.datetime(int(raw[:4]), int(raw[4:6]), int(raw[6:8]),
                                       int(raw[8:10]), int(raw[10:12]), int(raw[12:14]))
            return FieldResult(moment, output=raw)
        except ValueError:
            pass
    return FieldResult(None, "is not a real date-time YYYYMMDDhhmmss", 0, _ascii_text(raw))


_INVALID_SINGLE_BYTE_CHARS: Final = frozenset("\x80\uf8f0\uf8f1\uf8f2\uf8f3")
"""What Python's cp932 codec makes of bytes 0x80, 0xA0, 0xFD–0xFF, which CP932 does not define."""


def _check_wide_text(text: str, options: ValidationOptions, raw: bytes) -> FieldResult:
    """Check the characters of a decoded ``K`` field; apply the 外字 policy (substitute, degenerate)."""
    byte_position = 0
    shape_problem: FieldResult | None = None
    for index, char in enumerate(text):
        if char in _INVALID_SINGLE_BYTE_CHARS:
            shape_problem = FieldResult(None, "has a byte that is not valid CP932", byte_position)
        elif len(char.encode("cp932")) == 1:
            shape_problem = FieldResult(None, f"has a half-width character at character {index + 1}; a full-width "
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
        return FieldResult(None, outcome.problem, 2 * outcome.problem_index, text.rstrip(IDEOGRAPHIC_SPACE))
    if shape_problem is not None:
        return shape_problem
    chars = outcome.chars
    value = "".join(chars).rstrip(IDEOGRAPHIC_SPACE)
    if value and chars[0] == IDEOGRAPHIC_SPACE:
        return FieldResult(None, "is not left-aligned (starts with a full-width space)", 0, text.strip(IDEOGRAPHIC_SPACE))
    output = raw
    if outcome.substituted or outcome.replacements:
        output = value.ljust(len(raw) // 2, IDEOGRAPHIC_SPACE).encode("cp932")
        if len(output) != len(raw):
            return FieldResult(None, f"is longer than its {len(raw)} bytes after 縮退 (a character became several); "
                                      "shorten it in the tax system", 0, text.rstrip(IDEOGRAPHIC_SPACE))
    return FieldResult(value, output=output, substituted=outcome.substituted, replacements=outcome.replacements)


def _shown(item: Field, value: Value) -> str:
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y%m%d%H%M%S")
    if isinstance(value, datetime.date):
        return value.strftime("%Y%m%d")
    return str(value)


@dataclass
class RecordCheck:
    values: Record
    errors: list[LayoutError]
    output: bytes
    substituted: int
    unique_key: bytes | None = None
    """The unique fields' raw bytes, joined (fixed width), when they decoded."""
    replacements: list[tuple[str, tuple[Replacement, ...]]] = dataclass_field(default_factory=list)
    """縮退 made, per field key."""


class RecordChecker:
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
              field_offsets: Sequence[int] | None = None) -> RecordCheck:
        errors: list[LayoutError] = []
        values: Record = {}
        outputs: list[bytes] = []
        substituted = 0
        replacements: list[tuple[str, tuple[Replacement, ...]]] = []
        for index, (item, start, end) in enumerate(self.slices):
            field_offset = offset + start if field_offsets is None else field_offsets[index]
            result = decode_field(item, data[start:end], self.options)
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
        return RecordCheck(values, errors, b"".join(outputs), substituted, unique_key, replacements)


def decode_field_unchanged(item: Field, raw: bytes, ctx: RuleContext) -> Value | None:
    """The field's typed value when it decodes with no reason and passes on unchanged (no 外字), else None."""
    result = decode_field(item, raw, ValidationOptions(today=ctx.today, charset=ctx.charset, lg_code=ctx.lg_code))
    if result.reason is not None or result.substituted or result.replacements:
        return None
    return result.value
