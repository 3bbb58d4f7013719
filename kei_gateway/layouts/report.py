"""What validating a file gives: the options it ran with and the report (errors, counts, 縮退 list).

Pure data; no I/O.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field as dataclass_field
from typing import Final, NamedTuple

from kei_gateway.layouts.encoding import Charset, GaijiPolicy, InputEncoding
from kei_gateway.layouts.errors import LayoutError
from kei_gateway.layouts.fields import RuleContext
from kei_gateway.layouts.gaiji import GaijiFallback, Replacement

__all__ = ["DEFAULT_MAX_DEGENERATIONS", "DEFAULT_MAX_ERRORS", "Degenerated", "ValidationOptions", "ValidationReport",
           "parse_degenerations"]

DEFAULT_MAX_ERRORS: Final = 1000
DEFAULT_MAX_DEGENERATIONS: Final = 100_000
"""縮退 kept in a report's list (about 25 bytes each, packed); counting goes on past it."""


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
    """Errors kept in the report; the validation stops after the record that reaches it
    (duplicates aside: they are kept up to it and counted past it)."""
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
    """All errors found, including duplicates past ``max_errors`` (other errors stop the validation there)."""
    gaiji_substituted: int = 0
    """外字 replaced by 〓 under ``gaiji = "substitute"`` (or ``degenerate`` with fallback ``substitute``)."""
    degenerated: int = 0
    """外字 replaced by their 縮退 candidate under ``gaiji = "degenerate"``."""
    degeneration_lines: bytearray = dataclass_field(default_factory=bytearray, repr=False)
    """The first ``max_degenerations`` 縮退, packed as UTF-8 lines ``record TAB key TAB from TAB to``.

    Personal data (characters of names): keep it encrypted, never log it.  Read it with
    :attr:`degenerations`.
    """

    stopped_at: int | None = None
    """Set when validation stopped early, after this record: ``max_errors`` errors other than
    duplicates were found (bounded time on any input), or a record had no CR LF within its
    layout's width (bounded memory).  The records after it were not read."""
    uniqueness_pending: bool = False
    """Suspect keys are waiting for :meth:`Validator.rescan`; until then the report is not final."""

    @property
    def valid(self) -> bool:
        return self.error_count == 0 and not self.uniqueness_pending

    @property
    def truncated(self) -> bool:
        return self.error_count > len(self.errors)

    @property
    def stop_note(self) -> str:
        """``""``, or a sentence saying where validation stopped (for the operator and the errors file)."""
        if self.stopped_at is None:
            return ""
        return (f"validation stopped after record {self.stopped_at}; the rest of the file was not checked "
                "(fix the errors listed and send the whole file again)")

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


