"""CP932 (Windows-31J) character sets, byte patterns and UTF-8 → CP932 conversion.

The record files are CP932.  A ``K`` (full-width) field holds double-byte
characters only.  Which double-byte characters are allowed depends on the
flow's ``charset``:

``jisx0208`` (default)
    JIS X 0208 only: CP932 rows 1–84 (lead bytes 0x81–0x84, 0x88–0x9F,
    0xE0–0xEA).  The NEC special characters (①, ㈱, row 13, lead 0x87), the
    NEC-selected and IBM extended kanji (髙, 﨑; lead 0xED–0xEE, 0xFA–0xFC) are
    外字 (gaiji) like any character outside CP932.
``cp932``
    Every CP932 double-byte character except the user-defined area
    (lead 0xF0–0xF9, Unicode private use), which is always 外字.

Everything here is pure: tables are built once at import from Python's own
``cp932`` codec.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Final, Literal

__all__ = [
    "Charset",
    "GaijiPolicy",
    "InputEncoding",
    "CHARSETS",
    "GAIJI_POLICIES",
    "INPUT_ENCODINGS",
    "GETA",
    "IDEOGRAPHIC_SPACE",
    "JISX0208_CHARS",
    "CP932_WIDE_CHARS",
    "CP932_PAIRS",
    "MAPPING_VARIANTS",
    "allowed_wide_chars",
    "normalize_variants",
    "widen_halfwidth_katakana",
    "is_halfwidth_katakana",
]

Charset = Literal["jisx0208", "cp932"]
GaijiPolicy = Literal["reject", "substitute", "degenerate"]
InputEncoding = Literal["cp932", "utf-8"]

CHARSETS: Final[tuple[Charset, ...]] = ("jisx0208", "cp932")
GAIJI_POLICIES: Final[tuple[GaijiPolicy, ...]] = ("reject", "substitute", "degenerate")
INPUT_ENCODINGS: Final[tuple[InputEncoding, ...]] = ("cp932", "utf-8")

GETA: Final = "\u3013"
"""〓 (geta mark), the substitute for a 外字 under ``gaiji = "substitute"``."""
IDEOGRAPHIC_SPACE: Final = "\u3000"
"""The padding of ``K`` fields (CP932 0x8140)."""

_TRAIL_BYTES: Final = tuple(range(0x40, 0x7F)) + tuple(range(0x80, 0xFD))
_JISX0208_LEADS: Final = tuple(range(0x81, 0x85)) + tuple(range(0x88, 0xA0)) + tuple(range(0xE0, 0xEB))
_CP932_LEADS: Final = tuple(range(0x81, 0xA0)) + tuple(range(0xE0, 0xF0)) + tuple(range(0xFA, 0xFD))


def _decodable_pairs(leads: Iterable[int]) -> dict[bytes, str]:
    pairs: dict[bytes, str] = {}
    for lead in leads:
        for trail in _TRAIL_BYTES:
            code = bytes((lead, trail))
            try:
                pairs[code] = code.decode("cp932")
            except UnicodeDecodeError:
                continue
    return pairs


CP932_PAIRS: Final[dict[bytes, str]] = _decodable_pairs(_CP932_LEADS)
"""Every CP932 double-byte code (lead, trail) outside the user-defined area → the character it decodes to."""

JISX0208_CHARS: Final[frozenset[str]] = frozenset(
    char for code, char in CP932_PAIRS.items() if code[0] in _JISX0208_LEADS)
"""Characters of JIS X 0208 as CP932 decodes them (e.g. 〜 is U+FF5E)."""
CP932_WIDE_CHARS: Final[frozenset[str]] = frozenset(CP932_PAIRS.values())
"""Every CP932 double-byte character except the user-defined area."""


def allowed_wide_chars(charset: Charset) -> frozenset[str]:
    """The characters a ``K`` field accepts under ``charset``."""
    return JISX0208_CHARS if charset == "jisx0208" else CP932_WIDE_CHARS


MAPPING_VARIANTS: Final[dict[str, str]] = {
    "\u301c": "\uff5e",  # 〜 WAVE DASH → ～ FULLWIDTH TILDE
    "\u2016": "\u2225",  # ‖ DOUBLE VERTICAL LINE → ∥ PARALLEL TO
    "\u2212": "\uff0d",  # − MINUS SIGN → － FULLWIDTH HYPHEN-MINUS
    "\u00a2": "\uffe0",  # ¢ → ￠
    "\u00a3": "\uffe1",  # £ → ￡
    "\u00ac": "\uffe2",  # ¬ → ￢
}
"""Unicode code points that other converters (JIS/EUC style) produce for CP932 characters."""

_VARIANT_TABLE: Final = str.maketrans(MAPPING_VARIANTS)
_HALFWIDTH_KATAKANA_RUN: Final = re.compile("[\uff61-\uff9f]+")


_VARIANT_CHARS: Final = re.compile("[" + "".join(MAPPING_VARIANTS) + "]")


def normalize_variants(text: str) -> str:
    """Map the known UTF-8 mapping variants (〜 U+301C, ‖, −, ¢, £, ¬) to their CP932 code points."""
    if _VARIANT_CHARS.search(text) is None:  # str.translate is slow on long non-ASCII text
        return text
    return text.translate(_VARIANT_TABLE)


def is_halfwidth_katakana(char: str) -> bool:
    """Whether ``char`` is a half-width katakana or half-width Japanese punctuation (U+FF61–U+FF9F)."""
    return "\uff61" <= char <= "\uff9f"


def widen_halfwidth_katakana(text: str) -> str:
    """Half-width katakana → full-width, composing voiced marks (ｶﾞ → ガ); nothing else changes."""
    return _HALFWIDTH_KATAKANA_RUN.sub(lambda match: unicodedata.normalize("NFKC", match.group()), text)
