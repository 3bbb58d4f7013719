"""``kei-gateway db upgrade``: operators migrate the ledger ahead of a start (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kei_gateway.adapters.ledger import head_revision
from kei_gateway.cli import main as cli, exitcodes
from kei_gateway.sim.harness import demo_config_text


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_db_upgrade_runs_twice_then_it_migrates_once_and_then_says_it_is_current(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "k.toml"
    config.write_text(demo_config_text(str(tmp_path), 9464), encoding="utf-8")
    assert cli.main(["-c", str(config), "db", "upgrade"]) == exitcodes.OK
    assert f"migrated from empty to {head_revision()}" in capsys.readouterr().out
    assert (tmp_path / "state" / "ledger.sqlite3").exists()
    assert cli.main(["-c", str(config), "db", "upgrade"]) == exitcodes.OK
    assert f"already at the newest revision {head_revision()}" in capsys.readouterr().out


def test_when_the_database_cannot_be_opened_then_db_upgrade_exits_1_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "blocker").write_text("a file where a directory should be")
    config = tmp_path / "k.toml"
    config.write_text(demo_config_text(str(tmp_path), 9464) + f'\n[database]\nurl = "sqlite:///{tmp_path}/blocker/x.sqlite3"\n',
                      encoding="utf-8")
    assert cli.main(["-c", str(config), "db", "upgrade"]) == exitcodes.FAILED
    assert "database.url" in capsys.readouterr().err


def test_when_the_config_is_invalid_then_any_command_exits_2_with_the_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "k.toml"
    config.write_text('[gateway]\nlg_code = "12"\n', encoding="utf-8")
    for command in (["db", "upgrade"], ["systemd-allowlist"], ["check-config"]):
        assert cli.main(["-c", str(config), *command]) == exitcodes.USAGE
        assert "gateway.lg_code" in capsys.readouterr().err


def test_when_database_url_is_postgresql_then_db_upgrade_migrates_it_and_status_reads_it(
        tmp_path: Path, postgresql_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine
    from kei_gateway.core.transfer import TransferState

    config = tmp_path / "k.toml"
    config.write_text(demo_config_text(str(tmp_path), 9464) + f'\n[database]\nurl = "{postgresql_url}"\n',
                      encoding="utf-8")
    assert cli.main(["-c", str(config), "db", "upgrade"]) == exitcodes.OK
    assert f"migrated from empty to {head_revision()}" in capsys.readouterr().out
    assert not (tmp_path / "state" / "ledger.sqlite3").exists(), "the PostgreSQL database, not a SQLite file"
    assert cli.main(["-c", str(config), "db", "upgrade"]) == exitcodes.OK
    assert f"already at the newest revision {head_revision()}" in capsys.readouterr().out

    assert cli.main(["-c", str(config), "status"]) == exitcodes.OK
    assert "Queue: empty" in capsys.readouterr().out
    engine = create_ledger_engine(postgresql_url)
    now = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)
    held = TransferLedger(engine).add_transfer(
        flow="jnks-payments", direction="out", peer="jnks", local_name="a.dat", state=TransferState.HELD, size=70,
        sha256="ab" * 32, record_count=3, blob_id="blob-a", now=now)
    engine.dispose()
    assert cli.main(["-c", str(config), "status", "--json"]) == exitcodes.OK
    status = json.loads(capsys.readouterr().out)
    assert status["queue"] == [{"flow": "jnks-payments", "state": "HELD", "count": 1}]
    assert [(r["id"], r["updated_at"]) for r in status["attention"]] == [(held.id, "2026-11-21T09:00:00+00:00")]


def test_when_the_postgresql_database_does_not_exist_then_db_upgrade_exits_1_naming_the_key(
        tmp_path: Path, postgresql_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    missing = postgresql_url.replace("@/", "@/no_such_", 1)
    config = tmp_path / "k.toml"
    config.write_text(demo_config_text(str(tmp_path), 9464) + f'\n[database]\nurl = "{missing}"\n', encoding="utf-8")
    assert cli.main(["-c", str(config), "db", "upgrade"]) == exitcodes.FAILED
    err = capsys.readouterr().err
    assert "database.url" in err and "does not exist" in err
