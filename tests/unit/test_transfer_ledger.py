"""The transfer ledger: checked state changes, restart recovery, what is due."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from kei_gateway.adapters.ledger import TransferLedger, TransferNotFound, create_ledger_engine, upgrade
from kei_gateway.core.transfer import InvalidTransition
from kei_gateway.core.transfer import TransferState as S

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[TransferLedger]:
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    yield TransferLedger(engine)
    engine.dispose()


def add(ledger: TransferLedger, name: str = "a.dat", state: S = S.QUEUED, flow: str = "jnks-payments") -> int:
    return ledger.add_transfer(flow=flow, direction="out", peer="jnks", local_name=name, state=state, size=70,
                               sha256="ab" * 32, record_count=1, blob_id=f"blob-{name}", now=NOW).id


def test_when_a_transfer_is_added_then_it_reads_back_with_utc_times(ledger: TransferLedger) -> None:
    row = ledger.get(add(ledger))
    assert row.state == "QUEUED" and row.created_at == NOW and row.created_at.tzinfo is not None
    # UTC whatever the database server's time zone (the test cluster's is Asia/Tokyo)
    assert row.created_at.utcoffset() == row.updated_at.utcoffset() == timedelta(0)
    assert ledger.list_transfers()[0].created_at.utcoffset() == timedelta(0)
    assert row.blob_id == "blob-a.dat" and row.source_removed is False


def test_when_a_transfer_moves_then_the_move_is_checked(ledger: TransferLedger) -> None:
    transfer = add(ledger)
    row = ledger.transition(transfer, S.SENDING, NOW, attempts=1)
    assert row.state == "SENDING" and row.attempts == 1
    with pytest.raises(InvalidTransition):
        ledger.transition(transfer, S.HELD, NOW)
    assert ledger.get(transfer).state == "SENDING", "a refused move changes nothing"
    with pytest.raises(TransferNotFound, match="no transfer 999"):
        ledger.transition(999, S.DONE, NOW)


def test_when_the_daemon_restarts_then_sending_transfers_are_queued_again(ledger: TransferLedger) -> None:
    first, second = add(ledger, "a.dat"), add(ledger, "b.dat")
    ledger.transition(first, S.SENDING, NOW)
    assert ledger.requeue_sending(NOW) == 1
    assert ledger.get(first).state == "QUEUED" and ledger.get(second).state == "QUEUED"


def test_when_asking_what_is_due_then_queued_and_expired_waits_come_in_order(ledger: TransferLedger) -> None:
    queued = add(ledger, "a.dat")
    waiting = add(ledger, "b.dat")
    ledger.transition(waiting, S.SENDING, NOW)
    ledger.transition(waiting, S.RETRY_WAIT, NOW, next_attempt_at=NOW + timedelta(minutes=5))
    add(ledger, "c.dat", state=S.HELD)
    add(ledger, "d.dat", flow="mpn-slips")
    assert [t.id for t in ledger.due("jnks-payments", NOW)] == [queued]
    assert [t.id for t in ledger.due("jnks-payments", NOW + timedelta(minutes=5))] == [queued, waiting]


def test_when_a_source_was_committed_but_not_removed_then_it_is_found_once(ledger: TransferLedger) -> None:
    transfer = add(ledger, "a.dat")
    assert ledger.unremoved_source("jnks-payments", "a.dat", "ab" * 32).id == transfer  # type: ignore[union-attr]
    ledger.update(transfer, NOW, source_removed=True)
    assert ledger.unremoved_source("jnks-payments", "a.dat", "ab" * 32) is None
    assert ledger.referenced_blobs() == {"blob-a.dat"}
