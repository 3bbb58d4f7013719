"""UTF-8 input (SPEC §2): a record sliced by characters, each field converted to CP932.

:func:`convert_utf8_record` is the precise conversion of one record (mapping variants,
half-width katakana widened in ``K`` fields, the 外字 policy); :func:`utf8_block_as_cp932`
converts a whole block at once for the fast path when that can only give the same bytes.
Pure; no I/O.
"""

from __future__ import annotations

import codecs
import re
from typing import Final, NamedTuple

from kei_gateway.layouts.degenerate import clusters
from kei_gateway.layouts.encoding import (
    IDEOGRAPHIC_SPACE, allowed_wide_chars, normalize_variants, widen_halfwidth_katakana,
)
from kei_gateway.layouts.errors import LayoutError
from kei_gateway.layouts.fields import Kind, Layout
from kei_gateway.layouts.gaiji import Replacement, apply_gaiji_policy
from kei_gateway.layouts.report import ValidationOptions

__all__ = ["Utf8Conversion", "convert_utf8_record", "utf8_block_as_cp932"]


class Utf8Conversion(NamedTuple):
    record: bytes | None
    """The CP932 record, ``None`` when a field cannot be converted."""
    field_offsets: list[int]
    """The input byte offset of each field."""
    errors: list[LayoutError]
    substituted: int
    """外字 replaced by 〓."""
    replacements: list[tuple[str, tuple[Replacement, ...]]]
    """縮退 made, per field key."""


def convert_utf8_record(layout: Layout, text: str, options: ValidationOptions, number: int,
                         offset: int) -> Utf8Conversion:
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
        ascii = chunk.isascii()
        byte_offset += len(chunk) if ascii else len(chunk.encode("utf-8"))
        if item.kind is not Kind.K:
            if not ascii:
                errors.append(LayoutError(number, field_offsets[-1], "has a non-ASCII character; this field takes "
                                          "half-width ASCII only", item.name, item.key, chunk, item.personal))
                continue
            pieces.append(chunk.encode("ascii"))
            continue
        chars = clusters(widen_halfwidth_katakana(normalize_variants(chunk)).rstrip(IDEOGRAPHIC_SPACE))
        problem = None
        checked = len(chars)
        joined = "".join(chars)
        # Every code point two bytes in CP932 (or none: a 外字): no half-width character, no need to look closer.
        for index, char in () if len(joined.encode("cp932", errors=_MARK_ERRORS)) == 2 * len(joined) \
                else enumerate(chars):
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
        return Utf8Conversion(None, field_offsets, errors, substituted, replacements)
    return Utf8Conversion(b"".join(pieces), field_offsets, errors, substituted, replacements)


_NEEDS_CONVERSION: Final = re.compile("[\uff61-\uff9f\ufeff]")
"""Half-width katakana (composed and widened in K fields) and BOMs: left to the precise path."""
_NEEDS_CONVERSION_UTF8: Final = re.compile(rb"\xef(?:\xbd[\xa1-\xbf]|\xbe[\x80-\x9f]|\xbb\xbf)")
"""The same characters in UTF-8 (searched in the bytes: the literal prefix makes it a fast scan)."""
_NOT_CP932: Final = "\ufffe"
"""A noncharacter standing in for them: it encodes to the mark below, like any 外字."""
_MARK_ERRORS: Final = "kei-gateway-mark"


def _mark(error: UnicodeError) -> tuple[bytes, int]:
    """Encode each character CP932 does not have as ``FF FF``: two bytes, never valid anywhere in a record."""
    assert isinstance(error, UnicodeEncodeError)
    return b"\xff\xff" * (error.end - error.start), error.end


codecs.register_error(_MARK_ERRORS, _mark)


def utf8_block_as_cp932(block: bytes) -> bytes | None:
    """A UTF-8 block converted in one go for the fast path; ``None`` when it is not UTF-8.

    Characters that need the precise conversion — 外字 outside CP932 (𠮷), half-width
    katakana, a BOM — become ``FF FF``, so the record holding them is rejected by the
    fast path and converted record by record (SPEC §2) from its UTF-8 line.  A record the
    fast path accepts is ASCII in its ``X``/``N``/``D``/``T`` fields and double-byte in its
    ``K`` fields, so slicing by characters and by bytes cut the same fields and the
    per-field conversion would produce exactly these bytes.
    """
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _NEEDS_CONVERSION_UTF8.search(block) is not None:
        text = _NEEDS_CONVERSION.sub(_NOT_CP932, text)
    # No normalize_variants(): Python's cp932 encoder already writes the mapping variants (〜 U+301C,
    # ‖, −, ¢, £, ¬) as the bytes of their CP932 characters (～ U+FF5E ...), which per-field
    # conversion gives too (a test checks this for the six).
    return text.encode("cp932", errors=_MARK_ERRORS)
