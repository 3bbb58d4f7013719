"""kill -9 at every step of the MPN results paths: after a restart each payment result is relayed exactly once.

The daemon is armed with ``$KEI_GATEWAY_CRASH_AT`` (:mod:`kei_gateway.runtime.crashpoints`) and
SIGKILLs itself at the second pass of a point: on the push path after the pushed file is
durable but not committed (``push.stored``) and after the commit but before the ``201``
(``push.committed``: the simulator's retry comes back as a repeat, ``204``); in the relay
shared by push and pull after the new records are staged (``results.staged``), after they
are recorded (``results.recorded``) and after the file is in the inbox (``results.published``);
and in a small push relayed in the commit that accepts it (issue 16) after its records are
staged inside the open transaction (``results.accept-staged``: no transfer, the peer gets no
``201`` and pushes again, the staged orphan is removed at start) and after that commit, before
the rename (``results.accept-recorded``: the start publishes the staged file, the peer's retry
is a repeat, ``204``).
The relay points run twice: with the 速報 pushed (many of them also left for pull, the same
file both ways) and with everything pulled. The simulator keeps delivering while the daemon
is down (its pushes are retried, then left in ``results/``). Then the daemon is started
again, unarmed, and every distinct result of the simulator's ground truth must be in the
inbox exactly once, nothing left at the peer or staged, every transfer ``DONE``, and every action
(ingest, send, push accepted, relay) has exactly one audit record and no such record lacks its action.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kei_gateway.runtime.crashpoints import POINTS
from kei_gateway.sim.harness import free_port
from tests.integration.audit_checks import assert_every_action_recorded
from tests.integration.harness import make_gateway_files, run_until_killed, start_daemon, start_mpn_sim
from tests.integration.test_jnks_flow import transfers
from tests.integration.test_mpn_flow import (
    drop_slips, inbox_dir, relayed_files, remote_results, slips_file, truth_of, wait_until_relayed,
)

pytestmark = pytest.mark.integration

SLIPS = 60
CRASH_TIMEOUT = 60.0
FINISH_TIMEOUT = 60.0
COMMON = (
    "--seed", "5", "--batch-size", "15", "--cancel-share", "0.15", "--mismatch-share", "0.1",
    "--missing-share", "0.1", "--duplicate-share", "0.2",
    "--push-attempts", "6", "--push-first-delay", "0.5", "--push-max-delay", "2",
)
DELIVERY = {
    "push": ("--push-share", "0.4", "--both-share", "0.6", "--repeat-push-share", "0.5"),  # every 速報 pushed
    "pull": (),
}
RUNS = [("push.stored", "push"), ("push.committed", "push"), ("download.committed", "pull"),
        ("download.relayed", "pull"),
        *((point, mode) for point in ("results.staged", "results.recorded", "results.published")
          for mode in ("push", "pull")),
        ("results.accept-staged", "push"), ("results.accept-recorded", "push")]
IN_A_PUSH = {"push.stored", "push.committed", "results.accept-staged", "results.accept-recorded"}
"""The points a push passes through before its answer. A pushed file reaches the lanes' points (results.staged …)
only when the lane was busy at its commit (issue 16: else it is relayed in that commit), so in push mode those
runs may crash on a pulled file after the pushes are answered."""


def test_every_mpn_crash_point_is_covered() -> None:
    """When a crash point is added on the MPN paths, then this loop must kill the daemon there too."""
    mpn_points = {p for p in POINTS if p.startswith(("push.", "results.", "download."))}
    assert mpn_points == {point for point, _ in RUNS}


@pytest.mark.parametrize(("point", "mode"), RUNS)
def test_when_killed_at_a_step_then_after_restart_each_result_is_relayed_exactly_once(
        tmp_path: Path, point: str, mode: str) -> None:
    files = make_gateway_files(tmp_path)
    push_port = free_port()
    sim = start_mpn_sim(files, push_port, *COMMON, *DELIVERY[mode])
    try:
        files.write_mpn_config(sim.url, push_port)
        run_until_killed(files, point, lambda: drop_slips(files, "slips-crash.dat", slips_file(SLIPS, seed=23)),
                         CRASH_TIMEOUT, crash_at=f"{point}@2")

        daemon = start_daemon(files)
        try:
            daemon.notify.wait_for("READY=1")
            report = wait_until_relayed(files, sim, daemon, FINISH_TIMEOUT)

            truth = truth_of(report, "results")
            relayed = relayed_files(files)
            everywhere = Counter(i for ids in relayed.values() for i in ids)
            assert set(everywhere) == truth, f"exactly the simulator's distinct results after a crash at {point}"
            assert [i for i, n in everywhere.items() if n > 1] == [], f"a result relayed twice after {point}"
            for name, ids in relayed.items():
                assert len(ids) == len(set(ids)), f"{name} holds a result twice"
            assert [p.name for p in inbox_dir(files).iterdir() if p.name.startswith(".")] == [], \
                "nothing left staged in the inbox"
            assert remote_results(sim) == [], "every pulled file deleted at the peer"
            assert list((files.base / "spool" / "outbox" / "mpn-slips").iterdir()) == []
            assert len(list((sim.root / "slips").iterdir())) == 1, "the slips file at the peer once"
            rows = transfers(files)
            assert Counter(str(r["state"]) for r in rows if r["flow"] == "mpn-results") == \
                Counter({"DONE": len([r for r in rows if r["flow"] == "mpn-results"])}), \
                f"every received results file relayed: {[(r['local_name'], r['state']) for r in rows]}"
            deliveries = Counter(p["delivery"] for p in report["produced"])
            if mode == "push":
                assert deliveries["push"] + deliveries["both"] + deliveries["push-failed"] > 0
                failed = [p for p in report["pushes"] if p["statuses"][0] not in ("201", "204")]
                if point in IN_A_PUSH:
                    assert failed, f"some push met the crash or the daemon being down: {report['pushes']}"
            else:
                assert set(deliveries) == {"pull"}
        finally:
            assert daemon.stop() == 0
            daemon.notify.close()
        ledger = assert_every_action_recorded(files, f"{point} ({mode})")
        if mode == "push":
            assert any(pushed for *_, pushed in ledger.transfers.values()), "some results file came by push"
    finally:
        sim.stop()
