"""The transfer state machine (SPEC §6): states, legal edges and every decision on them. Pure: no clock, no I/O.

::

    RECEIVED → VALIDATED → (HELD) → QUEUED → SENDING → DONE
                                                ↑↓
                                           RETRY_WAIT       (SENDING → FAILED after the last attempt)
    plus QUARANTINED (invalid) and CANCELLED (by an operator).

The decisions return values (a :class:`Transition`, an action) and never act: the
ledger (:mod:`kei_gateway.adapters.ledger`) applies a transition after checking its
edge with :func:`check_transition`; the flows carry out the actions.

* :func:`state_after_validation` — an outbound file validated: HELD or QUEUED;
* :func:`after_send_failure` — an upload failed: retry later, FAILED, or back to the
  queue with the flow paused for a person;
* :func:`on_remote_entry` — a file listed in a peer's directory: fetch it, finish its
  relay, delete it at the peer, or leave it;
* :func:`on_restart` — what a transfer cut off by a stop or crash becomes;
* the inbound "settle" decision of a received file is :mod:`kei_gateway.core.settle`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import tenacity

from kei_gateway.config import RetryPolicy

__all__ = ["TransferState", "TRANSITIONS", "InvalidTransition", "check_transition", "state_after_validation",
           "RetryDecision", "after_failure", "retry_delay", "longest_wait", "TERMINAL_STATES", "Transition",
           "FailureKind", "SendFailureDecision", "after_send_failure", "on_restart", "KnownTransfer", "RemoteAction",
           "RemoteEntryDecision", "on_remote_entry"]


class TransferState(enum.StrEnum):
    """Transfer states of SPEC §6 (a ``StrEnum``: each compares, prints and stores as its name)."""

    RECEIVED = "RECEIVED"
    VALIDATED = "VALIDATED"
    HELD = "HELD"
    QUEUED = "QUEUED"
    SENDING = "SENDING"
    DONE = "DONE"
    RETRY_WAIT = "RETRY_WAIT"
    QUARANTINED = "QUARANTINED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


S = TransferState

TRANSITIONS: dict[S, frozenset[S]] = {
    S.RECEIVED: frozenset({S.VALIDATED, S.QUARANTINED}),
    S.VALIDATED: frozenset({S.HELD, S.QUEUED, S.DONE}),  # DONE: an inbound file relayed
    S.HELD: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.SENDING, S.CANCELLED}),
    S.SENDING: frozenset({S.DONE, S.RETRY_WAIT, S.FAILED, S.QUEUED}),  # QUEUED: restart recovery
    S.RETRY_WAIT: frozenset({S.SENDING, S.QUEUED, S.CANCELLED}),  # SENDING: its time has come
    S.FAILED: frozenset({S.QUEUED, S.CANCELLED}),  # QUEUED: an operator's 'transfers retry'
    S.QUARANTINED: frozenset(),
    S.DONE: frozenset(),
    S.CANCELLED: frozenset(),
}
TERMINAL_STATES = frozenset(state for state, nexts in TRANSITIONS.items() if not nexts)


class InvalidTransition(ValueError):
    """A transfer was asked to move to a state it cannot reach from where it is."""

    def __init__(self, old: S, new: S) -> None:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "none (final state)"
        super().__init__(f"a {old.value} transfer cannot become {new.value}; from {old.value} it can become: {allowed}")
        self.old, self.new = old, new


def check_transition(old: S | str, new: S | str) -> S:
    """Return *new* as a state if the move from *old* is allowed; raise :class:`InvalidTransition` otherwise."""
    old_state, new_state = S(old), S(new)
    if new_state not in TRANSITIONS[old_state]:
        raise InvalidTransition(old_state, new_state)
    return new_state


def state_after_validation(record_count: int, hold_over_records: int) -> S:
    """HELD when a file is bulk data awaiting approval (SPEC §7), else QUEUED."""
    if hold_over_records > 0 and record_count > hold_over_records:
        return S.HELD
    return S.QUEUED


def retry_delay(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to wait after failed attempt number *attempt* (1-based): exponential, capped, with jitter.

    tenacity's wait strategies compute it, so the schedule persisted in the ledger
    is the same one tenacity would follow in memory.
    """
    state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    exponential = tenacity.wait_exponential(multiplier=policy.first_delay, max=policy.max_delay)
    jitter = tenacity.wait_random(0, policy.first_delay / 2)
    return float(min(exponential(state) + jitter(state), policy.max_delay))


def longest_wait(policy: RetryPolicy, transfer_timeout: float, poll_interval: float) -> float:
    """Seconds a transfer can wait to leave the queue (DONE or FAILED) when nothing is stuck.

    Every attempt taking its whole *transfer_timeout*, every back-off at its longest
    (jitter included, within ``max_delay``), and one sender poll (*poll_interval*)
    before each attempt. A peer's ``Retry-After`` longer than the back-off can exceed
    it; so can a flow paused for a person, or a sender that has stopped: what the
    queue-age alert is for (``kei_gateway_queue_age_limit_seconds``).
    """
    backoffs = sum(min(min(policy.first_delay * 2 ** (attempt - 1), policy.max_delay) + policy.first_delay / 2,
                       policy.max_delay)
                   for attempt in range(1, policy.attempts))
    return backoffs + policy.attempts * (transfer_timeout + poll_interval)


@dataclass(frozen=True)
class RetryDecision:
    state: S
    next_attempt_at: datetime | None


