"""UTF-8 input (SPEC §2): a record sliced by characters, each field converted to CP932.

:func:`convert_utf8_record` is the precise conversion of one record (mapping variants,
half-width katakana widened in ``K`` fields, the 外字 policy); :func:`utf8_block_as_cp932`
converts a whole block at once for the fast path when that can only give the same bytes.
Pure; no I/O.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from kei_gateway.layouts.columnar import wide_code_table
from kei_gateway.layouts.degenerate import clusters, degenerate_char, is_variation_selector
from kei_gateway.layouts.encoding import (
    GETA, IDEOGRAPHIC_SPACE, MAPPING_VARIANTS, Charset, GaijiPolicy, allowed_wide_chars, normalize_variants,
    widen_halfwidth_katakana,
)
from kei_gateway.layouts.errors import LayoutError
from kei_gateway.layouts.fields import Kind, Layout
from kei_gateway.layouts.gaiji import GaijiFallback, Replacement, apply_gaiji_policy
from kei_gateway.layouts.report import ValidationOptions

__all__ = ["Utf8Block", "Utf8Conversion", "convert_utf8_record", "convert_wide_in_place", "utf8_block",
           "utf8_block_as_cp932"]


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
_NOT_CP932: Final = "\ufffe"
"""A noncharacter standing in for them: it encodes to the mark below, like any 外字."""
_MARK_ERRORS: Final = "kei-gateway-mark"


def _mark(error: UnicodeError) -> tuple[bytes, int]:
    """Encode each character CP932 does not have as ``FF FF``: two bytes, never valid anywhere in a record."""
    assert isinstance(error, UnicodeEncodeError)
    return b"\xff\xff" * (error.end - error.start), error.end


codecs.register_error(_MARK_ERRORS, _mark)


def _needs_conversion(block: bytes) -> bool:
    """Whether a block of UTF-8 holds half-width katakana or a BOM (``EF BD A1``–``EF BE 9F``, ``EF BB BF``).

    A memchr when it has no ``EF`` byte at all, else one numpy pass: a bytes regex took ~70 µs a
    256 KiB block without any, ~250 µs with full-width forms.
    """
    if b"\xef" not in block:
        return False
    data = np.frombuffer(block, dtype=np.uint8)
    lead = np.flatnonzero(data[:-2] == 0xEF)  # valid UTF-8: two bytes follow every EF
    second, third = data[lead + 1], data[lead + 2]
    return bool((((second == 0xBD) & (third >= 0xA1)) | ((second == 0xBE) & (third <= 0x9F))
                 | ((second == 0xBB) & (third == 0xBF))).any())


_STAND_IN: Final = 0x0800
_STAND_INS: Final = 0x0800
"""U+0800–U+0FFF (Samaritan … Tibetan: outside CP932, so they encode to the mark, and three UTF-8
bytes led by E0, which a Japanese file hardly ever holds) stand in for the characters beyond
U+FFFF of a block, up to 2,048 of them."""


def _without_astral(block: bytes, highest: int) -> tuple[bytes, tuple[str, ...]]:
    """The block with each character beyond U+FFFF (𠮷: four UTF-8 bytes) as a stand-in, and those characters.

    Both encode to the same mark, and the decoded block stays two bytes a character: one
    such character made Python's ``str`` of the whole block four bytes a character, and its
    decoding and encoding cost 35 % more.  Unchanged (and no characters) when there are more
    than the stand-ins, when the block holds a stand-in itself, or when it is not UTF-8 there
    (its own decoding then says so).
    """
    if b"\xe0" in block:  # (one byte: a memchr)
        return block, ()
    if highest == 0xF0:  # planes 1–3 (CJK extensions B–G) only: found by memchr too
        leads: list[int] = []
        lead = block.find(b"\xf0")
        while lead >= 0 and len(leads) <= _STAND_INS:
            leads.append(lead)
            lead = block.find(b"\xf0", lead + 1)
    else:
        leads = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) >= 0xF0).tolist()
    if len(leads) > _STAND_INS:
        return block, ()
    pieces: list[bytes] = []
    chars: list[str] = []
    done = 0
    for lead in leads:
        try:
            char = block[lead:lead + 4].decode("utf-8")
        except UnicodeDecodeError:
            return block, ()
        if lead < done or len(char) != 1:
            return block, ()
        pieces += [block[done:lead], chr(_STAND_IN + len(chars)).encode("utf-8")]
        chars.append(char)
        done = lead + 4
    pieces.append(block[done:])
    return b"".join(pieces), tuple(chars)


class Utf8Block(NamedTuple):
    """A UTF-8 block converted in one go for the fast path (:func:`utf8_block`)."""

    cp932: bytes
    """The block in CP932, each character that needs the precise conversion as ``FF FF``."""
    text: str
    """The block decoded, the half-width katakana and BOMs as U+FFFE, characters beyond U+FFFF as
    stand-ins (:meth:`char` gives them back)."""
    astral: tuple[str, ...]

    def char(self, char: str) -> str:
        """The block's character that ``char`` (one of :attr:`text`) is."""
        if self.astral and "\u0800" <= char <= "\u0fff":
            return self.astral[ord(char) - _STAND_IN]
        return char


