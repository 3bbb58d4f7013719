"""The in-memory twin of the lease ledger: several nodes on one :class:`LeaseTable`, decided by the same core."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kei_gateway.adapters.ledger.leases import Fence, NodeRefused, NodeStatus
from kei_gateway.core.lease import ClaimDecision, Lease, NodeSeen, decide_claim, decide_release, decide_renew, \
    is_current, is_live, node_refusal

__all__ = ["LeaseTable", "InMemoryLeases"]


class DatabaseDown(ConnectionError):
    """The twin's database does not answer (:attr:`LeaseTable.unreachable`)."""


@dataclass
class LeaseTable:
    """The shared rows of every node's :class:`InMemoryLeases` (one database)."""

    leases: dict[tuple[str, str], Lease] = field(default_factory=dict)
    nodes: dict[str, tuple[NodeSeen, str, int]] = field(default_factory=dict)
    clock_offset: float = 0.0
    """The database's clock minus the nodes' (seconds): the skew a heartbeat reports."""
    unreachable: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)

    def check(self) -> None:
        if self.unreachable:
            raise DatabaseDown("the database does not answer (twin)")


class InMemoryLeases:
    """:class:`~kei_gateway.adapters.ledger.leases.LeaseLedger` in memory, for one node of a :class:`LeaseTable`."""

    def __init__(self, table: LeaseTable, node_id: str, duration: float) -> None:
        self.table, self.node_id, self.duration = table, node_id, duration

    single_node = False

    def join(self, incarnation: str, now: datetime, host: str, pid: int) -> None:
        with self.table.lock:
            self.table.check()
            existing = self.table.nodes.get(self.node_id)
            reason = node_refusal(existing[0] if existing else None, node_id=self.node_id, incarnation=incarnation,
                                  now=now, duration=self.duration)
            if reason is not None:
                raise NodeRefused(reason)
            self.table.nodes[self.node_id] = (NodeSeen(self.node_id, incarnation, now, now), host, pid)

    def heartbeat(self, incarnation: str, now: datetime) -> datetime | None:
        with self.table.lock:
            self.table.check()
            existing = self.table.nodes.get(self.node_id)
            if existing is None or existing[0].incarnation != incarnation:
                raise NodeRefused(f"another start of node {self.node_id!r} has taken its place in the ledger")
            seen, host, pid = existing
            self.table.nodes[self.node_id] = (NodeSeen(seen.node_id, seen.incarnation, seen.started, now), host, pid)
            return now + timedelta(seconds=self.table.clock_offset)

    def leave(self, incarnation: str) -> None:
        with self.table.lock:
            self.table.check()
            for key, lease in list(self.table.leases.items()):
                if lease.holder == self.node_id:
                    self.table.leases[key] = Lease(lease.kind, lease.key, None, None, lease.token)
            existing = self.table.nodes.get(self.node_id)
            if existing is not None and existing[0].incarnation == incarnation:
                del self.table.nodes[self.node_id]

    def nodes(self, now: datetime) -> list[NodeStatus]:
        with self.table.lock:
            self.table.check()
            out = []
            for node_id in sorted(self.table.nodes):
                seen, host, pid = self.table.nodes[node_id]
                holds: dict[str, int] = {}
                for lease in self.table.leases.values():
                    if lease.holder == node_id and is_live(lease, now):
                        holds[lease.kind] = holds.get(lease.kind, 0) + 1
                out.append(NodeStatus(seen, host, pid, holds))
            return out

    def live_leases(self, now: datetime) -> dict[str, int]:
        with self.table.lock:
            self.table.check()
            counts: dict[str, int] = {}
            for lease in self.table.leases.values():
                if is_live(lease, now):
                    counts[lease.kind] = counts.get(lease.kind, 0) + 1
            return counts

    def claim(self, kind: str, key: str, now: datetime) -> ClaimDecision:
        with self.table.lock:
            self.table.check()
            decision = decide_claim(self.table.leases.get((kind, key)), kind=kind, key=key, node=self.node_id,
                                    now=now, duration=self.duration)
            if decision.lease is not None:
                self.table.leases[(kind, key)] = decision.lease
            return decision

    def renew(self, fences: Sequence[Fence], now: datetime) -> list[Fence]:
        with self.table.lock:
            self.table.check()
            lost = []
            for fence in fences:
                renewed = decide_renew(self.table.leases.get((fence.kind, fence.key)), node=fence.node,
                                       token=fence.token, now=now, duration=self.duration)
                if renewed is None:
                    lost.append(fence)
                else:
                    self.table.leases[(fence.kind, fence.key)] = renewed
            return lost

    def release(self, fence: Fence) -> bool:
        with self.table.lock:
            self.table.check()
            released = decide_release(self.table.leases.get((fence.kind, fence.key)), node=fence.node,
                                      token=fence.token)
            if released is None:
                return False
            self.table.leases[(fence.kind, fence.key)] = released
            return True

    def current(self, fence: Fence) -> bool:
        with self.table.lock:
            self.table.check()
            return is_current(self.table.leases.get((fence.kind, fence.key)), fence.node, fence.token)
