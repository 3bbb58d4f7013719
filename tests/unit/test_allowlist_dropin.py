"""``systemd-allowlist``: the kernel-level allow-list drop-in generated from the configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kei_gateway.cli import main as cli, exitcodes
from kei_gateway.cli.allowlist import allowlist_dropin
from kei_gateway.config import read_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "etc" / "kei-gateway.toml.example"


def test_when_peers_are_configured_then_every_cidr_is_allowed_once() -> None:
    text = allowlist_dropin(read_config(str(EXAMPLE)))
    allowed = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("IPAddressAllow=")]
    assert allowed == ["localhost", "127.0.0.1/32", "::1/128", "10.20.30.0/24", "10.20.40.0/24"]
    assert "[Service]" in text.splitlines()
    assert "# peers.mpn.allow" in text and "# peers.mpn.push_allow" not in text, "a CIDR listed twice appears once"


def test_when_the_database_is_on_another_host_then_its_address_is_allowed_too() -> None:
    from kei_gateway.cli.allowlist import database_address

    assert database_address("sqlite:////var/lib/kei-gateway/ledger.sqlite3") is None
    assert database_address("postgresql+psycopg://kei@/kei?host=/run/postgresql") is None  # unix socket
    assert database_address("postgresql+psycopg://kei@localhost/kei") is None  # loopback is allowed anyway
    assert database_address("postgresql+psycopg://kei@10.9.8.7:5432/kei") == "10.9.8.7"
    assert database_address("postgresql+psycopg://kei@[fd00::5]/kei") == "fd00::5"
    import dataclasses

    config = read_config(str(EXAMPLE))

    def with_database(url: str) -> str:
        return allowlist_dropin(dataclasses.replace(config, database=dataclasses.replace(config.database, url=url)))

    remote = with_database("postgresql+psycopg://kei@10.9.8.7/kei")
    assert "# database.url\nIPAddressAllow=10.9.8.7/32" in remote
    named = with_database("postgresql+psycopg://kei@db.example.lg.jp/kei")
    assert "# database.url names the host 'db.example.lg.jp'" in named
    assert "IPAddressAllow=db.example" not in named


def test_when_output_is_given_then_the_file_is_written_and_readable_by_systemd(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "kei-gateway.service.d" / "50-allowlist.conf"
    assert cli.main(["-c", str(EXAMPLE), "systemd-allowlist", "--output", str(target)]) == exitcodes.OK
    assert target.read_text(encoding="utf-8") == allowlist_dropin(read_config(str(EXAMPLE)))
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert "daemon-reload" in capsys.readouterr().out


@pytest.mark.integration
def test_when_the_dropin_is_added_to_the_unit_then_systemd_analyze_verify_accepts_it(tmp_path: Path) -> None:
    unit = (ROOT / "systemd" / "kei-gateway.service").read_text(encoding="utf-8")
    venv_binary = Path(__import__("sys").executable).parent / "kei-gateway"
    unit = unit.replace("/opt/kei-gateway/venv/bin/kei-gateway", str(venv_binary))
    combined = tmp_path / "kei-gateway.service"
    combined.write_text(unit + "\n" + allowlist_dropin(read_config(str(EXAMPLE))), encoding="utf-8")
    result = subprocess.run(["systemd-analyze", "verify", str(combined)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_when_an_instance_is_named_then_its_config_is_read_and_its_unit_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """When --instance 131041 is given, then /etc/kei-gateway/131041/kei-gateway.toml is the config (even with
    $KEI_GATEWAY_CONFIG set; -c still wins) and the restart hint names kei-gateway@131041."""
    monkeypatch.setenv("KEI_GATEWAY_CONFIG", str(EXAMPLE))
    assert cli.main(["systemd-allowlist", "--instance", "999999"]) == exitcodes.USAGE
    assert "/etc/kei-gateway/999999/kei-gateway.toml" in capsys.readouterr().err
    target = tmp_path / "kei-gateway@131041.service.d" / "50-allowlist.conf"
    argv = ["systemd-allowlist", "--instance", "131041", "--output", str(target), "-c", str(EXAMPLE)]
    assert cli.main(argv) == exitcodes.OK
    assert "systemctl restart kei-gateway@131041" in capsys.readouterr().out
    assert target.read_text(encoding="utf-8") == allowlist_dropin(read_config(str(EXAMPLE)))


@pytest.mark.parametrize("name", ["../131041", "."])
def test_when_the_instance_name_is_a_path_then_it_is_refused(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["systemd-allowlist", "--instance", name]) == exitcodes.USAGE
    assert "give the instance name" in capsys.readouterr().err
