"""The 消去報告 (deletion report): what one purge run erased, in CSV and text (pure rendering).

Each run appends to the day's two files, ``erasure-YYYYMMDD.csv`` and ``.txt`` (the
JST date of the run). The CSV is UTF-8 with a BOM and CRLF line ends (Excel opens it
as is, like ``results reconcile --csv``): the heading row once at the top of the file,
then one row per erased item. The text file has one block per run: when, the result,
the counts, what was kept and why, then every item under the same six headings.

A run that finished without a failure ends its block with the line
``完了時刻 (completed at): <ISO time>``: the daemon reads the newest of these to
know whether the purge due at ``gateway.purge_at`` was missed
(:func:`last_completed`). The reports hold file names, hashes and sizes, never a
file's contents.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kei_gateway.core.jst import JST
from kei_gateway.core.report_format import BOM, csv_rows, display_width

__all__ = ["ErasedItem", "PurgeRun", "HEADINGS", "CSV_BOM", "report_names", "render_csv", "render_text",
           "parse_completed", "COMPLETED_LABEL"]

HEADINGS = ("消去日時", "ファイル名", "SHA-256", "サイズ", "区分", "理由")
"""The report's columns: erased at (JST), file name, SHA-256, size (bytes), category, reason."""
CSV_BOM = BOM
COMPLETED_LABEL = "完了時刻 (completed at): "
_COMPLETED = re.compile(r"^" + re.escape(COMPLETED_LABEL) + r"(\S+)\s*$", re.MULTILINE)
_AREA_JA = {"store": "保管データ", "inbox": "受信フォルダ", "quarantine": "隔離フォルダ", "ledger": "台帳"}


@dataclass(frozen=True)
class ErasedItem:
    """One line of the report."""

    erased_at: datetime.datetime
    area: str
    name: str
    sha256: str | None
    size: int | None
    category: str
    reason: str


@dataclass(frozen=True)
class PurgeRun:
    """One purge run as the report tells it."""

    started_at: datetime.datetime
    finished_at: datetime.datetime
    items: Sequence[ErasedItem]
    errors: Sequence[str] = ()
    """What could not be erased (the next run tries again), in words fit for a log."""
    kept_failed: Sequence[int] = ()
    payment_results: int = 0
    """Payment results removed with their transfers' ledger rows."""
    actor: str = "kei-gateway"

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> dict[str, int]:
        counts = {area: 0 for area in _AREA_JA}
        for item in self.items:
            counts[item.area] = counts.get(item.area, 0) + 1
        return counts


def report_names(when: datetime.datetime) -> tuple[str, str]:
    """The day's report files (CSV, text) for a run at *when*: its JST date."""
    day = when.astimezone(JST).strftime("%Y%m%d")
    return f"erasure-{day}.csv", f"erasure-{day}.txt"


def _jst(when: datetime.datetime) -> str:
    return when.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S")


def render_csv(items: Iterable[ErasedItem], *, heading: bool) -> bytes:
    """CSV rows for *items* (UTF-8, CRLF); with *heading*, the BOM and the heading row first (a new file)."""
    rows: list[Sequence[object]] = [HEADINGS] if heading else []
    rows += [[_jst(item.erased_at), item.name, item.sha256 or "", "" if item.size is None else item.size,
              item.category, item.reason] for item in items]
    return csv_rows(rows, bom=heading)


def render_text(run: PurgeRun, *, title: bool) -> str:
    """The text block of one run; with *title*, the file's title first (a new file)."""
    lines: list[str] = []
    if title:
        lines += [f"消去報告 (deletion report) kei-gateway — {run.started_at.astimezone(JST).strftime('%Y-%m-%d')} (JST)",
                  "連携データの毎日削除の記録。ファイル名・SHA-256・サイズのみを記載し、内容は含みません。",
                  "(What the daily purge erased: names, hashes and sizes only, never contents.)", ""]
    counts = run.counts()
    lines += ["=" * 72,
              f"実行 (run): {_jst(run.started_at)} 〜 {_jst(run.finished_at)} JST  実行者 (actor): {run.actor}",
              "結果 (result): " + ("完了 (completed)" if run.ok else f"一部失敗 (failed: {len(run.errors)} item(s))"),
              "消去件数 (erased): " + ", ".join(f"{_AREA_JA[a]} ({a}) {counts.get(a, 0)}" for a in _AREA_JA)
              + f"; 合計 (total) {len(run.items)}"
              + (f"; 台帳から削除した納付結果 (payment results) {run.payment_results}" if run.payment_results else "")]
    if run.kept_failed:
        lines.append(f"保留 (kept): 送信失敗 (FAILED) の転送 {len(run.kept_failed)} 件の保管データは、運用者の再送または取消まで"
                     f"保持 (transfers {', '.join(str(i) for i in run.kept_failed)}: "
                     "'kei-gateway transfers retry ID' or 'transfers cancel ID --reason ...')")
    for error in run.errors:
        lines.append(f"失敗 (not erased, tried again at the next run): {error}")
    lines.append("")
    if not run.items:
        lines += ["消去対象なし (nothing was due for erasure)", ""]
    for number, item in enumerate(run.items, 1):
        values = (_jst(item.erased_at) + " JST", item.name, item.sha256 or "-",
                  "-" if item.size is None else f"{item.size:,} バイト (bytes)", item.category, item.reason)
        label_width = max(display_width(h) for h in HEADINGS)
        for index, (heading, value) in enumerate(zip(HEADINGS, values)):
            prefix = f"[{number}] " if index == 0 else " " * len(f"[{number}] ")
            lines.append(f"{prefix}{heading}{' ' * (label_width - display_width(heading))}: {value}")
        lines.append("")
    if run.ok:
        lines.append(COMPLETED_LABEL + run.finished_at.astimezone(JST).isoformat(timespec="seconds"))
        lines.append("")
    return "\n".join(lines) + "\n"


def parse_completed(text: str) -> datetime.datetime | None:
    """The last completed run's time in a report's text, or None."""
    found = None
    for match in _COMPLETED.finditer(text):
        try:
            found = datetime.datetime.fromisoformat(match.group(1))
        except ValueError:
            continue
    return found
