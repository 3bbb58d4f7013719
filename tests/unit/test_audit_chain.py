"""The audit chain on a real ledger (SQLite and PostgreSQL): tampering is named, purges and concurrent writers keep it valid."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, insert, text

from kei_gateway.adapters.ledger import create_ledger_engine, upgrade
from kei_gateway.adapters.ledger.models import AuditEntry
from kei_gateway.operations.audit import (
    AuditLog,
    AuditRecord,
    AuditUnavailable,
    ChainHead,
    StoredRecord,
    canonical,
    mac,
    verify_chain,
)
from kei_gateway.operations.audit.chain import FIELD_NAMES, GENESIS_MAC, chain, head_mac

T0 = datetime(2026, 11, 1, 0, 0, tzinfo=timezone.utc)
KEY = bytes(range(32))
NOW = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)


def record(i: int, when: datetime | None = None) -> AuditRecord:
    return AuditRecord(time=when or T0 + timedelta(minutes=i), actor="kei-gateway", event="transfer.sent",
                       flow="jnks-payments", peer="jnks", transfer_id=i, sha256=f"{i:064x}", count=10 + i)


@pytest.fixture
def engine(ledger_url: str) -> Iterator[Engine]:
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def log(engine: Engine) -> AuditLog:
    log = AuditLog(engine, KEY)
    log.append_batch([record(i) for i in range(1, 11)])
    return log


def sql(engine: Engine, statement: str, **params: object) -> None:
    with engine.begin() as connection:
        connection.execute(text(statement), params)


def as_stored(engine: Engine, when: datetime) -> datetime:
    """*when* as a raw SQL parameter for a timestamp column: naive UTC on SQLite, aware on PostgreSQL."""
    return when.astimezone(timezone.utc).replace(tzinfo=None) if engine.dialect.name == "sqlite" else when


# --- the pure core -------------------------------------------------------------------

def test_when_any_field_differs_then_the_canonical_bytes_and_the_mac_differ() -> None:
    base = record(1)
    assert canonical(base) == canonical(AuditRecord(**{**base.__dict__}))
    for change in ({"count": 12}, {"reason": "x"}, {"time": base.time + timedelta(microseconds=1)}, {"actor": "ope"}):
        other = AuditRecord(**{**base.__dict__, **change})
        assert canonical(other) != canonical(base)
        assert mac(KEY, other, GENESIS_MAC) != mac(KEY, base, GENESIS_MAC)
    assert mac(KEY, base, GENESIS_MAC) != mac(KEY, base, "1" * 64)
    assert mac(KEY, base, GENESIS_MAC) != mac(bytes(32), base, GENESIS_MAC)


def test_when_a_naive_time_comes_back_from_sqlite_then_it_means_utc_and_the_mac_is_the_same() -> None:
    naive = AuditRecord(**{**record(1).__dict__, "time": T0.replace(tzinfo=None) + timedelta(minutes=1)})
    assert canonical(naive) == canonical(record(1))


def test_when_a_chain_is_untouched_then_verify_says_ok_with_the_count() -> None:
    stored = chain(KEY, [record(i) for i in range(1, 6)], ChainHead(0, GENESIS_MAC))
    report = verify_chain(stored, KEY, ChainHead(5, stored[-1].mac, head_mac(KEY, 5, stored[-1].mac)))
    assert report.ok and report.count == 5 and report.text() == "OK, 5 records"


def test_when_verified_under_another_key_then_the_first_record_is_reported_changed() -> None:
    stored = chain(KEY, [record(i) for i in range(1, 4)], ChainHead(0, GENESIS_MAC))
    report = verify_chain(stored, bytes(32))
    assert report.problem is not None and (report.problem.sequence, report.problem.kind) == (1, "changed")


# --- tampering with the table ----------------------------------------------------------

def kind_of(log: AuditLog) -> tuple[int, str]:
    report = log.verify()
    assert report.problem is not None, report.text()
    return report.problem.sequence, report.problem.kind


def test_when_the_chain_is_untouched_then_the_ledger_verifies_ok(log: AuditLog) -> None:
    report = log.verify()
    assert report.ok and report.count == 10


def test_when_a_field_of_a_record_is_edited_then_verify_names_it_changed(log: AuditLog, engine: Engine) -> None:
    sql(engine, "UPDATE audit SET count = 9999 WHERE sequence = 4")
    assert kind_of(log) == (4, "changed")


def test_when_a_records_time_is_edited_then_verify_names_it_changed(log: AuditLog, engine: Engine) -> None:
    sql(engine, "UPDATE audit SET time = :t WHERE sequence = 7", t=as_stored(engine, T0 - timedelta(days=1)))
    assert kind_of(log) == (7, "changed")


def test_when_a_record_is_deleted_then_verify_names_the_missing_sequence(log: AuditLog, engine: Engine) -> None:
    sql(engine, "DELETE FROM audit WHERE sequence = 5")
    report = log.verify()
    assert report.problem is not None and (report.problem.sequence, report.problem.kind) == (5, "deleted")
    assert "record(s) 5 are missing between 4 and 6" in report.problem.detail
    assert report.count == 4


def test_when_a_record_is_deleted_and_the_rest_renumbered_then_verify_says_deleted(log: AuditLog, engine: Engine) -> None:
    sql(engine, "DELETE FROM audit WHERE sequence = 5")
    sql(engine, "UPDATE audit SET sequence = sequence + 1000 WHERE sequence > 5")
    sql(engine, "UPDATE audit SET sequence = sequence - 1001 WHERE sequence > 1000")
    sql(engine, "UPDATE audit_head SET sequence = 9")
    assert kind_of(log) == (5, "deleted")


def test_when_the_last_records_are_deleted_then_verify_says_the_end_was_deleted(log: AuditLog, engine: Engine) -> None:
    sql(engine, "DELETE FROM audit WHERE sequence >= 9")
    assert kind_of(log) == (9, "deleted")


def test_when_the_first_records_are_deleted_outside_a_purge_then_verify_says_deleted(log: AuditLog, engine: Engine) -> None:
    sql(engine, "DELETE FROM audit WHERE sequence <= 3")
    assert kind_of(log) == (1, "deleted")


def _forge(engine: Engine, sequence: int, previous_mac: str, mac_value: str, event: str = "transfer.sent") -> None:
    sql(engine, "INSERT INTO audit (sequence, time, actor, event, previous_mac, mac) "
                "VALUES (:s, :t, 'kei-gateway', :e, :p, :m)",
        s=sequence, t=as_stored(engine, T0), e=event, p=previous_mac, m=mac_value)


def test_when_a_forged_record_is_inserted_in_the_middle_then_verify_names_it_inserted(log: AuditLog, engine: Engine) -> None:
    records = list(log.iter_records())
    sql(engine, "UPDATE audit SET sequence = sequence + 1000 WHERE sequence >= 6")
    sql(engine, "UPDATE audit SET sequence = sequence - 999 WHERE sequence > 1000")
    sql(engine, "UPDATE audit_head SET sequence = 11")
    _forge(engine, 6, records[4].mac, secrets.token_hex(32))
    assert kind_of(log) == (6, "inserted")


def test_when_a_forged_record_is_appended_at_the_end_then_verify_names_it_inserted(log: AuditLog, engine: Engine) -> None:
    _forge(engine, 11, log.head().mac, secrets.token_hex(32))
    assert kind_of(log) == (11, "inserted")


def test_when_a_valid_record_is_copied_into_the_chain_then_verify_names_the_copy_inserted(log: AuditLog, engine: Engine) -> None:
    copy = list(log.iter_records())[2]
    sql(engine, "UPDATE audit SET sequence = sequence + 1000 WHERE sequence >= 6")
    sql(engine, "UPDATE audit SET sequence = sequence - 999 WHERE sequence > 1000")
    sql(engine, "UPDATE audit_head SET sequence = 11")
    _forge(engine, 6, copy.previous_mac, copy.mac)
    sql(engine, "UPDATE audit SET count = :c, transfer_id = :i, sha256 = :h, flow = :f, peer = :p, time = :t WHERE sequence = 6",
        c=copy.record.count, i=copy.record.transfer_id, h=copy.record.sha256, f=copy.record.flow, p=copy.record.peer,
        t=as_stored(engine, copy.record.time))
    assert kind_of(log) == (6, "inserted")


def test_when_two_records_are_swapped_then_verify_names_the_first_reordered(log: AuditLog, engine: Engine) -> None:
    sql(engine, "UPDATE audit SET sequence = 1000 WHERE sequence = 5")
    sql(engine, "UPDATE audit SET sequence = 5 WHERE sequence = 6")
    sql(engine, "UPDATE audit SET sequence = 6 WHERE sequence = 1000")
    sequence, kind = kind_of(log)
    assert (sequence, kind) == (5, "reordered")


def test_when_the_mac_column_is_edited_then_verify_names_the_record_changed(log: AuditLog, engine: Engine) -> None:
    sql(engine, "UPDATE audit SET mac = :m WHERE sequence = 2", m="f" * 64)
    assert kind_of(log) == (2, "changed")


# --- purging ---------------------------------------------------------------------------

def test_when_old_records_are_purged_then_an_anchor_keeps_the_chain_verifiable(log: AuditLog) -> None:
    result = log.purge_before(T0 + timedelta(minutes=6), now=T0 + timedelta(days=1))
    assert result.deleted == 5 and result.anchor is not None
    assert result.anchor.record.anchor_sequence == 5 and result.anchor.record.event == "audit.purged"
    records = list(log.iter_records())
    assert [r.sequence for r in records] == [6, 7, 8, 9, 10, 11]
    report = log.verify()
    assert report.ok and report.count == 6


def test_when_purged_twice_and_appended_between_then_the_chain_still_verifies(log: AuditLog) -> None:
    log.purge_before(T0 + timedelta(minutes=3), now=T0 + timedelta(days=1))
    log.append_batch([record(i, T0 + timedelta(days=2, minutes=i)) for i in range(20, 25)])
    second = log.purge_before(T0 + timedelta(days=1, hours=1), now=T0 + timedelta(days=3))
    assert second.deleted == 9  # records 3..10 and the first anchor
    assert log.verify().ok
    assert log.purge_before(T0, now=T0 + timedelta(days=3)).deleted == 0


def test_when_everything_is_purged_then_the_anchor_alone_verifies(log: AuditLog) -> None:
    log.purge_before(T0 + timedelta(days=30), now=T0 + timedelta(days=30))
    report = log.verify()
    assert report.ok and report.count == 1


def test_when_records_after_a_purge_anchor_are_deleted_then_verify_says_deleted(log: AuditLog, engine: Engine) -> None:
    log.purge_before(T0 + timedelta(minutes=4), now=T0 + timedelta(days=1))
    sql(engine, "DELETE FROM audit WHERE sequence IN (4, 5)")
    assert kind_of(log) == (4, "deleted")


def test_when_an_anchor_is_edited_to_hide_a_deletion_then_verify_names_the_anchor_changed(log: AuditLog, engine: Engine) -> None:
    result = log.purge_before(T0 + timedelta(minutes=4), now=T0 + timedelta(days=1))
    assert result.anchor is not None
    sql(engine, "UPDATE audit SET anchor_sequence = 5 WHERE sequence = :s", s=result.anchor.sequence)
    assert kind_of(log) == (result.anchor.sequence, "changed")


# --- concurrent writers ------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys
    from datetime import datetime, timezone
    from kei_gateway.operations.audit import AuditLog, AuditRecord
    from kei_gateway.adapters.ledger import create_ledger_engine
    log = AuditLog(create_ledger_engine(sys.argv[1]), bytes(range(32)))
    for i in range(200):
        log.append(AuditRecord(time=datetime.now(timezone.utc), actor=sys.argv[2], event="operator.test", count=i))
""")


