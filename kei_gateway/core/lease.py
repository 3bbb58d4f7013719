"""Leases and fencing tokens for two or more nodes on one ledger (SPEC §14). Pure: no clock, no I/O.

Every claimed piece of work — a transfer being sent, a pull of a peer's results
directory, an ingest of an outbox file, the daily purge, the audit verify — is a
:class:`Lease`: its ``kind`` and ``key`` name the work, ``holder`` the node doing it,
``expires`` when it is free again unless renewed, and ``token`` the **fencing token**,
raised by one at every grant to a holder. A node commits work only while its token is
current (:func:`is_current`): a node that was paused or cut off past its lease and whose
work someone else took over finds a higher token, and its commit is refused.

The decisions take the lease as read in the claiming transaction (under its row lock)
and the time, and return the lease to write — or None: the ledger
(:mod:`kei_gateway.adapters.ledger.leases`) applies them.

* :func:`decide_claim` — free or expired: granted (a new token; a takeover when another
  node held it); held by the claimer and live: renewed under its token; held by another
  live node: refused.
* :func:`decide_renew` — renewed while the token is the claimer's; otherwise lost.
* :func:`decide_release` — freed (holder cleared, token kept, so it only ever rises).
* :func:`node_refusal` — two live nodes with one id: the newcomer is refused.
* :func:`clock_skew_refusal` — a node whose clock is off the database's by more than the
  bound claims nothing.
* :func:`on_start` — the restart rule of SPEC §6 as §14 restates it: a node's *own* expired
  leases (and work no lease covers) are taken back at its start, never another live node's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

__all__ = ["LeaseKind", "Lease", "ClaimOutcome", "ClaimDecision", "decide_claim", "decide_renew", "decide_release",
           "is_current", "is_live", "NodeSeen", "node_refusal", "clock_skew_refusal", "MAX_CLOCK_SKEW",
           "renew_interval", "revoke", "on_start", "StartAction", "FIRST_TOKEN", "ends_with_done",
           "StagedAction", "staged_action"]


class LeaseKind(enum.StrEnum):
    """What a lease covers; the key says which one (a transfer id, a flow name, ``daily``)."""

    TRANSFER = "transfer"
    """An outbound transfer being sent (key: the transfer id)."""
    PULL = "pull"
    """A pass over a peer's results directory (key: the inbound flow)."""
    INGEST = "ingest"
    """A scan of an outbox directory (key: the outbound flow)."""
    PURGE = "purge"
    """The daily purge (key: ``daily``)."""
    VERIFY = "verify"
    """The audit chain's verification (key: ``audit``)."""
    RELAY = "relay"
    """A pass relaying an inbound flow's received files still pending (key: the inbound flow)."""
    RECEIVED = "received"
    """A received file being relayed into the inbox (key: its transfer id): written by the node that accepts the
    file in the very commit that accepts it, renewed while it relays, released with ``DONE``; another node's
    pending pass relays the file only once this lease has expired (a takeover)."""


FIRST_TOKEN = 1
"""The token of a lease's first grant (:func:`decide_claim` of a row that does not exist yet)."""


MAX_CLOCK_SKEW = 2.0
"""Seconds a node's clock may differ from the database's before it stops claiming (well under a lease)."""


@dataclass(frozen=True)
class Lease:
    """One lease row: *holder* is None once released; *token* never goes down."""

    kind: str
    key: str
    holder: str | None
    expires: datetime | None
    token: int

    def held_by(self, node: str, now: datetime) -> bool:
        return self.holder == node and is_live(self, now)


def is_live(lease: Lease, now: datetime) -> bool:
    """Held by someone and not yet expired at *now*."""
    return lease.holder is not None and lease.expires is not None and now < lease.expires


def is_current(lease: Lease | None, node: str, token: int) -> bool:
    """May *node* commit work it claimed with *token*? Only if nobody took the lease since.

    The lease need not still be live: a takeover raises the token under the same row lock
    the commit takes, so an expired lease nobody took is still safely the holder's, while a
    taken one has a higher token and the commit is refused (fenced).
    """
    return lease is not None and lease.holder == node and lease.token == token


class ClaimOutcome(enum.Enum):
    GRANTED = "granted"
    """It was free (never held, released, or expired from this very node): a new token."""
    TAKEN_OVER = "taken_over"
    """Another node held it and its lease expired: a new token; that node's commits on it are now fenced."""
    RENEWED = "renewed"
    """The claimer already holds it, live: same token, later expiry."""
    BUSY = "busy"
    """Another node holds it, live: not granted."""


@dataclass(frozen=True)
class ClaimDecision:
    outcome: ClaimOutcome
    lease: Lease | None
    """The lease to write (None when BUSY)."""
    previous_holder: str | None = None
    """TAKEN_OVER: whose lease expired."""

    @property
    def granted(self) -> bool:
        return self.lease is not None


def decide_claim(current: Lease | None, *, kind: str, key: str, node: str, now: datetime,
                 duration: float) -> ClaimDecision:
    """The claim of (*kind*, *key*) by *node* at *now* for *duration* seconds, given the *current* row (or None)."""
    expires = now + timedelta(seconds=duration)
    if current is None:
        return ClaimDecision(ClaimOutcome.GRANTED, Lease(kind, key, node, expires, FIRST_TOKEN))
    if is_live(current, now):
        if current.holder == node:
            return ClaimDecision(ClaimOutcome.RENEWED, replace(current, expires=expires))
        return ClaimDecision(ClaimOutcome.BUSY, None)
    granted = Lease(kind, key, node, expires, current.token + 1)
    if current.holder is not None and current.holder != node:
        return ClaimDecision(ClaimOutcome.TAKEN_OVER, granted, previous_holder=current.holder)
    return ClaimDecision(ClaimOutcome.GRANTED, granted)


