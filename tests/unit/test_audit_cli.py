"""``kei-gateway audit verify|report`` and the operator commands that append to the chain, end to end."""

from __future__ import annotations

import csv
import io
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine
from kei_gateway.cli import main as cli, exitcodes
from kei_gateway.cli.audit import parse_since
from kei_gateway.config import read_config
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.operations.audit import AuditLog, AuditRecord, load_audit_key
from kei_gateway.sim.harness import demo_config_text

NOW = datetime.now(timezone.utc)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SUDO_USER", "ope-dummy")
    (tmp_path / "credentials").mkdir()
    key = tmp_path / "credentials" / "audit.key"
    key.write_bytes(secrets.token_bytes(32))
    key.chmod(0o600)
    path = tmp_path / "k.toml"
    path.write_text(demo_config_text(str(tmp_path), 9464), encoding="utf-8")
    assert run(path, "db", "upgrade") == exitcodes.OK
    return path


def run(config: Path, *argv: str) -> int:
    return cli.main(["-c", str(config), *argv])


def engine_of(config: Path) -> Engine:
    return create_ledger_engine(read_config(str(config)).database_url)


def audit_log(config: Path) -> AuditLog:
    parsed = read_config(str(config))
    return AuditLog(engine_of(config), load_audit_key(parsed.file_path(parsed.keys.audit)))


def add(config: Path, state: S) -> int:
    return TransferLedger(engine_of(config)).add_transfer(
        flow="jnks-payments", direction="out", peer="jnks", local_name="KEI-DUMMY.dat", state=state, size=70,
        sha256="0" * 64, record_count=1500, blob_id=None, now=NOW).id


def fill(config: Path, n: int = 8) -> None:
    audit_log(config).append_batch([AuditRecord(time=NOW, actor="kei-gateway", event="transfer.sent", flow="jnks-payments",
                                                peer="jnks", transfer_id=i, count=i) for i in range(n)])


