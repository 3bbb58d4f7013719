"""Nodes and leases in the ledger (SPEC §14): the decisions of :mod:`kei_gateway.core.lease`, applied.

Every method blocks (call it through the blocking door) and is one short transaction.
Claims lock the lease row with ``SELECT … FOR UPDATE SKIP LOCKED`` — a row another
node is claiming right now is skipped, never waited on — and write the new holder,
expiry and token in the same transaction; nothing depends on a database session
outliving a transaction (no advisory locks), so a pooling proxy (PgBouncer in
transaction mode) between the nodes and PostgreSQL changes nothing.

A fenced commit (:func:`check_fence`) locks the lease row (waiting, briefly) inside the
commit's own transaction and refuses with :class:`Fenced` when the token is no longer the
committer's: the takeover and the commit serialise on that row, so one of them sees the other.

SQLite has no row locks (``FOR UPDATE`` is not rendered) and serves one node only: its
whole-database write lock makes the same code correct there, and :meth:`LeaseLedger.join`
refuses a second node.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kei_gateway.adapters.ledger.models import LeaseRow, Node
from kei_gateway.core.lease import FIRST_TOKEN, ClaimDecision, ClaimOutcome, Lease, NodeSeen, decide_claim, \
    decide_release, decide_renew, ends_with_done, is_current, is_live, node_refusal
from kei_gateway.runtime.blocking import retry_transient

__all__ = ["Fence", "Fenced", "Hold", "hold_in", "NodeRefused", "LeaseLedger", "NodeStatus", "check_fence", "check_fence_on", "lock_lease",
           "lease_of", "lease_exists", "claim_in", "write_lease"]


@dataclass(frozen=True)
class Fence:
    """What a node presents at a commit on claimed work: the lease it claimed and the token it got."""

    kind: str
    key: str
    node: str
    token: int


@dataclass(frozen=True)
class Hold:
    """A lease to write in the very commit that creates the work it covers (a received file's relay, kind
    ``received``): held by *node* for *duration* seconds from the commit, first token. No other node can have
    claimed work that did not exist before the commit, so the holder's fence is known in advance (:meth:`fence`)."""

    kind: str
    node: str
    duration: float

    def fence(self, key: str | int) -> Fence:
        return Fence(self.kind, str(key), self.node, FIRST_TOKEN)


class Fenced(Exception):
    """A commit on work whose lease this node no longer holds (someone took it over): refused, nothing written."""

    def __init__(self, fence: Fence, current: Lease | None) -> None:
        holder = current.holder if current is not None else None
        token = current.token if current is not None else None
        super().__init__(f"lease {fence.kind}:{fence.key} is no longer node {fence.node!r}'s (token {fence.token}; "
                         f"now {holder or 'nobody'}'s, token {token}): the commit was refused")
        self.fence, self.current = fence, current


class NodeRefused(Exception):
    """This node must not join the ledger (a second node on SQLite, a duplicate node id)."""


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def lease_of(row: LeaseRow | None) -> Lease | None:
    if row is None:
        return None
    return Lease(row.kind, row.key, row.holder, _aware(row.expires), int(row.token))


def lock_lease(session: Session, kind: str, key: str, *, skip_locked: bool) -> LeaseRow | None:
    """The lease row, locked for this transaction (PostgreSQL); None when absent — or, with *skip_locked*,
    when another transaction holds it locked."""
    query = (select(LeaseRow).where(LeaseRow.kind == kind, LeaseRow.key == key)
             .with_for_update(skip_locked=skip_locked))
    return session.scalars(query).first()


def lease_exists(session: Session, kind: str, key: str) -> bool:
    query = select(func.count()).select_from(LeaseRow).where(LeaseRow.kind == kind, LeaseRow.key == key)
    return bool(session.execute(query).scalar())


def write_lease(session: Session, row: LeaseRow | None, lease: Lease) -> bool:
    """Write *lease* over the locked *row*, or insert it; False when someone inserted it first."""
    if row is not None:
        row.holder, row.expires, row.token = lease.holder, lease.expires, lease.token
        return True
    try:
        with session.begin_nested():
            session.add(LeaseRow(kind=lease.kind, key=lease.key, holder=lease.holder, expires=lease.expires,
                                 token=lease.token))
    except IntegrityError:
        return False
    return True


def claim_in(session: Session, kind: str, key: str, node: str, now: datetime, duration: float) -> ClaimDecision:
    """The claim of (*kind*, *key*) inside the caller's transaction (see :meth:`LeaseLedger.claim`)."""
    row = lock_lease(session, kind, key, skip_locked=True)
    if row is None and lease_exists(session, kind, key):
        return ClaimDecision(ClaimOutcome.BUSY, None)  # another node is claiming it this very moment
    decision = decide_claim(lease_of(row), kind=kind, key=key, node=node, now=now, duration=duration)
    if decision.lease is not None and not write_lease(session, row, decision.lease):
        return ClaimDecision(ClaimOutcome.BUSY, None)
    return decision


