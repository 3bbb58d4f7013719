"""The airis-reconcile flow end to end in the real daemon, logging to a real journald (SPEC §13).

Marked dummy inputs (the project's generator, with recognisable markers in names, addresses,
plates and chassis numbers on both sides) go into the outboxes; the daemon writes the results
into the inbox with exactly the planted rows per category, erases the plaintext inputs, lists
them in the 消去報告, counts the categories in ``/metrics`` and audits the run. A second set of
inputs with the wrong key is rejected with an errors file and nothing in the inbox. Then none
of the markers may appear in the journal, the daemon's stderr, the metrics, the audit table or
the operators' ``status``/``transfers list`` output — and they must be in the results.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kei_gateway.adapters.airis_zip import write_airis_zip
from kei_gateway.layouts import render_records
from kei_gateway.layouts.airis import AIRIS_RECONCILE, TAX_REGISTER_2W, airis_csv_bytes, generate_airis_case
from tests.integration.conftest import Journald, poll_until
from tests.integration.harness import make_gateway_files, start_daemon
from tests.integration.test_no_personal_data_leaks import journal_bytes

pytestmark = pytest.mark.integration

FLOW_CONFIG = """
[flows.airis-reconcile]
airis_outbox = "outbox/airis"
register_outbox = "outbox/airis-register"
inbox = "inbox/airis-reconcile"
"""
KEY = "dummy-airis-key"
PLANT = {"02": 3, "03": 2, "04": 2, "05": 3, "06": 2, "07": 2, "08": 2}
MARKERS = {"name": "ＬＥＡＫ氏名", "address": "漏洩町", "plate": "漏洩試験", "chassis": "LEAKX"}
TIMEOUT = 60.0


def marked_case() -> tuple[bytes, bytes, dict[str, int]]:
    """(AIRIS CSV, register) with every personal value carrying a marker; equal values stay equal."""
    case = generate_airis_case(40, PLANT, seed=17)
    for values in [*case.register, *case.airis]:
        if not values:
            continue
        values["owner_name"] = MARKERS["name"] + str(values["owner_name"])
        values["owner_address"] = MARKERS["address"] + str(values["owner_address"])
        values["plate_office"] = MARKERS["plate"]
        values["chassis_no"] = MARKERS["chassis"] + str(values["chassis_no"])
    return (airis_csv_bytes(case.airis), b"".join(render_records(TAX_REGISTER_2W, case.register)),
            case.expected)


def drop(directory: Path, name: str, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.tmp").write_bytes(data)
    (directory / f"{name}.tmp").rename(directory / name)


def test_when_airis_inputs_arrive_then_the_daemon_writes_the_planted_results_and_no_marker_leaks(
        tmp_path: Path, journald: Journald) -> None:
    files = make_gateway_files(tmp_path)
    files.write_config(extra=FLOW_CONFIG)
    spool = files.base / "spool"
    csv_data, register, expected = marked_case()
    mark = journald.mark()
    daemon = start_daemon(files, log_target="journal")
    try:
        daemon.notify.wait_for("READY=1")
        drop(spool / "outbox" / "airis", "AIRIS-1.zip", write_airis_zip(csv_data, KEY))
        drop(spool / "outbox" / "airis", "AIRIS-1.zip.key", (KEY + "\n").encode())
        drop(spool / "outbox" / "airis-register", "REG-1.dat", register)
        inbox = spool / "inbox" / "airis-reconcile"
        (dat,) = poll_until(lambda: list(inbox.glob("*.dat")) or None, TIMEOUT,
                            "the 突合 results", lambda: daemon.stderr()[-3000:])
        # A second set with the wrong key: rejected, nothing more in the inbox.
        drop(spool / "outbox" / "airis", "AIRIS-2.zip", write_airis_zip(csv_data, KEY))
        drop(spool / "outbox" / "airis", "AIRIS-2.zip.key", b"not-the-key\n")
        drop(spool / "outbox" / "airis-register", "REG-2.dat", register)
        quarantine = spool / "quarantine" / "airis-reconcile"
        (errors,) = poll_until(lambda: list(quarantine.glob("*.errors.txt")) or None,
                               TIMEOUT, "the errors file of the rejected run", lambda: daemon.stderr()[-3000:])
        status, metrics = daemon.get("/metrics")
        assert status == 200
    finally:
        assert daemon.stop() == 0, daemon.stderr()[-3000:]
        daemon.notify.close()

    data = dat.read_bytes()
    size = AIRIS_RECONCILE.record_length
    categories = [data[i:i + 2].decode() for i in range(0, len(data), size)]
    assert {code: categories.count(code) for code in expected} == expected
    assert len(list(inbox.iterdir())) == 3, "one run's .dat, .csv and .txt; nothing of the rejected one"
    assert "the key does not open it" in errors.read_text(encoding="utf-8")
    assert list((spool / "outbox" / "airis").iterdir()) == [] and list((spool / "outbox" / "airis-register").iterdir()) == []
    report = next((files.base / "state" / "reports").glob("erasure-*.csv")).read_text(encoding="utf-8-sig")
    assert "outbox/airis/AIRIS-1.zip" in report and "outbox/airis-register/REG-2.dat" in report
    for code, count in expected.items():
        assert f'kei_gateway_airis_vehicles_total{{category="{code}"}} {float(count)}'.encode() in metrics

    # The markers went through to the tax division's files ...
    results = b"".join(path.read_bytes() for path in inbox.iterdir())
    assert all(marker.encode("cp932") in data or marker.encode("utf-8") in results for marker in MARKERS.values())
    # ... and nowhere else.
    journald.sync()
    outputs = {"the journal": journal_bytes(journald, mark), "the daemon's stderr": daemon.stderr_path.read_bytes(),
               "the metrics": metrics}
    assert b"airis.reconciled" in outputs["the journal"] and b"airis.rejected" in outputs["the journal"]
    for argv in (("status",), ("transfers", "list", "--json", "--limit", "1000")):
        done = subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(files.config), *argv],
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs[" ".join(argv)] = done.stdout + done.stderr
    ledger = sqlite3.connect(files.base / "state" / "ledger.sqlite3")
    try:
        audit = list(ledger.execute("select * from audit"))
    finally:
        ledger.close()
    outputs["the audit table"] = json.dumps(audit, ensure_ascii=False, default=str).encode("utf-8")
    assert b"airis.reconciled" in outputs["the audit table"]
    found = [f"{what} ({encoding}) in {label}" for label, blob in outputs.items() for what, marker in MARKERS.items()
             for encoding in ("utf-8", "cp932") if marker.encode(encoding) in blob]
    assert found == [], found
