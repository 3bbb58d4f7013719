"""The audit trail on the ledger database (SQLAlchemy): append, read, purge, verify.

Every method blocks; the daemon calls them through its blocking door, CLI commands directly.
The daemon and the CLI commands append to the same chain, so an append is serialised on the
head row ``audit_head``: on SQLite the transaction starts with ``BEGIN IMMEDIATE`` (the
database's write lock is taken *before* the head is read); on PostgreSQL the head row is read
``SELECT … FOR UPDATE``. Either way the head is then updated only if it still holds the
sequence that was read (a guard that turns any surprise into a retry, never a fork).

The head row also carries ``head_mac`` (:func:`kei_gateway.operations.audit.chain.head_mac`), written in
the same transaction as the head: an append authenticates the new head only if the head it
read was authentic (or a head from before schema 0006, with a ``v1`` record or nothing at its
sequence); otherwise it carries a ``broken:<sequence>`` mark forward, so writing more records
never hides a head that was moved back.
"""

from __future__ import annotations

import os
import random
import time as _time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, inspect, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from kei_gateway.adapters.ledger.models import AuditEntry, AuditHead
from kei_gateway.operations.audit.chain import (
    ANCHOR_EVENT,
    BROKEN_HEAD_PREFIX,
    FIELD_NAMES,
    GENESIS_MAC,
    AuditRecord,
    ChainHead,
    ChainReport,
    StoredRecord,
    chain,
    head_authentic,
    head_mac,
    record_version,
    utc,
    verify_chain,
)

if TYPE_CHECKING:
    from kei_gateway.config import Config

__all__ = ["AuditLog", "AuditError", "AuditKeyError", "AuditUnavailable", "PurgeResult",
           "load_audit_key", "audit_key_from_config"]

_HEAD_ID = 1
_RETRY_SECONDS = 30.0


class AuditError(Exception):
    """The audit trail cannot be written or read; the message says what to do."""


class AuditKeyError(AuditError):
    """``[keys] audit`` is missing, open to others or not a key."""


class AuditUnavailable(AuditError):
    """The ledger has no audit table yet (``kei-gateway db upgrade``) or its head row is gone."""


class _HeadMoved(Exception):
    pass


@dataclass(frozen=True)
class PurgeResult:
    """What :meth:`AuditLog.purge_before` did: records deleted, and the anchor (None if nothing was old enough)."""

    deleted: int
    anchor: StoredRecord | None


def load_audit_key(path: str) -> bytes:
    """The audit key in *path*: parsed exactly like a store key (raw 32 bytes or base64)."""
    from kei_gateway.adapters.store.errors import StoreKeyError
    from kei_gateway.adapters.store.keys import load_store_key

    try:
        return load_store_key(path)
    except StoreKeyError as error:
        raise AuditKeyError(f"keys.audit: {str(error).replace('a store key', 'the audit key')}") from None


def audit_key_from_config(config: Config, environ: Mapping[str, str] = os.environ) -> bytes:
    """``[keys] audit``, refused (like every secret file) if missing, unreadable or readable by others."""
    from kei_gateway.config import check_files

    problems = [p for p in check_files(config, environ) if p.path == "keys.audit"]
    if problems:
        raise AuditKeyError("; ".join(str(p) for p in problems))
    return load_audit_key(config.file_path(config.keys.audit, environ))


_MOVE_HEAD = (update(AuditHead)
              .where(AuditHead.id == _HEAD_ID, AuditHead.sequence == bindparam("old_sequence"),
                     AuditHead.mac == bindparam("old_mac"))
              .values(sequence=bindparam("new_sequence"), mac=bindparam("new_mac"), head_mac=bindparam("sealed")))
"""The head moved from the one read to the new one, only if no other writer moved it (built once: it runs in
every action's transaction, issue 16)."""


_HEAD_FOR_UPDATE = select(AuditHead.sequence, AuditHead.mac, AuditHead.head_mac).where(AuditHead.id == _HEAD_ID) \
    .with_for_update()
_INSERT_ENTRY = insert(AuditEntry)
"""The statements of :meth:`AuditLog.append_in`, built once (it runs in every action's transaction)."""


def _row_values(stored: StoredRecord) -> dict[str, Any]:
    values = {name: getattr(stored.record, name) for name in FIELD_NAMES}
    values.update(sequence=stored.sequence, previous_mac=stored.previous_mac, mac=stored.mac)
    return values


def _stored(row: Any) -> StoredRecord:
    record = AuditRecord(**{name: getattr(row, name) for name in FIELD_NAMES})
    return StoredRecord(int(row.sequence), record, row.previous_mac, row.mac)


DAEMON_ACTOR = "kei-gateway"
"""The actor of the records the daemon writes itself."""