def hold_in(session: Session, hold: Hold, key: str | int, now: datetime) -> Fence:
    """Inside the transaction that creates the work *key*: its lease, held by *hold*'s node (first token).

    The row cannot exist (the key is new: a transfer id); if it does, the insert fails and the whole commit with it."""
    lease = decide_claim(None, kind=hold.kind, key=str(key), node=hold.node, now=now, duration=hold.duration).lease
    assert lease is not None
    session.add(LeaseRow(kind=lease.kind, key=lease.key, holder=lease.holder, expires=lease.expires,
                         token=lease.token))
    session.flush()
    return hold.fence(key)


def check_fence(session: Session, fence: Fence, *, release: bool = False) -> None:
    """Inside a commit's transaction: raise :class:`Fenced` unless *fence*'s token is current; *release* frees
    the lease with the commit (the work is finished)."""
    row = lock_lease(session, fence.kind, fence.key, skip_locked=False)
    current = lease_of(row)
    if row is None or not is_current(current, fence.node, fence.token):
        raise Fenced(fence, current)
    if release:
        released = decide_release(current, node=fence.node, token=fence.token)
        assert released is not None
        write_lease(session, row, released)


def check_fence_on(connection: Connection, fence: Fence) -> None:
    """:func:`check_fence` inside a transaction held on a bare *connection* (the relay's, which streams its
    results through a temporary table): the lease row locked, :class:`Fenced` unless *fence* is current.
    A lease that ends with ``DONE`` (a received file's, :func:`~kei_gateway.core.lease.ends_with_done`) is
    released in the same transaction: the caller's commit is the one that makes its transfer ``DONE``."""
    table = LeaseRow.__table__
    row = connection.execute(select(table).where(table.c.kind == fence.kind, table.c.key == fence.key)
                             .with_for_update()).first()
    current = None if row is None else Lease(row.kind, row.key, row.holder, _aware(row.expires), int(row.token))
    if not is_current(current, fence.node, fence.token):
        raise Fenced(fence, current)
    if ends_with_done(fence.kind):
        connection.execute(update(LeaseRow).where(LeaseRow.kind == fence.kind, LeaseRow.key == fence.key)
                           .values(holder=None, expires=None))


@dataclass(frozen=True)
class NodeStatus:
    """A node as ``kei-gateway status`` shows it."""

    node: NodeSeen
    host: str
    pid: int
    holds: dict[str, int]
    """Live leases it holds, per kind."""