@pytest.mark.integration  # two processes
def test_when_two_processes_append_200_records_each_then_the_chain_holds_all_400_and_verifies(
        ledger_url: str, engine: Engine) -> None:
    url = ledger_url
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, url, f"writer-{n}"]) for n in (1, 2)]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    log = AuditLog(engine, KEY)
    records: list[StoredRecord] = list(log.iter_records())
    assert [r.sequence for r in records] == list(range(1, 401))
    assert sorted(r.record.count or 0 for r in records if r.record.actor == "writer-1") == list(range(200))
    assert sorted(r.record.count or 0 for r in records if r.record.actor == "writer-2") == list(range(200))
    report = log.verify()
    assert report.ok and report.count == 400


def test_when_a_reason_holds_an_undecodable_file_name_then_the_record_is_appended_and_verifies(log: AuditLog) -> None:
    reason = "PermissionError: Permission denied (/spool/outbox/jnks/\udc94\udc5b.dat)"  # os.listdir of CP932 bytes
    stored = log.append(AuditRecord(time=datetime(2026, 11, 21, tzinfo=timezone.utc), actor="kei-gateway",
                                    event="ingest.failed", reason=reason))
    assert stored.record.reason is not None and "\ufffd" in stored.record.reason and ".dat)" in stored.record.reason
    report = log.verify()
    assert report.ok and report.count == 11


