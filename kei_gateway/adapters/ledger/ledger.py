"""Ledger queries used by the daemon. Every method blocks: call it through the blocking door."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, String, cast, func, select
from sqlalchemy.orm import Session

from kei_gateway.adapters.ledger.db import PING_STATEMENT_TIMEOUT
from kei_gateway.adapters.ledger.db import ping as _ping
from kei_gateway.adapters.ledger.leases import Fence, Hold, check_fence, claim_in, hold_in, lease_exists, lease_of, \
    lock_lease, write_lease
from kei_gateway.adapters.ledger.models import LeaseRow, Transfer, TransferState
from kei_gateway.core.lease import ClaimDecision, LeaseKind, StartAction, decide_claim, is_live, on_start, revoke
from kei_gateway.core.transfer import Transition, check_transition, on_restart
from kei_gateway.runtime.blocking import retry_transient

__all__ = ["Ledger", "TransferLedger", "TransferRow", "TransferNotFound", "OPEN_STATES", "in_chunks", "IN_CHUNK",
           "Claimed", "FencedLedger", "AuditEvent", "AuditWriter", "write_audit", "NewTransfer"]

OPEN_STATES = tuple(s.value for s in TransferState if s not in (TransferState.DONE, TransferState.CANCELLED))
"""States of transfers that still need something: shown in the queue gauge and STATUS=."""


IN_CHUNK = 500
"""Values per ``IN (...)`` list: well under SQLite's and PostgreSQL's parameter limits."""

T = TypeVar("T")


def in_chunks(items: Iterable[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """*items* in lists of at most *size*, for ``column.in_(chunk)`` queries."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


AuditEvent = tuple[str, Mapping[str, Any]]
"""An action's audit record as its event name and fields (what the event is logged with)."""
AuditWriter = Callable[[Connection, str, Mapping[str, Any], datetime], object]
"""Appends an audit record on the given connection, inside the caller's transaction."""


def write_audit(writer: AuditWriter | None, connection: Connection, audit: AuditEvent | None, transfer_id: int | None,
                now: datetime) -> None:
    """Chain *audit* (with *transfer_id* added) on *connection*, inside the action's open transaction, after the
    action's own writes (SQLite then holds the write lock, so the chain's head cannot move before the commit)."""
    if audit is None or writer is None:
        return
    event, fields = audit
    writer(connection, event, {**fields, "transfer_id": transfer_id} if transfer_id is not None else fields, now)


