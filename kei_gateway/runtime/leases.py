"""This node in a shared ledger (SPEC §14): heartbeat, lease renewal, claims for the flows and singletons.

:class:`NodeLeases` is a service: every third of a lease it heartbeats the node, checks
its clock against the database's, renews every lease the node holds (one transaction)
and refreshes the lease gauges. The flows and the singletons claim through it
(:meth:`NodeLeases.claim`, or :meth:`NodeLeases.adopt` for a claim made inside a ledger
transaction such as :meth:`TransferLedger.claim_due`), commit with the returned
:class:`~kei_gateway.adapters.ledger.leases.Fence`, and hand it back
(:meth:`NodeLeases.release`, :meth:`NodeLeases.forget`). While the database does not
answer, or the clock is off, :attr:`may_claim` is False and claims return None: the node
claims nothing until both are right again (it still serves pushes, which need no lease).

A runtime leaf: it imports adapters, core and the other leaves (events, metrics, blocking) only,
so the flows and operations may use it.
"""

from __future__ import annotations

import datetime
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from kei_gateway.adapters.ledger.leases import Fence, Hold, NodeRefused, NodeStatus
from kei_gateway.core.lease import ClaimDecision, ClaimOutcome, LeaseKind, clock_skew_refusal, renew_interval
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["LeaseStore", "NodeLeases", "NodeIdentity", "new_incarnation", "host_and_pid"]


class LeaseStore(Protocol):
    """What :class:`NodeLeases` needs of the ledger (``LeaseLedger``; ``kei_gateway.testing.InMemoryLeases``)."""

    node_id: str
    duration: float

    @property
    def single_node(self) -> bool: ...

    def heartbeat(self, incarnation: str, now: datetime.datetime) -> datetime.datetime | None: ...

    def renew(self, fences: Sequence[Fence], now: datetime.datetime) -> list[Fence]: ...

    def claim(self, kind: str, key: str, now: datetime.datetime) -> ClaimDecision: ...

    def release(self, fence: Fence) -> bool: ...

    def leave(self, incarnation: str) -> None: ...

    def nodes(self, now: datetime.datetime) -> list[NodeStatus]: ...

    def live_leases(self, now: datetime.datetime) -> dict[str, int]: ...

    def current(self, fence: Fence) -> bool: ...


@dataclass(frozen=True)
class NodeIdentity:
    """This node as the daemon's start registered it: the ledger's lease store and this start's incarnation."""

    store: LeaseStore
    incarnation: str


def new_incarnation() -> str:
    """A random id for this start of the node."""
    return str(uuid.uuid4())


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


KINDS = ("transfer", "pull", "ingest", "purge", "verify", "relay", "received")


