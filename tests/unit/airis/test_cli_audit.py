"""``kei-gateway airis reconcile`` with a configuration: the code comes from it and the run is audited."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from kei_gateway.adapters.airis_zip import write_airis_zip
from kei_gateway.adapters.ledger import create_ledger_engine, upgrade
from kei_gateway.cli import exitcodes
from kei_gateway.cli.main import main
from kei_gateway.config import read_config
from kei_gateway.layouts import render_records
from kei_gateway.layouts.airis import TAX_REGISTER_2W, airis_csv_bytes, generate_airis_case
from kei_gateway.operations.audit import AuditLog, audit_key_from_config
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.sim.pki import write_demo_credentials

pytestmark = pytest.mark.integration  # a real SQLite ledger and store on disk


def test_when_a_configuration_is_given_then_its_lg_code_names_the_results_and_the_run_is_audited(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_demo_credentials(str(tmp_path / "credentials"))
    config_path = tmp_path / "kei-gateway.toml"
    config_path.write_text(demo_config_text(str(tmp_path), 19996, lg_code="131130"), encoding="utf-8")
    config = read_config(str(config_path))
    engine = create_ledger_engine(config.database_url)
    upgrade(engine)
    case = generate_airis_case(20, {"02": 1, "06": 2}, seed=9)
    zip_data = write_airis_zip(airis_csv_bytes(case.airis), "k")
    (tmp_path / "a.zip").write_bytes(zip_data)
    (tmp_path / "a.zip.key").write_text("k\n", encoding="utf-8")
    (tmp_path / "r.dat").write_bytes(b"".join(render_records(TAX_REGISTER_2W, case.register)))
    (tmp_path / "out").mkdir(mode=0o700)
    assert main(["-c", str(config_path), "airis", "reconcile", "--airis", str(tmp_path / "a.zip"), "--key",
                 str(tmp_path / "a.zip.key"), "--register", str(tmp_path / "r.dat"),
                 "--output", str(tmp_path / "out")]) == exitcodes.OK
    assert all(path.name.startswith("131130_airis-reconcile_") for path in (tmp_path / "out").iterdir())
    try:
        records = [stored.record for stored in AuditLog(engine, audit_key_from_config(config, {})).iter_records()]
    finally:
        engine.dispose()
    (run,) = [record for record in records if record.event == "airis.reconciled"]
    assert run.sha256 == hashlib.sha256(zip_data).hexdigest() and run.flow == "airis-reconcile"
    assert run.actor != "kei-gateway" and "02=1" in (run.reason or "") and "06=2" in (run.reason or "")
    personal = [str(record[key]) for record in case.register for key in ("owner_name", "owner_address", "chassis_no")]
    assert not [value for value in personal if value in repr(records)]


def prepared(tmp_path: Path, ledger: bool = True) -> list[str]:
    """A configuration (with its ledger unless not *ledger*), the three inputs and a 0700 output directory: the
    command's argv."""
    write_demo_credentials(str(tmp_path / "credentials"))
    config_path = tmp_path / "kei-gateway.toml"
    config_path.write_text(demo_config_text(str(tmp_path), 19996, lg_code="131130"), encoding="utf-8")
    if ledger:
        engine = create_ledger_engine(read_config(str(config_path)).database_url)
        upgrade(engine)
        engine.dispose()
    case = generate_airis_case(20, {"02": 1}, seed=9)
    (tmp_path / "a.zip").write_bytes(write_airis_zip(airis_csv_bytes(case.airis), "k"))
    (tmp_path / "a.zip.key").write_text("k\n", encoding="utf-8")
    (tmp_path / "r.dat").write_bytes(b"".join(render_records(TAX_REGISTER_2W, case.register)))
    (tmp_path / "out").mkdir(mode=0o700)
    return ["-c", str(config_path), "airis", "reconcile", "--airis", str(tmp_path / "a.zip"), "--key",
            str(tmp_path / "a.zip.key"), "--register", str(tmp_path / "r.dat"), "--output", str(tmp_path / "out")]


def test_when_the_run_is_recorded_then_its_results_are_staged_and_none_is_published_yet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11: the record came after the files, so a kill -9 between them left results without a record."""
    from kei_gateway.operations import audit

    argv = prepared(tmp_path)
    seen: list[list[str]] = []
    real = audit.record_operator_action

    def record(*args: Any, **fields: Any) -> Any:
        seen.append(sorted(path.name for path in (tmp_path / "out").iterdir()))
        return real(*args, **fields)

    monkeypatch.setattr(audit, "record_operator_action", record)
    assert main(argv) == exitcodes.OK
    (staged,) = seen
    assert len(staged) == 3 and all(name.startswith(".") and name.endswith(".part") for name in staged), staged
    assert len(list((tmp_path / "out").iterdir())) == 3


def test_when_the_runs_record_cannot_be_written_then_nothing_is_published_and_it_exits_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from kei_gateway.operations import audit

    argv = prepared(tmp_path)

    def refuse(*_: Any, **__: Any) -> Any:
        raise audit.AuditError("cannot write the audit record: database is locked")

    monkeypatch.setattr(audit, "record_operator_action", refuse)
    assert main(argv) == exitcodes.FAILED
    assert list((tmp_path / "out").iterdir()) == []
    assert "nothing was written into" in capsys.readouterr().err


def test_when_the_ledger_has_no_audit_table_then_the_results_are_written_and_the_gap_is_said(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = prepared(tmp_path, ledger=False)
    assert main(argv) == exitcodes.OK
    assert len(list((tmp_path / "out").iterdir())) == 3
    assert "warning: done, but not recorded in the audit trail" in capsys.readouterr().err
