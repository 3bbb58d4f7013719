"""``kei-gateway validate`` and ``generate`` (exit codes 0, 2, 3; no config file needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kei_gateway.cli import exitcodes
from kei_gateway.cli.main import main
from kei_gateway.layouts import LAYOUTS

TODAY = "2025-06-30"
ROOT = Path(__file__).resolve().parents[3]


def generate(tmp_path: Path, layout: str, records: int = 20, *extra: str) -> Path:
    target = tmp_path / f"{layout}.dat"
    assert main(["generate", "--layout", layout, "--records", str(records), "--today", TODAY,
                 "--output", str(target), *extra]) == exitcodes.OK
    return target


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_when_a_generated_file_is_validated_then_it_exits_0_and_prints_the_record_count(
        layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = generate(tmp_path, layout, 25)
    assert main(["validate", str(path), "--layout", layout, "--today", TODAY]) == exitcodes.OK
    assert f"25 records valid ({layout})" in capsys.readouterr().out


def test_when_a_file_is_invalid_then_it_exits_3_and_prints_every_error_with_its_place(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = generate(tmp_path, "mpn-slips", 400, "--invalid-rate", "0.05", "--seed", "3")
    code = main(["validate", str(path), "--layout", "mpn-slips", "--today", TODAY])
    captured = capsys.readouterr()
    assert code == exitcodes.INVALID
    lines = captured.out.splitlines()
    assert lines and all(line.startswith(f"{path}: record ") for line in lines)
    assert f"INVALID: {path}: {len(lines)} errors in 400 records" in captured.err
    assert "send it again" in captured.err


def test_when_json_is_asked_then_the_report_is_json_with_masked_values(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = generate(tmp_path, "jnks-payments", 300, "--invalid-rate", "0.1", "--seed", "1")
    code = main(["validate", str(path), "--layout", "jnks-payments", "--today", TODAY, "--json", "--max-errors", "3"])
    report = json.loads(capsys.readouterr().out)
    assert code == exitcodes.INVALID
    # Rewritten for issue 11 item 5: validation stops after the record that reaches --max-errors.
    assert report["valid"] is False and 3 <= report["records"] < 300
    assert report["stopped_after_record"] == report["records"] == report["errors"][-1]["record"]
    assert len(report["errors"]) == 3 and report["error_count"] >= 3
    assert set(report["errors"][0]) == {"record", "offset", "field", "key", "reason", "value"}
    for error in report["errors"]:
        if error["key"] == "chassis_no" and error["value"]:
            assert error["value"].startswith("****")


def test_when_lg_code_is_given_then_records_of_another_municipality_fail(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = generate(tmp_path, "jnks-payments", 5, "--lg-code", "131041")
    assert main(["validate", str(path), "--layout", "jnks-payments", "--today", TODAY,
                 "--lg-code", "131041"]) == exitcodes.OK
    assert main(["validate", str(path), "--layout", "jnks-payments", "--today", TODAY,
                 "--lg-code", "131202"]) == exitcodes.INVALID
    assert "is not this gateway's code 131202" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["validate", "FILE", "--layout", "nope"],
    ["validate", "FILE"],
    ["validate", "FILE", "--layout", "jnks-payments", "--lg-code", "131040"],
    ["validate", "FILE", "--layout", "jnks-payments", "--encoding", "euc-jp"],
    ["generate", "--layout", "mpn-slips", "--records", "-1"],
    ["generate", "--layout", "mpn-slips", "--records", "3", "--invalid-rate", "2"],
])
def test_when_the_command_line_is_wrong_then_it_exits_2_and_says_what_to_do(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == exitcodes.USAGE
    assert "--help" in capsys.readouterr().err


def test_when_the_file_does_not_exist_then_it_exits_2_and_names_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.dat"
    assert main(["validate", str(missing), "--layout", "mpn-slips"]) == exitcodes.USAGE
    assert f"cannot read {missing}" in capsys.readouterr().err


def test_when_utf8_dummy_data_is_generated_then_it_validates_with_encoding_utf8(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = generate(tmp_path, "mpn-slips", 10, "--encoding", "utf-8")
    path.read_bytes().decode("utf-8")
    assert main(["validate", str(path), "--layout", "mpn-slips", "--today", TODAY]) == exitcodes.INVALID
    assert main(["validate", str(path), "--layout", "mpn-slips", "--today", TODAY,
                 "--encoding", "utf-8"]) == exitcodes.OK


def test_when_the_same_seed_and_day_are_used_then_the_generated_files_are_identical(tmp_path: Path) -> None:
    first = generate(tmp_path, "mpn-results", 50, "--seed", "9").read_bytes()
    second = generate(tmp_path, "mpn-results", 50, "--seed", "9").read_bytes()
    third = generate(tmp_path, "mpn-results", 50, "--seed", "10").read_bytes()
    assert first == second != third


@pytest.mark.integration  # runs the installed command
def test_when_the_installed_command_runs_then_validate_works_without_a_config_file(tmp_path: Path) -> None:
    path = generate(tmp_path, "jnks-payments", 10)
    env = {"PATH": "/usr/bin:/bin", "KEI_GATEWAY_CONFIG": str(tmp_path / "no-such-config.toml")}
    command = ROOT / ".venv" / "bin" / "kei-gateway"
    if not command.exists():
        command = Path(sys.executable).parent / "kei-gateway"
    done = subprocess.run([str(command), "validate", str(path), "--layout", "jnks-payments", "--today", TODAY],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == exitcodes.OK, done.stderr
    assert "10 records valid" in done.stdout
    broken = path.read_bytes()[:-1]
    path.write_bytes(broken)
    done = subprocess.run([str(command), "validate", str(path), "--layout", "jnks-payments", "--today", TODAY],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == exitcodes.INVALID
    assert "record 10" in done.stdout and "CR but no LF" in done.stdout