def test_when_the_ledger_has_no_audit_table_then_an_append_says_to_run_db_upgrade(ledger_url: str) -> None:
    engine = create_ledger_engine(ledger_url)
    upgrade(engine, "0004")
    log = AuditLog(engine, KEY, sleep=lambda _: None)
    assert not log.available()
    with pytest.raises(AuditUnavailable, match="db upgrade"):
        log.append(record(1))
    engine.dispose()


# --- the authenticated head: truncation ------------------------------------------------------

def move_head_back(engine: Engine, to: int) -> None:
    """Cut the records after *to* off the end and move the head back to match (what the head MAC is for)."""
    sql(engine, "DELETE FROM audit WHERE sequence > :s", s=to)
    sql(engine, "UPDATE audit_head SET sequence = :s, mac = (SELECT mac FROM audit WHERE sequence = :s)", s=to)


def test_when_the_newest_records_are_deleted_and_the_head_moved_back_then_verify_says_truncated(
        log: AuditLog, engine: Engine) -> None:
    move_head_back(engine, 8)
    report = log.verify()
    assert report.problem is not None and (report.problem.sequence, report.problem.kind) == (9, "truncated")
    assert "the newest records after 8 were deleted, or the head was changed" in report.problem.detail


def test_when_the_head_is_moved_back_and_its_mac_removed_then_verify_still_says_truncated(
        log: AuditLog, engine: Engine) -> None:
    move_head_back(engine, 8)
    sql(engine, "UPDATE audit_head SET head_mac = NULL")
    report = log.verify()
    assert report.problem is not None and (report.problem.sequence, report.problem.kind) == (9, "truncated")
    assert "MAC was removed" in report.problem.detail