def decide_renew(current: Lease | None, *, node: str, token: int, now: datetime, duration: float) -> Lease | None:
    """The renewed lease, or None when *node* lost it (someone else's token, or released).

    A lease that expired but that nobody took is renewed under the same token (see :func:`is_current`).
    """
    if current is None or not is_current(current, node, token):
        return None
    return replace(current, expires=now + timedelta(seconds=duration))


def decide_release(current: Lease | None, *, node: str, token: int) -> Lease | None:
    """The released lease (holder cleared, token kept), or None when it is no longer *node*'s to release."""
    if current is None or not is_current(current, node, token):
        return None
    return replace(current, holder=None, expires=None)


def ends_with_done(kind: str) -> bool:
    """Is a lease of *kind* over once its work is ``DONE`` (released in that very commit)? A received file's is:
    nothing is left to do on the file, and a pending pass must not find it held."""
    return kind == LeaseKind.RECEIVED


def revoke(current: Lease) -> Lease:
    """The lease taken from whoever held it, without a new holder: token raised, so their commits are fenced."""
    return replace(current, holder=None, expires=None, token=current.token + 1)


def renew_interval(duration: float) -> float:
    """How often a holder renews: a third of the lease, so two renewals can fail before it expires."""
    return duration / 3


# --- nodes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSeen:
    """A node's row: its id, the start it belongs to (*incarnation*), its last heartbeat."""

    node_id: str
    incarnation: str
    started: datetime
    heartbeat: datetime


def node_refusal(existing: NodeSeen | None, *, node_id: str, incarnation: str, now: datetime,
                 duration: float) -> str | None:
    """Why a node starting as *node_id* must not join, or None.

    Refused while another start under the same id heartbeat within the last lease: two live
    nodes with one id would take each other's leases for their own. A row whose heartbeat
    is older than a lease is a dead start of this node (a crash, a kill -9): taken over.
    """
    if existing is None or existing.incarnation == incarnation:
        return None
    if now - existing.heartbeat < timedelta(seconds=duration):
        return (f"another node is running with gateway.node_id = {node_id!r} (last heartbeat "
                f"{existing.heartbeat.isoformat(timespec='seconds')}); give each node its own "
                f"[gateway] node_id, or stop the other one and wait {duration:g}s")
    return None


def clock_skew_refusal(local_now: datetime, database_now: datetime, bound: float = MAX_CLOCK_SKEW) -> str | None:
    """Why this node must not claim because its clock is off the database's by more than *bound* seconds, or None."""
    skew = (local_now - database_now).total_seconds()
    if abs(skew) > bound:
        return (f"this node's clock is {skew:+.1f}s off the database's (more than {bound:g}s): it claims no work "
                "until its time is synchronised (chrony/systemd-timesyncd)")
    return None


# --- a start ----------------------------------------------------------------------------


class StartAction(enum.Enum):
    REQUEUE = "requeue"
    """A SENDING transfer of this node's own (or no one's): cut off by its stop or crash, QUEUED again."""
    LEAVE = "leave"
    """Another node holds it live: its upload goes on there."""


def on_start(lease: Lease | None, *, node: str, now: datetime) -> StartAction:
    """What a starting *node* does with a SENDING transfer under *lease*.

    Its own lease (necessarily from before this start), a lease nobody holds, an expired
    one, or none at all (a ledger from before leases, a single SQLite node): requeue.
    Another node's live lease: leave it — that node is sending it now.
    """
    if lease is None or lease.holder == node or not is_live(lease, now):
        return StartAction.REQUEUE
    return StartAction.LEAVE


# --- a received file's staged copies ------------------------------------------------------


class StagedAction(enum.Enum):
    PUBLISH = "publish"
    """The staged file of the relay that committed: renamed into the inbox (a crash came between commit and rename)."""
    DISCARD = "discard"
    """Left by an attempt that did not commit (cut off, or fenced): removed."""
    LEAVE = "leave"
    """The file is not decided yet: its relay stages it again (under its own name) and decides."""


def staged_action(*, done: bool, relay_name: str | None, name: str, tag: int | None,
                  committed: int | None) -> StagedAction:
    """What to do with a staged copy of the relay of a received file (the restart rule of SPEC §6 for the inbox).

    *done*, *relay_name*: the transfer's state and decided inbox name; *name*, *tag*: the staged file's inbox name
    and the fencing token of the relay that staged it (None: staged without a ``received`` lease — one node, or
    a file accepted before the lease existed); *committed*: the token of the transfer's ``received`` lease (None:
    none), which is the committing relay's since the lease is released, token kept, with ``DONE`` and never
    claimed again. Only the committing relay's copy is published: a node fenced or cut off staged its own copy
    under its own token, and publishing that one too would relay the file twice.
    """
    if not done:
        return StagedAction.LEAVE
    if relay_name != name:
        return StagedAction.DISCARD  # DONE with nothing new, or under another name
    if tag is None or tag == committed:
        return StagedAction.PUBLISH
    return StagedAction.DISCARD
