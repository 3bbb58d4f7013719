"""Hostile command lines and configurations (issue 11): exit 2 with one clear line, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kei_gateway.cli import exitcodes, main as cli
from kei_gateway.config import ConfigError, config_from_string
from tests.unit.test_config import problems_of, write_config


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def test_when_the_config_is_a_device_then_check_config_says_it_is_not_a_regular_file_and_exits_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-c", "/dev/zero", "check-config"]) == exitcodes.USAGE
    lines = error_lines(capsys)
    assert lines[0].startswith("/dev/zero:") and "not a regular file" in lines[1]


def test_when_the_config_is_larger_than_1_mib_then_it_is_refused_unread_past_the_limit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "huge.toml"
    with open(path, "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB of zero bytes
    assert cli.main(["-c", str(path), "check-config"]) == exitcodes.USAGE
    assert any("larger than 1024 KiB" in line for line in error_lines(capsys))


def test_when_the_toml_nests_100000_deep_then_it_is_a_config_problem_not_a_recursion_error() -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_string("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "nested too deeply" in raised.value.render()


@pytest.mark.parametrize("command", [["check-config"], ["run"]])
@pytest.mark.parametrize(("text", "said"), [
    ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
    ('[gateway]\nlg_code = "131041"\n[peers.jnks]\nurl = "https://127.0.0.1/"\nca = "ca.pem"\n'
     'retry = { attempts = 3, first_delay = "1s", max_delay = "99999999999d" }\n', "peers.jnks.retry.max_delay"),
])
def test_when_the_config_nests_too_deep_or_a_duration_overflows_then_the_command_exits_2_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], text: str, said: str) -> None:
    """The RecursionError and the retry schedule's OverflowError of the issue, through the command line."""
    path = tmp_path / "hostile.toml"
    path.write_text(text, encoding="utf-8")
    assert cli.main(["-c", str(path), *command]) == exitcodes.USAGE
    lines = error_lines(capsys)
    assert [line for line in lines if said in line], lines


def test_when_a_duration_is_beyond_ten_years_then_its_key_is_named_with_the_bound() -> None:
    problems = problems_of('[gateway]\nlg_code = "131041"\n[retention]\ninbox = "99999999999d"\n')
    assert "at most" in problems["retention.inbox"] and "3660d" in problems["retention.inbox"]


@pytest.mark.parametrize("argv", [["transfers", "show", "99999999999999999999999"],
                                  ["transfers", "export", "-1", "--output", "/tmp/x"],
                                  ["transfers", "list", "--limit", "99999999999999999999"]])
def test_when_a_number_is_out_of_range_then_the_usage_error_says_the_range(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["-c", "/nonexistent.toml", *argv])
    assert raised.value.code == exitcodes.USAGE
    assert any("out of range" in line and "from 1 to" in line for line in error_lines(capsys))


def test_when_the_store_key_has_5_bytes_then_check_config_refuses_it_as_run_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path)
    key = tmp_path / "credentials" / "store.key"
    key.write_bytes(b"short")
    os.chmod(key, 0o600)
    assert cli.main(["-c", str(path), "check-config"]) == exitcodes.USAGE
    lines = error_lines(capsys)
    assert len(lines) == 1 and "store.key" in lines[0] and "5 bytes" in lines[0]


def test_when_the_allowlist_output_directory_is_missing_then_nothing_is_created_and_it_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path)
    target = tmp_path / "nonexistent" / "dir" / "x"
    assert cli.main(["-c", str(path), "systemd-allowlist", "--output", str(target)]) == exitcodes.USAGE
    lines = error_lines(capsys)
    assert len(lines) == 1 and "does not exist" in lines[0]
    assert not (tmp_path / "nonexistent").exists()