def utf8_block(block: bytes) -> Utf8Block | None:
    """A UTF-8 block converted in one go for the fast path; ``None`` when it is not UTF-8.

    Characters that need the precise conversion — 外字 outside CP932 (𠮷), half-width
    katakana, a BOM — become ``FF FF``, so the record holding them is rejected by the
    fast path and converted (SPEC §2): in place (:func:`convert_wide_in_place`) or record
    by record from its UTF-8 line.  A record the fast path accepts is ASCII in its
    ``X``/``N``/``D``/``T`` fields and double-byte in its ``K`` fields, so slicing by
    characters and by bytes cut the same fields and the per-field conversion would produce
    exactly these bytes.
    """
    astral: tuple[str, ...] = ()
    highest = int(np.frombuffer(block, dtype=np.uint8).max())
    if highest >= 0xF0:
        block, astral = _without_astral(block, highest)
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _needs_conversion(block):
        text = _NEEDS_CONVERSION.sub(_NOT_CP932, text)
    # No normalize_variants(): Python's cp932 encoder already writes the mapping variants (〜 U+301C,
    # ‖, −, ¢, £, ¬) as the bytes of their CP932 characters (～ U+FF5E ...), which per-field
    # conversion gives too (a test checks this for the six).
    return Utf8Block(text.encode("cp932", errors=_MARK_ERRORS), text, astral)


def utf8_block_as_cp932(block: bytes) -> bytes | None:
    """:attr:`Utf8Block.cp932` of :func:`utf8_block`, or ``None`` when the block is not UTF-8."""
    converted = utf8_block(block)
    return None if converted is None else converted.cp932


class _WidePlaces(NamedTuple):
    """Each double-byte place of a layout's ``K`` fields, in record order."""

    lead: npt.NDArray[np.intp]
    """The byte offset of its lead byte in a CP932 record."""
    lead_list: list[int]
    char: list[int]
    """The index of its character in the UTF-8 record (fields before it are one character a byte or a pair)."""
    key: list[str]
    """Its field's key."""
    chars: int
    """Characters in a record."""


def _convert_places(data: bytes, text: str, columns: list[int], places: _WidePlaces, options: ValidationOptions,
                    original: Callable[[str], str]) -> Utf8Conversion | None:
    """One record of :func:`convert_wide_in_place`: its places ``columns`` replaced, or None."""
    record = bytearray(data)
    substituted = 0
    replacements: list[tuple[str, list[Replacement]]] = []
    for column in columns:
        lead = places.lead_list[column]
        answer = _policy_answer(original(text[places.char[column]]), options.charset, options.gaiji,
                                options.gaiji_fallback)
        if answer is None or answer[0] != record[lead:lead + 2]:
            return None  # left to the whole-record conversion, or the places are off by one
        record[lead:lead + 2] = answer[1]
        if answer[2] is None:
            substituted += 1
            continue
        key = places.key[column]
        if not replacements or replacements[-1][0] != key:
            replacements.append((key, []))
        replacements[-1][1].append(answer[2])
    return Utf8Conversion(bytes(record), [], [], substituted, [(key, tuple(done)) for key, done in replacements])