def test_when_the_head_mac_is_edited_then_verify_says_truncated(log: AuditLog, engine: Engine) -> None:
    sql(engine, "UPDATE audit_head SET head_mac = :m", m="0" * 64)
    assert kind_of(log) == (11, "truncated")


def test_when_the_head_names_another_record_at_its_sequence_then_verify_says_truncated(
        log: AuditLog, engine: Engine) -> None:
    sql(engine, "UPDATE audit SET mac = :m WHERE sequence = 10", m="e" * 64)  # and record 10 no longer verifies
    assert kind_of(log) == (10, "changed")  # the record's own break is named first


def test_when_records_are_appended_after_the_head_was_moved_back_then_the_break_stays_named(
        log: AuditLog, engine: Engine) -> None:
    move_head_back(engine, 8)
    log.append_batch([record(i) for i in range(30, 33)])  # records 9..11 again, chained after 8
    log.append(record(40))
    assert (log.head().head_mac or "").startswith("broken:")
    report = log.verify()
    assert report.problem is not None and (report.problem.sequence, report.problem.kind) == (9, "truncated")
    assert "when record 9 was appended" in report.problem.detail
    log.purge_before(T0 + timedelta(days=30), now=T0 + timedelta(days=30))
    assert kind_of(log) == (9, "truncated"), "a purge does not clear the mark either"


