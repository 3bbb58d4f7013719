"""What the daily purge erases (SPEC §7 連携データは毎日削除): a pure decision, no disk, no clock.

:func:`plan_purge` takes the ledger's transfers, listings of the inbox and
quarantine directories (and of the reports directory), the retention settings and
``now``, and returns a :class:`PurgePlan`: every item to erase with its area,
name, SHA-256 (when known), size, 区分 (category) and 理由 (reason). The executor
(:mod:`kei_gateway.operations.purge.execute`) gathers the inputs and carries the plan out.

The rules (``docs/purge.md`` says the same for operators); an item is past its
retention when ``now - since >= retention``:

* **store** — the encrypted payload of a transfer that is ``DONE`` or ``CANCELLED``
  past ``retention.payloads`` (since its last change, i.e. when it got there), of a
  ``QUARANTINED`` one past ``retention.quarantine``; blobs no transfer refers to
  (a crash between the store write and the ledger commit) past
  ``retention.payloads`` since the blob was written. ``transfers.blob_id`` becomes
  NULL. A ``FAILED`` transfer keeps its payload: it waits for a person
  (``transfers retry`` or ``transfers cancel``; cancelled, it is purged like the
  rest); the plan counts those past ``retention.payloads`` in
  :attr:`PurgePlan.kept_failed` so the report and the event say so.
* **inbox** — a file in a flow's inbox past ``retention.inbox`` (its mtime: when
  the gateway relayed it) *whose name the gateway relayed in that flow*: the
  ``local_name`` of a ``DONE`` inbound transfer, or for ``mpn-results`` its
  ``relay_name``; with its ``name.end`` marker; also such a file left as
  ``.purge-<pid>-<name>`` by a purge killed in :func:`secure_unlink`. Nothing else in
  an inbox is ever touched.
* **quarantine** — every entry of ``quarantine/<flow>/`` (the gateway's own
  directory: errors files and refused entries it moved there) past
  ``retention.quarantine``; an entry and its ``name.errors.txt`` go together, timed
  by the errors file (a moved entry keeps the mtime its writer gave it).
* **ledger** — a transfer that is ``DONE``, ``CANCELLED`` or ``QUARANTINED`` past
  ``retention.ledger`` (its payment results go with it), audit records older than
  ``retention.ledger`` (through the audit trail's own pruning, which keeps the chain
  verifiable) and the deletion reports of days older than ``retention.ledger``.
* Never anything of a transfer in an open state (``RECEIVED``, ``VALIDATED``,
  ``HELD``, ``QUEUED``, ``SENDING``, ``RETRY_WAIT``), nor of a ``FAILED`` one.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kei_gateway.adapters.ledger.ledger import TransferRow
from kei_gateway.adapters.spool import EntryKind
from kei_gateway.core.transfer import TransferState
from kei_gateway.adapters.store.format import degenerations_blob_id

__all__ = ["Area", "AREAS", "Listed", "Erasure", "PurgePlan", "Retention", "plan_purge", "EntryKind",
           "ERASABLE_STATES", "LEDGER_PRUNABLE_STATES", "REPORT_NAME", "PURGE_LEFTOVER", "unhidden", "format_duration", "RESULTS_FLOW"]

Area = Literal["store", "inbox", "quarantine", "ledger"]
AREAS: tuple[Area, ...] = ("store", "inbox", "quarantine", "ledger")

ERASABLE_STATES = (TransferState.DONE.value, TransferState.CANCELLED.value)
"""Transfers whose payload goes after ``retention.payloads``."""
LEDGER_PRUNABLE_STATES = (TransferState.DONE.value, TransferState.CANCELLED.value, TransferState.QUARANTINED.value)
"""Transfers whose ledger row goes after ``retention.ledger``."""
RESULTS_FLOW = "mpn-results"
"""Its inbox files are named by ``relay_name`` (only the new results of a file are relayed)."""
MARKER_SUFFIX = ".end"
ERRORS_SUFFIX = ".errors.txt"
PURGE_LEFTOVER = re.compile(r"\.purge-\d+-(.+)")
"""The dotfile :func:`~kei_gateway.operations.purge.execute.secure_unlink` renames a file to before erasing it: a purge
killed between the rename and the unlink leaves it behind, and the next run erases it like the file it was."""
REPORT_NAME = re.compile(r"erasure-(\d{8})\.(csv|txt)")
"""A deletion report's file name: ``erasure-YYYYMMDD.csv`` or ``.txt`` (the JST date of the run)."""

