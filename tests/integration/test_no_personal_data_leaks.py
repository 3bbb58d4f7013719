"""No personal data leaks (issue 6 part 7): recognisable dummy values go through every flow and never come out.

The gateway runs its full flows against both simulators — JNKS 納付情報 out and 受付結果
back (with records rejected by the peer), MPN 納付書情報 out and 納付結果 back by push
and pull — plus an invalid outbox file (quarantined) and an invalid pushed file (422).
The records come from the project's generator, with the personal fields overwritten by
distinctive dummy markers (ダミーデータ only). Then none of the markers may appear, in
UTF-8 or CP932, nor the part of them that masking keeps hidden (everything but the last
four characters), in:

* the journal (``journalctl -o json``, the daemon logging natively to a real journald),
* the daemon's stderr,
* the ``/metrics`` exposition,
* the audit table of the ledger (when it exists),
* the operators' ``status``/``transfers list``/``transfers show`` output,
* the error body the push listener sent the peer (422);

and they must appear in the tax division's files (inbox, quarantine errors), which
shows that they really went through.
"""

from __future__ import annotations

import datetime
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kei_gateway.layouts import generate_records, get_layout
from kei_gateway.layouts.engine import render_record
from kei_gateway.sim.harness import free_port, jnks_flow_config_text, mpn_flow_config_text
from tests.integration.conftest import Journald, poll_until
from tests.integration.harness import GatewayFiles, make_gateway_files, start_daemon, start_jnks_sim, start_mpn_sim
from tests.integration.test_jnks_flow import drop, transfers
from tests.integration.test_mpn_flow import drop_slips, inbox_dir, wait_until_relayed

# Every flow end to end in one test: about 40 s idle, 100 s at load 5, so the suite's 120 s would cut it short.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(360),
              pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")]

JST = datetime.timezone(datetime.timedelta(hours=9))
FLOW_TIMEOUT = 60.0

NAME_MARKER = "ＤＵＭＭＹＬＥＡＫ氏名"          # 納税義務者氏名 (K): + a full-width serial
PLATE_MARKER = "漏洩試験"                          # 標板番号（運輸支局等名） (K, 4 characters)
CHASSIS_MARKER = "DUMMYLEAK-"                      # 車台番号 (X): + a 6-digit serial
SLIP_MARKER = "902109021090210"                    # 納付書番号 (N 20): + a 5-digit serial
FULL_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")

# What must never leave: each marker whole, and the part masking hides (all but the last 4 characters).
FORBIDDEN = {
    "payer name": NAME_MARKER,
    "plate office": PLATE_MARKER,
    "chassis number": CHASSIS_MARKER,
    "slip number": SLIP_MARKER[:13],
}
SIM_OPTIONS = ("--seed", "5", "--batch-size", "15", "--push-share", "0.4", "--both-share", "0.3",
               "--duplicate-share", "0.1", "--push-first-delay", "0.2", "--push-max-delay", "1")


def today() -> datetime.date:
    return datetime.datetime.now(JST).date()


def patch(layout_name: str, record: bytes, key: str, raw: bytes) -> bytes:
    layout = get_layout(layout_name)
    start = layout.offsets[key]
    assert len(raw) == layout[key].width
    return record[:start] + raw + record[start + len(raw):]


def jnks_payments(count: int, first: int, seed: int) -> list[bytes]:
    layout = get_layout("jnks-payments")
    out = []
    for n, record in enumerate(generate_records(layout, count, seed=seed, today=today(), lg_code="131041"), first):
        record["chassis_no"] = f"{CHASSIS_MARKER}{n:06d}"
        record["plate_office"] = PLATE_MARKER
        out.append(render_record(layout, record))
    return out