class Ledger:
    """The ledger on a SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ping(self) -> None:
        """One bounded attempt (no retry): the health checks and the watchdog report the database as it is now, and
        must end within their interval (the engine's network bounds, :data:`PING_STATEMENT_TIMEOUT`)."""
        _ping(self.engine, PING_STATEMENT_TIMEOUT)

    @retry_transient
    def queue_counts(self) -> dict[tuple[str, str], int]:
        """Number of open transfers per (flow, state)."""
        query = (select(Transfer.flow, Transfer.state, func.count())
                 .where(Transfer.state.in_(OPEN_STATES)).group_by(Transfer.flow, Transfer.state))
        with self.engine.connect() as connection:
            return {(flow, state): int(count) for flow, state, count in connection.execute(query)}

    @retry_transient
    def oldest_queued(self) -> dict[str, Any]:
        """Creation time of the oldest transfer waiting to be sent, per flow."""
        waiting = (TransferState.QUEUED.value, TransferState.RETRY_WAIT.value, TransferState.SENDING.value)
        query = (select(Transfer.flow, func.min(Transfer.created_at))
                 .where(Transfer.state.in_(waiting)).group_by(Transfer.flow))
        with self.engine.connect() as connection:
            return {flow: _aware(oldest) for flow, oldest in connection.execute(query) if oldest is not None}


@dataclass(frozen=True)
class TransferRow:
    """A transfer as read from the ledger: a plain snapshot, safe to hand to the reactor thread."""

    id: int
    flow: str
    direction: str
    peer: str
    state: TransferState
    local_name: str
    remote_name: str | None
    size: int
    sha256: str | None
    record_count: int
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    receipt_summary: str | None
    created_at: datetime
    updated_at: datetime
    blob_id: str | None
    source_removed: bool
    approved_by: str | None
    remote_etag: str | None
    relay_name: str | None

    @classmethod
    def of(cls, transfer: Transfer) -> TransferRow:
        values: dict[str, Any] = {name: _aware(getattr(transfer, name)) for name in cls.__dataclass_fields__}
        values["state"] = TransferState(values["state"])
        return cls(**values)


def _aware(value: object) -> object:
    """Every time in the ledger is UTC: SQLite hands back naive datetimes, PostgreSQL aware ones in the
    server's time zone (``timezone`` setting); both come back aware in UTC."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return value


@dataclass(frozen=True)
class NewTransfer:
    """A transfer to create (the fields of :meth:`TransferLedger.add_transfer`), for a ledger method that creates
    one inside a larger transaction (``ResultLedger.accept_relay``: a push accepted and relayed in one commit)."""

    flow: str
    direction: str
    peer: str
    local_name: str
    state: TransferState
    size: int
    sha256: str | None
    record_count: int
    blob_id: str | None
    now: datetime
    last_error: str | None = None
    source_removed: bool = False
    remote_name: str | None = None
    remote_etag: str | None = None

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`TransferLedger.add_transfer` that create it."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def model(self) -> Transfer:
        """The ORM object to add to a session."""
        return Transfer(flow=self.flow, direction=self.direction, peer=self.peer, local_name=self.local_name,
                        state=TransferState(self.state).value, size=self.size, sha256=self.sha256,
                        record_count=self.record_count, attempts=0, blob_id=self.blob_id, created_at=self.now,
                        updated_at=self.now, last_error=self.last_error, source_removed=self.source_removed,
                        remote_name=self.remote_name, remote_etag=self.remote_etag)


class TransferNotFound(LookupError):
    def __init__(self, transfer_id: int) -> None:
        super().__init__(f"no transfer {transfer_id}; see 'kei-gateway transfers list'")
        self.transfer_id = transfer_id


class TransferLedger(Ledger):
    """Transfers: create, move between states (checked), query. Every method blocks.

    :attr:`audit_writer`, set by the composition root to the audit chain's
    ``append_in``, writes an action's audit record in the action's own transaction
    (STYLE 14): a kill -9 cannot leave one without the other.
    """

    audit_writer: AuditWriter | None = None

    @property
    def records_audit(self) -> bool:
        return self.audit_writer is not None

    @retry_transient
    def add_transfer(self, *, flow: str, direction: str, peer: str, local_name: str, state: TransferState,
                     size: int, sha256: str | None, record_count: int, blob_id: str | None, now: datetime,
                     last_error: str | None = None, source_removed: bool = False, remote_name: str | None = None,
                     remote_etag: str | None = None, audit: AuditEvent | None = None,
                     fence: Fence | None = None, hold: Hold | None = None) -> TransferRow:
        """Commit a new transfer, and with it *audit* (event name and fields; the transfer id is added); with
        *fence*, only while that lease is this node's (an ingest under the outbox's lease, SPEC §14); with
        *hold*, the new transfer's lease of that kind is written in the same commit, held by *hold*'s node
        (its fence: ``hold.fence(row.id)``) — a received file's relay lease."""
        with Session(self.engine) as session, session.begin():
            if fence is not None:
                check_fence(session, fence)
            transfer = NewTransfer(flow=flow, direction=direction, peer=peer, local_name=local_name, state=state,
                                   size=size, sha256=sha256, record_count=record_count, blob_id=blob_id, now=now,
                                   last_error=last_error, source_removed=source_removed, remote_name=remote_name,
                                   remote_etag=remote_etag).model()
            session.add(transfer)
            session.flush()  # the INSERT holds SQLite's write lock from here, so the chain's head cannot move
            if hold is not None:
                hold_in(session, hold, transfer.id, now)
            write_audit(self.audit_writer, session.connection(), audit, transfer.id, now)
            return TransferRow.of(transfer)

    @retry_transient
    def get(self, transfer_id: int) -> TransferRow:
        with Session(self.engine) as session:
            transfer = session.get(Transfer, transfer_id)
            if transfer is None:
                raise TransferNotFound(transfer_id)
            return TransferRow.of(transfer)

    def transition(self, transfer_id: int, new_state: TransferState, now: datetime, *,
                   audit: AuditEvent | None = None, fence: Fence | None = None, release: bool = False,
                   **fields: Any) -> TransferRow:
        """Move a transfer to *new_state* (checked against SPEC §6) and set *fields*, in one transaction
        with the *audit* record of the action (see :meth:`add_transfer`).

        With *fence* (SPEC §14) the same transaction checks that the lease is still this node's, or
        raises :class:`~kei_gateway.adapters.ledger.leases.Fenced` and writes nothing; *release* frees
        the lease with the commit."""
        return self._change(transfer_id, now, new_state, fields, audit, fence, release)

    def apply(self, transfer_id: int, transition: Transition, now: datetime, *, fence: Fence | None = None,
              release: bool = False) -> TransferRow:
        """Apply a decision of :mod:`kei_gateway.core.transfer` (edge checked), in one transaction (fenced as
        :meth:`transition`)."""
        return self._change(transfer_id, now, transition.state, dict(transition.fields), None, fence, release)

    def update(self, transfer_id: int, now: datetime, *, fence: Fence | None = None, **fields: Any) -> TransferRow:
        """Set *fields* without changing the state (fenced as :meth:`transition`)."""
        return self._change(transfer_id, now, None, fields, None, fence)

    @retry_transient
    def _change(self, transfer_id: int, now: datetime, new_state: TransferState | None,
                fields: dict[str, Any], audit: AuditEvent | None = None, fence: Fence | None = None,
                release: bool = False) -> TransferRow:

        with Session(self.engine) as session, session.begin():
            if fence is not None:
                check_fence(session, fence, release=release)  # the lease row first: the order of every claim
            transfer = session.get(Transfer, transfer_id, with_for_update=True)
            if transfer is None:
                raise TransferNotFound(transfer_id)
            if new_state is not None:
                check_transition(transfer.state, new_state)
                transfer.state = new_state.value
            transfer.updated_at = now
            for name, value in fields.items():
                setattr(transfer, name, value)
            session.flush()  # the UPDATE holds SQLite's write lock from here
            write_audit(self.audit_writer, session.connection(), audit, transfer_id, now)
            return TransferRow.of(transfer)

    @retry_transient
    def unremoved_source(self, flow: str, local_name: str, sha256: str | None) -> TransferRow | None:
        """A transfer already committed for this very outbox file whose original was not yet removed.

        That is the trace of a crash between the ledger commit and the unlink: the
        file must not become a second transfer.
        """
        same_content = Transfer.sha256 == sha256 if sha256 is not None else Transfer.sha256.is_(None)
        query = (select(Transfer).where(Transfer.flow == flow, Transfer.local_name == local_name, same_content,
                                        Transfer.source_removed.is_(False), Transfer.direction == "out"))
        with Session(self.engine) as session:
            transfer = session.scalars(query.limit(1)).first()
            return TransferRow.of(transfer) if transfer is not None else None

    @retry_transient
    def requeue_sending(self, now: datetime, node: str | None = None) -> int:
        """At a node's start: the SENDING transfers cut off by its own stop or crash — its own leases, expired ones,
        and those no lease covers — are QUEUED again (:func:`on_restart` through the edge check), their leases
        revoked so a stalled holder's commit is fenced; another live node's uploads are left alone
        (:func:`~kei_gateway.core.lease.on_start`). Without *node*, every unheld or expired one."""
        count = 0
        with Session(self.engine) as session, session.begin():
            rows = session.scalars(select(Transfer).where(Transfer.state == TransferState.SENDING.value)
                                   .order_by(Transfer.id).with_for_update(skip_locked=True)).all()
            for transfer in rows:
                lease_row = lock_lease(session, LeaseKind.TRANSFER, str(transfer.id), skip_locked=True)
                if lease_row is None and lease_exists(session, LeaseKind.TRANSFER, str(transfer.id)):
                    continue  # another node is committing on it this very moment: it is alive
                lease = lease_of(lease_row)
                if on_start(lease, node=node or "", now=now) is StartAction.LEAVE:
                    continue
                if not self._requeue(session, transfer, lease_row, now):
                    continue
                count += 1
        return count

    @staticmethod
    def _requeue(session: Session, transfer: Transfer, lease_row: LeaseRow | None, now: datetime) -> bool:
        after = on_restart(transfer.state)
        if after is None:
            return False
        transfer.state = check_transition(transfer.state, after).value
        transfer.updated_at = now
        lease = lease_of(lease_row)
        if lease is not None:
            write_lease(session, lease_row, revoke(lease))
        return True

    @retry_transient
    def claim_due(self, flow: str, now: datetime, node: str, duration: float, scan: int = 20) -> Claimed | None:
        """Claim the next outbound transfer of *flow* to send, for *node* (SPEC §14), in one transaction.

        Candidates are QUEUED, RETRY_WAIT whose time has come, and SENDING whose lease has expired (its
        holder died or stalled: taken over, and QUEUED again by the restart rule before it is sent anew).
        Rows another node is claiming right now are skipped (``FOR UPDATE SKIP LOCKED``); a candidate
        whose lease another node holds live is left to it. The transfer's state is not changed otherwise:
        the caller moves it to SENDING with the returned fence.
        """
        sending = Transfer.state == TransferState.SENDING.value
        waiting = ((Transfer.state == TransferState.QUEUED.value)
                   | ((Transfer.state == TransferState.RETRY_WAIT.value) & (Transfer.next_attempt_at <= now)))
        free = LeaseRow.holder.is_(None) | (LeaseRow.expires <= now)
        lease_of_transfer = (LeaseRow.kind == LeaseKind.TRANSFER.value) & (LeaseRow.key == cast(Transfer.id, String))
        query = (select(Transfer).outerjoin(LeaseRow, lease_of_transfer)
                 .where(Transfer.flow == flow, Transfer.direction == "out",
                        (waiting & (free | (LeaseRow.holder == node)))
                        | (sending & LeaseRow.kind.is_not(None) & free))
                 .order_by(Transfer.id).limit(scan).with_for_update(of=Transfer, skip_locked=True))
        with Session(self.engine) as session, session.begin():
            for transfer in session.scalars(query).all():
                key = str(transfer.id)
                if transfer.state == TransferState.SENDING.value:
                    lease = lease_of(lock_lease(session, LeaseKind.TRANSFER, key, skip_locked=True))
                    if lease is None or is_live(lease, now):  # (None: absent, or locked by a commit right now)
                        continue  # being sent (or being claimed) right now; an unleased SENDING row waits for a start
                decision = claim_in(session, LeaseKind.TRANSFER, key, node, now, duration)
                if decision.lease is None:
                    continue
                if transfer.state == TransferState.SENDING.value:
                    transfer.state = check_transition(transfer.state, on_restart(transfer.state) or transfer.state).value
                    transfer.updated_at = now
                session.flush()
                return Claimed(TransferRow.of(transfer), Fence(LeaseKind.TRANSFER, key, node, decision.lease.token),
                               decision)
        return None

    @retry_transient
    def claim_received(self, transfer_id: int, node: str, now: datetime, duration: float) -> Claimed | None:
        """Claim the relay of the received file *transfer_id* (its ``received`` lease) for *node*, in one
        transaction: only while the transfer is still ``VALIDATED`` (a relayed file's lease, released with its
        ``DONE`` under the committer's token, is never granted again — that token tells which staged copy
        was decided) and its lease is free, expired (a takeover) or already *node*'s. None otherwise.

        The lease row is locked first (``SKIP LOCKED``: a relay committing it right now is skipped), then the
        transfer read: a ``DONE`` committed before the lock is seen."""
        key = str(transfer_id)
        with Session(self.engine) as session, session.begin():
            row = lock_lease(session, LeaseKind.RECEIVED, key, skip_locked=True)
            if row is None and lease_exists(session, LeaseKind.RECEIVED, key):
                return None  # being committed or claimed right now
            transfer = session.get(Transfer, transfer_id)
            if transfer is None or transfer.state != TransferState.VALIDATED.value:
                return None
            decision = decide_claim(lease_of(row), kind=LeaseKind.RECEIVED, key=key, node=node, now=now,
                                    duration=duration)
            if decision.lease is None or not write_lease(session, row, decision.lease):
                return None
            return Claimed(TransferRow.of(transfer), Fence(LeaseKind.RECEIVED, key, node, decision.lease.token),
                           decision)

    @retry_transient
    def received_token(self, transfer_id: int) -> int | None:
        """The token of the received file's ``received`` lease (None: it has none): once the file is ``DONE``,
        the token of the relay that committed it."""
        with Session(self.engine) as session:
            token = session.execute(select(LeaseRow.token).where(
                LeaseRow.kind == LeaseKind.RECEIVED.value, LeaseRow.key == str(transfer_id))).scalar()
            return int(token) if token is not None else None

    @retry_transient
    def due(self, flow: str, now: datetime, limit: int = 10) -> list[TransferRow]:
        """Outbound transfers of *flow* ready for an attempt: QUEUED, or RETRY_WAIT whose time has come."""
        query = (select(Transfer).where(
            Transfer.flow == flow, Transfer.direction == "out",
            (Transfer.state == TransferState.QUEUED.value)
            | ((Transfer.state == TransferState.RETRY_WAIT.value) & (Transfer.next_attempt_at <= now)))
            .order_by(Transfer.id).limit(limit))
        with Session(self.engine) as session:
            return [TransferRow.of(t) for t in session.scalars(query)]

    @retry_transient
    def list_transfers(self, *, state: str | None = None, flow: str | None = None,
                       limit: int = 100, oldest_first: bool = False) -> list[TransferRow]:
        """Transfers, newest first (or oldest first: what has waited longest comes within *limit*)."""
        order = Transfer.id.asc() if oldest_first else Transfer.id.desc()
        query = select(Transfer).order_by(order).limit(limit)
        if state is not None:
            query = query.where(Transfer.state == state)
        if flow is not None:
            query = query.where(Transfer.flow == flow)
        with Session(self.engine) as session:
            return [TransferRow.of(t) for t in session.scalars(query)]

    @retry_transient
    def referenced_blobs(self) -> set[str]:
        with Session(self.engine) as session:
            return {b for b in session.scalars(select(Transfer.blob_id).where(Transfer.blob_id.is_not(None))) if b}

    @retry_transient
    def inbound_for(self, flow: str, remote_name: str) -> list[TransferRow]:
        """Downloads of *remote_name* in *flow*, newest first (what the poller knows of a remote file)."""
        query = (select(Transfer).where(Transfer.flow == flow, Transfer.direction == "in",
                                        Transfer.remote_name == remote_name).order_by(Transfer.id.desc()))
        with Session(self.engine) as session:
            return [TransferRow.of(t) for t in session.scalars(query)]

    @retry_transient
    def by_remote_name(self, flow: str, remote_name: str) -> TransferRow | None:
        """The outbound transfer of *flow* delivered under *remote_name* (to attach a peer's receipt)."""
        query = (select(Transfer).where(Transfer.flow == flow, Transfer.direction == "out",
                                        Transfer.remote_name == remote_name).order_by(Transfer.id.desc()).limit(1))
        with Session(self.engine) as session:
            transfer = session.scalars(query).first()
            return TransferRow.of(transfer) if transfer is not None else None


@dataclass(frozen=True)
class Claimed:
    """A transfer claimed for sending: its row, the fence to commit with, and how the lease was got."""

    row: TransferRow
    fence: Fence
    decision: ClaimDecision


class FencedLedger:
    """A transfer ledger whose every commit is fenced by one lease (SPEC §14): hand it to code that commits
    through the ledger port (an ingest, a quarantine) while the caller holds the lease."""

    def __init__(self, ledger: Any, fence: Fence) -> None:
        self._ledger, self.fence = ledger, fence

    def add_transfer(self, **fields: Any) -> TransferRow:
        row: TransferRow = self._ledger.add_transfer(**fields, fence=self.fence)
        return row

    def transition(self, transfer_id: int, new_state: TransferState, now: datetime, **fields: Any) -> TransferRow:
        row: TransferRow = self._ledger.transition(transfer_id, new_state, now, fence=self.fence, **fields)
        return row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)