class AuditLog:
    """The chain in the ``audit`` table of *engine*, MACed with *key* (32 bytes).

    :param sleep: how a conflicting append waits before it tries again (tests pass a no-op).
    """

    def __init__(self, engine: Engine, key: bytes, sleep: Callable[[float], None] = _time.sleep,
                 monotonic: Callable[[], float] = _time.monotonic) -> None:
        if len(key) != 32:
            raise ValueError("the audit key is 32 bytes")
        self._engine = engine
        self._key = bytes(key)
        self._sleep = sleep
        self._monotonic = monotonic
        self._sqlite = engine.dialect.name == "sqlite"

    @property
    def engine(self) -> Engine:
        return self._engine

    def available(self) -> bool:
        """Whether the audit tables exist (the schema is at 0005 or later)."""
        return inspect(self._engine).has_table("audit_head")

    # --- writing --------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[tuple[Connection, ChainHead]]:
        """A transaction holding the chain's write lock, and the head as it is now."""
        with self._engine.connect() as connection:
            if self._sqlite:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                row = connection.execute(
                    select(AuditHead.sequence, AuditHead.mac, AuditHead.head_mac)
                    .where(AuditHead.id == _HEAD_ID).with_for_update()).first()
            except (OperationalError, ProgrammingError) as error:  # PostgreSQL: UndefinedTable is a ProgrammingError
                connection.rollback()
                if "no such table" in str(error) or "does not exist" in str(error):
                    raise AuditUnavailable("the ledger has no audit table: run 'kei-gateway db upgrade'") from None
                raise
            if row is None:
                connection.rollback()
                raise AuditUnavailable("the audit chain's head row (audit_head id 1) is missing: the table was tampered with")
            try:
                yield connection, ChainHead(int(row.sequence), row.mac, row.head_mac)
                connection.commit()
            except BaseException:
                connection.rollback()
                raise

    def _head_mark(self, connection: Connection, head: ChainHead) -> str | None:
        """``None`` when *head* may be followed by an authenticated head, else the ``broken:`` mark to carry.

        Called before anything in the transaction changes the table (a purge deletes the record at the head).
        """
        if head.head_mac is not None:
            if head.head_mac.startswith(BROKEN_HEAD_PREFIX):
                return head.head_mac  # the first break stays named
            return None if head_authentic(self._key, head) else f"{BROKEN_HEAD_PREFIX}{head.sequence + 1}"
        # no MAC: a head from before schema 0006 -- unless the record it names was written since
        if head.sequence == 0 and head.mac == GENESIS_MAC:
            return None
        row = connection.execute(select(AuditEntry).where(AuditEntry.sequence == head.sequence)).first()
        if row is not None and record_version(self._key, _stored(row)) == 2:
            return f"{BROKEN_HEAD_PREFIX}{head.sequence + 1}"
        return None

    def _move_head(self, connection: Connection, old: ChainHead, new: ChainHead, mark: str | None) -> None:
        sealed = mark if mark is not None else head_mac(self._key, new.sequence, new.mac)
        result = connection.execute(_MOVE_HEAD, {"old_sequence": old.sequence, "old_mac": old.mac,
                                                 "new_sequence": new.sequence, "new_mac": new.mac, "sealed": sealed})
        if result.rowcount != 1:
            raise _HeadMoved()

    def _retrying(self, attempt: Callable[[], Any]) -> Any:
        deadline = self._monotonic() + _RETRY_SECONDS
        delay = 0.005
        while True:
            try:
                return attempt()
            except (_HeadMoved, IntegrityError):
                pass  # another writer got in between: read the new head and chain again
            except OperationalError as error:
                text = str(error).lower()
                if "locked" not in text and "busy" not in text and "deadlock" not in text and "serializ" not in text:
                    raise
            if self._monotonic() > deadline:
                raise AuditError("the audit chain stayed locked by another writer for 30 s; try again")
            self._sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.25)

    def append_batch(self, records: Sequence[AuditRecord]) -> list[StoredRecord]:
        """Chain *records* after the head and store them in one transaction; return them as stored."""
        if not records:
            return []

        def attempt() -> list[StoredRecord]:
            with self._locked() as (connection, head):
                mark = self._head_mark(connection, head)
                stored = chain(self._key, records, head)
                self._move_head(connection, head, ChainHead(stored[-1].sequence, stored[-1].mac), mark)
                connection.execute(insert(AuditEntry), [_row_values(s) for s in stored])
                return stored

        result: list[StoredRecord] = self._retrying(attempt)
        return result

    def append(self, record: AuditRecord) -> StoredRecord:
        return self.append_batch([record])[0]

    def append_in(self, connection: Connection, event: str, fields: Mapping[str, Any], now: datetime,
                  actor: str = DAEMON_ACTOR) -> StoredRecord:
        """Chain the record of *event* (by *actor*) inside the caller's open transaction on *connection* (STYLE 14).

        The caller has already written in that transaction (SQLite then holds the database's
        write lock; PostgreSQL locks the head row here), so the head read below cannot move
        before the commit: the record and the action commit, or roll back, together.
        """
        from kei_gateway.operations.audit.operator_action import record_from_fields

        record = record_from_fields(event, actor, now, fields)
        row = connection.execute(_HEAD_FOR_UPDATE).first()
        if row is None:
            raise AuditUnavailable("the audit chain's head row (audit_head id 1) is missing: the table was tampered with")
        head = ChainHead(int(row.sequence), row.mac, row.head_mac)
        mark = self._head_mark(connection, head)
        [stored] = chain(self._key, [record], head)
        self._move_head(connection, head, ChainHead(stored.sequence, stored.mac), mark)
        connection.execute(_INSERT_ENTRY, [_row_values(stored)])
        return stored

    def purge_before(self, cutoff: datetime, now: datetime, actor: str = "kei-gateway") -> PurgeResult:
        """Delete the records older than *cutoff* and append an anchor carrying the last deleted MAC.

        The boundary is the newest record with ``time < cutoff``: it and every record before it
        go (by sequence, so a record written with a slightly earlier clock cannot be left alone
        in the middle). The anchor (event ``audit.purged``, ``count`` = records deleted) is
        appended in the same transaction, so the chain stays verifiable.
        """
        cutoff = utc(cutoff)

        def attempt() -> PurgeResult:
            with self._locked() as (connection, head):
                mark = self._head_mark(connection, head)
                last = connection.execute(
                    select(AuditEntry.sequence, AuditEntry.mac).where(AuditEntry.time < cutoff)
                    .order_by(AuditEntry.sequence.desc()).limit(1)).first()
                if last is None:
                    return PurgeResult(0, None)
                deleted = connection.execute(delete(AuditEntry).where(AuditEntry.sequence <= last.sequence)).rowcount
                anchor = AuditRecord(time=now, actor=actor, event=ANCHOR_EVENT, count=int(deleted),
                                     reason=f"records before {cutoff.strftime('%Y-%m-%dT%H:%M:%SZ')}",
                                     anchor_sequence=int(last.sequence), anchor_mac=last.mac)
                [stored] = chain(self._key, [anchor], head)
                self._move_head(connection, head, ChainHead(stored.sequence, stored.mac), mark)
                connection.execute(insert(AuditEntry), [_row_values(stored)])
                return PurgeResult(int(deleted), stored)

        result: PurgeResult = self._retrying(attempt)
        return result

    # --- reading ----------------------------------------------------------------------

    def head(self) -> ChainHead:
        with self._engine.connect() as connection:
            row = connection.execute(select(AuditHead.sequence, AuditHead.mac, AuditHead.head_mac)
                                     .where(AuditHead.id == _HEAD_ID)).first()
        if row is None:
            raise AuditUnavailable("the audit chain's head row (audit_head id 1) is missing")
        return ChainHead(int(row.sequence), row.mac, row.head_mac)

    def iter_records(self, since: datetime | None = None, batch: int = 1000) -> Iterator[StoredRecord]:
        """Every record (or those at or after *since*) in sequence order, read in pages."""
        after = -1
        while True:
            query = select(AuditEntry).where(AuditEntry.sequence > after)
            if since is not None:
                query = query.where(AuditEntry.time >= utc(since))
            with self._engine.connect() as connection:
                rows = connection.execute(query.order_by(AuditEntry.sequence).limit(batch)).all()
            for row in rows:
                yield _stored(row)
            if len(rows) < batch:
                return
            after = int(rows[-1].sequence)

    def records_since(self, since: datetime) -> list[StoredRecord]:
        """The records written at or after *since* (for ``audit report``)."""
        return list(self.iter_records(since))

    def count(self) -> int:
        with self._engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(AuditEntry)).scalar_one())

    def unrecorded_transfers(self, shown: int = 20) -> tuple[int, list[int]]:
        """How many transfers no audit record names, and the first *shown* of their ids.

        Once records were purged, only transfers created since the oldest kept record count
        (the purge deletes older records with the ledger metadata). Reads two id columns.
        """
        from kei_gateway.adapters.ledger.models import Transfer

        with self._engine.connect() as connection:
            purged = connection.execute(select(func.count()).select_from(AuditEntry)
                                        .where(AuditEntry.event == ANCHOR_EVENT)).scalar_one()
            oldest = connection.execute(select(func.min(AuditEntry.time))
                                        .where(AuditEntry.event != ANCHOR_EVENT)).scalar_one() if purged else None
            if oldest is None:
                query = select(Transfer.id)
            else:
                query = select(Transfer.id).where(Transfer.created_at >= oldest)
            named = {row[0] for row in connection.execute(
                select(AuditEntry.transfer_id).where(AuditEntry.transfer_id.is_not(None)).distinct())}
            missing = sorted(int(row[0]) for row in connection.execute(query) if int(row[0]) not in named)
        return len(missing), missing[:shown]

    def verify(self) -> ChainReport:
        """Walk the whole chain (see :func:`kei_gateway.operations.audit.chain.verify_chain`).

        The walk reads in pages; a purge running meanwhile (another process) deletes the
        oldest records and appends its anchor, which can make one walk see a gap at the
        start. A gap is therefore checked by a second walk: a real deletion is still there.
        """
        report = verify_chain(self.iter_records(), self._key, self.head())
        if report.problem is not None and report.problem.kind == "deleted":
            report = verify_chain(self.iter_records(), self._key, self.head())
        return report
