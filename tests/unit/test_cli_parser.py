"""The command line's shape: ``-c/--config`` before and after every sub-command, and every ``--help``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from kei_gateway.cli import main as cli, exitcodes
from tests.unit.test_config import write_config


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every sub-command path of *parser*: ``("run",)``, ``("transfers", "list")``, …"""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from command_paths(sub, (*prefix, name))


ALL_COMMANDS = sorted(command_paths(cli.build_parser()))


def test_when_the_parser_is_walked_then_nested_commands_are_found_too() -> None:
    assert ("transfers", "list") in ALL_COMMANDS and ("db", "upgrade") in ALL_COMMANDS
    assert set(cli.COMMANDS) <= {path[0] for path in ALL_COMMANDS}


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
def test_when_any_sub_command_is_asked_for_help_then_it_exits_0_and_offers_config(
        path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*path, "--help"])
    assert done.value.code == exitcodes.OK
    out = capsys.readouterr().out
    assert out.startswith(f"usage: kei-gateway {' '.join(path)}")
    assert "-c FILE, --config FILE" in out, "every sub-command accepts -c after it"


@pytest.mark.parametrize("argv, expected", [
    (["-c", "/before.toml", "transfers", "list"], "/before.toml"),
    (["transfers", "list", "-c", "/after.toml"], "/after.toml"),
    (["transfers", "list", "--config=/after.toml"], "/after.toml"),
    (["transfers", "-c", "/middle.toml", "list"], "/middle.toml"),
    (["-c", "/before.toml", "transfers", "list", "-c", "/after.toml"], "/after.toml"),
    (["status"], None),
])
def test_when_config_is_given_anywhere_then_the_last_one_given_is_used(argv: list[str], expected: str | None) -> None:
    args = cli.build_parser().parse_args(argv)
    assert args.config == expected
    environ = {"KEI_GATEWAY_CONFIG": "/env.toml"}
    assert cli.config_path_from(args, environ) == (expected or "/env.toml")


@pytest.mark.parametrize("argv", [["-c", "{path}", "check-config"], ["check-config", "-c", "{path}"]],
                         ids=["before", "after"])
def test_when_check_config_gets_c_before_or_after_the_command_then_it_reads_that_file(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path)
    assert cli.main([a.format(path=path) for a in argv]) == exitcodes.OK
    assert capsys.readouterr().out.startswith("OK: ")


def test_when_c_after_the_command_names_a_missing_file_then_that_file_is_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.toml"
    assert cli.main(["check-config", "-c", str(missing)]) == exitcodes.USAGE
    assert str(missing) in capsys.readouterr().err
