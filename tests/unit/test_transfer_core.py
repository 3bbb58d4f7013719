"""The transfer core's decisions (kei_gateway.core.transfer): pure values, no ledger, no clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from kei_gateway.config import RetryPolicy
from kei_gateway.core.transfer import (
    FailureKind,
    RemoteAction,
    RemoteEntryDecision,
    Transition,
    after_send_failure,
    check_transition,
    on_remote_entry,
    on_restart,
)
from kei_gateway.core.transfer import TransferState as S

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)
POLICY = RetryPolicy(attempts=3, first_delay=10.0, max_delay=100.0)


@dataclass(frozen=True)
class Known:
    id: int
    state: str
    size: int = 100
    sha256: str | None = "ab" * 32
    blob_id: str | None = "blob"
    remote_etag: str | None = '"e1"'


def test_when_an_upload_is_refused_by_the_gateway_itself_then_it_is_queued_again_uncounted_and_the_flow_pauses() -> None:
    decision = after_send_failure(kind=FailureKind.REFUSED, attempts=2, policy=POLICY, now=NOW, reason="address")
    assert decision.pause is True
    assert decision.transition == Transition(S.QUEUED, {"attempts": 1, "last_error": "address"})
    assert check_transition(S.SENDING, decision.state) is S.QUEUED


def test_when_an_upload_fails_for_good_then_it_is_failed_at_once_whatever_the_attempts_left() -> None:
    decision = after_send_failure(kind=FailureKind.PERMANENT, attempts=1, policy=POLICY, now=NOW, reason="409")
    assert (decision.state, decision.pause) == (S.FAILED, False)
    assert decision.transition.fields == {"next_attempt_at": None, "last_error": "409"}


def test_when_an_upload_fails_for_now_then_it_waits_at_least_the_peers_retry_after() -> None:
    decision = after_send_failure(kind=FailureKind.TRANSIENT, attempts=1, policy=POLICY, now=NOW, reason="503",
                                  retry_after=60.0)
    assert (decision.state, decision.pause) == (S.RETRY_WAIT, False)
    assert decision.transition.fields["next_attempt_at"] >= NOW + timedelta(seconds=60)


def test_when_the_last_attempt_fails_for_now_then_it_is_failed() -> None:
    decision = after_send_failure(kind=FailureKind.TRANSIENT, attempts=3, policy=POLICY, now=NOW, reason="timeout")
    assert decision.state is S.FAILED


@pytest.mark.parametrize("state", list(S))
def test_when_the_daemon_restarts_then_only_a_sending_transfer_changes_and_by_a_legal_edge(state: S) -> None:
    after = on_restart(state)
    if state is S.SENDING:
        assert after is S.QUEUED
        assert check_transition(state, after) is S.QUEUED
    else:
        assert after is None


def test_when_a_listed_file_is_unknown_then_it_is_fetched() -> None:
    assert on_remote_entry([], '"e1"', 100) == RemoteEntryDecision(RemoteAction.FETCH)


def test_when_the_very_file_was_relayed_before_then_only_its_delete_is_repeated() -> None:
    assert on_remote_entry([Known(7, "DONE")], '"e1"', 100) == RemoteEntryDecision(RemoteAction.DELETE_AT_PEER, 7)


def test_when_a_relayed_name_comes_back_with_other_content_then_it_is_fetched_and_judged_anew() -> None:
    assert on_remote_entry([Known(7, "DONE")], '"e2"', 100).action is RemoteAction.FETCH
    assert on_remote_entry([Known(7, "DONE", remote_etag=None)], '"e1"', 100).action is RemoteAction.FETCH


@pytest.mark.parametrize(("state", "validate_first"), [("VALIDATED", False), ("RECEIVED", True)])
def test_when_a_stored_file_was_not_relayed_then_its_relay_is_finished(state: str, validate_first: bool) -> None:
    decision = on_remote_entry([Known(9, state)], '"e1"', 100)
    assert decision == RemoteEntryDecision(RemoteAction.FINISH_RELAY, 9, validate_first=validate_first)


def test_when_a_stored_row_has_no_blob_then_it_does_not_count() -> None:
    assert on_remote_entry([Known(9, "VALIDATED", blob_id=None)], '"e1"', 100).action is RemoteAction.FETCH


def test_when_a_quarantined_file_is_listed_unchanged_then_it_is_left_alone_and_changed_it_is_fetched() -> None:
    assert on_remote_entry([Known(4, "QUARANTINED")], '"e1"', 100) == RemoteEntryDecision(RemoteAction.LEAVE, 4)
    assert on_remote_entry([Known(4, "QUARANTINED")], '"e1"', 101).action is RemoteAction.FETCH
    assert on_remote_entry([Known(4, "QUARANTINED", size=0)], '"e1"', None).action is RemoteAction.LEAVE


def test_when_several_transfers_share_the_name_then_the_newest_deciding_one_wins() -> None:
    known = [Known(12, "DONE", remote_etag='"old"'), Known(11, "VALIDATED"), Known(10, "QUARANTINED")]
    assert on_remote_entry(known, '"e1"', 100) == RemoteEntryDecision(RemoteAction.FINISH_RELAY, 11)