def test_when_records_are_purged_then_the_head_stays_authenticated_and_verifies(log: AuditLog) -> None:
    log.purge_before(T0 + timedelta(minutes=6), now=T0 + timedelta(days=1))
    head = log.head()
    assert head.head_mac == head_mac(KEY, 11, head.mac)
    report = log.verify()
    assert report.ok and report.warning is None and report.text() == "OK, 6 records"


def test_when_an_older_head_row_is_put_back_with_everything_after_it_deleted_then_verify_cannot_tell(
        log: AuditLog, engine: Engine) -> None:
    """The documented limit (docs/audit.md): a copy of an earlier head is an authentic head, like a rollback."""
    old = log.head()
    log.append_batch([record(i) for i in range(11, 14)])
    sql(engine, "DELETE FROM audit WHERE sequence > 10")
    sql(engine, "UPDATE audit_head SET sequence = :s, mac = :m, head_mac = :h", s=old.sequence, m=old.mac, h=old.head_mac)
    assert log.verify().ok


# --- a ledger written before schema 0006 ------------------------------------------------------

def legacy_ledger(ledger_url: str, n: int) -> Engine:
    """A ledger migrated to 0005 with *n* records written by that version (v1 MACs, head without a MAC), then upgraded."""
    engine = create_ledger_engine(ledger_url)
    upgrade(engine, "0005")
    stored = chain(KEY, [record(i) for i in range(1, n + 1)], ChainHead(0, GENESIS_MAC), version=1)
    rows = [{**{name: getattr(s.record, name) for name in FIELD_NAMES},
             "sequence": s.sequence, "previous_mac": s.previous_mac, "mac": s.mac} for s in stored]
    with engine.begin() as connection:
        connection.execute(insert(AuditEntry), rows)
        connection.execute(text("UPDATE audit_head SET sequence = :s, mac = :m"), {"s": n, "m": stored[-1].mac})
    upgrade(engine)
    return engine


def test_when_a_ledger_with_records_is_upgraded_from_0005_then_verify_warns_until_the_next_append(ledger_url: str) -> None:
    engine = legacy_ledger(ledger_url, 6)
    log = AuditLog(engine, KEY)
    assert log.head().head_mac is None
    report = log.verify()
    assert report.ok and report.count == 6
    assert report.text().startswith("OK, 6 records (warning: head not yet authenticated")
    log.append(record(7))
    assert log.head().head_mac == head_mac(KEY, 7, log.head().mac)
    report = log.verify()
    assert report.ok and report.warning is None and report.text() == "OK, 7 records"
    log.append(record(8))
    move_head_back(engine, 7)
    sql(engine, "UPDATE audit_head SET head_mac = NULL")
    assert kind_of(log) == (8, "truncated"), "once a v2 record exists, a head without a MAC is not a legacy head"
    move_head_back(engine, 6)  # every record since the upgrade gone: a rollback to before it (docs/audit.md, limits)
    assert log.verify().warning is not None
    engine.dispose()


def test_when_a_legacy_chain_is_purged_then_the_anchor_authenticates_the_head(ledger_url: str) -> None:
    engine = legacy_ledger(ledger_url, 6)
    log = AuditLog(engine, KEY)
    log.purge_before(T0 + timedelta(minutes=4), now=T0 + timedelta(days=1))
    report = log.verify()
    assert report.ok and report.warning is None and report.count == 4
    engine.dispose()


def test_when_a_v1_record_follows_a_v2_record_then_verify_names_it_changed() -> None:
    new = chain(KEY, [record(i) for i in range(1, 4)], ChainHead(0, GENESIS_MAC))
    old = chain(KEY, [record(i) for i in range(4, 6)], ChainHead(3, new[-1].mac), version=1)
    report = verify_chain([*new, *old], KEY)
    assert report.problem is not None and (report.problem.sequence, report.problem.kind) == (4, "changed")
    legacy_then_new = [*chain(KEY, [record(1)], ChainHead(0, GENESIS_MAC), version=1)]
    legacy_then_new += chain(KEY, [record(2)], ChainHead(1, legacy_then_new[0].mac))
    assert verify_chain(legacy_then_new, KEY, ChainHead(2, legacy_then_new[-1].mac, head_mac(KEY, 2, legacy_then_new[-1].mac))).ok


