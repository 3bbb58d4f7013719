"""Transfer states (SPEC §6): allowed transitions, holds, and the persisted retry schedule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from kei_gateway.config import RetryPolicy
from kei_gateway.core.transfer import (
    TERMINAL_STATES,
    InvalidTransition,
    after_failure,
    check_transition,
    longest_wait,
    retry_delay,
    state_after_validation,
)
from kei_gateway.core.transfer import TransferState as S

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)


def test_when_a_transfer_follows_the_happy_path_then_every_step_is_allowed() -> None:
    path = [S.RECEIVED, S.VALIDATED, S.HELD, S.QUEUED, S.SENDING, S.RETRY_WAIT, S.QUEUED, S.SENDING, S.DONE]
    for old, new in zip(path, path[1:]):
        assert check_transition(old, new) is new


@pytest.mark.parametrize(("old", "new"), [(S.DONE, S.QUEUED), (S.QUARANTINED, S.QUEUED), (S.HELD, S.SENDING),
                                          (S.RECEIVED, S.QUEUED), (S.CANCELLED, S.QUEUED)])
def test_when_a_step_is_not_allowed_then_the_error_says_what_is(old: S, new: S) -> None:
    with pytest.raises(InvalidTransition, match=f"a {old.value} transfer cannot become {new.value}"):
        check_transition(old, new)


def test_when_states_are_final_then_they_are_done_quarantined_and_cancelled() -> None:
    assert TERMINAL_STATES == {S.DONE, S.QUARANTINED, S.CANCELLED}


def test_when_a_file_has_more_records_than_the_hold_limit_then_it_is_held() -> None:
    assert state_after_validation(1001, 1000) is S.HELD
    assert state_after_validation(1000, 1000) is S.QUEUED
    assert state_after_validation(10**6, 0) is S.QUEUED, "0 never holds"


def test_when_attempts_fail_then_delays_grow_exponentially_within_the_cap() -> None:
    policy = RetryPolicy(attempts=8, first_delay=30.0, max_delay=3600.0)
    for attempt, base in [(1, 30), (2, 60), (3, 120), (4, 240)]:
        for _ in range(20):
            assert base <= retry_delay(policy, attempt) <= base + 15
    assert all(retry_delay(policy, 20) == 3600 for _ in range(10))


def test_when_the_last_attempt_fails_then_the_transfer_is_failed() -> None:
    policy = RetryPolicy(attempts=3, first_delay=1.0, max_delay=10.0)
    assert after_failure(3, policy, NOW).state is S.FAILED
    decision = after_failure(2, policy, NOW)
    assert decision.state is S.RETRY_WAIT and decision.next_attempt_at is not None
    assert NOW + timedelta(seconds=2) <= decision.next_attempt_at <= NOW + timedelta(seconds=2.5)


def test_when_the_peer_says_retry_after_then_the_wait_is_at_least_that() -> None:
    policy = RetryPolicy(attempts=8, first_delay=1.0, max_delay=10.0)
    decision = after_failure(1, policy, NOW, retry_after=120)
    assert decision.next_attempt_at == NOW + timedelta(seconds=120)


def test_when_the_default_policy_is_used_then_the_longest_wait_is_its_backoffs_attempts_and_polls() -> None:
    policy = RetryPolicy()  # 8 attempts, 30 s first delay, 1 h cap
    backoffs = (30 + 60 + 120 + 240 + 480 + 960 + 1920) + 7 * 15  # each with its largest jitter
    assert longest_wait(policy, transfer_timeout=600, poll_interval=5) == backoffs + 8 * 605


@given(attempts=st.integers(1, 30), first_delay=st.floats(0.001, 600), max_delay=st.floats(0.001, 7200))
def test_when_any_schedule_is_followed_then_its_waits_stay_within_the_longest_wait(
        attempts: int, first_delay: float, max_delay: float) -> None:
    """Whatever the jitter drew, back-offs plus every attempt at its timeout never exceed the limit."""
    policy = RetryPolicy(attempts=attempts, first_delay=first_delay, max_delay=max_delay)
    waited = sum(retry_delay(policy, attempt) for attempt in range(1, attempts)) + attempts * (60 + 5)
    assert waited <= longest_wait(policy, transfer_timeout=60, poll_interval=5) + 1e-6
