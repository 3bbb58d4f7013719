"""``kei-gateway audit report``, pure: the weekly log review from audit records.

Six sections, each a few lines: denials (by listener or peer, reason and source), failed
and retried transfers by peer, quarantines by reason, holds and approvals (who, when),
operator commands, purges. Headings are Japanese with English, like ``results reconcile``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kei_gateway.core.jst import JST
from kei_gateway.core.report_format import csv_rows, display_width, ljust, rjust
from kei_gateway.operations.audit.chain import ANCHOR_EVENT, StoredRecord

__all__ = ["AuditReport", "build_report", "render_text", "render_csv", "SECTIONS"]

DENIALS = ("listener.denied", "peer.denied", "push.refused", "peer.identity_failed")
FAILURES = ("transfer.failed", "transfer.retry", "ingest.failed", "push.failed")
QUARANTINES = ("ingest.quarantined", "download.quarantined", "push.quarantined")
HOLDS = ("operator.transfer_approved", "operator.transfer_cancelled", "transfer.held_overdue")
PURGES = ("purge.done", "purge.failed", "purge.missed", "operator.purged", ANCHOR_EVENT)
ITEM_RECORDS = ("purge.erased", "airis.stored")
"""Records of single items (issue 11: each committed with its ledger change), left out of the review: a manual
purge would otherwise list every payload it erased among the operators' commands; the 消去報告 lists them."""
SECTIONS = (
    ("denials", "接続拒否 (denied connections)"),
    ("failures", "送信失敗・再試行 (failed and retried transfers)"),
    ("quarantines", "隔離 (quarantined files)"),
    ("holds", "保留と承認 (holds and approvals)"),
    ("operators", "運用者の操作 (operator commands)"),
    ("purges", "消去 (purges)"),
)
_REASON_WIDTH = 60


def _is_hold(stored: StoredRecord) -> bool:
    return stored.record.event == "ingest.queued" and (stored.record.reason or "") == "state HELD"


def section_of(stored: StoredRecord) -> str | None:
    """The report section a record belongs to (operator commands also to their topic's section)."""
    event = stored.record.event
    if event in DENIALS:
        return "denials"
    if event in FAILURES:
        return "failures"
    if event in QUARANTINES:
        return "quarantines"
    if event in HOLDS or _is_hold(stored):
        return "holds"
    if event in PURGES:
        return "purges"
    if event in ITEM_RECORDS:
        return None  # one record per item erased or stored: the run's own record is in its section
    if stored.record.actor != "kei-gateway":
        return "operators"
    return None


@dataclass
class AuditReport:
    since: datetime
    generated_at: datetime
    total: int = 0
    chain: str | None = None
    denials: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    failures: dict[str, Counter[str]] = field(default_factory=dict)
    quarantines: Counter[tuple[str, str]] = field(default_factory=Counter)
    holds: list[StoredRecord] = field(default_factory=list)
    operators: list[StoredRecord] = field(default_factory=list)
    purges: list[StoredRecord] = field(default_factory=list)
    rows: list[tuple[str, StoredRecord]] = field(default_factory=list)
    by_event: Counter[str] = field(default_factory=Counter)


def build_report(records: Iterable[StoredRecord], since: datetime, now: datetime, chain: str | None = None) -> AuditReport:
    """Group *records* (already those at or after *since*) into the report's sections."""
    report = AuditReport(since=since, generated_at=now, chain=chain)
    for stored in records:
        r = stored.record
        report.total += 1
        report.by_event[r.event] += 1
        section = section_of(stored)
        if section is None:
            continue
        report.rows.append((section, stored))
        if section == "denials":
            where = r.listener or (f"→ {r.peer}" if r.peer else "?")
            report.denials[(where, r.reason or "", r.source or "")] += 1
        elif section == "failures":
            peer = r.peer or r.flow or "?"
            report.failures.setdefault(peer, Counter())[r.event] += 1
        elif section == "quarantines":
            report.quarantines[(r.flow or "?", r.reason or "")] += 1
        elif section == "holds":
            report.holds.append(stored)
        elif section == "purges":
            report.purges.append(stored)
        if section != "operators" and r.actor != "kei-gateway":
            report.rows.append(("operators", stored))
        if r.actor != "kei-gateway":
            report.operators.append(stored)
    return report


def _time(value: datetime) -> str:
    return value.astimezone(JST).strftime("%Y-%m-%d %H:%M")


