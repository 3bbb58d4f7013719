"""``kei-gateway purge [--dry-run]``."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine, upgrade
from kei_gateway.adapters.store.blobs import FileBlobStore
from kei_gateway.adapters.store.keys import StoreKeyring
from kei_gateway.cli import main as cli, exitcodes
from kei_gateway.config import read_config
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.operations.audit import AuditLog
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.testing import DUMMY_STORE_KEY

AUDIT_KEY = bytes(range(101, 133))


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, TransferLedger, FileBlobStore, int]:
    monkeypatch.setenv("SUDO_USER", "operator-dummy")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name, key in (("store.key", DUMMY_STORE_KEY), ("audit.key", AUDIT_KEY)):
        (credentials / name).write_bytes(key)
        os.chmod(credentials / name, 0o600)
    config = tmp_path / "k.toml"
    config.write_text(demo_config_text(str(tmp_path), 9464), encoding="utf-8")
    engine = create_ledger_engine(read_config(str(config)).database_url)
    upgrade(engine)
    (tmp_path / "state" / "store").mkdir(parents=True, exist_ok=True)
    store = FileBlobStore(str(tmp_path / "state" / "store"), StoreKeyring(DUMMY_STORE_KEY))
    info = store.write("out-done", [b"dummy payload\r\n"])
    ledger = TransferLedger(engine)
    two_days_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    row = ledger.add_transfer(flow="jnks-payments", direction="out", peer="jnks", local_name="pay-001.dat",
                              state=S.DONE, size=info.size, sha256=info.sha256, record_count=1, blob_id="out-done",
                              now=two_days_ago)
    return config, ledger, store, row.id


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_purge_is_a_dry_run_then_it_lists_what_is_due_and_changes_nothing(
        setup: tuple[Path, TransferLedger, FileBlobStore, int], capsys: pytest.CaptureFixture[str]) -> None:
    config, ledger, store, transfer_id = setup
    assert cli.main(["-c", str(config), "purge", "--dry-run"]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "dry run: 1 item(s) would be erased" in out and "pay-001.dat" in out and "store 1" in out
    assert store.exists("out-done") and ledger.get(transfer_id).blob_id == "out-done"
    assert not (config.parent / "state" / "reports").exists()
    assert AuditLog(ledger.engine, AUDIT_KEY).available() and not list(AuditLog(ledger.engine, AUDIT_KEY).iter_records())


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_purge_runs_by_hand_then_it_erases_writes_the_report_and_records_the_operator(
        setup: tuple[Path, TransferLedger, FileBlobStore, int], capsys: pytest.CaptureFixture[str]) -> None:
    config, ledger, store, transfer_id = setup
    assert cli.main(["-c", str(config), "purge"]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "erased 1 item(s)" in out and "report: " in out and "erasure-" in out
    assert not store.exists("out-done") and ledger.get(transfer_id).blob_id is None
    reports = sorted(os.listdir(config.parent / "state" / "reports"))
    assert [n for n in reports if n.startswith("erasure-")] == [reports[1], reports[2]]
    records = list(AuditLog(ledger.engine, AUDIT_KEY).iter_records())
    # The payload's erasure is chained with the ledger change that forgets it (issue 11), then the run's record.
    assert [(r.record.event, r.record.actor, r.record.transfer_id, r.record.count) for r in records] == [
        ("purge.erased", "operator-dummy", transfer_id, None), ("operator.purged", "operator-dummy", None, 1)]


def test_when_there_is_no_ledger_then_the_purge_says_so_and_creates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "k.toml"
    config.write_text(demo_config_text(str(tmp_path), 9464), encoding="utf-8")
    assert cli.main(["-c", str(config), "purge", "--dry-run"]) == exitcodes.FAILED
    assert "no ledger at" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_another_purge_holds_the_lock_then_the_command_exits_1_saying_so_and_erases_nothing(
        setup: tuple[Path, TransferLedger, FileBlobStore, int], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's run in progress, or a node stopped in the middle of one: the operator is told, not held."""
    import fcntl

    from kei_gateway.operations.purge import execute

    monkeypatch.setattr(execute, "LOCK_WAIT", 0.0)  # one attempt (the real wait is 5 s)
    config, ledger, store, transfer_id = setup
    reports = config.parent / "state" / "reports"
    reports.mkdir(parents=True)
    held = os.open(reports / execute.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        assert cli.main(["-c", str(config), "purge"]) == exitcodes.FAILED
    finally:
        os.close(held)
    err = capsys.readouterr().err
    assert "the purge could not run: another purge run holds" in err and "runs again later" in err, err
    assert store.exists("out-done") and ledger.get(transfer_id).blob_id == "out-done"