def test_when_the_head_is_moved_back_without_its_mac_and_a_record_appended_then_the_break_stays_named(
        log: AuditLog, engine: Engine) -> None:
    move_head_back(engine, 8)
    sql(engine, "UPDATE audit_head SET head_mac = NULL")
    log.append(record(30))
    assert log.head().head_mac == "broken:9"
    assert kind_of(log) == (9, "truncated")


def test_when_a_purge_runs_during_the_walk_then_verify_does_not_call_it_a_deletion(
        log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's purge between two pages of the walk made the start look cut (a false alarm)."""
    real_iter = AuditLog.iter_records
    purged: list[bool] = []

    def walk_with_a_purge(self: AuditLog, since: Any = None, batch: int = 1000) -> Iterator[Any]:
        for index, item in enumerate(real_iter(self, since, batch=3)):
            yield item
            if index == 4 and not purged:  # mid-walk: the purge deletes records 1..6 and appends its anchor
                purged.append(True)
                self.purge_before(T0 + timedelta(minutes=6), now=T0 + timedelta(days=1))

    monkeypatch.setattr(AuditLog, "iter_records", walk_with_a_purge)
    report = log.verify()
    assert purged and report.ok, report.text()


# --- records written in the action's own transaction (issue 11, STYLE 14) ----------------------------

def _add(ledger: Any, n: int) -> Any:
    from kei_gateway.core.transfer import TransferState

    return ledger.add_transfer(flow="jnks-payments", direction="out", peer="jnks", local_name=f"pay{n}.dat",
                               state=TransferState.QUEUED, size=70, sha256=f"{n:064x}", record_count=1, blob_id=None,
                               now=NOW, audit=("ingest.queued", {"flow": "jnks-payments", "records": 1,
                                                                 "sha256": f"{n:064x}", "state": "QUEUED"}))


def test_when_a_transfer_is_added_with_its_audit_event_then_both_commit_together_and_the_chain_verifies(
        log: AuditLog, engine: Engine) -> None:
    from kei_gateway.adapters.ledger import TransferLedger

    ledger = TransferLedger(engine)
    ledger.audit_writer = log.append_in
    row = _add(ledger, 1)
    log.append_batch([record(99)])  # the observer's path, after it
    row2 = _add(ledger, 2)
    records = list(log.iter_records())
    assert [(r.record.event, r.record.transfer_id) for r in records[-3:]] == [
        ("ingest.queued", row.id), ("transfer.sent", 99), ("ingest.queued", row2.id)]
    assert records[-1].record.actor == "kei-gateway" and records[-1].record.reason == "state QUEUED"
    assert log.verify().ok


def test_when_the_action_fails_after_its_record_then_neither_is_committed(log: AuditLog, engine: Engine) -> None:
    from kei_gateway.adapters.ledger import TransferLedger

    ledger = TransferLedger(engine)
    before = log.head()

    def then_fail(*args: Any) -> None:
        log.append_in(*args)
        raise RuntimeError("the process dies before the commit")

    ledger.audit_writer = then_fail
    with pytest.raises(RuntimeError):
        _add(ledger, 1)
    assert ledger.list_transfers() == [] and log.head() == before and log.count() == 10
    assert log.verify().ok


def test_when_actions_and_batches_append_from_several_threads_then_every_record_is_chained_once_in_order(
        log: AuditLog, engine: Engine) -> None:
    import threading

    from kei_gateway.adapters.ledger import TransferLedger

    ledger = TransferLedger(engine)
    ledger.audit_writer = log.append_in
    failures: list[BaseException] = []

    def adding(start: int) -> None:
        try:
            for n in range(start, start + 15):
                _add(ledger, n)
        except BaseException as error:  # reported below
            failures.append(error)

    def batching() -> None:
        try:
            for i in range(15):
                log.append_batch([record(1000 + i)])
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=adding, args=(100,)), threading.Thread(target=adding, args=(200,)),
               threading.Thread(target=batching)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    records = list(log.iter_records())
    assert len(records) == 10 + 45
    transfers = {row.id for row in ledger.list_transfers(limit=1000)}
    assert {r.record.transfer_id for r in records if r.record.event == "ingest.queued"} == transfers
    assert log.verify().ok