def _short(text: str, width: int = _REASON_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(display_width(row[i]) for row in (headings, *rows)) + 2 for i in range(len(headings) - 1)]
    lines = []
    for row in (headings, *rows):
        cells = "".join(rjust(cell, w - 2) + "  " if cell.isdigit() else ljust(cell, w) for cell, w in zip(row, widths))
        lines.append(("  " + cells + row[-1]).rstrip())
    return lines


def _hold_what(stored: StoredRecord) -> str:
    return {"ingest.queued": "保留 (held)", "operator.transfer_approved": "承認 (approved)",
            "operator.transfer_cancelled": "取消 (cancelled)",
            "transfer.held_overdue": "24時間超 (held > 24 h)"}.get(stored.record.event, stored.record.event)


def render_text(report: AuditReport) -> str:
    """The report for a terminal: counts first, then who did what, newest last."""
    lines = [f"監査レポート (audit report): {_time(report.since)} JST 以降 (since)",
             f"作成 (generated): {_time(report.generated_at)} JST   記録 (records): {report.total}"]
    if report.chain is not None:
        lines.append(f"改ざん検査 (chain verify): {report.chain}")
    lines.append("")

    def heading(key: str, count: int) -> None:
        title = dict(SECTIONS)[key]
        lines.append(f"{title}: {count if count else 'なし (none)'}")

    heading("denials", sum(report.denials.values()))
    if report.denials:
        lines += _table(("リスナー/接続先 (listener/peer)", "理由 (reason)", "接続元 (source)", "件数 (count)"),
                        [(w, _short(r, 40), s or "-", str(n)) for (w, r, s), n in report.denials.most_common()])
    lines.append("")
    heading("failures", sum(sum(c.values()) for c in report.failures.values()))
    if report.failures:
        lines += _table(("接続先 (peer)", "失敗 (failed)", "再試行 (retried)", "取込失敗 (ingest failed)"),
                        [(peer, str(c["transfer.failed"] + c["push.failed"]), str(c["transfer.retry"]),
                          str(c["ingest.failed"])) for peer, c in sorted(report.failures.items())])
    lines.append("")
    heading("quarantines", sum(report.quarantines.values()))
    if report.quarantines:
        lines += _table(("フロー (flow)", "件数 (count)", "理由 (reason)"),
                        [(flow, str(n), _short(reason)) for (flow, reason), n in report.quarantines.most_common()])
    lines.append("")
    heading("holds", len(report.holds))
    if report.holds:
        lines += _table(("日時 (JST)", "転送 (transfer)", "内容 (what)", "実行者 (by)", "理由 (reason)"),
                        [(_time(s.record.time), str(s.record.transfer_id or "-"), _hold_what(s), s.record.actor,
                          _short(s.record.reason or "") if s.record.event != "ingest.queued" else "")
                         for s in report.holds])
    lines.append("")
    heading("operators", len(report.operators))
    if report.operators:
        lines += _table(("日時 (JST)", "実行者 (by)", "操作 (command)", "転送 (transfer)", "内容 (detail)"),
                        [(_time(s.record.time), s.record.actor, s.record.event,
                          str(s.record.transfer_id) if s.record.transfer_id is not None else "-",
                          _short(s.record.reason or (f"count {s.record.count}" if s.record.count is not None else "")))
                         for s in report.operators])
    lines.append("")
    heading("purges", len(report.purges))
    if report.purges:
        lines += _table(("日時 (JST)", "種別 (event)", "件数 (items)", "実行者 (by)", "内容 (detail)"),
                        [(_time(s.record.time), s.record.event, str(s.record.count or 0), s.record.actor,
                          _short(s.record.reason or "")) for s in report.purges])
    return "\n".join(lines) + "\n"


def render_csv(report: AuditReport) -> bytes:
    """Every record of the six sections, one row each, for Excel (UTF-8 with BOM, CRLF)."""
    titles = dict(SECTIONS)
    rows: list[Sequence[object]] = [[
        "区分 (section)", "日時 (time, JST)", "通番 (sequence)", "実行者 (actor)", "イベント (event)",
        "フロー (flow)", "接続先 (peer)", "リスナー (listener)", "接続元 (source)", "転送ID (transfer id)",
        "件数 (count)", "SHA-256", "理由 (reason)"]]
    for section, s in report.rows:
        r = s.record
        rows.append([titles[section], r.time.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S"), s.sequence, r.actor,
                     r.event, r.flow or "", r.peer or "", r.listener or "", r.source or "",
                     "" if r.transfer_id is None else r.transfer_id, "" if r.count is None else r.count,
                     r.sha256 or "", r.reason or ""])
    return csv_rows(rows)
