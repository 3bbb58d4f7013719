"""Where the audit observer's records wait until they are chained, so that a kill -9 does not lose them.

Records of actions that change the ledger are chained in the action's own transaction
(``TransferLedger.audit_writer``). The others — a connection denied before any request, a
refused push, the daemon starting and stopping, a configuration refused — have no ledger
transaction; :class:`~kei_gateway.operations.audit.observer.AuditObserver` queues them and
appends them in batches. Each record it queues is also written here, as one JSON line
appended with one ``write()`` to ``<state_dir>/audit-pending.jsonl``, before the observer
returns. A ``write()`` that has returned is in the kernel: a kill -9 of the daemon cannot
undo it (a power cut can; the file is not fsynced per record, so that a flood of denied
connections does not cost a disk flush each).

The file holds the records chained since it was last emptied, then those still queued, in
order. The observer empties it whenever its queue is empty after a flush, and rewrites it
with only the queued records when it grows past :data:`COMPACT_BYTES`. At the next start
(:func:`recover_pending`, before the reactor runs) the records a killed daemon left here are
chained, except those already in the chain (killed between a batch's commit and the
emptying): a record is recognised by its time (to the millisecond), event, actor and fields.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Final

from sqlalchemy import select

from kei_gateway.adapters.ledger.models import AuditEntry
from kei_gateway.operations.audit.chain import FIELD_NAMES, AuditRecord, utc
from kei_gateway.operations.audit.log import AuditLog

__all__ = ["AuditSpool", "PENDING_NAME", "COMPACT_BYTES", "recover_pending", "spool_path"]

PENDING_NAME: Final = "audit-pending.jsonl"
COMPACT_BYTES: Final = 8 * 1024 * 1024
"""Past this size the file is rewritten with the queued records only (at most ``max_queue`` lines)."""
_SAME_TIME = datetime.timedelta(milliseconds=1)


def spool_path(state_dir: str, node_id: str | None = None) -> str:
    """The pending file in *state_dir*; with *node_id*, that node's own (nodes sharing one ``state_dir`` on a
    shared ledger must not append to one file, SPEC §14)."""
    if node_id is None:
        return os.path.join(state_dir, PENDING_NAME)
    return os.path.join(state_dir, f"audit-pending-{node_id}.jsonl")


def _line(record: AuditRecord) -> bytes:
    values = {name: getattr(record, name) for name in FIELD_NAMES}
    values["time"] = record.time.isoformat()
    return (json.dumps(values, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "replace")


def _record(line: bytes) -> AuditRecord | None:
    try:
        values = json.loads(line)
        values["time"] = datetime.datetime.fromisoformat(values["time"])
        return AuditRecord(**{name: values.get(name) for name in FIELD_NAMES})
    except (ValueError, TypeError, KeyError):
        return None  # a line cut short by the kill (the last one): its event's write() never returned


class AuditSpool:
    """The pending file of one daemon (thread-safe: the observer writes from any thread)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.failed_writes = 0
        """Records that could not be written here (disk full, …): they are queued in memory only."""

    def open(self, queued: Iterable[AuditRecord] = ()) -> None:
        """Start a fresh file holding *queued* (what the observer holds already; anything older was recovered)."""
        with self._lock:
            self._rewrite(queued)

    def write(self, record: AuditRecord) -> None:
        with self._lock:
            if self._fd is None:
                return
            try:
                os.write(self._fd, _line(record))
            except OSError:
                self.failed_writes += 1

    def emptied(self) -> None:
        """Every record written so far is chained (or was refused and counted): start over."""
        with self._lock:
            if self._fd is not None:
                try:
                    os.ftruncate(self._fd, 0)
                except OSError:
                    pass  # the next start recognises the chained records and skips them

    def compact(self, queued: Sequence[AuditRecord]) -> None:
        """If the file has grown past :data:`COMPACT_BYTES`, rewrite it with *queued* (the rest is chained)."""
        with self._lock:
            if self._fd is None:
                return
            try:
                if os.fstat(self._fd).st_size <= COMPACT_BYTES:
                    return
            except OSError:
                return
            self._rewrite(queued)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _rewrite(self, records: Iterable[AuditRecord]) -> None:
        temporary = self.path + ".new"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            data = b"".join(_line(record) for record in records)
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)


def read_pending(path: str) -> list[AuditRecord]:
    try:
        with open(path, "rb") as pending:
            return [record for record in (_record(line) for line in pending if line.strip()) if record is not None]
    except FileNotFoundError:
        return []


def _already_chained(audit_log: AuditLog, record: AuditRecord) -> bool:
    when = utc(record.time)
    query = (select(AuditEntry).where(AuditEntry.event == record.event,
                                      AuditEntry.time >= when - _SAME_TIME, AuditEntry.time <= when + _SAME_TIME))
    with audit_log.engine.connect() as connection:
        rows = connection.execute(query).all()
    wanted = {name: getattr(record, name) for name in FIELD_NAMES if name != "time"}
    return any({name: getattr(row, name) for name in wanted} == wanted for row in rows)


def recover_pending(path: str, audit_log: AuditLog) -> tuple[int, int]:
    """Chain the records a killed daemon left in *path* (not those chained already), then remove the file.

    Returns (chained now, found already chained). Blocking: call it before the reactor runs.
    A record the database refuses (a value it cannot store) is left out and not counted; when
    the database is unavailable the error is raised and the file stays for the next start.
    """
    from sqlalchemy.exc import DBAPIError, OperationalError

    records = read_pending(path)
    missing = [record for record in records if not _already_chained(audit_log, record)]
    chained = 0
    if missing:
        try:
            audit_log.append_batch(missing)
            chained = len(missing)
        except (OperationalError, OSError):
            raise
        except DBAPIError:
            for record in missing:  # one refused record must not keep the others out
                try:
                    audit_log.append_batch([record])
                    chained += 1
                except DBAPIError as error:
                    if isinstance(error, OperationalError) or error.connection_invalidated:
                        raise
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return chained, len(records) - len(missing)