class NodeLeases(service.Service):
    """The node's leases: claimed, renewed while the work runs, released; a lost one is noticed and logged."""

    log = Logger()

    def __init__(self, *, store: LeaseStore, incarnation: str, clock: Any, blocking: Blocking,
                 metrics: GatewayMetrics, wall_clock: Callable[[], float] | None = None) -> None:
        self.setName("leases")
        self.store, self.incarnation = store, incarnation
        self.clock, self.blocking, self.metrics = clock, blocking, metrics
        self._seconds = wall_clock or clock.seconds
        self.held: dict[tuple[str, str], Fence] = {}
        """The leases this node holds now, by (kind, key)."""
        self.may_claim = False
        """True while the last heartbeat reached the database and the clocks agree."""
        self.problem = "no heartbeat yet"
        self._skewed = False
        self._known_nodes: set[str] = set()
        self._beaten_once = False
        self._first_beat: list[defer.Deferred[None]] = []
        self.on_may_claim: list[Callable[[], object]] = []
        """Called when the node may claim again (after its first heartbeat, the database back, the clock right):
        the doors look for work at once rather than at their next poll."""
        self._loop = task.LoopingCall(self.beat)
        self._loop.clock = clock

    @property
    def node_id(self) -> str:
        return self.store.node_id

    @property
    def duration(self) -> float:
        return self.store.duration

    def now(self) -> datetime.datetime:
        return _utc(self._seconds())

    # -- the beat -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for kind in KINDS:
            self.metrics.leases.labels(kind=kind)
            self.metrics.lease_takeovers.labels(kind=kind)
        self._loop.start(renew_interval(self.duration), now=True)

    def stopService(self) -> defer.Deferred[Any] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.may_claim = False
        held, self.held = list(self.held.values()), {}
        d = self.blocking.run(self.store.leave, self.incarnation)

        def failed(failure: Any) -> None:
            self.log.warn("could not leave the ledger cleanly ({error}); the other nodes take over after a lease "
                          "({held} held)", error=failure.getErrorMessage(), held=len(held))

        return d.addErrback(failed)

    def beat(self) -> defer.Deferred[Any]:
        """Heartbeat, clock check, renewal of every held lease, gauges: one round trip to the ledger."""
        now = self.now()
        fences = list(self.held.values())

        def blocking_beat() -> tuple[datetime.datetime | None, list[Fence], list[NodeStatus], dict[str, int]]:
            database_now = self.store.heartbeat(self.incarnation, now)
            lost = self.store.renew(fences, now) if fences else []
            return database_now, lost, self.store.nodes(now), self.store.live_leases(now)

        d = self.blocking.run(blocking_beat)
        d.addCallbacks(lambda result: self._beaten(now, *result), self._unreachable)
        return d.addBoth(self._after_beat)

    def _after_beat(self, result: object) -> object:
        if not self._beaten_once:
            self._beaten_once = True
            waiting, self._first_beat = self._first_beat, []
            for waiter in waiting:
                waiter.callback(None)
        return result

    def _beaten(self, now: datetime.datetime, database_now: datetime.datetime | None, lost: list[Fence],
                nodes: list[NodeStatus], live: dict[str, int]) -> None:
        skew = clock_skew_refusal(now, database_now) if database_now is not None else None
        if skew is not None:
            if not self._skewed:
                events.emit(self.log, events.NODE_CLOCK_SKEW, node=self.node_id, reason=skew)
            self._skewed, self.may_claim, self.problem = True, False, skew
        else:
            was = self.may_claim
            self._skewed, self.may_claim, self.problem = False, True, ""
            if not was:
                for hook in self.on_may_claim:
                    hook()
        for fence in lost:
            self.held.pop((fence.kind, fence.key), None)
            events.emit(self.log, events.LEASE_LOST, node=self.node_id, kind=fence.kind, key=fence.key)
        for status in nodes:
            fresh = (now - status.node.heartbeat).total_seconds() < self.duration
            self.metrics.node_up.labels(node=status.node.node_id).set(1 if fresh else 0)
        for gone in self._known_nodes - {status.node.node_id for status in nodes}:
            self.metrics.node_up.labels(node=gone).set(0)  # left cleanly: known, silent
        self._known_nodes |= {status.node.node_id for status in nodes}
        for kind in set(KINDS) | set(live):
            self.metrics.leases.labels(kind=kind).set(live.get(kind, 0))

    def _unreachable(self, failure: Any) -> None:
        self.may_claim = False
        if failure.check(NodeRefused):
            self.problem = str(failure.value)
            events.emit(self.log, events.DAEMON_FAILED, reason=self.problem)
            return
        self.problem = f"the ledger database does not answer: {events.describe_error(failure.value)}"

    def readiness(self) -> Any:
        """The ``leases`` readiness check: may this node claim work now?"""
        from kei_gateway.runtime.health import CheckResult

        return CheckResult("leases", self.may_claim, "ok" if self.may_claim else self.problem)

    # -- claims ---------------------------------------------------------------------

    def claim(self, kind: str, key: str) -> defer.Deferred[Fence | None]:
        """Claim (*kind*, *key*); fire with the fence to commit with, or None (busy, or this node may not claim).

        A claim made before the node's first heartbeat has come back waits for it (the doors and the purge start
        with the tree, the heartbeat's round trip to the database takes a moment)."""
        if self.running and not self._beaten_once:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._first_beat.append(waiter)
            return waiter.addCallback(lambda _: self.claim(kind, key))
        if not self.may_claim or not self.running:
            return defer.succeed(None)
        d = self.blocking.run(self.store.claim, kind, key, self.now())

        def claimed(decision: ClaimDecision) -> Fence | None:
            if decision.lease is None:
                return None
            fence = Fence(kind, key, self.node_id, decision.lease.token)
            self.adopt(fence, decision)
            return fence

        def unreachable(failure: Any) -> None:
            self._unreachable(failure)
            return None

        return d.addCallbacks(claimed, unreachable)

    def adopt(self, fence: Fence, decision: ClaimDecision) -> None:
        """Take on a lease claimed inside a ledger transaction: it is renewed from now on; a takeover is logged."""
        self.held[(fence.kind, fence.key)] = fence
        if decision.outcome is ClaimOutcome.TAKEN_OVER:
            self.metrics.lease_takeovers.labels(kind=fence.kind).inc()
            events.emit(self.log, events.LEASE_TAKEOVER, node=self.node_id, kind=fence.kind, key=fence.key,
                        previous=decision.previous_holder or "?")

    def hold_received(self) -> Hold | None:
        """The ``received`` lease a door writes in the commit that accepts a file (SPEC §14): this node relays it,
        and another node's pending pass leaves it alone until the lease expires. None on a single-node ledger
        (SQLite): nobody else could relay it."""
        if self.store.single_node:
            return None
        return Hold(LeaseKind.RECEIVED.value, self.node_id, self.duration)

    def claim_received(self, ledger: Any, transfer_id: int) -> defer.Deferred[Fence | None]:
        """Claim the relay of the received file *transfer_id* (its ``received`` lease; ``claim_received`` of the
        transfer ledger): the fence to relay it under, or None — another node relays it now (its lease is live),
        it is no longer ``VALIDATED``, this node relays it already, or this node may not claim. A takeover is
        counted and logged (:meth:`adopt`)."""
        key = (LeaseKind.RECEIVED.value, str(transfer_id))
        if key in self.held or not self.may_claim or not self.running:
            return defer.succeed(None)
        d = self.blocking.run(ledger.claim_received, transfer_id, self.node_id, self.now(), self.duration)

        def claimed(result: Any) -> Fence | None:
            if result is None:
                return None
            self.adopt(result.fence, result.decision)
            fence: Fence = result.fence
            return fence

        def unreachable(failure: Any) -> None:
            self._unreachable(failure)
            return None

        return d.addCallbacks(claimed, unreachable)

    def adopt_held(self, fence: Fence) -> None:
        """Take on a lease written in the commit that created its work (:meth:`hold_received`): renewed from now on."""
        self.held[(fence.kind, fence.key)] = fence

    def holds(self, fence: Fence) -> bool:
        """Does this node still believe it holds *fence* (not lost at a renewal)? The ledger has the last word."""
        return self.held.get((fence.kind, fence.key)) == fence

    def forget(self, fence: Fence) -> None:
        """The lease was released in the commit that finished the work: stop renewing it."""
        if self.held.get((fence.kind, fence.key)) == fence:
            del self.held[(fence.kind, fence.key)]

    def fenced(self, fence: Fence) -> None:
        """A commit with *fence* was refused: log it and stop renewing."""
        self.forget(fence)
        events.emit(self.log, events.LEASE_FENCED, node=self.node_id, kind=fence.kind, key=fence.key)

    def release(self, fence: Fence) -> defer.Deferred[bool]:
        """Free the lease (the work is over without a fenced commit that released it)."""
        self.forget(fence)
        d = self.blocking.run(self.store.release, fence)
        return d.addErrback(lambda failure: False)  # not released: it expires after a lease


def host_and_pid() -> tuple[str, int]:
    return socket.gethostname()[:255], os.getpid()
