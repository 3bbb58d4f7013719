"""The audit trail end to end: the real daemon records a JNKS run, an operator's approval and a denial;
``audit verify`` says OK and ``audit report`` shows them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kei_gateway.adapters.ledger import create_ledger_engine
from kei_gateway.config import read_config
from kei_gateway.operations.audit import AuditLog, audit_key_from_config
from tests.integration.conftest import poll_until
from tests.integration.harness import make_gateway_files, start_daemon, start_jnks_sim
from tests.integration.test_jnks_flow import drop, dummy_file, transfers

pytestmark = pytest.mark.integration


def cli(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SUDO_USER": "ope-dummy"}
    return subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(config), *argv], capture_output=True,
                          text=True, timeout=120, env=env)


def test_when_the_daemon_runs_a_jnks_flow_then_the_audit_chain_records_it_and_verifies(tmp_path: Path) -> None:
    files = make_gateway_files(tmp_path)
    sim = start_jnks_sim(files)
    try:
        files.write_jnks_config(sim.url, **{'outbox = "outbox/jnks"': 'outbox = "outbox/jnks"\nhold_over_records = 100'})
        daemon = start_daemon(files)
        try:
            daemon.notify.wait_for("READY=1")
            drop(files, "pay-small.dat", dummy_file(50, seed=1))
            drop(files, "pay-bulk.dat", dummy_file(200, seed=2))
            drop(files, "pay-bad.dat", dummy_file(20, seed=3, invalid_rate=0.5))
            held = poll_until(lambda: [t for t in transfers(files) if t["state"] == "HELD"] or None, 30, "HELD",
                              lambda: daemon.stderr()[-2000:])
            approved = cli(files.config, "transfers", "approve", str(held[0]["id"]))
            assert approved.returncode == 0, approved.stderr
            assert "not recorded" not in approved.stderr
            poll_until(lambda: len([t for t in transfers(files)
                                    if t["flow"] == "jnks-payments" and t["state"] == "DONE"]) == 2 or None, 60,
                       "both files DONE", lambda: daemon.stderr()[-2000:])
            # a connection from outside the metrics listener's allow-list (127.0.0.1/32)
            with socket.create_connection(("127.0.0.1", files.metrics_port), timeout=10,
                                          source_address=("127.0.0.2", 0)) as denied:
                denied.settimeout(10)
                assert denied.recv(1) == b""
            poll_until(lambda: "listener.denied" in daemon.stderr() or None, 30, "the denial logged")
        finally:
            assert daemon.stop() == 0, daemon.stderr()[-3000:]
    finally:
        sim.stop()

    verified = cli(files.config, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("OK, ") and verified.stdout.strip().endswith(" records")

    config = read_config(str(files.config))
    audit_log = AuditLog(create_ledger_engine(config.database_url), audit_key_from_config(config, {}))
    records = [s.record for s in audit_log.iter_records()]
    assert int(verified.stdout.split()[1]) == len(records)
    events = [r.event for r in records]
    for expected in ("daemon.starting", "database.migrated", "listener.bound", "daemon.ready", "ingest.queued",
                     "ingest.quarantined", "transfer.sent", "operator.transfer_approved", "listener.denied",
                     "audit.chain_verified", "daemon.stopping"):
        assert expected in events, (expected, events)
    assert events.count("transfer.sent") == 2, "; ".join(f"{r.event} {r.transfer_id}" for r in records)
    approval = next(r for r in records if r.event == "operator.transfer_approved")
    assert approval.actor == "ope-dummy" and approval.transfer_id == held[0]["id"] and approval.count == 200
    assert {r.actor for r in records if r.event != "operator.transfer_approved"} == {"kei-gateway"}
    assert any(r.reason == "state HELD" for r in records if r.event == "ingest.queued")
    assert "pay-" not in repr(records)  # no file name from the tax system

    report = cli(files.config, "audit", "report", "--since", "1d")
    assert report.returncode == 0, report.stderr
    assert "改ざん検査 (chain verify): OK" in report.stdout
    assert "接続拒否 (denied connections): 1" in report.stdout and "127.0.0.2" in report.stdout
    assert "隔離 (quarantined files): 1" in report.stdout
    assert "承認 (approved)" in report.stdout and "ope-dummy" in report.stdout


def test_when_killed_before_a_denial_is_chained_then_the_next_start_chains_it_once(tmp_path: Path) -> None:
    """Issue 11: a denied connection has no ledger transaction; its record waits in audit-pending.jsonl, which a
    kill -9 cannot undo, and the next start chains it. The ledger's write lock is held by the test meanwhile,
    so the observer cannot chain it before the kill (the kill always finds it pending)."""
    import sqlite3

    files = make_gateway_files(tmp_path)
    pending = files.base / "state" / "audit-pending.jsonl"
    daemon = start_daemon(files)
    try:
        daemon.notify.wait_for("READY=1")
        blocker = sqlite3.connect(files.base / "state" / "ledger.sqlite3", timeout=30, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the observer's next batch waits behind this lock
            with socket.create_connection(("127.0.0.1", files.metrics_port), timeout=10,
                                          source_address=("127.0.0.2", 0)) as denied:
                denied.settimeout(10)
                assert denied.recv(1) == b""
            poll_until(lambda: b'"listener.denied"' in pending.read_bytes() or None, 30, "the denial in the pending file",
                       lambda: daemon.stderr()[-2000:])
            daemon.process.kill()
            assert daemon.process.wait(timeout=30) == -9
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    finally:
        daemon.notify.close()

    again = start_daemon(files)
    try:
        again.notify.wait_for("READY=1")
        assert "audit record(s) the last run had not chained yet are chained now" in again.stderr()
    finally:
        assert again.stop() == 0, again.stderr()[-3000:]
    config = read_config(str(files.config))
    engine = create_ledger_engine(config.database_url)
    try:
        records = [s.record for s in AuditLog(engine, audit_key_from_config(config)).iter_records()]
    finally:
        engine.dispose()
    denials = [r for r in records if r.event == "listener.denied"]
    assert [(r.listener, r.source) for r in denials] == [("metrics", "127.0.0.2")]
    verified = cli(files.config, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
