"""縮退 (degeneration): a character outside JIS X 0208 → its JIS X 0208 equivalent.

The one place that wraps ``jntajis-python``, the maintained implementation of the
two official maps (SPEC §2):

1. the **MJ縮退マップ** (文字情報基盤, all four of its schemes): a character's candidates
   are kept only if they are in JIS X 0208; exactly one such candidate is the answer;
2. else the **国税庁 JIS縮退マップ** (the NTA shrink transliteration): used when it maps the
   character to a JIS X 0208 string.

No unique candidate: ``None``, and the caller applies its ``gaiji_fallback``.  Pure, no I/O;
answers are cached per character (the maps are static).  Used by the layouts'
``gaiji = "degenerate"`` policy and by the AIRIS matcher's name and address comparison.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final, NamedTuple

import jntajis

from kei_gateway.layouts.encoding import JISX0208_CHARS

__all__ = ["MAP_VERSIONS", "Degeneration", "clusters", "degenerate_char", "degenerate_text", "is_variation_selector"]

_LIBRARY_VERSION: Final = getattr(jntajis, "__version__", "unknown")
_BUNDLED_MAPS: Final = {
    # From the library's Makefile (the tables it is built from), per release.
    "0.1.0": "MJ縮退マップ Ver.1.2.0 (MJShrinkMap.1.2.0.json) over MJ文字情報一覧表 Ver.006.01 (mji.00601.xlsx); "
             "国税庁 JIS縮退マップ Ver.1.0.0 (jissyukutaimap1_0_0.xlsx)",
}
MAP_VERSIONS: Final = (f"jntajis-python {_LIBRARY_VERSION}: "
                       + _BUNDLED_MAPS.get(_LIBRARY_VERSION, "MJ縮退マップ and 国税庁 JIS縮退マップ as it bundles them"))
"""The library and the map versions in use; recorded in docs/layouts.md and with each transfer's 縮退 list."""

_MJ_SCHEMES: Final = (
    jntajis.MJShrinkSchemeCombo.JIS_INCORPORATION_UCS_UNIFICATION_RULE
    | jntajis.MJShrinkSchemeCombo.INFERENCE_BY_READING_AND_GLYPH
    | jntajis.MJShrinkSchemeCombo.MOJ_NOTICE_582
    | jntajis.MJShrinkSchemeCombo.MOJ_FAMILY_REGISTER_ACT_RELATED_NOTICE
)
_NO_MAPPING: Final = "\ufffd"
_VARIATION_SELECTORS: Final = ("\U000e0100", "\U000e01ef", "\ufe00", "\ufe0f")


def is_variation_selector(char: str) -> bool:
    """Whether ``char`` is a variation selector (VS1–VS16, or an ideographic one: IVS, U+E0100–U+E01EF)."""
    return (_VARIATION_SELECTORS[0] <= char <= _VARIATION_SELECTORS[1]
            or _VARIATION_SELECTORS[2] <= char <= _VARIATION_SELECTORS[3])


def _in_jisx0208(text: str) -> bool:
    return bool(text) and all(char in JISX0208_CHARS for char in text)


@lru_cache(maxsize=65536)
def degenerate_char(char: str) -> str | None:
    """The unique JIS X 0208 replacement of *char* (one character, optionally with an IVS), or None.

    A character already in JIS X 0208 is returned as it is (an IVS on it is dropped).
    """
    base = char[0] if len(char) > 1 and all(is_variation_selector(c) for c in char[1:]) else char
    if _in_jisx0208(base):
        return base
    candidates = {c for c in jntajis.mj_shrink_candidates(base, _MJ_SCHEMES) if _in_jisx0208(c)}
    if len(candidates) == 1:
        return candidates.pop()
    if candidates:
        return None  # several MJ candidates: not unique, the fallback decides
    nta = jntajis.jnta_shrink_translit(base, _NO_MAPPING)
    if _NO_MAPPING not in nta and _in_jisx0208(nta):
        return nta
    return None


class Degeneration(NamedTuple):
    """One replacement: the character's position in the text, what it was, what it became."""

    position: int
    source: str
    target: str


def clusters(text: str) -> list[str]:
    """The text's characters, each with the variation selectors that follow it."""
    clusters: list[str] = []
    for char in text:
        if clusters and is_variation_selector(char):
            clusters[-1] += char
        else:
            clusters.append(char)
    return clusters


def degenerate_text(text: str) -> tuple[str, list[Degeneration], list[int]]:
    """*text* with every character outside JIS X 0208 degenerated.

    Returns the new text, the replacements made, and the indexes (into the returned
    clusters) of characters that have no unique candidate and were left as they are.
    """
    out: list[str] = []
    done: list[Degeneration] = []
    unresolved: list[int] = []
    for index, cluster in enumerate(clusters(text)):
        if cluster in JISX0208_CHARS:
            out.append(cluster)
            continue
        target = degenerate_char(cluster)
        if target is None:
            unresolved.append(index)
            out.append(cluster)
        else:
            if target != cluster:
                done.append(Degeneration(index, cluster, target))
            out.append(target)
    return "".join(out), done, unresolved
