"""Reconciliation of MPN payment results (SPEC §2.4, §8): 速報 against 確報 and 速報取消. Pure.

A 速報 (kind 1) is *confirmed* by the 確報 (kind 2) with the same match key and an
equal amount key, *cancelled* by the 速報取消 (kind 3) with the same match key,
*pending* while it has neither and is younger than ``unconfirmed_after`` (measured
from its 収納日時), and *unconfirmed* (overdue) after that. A 確報 whose amount key
differs from its 速報's is a *mismatch*; a 速報 with both a 確報 and a 取消 is a
*conflict*; a 確報 or 取消 with no 速報 is an orphan. Everything but confirmed,
cancelled and pending is a :class:`Problem` for a person to look at.

Only digests, codes, times and the masked slip hint go in and come out.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

from kei_gateway.core.jst import JST
from kei_gateway.core.report_format import BOM, csv_rows, display_width, ljust, rjust
from kei_gateway.core.results.identity import KIND_CANCEL, KIND_FINAL, KIND_PROVISIONAL, KeptResult
from kei_gateway.layouts.codes import CHANNELS, TAX_ITEMS

__all__ = ["StoredResult", "ChannelSummary", "Problem", "ReconcileReport", "PROBLEMS", "MEASURES",
           "reconcile", "unconfirmed_counts", "render_text", "render_csv", "channel_name", "CSV_BOM"]

CSV_BOM = BOM
"""The CSV starts with a UTF-8 BOM so that Excel (the tax division's tool) reads it as UTF-8, not CP932."""


@dataclass(frozen=True)
class StoredResult(KeptResult):
    """One row of ``payment_results`` as the ledger returns it: what is kept of the result (nothing personal),
    the transfer that brought it, the relay that wrote it and when it was recorded."""

    transfer_id: int
    relay_name: str | None
    recorded_at: datetime.datetime
    """When the gateway recorded it, aware (UTC)."""


MEASURES: tuple[tuple[str, str], ...] = (
    ("provisional", "速報 (provisional)"),
    ("final", "確報 (final)"),
    ("cancel", "速報取消 (cancellation)"),
    ("confirmed", "確認済 (confirmed)"),
    ("cancelled", "取消済 (cancelled)"),
    ("pending", "確報待ち (pending)"),
    ("unconfirmed", "未確報・期限超過 (unconfirmed, overdue)"),
    ("mismatched", "金額不一致 (amount mismatch)"),
    ("conflicting", "確報と取消の両方 (final and cancelled)"),
    ("final_without_provisional", "速報なしの確報 (final without provisional)"),
    ("cancel_without_provisional", "速報なしの取消 (cancellation without provisional)"),
)
"""The counted columns of a :class:`ChannelSummary`: field name and heading, in display order."""

PROBLEMS: dict[str, str] = {
    "unconfirmed": "未確報: 期限を過ぎても確報なし (unconfirmed: no final after the limit)",
    "mismatched": "金額不一致: 速報と確報の支払金額が違う (amount of provisional and final differ)",
    "conflicting": "確報と速報取消の両方あり (both final and cancellation)",
    "final_without_provisional": "速報なしの確報 (final without provisional)",
    "cancel_without_provisional": "速報なしの速報取消 (cancellation without provisional)",
}
"""Problem code → what it says, in Japanese and English."""


def channel_name(code: str) -> str:
    """チャネル区分 name of SPEC §2.4, or ``不明`` for a code outside the table."""
    return CHANNELS.get(code, "不明 (unknown)")


@dataclass(frozen=True)
class ChannelSummary:
    """Counts for one チャネル区分 (or for all of them, with ``channel == ""``)."""

    channel: str
    channel_name: str
    provisional: int = 0
    final: int = 0
    cancel: int = 0
    confirmed: int = 0
    cancelled: int = 0
    pending: int = 0
    unconfirmed: int = 0
    mismatched: int = 0
    conflicting: int = 0
    final_without_provisional: int = 0
    cancel_without_provisional: int = 0

    def count(self, measure: str) -> int:
        value = getattr(self, measure)
        assert isinstance(value, int)
        return value


@dataclass(frozen=True)
class Problem:
    """One result a person should look up in the tax system."""

    problem: str
    """A key of :data:`PROBLEMS`."""
    slip_hint: str
    channel: str
    tax_item: str
    received_at: datetime.datetime

    @property
    def description(self) -> str:
        return PROBLEMS[self.problem]


@dataclass(frozen=True)
class ReconcileReport:
    scope: str
    """What was reconciled, e.g. ``収納日 2026-11-21``."""
    generated_at: datetime.datetime
    unconfirmed_after: float
    """Seconds after its 収納日時 when a 速報 without 確報 is overdue."""
    channels: tuple[ChannelSummary, ...]
    total: ChannelSummary
    problems: tuple[Problem, ...]

    @property
    def needs_attention(self) -> bool:
        return bool(self.problems)


_COUNTED = tuple(f.name for f in fields(ChannelSummary) if f.type == "int")


def _groups(rows: Iterable[StoredResult]) -> dict[str, dict[int, list[StoredResult]]]:
    groups: dict[str, dict[int, list[StoredResult]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[row.match_key][row.kind].append(row)
    return groups


def _outcomes(kinds: dict[int, list[StoredResult]], now: datetime.datetime,
              unconfirmed_after: float) -> list[tuple[str, StoredResult]]:
    """What one match group amounts to: (outcome, the row it is about) pairs."""
    provisional, final, cancel = (kinds.get(k, []) for k in (KIND_PROVISIONAL, KIND_FINAL, KIND_CANCEL))
    outcomes: list[tuple[str, StoredResult]] = []
    if not provisional:
        outcomes += [("final_without_provisional", row) for row in final]
        outcomes += [("cancel_without_provisional", row) for row in cancel]
        return outcomes
    for row in provisional:  # one per match key, as identity keys are unique; more only across key rotation
        if final and cancel:
            outcomes.append(("conflicting", row))
        elif cancel:
            outcomes.append(("cancelled", row))
        elif final:
            equal = any(f.amount_key == row.amount_key for f in final)
            outcomes.append(("confirmed" if equal else "mismatched", row))
        elif (now - row.received_at).total_seconds() > unconfirmed_after:
            outcomes.append(("unconfirmed", row))
        else:
            outcomes.append(("pending", row))
    return outcomes


def reconcile(rows: Iterable[StoredResult], now: datetime.datetime, unconfirmed_after: float,
              scope: str = "") -> ReconcileReport:
    """Reconcile *rows* (all results of a period: a 確報 shares its 速報's 収納日時, so a day is complete).

    *now* is aware; *unconfirmed_after* in seconds.
    """
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_COUNTED, 0))
    kind_measure = {KIND_PROVISIONAL: "provisional", KIND_FINAL: "final", KIND_CANCEL: "cancel"}
    problems: list[Problem] = []
    for kinds in _groups(rows).values():
        for kind, members in kinds.items():
            for row in members:
                if kind in kind_measure:
                    counts[row.channel][kind_measure[kind]] += 1
        for outcome, row in _outcomes(kinds, now, unconfirmed_after):
            counts[row.channel][outcome] += 1
            if outcome in PROBLEMS:
                problems.append(Problem(outcome, row.slip_hint, row.channel, row.tax_item,
                                        row.received_at.astimezone(JST)))
    channels = tuple(ChannelSummary(code, channel_name(code), **counts[code]) for code in sorted(counts))
    total = ChannelSummary("", "合計 (total)", **{m: sum(c.count(m) for c in channels) for m in _COUNTED})
    problems.sort(key=lambda p: (p.received_at, p.channel, p.problem, p.slip_hint))
    return ReconcileReport(scope, now, unconfirmed_after, channels, total, tuple(problems))


def unconfirmed_counts(rows: Iterable[StoredResult], now: datetime.datetime, limit: float) -> dict[str, int]:
    """速報 with neither 確報 nor 取消, split by age: for ``kei_gateway_unconfirmed_results{age}``.

    ``pending`` are younger than *limit* seconds (since their 収納日時), ``overdue`` older.
    *rows* may be every result of a period or only the open 速報
    (:meth:`kei_gateway.adapters.ledger.results.ResultLedger.open_provisional`).
    """
    result = {"pending": 0, "overdue": 0}
    for kinds in _groups(rows).values():
        for outcome, _row in _outcomes(kinds, now, limit):
            if outcome == "pending":
                result["pending"] += 1
            elif outcome == "unconfirmed":
                result["overdue"] += 1
    return result


# --------------------------------------------------------------------------- rendering

def _duration(seconds: float) -> str:
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)}日 ({int(seconds // 86400)}d)"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}時間 ({int(seconds // 3600)}h)"
    return f"{int(seconds // 60)}分 ({int(seconds // 60)}m)"


def _time(value: datetime.datetime) -> str:
    return value.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S")


def render_text(report: ReconcileReport, notes: Sequence[str] = ()) -> str:
    """A terminal report: counts with one column per channel present, then the results to check.

    *notes* are extra lines printed under the heading (e.g. that a default limit is in use).
    """
    lines = [f"納付結果の突合 (payment-result reconciliation): {report.scope}".rstrip(": "),
             f"作成 (generated): {_time(report.generated_at)} JST   "
             f"未確報の基準 (unconfirmed after): 収納日時から {_duration(report.unconfirmed_after)}",
             *notes, ""]
    if not report.channels:
        lines.append("該当する納付結果はありません (no payment results in this period).")
        return "\n".join(lines) + "\n"
    lines.append("チャネル区分 (channel):")
    lines += [f"  {c.channel} {c.channel_name}" for c in report.channels]
    lines.append("")
    label_width = max(display_width(heading) for _, heading in MEASURES) + 2
    column = max(7, *(len(str(report.total.count(m))) + 2 for m in _COUNTED))
    heads = [c.channel for c in report.channels] + ["合計"]
    lines.append(ljust("", label_width) + "".join(rjust(h, column) for h in heads))
    for measure, heading in MEASURES:
        values = [c.count(measure) for c in (*report.channels, report.total)]
        lines.append((ljust(heading, label_width) + "".join(rjust(str(v), column) for v in values)).rstrip())
    lines.append("")
    if not report.problems:
        lines.append("要確認 (to check): なし (none)")
        return "\n".join(lines) + "\n"
    lines.append(f"要確認 (to check): {len(report.problems)} 件")
    headings = ("収納日時 (received)", "チャネル (channel)", "税目 (tax item)", "納付書番号 (slip)", "内容 (problem)")
    table = [[_time(p.received_at), f"{p.channel} {channel_name(p.channel)}",
              f"{p.tax_item} {TAX_ITEMS.get(p.tax_item, '')}".strip(), p.slip_hint, p.description]
             for p in report.problems]
    widths = [max(display_width(row[i]) for row in (list(headings), *table)) + 2 for i in range(len(headings) - 1)]
    for row in (list(headings), *table):
        lines.append(("  " + "".join(ljust(cell, w) for cell, w in zip(row, widths)) + row[-1]).rstrip())
    return "\n".join(lines) + "\n"


def render_csv(report: ReconcileReport) -> bytes:
    """The report as CSV for Excel: UTF-8 with a BOM, CRLF line ends, two tables.

    First the counts (one row per channel, then ``合計``), then an empty line and the
    results to check (one row each). Headings are Japanese with English in parentheses.
    """
    rows: list[Sequence[object]] = [
        ["集計 (summary)", report.scope, f"作成 (generated) {_time(report.generated_at)} JST",
         f"未確報の基準 (unconfirmed after) {_duration(report.unconfirmed_after)}"],
        ["チャネル区分 (channel)", "チャネル名 (channel name)", *(h for _, h in MEASURES)]]
    rows += [[summary.channel, summary.channel_name, *(summary.count(m) for m, _ in MEASURES)]
             for summary in (*report.channels, report.total)]
    rows += [[], ["要確認 (to check)"],
             ["収納日時 (received at, JST)", "チャネル区分 (channel)", "チャネル名 (channel name)",
              "税目 (tax item)", "納付書番号 下4桁 (slip no., last 4 digits)", "問題 (problem code)",
              "内容 (problem)"]]
    rows += [[_time(problem.received_at), problem.channel, channel_name(problem.channel),
              problem.tax_item, problem.slip_hint, problem.problem, problem.description]
             for problem in report.problems]
    return csv_rows(rows)
