"""kill -9 at every step of the JNKS flow: after a restart each file reaches the peer exactly once.

The daemon is armed with ``$KEI_GATEWAY_CRASH_AT`` (:mod:`kei_gateway.runtime.crashpoints`) and
SIGKILLs itself at that point: during ingest, after the blob is stored but before the
commit, after the commit but before the original is removed, mid-PUT, after the PUT but
before the MOVE, after the MOVE but before the commit, and around the receipt relay.
Then it is started again, unarmed, and must finish the work with nothing lost,
nothing sent twice, nothing left in the outbox and no plaintext in its state.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from kei_gateway.runtime.crashpoints import POINTS
from tests.integration.audit_checks import assert_every_action_recorded
from tests.integration.conftest import poll_until
from tests.integration.harness import make_gateway_files, run_until_killed, start_daemon, start_jnks_sim
from tests.integration.test_jnks_flow import drop, dummy_file, transfers

pytestmark = pytest.mark.integration

LARGE = 16_000  # 1.1 MB: more than one read chunk (1 MiB), for a crash in the middle of reading
SMALL = 1_500  # 105 KB: more than one store segment (64 KiB), for a crash in the middle of a PUT
FILES = 3
RUNS = 2


JNKS_POINTS = [p for p in POINTS if p.startswith(("ingest.", "send.", "relay.")) and ".quarantine-" not in p]
"""The points on the JNKS paths of a valid file (the MPN ones are killed in test_mpn_crash_safety.py)."""
QUARANTINE_POINTS = [p for p in POINTS if p.startswith("ingest.quarantine-")]
"""The points of a refused file's quarantine."""


def assert_no_plaintext(roots: list[Path], payloads: Iterable[bytes]) -> None:
    """No file under *roots* holds the first record of any of *payloads* in clear."""
    for path in (p for root in roots for p in root.rglob("*")):
        if path.is_file():
            content = path.read_bytes()
            for data in payloads:
                assert data[:70] not in content, f"plaintext record in {path}"


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("point", JNKS_POINTS)
def test_when_killed_at_a_step_then_after_restart_each_file_reaches_the_peer_exactly_once(
        tmp_path: Path, point: str, run: int) -> None:
    files = make_gateway_files(tmp_path)
    sim = start_jnks_sim(files)
    try:
        files.write_jnks_config(sim.url)
        records = LARGE if point == "ingest.reading" else SMALL
        sent = {f"pay-{run}-{n}.dat": dummy_file(records, seed=100 * run + n) for n in range(FILES)}

        run_until_killed(files, point, lambda: [drop(files, name, data) for name, data in sent.items()])

        daemon = start_daemon(files)
        try:
            daemon.notify.wait_for("READY=1")
            upload = sim.root / "upload"
            inbox = files.base / "spool" / "inbox" / "jnks-receipts"

            def finished() -> bool | None:
                delivered = list(upload.glob("*.dat")) if upload.exists() else []
                receipts = list(inbox.glob("*.result")) if inbox.exists() else []
                leftovers = list((sim.root / "results").glob("*")) if (sim.root / "results").exists() else []
                return (len(delivered) >= FILES and len(receipts) >= FILES and not leftovers) or None

            poll_until(finished, 120, f"every file delivered and answered after a crash at {point}",
                       lambda: daemon.stderr()[-3000:])
            delivered = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in upload.glob("*.dat"))
            assert delivered == sorted(hashlib.sha256(d).hexdigest() for d in sent.values()), \
                "each file exactly once at the peer"
            receipts = sorted(p.name for p in inbox.glob("*.result"))
            assert len(receipts) == FILES and sorted(p.name + ".result" for p in upload.glob("*.dat")) == receipts
            assert list((files.base / "spool" / "outbox" / "jnks").iterdir()) == []
            assert_no_plaintext([files.base / "state"], sent.values())
            listing = subprocess.run(
                [__import__("sys").executable, "-m", "kei_gateway", "-c", str(files.config), "status"],
                capture_output=True, text=True, timeout=60, check=True).stdout
            assert "Queue: empty" in listing
        finally:
            assert daemon.stop() == 0
            daemon.notify.close()
        ledger = assert_every_action_recorded(files, point)
        assert sum(1 for direction, *_ in ledger.transfers.values() if direction == "out") == FILES
    finally:
        sim.stop()


@pytest.mark.parametrize("point", QUARANTINE_POINTS)
def test_when_killed_while_quarantining_then_after_restart_each_refused_file_is_one_encrypted_transfer(
        tmp_path: Path, point: str) -> None:
    """An invalid file and a file refused for its name: one QUARANTINED transfer each, one errors file each,
    nothing left in the outbox and no plaintext anywhere under quarantine/ or the state (issue 11)."""
    files = make_gateway_files(tmp_path)
    sim = start_jnks_sim(files)
    try:
        files.write_jnks_config(sim.url)
        refused = {"bad.dat": dummy_file(SMALL, seed=7, invalid_rate=1.0), "納付.dat": b"A\r\n" * 3}
        run_until_killed(files, point, lambda: [drop(files, name, data) for name, data in refused.items()])

        daemon = start_daemon(files)
        try:
            daemon.notify.wait_for("READY=1")
            outbox = files.base / "spool" / "outbox" / "jnks"
            poll_until(lambda: (not list(outbox.iterdir())) or None, 120, "the outbox emptied after the restart",
                       lambda: daemon.stderr()[-3000:])
            rows = [row for row in transfers(files) if row["state"] == "QUARANTINED"]
            assert len(rows) == len(refused), f"one transfer per refused file after a crash at {point}: {rows}"
            quarantine = files.base / "spool" / "quarantine" / "jnks-payments"
            listed = sorted(p.name for p in quarantine.iterdir())
            assert len(listed) == len(refused) and all(n.endswith(".errors.txt") for n in listed), listed
            assert_no_plaintext([quarantine, files.base / "state"], refused.values())
        finally:
            assert daemon.stop() == 0
            daemon.notify.close()
        assert_every_action_recorded(files, point)
    finally:
        sim.stop()
