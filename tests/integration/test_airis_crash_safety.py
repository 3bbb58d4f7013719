"""kill -9 at every step of the airis-reconcile flow: after a restart, one run's results exactly once (SPEC §13).

The daemon is armed with ``$KEI_GATEWAY_CRASH_AT`` (:mod:`kei_gateway.runtime.crashpoints`) at each
``airis.*`` point and SIGKILLs itself there; then it is started again, unarmed, and must finish the
run: exactly one ``.dat``/``.csv``/``.txt`` in the inbox (nothing staged left), the planted rows per
category, the plaintext inputs erased from the outboxes and each listed once in the 消去報告, one
audit record for the run, and no plaintext of the inputs anywhere on disk.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kei_gateway.adapters.airis_zip import write_airis_zip
from kei_gateway.layouts import render_records
from kei_gateway.layouts.airis import AIRIS_RECONCILE, TAX_REGISTER_2W, airis_csv_bytes, generate_airis_case
from kei_gateway.runtime.crashpoints import CRASH_ENV, POINTS
from tests.integration.conftest import poll_until
from tests.integration.harness import GatewayFiles, make_gateway_files, start_daemon
from tests.integration.test_airis_flow import FLOW_CONFIG

pytestmark = pytest.mark.integration

KEY = "dummy-airis-crash-key"
PLANT = {"02": 2, "03": 2, "04": 1, "05": 2, "06": 2, "07": 1, "08": 2}
TIMEOUT = 120.0
INPUTS = ("outbox/airis/AIRIS-1.zip", "outbox/airis/AIRIS-1.zip.key", "outbox/airis-register/REG-1.dat")

AIRIS_POINTS = [point for point in POINTS if point.startswith("airis.")]


def test_every_airis_crash_point_is_covered() -> None:
    """When a crash point is added on the AIRIS flow, then the loop below kills the daemon there too."""
    assert AIRIS_POINTS == ["airis.inputs-recorded", "airis.recorded", "airis.staged", "airis.publishing",
                            "airis.published", "airis.erased", "airis.listed"]


def put_inputs(files: GatewayFiles, key: str) -> tuple[bytes, bytes, dict[str, int]]:
    case = generate_airis_case(60, PLANT, seed=31, variants={"degenerate": 2, "address": 2})
    csv_data = airis_csv_bytes(case.airis)
    register = b"".join(render_records(TAX_REGISTER_2W, case.register))
    bodies = {INPUTS[0]: write_airis_zip(csv_data, KEY), INPUTS[1]: (key + "\n").encode(), INPUTS[2]: register}
    for relative, body in bodies.items():
        path = files.base / "spool" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(body)
        temporary.rename(path)
    return csv_data, register, case.expected


def crash_then_restart(files: GatewayFiles, point: str, key: str) -> tuple[bytes, bytes, dict[str, int], str]:
    """Inputs in, the daemon killed at *point*, started again; returns the inputs and the restarted daemon's stderr
    once the outboxes are empty and the run is recorded as finished."""
    files.write_config(extra=FLOW_CONFIG)
    crashing = start_daemon(files, extra_env={CRASH_ENV: point})
    try:
        crashing.notify.wait_for("READY=1")
        csv_data, register, expected = put_inputs(files, key)
        code = crashing.process.wait(timeout=TIMEOUT)
    finally:
        crashing.notify.close()
    assert code == -9, f"the daemon should have been killed at {point}; stderr:\n{crashing.stderr()[-3000:]}"

    daemon = start_daemon(files)
    try:
        daemon.notify.wait_for("READY=1")
        poll_until(lambda: (not unfinished_inputs(files) and not outbox_files(files)) or None, TIMEOUT,
                   f"the run finished after a crash at {point}", lambda: daemon.stderr()[-3000:])
    finally:
        assert daemon.stop() == 0, daemon.stderr()[-3000:]
        daemon.notify.close()
    return csv_data, register, expected, daemon.stderr()


def outbox_files(files: GatewayFiles) -> list[Path]:
    return [path for name in ("airis", "airis-register") if (files.base / "spool" / "outbox" / name).exists()
            for path in (files.base / "spool" / "outbox" / name).iterdir()]


def ledger_rows(files: GatewayFiles, query: str) -> list[tuple[object, ...]]:
    path = files.base / "state" / "ledger.sqlite3"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return list(db.execute(query))


def unfinished_inputs(files: GatewayFiles) -> list[tuple[object, ...]]:
    """The flow's inputs not yet erased, listed and marked (and before any is recorded: a placeholder)."""
    inputs = ledger_rows(files, "SELECT id, source_removed FROM transfers WHERE flow = 'airis-reconcile' "
                                "AND remote_name IS NOT NULL")
    return [row for row in inputs if not row[1]] if len(inputs) >= 3 else [("not yet recorded",)]