def sql(config: Path, statements: str) -> None:
    with engine_of(config).begin() as connection:
        for statement in statements.split(";"):
            connection.execute(text(statement))


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_operators_approve_cancel_and_retry_then_each_is_recorded_with_the_operator(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    held, other, failed = add(config, S.HELD), add(config, S.HELD), add(config, S.FAILED)
    assert run(config, "transfers", "approve", str(held)) == exitcodes.OK
    assert run(config, "transfers", "cancel", str(other), "--reason", "sent twice by mistake") == exitcodes.OK
    assert run(config, "transfers", "retry", str(failed)) == exitcodes.OK
    assert "not recorded" not in capsys.readouterr().err
    records = [s.record for s in audit_log(config).iter_records()]
    assert [(r.event, r.actor, r.transfer_id) for r in records] == [
        ("operator.db_upgraded", "ope-dummy", None),
        ("operator.transfer_approved", "ope-dummy", held),
        ("operator.transfer_cancelled", "ope-dummy", other),
        ("operator.transfer_retried", "ope-dummy", failed)]
    assert records[1].count == 1500 and records[2].reason == "sent twice by mistake"
    assert all("KEI-DUMMY" not in repr(r) for r in records)


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_db_upgrade_finds_nothing_to_do_then_nothing_is_recorded(config: Path) -> None:
    assert run(config, "db", "upgrade") == exitcodes.OK
    assert [s.record.event for s in audit_log(config).iter_records()] == ["operator.db_upgraded"]


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_a_key_is_generated_with_a_configuration_then_it_is_recorded(config: Path, tmp_path: Path) -> None:
    assert run(config, "keys", "generate", "--output", str(tmp_path / "new.key")) == exitcodes.OK
    assert [s.record.event for s in audit_log(config).iter_records()][-1] == "operator.key_generated"


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_audit_key_is_missing_then_the_action_is_done_and_the_gap_is_said(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    held = add(config, S.HELD)
    (tmp_path / "credentials" / "audit.key").unlink()
    assert run(config, "transfers", "approve", str(held)) == exitcodes.OK
    assert "not recorded in the audit trail" in capsys.readouterr().err


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_record_of_an_approval_cannot_be_chained_then_the_approval_is_rolled_back_with_it(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11: the approval and its record commit in one transaction; a chain that cannot take the record
    (its head row gone) leaves the transfer HELD, and the operator is told."""
    held = add(config, S.HELD)
    sql(config, "DELETE FROM audit_head")
    assert run(config, "transfers", "approve", str(held)) == exitcodes.FAILED
    assert "was not changed" in capsys.readouterr().err
    assert TransferLedger(engine_of(config)).get(held).state == S.HELD


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_chain_is_intact_then_verify_exits_0_with_the_count(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(config)
    assert run(config, "audit", "verify") == exitcodes.OK
    assert capsys.readouterr().out.strip() == "OK, 9 records"


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_a_transfer_has_no_record_then_verify_exits_1_naming_it_though_the_chain_is_intact(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(config, 1)  # one record, naming transfer 0
    lost = add(config, S.QUEUED)  # committed without its record, as a kill -9 did before issue 11
    assert run(config, "audit", "verify") == exitcodes.FAILED
    out, err = capsys.readouterr()
    assert out.strip() == "OK, 2 records"
    assert f"1 transfer(s) have no audit record (ids {lost})" in err


@pytest.mark.integration  # opens a SQLite ledger file
@pytest.mark.parametrize("tamper, named", [
    ("UPDATE audit SET count = 99 WHERE sequence = 4", "record 4 changed"),
    ("DELETE FROM audit WHERE sequence = 5", "record 5 deleted"),
    ("INSERT INTO audit (sequence, time, actor, event, previous_mac, mac) "
     "VALUES (10, '2026-11-01 00:00:00', 'kei-gateway', 'transfer.sent', '" + "1" * 64 + "', '" + "2" * 64 + "')",
     "record 10 inserted"),
    ("UPDATE audit SET sequence = 100 WHERE sequence = 6; UPDATE audit SET sequence = 6 WHERE sequence = 7; "
     "UPDATE audit SET sequence = 7 WHERE sequence = 100", "record 6 reordered"),
    ("DELETE FROM audit WHERE sequence >= 8; "
     "UPDATE audit_head SET sequence = 7, mac = (SELECT mac FROM audit WHERE sequence = 7)",
     "record 8 truncated: the head row does not match its MAC: the newest records after 7 were deleted, or the head was changed"),
    ("UPDATE audit_head SET head_mac = '" + "0" * 64 + "'", "record 10 truncated"),
])
def test_when_a_record_is_tampered_with_then_verify_exits_1_naming_it(
        config: Path, capsys: pytest.CaptureFixture[str], tamper: str, named: str) -> None:
    fill(config)
    sql(config, tamper)
    assert run(config, "audit", "verify") == exitcodes.FAILED
    err = capsys.readouterr().err
    assert f"TAMPERED: {named}" in err, err


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_records_are_purged_then_verify_exits_0(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill(config)
    assert audit_log(config).purge_before(NOW + timedelta(seconds=1), now=NOW).deleted == 9
    capsys.readouterr()
    assert run(config, "audit", "verify") == exitcodes.OK
    assert capsys.readouterr().out.strip() == "OK, 1 records"


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_audit_key_is_readable_by_others_then_verify_exits_2_naming_keys_audit(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "credentials" / "audit.key").chmod(0o644)
    assert run(config, "audit", "verify") == exitcodes.USAGE
    assert "keys.audit" in capsys.readouterr().err


def test_when_the_ledger_does_not_exist_then_verify_exits_1_without_creating_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "audit.key").write_bytes(secrets.token_bytes(32))
    (tmp_path / "credentials" / "audit.key").chmod(0o600)
    path = tmp_path / "k.toml"
    path.write_text(demo_config_text(str(tmp_path), 9464), encoding="utf-8")
    assert run(path, "audit", "verify") == exitcodes.FAILED
    assert "no ledger" in capsys.readouterr().err
    assert not (tmp_path / "state" / "ledger.sqlite3").exists()


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_a_report_is_asked_then_every_section_shows_what_happened_and_the_csv_lists_it(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    held = add(config, S.HELD)
    audit_log(config).append_batch([
        AuditRecord(time=NOW, actor="kei-gateway", event="listener.denied", listener="metrics", reason="address",
                    source="10.9.9.9"),
        AuditRecord(time=NOW, actor="kei-gateway", event="listener.denied", listener="metrics", reason="address",
                    source="10.9.9.9"),
        AuditRecord(time=NOW, actor="kei-gateway", event="transfer.retry", flow="jnks-payments", peer="jnks",
                    transfer_id=3, reason="timeout"),
        AuditRecord(time=NOW, actor="kei-gateway", event="transfer.failed", flow="jnks-payments", peer="jnks",
                    transfer_id=3, reason="attempts used up"),
        AuditRecord(time=NOW, actor="kei-gateway", event="ingest.quarantined", flow="jnks-payments",
                    reason="3 invalid records"),
        AuditRecord(time=NOW, actor="kei-gateway", event="ingest.queued", flow="jnks-payments", transfer_id=held,
                    count=1500, reason="state HELD"),
        AuditRecord(time=NOW, actor="kei-gateway", event="purge.done", count=12, reason="report erasure-20261122"),
        AuditRecord(time=NOW - timedelta(days=30), actor="kei-gateway", event="listener.denied", listener="push",
                    reason="address", source="10.7.7.7"),
    ])
    assert run(config, "transfers", "approve", str(held)) == exitcodes.OK
    capsys.readouterr()
    assert run(config, "audit", "report", "--since", "1d", "--csv", str(tmp_path / "r.csv")) == exitcodes.OK
    out = capsys.readouterr().out
    assert "改ざん検査 (chain verify): OK, 10 records" in out
    assert "記録 (records): 9" in out
    assert "接続拒否 (denied connections): 2" in out and "10.9.9.9" in out and "10.7.7.7" not in out
    assert "送信失敗・再試行 (failed and retried transfers): 2" in out
    assert "隔離 (quarantined files): 1" in out and "3 invalid records" in out
    assert "保留と承認 (holds and approvals): 2" in out and "承認 (approved)" in out and "ope-dummy" in out
    assert "運用者の操作 (operator commands): 2" in out  # db upgrade and the approval
    assert "消去 (purges): 1" in out
    rows = list(csv.reader(io.StringIO((tmp_path / "r.csv").read_bytes().decode("utf-8-sig"))))
    assert rows[0][0] == "区分 (section)"
    assert sum(1 for row in rows if row[4] == "listener.denied") == 2


def test_when_since_is_a_period_or_a_date_then_it_is_understood() -> None:
    now = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("2026-11-20", now).isoformat() == "2026-11-20T00:00:00+09:00"
    with pytest.raises(Exception, match="7d"):
        parse_since("last week", now)