_CATEGORY = {
    "store": "保管データ (encrypted payload)",
    "inbox": "受信フォルダ (inbox file)",
    "quarantine": "隔離フォルダ (quarantine)",
    "ledger": "台帳メタデータ (ledger metadata)",
}


@dataclass(frozen=True)
class Retention:
    """How long each kind of data is kept, in seconds (``[retention]``)."""

    payloads: float
    inbox: float
    quarantine: float
    ledger: float

    @classmethod
    def of(cls, section: object) -> Retention:
        """From the config's ``retention`` section (anything with the four attributes)."""
        return cls(float(getattr(section, "payloads")), float(getattr(section, "inbox")),
                   float(getattr(section, "quarantine")), float(getattr(section, "ledger")))


@dataclass(frozen=True)
class Listed:
    """One directory entry as listed: its name, size, kind and since when it is there (UTC)."""

    name: str
    size: int
    since: datetime.datetime
    """When it arrived: for inbox files their mtime (the relay's write); for quarantine entries the
    later of mtime and ctime (a rename into quarantine changes the ctime, not the mtime)."""
    kind: EntryKind = "file"


@dataclass(frozen=True)
class Erasure:
    """One thing to erase, with what the 消去報告 says about it."""

    area: Area
    name: str
    """For files: the path under ``spool_dir`` (``inbox/jnks-receipts/R001.dat``); for payloads and
    ledger rows: the transfer's file name; for blobs nobody refers to: the blob id."""
    category: str
    """区分."""
    reason: str
    """理由."""
    sha256: str | None = None
    size: int | None = None
    transfer_id: int | None = None
    blob_id: str | None = None
    directory: str | None = None
    """Files: the directory it is in (as given in the listing); ``name`` without it is :attr:`entry`."""
    entry: str | None = None
    kind: EntryKind = "file"
    audit_before: datetime.datetime | None = None
    """For the one audit-records item: erase the audit records older than this."""


@dataclass(frozen=True)
class PurgePlan:
    """Everything a purge run erases, in order: payloads and files first, ledger rows last."""

    now: datetime.datetime
    items: tuple[Erasure, ...] = ()
    kept_failed: tuple[int, ...] = ()
    """FAILED transfers past ``retention.payloads`` whose payload is kept for a person's decision."""

    def by_area(self, area: Area) -> list[Erasure]:
        return [item for item in self.items if item.area == area]

    def counts(self) -> dict[Area, int]:
        return {area: len(self.by_area(area)) for area in AREAS}


@dataclass(frozen=True)
class _Directory:
    path: str
    """As the caller named it (the executor joins it with the entry's name)."""
    label: str
    """The path under ``spool_dir`` shown in the report (``inbox/jnks-receipts``)."""
    entries: Sequence[Listed] = field(default_factory=tuple)


