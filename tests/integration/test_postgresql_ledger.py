"""The real daemon with its ledger on PostgreSQL (SPEC §6: the production/HA choice).

A JNKS payment file goes through the outbox to the simulator and its receipt comes back
to the inbox, with ``[database] url`` naming a database of the session's throwaway
PostgreSQL cluster (see tests/pg.py): migrations at start, transfers, the HMAC audit
chain, all there and nothing in a SQLite file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from kei_gateway.adapters.ledger import create_ledger_engine, current_revision, head_revision
from kei_gateway.adapters.ledger.models import Transfer
from kei_gateway.config import read_config
from kei_gateway.operations.audit import AuditLog, audit_key_from_config
from tests.integration.conftest import poll_until
from tests.integration.harness import make_gateway_files, start_daemon, start_jnks_sim
from tests.integration.test_jnks_flow import drop, dummy_file, transfers

pytestmark = pytest.mark.integration


def test_when_the_ledger_is_on_postgresql_then_a_file_goes_to_the_peer_and_its_receipt_comes_back(
        tmp_path: Path, postgresql_url: str) -> None:
    files = make_gateway_files(tmp_path)
    sim = start_jnks_sim(files, "--reject-lines", "3")
    try:
        files.write_jnks_config(sim.url, extra=f'\n[database]\nurl = "{postgresql_url}"\n')
        config = read_config(str(files.config))
        assert config.database_url == postgresql_url
        daemon = start_daemon(files)
        try:
            daemon.notify.wait_for("READY=1")
            drop(files, "pay-pg-001.dat", dummy_file(8, seed=11))
            inbox = files.base / "spool" / "inbox" / "jnks-receipts"
            receipts = poll_until(lambda: (list(inbox.glob("*.result")) if inbox.exists() else None) or None, 60,
                                  "the receipt in the inbox", lambda: daemon.stderr()[-3000:])
            assert len(receipts) == 1 and len(receipts[0].read_bytes()) == 8 * 100
            delivered = list((sim.root / "upload").glob("*.dat"))
            assert len(delivered) == 1 and delivered[0].name.endswith("_1.dat")
            upload = poll_until(lambda: [t for t in transfers(files) if t["flow"] == "jnks-payments"
                                         and t["state"] == "DONE" and t["receipt_summary"]] or None, 60,
                                "the upload DONE with its receipt summary", lambda: daemon.stderr()[-3000:])
            assert str(upload[0]["receipt_summary"]).startswith("受付 7, エラー 1")
            assert str(upload[0]["updated_at"]).endswith("+00:00")
            status = subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(files.config), "status"],
                                    capture_output=True, text=True, timeout=60, check=False)
            assert status.returncode == 0, status.stderr
        finally:
            assert daemon.stop() == 0, daemon.stderr()[-3000:]
            daemon.notify.close()
    finally:
        sim.stop()

    assert not list((files.base / "state").glob("ledger.sqlite3*")), "the ledger is PostgreSQL, not a SQLite file"
    engine = create_ledger_engine(postgresql_url)
    try:
        assert current_revision(engine) == head_revision(), "the daemon migrated the database at start"
        with engine.connect() as connection:
            flows = dict(connection.execute(select(Transfer.flow, func.count()).group_by(Transfer.flow)).all())
        assert flows == {"jnks-payments": 1, "jnks-receipts": 1}
        audit = AuditLog(engine, audit_key_from_config(config, {}))
        events = {stored.record.event for stored in audit.iter_records()}
        assert {"daemon.starting", "database.migrated", "ingest.queued", "transfer.sent"} <= events
        assert audit.verify().ok
    finally:
        engine.dispose()
    verified = subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(files.config), "audit", "verify"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert verified.returncode == 0 and verified.stdout.startswith("OK, "), verified.stdout + verified.stderr


def test_when_the_database_host_answers_nothing_then_the_health_check_fails_within_the_connect_timeout() -> None:
    """A PostgreSQL address that takes the connection and never answers (a server host hung, a half-dead proxy):
    the check fails — the database's failure, one attempt — within libpq's ``connect_timeout``, rather than waiting
    for the kernel's TCP timeouts, so the watchdog's check ends and the watchdog stays fed (issue 15)."""
    import socket
    import time

    from sqlalchemy.exc import OperationalError

    from kei_gateway.adapters.ledger import Ledger
    from kei_gateway.adapters.ledger.db import POSTGRESQL_NETWORK_BOUNDS, is_database_failure

    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
    engine = create_ledger_engine(f"postgresql+psycopg://kei@127.0.0.1:{silent.getsockname()[1]}/ledger")
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised:
            Ledger(engine).ping()
        took = time.monotonic() - started
    finally:
        engine.dispose()
        silent.close()
    bound = POSTGRESQL_NETWORK_BOUNDS["connect_timeout"]
    # libpq counts whole seconds; the rest is the machine's load: seconds, not the kernel's minutes.
    assert bound - 1.5 <= took < bound + 5.0, f"took {took:.1f}s against connect_timeout {bound}s"
    assert is_database_failure(raised.value)


def test_when_postgresql_is_not_up_yet_at_start_then_the_daemon_waits_for_it_and_becomes_ready(
        tmp_path: Path, postgresql_url: str, pg_cluster: Any) -> None:
    """Hosts and database coming back together after a power cut, the database last: the start waits for it
    (bounded, saying so in STATUS= and the log) instead of exiting — five quick exits would end at the unit's
    StartLimitBurst with the gateway dead once the database is up (issue 15)."""
    files = make_gateway_files(tmp_path)
    files.write_config(extra=f'\n[database]\nurl = "{postgresql_url}"\n')
    pg_cluster.stop_server()
    try:
        daemon = start_daemon(files)
        try:
            daemon.notify.wait_for("STATUS=Waiting for the ledger database")
            assert daemon.process.poll() is None, daemon.stderr()[-3000:]
        finally:
            pg_cluster.start_server()
        try:
            daemon.notify.wait_for("READY=1")
            assert "waiting up to 60s for it" in daemon.stderr()
            assert daemon.get("/healthz")[0] == 200
        finally:
            assert daemon.stop() == 0, daemon.stderr()[-3000:]
            daemon.notify.close()
    finally:
        if not os.path.exists(os.path.join(pg_cluster.socket_dir, ".s.PGSQL.5432")):
            pg_cluster.start_server()