@lru_cache(maxsize=4096)
def _policy_answer(char: str, charset: Charset, gaiji: GaijiPolicy,
                   fallback: GaijiFallback) -> tuple[bytes, bytes, Replacement | None] | None:
    """What :func:`convert_utf8_record` makes of ``char``, a 外字 alone at a ``K`` place, if it can be done in place.

    The bytes the block conversion gave it (``FF FF`` outside CP932), the bytes it becomes,
    and its :class:`Replacement` (None: 〓, counted as substituted).  None when the record
    must be converted as a whole: half-width kana or a BOM (U+FFFE in the block's text), a
    variation selector, a 縮退 of several characters, a 外字 the policy rejects.
    """
    if char == _NOT_CP932 or is_variation_selector(char):
        return None
    source = char.encode("cp932", errors=_MARK_ERRORS)
    char = MAPPING_VARIANTS.get(char, char)
    allowed = allowed_wide_chars(charset)
    target = degenerate_char(char) if gaiji == "degenerate" else None
    if target is not None and all(c in allowed for c in target):
        if len(target) != 1:
            return None  # a sequence: the whole-record conversion fits it or names the field
        return source, target.encode("cp932"), Replacement(char, target)
    if gaiji == "substitute" or fallback == "substitute":
        return source, GETA.encode("cp932"), None
    return None  # rejected: the precise path names it


@lru_cache(maxsize=64)
def _wide_places(layout: Layout) -> _WidePlaces:
    lead: list[int] = []
    char: list[int] = []
    key: list[str] = []
    chars = 0
    for item in layout.fields:
        if item.kind is Kind.K:
            start = layout.offsets[item.key]
            lead.extend(range(start, start + item.width, 2))
            char.extend(range(chars, chars + item.width // 2))
            key.extend([item.key] * (item.width // 2))
        chars += item.chars
    return _WidePlaces(np.array(lead, dtype=np.intp), lead, char, key, chars)


def convert_wide_in_place(layout: Layout, options: ValidationOptions, records: npt.NDArray[np.uint8],
                          text_of: Callable[[int], str | None],
                          original: Callable[[str], str] = str) -> dict[int, Utf8Conversion]:
    """The 外字 policy applied in place to CP932 records of :func:`utf8_block` (SPEC §2).

    ``records`` (``n × record_length``, CR LF included) are records the fast path rejected
    although every check that reads no ``K`` field held (:meth:`ColumnarPlan.check_split`):
    their ``X``/``N``/``D``/``T`` fields are ASCII, so each byte there is one character of the
    UTF-8 record.  Their ``K`` places whose code is not of the charset (a 外字 marked ``FF FF``,
    or an extension kanji such as 髙 under ``jisx0208``) are found column-wise; each is
    replaced by what :func:`convert_utf8_record` would give — the unique 縮退 candidate, or
    〓 under ``gaiji = "substitute"`` or ``gaiji_fallback = "substitute"`` — read from the
    character at its place in the UTF-8 record (``text_of(i)``: record ``i`` without CR LF,
    or None, from :attr:`Utf8Block.text`, whose stand-ins ``original`` gives back, e.g.
    :meth:`Utf8Block.char`).  The place's character must encode to the place's bytes: a one-byte
    character in a ``K`` field puts the places after it off by one, and its own place holds
    its byte and the next one's, so it never passes.

    Returns, per record converted, its conversion (``record``: the CP932 bytes without CR LF,
    ``replacements`` and ``substituted`` as :func:`convert_utf8_record` gives them). A record is
    left out — for the whole-record conversion — when a place holds a character it would
    treat otherwise: a variation selector (the pair degenerates as one), a half-width kana
    (widened), a 縮退 of several characters (the field's length), a 外字 the policy rejects.
    The records' ``K`` checks are still to be made on the new bytes (:meth:`ColumnarPlan.check_wide`).
    """
    if options.gaiji == "reject" or not len(records):
        return {}
    places = _wide_places(layout)
    if not len(places.lead):
        return {}
    table = wide_code_table(options.charset)
    codes = records[:, places.lead].astype(np.intp)
    codes <<= 8
    codes |= records[:, places.lead + 1]
    rows, columns = np.nonzero(~np.take(table, codes))
    converted: dict[int, Utf8Conversion] = {}
    pairs = list(zip(rows.tolist(), columns.tolist()))
    first = 0
    while first < len(pairs):
        row = pairs[first][0]
        last = first + 1
        while last < len(pairs) and pairs[last][0] == row:
            last += 1
        text = text_of(row)
        if text is not None and len(text) == places.chars:
            conversion = _convert_places(records[row, :-2].tobytes(), text, [column for _, column in pairs[first:last]],
                                         places, options, original)
            if conversion is not None:
                converted[row] = conversion
        first = last
    return converted
