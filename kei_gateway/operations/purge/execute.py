"""Carrying a purge out (blocking: disk, fsync, database). Call through the blocking door.

:func:`run_purge` is one run: take the purge lock, gather the inputs (ledger rows,
directory listings), :func:`~kei_gateway.operations.purge.plan.plan_purge`, erase, and append
the 消去報告. The order makes every crash harmless:

* a payload: the ledger forgets the blob first (``blob_id`` NULL, only while the
  transfer is still in the state the plan saw), then the blob is deleted; a crash in
  between leaves an unreferenced blob, which a later purge removes (past
  ``retention.payloads`` since it was written, listed in the report);
* a plaintext file: renamed out of sight, overwritten with zeros, fsynced, unlinked,
  its directory fsynced (:func:`secure_unlink`); its SHA-256 is taken before the
  overwrite, for the report;
* ledger rows last, one transaction per batch (payment results first, then the
  transfers).

Nothing is erased twice: a second run (the CLI while the daemon purges) waits for
the lock and then finds nothing left.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session
from twisted.logger import Logger

from kei_gateway.adapters.durable import fsync_directory
from kei_gateway.adapters.ledger.leases import Fence, Fenced, check_fence
from kei_gateway.adapters.ledger.ledger import AuditEvent, TransferLedger, TransferRow, in_chunks, write_audit
from kei_gateway.adapters.ledger.models import PaymentResult, Transfer
from kei_gateway.adapters.spool import entry_kind, write_durable
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.config import INBOUND_FLOWS, Config
from kei_gateway.core.jst import JST
from kei_gateway.operations.purge.plan import (
    LEDGER_PRUNABLE_STATES,
    RESULTS_FLOW,
    Erasure,
    Listed,
    PurgePlan,
    Retention,
    plan_purge,
    unhidden,
)
from kei_gateway.operations.purge.report import (
    ErasedItem,
    PurgeRun,
    parse_completed,
    render_csv,
    render_text,
    report_names,
)
from kei_gateway.runtime.blocking import retry_transient
from kei_gateway.runtime import events
from kei_gateway.runtime.events import describe_error
from kei_gateway.adapters.store.format import degenerations_blob_id

__all__ = ["PurgeLedger", "PurgeOutcome", "run_purge", "append_input_erasures", "plan_from_config", "secure_unlink", "list_directory",
           "recovered_from_journal", "JOURNAL_NAME", "INTERRUPTED_NOTE",
           "reports_directory", "last_completed", "AuditPruner", "LOCK_NAME", "LOCK_WAIT", "PurgeBusy"]

_log = Logger(namespace="kei_gateway.purge")

AuditPruner = Callable[[datetime.datetime], int]
"""Erase the audit records older than the time given (keeping the chain verifiable); the number erased."""
LOCK_NAME = ".purge.lock"
"""One run at a time over the shared ``state_dir/reports`` (its journal and reports): a node's daily run under the
purge's lease and an operator's ``kei-gateway purge``, which takes no lease (docs/high-availability.md)."""
LOCK_WAIT = 5.0
"""Seconds a run retries the lock another run holds before it gives up (:class:`PurgeBusy`): never a wait as long
as that run — or as the stop of a node stopped in the middle of one."""


class PurgeBusy(Exception):
    """Another purge run holds the lock: this run did nothing."""

    def __init__(self, path: str, waited: float) -> None:
        super().__init__(f"another purge run holds {path} (a node's daily purge or 'kei-gateway purge', perhaps on "
                         f"a node that is stopped) and still did after {waited:g}s: this run erased nothing and runs "
                         f"again later")
JOURNAL_NAME = ".purge-journal.jsonl"
"""The plan of the run in progress, written (and fsynced) before the first erasure; removed with the report.

