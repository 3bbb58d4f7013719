"""Transfer states and their transitions (SPEC §6), and the retry schedule. Pure: no clock, no I/O.

::

    RECEIVED → VALIDATED → (HELD) → QUEUED → SENDING → DONE
                                                ↑↓
                                           RETRY_WAIT       (SENDING → FAILED after the last attempt)
    plus QUARANTINED (invalid) and CANCELLED (by an operator).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

import tenacity

from kei_gateway.config import RetryPolicy

__all__ = ["TransferState", "TRANSITIONS", "InvalidTransition", "check_transition", "state_after_validation",
           "RetryDecision", "after_failure", "retry_delay", "longest_wait", "TERMINAL_STATES"]

class TransferState(str, enum.Enum):
    """Transfer states of SPEC §6."""

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