def after_failure(attempts: int, policy: RetryPolicy, now: datetime, retry_after: float | None = None) -> RetryDecision:
    """What a transfer becomes after its *attempts*-th attempt failed.

    FAILED once ``policy.attempts`` are used up; otherwise RETRY_WAIT until the
    back-off (or the peer's ``Retry-After``, if longer) has passed.
    """
    if attempts >= policy.attempts:
        return RetryDecision(S.FAILED, None)
    delay = retry_delay(policy, attempts)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return RetryDecision(S.RETRY_WAIT, now + timedelta(seconds=delay))


@dataclass(frozen=True)
class Transition:
    """A state change and the fields set with it, in one transaction; the ledger checks the edge and applies it."""

    state: S
    fields: Mapping[str, Any] = field(default_factory=dict)


# --- an upload failed ---------------------------------------------------------------


class FailureKind(enum.Enum):
    """What a failed upload's error says about retrying it (the transport's typed errors map to one of these)."""

    TRANSIENT = "transient"
    """May clear by itself (timeout, 5xx, connection lost): retry on the back-off schedule."""
    PERMANENT = "permanent"
    """Retrying cannot help (a conflict at the peer, the stored payload gone, a 4xx): FAILED for a person."""
    REFUSED = "refused"
    """The gateway itself refused to talk (address outside the allow-list, the peer's identity failed):
    back in the queue, attempt not counted, the flow paused until the configuration is reloaded."""


@dataclass(frozen=True)
class SendFailureDecision:
    """What to do after a failed upload: the transition, and whether the flow pauses for a person."""

    transition: Transition
    pause: bool

    @property
    def state(self) -> S:
        return self.transition.state


def after_send_failure(*, kind: FailureKind, attempts: int, policy: RetryPolicy, now: datetime, reason: str,
                       retry_after: float | None = None) -> SendFailureDecision:
    """The transition of a SENDING transfer whose *attempts*-th attempt failed with an error of *kind*.

    REFUSED: back to QUEUED, the attempt not counted, the flow paused. PERMANENT: FAILED at
    once. TRANSIENT: :func:`after_failure` (RETRY_WAIT until the back-off or the peer's
    ``Retry-After`` has passed; FAILED after the last attempt). *reason* becomes ``last_error``.
    """
    if kind is FailureKind.REFUSED:
        return SendFailureDecision(Transition(S.QUEUED, {"attempts": attempts - 1, "last_error": reason}), pause=True)
    decision = after_failure(attempts if kind is FailureKind.TRANSIENT else policy.attempts, policy, now, retry_after)
    return SendFailureDecision(
        Transition(decision.state, {"next_attempt_at": decision.next_attempt_at, "last_error": reason}), pause=False)


# --- a restart ----------------------------------------------------------------------


def on_restart(state: S | str) -> S | None:
    """What a transfer in *state* becomes when the daemon starts: SENDING was cut off, so it is QUEUED again.

    Every other state is kept (None): it either waits for something that survives a restart
    (a time, a person) or is final. An upload cut off mid-way is sent again in full under the
    same remote name (the peer's MOVE makes the last one win).
    """
    return S.QUEUED if S(state) is S.SENDING else None


# --- a file listed in a peer's directory --------------------------------------------


class KnownTransfer(Protocol):
    """What the decisions read of a transfer the ledger already has (``TransferRow`` has it all)."""

    @property
    def id(self) -> int: ...

    @property
    def state(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str | None: ...

    @property
    def blob_id(self) -> str | None: ...

    @property
    def remote_etag(self) -> str | None: ...


class RemoteAction(enum.Enum):
    """What the results poller does with a file listed at the peer."""

    FETCH = "fetch"
    """Download it, validate and store it, then settle it (:mod:`kei_gateway.core.settle`)."""
    FINISH_RELAY = "finish_relay"
    """It is stored and valid but a crash came before its relay: relay it, then delete it at the peer."""
    DELETE_AT_PEER = "delete_at_peer"
    """This very file was relayed before and its DELETE was lost: delete it at the peer."""
    LEAVE = "leave"
    """Known bad and unchanged: not fetched again."""


@dataclass(frozen=True)
class RemoteEntryDecision:
    action: RemoteAction
    transfer_id: int | None = None
    """The known transfer the action is about (FINISH_RELAY, DELETE_AT_PEER, LEAVE)."""
    validate_first: bool = False
    """FINISH_RELAY of a RECEIVED transfer: it becomes VALIDATED first (a RECEIVED row is only added for a
    valid file; the crash came before VALIDATED)."""


def on_remote_entry(known: Iterable[KnownTransfer], etag: str | None, size: int | None) -> RemoteEntryDecision:
    """Decide about a file listed at the peer with *etag* and *size*, from the transfers known by its name.

    *known* is newest first. A DONE transfer of this very file (same ETag and size) means the
    DELETE was lost; a DONE one of another file under the name does not count (payment results
    are deduplicated result by result, a receipt replaces its namesake): the name is fetched
    and judged anew. A transfer stored but not relayed (RECEIVED or VALIDATED with a blob) is
    relayed. A quarantined one with the same ETag and size is left alone.
    """
    for row in known:
        state = S(row.state)
        if state is S.DONE:
            if row.remote_etag is not None and (row.remote_etag, row.size) == (etag, size):
                return RemoteEntryDecision(RemoteAction.DELETE_AT_PEER, row.id)
            continue
        if state in (S.RECEIVED, S.VALIDATED) and row.blob_id:
            return RemoteEntryDecision(RemoteAction.FINISH_RELAY, row.id, validate_first=state is S.RECEIVED)
        if state is S.QUARANTINED and (row.remote_etag, row.size) == (etag, size or 0):
            return RemoteEntryDecision(RemoteAction.LEAVE, row.id)
    return RemoteEntryDecision(RemoteAction.FETCH)