A run killed part-way leaves it behind, and the next run reports from it what is gone —
so every erasure reaches a 消去報告 even when its run never finished."""
INTERRUPTED_NOTE = "（中断した前回の実行で消去 / erased by an interrupted run）"
_CHUNK = 1 << 16
_BATCH = 500


def reports_directory(config: Config) -> str:
    """``<gateway.state_dir>/reports``: the 消去報告 files."""
    return os.path.join(config.gateway.state_dir, "reports")


class PurgeLedger(TransferLedger):
    """The ledger queries of the purge. Every method blocks.

    :attr:`fence`, when set, is the node's lease on the purge (SPEC §14): every erasure commits only
    while it is current (checked in the erasure's own transaction), and a file erasure only after a
    check that it still is; a node that lost the purge to another erases nothing more.
    """

    fence: Fence | None = None

    def check_fence(self) -> None:
        """Raise :class:`~kei_gateway.adapters.ledger.leases.Fenced` unless this run's lease is still current."""
        if self.fence is None:
            return
        with Session(self.engine) as session, session.begin():
            check_fence(session, self.fence)

    @retry_transient
    def candidates(self, ledger_cutoff: datetime.datetime, inbox_names: dict[str, set[str]]) -> list[TransferRow]:
        """Transfers the planner needs: those with a payload, those past the ledger's retention, and the
        inbound transfers that relayed a name now in an inbox. (A superset; the planner decides.)"""
        conditions = [Transfer.blob_id.is_not(None),
                      (Transfer.updated_at <= ledger_cutoff) & Transfer.state.in_(LEDGER_PRUNABLE_STATES)]
        for flow, names in inbox_names.items():
            if not names:
                continue
            column = Transfer.relay_name if flow == RESULTS_FLOW else Transfer.local_name
            for chunk in in_chunks(sorted(names), _BATCH):
                conditions.append((Transfer.flow == flow) & (Transfer.direction == "in") & column.in_(chunk))
        query = select(Transfer).where(or_(*conditions)).order_by(Transfer.id)
        with Session(self.engine) as session:
            return [TransferRow.of(t) for t in session.scalars(query)]

    @retry_transient
    def transfer_exists(self, transfer_id: int) -> bool:
        with Session(self.engine) as session:
            return session.get(Transfer, transfer_id) is not None

    @retry_transient
    def forget_blob(self, transfer_id: int, blob_id: str, states: Sequence[str], now: datetime.datetime | None = None,
                    reason: str = "") -> bool:
        """Set ``blob_id`` NULL if the transfer still has *blob_id* and is in one of *states*, with the
        ``purge.erased`` record of the payload in the same transaction (when :attr:`audit_writer` is set).

        ``updated_at`` is left alone: it says when the transfer got to its state, the
        clock of the ledger's own retention.
        """
        with Session(self.engine) as session, session.begin():
            if self.fence is not None:
                check_fence(session, self.fence)
            result = session.execute(update(Transfer).where(
                Transfer.id == transfer_id, Transfer.blob_id == blob_id, Transfer.state.in_(states))
                .values(blob_id=None))
            forgotten = bool(getattr(result, "rowcount", 0))
            if forgotten:
                write_audit(self.audit_writer, session.connection(), _erased("store", reason), transfer_id,
                            now or datetime.datetime.now(datetime.timezone.utc))
            return forgotten

    @retry_transient
    def delete_transfers(self, transfer_ids: Sequence[int], cutoff: datetime.datetime,
                         now: datetime.datetime | None = None) -> tuple[list[int], int]:
        """Delete these transfers (still prunable and past *cutoff*) and their payment results, in one
        transaction with a ``purge.erased`` record per transfer (when :attr:`audit_writer` is set); return
        the ids deleted and the number of payment results that went with them."""
        with Session(self.engine) as session, session.begin():
            if self.fence is not None:
                check_fence(session, self.fence)
            still = list(session.scalars(select(Transfer.id).where(
                Transfer.id.in_(transfer_ids), Transfer.state.in_(LEDGER_PRUNABLE_STATES),
                Transfer.updated_at <= cutoff)))
            if not still:
                return [], 0
            results = session.scalar(select(func.count()).select_from(PaymentResult)
                                     .where(PaymentResult.transfer_id.in_(still))) or 0
            # Explicitly, not only by ON DELETE CASCADE: SQLite enforces that only with foreign_keys=ON.
            session.execute(delete(PaymentResult).where(PaymentResult.transfer_id.in_(still)))
            session.execute(delete(Transfer).where(Transfer.id.in_(still)))
            when = now or datetime.datetime.now(datetime.timezone.utc)
            for transfer_id in sorted(still):
                write_audit(self.audit_writer, session.connection(),
                            _erased("ledger", f"ledger metadata past retention.ledger ({cutoff:%Y-%m-%d})"),
                            transfer_id, when)
            return sorted(still), int(results)


def _erased(area: str, reason: str) -> AuditEvent:
    return events.PURGE_ERASED.name, {"area": area, "reason": f"{area}: {reason}" if reason else area}


# --- the filesystem ---------------------------------------------------------------------

def list_directory(directory: str, *, arrival: str = "mtime") -> list[Listed]:
    """The entries of *directory* (none if it does not exist), never following a link.

    *arrival* ``"mtime"``: an entry is there since its mtime; ``"changed"``: since the
    later of its mtime and ctime (what a rename into the directory changes).
    """
    listed = []
    try:
        scan = os.scandir(directory)
    except FileNotFoundError:
        return []
    with scan:
        for item in scan:
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            since = st.st_mtime if arrival == "mtime" else max(st.st_mtime, st.st_ctime)
            listed.append(Listed(item.name, st.st_size if stat.S_ISREG(st.st_mode) else 0,
                                 datetime.datetime.fromtimestamp(since, datetime.timezone.utc), entry_kind(st.st_mode)))
    return listed


def secure_unlink(path: str) -> tuple[int, str | None]:
    """Erase the regular file *path*: hash it, overwrite it once with zeros, fsync, unlink, fsync the directory.

    Returns (size, SHA-256 of the content before the overwrite). First the file is
    renamed to a dotfile in the same directory, so nobody opens it from now on. A file
    with other hard links is only unlinked (overwriting would destroy the other
    names' data) and its hash is still returned. A symlink or anything not a regular
    file is unlinked without being opened. See docs/purge.md for what an overwrite can
    and cannot guarantee (SSDs, copy-on-write and journaling filesystems).
    :class:`FileNotFoundError` if it is gone.
    """
    directory, name = os.path.split(path)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        os.unlink(path)
        fsync_directory(directory or ".")
        return 0, None
    hidden = os.path.join(directory, f".purge-{os.getpid()}-{name}"[:255])
    os.rename(path, hidden)
    try:
        fd = os.open(hidden, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        os.rename(hidden, path)
        raise
    try:
        st = os.fstat(fd)
        digest = hashlib.sha256()
        size = 0
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        if st.st_nlink <= 1:
            os.lseek(fd, 0, os.SEEK_SET)
            zeros = bytes(_CHUNK)
            left = size
            while left > 0:
                left -= os.write(fd, zeros[:min(left, _CHUNK)])
            os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(hidden)
    fsync_directory(directory or ".")
    return size, digest.hexdigest()


def _remove_tree(path: str) -> int:
    """A quarantined directory: every regular file in it securely unlinked, the rest removed; bytes erased."""
    erased = 0
    for root, dirs, files in os.walk(path, topdown=False, followlinks=False):
        for name in files:
            erased += secure_unlink(os.path.join(root, name))[0]
        for name in dirs:
            target = os.path.join(root, name)
            if os.path.islink(target):
                os.unlink(target)
            else:
                os.rmdir(target)
    os.rmdir(path)
    fsync_directory(os.path.dirname(path) or ".")
    return erased


# --- one run ----------------------------------------------------------------------------

@dataclass
class PurgeOutcome:
    """What a run did (or, dry, would do)."""

    plan: PurgePlan
    run: PurgeRun | None = None
    """None for a dry run."""
    report_paths: tuple[str, str] | None = None
    skipped: list[Erasure] = field(default_factory=list)
    """Planned but already gone (taken by the tax system, erased by another run)."""

    @property
    def ok(self) -> bool:
        return self.run is None or self.run.ok

    def counts(self) -> dict[str, int]:
        return self.run.counts() if self.run is not None else {str(a): n for a, n in self.plan.counts().items()}


def _inbox_dirs(config: Config) -> dict[str, tuple[str, str]]:
    """Inbound flow → (its inbox directory, the label under spool_dir)."""
    dirs = {}
    for flow in (*INBOUND_FLOWS, "airis-reconcile"):  # airis-reconcile: results of AIRIS 突合 runs (SPEC §13)
        settings = config.flows.get(flow)
        inbox = getattr(settings, "inbox", None)
        if inbox:
            dirs[flow] = (config.spool_path(inbox), inbox.rstrip("/"))
    return dirs


def plan_from_config(config: Config, ledger: PurgeLedger, store: BlobStore | None, now: datetime.datetime,
                     *, audit: bool = False) -> PurgePlan:
    """Gather the inputs for *config* and plan (blocking; reads only)."""
    retention = Retention.of(config.retention)
    inbox = {flow: (path, label, list_directory(path)) for flow, (path, label) in _inbox_dirs(config).items()}
    quarantine_root = config.spool_path("quarantine")
    quarantine = {}
    for entry in list_directory(quarantine_root):
        if entry.kind == "directory":
            path = os.path.join(quarantine_root, entry.name)
            quarantine[entry.name] = (path, f"quarantine/{entry.name}", list_directory(path, arrival="changed"))
    names = {flow: {unhidden(e.name).removesuffix(".end") for e in entries} for flow, (_, _, entries) in inbox.items()}
    cutoff = now - datetime.timedelta(seconds=retention.ledger)
    rows = ledger.candidates(cutoff, names)
    blobs: list[Listed] = []
    referenced: set[str] | None = None
    directory = getattr(store, "directory", None)
    if store is not None and isinstance(directory, str):
        blobs = [b for b in list_directory(directory) if b.kind == "file" and not b.name.startswith(".")]
        referenced = ledger.referenced_blobs()
        if blobs and not ledger.list_transfers(limit=1):
            # A store full of blobs and a ledger without a single transfer: most likely the wrong
            # database (database.url), not thousands of leftovers. Judging every blob unreferenced
            # would erase the queue; leftovers wait until the ledger and the store agree again.
            referenced = None
            _log.warn("purge: the ledger has no transfers but the store holds {blobs} blobs; leftover blobs are "
                      "not erased (check database.url)", blobs=len(blobs))
    reports = list_directory(reports_directory(config))
    return plan_purge(rows, retention=retention, now=now, inbox=inbox, quarantine=quarantine, blobs=blobs,
                      referenced_blobs=referenced, reports=reports, audit=audit)


def _lock(directory: str, wait: float, sleep: Callable[[float], None] = time.sleep,
          monotonic: Callable[[], float] = time.monotonic) -> int:
    """The purge's lock, taken without blocking and retried for at most *wait* seconds; :class:`PurgeBusy` then."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
        left = deadline - monotonic()
        if left <= 0:
            os.close(fd)
            raise PurgeBusy(path, wait)
        sleep(min(0.25, left))


def run_purge(config: Config, ledger: PurgeLedger, store: BlobStore | None, *, now: Callable[[], datetime.datetime],
              dry_run: bool = False, audit_pruner: AuditPruner | None = None,
              actor: str = "kei-gateway", lock_wait: float | None = None) -> PurgeOutcome:
    """One purge run for *config*: plan, and unless *dry_run* erase and append the day's report.

    *now* is called for the plan's time and for each item's 消去日時. A failure on one
    item (permissions, a vanished directory) does not stop the others: it is listed in
    the report and the outcome is not ok, so the next run tries again. :class:`PurgeBusy` when another run holds
    the lock for longer than *lock_wait* seconds (default :data:`LOCK_WAIT`).
    """
    reports = reports_directory(config)
    lock = _lock(reports, LOCK_WAIT if lock_wait is None else lock_wait) if not dry_run else None
    try:
        started = now()
        plan = plan_from_config(config, ledger, store, started, audit=audit_pruner is not None)
        if dry_run:
            return PurgeOutcome(plan)
        outcome = PurgeOutcome(plan)
        erased: list[ErasedItem] = recovered_from_journal(reports, store, ledger)
        _write_journal(reports, plan.items, started)
        errors: list[str] = []
        results = 0
        ledger_rows = [item for item in plan.items if item.area == "ledger" and item.transfer_id is not None]
        for item in plan.items:
            if item.area == "ledger" and item.transfer_id is not None:
                continue  # below, in batches
            try:
                done = _erase(item, store, ledger, audit_pruner)
            except Fenced:
                raise  # another node holds the purge now: this run stops here (its journal is recovered next run)
            except Exception as error:  # one item's trouble must not keep the rest
                errors.append(f"{item.area} {item.name}: {describe_error(error)}")
                continue
            if done is None:
                outcome.skipped.append(item)
                continue
            size, sha256 = done
            erased.append(ErasedItem(now(), item.area, item.name, sha256 or item.sha256,
                                     size if size is not None else item.size, item.category, item.reason))
        by_id = {item.transfer_id: item for item in ledger_rows}
        cutoff = plan.now - datetime.timedelta(seconds=float(config.retention.ledger))
        ids = sorted(i for i in by_id if i is not None)
        for start in range(0, len(ids), _BATCH):
            try:
                deleted, count = ledger.delete_transfers(ids[start:start + _BATCH], cutoff, now())
            except Fenced:
                raise
            except Exception as error:
                errors.append(f"ledger transfers {ids[start]}..: {describe_error(error)}")
                continue
            results += count
            at = now()
            for transfer_id in deleted:
                item = by_id[transfer_id]
                erased.append(ErasedItem(at, "ledger", item.name, item.sha256, item.size, item.category, item.reason))
        run = PurgeRun(started, now(), erased, errors, plan.kept_failed, results, actor)
        outcome.run = run
        outcome.report_paths = append_report(reports, run)
        _remove_journal(reports)
        return outcome
    finally:
        if lock is not None:
            os.close(lock)


def _write_journal(directory: str, items: Sequence[Erasure], started: datetime.datetime) -> None:
    """The run's plan, durable before anything is erased (one fsync for the whole list)."""
    lines = [json.dumps({"planned_at": started.isoformat(), "area": item.area, "name": item.name,
                         "category": item.category, "reason": item.reason, "sha256": item.sha256,
                         "size": item.size, "transfer_id": item.transfer_id, "blob_id": item.blob_id,
                         "path": os.path.join(item.directory, item.entry) if item.directory and item.entry else None},
                        ensure_ascii=False) for item in items if item.audit_before is None]
    write_durable(os.path.join(directory, JOURNAL_NAME), [("\n".join(lines) + "\n").encode("utf-8")], mode=0o600)


def _remove_journal(directory: str) -> None:
    try:
        os.unlink(os.path.join(directory, JOURNAL_NAME))
    except FileNotFoundError:
        pass


def recovered_from_journal(directory: str, store: BlobStore | None, ledger: PurgeLedger) -> list[ErasedItem]:
    """What a killed earlier run erased (planned there, gone now), as report lines; [] if no run was cut off.

    Only what is provably gone is reported: a file no longer at its path, a blob no longer in
    the store and no longer referenced, a ledger row no longer there. Its 消去日時 is the
    time that run was planned (the moment of each erasure was lost with the run).
    """
    path = os.path.join(directory, JOURNAL_NAME)
    try:
        with open(path, encoding="utf-8") as journal:
            entries = [json.loads(line) for line in journal if line.strip()]
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        _log.warn("purge: the journal of an interrupted run is unreadable ({reason}); its erasures are not reported",
                  reason=describe_error(error))
        return []
    referenced = ledger.referenced_blobs()
    gone: list[ErasedItem] = []
    for entry in entries:
        if entry.get("path"):
            erased = not os.path.lexists(entry["path"])
        elif entry["area"] == "store" and entry.get("blob_id"):
            erased = (store is not None and not store.exists(entry["blob_id"])
                      and entry["blob_id"] not in referenced)
        elif entry["area"] == "ledger" and entry.get("transfer_id") is not None:
            erased = not ledger.transfer_exists(int(entry["transfer_id"]))
        else:
            erased = False
        if erased:
            gone.append(ErasedItem(datetime.datetime.fromisoformat(entry["planned_at"]), entry["area"], entry["name"],
                                   entry.get("sha256"), entry.get("size"), entry["category"],
                                   f"{entry['reason']} {INTERRUPTED_NOTE}"))
    return gone


def _erase(item: Erasure, store: BlobStore | None, ledger: PurgeLedger,
           audit_pruner: AuditPruner | None) -> tuple[int | None, str | None] | None:
    """Erase one item; (size, SHA-256) as erased, or None when there was nothing left to erase."""
    if item.area == "store":
        assert item.blob_id is not None
        if store is None:
            raise RuntimeError("no store to erase the payload from")
        if item.transfer_id is not None:
            # Only while still in a final state (DONE, CANCELLED, QUARANTINED never change again).
            if not ledger.forget_blob(item.transfer_id, item.blob_id, LEDGER_PRUNABLE_STATES,
                                      reason=item.reason):
                return None
        elif item.blob_id in ledger.referenced_blobs():
            return None  # an unreferenced blob someone committed meanwhile
        store.delete(item.blob_id)
        if item.transfer_id is not None:
            store.delete(degenerations_blob_id(item.blob_id))  # the 縮退 list goes with its payload
        return item.size, item.sha256
    if item.area == "ledger" and item.audit_before is not None:
        if audit_pruner is None:
            return None
        ledger.check_fence()
        count = audit_pruner(item.audit_before)
        return (None, None) if count else None
    assert item.directory is not None and item.entry is not None
    ledger.check_fence()  # a file erasure is no ledger commit: check the lease just before it
    path = os.path.join(item.directory, item.entry)
    try:
        if item.kind == "directory" and not os.path.islink(path) and os.path.isdir(path):
            return _remove_tree(path), None
        return secure_unlink(path)
    except FileNotFoundError:
        return None


def append_report(directory: str, run: PurgeRun) -> tuple[str, str]:
    """Append *run* to the day's CSV and text reports (created with their headings); both fsynced."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    csv_name, text_name = report_names(run.started_at)
    paths = (os.path.join(directory, csv_name), os.path.join(directory, text_name))
    created = _append_to(paths[0], lambda new: render_csv(run.items, heading=new))
    created = _append_to(paths[1], lambda new: render_text(run, title=new).encode("utf-8")) or created
    if created:
        fsync_directory(directory)
    return paths


def _append_to(path: str, render: Callable[[bool], bytes]) -> bool:
    """Append ``render(new)`` to *path* (``new``: the file was empty, so headings go first) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
    try:
        new = os.fstat(fd).st_size == 0
        view = memoryview(render(new))
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return new


_AIRIS_INPUT_CATEGORY = "AIRIS 突合の入力 (AIRIS reconciliation input)"


def append_input_erasures(directory: str, erased: Sequence[tuple[str, str, int, int]], when: datetime.datetime) -> None:
    """List the plaintext inputs a run erased in the day's 消去報告 (CSV rows and a text block), fsynced.

    The block carries no "completed" line: it is not a purge run, and the daemon reads those lines
    to know whether the daily purge was missed. An input already listed in the day's report (its
    transfer id) is not listed again: a run cut after listing calls this again with the same *when*.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    csv_name, text_name = report_names(when)
    listed = _already_listed(os.path.join(directory, csv_name))
    items = [ErasedItem(when, "store", name, digest, size, _AIRIS_INPUT_CATEGORY,
                        f"突合の実行後に平文を消去 (plaintext erased after the run); 暗号化した写しは "
                        f"retention.payloads まで保管 (encrypted copy: transfer {transfer_id})")
             for name, digest, size, transfer_id in erased if f"(encrypted copy: transfer {transfer_id})" not in listed]
    if not items:  # listed by the run before a crash cut it (the flow passes the same *when* again)
        return
    stamp = when.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S")
    block = ["=" * 72, f"AIRIS 突合の入力の消去 (AIRIS inputs erased after the run): {stamp} JST", ""]
    for number, item in enumerate(items, 1):
        block += [f"[{number}] ファイル名 (file): {item.name}", f"    SHA-256: {item.sha256}",
                  f"    サイズ (size): {item.size:,} バイト (bytes)", f"    理由 (reason): {item.reason}"]
    block.append("")
    _append_to(os.path.join(directory, csv_name), lambda new: render_csv(items, heading=new))
    _append_to(os.path.join(directory, text_name), lambda new: ("\n".join(block) + "\n").encode("utf-8"))
    fsync_directory(directory)


def _already_listed(path: str) -> str:
    """The day's CSV report as text ('' when there is none yet): what was listed already."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as report:
            return report.read()
    except FileNotFoundError:
        return ""


def last_completed(directory: str) -> datetime.datetime | None:
    """When the last purge run that finished without failure completed, from the reports; None if never."""
    try:
        names = sorted((n for n in os.listdir(directory) if n.startswith("erasure-") and n.endswith(".txt")),
                       reverse=True)
    except FileNotFoundError:
        return None
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
                found = parse_completed(f.read())
        except OSError:
            continue
        if found is not None:
            return found
    return None
