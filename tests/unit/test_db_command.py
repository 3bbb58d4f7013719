"""``kei-gateway db upgrade``: operators migrate the ledger ahead of a start."""

from __future__ import annotations

from pathlib import Path

import pytest

from kei_gateway import cli, exitcodes
from kei_gateway.ledger import head_revision
from kei_gateway.testing import demo_config_text


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
