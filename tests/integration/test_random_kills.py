"""kill -9 at random times while files flow (issue 11): nothing lost or doubled, every action has its audit record.

The named crash points (``test_crash_safety.py``, ``test_mpn_crash_safety.py``) stop the daemon exactly between
two steps; this loop kills it wherever it happens to be — reading, encrypting, committing, uploading, relaying a
receipt, taking a push, relaying payment results, quarantining — the way the issue's measurement did (about 62 kills in 240 s lost the audit records of 4
of 21 quarantines and of a quarter of the ingests, sends and pushes). Valid files, invalid files and files
refused for their names are dropped between the kills, and slips files whose results the MPN simulator pushes
(retrying what a kill cut) and offers for pull. At the end one unarmed daemon finishes the work; every valid file
is at its peer exactly once (payments with their receipts), every payment result is in the inbox exactly once,
every refused file is one quarantined transfer, each
transfer has exactly the records of its actions (``audit_checks``) and ``audit verify`` exits 0.

The kill times come from a seeded generator (``$KEI_CHAOS_SEED``, printed on failure); ``$KEI_CHAOS_SECONDS``
makes the loop longer (default 40 s).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collections import Counter

from kei_gateway.sim.harness import free_port, jnks_flow_config_text, mpn_flow_config_text
from tests.integration.audit_checks import assert_every_action_recorded
from tests.integration.conftest import poll_until
from tests.integration.harness import (
    DaemonProcess, make_gateway_files, start_daemon, start_jnks_sim, start_mpn_sim,
)
from tests.integration.test_jnks_flow import drop, dummy_file
from tests.integration.test_mpn_flow import drop_slips, relayed_files, slips_file, truth_of, wait_until_relayed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SECONDS = float(os.environ.get("KEI_CHAOS_SECONDS", "40"))
MPN_OPTIONS = ("--batch-size", "15", "--push-share", "0.4", "--both-share", "0.4", "--repeat-push-share", "0.3",
               "--duplicate-share", "0.1", "--push-attempts", "6", "--push-first-delay", "0.3",
               "--push-max-delay", "2")
"""The MPN simulator pushes most 速報 (some also offered for pull) and retries a push the daemon's death cut."""
SEED = int(os.environ.get("KEI_CHAOS_SEED", "11"))


def test_when_the_daemon_is_killed_at_random_times_while_files_flow_then_nothing_is_lost_doubled_or_unrecorded(
        tmp_path: Path) -> None:
    rng = random.Random(SEED)
    files = make_gateway_files(tmp_path)
    sim = start_jnks_sim(files)
    push_port = free_port()
    mpn = start_mpn_sim(files, push_port, "--seed", str(SEED), *MPN_OPTIONS)
    slips: dict[str, bytes] = {}
    valid: dict[str, bytes] = {}
    refused: dict[str, bytes] = {}
    kills = 0
    daemon: DaemonProcess | None = None
    try:
        ca = str(files.base / "credentials" / "ca.pem")
        files.write_config(extra=jnks_flow_config_text(sim.url, ca) + mpn_flow_config_text(mpn.url, ca, push_port))
        deadline = time.monotonic() + SECONDS
        number = 0
        while time.monotonic() < deadline:
            daemon = start_daemon(files, watchdog_usec=None)
            try:
                daemon.notify.wait_for("READY=1", timeout=60)
                for _ in range(rng.randint(1, 3)):
                    number += 1
                    kind = rng.random()
                    if kind < 0.7:  # valid: a few hundred records to a couple of MB (more than one read chunk)
                        name, data = f"pay-{number:03d}.dat", dummy_file(rng.choice((200, 1_500, 20_000)),
                                                                         seed=1000 + number)
                        valid[name] = data
                    elif kind < 0.9:  # invalid: quarantined, kept encrypted
                        name, data = f"bad-{number:03d}.dat", dummy_file(300, seed=2000 + number, invalid_rate=1.0)
                        refused[name] = data
                    else:  # refused for its name (SPEC §4): quarantined the same way
                        name, data = f"納付-{number:03d}.dat", b"A\r\n" * 3
                        refused[name] = data
                    drop(files, name, data)
                if rng.random() < 0.4:  # slips out to MPN: its results come back pushed and pulled
                    name = f"slips-{number:03d}.dat"
                    slips[name] = slips_file(30, seed=3000 + number)
                    drop_slips(files, name, slips[name])
                time.sleep(rng.uniform(0.0, 1.5))  # the kill's random moment: the point of this test
            finally:
                daemon.process.kill()
                daemon.process.wait(timeout=60)
                daemon.notify.close()
                (files.base / "notify.sock").unlink(missing_ok=True)
                kills += 1
        where = (f"{kills} random kills (seed {SEED}, {len(valid)} valid and {len(refused)} refused payments files, "
                 f"{len(slips)} slips files)")
        print(where)

        daemon = start_daemon(files)
        daemon.notify.wait_for("READY=1", timeout=60)
        upload = sim.root / "upload"
        inbox = files.base / "spool" / "inbox" / "jnks-receipts"
        outbox = files.base / "spool" / "outbox" / "jnks"

        def finished() -> bool | None:
            delivered = list(upload.glob("*.dat")) if upload.exists() else []
            receipts = list(inbox.glob("*.result")) if inbox.exists() else []
            return (not list(outbox.iterdir()) and len(delivered) >= len(valid)
                    and len(receipts) >= len(valid)) or None

        poll_until(finished, 240, f"every file decided, delivered and answered after {where}",
                   lambda: daemon.stderr()[-3000:])  # type: ignore[union-attr]
        delivered = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in upload.glob("*.dat"))
        assert delivered == sorted(hashlib.sha256(d).hexdigest() for d in valid.values()), \
            f"each valid file exactly once at the peer after {where}"
        report = wait_until_relayed(files, mpn, daemon, 240, slips=len(slips))
        at_mpn = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in (mpn.root / "slips").iterdir()
                        if p.is_file() and not p.name.startswith("."))
        assert at_mpn == sorted(hashlib.sha256(d).hexdigest() for d in slips.values()), \
            f"each slips file exactly once at MPN after {where}"
        everywhere = Counter(i for ids in relayed_files(files).values() for i in ids)
        assert set(everywhere) == truth_of(report, "results"), f"exactly MPN's distinct results after {where}"
        assert [i for i, n in everywhere.items() if n > 1] == [], f"a result relayed twice after {where}"
        assert daemon.stop() == 0, daemon.stderr()[-3000:]
        ledger = assert_every_action_recorded(files, where)
        outbound = [state for direction, _, state, _ in ledger.transfers.values() if direction == "out"]
        assert sorted(outbound) == sorted(["DONE"] * (len(valid) + len(slips)) + ["QUARANTINED"] * len(refused)), \
            (where, outbound)
        verified = subprocess.run([sys.executable, "-m", "kei_gateway", "-c", str(files.config), "audit", "verify"],
                                  capture_output=True, text=True, timeout=120)
        assert verified.returncode == 0, f"after {where}: {verified.stdout}{verified.stderr}"
        assert kills >= 3, f"the loop is meant to kill several times: {where}"
    finally:
        if daemon is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=60)
        sim.stop()
        mpn.stop()