def audit_events(files: GatewayFiles, event: str) -> int:
    return len(ledger_rows(files, f"SELECT sequence FROM audit WHERE event = '{event}'"))


def erasure_listings(files: GatewayFiles) -> dict[str, int]:
    reports = list((files.base / "state" / "reports").glob("erasure-*.csv"))
    text = "".join(path.read_text(encoding="utf-8-sig") for path in reports)
    return {name: text.count(name + ",") for name in INPUTS}


def assert_no_plaintext(files: GatewayFiles, csv_data: bytes, register: bytes, point: str) -> None:
    """Neither a row of the AIRIS CSV nor a register record is in any file the gateway keeps."""
    row = csv_data.split(b"\r\n")[1]
    record = register[:TAX_REGISTER_2W.record_length]
    for path in files.base.rglob("*"):
        if path.is_file() and not path.is_relative_to(files.base / "credentials"):
            content = path.read_bytes()
            assert row not in content and record not in content, f"plaintext input in {path} after {point}"


@pytest.mark.parametrize("point", AIRIS_POINTS)
def test_when_killed_at_a_step_of_a_run_then_after_restart_its_results_are_in_the_inbox_exactly_once(
        tmp_path: Path, point: str) -> None:
    files = make_gateway_files(tmp_path)
    csv_data, register, expected, _ = crash_then_restart(files, point, KEY)

    inbox = files.base / "spool" / "inbox" / "airis-reconcile"
    names = sorted(path.name for path in inbox.iterdir())
    assert len(names) == 3 and {name.rsplit(".", 1)[1] for name in names} == {"dat", "csv", "txt"}, names
    assert len({name.rsplit(".", 1)[0] for name in names}) == 1, f"one run's results after {point}: {names}"
    data = next(inbox.glob("*.dat")).read_bytes()
    size = AIRIS_RECONCILE.record_length
    categories = [data[i:i + 2].decode() for i in range(0, len(data), size)]
    assert {code: categories.count(code) for code in expected} == expected
    assert audit_events(files, "airis.reconciled") == 1, f"one audit record for the run after {point}"
    assert audit_events(files, "airis.rejected") == 0
    assert erasure_listings(files) == {name: 1 for name in INPUTS}, f"each input listed once after {point}"
    assert_no_plaintext(files, csv_data, register, point)
    first_result = data[:size]
    kept = [path for path in files.base.rglob("*") if path.is_file() and path.parent != inbox
            and first_result in path.read_bytes()]
    assert kept == [], f"a result in plaintext outside the inbox (the store keeps it encrypted): {kept}"


def test_when_killed_after_an_invalid_run_is_recorded_then_after_restart_it_is_rejected_once(tmp_path: Path) -> None:
    """A wrong key: one errors file, one airis.rejected record, the inputs erased and listed, nothing in the inbox."""
    files = make_gateway_files(tmp_path)
    csv_data, register, _, _ = crash_then_restart(files, "airis.recorded", "not-the-key")

    inbox = files.base / "spool" / "inbox" / "airis-reconcile"
    assert not inbox.exists() or list(inbox.iterdir()) == []
    (errors,) = (files.base / "spool" / "quarantine" / "airis-reconcile").iterdir()
    assert "the key does not open it" in errors.read_text(encoding="utf-8")
    assert audit_events(files, "airis.rejected") == 1 and audit_events(files, "airis.reconciled") == 0
    assert erasure_listings(files) == {name: 1 for name in INPUTS}
    assert_no_plaintext(files, csv_data, register, "airis.recorded")
