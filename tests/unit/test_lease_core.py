"""The lease core (kei_gateway.core.lease): claims, renewals, takeovers and fencing as values; times passed in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kei_gateway.core.lease import (
    ClaimOutcome,
    Lease,
    NodeSeen,
    StartAction,
    clock_skew_refusal,
    decide_claim,
    decide_release,
    decide_renew,
    is_current,
    node_refusal,
    on_start,
    renew_interval,
    revoke,
)

T0 = datetime(2026, 12, 2, 7, 0, tzinfo=timezone.utc)
LEASE = 15.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def held(node: str, expires_in: float, token: int = 3) -> Lease:
    return Lease("transfer", "7", node, at(expires_in), token)


def test_when_nobody_ever_claimed_then_the_claim_is_granted_with_token_one_for_one_lease() -> None:
    decision = decide_claim(None, kind="transfer", key="7", node="a", now=T0, duration=LEASE)
    assert decision.outcome is ClaimOutcome.GRANTED
    assert decision.lease == Lease("transfer", "7", "a", at(LEASE), 1)


def test_when_another_node_holds_a_live_lease_then_the_claim_is_refused() -> None:
    decision = decide_claim(held("b", 5), kind="transfer", key="7", node="a", now=T0, duration=LEASE)
    assert decision.outcome is ClaimOutcome.BUSY and decision.lease is None and not decision.granted


def test_when_another_nodes_lease_has_expired_then_it_is_taken_over_with_a_higher_token() -> None:
    decision = decide_claim(held("b", -0.001, token=3), kind="transfer", key="7", node="a", now=T0, duration=LEASE)
    assert decision.outcome is ClaimOutcome.TAKEN_OVER and decision.previous_holder == "b"
    assert decision.lease == Lease("transfer", "7", "a", at(LEASE), 4)


def test_when_a_lease_expires_exactly_now_then_it_is_expired() -> None:
    decision = decide_claim(held("b", 0), kind="transfer", key="7", node="a", now=T0, duration=LEASE)
    assert decision.outcome is ClaimOutcome.TAKEN_OVER


def test_when_the_holder_claims_again_while_live_then_it_is_renewed_under_the_same_token() -> None:
    decision = decide_claim(held("a", 5, token=9), kind="transfer", key="7", node="a", now=T0, duration=LEASE)
    assert decision.outcome is ClaimOutcome.RENEWED
    assert decision.lease == Lease("transfer", "7", "a", at(LEASE), 9)


def test_when_a_released_lease_is_claimed_then_it_is_granted_with_the_next_token() -> None:
    released = Lease("purge", "daily", None, None, 5)
    decision = decide_claim(released, kind="purge", key="daily", node="b", now=T0, duration=LEASE)
    assert decision.outcome is ClaimOutcome.GRANTED and decision.lease is not None and decision.lease.token == 6


def test_when_the_holders_own_lease_expired_then_reclaiming_it_is_a_grant_not_a_takeover() -> None:
    decision = decide_claim(held("a", -1, token=2), kind="transfer", key="7", node="a", now=T0, duration=LEASE)
    assert decision.outcome is ClaimOutcome.GRANTED and decision.lease is not None and decision.lease.token == 3


def test_when_the_token_is_unchanged_then_the_holder_may_commit_even_past_expiry() -> None:
    assert is_current(held("a", -100, token=4), "a", 4)


def test_when_someone_took_the_lease_then_the_old_holders_commit_is_fenced() -> None:
    taken = decide_claim(held("a", -1, token=4), kind="transfer", key="7", node="b", now=T0, duration=LEASE).lease
    assert not is_current(taken, "a", 4)
    assert is_current(taken, "b", 5)


def test_when_the_lease_row_is_missing_or_released_then_nobody_may_commit_on_it() -> None:
    assert not is_current(None, "a", 1)
    assert not is_current(Lease("transfer", "7", None, None, 4), "a", 4)


def test_when_the_holder_renews_then_the_expiry_moves_and_the_token_stays() -> None:
    renewed = decide_renew(held("a", 2, token=4), node="a", token=4, now=T0, duration=LEASE)
    assert renewed == Lease("transfer", "7", "a", at(LEASE), 4)


def test_when_a_paused_node_renews_after_a_takeover_then_it_learns_it_lost_the_lease() -> None:
    taken = held("b", 10, token=5)
    assert decide_renew(taken, node="a", token=4, now=T0, duration=LEASE) is None
    assert decide_renew(None, node="a", token=4, now=T0, duration=LEASE) is None


def test_when_the_holder_releases_then_the_holder_is_cleared_and_the_token_kept() -> None:
    assert decide_release(held("a", 5, token=4), node="a", token=4) == Lease("transfer", "7", None, None, 4)
    assert decide_release(held("b", 5, token=5), node="a", token=4) is None


def test_when_a_lease_is_revoked_then_nobody_holds_it_and_the_old_token_is_fenced() -> None:
    revoked = revoke(held("a", 5, token=4))
    assert (revoked.holder, revoked.expires, revoked.token) == (None, None, 5)
    assert not is_current(revoked, "a", 4)


def test_when_leases_last_fifteen_seconds_then_holders_renew_every_five() -> None:
    assert renew_interval(15.0) == 5.0


def test_when_another_start_under_the_same_id_heartbeat_within_a_lease_then_the_newcomer_is_refused() -> None:
    other = NodeSeen("gw1", "inc-old", at(-60), at(-3))
    reason = node_refusal(other, node_id="gw1", incarnation="inc-new", now=T0, duration=LEASE)
    assert reason is not None and "gateway.node_id = 'gw1'" in reason and "node_id" in reason


def test_when_the_same_ids_last_heartbeat_is_older_than_a_lease_then_the_dead_start_is_taken_over() -> None:
    dead = NodeSeen("gw1", "inc-old", at(-600), at(-LEASE - 1))
    assert node_refusal(dead, node_id="gw1", incarnation="inc-new", now=T0, duration=LEASE) is None
    assert node_refusal(None, node_id="gw1", incarnation="inc-new", now=T0, duration=LEASE) is None


def test_when_the_node_meets_its_own_row_then_it_is_not_refused() -> None:
    mine = NodeSeen("gw1", "inc", at(-60), at(-1))
    assert node_refusal(mine, node_id="gw1", incarnation="inc", now=T0, duration=LEASE) is None


def test_when_the_clock_is_within_the_bound_then_the_node_may_claim_and_beyond_it_may_not() -> None:
    assert clock_skew_refusal(at(1.5), T0, bound=2.0) is None
    assert clock_skew_refusal(at(-1.5), T0, bound=2.0) is None
    behind = clock_skew_refusal(at(-2.5), T0, bound=2.0)
    assert behind is not None and "-2.5s" in behind and "claims no work" in behind


def test_when_a_node_starts_then_it_requeues_its_own_and_unheld_sends_but_not_another_live_nodes() -> None:
    assert on_start(None, node="a", now=T0) is StartAction.REQUEUE
    assert on_start(held("a", 10), node="a", now=T0) is StartAction.REQUEUE  # its own, from before this start
    assert on_start(held("b", -1), node="a", now=T0) is StartAction.REQUEUE  # expired: b is gone
    assert on_start(Lease("transfer", "7", None, None, 2), node="a", now=T0) is StartAction.REQUEUE
    assert on_start(held("b", 10), node="a", now=T0) is StartAction.LEAVE