def test_when_a_transfer_has_no_audit_record_then_verify_names_it(log: AuditLog, engine: Engine) -> None:
    from kei_gateway.adapters.ledger import TransferLedger

    ledger = TransferLedger(engine)
    ledger.audit_writer = log.append_in
    for n in range(11):  # past the transfer ids 1-10 that the fixture's records name
        _add(ledger, n)
    assert log.unrecorded_transfers() == (0, [])
    ledger.audit_writer = None  # as the daemon did before issue 11: the record queued in memory, then lost
    lost = _add(ledger, 2)
    assert log.unrecorded_transfers() == (1, [lost.id])
    assert log.verify().ok, "the chain itself is intact: only the cross-check finds the loss"


def test_when_a_transfer_is_delivered_then_its_record_commits_with_done(log: AuditLog, engine: Engine) -> None:
    from kei_gateway.adapters.ledger import TransferLedger
    from kei_gateway.core.transfer import TransferState

    ledger = TransferLedger(engine)
    ledger.audit_writer = log.append_in
    row = _add(ledger, 1)
    ledger.transition(row.id, TransferState.SENDING, NOW)
    ledger.transition(row.id, TransferState.DONE, NOW, last_error=None,
                      audit=("transfer.sent", {"flow": "jnks-payments", "peer": "jnks", "records": 1}))
    last = list(log.iter_records())[-1].record
    assert (last.event, last.transfer_id, last.peer, last.count) == ("transfer.sent", row.id, "jnks", 1)
    assert ledger.get(row.id).state == TransferState.DONE and log.verify().ok


# --- issue 11, the rest: relays, purge erasures and operators' changes commit with their records -----------

def _done_with_blob(ledger: Any, n: int) -> Any:
    from kei_gateway.core.transfer import TransferState

    return ledger.add_transfer(flow="mpn-results", direction="in", peer="mpn", local_name=f"r{n}.dat",
                               state=TransferState.VALIDATED, size=70, sha256=f"{n:064x}", record_count=1,
                               blob_id=f"blob-{n}", now=NOW)


def test_when_a_results_relay_makes_its_transfer_done_then_the_relay_record_commits_with_it(
        log: AuditLog, engine: Engine) -> None:
    from kei_gateway.adapters.ledger import TransferLedger
    from kei_gateway.adapters.ledger.results import ResultLedger

    ledger = TransferLedger(engine)
    results = ResultLedger(engine, audit_writer=log.append_in)
    assert results.records_audit
    only_repeats, staged = _done_with_blob(ledger, 1), _done_with_blob(ledger, 2)
    results.record_relay(only_repeats.id, [], None, NOW, "新規 0, 重複 3", done=True,
                         audit=("results.relayed", {"flow": "mpn-results", "records": 0, "duplicates": 3}))
    results.record_relay(staged.id, [], "x.dat", NOW, "decided", done=False,
                         audit=("results.relayed", {"flow": "mpn-results", "records": 2}))  # not DONE: no record
    assert [r.record.transfer_id for r in log.iter_records() if r.record.event == "results.relayed"] == [only_repeats.id]
    results.finish_relay(staged.id, NOW, audit=("results.relayed", {"flow": "mpn-results", "records": 2}))
    relayed = [r.record for r in log.iter_records() if r.record.event == "results.relayed"]
    assert [(r.transfer_id, r.count) for r in relayed] == [(only_repeats.id, 0), (staged.id, 2)]
    assert log.unrecorded_transfers() == (0, []) and log.verify().ok


