"""The daily purge in the real daemon: a missed purge runs at start and erases a relayed JNKS receipt and the blobs."""

from __future__ import annotations

import csv
import datetime
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import poll_until
from tests.integration.harness import GatewayFiles, SimProcess, make_gateway_files, start_daemon, start_jnks_sim
from tests.integration.test_jnks_flow import drop, dummy_file

pytestmark = pytest.mark.integration
JST = datetime.timezone(datetime.timedelta(hours=9))


def transfers(files: GatewayFiles) -> list[dict[str, object]]:
    result = subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(files.config), "transfers", "list",
                             "--json"], capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(result.stdout))


def at_least_two(rows: list[dict[str, object]]) -> list[dict[str, object]] | None:
    return rows if len(rows) >= 2 else None


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[GatewayFiles, SimProcess]]:
    files = make_gateway_files(tmp_path)
    sim = start_jnks_sim(files)
    try:
        yield files, sim
    finally:
        sim.stop()


def test_when_the_daemon_was_down_at_purge_time_then_it_purges_the_relayed_receipt_and_blobs_at_start(
        setup: tuple[GatewayFiles, SimProcess]) -> None:
    files, sim = setup
    files.write_jnks_config(sim.url)
    inbox = files.base / "spool" / "inbox" / "jnks-receipts"
    reports = files.base / "state" / "reports"
    daemon = start_daemon(files)
    try:
        daemon.notify.wait_for("READY=1")
        drop(files, "pay-001.dat", dummy_file(20))
        receipt = poll_until(lambda: (list(inbox.glob("*.result")) if inbox.exists() else None) or None, 60,
                             "the receipt in the inbox", lambda: daemon.stderr()[-3000:])[0]
        poll_until(lambda: at_least_two([t for t in transfers(files) if t["state"] == "DONE" and t["blob_id"]]), 60,
                   "upload and receipt DONE")
        # The purge at start (no earlier run) found nothing past the default retention.
        first = poll_until(lambda: sorted(reports.glob("erasure-*.txt")) or None, 30, "the first report")
        assert "消去対象なし" in first[0].read_text("utf-8")
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()
    assert receipt.exists()

    # The daemon "was down" for three days: its last completed run is that old. Retention is now short.
    three_days_ago = (datetime.datetime.now(JST) - datetime.timedelta(days=3)).isoformat(timespec="seconds")
    for text_report in reports.glob("erasure-*.txt"):
        text_report.write_text(re.sub(r"(完了時刻 \(completed at\): )\S+", r"\g<1>" + three_days_ago,
                                      text_report.read_text("utf-8")), "utf-8")
    files.write_jnks_config(sim.url, extra='\n[retention]\npayloads = "0s"\ninbox = "0s"\n')
    daemon = start_daemon(files)
    try:
        daemon.notify.wait_for("READY=1")
        poll_until(lambda: not receipt.exists() or None, 60, "the receipt erased", lambda: daemon.stderr()[-3000:])
        rows = poll_until(lambda: at_least_two([t for t in transfers(files) if not t["blob_id"]]), 30, "blobs forgotten")
        assert {t["flow"] for t in rows} == {"jnks-payments", "jnks-receipts"}
        assert [p.name for p in (files.base / "state" / "store").iterdir() if not p.name.startswith(".")] == []
        assert [p.name for p in inbox.iterdir()] == []
        poll_until(lambda: "purge.done" in daemon.stderr() or None, 30, "purge.done logged")
        assert "purge.missed" in daemon.stderr()
        status, body = daemon.get("/metrics")
        text = body.decode()
        assert 'kei_gateway_purged_files_total{area="inbox"} 1.0' in text
        assert 'kei_gateway_purged_files_total{area="store"} 2.0' in text
        assert re.search(r"^kei_gateway_last_purge_timestamp_seconds \d", text, re.MULTILINE)
    finally:
        assert daemon.stop() == 0
    (csv_report,) = reports.glob("erasure-*.csv")
    rows_csv = list(csv.reader(io.StringIO(csv_report.read_bytes().decode("utf-8-sig"), newline="")))
    names = [r[1] for r in rows_csv[1:]]
    assert f"inbox/jnks-receipts/{receipt.name}" in names and "pay-001.dat" in names and receipt.name in names
    assert all(len(r[2]) == 64 for r in rows_csv[1:])