def mpn_records(layout_name: str, count: int, first: int, seed: int) -> list[bytes]:
    layout = get_layout(layout_name)
    out = []
    for n, record in enumerate(generate_records(layout, count, seed=seed, today=today()), first):
        record["payer_name"] = NAME_MARKER + f"{n:03d}".translate(FULL_DIGITS)
        record["slip_no"] = int(f"{SLIP_MARKER}{n:05d}") if isinstance(record["slip_no"], int) else f"{SLIP_MARKER}{n:05d}"
        out.append(render_record(layout, record))
    return out


def leaks(label: str, data: bytes) -> list[str]:
    """Each forbidden marker found in *data* (UTF-8 or CP932), as ``"<what> in <label>"``."""
    found = []
    for what, marker in FORBIDDEN.items():
        for encoding in ("utf-8", "cp932"):
            if marker.encode(encoding) in data:
                found.append(f"{what} ({encoding}) in {label}")
    return found


def journal_bytes(journald: Journald, after: Any) -> bytes:
    """Every field of every entry after *after*; journalctl gives non-UTF-8 values as arrays of byte values."""
    parts = []
    for entry in journald.entries(after=after):
        for name, value in entry.items():
            values = value if isinstance(value, list) and value and not isinstance(value[0], int) else [value]
            for item in values:
                if isinstance(item, list):
                    parts.append(bytes(item))
                else:
                    parts.append(str(item).encode("utf-8"))
            parts.append(name.encode())
    return b"\n".join(parts)


def cli(files: GatewayFiles, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(files.config), *argv],
                          capture_output=True, timeout=60)


def push(files: GatewayFiles, port: int, name: str, body: bytes) -> tuple[int, bytes]:
    credentials = files.base / "credentials"
    body_path = files.base / f"push-{name}"
    body_path.write_bytes(body)
    out = files.base / f"push-{name}.response"
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-o", str(out), "-w", "%{http_code}", "--upload-file", str(body_path),
         "--cert", str(credentials / "peer-sim.crt"), "--key", str(credentials / "peer-sim.key"),
         "--cacert", str(credentials / "ca.pem"), f"https://127.0.0.1:{port}/push/mpn-results/{name}"],
        capture_output=True, timeout=60)
    body_path.unlink()
    return int(done.stdout or b"0"), out.read_bytes() if out.exists() else b""


