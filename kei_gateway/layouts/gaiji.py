"""The flow's 外字 policy applied to the characters of one ``K`` field (SPEC §2).

One function for both doors — a field read as CP932 bytes (extension characters
such as 髙 0xFBFC under ``charset = "jisx0208"``) and a field sliced out of a UTF-8
record (𠮷, 髙, a character with an IVS) — so the two cannot disagree:

``reject``
    the first 外字 makes the field invalid;
``substitute``
    each 外字 becomes 〓 (U+3013) and is counted;
``degenerate``
    each 外字 becomes its unique JIS X 0208 candidate (:func:`degenerate_char`: the
    MJ縮退マップ, else the 国税庁 JIS縮退マップ), recorded as a :class:`Replacement`;
    with no unique candidate ``gaiji_fallback`` (``reject`` or ``substitute``) decides.

Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from kei_gateway.layouts.degenerate import degenerate_char
from kei_gateway.layouts.encoding import GETA, Charset, GaijiPolicy

__all__ = ["GaijiFallback", "GAIJI_FALLBACKS", "GaijiOutcome", "Replacement", "apply_gaiji_policy"]

GaijiFallback = Literal["reject", "substitute"]
GAIJI_FALLBACKS: Final[tuple[GaijiFallback, ...]] = ("reject", "substitute")


class Replacement(NamedTuple):
    """One 縮退 in a field: what the character was and what it became (both personal: never logged)."""

    source: str
    target: str


@dataclass(frozen=True)
class GaijiOutcome:
    chars: list[str]
    """The field's characters after the policy (one string per input character cluster)."""
    problem: str | None = None
    """Why the field is invalid (a 外字 the policy rejects), or None."""
    problem_index: int = 0
    """Index into ``chars`` of the rejected character."""
    substituted: int = 0
    replacements: tuple[Replacement, ...] = ()


def _charset_name(charset: Charset) -> str:
    return "JIS X 0208" if charset == "jisx0208" else "CP932"


def apply_gaiji_policy(chars: Sequence[str], allowed: frozenset[str], *, charset: Charset, gaiji: GaijiPolicy,
                       fallback: GaijiFallback) -> GaijiOutcome:
    """Apply the policy to every character of ``chars`` not in ``allowed`` (see the module docstring).

    ``chars`` may hold character clusters (a base character with its variation
    selectors, see :func:`kei_gateway.layouts.degenerate.clusters`).
    """
    out = list(chars)
    substituted = 0
    replacements: list[Replacement] = []
    for index, char in enumerate(out):
        if char in allowed:
            continue
        if gaiji == "degenerate":
            target = degenerate_char(char)
            if target is not None and all(c in allowed for c in target):
                out[index] = target
                replacements.append(Replacement(char, target))
                continue
            if fallback == "reject":
                return GaijiOutcome(out, f"has a 外字 at character {index + 1} (outside {_charset_name(charset)}) "
                                         "with no unique 縮退 candidate in the MJ縮退マップ or the 国税庁 JIS縮退マップ; "
                                         "replace it in the tax system or set gaiji_fallback = \"substitute\"",
                                    index)
        elif gaiji == "reject":
            return GaijiOutcome(out, f"has a 外字 at character {index + 1} (outside {_charset_name(charset)}); "
                                     "replace it in the tax system or set gaiji = \"substitute\" or \"degenerate\"",
                                index)
        out[index] = GETA
        substituted += 1
    return GaijiOutcome(out, None, 0, substituted, tuple(replacements))