def format_duration(seconds: float) -> str:
    """``1d``, ``7d``, ``12h``, ``30m``, ``45s``: the retention as the config file writes it."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _past(since: datetime.datetime, retention: float, now: datetime.datetime) -> bool:
    return (now - since).total_seconds() >= retention


def plan_purge(transfers: Iterable[TransferRow], *, retention: Retention, now: datetime.datetime,
               inbox: Mapping[str, tuple[str, str, Sequence[Listed]]] = {},
               quarantine: Mapping[str, tuple[str, str, Sequence[Listed]]] = {},
               blobs: Sequence[Listed] = (), referenced_blobs: Iterable[str] | None = None,
               reports: Sequence[Listed] = (), reports_label: str = "reports",
               audit: bool = False) -> PurgePlan:
    """Decide what a purge at *now* erases.

    *inbox*: flow → (directory, label under spool_dir, its listing); *quarantine*: the
    same per ``quarantine/<flow>`` directory. *blobs*: the store's blob files (name = blob
    id, since = when written); with *referenced_blobs* (every blob id the ledger refers
    to) the ones nobody refers to are candidates too. *reports*: the reports directory.
    *audit*: include the audit-records item (the ledger has an audit trail).
    """
    rows = list(transfers)
    items: list[Erasure] = []
    kept_failed: list[int] = []
    ledger_items: list[Erasure] = []
    payload_days = format_duration(retention.payloads)

    for row in sorted(rows, key=lambda r: r.id):
        if row.state == TransferState.FAILED.value:
            if row.blob_id and _past(row.updated_at, retention.payloads, now):
                kept_failed.append(row.id)
            continue
        prunable = row.state in LEDGER_PRUNABLE_STATES and _past(row.updated_at, retention.ledger, now)
        if row.blob_id:
            reason = None
            if row.state in ERASABLE_STATES and _past(row.updated_at, retention.payloads, now):
                reason = f"{_state_ja(row.state)}から保存期間 {payload_days} 経過 (retention.payloads)"
            elif row.state == TransferState.QUARANTINED.value and _past(row.updated_at, retention.quarantine, now):
                reason = f"隔離から保存期間 {format_duration(retention.quarantine)} 経過 (retention.quarantine)"
            elif prunable:
                reason = f"台帳の保存期間 {format_duration(retention.ledger)} 経過 (retention.ledger)"
            if reason is not None:
                items.append(Erasure("store", row.local_name, _CATEGORY["store"],
                                     f"{reason}; 転送 {row.id} ({row.flow}, {row.state})",
                                     sha256=row.sha256, size=row.size, transfer_id=row.id, blob_id=row.blob_id))
        if prunable:
            ledger_items.append(Erasure("ledger", row.local_name, _CATEGORY["ledger"],
                                        f"転送 {row.id} ({row.flow}, {row.state}) の記録、保存期間 "
                                        f"{format_duration(retention.ledger)} 経過 (retention.ledger)",
                                        sha256=row.sha256, size=row.size, transfer_id=row.id))

    if referenced_blobs is not None:
        referenced = set(referenced_blobs) | {row.blob_id for row in rows if row.blob_id}
        referenced |= {degenerations_blob_id(blob) for blob in referenced}  # erased with their payload
        for blob in sorted(blobs, key=lambda b: b.name):
            if blob.name not in referenced and _past(blob.since, retention.payloads, now):
                items.append(Erasure("store", blob.name, _CATEGORY["store"],
                                     f"台帳に記録のない保管データ、保存期間 {payload_days} 経過 (unreferenced blob)",
                                     size=blob.size, blob_id=blob.name))

    relayed = _relayed_names(rows)
    for flow in sorted(inbox):
        directory, label, entries = inbox[flow]
        items.extend(_inbox_items(flow, _Directory(directory, label, entries), relayed.get(flow, {}), retention, now))

    for flow in sorted(quarantine):
        directory, label, entries = quarantine[flow]
        items.extend(_quarantine_items(_Directory(directory, label, entries), retention, now))

    items.extend(ledger_items)
    if audit:
        before = now - datetime.timedelta(seconds=retention.ledger)
        items.append(Erasure("ledger", "監査記録 (audit records)", "監査記録 (audit trail)",
                             f"保存期間 {format_duration(retention.ledger)} 経過 (retention.ledger); "
                             "連鎖はアンカー記録で検証可能なまま (the chain stays verifiable)", audit_before=before))
    for report in sorted(reports, key=lambda r: r.name):
        match = REPORT_NAME.fullmatch(report.name)
        if match is None or report.kind != "file":
            continue
        day = datetime.datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=_JST)
        if _past(day + datetime.timedelta(days=1), retention.ledger, now):
            items.append(Erasure("ledger", f"{reports_label}/{report.name}", "消去報告 (deletion report)",
                                 f"保存期間 {format_duration(retention.ledger)} 経過 (retention.ledger)",
                                 size=report.size, entry=report.name, kind="file"))
    return PurgePlan(now, tuple(items), tuple(kept_failed))


_JST = datetime.timezone(datetime.timedelta(hours=9), "JST")


def _state_ja(state: str) -> str:
    labels: dict[str, str] = {TransferState.DONE: "完了 (DONE)", TransferState.CANCELLED: "取消 (CANCELLED)"}
    return labels.get(state, state)


def _relayed_names(rows: Sequence[TransferRow]) -> dict[str, dict[str, int]]:
    """Per inbound flow: the inbox names the gateway relayed → the transfer that relayed it."""
    names: dict[str, dict[str, int]] = {}
    for row in rows:
        if row.direction != "in" or row.state != TransferState.DONE.value:
            continue
        name = row.relay_name if row.flow == RESULTS_FLOW else row.local_name
        if name:
            names.setdefault(row.flow, {})[name] = row.id
    return names


def unhidden(name: str) -> str:
    """The name a file had before an interrupted purge renamed it (see :data:`PURGE_LEFTOVER`), else *name*."""
    match = PURGE_LEFTOVER.fullmatch(name)
    return match.group(1) if match else name


def _inbox_items(flow: str, directory: _Directory, relayed: Mapping[str, int], retention: Retention,
                 now: datetime.datetime) -> list[Erasure]:
    items = []
    period = format_duration(retention.inbox)
    for entry in sorted(directory.entries, key=lambda e: e.name):
        if entry.kind != "file":
            continue
        name = unhidden(entry.name)
        base = name.removesuffix(MARKER_SUFFIX) if name.endswith(MARKER_SUFFIX) else name
        transfer_id = relayed.get(name)
        if transfer_id is None and base != name:
            transfer_id = relayed.get(base)
        if transfer_id is None or not _past(entry.since, retention.inbox, now):
            continue
        what = "終了マーカー (marker)" if name != base and name not in relayed else "中継したファイル (relayed file)"
        if name != entry.name:
            what += "、中断した消去の残り (left by an interrupted purge)"
        items.append(Erasure("inbox", f"{directory.label}/{entry.name}", _CATEGORY["inbox"],
                             f"{what}、税務システムが未取得のまま保存期間 {period} 経過 (retention.inbox); "
                             f"転送 {transfer_id} ({flow})",
                             size=entry.size, transfer_id=transfer_id, directory=directory.path, entry=entry.name))
    return items


def _quarantine_items(directory: _Directory, retention: Retention, now: datetime.datetime) -> list[Erasure]:
    groups: dict[str, list[Listed]] = {}
    for entry in directory.entries:
        key = entry.name[:-len(ERRORS_SUFFIX)] if entry.name.endswith(ERRORS_SUFFIX) else entry.name
        groups.setdefault(key, []).append(entry)
    items = []
    period = format_duration(retention.quarantine)
    for key in sorted(groups):
        members = groups[key]
        errors = [m for m in members if m.name == key + ERRORS_SUFFIX and m.kind == "file"]
        since = errors[0].since if errors else max(m.since for m in members)
        if not _past(since, retention.quarantine, now):
            continue
        for member in sorted(members, key=lambda m: m.name):
            what = "エラー一覧 (errors file)" if member in errors else _KIND_JA[member.kind]
            items.append(Erasure("quarantine", f"{directory.label}/{member.name}", _CATEGORY["quarantine"],
                                 f"{what}、隔離から保存期間 {period} 経過 (retention.quarantine)",
                                 size=member.size, directory=directory.path, entry=member.name, kind=member.kind))
    return items


_KIND_JA: dict[str, str] = {
    "file": "隔離されたファイル (quarantined file)",
    "symlink": "隔離されたシンボリックリンク (symlink, not followed)",
    "directory": "隔離されたディレクトリ (directory)",
    "other": "隔離された特殊ファイル (device, FIFO or socket)",
}