def test_when_several_relays_commit_together_then_each_relay_record_commits_with_its_done(
        log: AuditLog, engine: Engine) -> None:
    """Issue 16: a group of small files' relays is one commit; each has its own record in it, or none does."""
    from kei_gateway.adapters.ledger import TransferLedger
    from kei_gateway.adapters.ledger.results import NotRelayable, RelayDecision, ResultLedger

    ledger = TransferLedger(engine)
    results = ResultLedger(engine, audit_writer=log.append_in)
    first, second = _done_with_blob(ledger, 1), _done_with_blob(ledger, 2)
    results.commit_relays([RelayDecision(t.id, [], None, "新規 0", ("results.relayed", {"records": 0, "duplicates": 1}))
                           for t in (first, second)], NOW)
    third = _done_with_blob(ledger, 3)
    with pytest.raises(NotRelayable):  # second is DONE: third's record must not commit without its action
        results.commit_relays([RelayDecision(t.id, [], None, "新規 0", ("results.relayed", {"records": 0}))
                               for t in (third, second)], NOW)
    relayed = [r.record.transfer_id for r in log.iter_records() if r.record.event == "results.relayed"]
    assert relayed == [first.id, second.id]
    assert ledger.get(third.id).state == "VALIDATED"
    assert log.unrecorded_transfers() == (0, []) and log.verify().ok


def test_when_the_purge_erases_a_payload_and_ledger_rows_then_each_erasure_commits_with_its_record(
        log: AuditLog, engine: Engine) -> None:
    from kei_gateway.core.transfer import TransferState
    from kei_gateway.operations.purge.execute import PurgeLedger

    ledger = PurgeLedger(engine)
    ledger.audit_writer = log.append_in
    rows = [_done_with_blob(ledger, n) for n in (1, 2)]
    for row in rows:
        ledger.transition(row.id, TransferState.DONE, NOW)
    assert ledger.forget_blob(rows[0].id, "blob-1", ("DONE",), NOW, reason="retention.payloads")
    assert not ledger.forget_blob(rows[0].id, "blob-1", ("DONE",), NOW, reason="again")  # nothing erased: no record
    deleted, _ = ledger.delete_transfers([row.id for row in rows], NOW + timedelta(days=1), NOW)
    assert deleted == [row.id for row in rows]
    erased = [(r.record.transfer_id, r.record.reason) for r in log.iter_records() if r.record.event == "purge.erased"]
    assert erased == [(rows[0].id, "store: retention.payloads"),
                      (rows[0].id, "ledger: ledger metadata past retention.ledger (2026-11-22)"),
                      (rows[1].id, "ledger: ledger metadata past retention.ledger (2026-11-22)")]
    assert log.verify().ok


def test_when_ingests_relays_purges_and_batches_append_from_several_threads_then_each_is_chained_once(
        log: AuditLog, engine: Engine) -> None:
    """The chain's head stays serialised (SQLite's write lock, PostgreSQL's row lock) whichever transaction
    writes the record: a transfer's, a relay's, a purge's, or the observer's own batch."""
    import threading

    from kei_gateway.adapters.ledger.results import ResultLedger
    from kei_gateway.core.transfer import TransferState
    from kei_gateway.operations.purge.execute import PurgeLedger

    ledger = PurgeLedger(engine)
    ledger.audit_writer = log.append_in
    results = ResultLedger(engine, audit_writer=log.append_in)
    to_relay = [_done_with_blob(ledger, 500 + n) for n in range(10)]
    to_purge = [_done_with_blob(ledger, 600 + n) for n in range(10)]
    for row in to_purge:
        ledger.transition(row.id, TransferState.DONE, NOW)
    failures: list[BaseException] = []

    def guarded(work: Any) -> Any:
        def run() -> None:
            try:
                work()
            except BaseException as error:  # reported below
                failures.append(error)
        return run

    def ingesting() -> None:
        for n in range(100, 110):
            _add(ledger, n)

    def relaying() -> None:
        for row in to_relay:
            results.record_relay(row.id, [], None, NOW, "0", done=True, audit=("results.relayed", {"records": 0}))

    def purging() -> None:
        for row in to_purge:
            ledger.forget_blob(row.id, row.blob_id, ("DONE",), NOW, reason="retention.payloads")

    def batching() -> None:
        for i in range(10):
            log.append_batch([record(1000 + i)])

    threads = [threading.Thread(target=guarded(work)) for work in (ingesting, relaying, purging, batching)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    events = [r.record.event for r in log.iter_records()][10:]
    assert sorted(set(events)) == ["ingest.queued", "purge.erased", "results.relayed", "transfer.sent"]
    assert all(events.count(name) == 10 for name in set(events))
    assert log.verify().ok