class LeaseLedger:
    """This node's view of the shared ledger: join, heartbeat, claim, renew, release, leave."""

    def __init__(self, engine: Engine, node_id: str, duration: float) -> None:
        self.engine, self.node_id, self.duration = engine, node_id, duration

    @property
    def single_node(self) -> bool:
        """SQLite: one node only (no row locks; a file on one host)."""
        return self.engine.dialect.name == "sqlite"

    # -- the node -------------------------------------------------------------------

    @retry_transient
    def join(self, incarnation: str, now: datetime, host: str, pid: int, *, pid_alive: Any = None) -> None:
        """Register this start of the node, or raise :class:`NodeRefused`.

        *pid_alive(pid)* tells whether a process of this host still runs (default: ``os.kill(pid, 0)``):
        a row of this very host whose process is gone is a crashed start, taken over at once rather
        than after a lease (systemd restarts a failed daemon within a second).
        """
        alive = pid_alive or _pid_alive
        for attempt in range(2):
            try:
                with Session(self.engine) as session, session.begin():
                    self._join_in(session, incarnation, now, host, pid, alive)
                return
            except IntegrityError:
                if attempt:
                    raise
                # another start inserted the same id at the same moment: look again, it is now there

    def _join_in(self, session: Session, incarnation: str, now: datetime, host: str, pid: int, alive: Any) -> None:
        rows = session.scalars(select(Node).with_for_update()).all()
        seen = {row.id: row for row in rows}

        def live(row: Node) -> bool:
            if row.host == host and not alive(row.pid):
                return False  # a crashed start on this very host
            return (now - _aware(row.heartbeat)).total_seconds() < self.duration  # type: ignore[operator]

        if self.single_node:
            others = [row for row in rows if row.incarnation != incarnation and live(row)]
            if others:
                raise NodeRefused(
                    f"database.url is a SQLite ledger, which serves one node only, and node {others[0].id!r} "
                    f"(host {others[0].host}, pid {others[0].pid}) is running on it; stop that node, or put "
                    "both nodes on one PostgreSQL database (docs/high-availability.md)")
        existing = seen.get(self.node_id)
        if existing is not None and live(existing):
            reason = node_refusal(_seen(existing), node_id=self.node_id, incarnation=incarnation, now=now,
                                  duration=self.duration)
            if reason is not None:
                raise NodeRefused(f"{reason} (the other: host {existing.host}, pid {existing.pid})")
        if existing is None:
            session.add(Node(id=self.node_id, incarnation=incarnation, started=now, heartbeat=now, host=host,
                             pid=pid))
            session.flush()
        else:
            existing.incarnation, existing.started, existing.heartbeat = incarnation, now, now
            existing.host, existing.pid = host, pid

    @retry_transient
    def heartbeat(self, incarnation: str, now: datetime) -> datetime | None:
        """Record that this node is alive; return the database's time (None on SQLite: one host, one clock).

        Raises :class:`NodeRefused` if another start has taken this node id over (this one was thought dead).
        """
        with Session(self.engine) as session, session.begin():
            mine = session.scalars(select(Node).where(Node.id == self.node_id, Node.incarnation == incarnation)
                                   .with_for_update()).first()
            if mine is None:
                raise NodeRefused(f"another start of node {self.node_id!r} has taken its place in the ledger")
            mine.heartbeat = now
            if self.single_node:
                return None
            return _aware(session.execute(text("SELECT statement_timestamp()")).scalar_one())

    @retry_transient
    def leave(self, incarnation: str) -> None:
        """A clean stop: release every lease this node holds and remove its row."""
        with Session(self.engine) as session, session.begin():
            session.execute(update(LeaseRow).where(LeaseRow.holder == self.node_id)
                            .values(holder=None, expires=None))
            session.execute(delete(Node).where(Node.id == self.node_id, Node.incarnation == incarnation))

    @retry_transient
    def nodes(self, now: datetime) -> list[NodeStatus]:
        """Every node known to the ledger, with the live leases each holds per kind."""
        with Session(self.engine) as session:
            nodes = session.scalars(select(Node).order_by(Node.id)).all()
            leases = [lease_of(row) for row in session.scalars(select(LeaseRow).where(LeaseRow.holder.is_not(None)))]
        out = []
        for node in nodes:
            holds: dict[str, int] = {}
            for lease in leases:
                if lease is not None and lease.holder == node.id and is_live(lease, now):
                    holds[lease.kind] = holds.get(lease.kind, 0) + 1
            out.append(NodeStatus(_seen(node), node.host, node.pid, holds))
        return out

    @retry_transient
    def live_leases(self, now: datetime) -> dict[str, int]:
        """Live leases per kind, whoever holds them (``kei_gateway_leases{kind}``)."""
        with Session(self.engine) as session:
            rows = session.scalars(select(LeaseRow).where(LeaseRow.holder.is_not(None))).all()
            counts: dict[str, int] = {}
            for row in rows:
                lease = lease_of(row)
                if lease is not None and is_live(lease, now):
                    counts[lease.kind] = counts.get(lease.kind, 0) + 1
            return counts

    # -- leases ---------------------------------------------------------------------

    @retry_transient
    def claim(self, kind: str, key: str, now: datetime) -> ClaimDecision:
        """Claim (*kind*, *key*) for this node: granted, taken over, renewed, or busy (see :func:`decide_claim`)."""
        with Session(self.engine) as session, session.begin():
            return claim_in(session, kind, key, self.node_id, now, self.duration)

    @retry_transient
    def renew(self, fences: Sequence[Fence], now: datetime) -> list[Fence]:
        """Renew the leases of *fences* in one transaction; return those this node has lost."""
        lost = []
        with Session(self.engine) as session, session.begin():
            for fence in sorted(fences, key=lambda f: (f.kind, f.key)):  # one lock order for every node
                row = lock_lease(session, fence.kind, fence.key, skip_locked=False)
                renewed = decide_renew(lease_of(row), node=fence.node, token=fence.token, now=now,
                                       duration=self.duration)
                if renewed is None:
                    lost.append(fence)
                else:
                    write_lease(session, row, renewed)
        return lost

    @retry_transient
    def release(self, fence: Fence) -> bool:
        """Free the lease of *fence* (the work is over); False when it was no longer this node's."""
        with Session(self.engine) as session, session.begin():
            row = lock_lease(session, fence.kind, fence.key, skip_locked=False)
            released = decide_release(lease_of(row), node=fence.node, token=fence.token)
            if released is None:
                return False
            write_lease(session, row, released)
            return True

    @retry_transient
    def current(self, fence: Fence) -> bool:
        """Is *fence*'s token still current (a check before an action outside the ledger, e.g. a DELETE at a peer)?"""
        with Session(self.engine) as session:
            row = session.scalars(select(LeaseRow).where(LeaseRow.kind == fence.kind, LeaseRow.key == fence.key)).first()
            return is_current(lease_of(row), fence.node, fence.token)


def _seen(row: Node) -> NodeSeen:
    started, heartbeat = _aware(row.started), _aware(row.heartbeat)
    assert started is not None and heartbeat is not None
    return NodeSeen(row.id, row.incarnation, started, heartbeat)


def _pid_alive(pid: int) -> bool:
    """Is a gateway process *pid* running on this host? (A pid reused by another program does not count.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read()
    except OSError:
        return True  # no /proc to tell: assume it is
    return b"kei_gateway" in command or b"kei-gateway" in command
