"""The one inbound decision (kei_gateway.core.settle): a received file, pulled or pushed, against what the ledger knows."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kei_gateway.core.settle import Door, SettleDecision, Settlement, settle

SHA = "aa" * 32
OTHER = "bb" * 32


@dataclass(frozen=True)
class Known:
    id: int
    state: str
    sha256: str | None
    size: int = 10
    blob_id: str | None = "blob"
    remote_etag: str | None = None


@pytest.mark.parametrize("door", list(Door))
def test_when_a_valid_file_has_an_unknown_name_then_it_is_new_for_either_door(door: Door) -> None:
    assert settle(door, [], SHA, valid=True) == SettleDecision(Settlement.NEW)


@pytest.mark.parametrize("door", list(Door))
def test_when_an_invalid_file_has_an_unknown_name_then_it_is_quarantined_for_either_door(door: Door) -> None:
    decision = settle(door, [], SHA, valid=False)
    assert decision == SettleDecision(Settlement.INVALID)
    assert decision.keeps_blob


def test_when_a_pushed_file_repeats_the_same_content_then_it_is_an_identical_repeat_of_that_transfer() -> None:
    decision = settle(Door.PUSH, [Known(3, "DONE", SHA)], SHA, valid=True)
    assert decision == SettleDecision(Settlement.IDENTICAL_REPEAT, 3)
    assert not decision.keeps_blob


def test_when_a_pushed_name_is_known_with_other_content_then_it_is_refused_naming_the_newest_transfer() -> None:
    known = [Known(5, "VALIDATED", OTHER), Known(2, "DONE", "cc" * 32)]
    assert settle(Door.PUSH, known, SHA, valid=True) == SettleDecision(Settlement.SAME_NAME_OTHER_CONTENT, 5)


def test_when_a_pushed_name_is_known_with_other_content_then_even_an_invalid_body_is_a_conflict() -> None:
    assert settle(Door.PUSH, [Known(5, "DONE", OTHER)], SHA, valid=False).settlement \
        is Settlement.SAME_NAME_OTHER_CONTENT


def test_when_only_a_quarantined_file_had_the_name_then_a_corrected_push_is_new() -> None:
    assert settle(Door.PUSH, [Known(4, "QUARANTINED", OTHER)], SHA, valid=True).settlement is Settlement.NEW


def test_when_the_same_invalid_file_is_pushed_again_then_it_is_known_invalid_and_not_kept() -> None:
    decision = settle(Door.PUSH, [Known(4, "QUARANTINED", SHA)], SHA, valid=False)
    assert decision == SettleDecision(Settlement.KNOWN_INVALID)
    assert not decision.keeps_blob


def test_when_a_pulled_name_is_known_with_other_content_then_it_is_judged_anew() -> None:
    """A peer's results directory reuses names: payment results dedupe per result, a receipt replaces its namesake."""
    known = [Known(5, "DONE", OTHER), Known(4, "QUARANTINED", SHA)]
    assert settle(Door.PULL, known, SHA, valid=True).settlement is Settlement.NEW
    assert settle(Door.PULL, known, SHA, valid=False).settlement is Settlement.INVALID