def test_when_marked_dummy_data_goes_through_every_flow_then_no_marker_leaves_the_tax_division_files(
        tmp_path: Path, journald: Journald) -> None:
    files = make_gateway_files(tmp_path)
    push_port = free_port()
    jnks = start_jnks_sim(files, "--reject-lines", "2,3")  # the peer rejects two records: a receipt with errors
    mpn = start_mpn_sim(files, push_port, *SIM_OPTIONS)
    ca = str(files.base / "credentials" / "ca.pem")
    try:
        files.write_config(extra=jnks_flow_config_text(jnks.url, ca) + mpn_flow_config_text(mpn.url, ca, push_port))
        mark = journald.mark()
        daemon = start_daemon(files, log_target="journal")
        try:
            daemon.notify.wait_for("READY=1")
            # JNKS: a valid marked file, and an invalid one (a chassis number with a lower-case letter).
            drop(files, "pay-leak-001.dat", b"".join(jnks_payments(6, 1, seed=21)))
            bad = jnks_payments(4, 101, seed=22)
            bad[2] = patch("jnks-payments", bad[2], "chassis_no", f"{CHASSIS_MARKER}00010x    ".encode("ascii"))
            drop(files, "pay-leak-bad.dat", b"".join(bad))
            # MPN: marked slips out; the simulator answers with results carrying the same names and numbers.
            drop_slips(files, "slips-leak-001.dat", b"".join(mpn_records("mpn-slips", 30, 1, seed=23)))
            # A pushed results file with a broken slip number: 422, and the body goes back to the peer.
            results = mpn_records("mpn-results", 3, 201, seed=24)
            results[1] = patch("mpn-results", results[1], "slip_no", f"{SLIP_MARKER}X0202".encode("ascii"))
            code, error_body = push(files, push_port, "results-leak-bad.dat", b"".join(results))
            assert code == 422, (code, error_body)

            receipts_dir = files.base / "spool" / "inbox" / "jnks-receipts"
            poll_until(lambda: list(receipts_dir.glob("*.result")) if receipts_dir.exists() else None,
                       FLOW_TIMEOUT, "the JNKS receipt", lambda: daemon.stderr()[-3000:])
            wait_until_relayed(files, mpn, daemon, FLOW_TIMEOUT)
            poll_until(lambda: [t for t in transfers(files) if t["flow"] == "jnks-payments" and t["receipt_summary"]]
                       or None, FLOW_TIMEOUT, "the receipt summary")
            status, metrics = daemon.get("/metrics")
            assert status == 200
        finally:
            assert daemon.stop() == 0, daemon.stderr()[-3000:]
            daemon.notify.close()
    finally:
        jnks.stop()
        mpn.stop()

    # The markers went through: they are in the tax division's files, in CP932.
    receipts = b"".join(p.read_bytes() for p in receipts_dir.glob("*.result"))
    relayed = b"".join(p.read_bytes() for p in inbox_dir(files).iterdir() if p.is_file())
    quarantined = b"".join(p.read_bytes() for p in (files.base / "spool" / "quarantine").rglob("*") if p.is_file())
    assert CHASSIS_MARKER.encode("cp932") in receipts
    assert NAME_MARKER.encode("cp932") in relayed and SLIP_MARKER.encode() in relayed
    errors_files = list((files.base / "spool" / "quarantine").rglob("*.errors.txt"))
    assert errors_files, "the invalid outbox file is quarantined with its errors"
    assert any(CHASSIS_MARKER.encode("utf-8") in p.read_bytes() for p in errors_files), \
        "the quarantine errors file (for the tax division) names the full value"
    assert "chassis number (utf-8) in quarantine" in leaks("quarantine", quarantined), \
        "the detector finds the markers where they belong"

    # Nowhere else.
    journald.sync()
    outputs: dict[str, bytes] = {
        "the journal": journal_bytes(journald, mark),
        "the daemon's stderr": daemon.stderr_path.read_bytes(),
        "the metrics exposition": metrics,
        "the 422 body sent to the peer": error_body,
    }
    assert len(outputs["the journal"]) > 1000, "the daemon logged to journald"
    assert b"ingest.quarantined" in outputs["the journal"] and b"receipt.rejections" in outputs["the journal"]
    assert b"push.quarantined" in outputs["the journal"]
    assert b"****" in error_body, "the 422 body names the error with the value masked"
    commands: list[tuple[str, ...]] = [("status",), ("status", "--json"), ("transfers", "list", "--limit", "1000"),
                                       ("transfers", "list", "--json", "--limit", "1000")]
    for row in transfers(files):
        commands += [("transfers", "show", str(row["id"])), ("transfers", "show", str(row["id"]), "--json")]
    if cli(files, "audit", "report", "--help").returncode == 0:  # the audit helper's command, once it exists
        commands.append(("audit", "report", "--since", "1d"))
    for argv in commands:
        done = cli(files, *argv)
        assert done.returncode == 0, done.stderr
        outputs[" ".join(argv)] = done.stdout + done.stderr
    ledger = sqlite3.connect(files.base / "state" / "ledger.sqlite3")
    try:
        tables = [name for (name,) in ledger.execute("select name from sqlite_master where type = 'table'")]
        audit_rows = list(ledger.execute("select * from audit")) if "audit" in tables else None
        transfer_rows = list(ledger.execute("select * from transfers"))
    finally:
        ledger.close()
    if audit_rows is not None:
        assert len(audit_rows) > 10, "the daemon's events reached the audit table"
        outputs["the audit table"] = json.dumps(audit_rows, ensure_ascii=False, default=str).encode("utf-8")
    outputs["the transfers table"] = json.dumps(transfer_rows, ensure_ascii=False, default=str).encode("utf-8")
    found = [leak for label, data in outputs.items() for leak in leaks(label, data)]
    assert found == [], found
