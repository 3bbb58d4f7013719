"""The MPN flows end to end: the real daemon and the MPN simulator as processes on loopback.

A dummy slips file (納付書情報, SPEC §2.3) renamed into ``outbox/mpn-slips`` is uploaded to
the simulator's ``slips/``; the simulator turns it into 速報 files pushed to the daemon's
push listener, left in ``results/`` for the poller, or both; then 確報 and 速報取消
files, with duplicated 速報 and repeated pushes. The gateway must relay every distinct
result (SPEC §2.4 identity) exactly once into ``inbox/mpn-results``, delete what it
pulled, and its ledger must reconcile to the simulator's ground truth.
"""

from __future__ import annotations

import csv
import datetime
import io
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kei_gateway.core.results.reconcile import MEASURES
from kei_gateway.layouts import ValidationOptions, generate_file, get_layout, parse_records
from kei_gateway.sim.harness import free_port
from tests.integration.conftest import poll_until
from tests.integration.harness import (
    DaemonProcess, GatewayFiles, MpnSimProcess, make_gateway_files, start_daemon, start_mpn_sim,
)
from tests.integration.test_jnks_flow import transfers

pytestmark = pytest.mark.integration

JST = datetime.timezone(datetime.timedelta(hours=9))
Identity = tuple[str, str, str, str, str, str, str]
FLOW_TIMEOUT = 90.0  # bounded wait; about 15 s idle, more on a loaded 2-core machine
UNCONFIRMED_AFTER = 60.0  # the configuration's minimum: 速報 older than this with no 確報 are overdue
SIM_OPTIONS = (
    "--seed", "7", "--batch-size", "40", "--push-share", "0.35", "--both-share", "0.35",
    "--cancel-share", "0.1", "--mismatch-share", "0.1", "--missing-share", "0.1", "--duplicate-share", "0.1",
    "--repeat-push-share", "0.5", "--push-first-delay", "0.5", "--push-max-delay", "2",
)


def slips_file(records: int, seed: int = 11) -> bytes:
    today = datetime.datetime.now(JST).date()
    return b"".join(generate_file(get_layout("mpn-slips"), records, seed=seed, today=today))


def drop_slips(files: GatewayFiles, name: str, data: bytes) -> None:
    """Write as the tax system does: a temporary name, then a rename (SPEC §4, ready = "rename")."""
    outbox = files.base / "spool" / "outbox" / "mpn-slips"
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / (name + ".tmp")).write_bytes(data)
    os.rename(outbox / (name + ".tmp"), outbox / name)


def inbox_dir(files: GatewayFiles) -> Path:
    return files.base / "spool" / "inbox" / "mpn-results"


def identities_in(data: bytes) -> list[Identity]:
    """The SPEC §2.4 identity of each record of a results file, parsed with the layout engine."""
    layout = get_layout("mpn-results")
    options = ValidationOptions(today=datetime.datetime.now(JST).date())
    found: list[Identity] = []
    for r in parse_records([data], layout, options):
        received = r["received_at"]
        assert isinstance(received, datetime.datetime)
        found.append((str(r["tax_item"]), str(r["slip_no"]), str(r["confirm_no"]), str(r["pay_class"]),
                      str(r["channel"]), received.strftime("%Y%m%d%H%M%S"), str(r["result_kind"])))
    return found


def relayed_files(files: GatewayFiles) -> dict[str, list[Identity]]:
    """Every relayed file in the inbox (not the staged dotfiles) and the identities it holds."""
    inbox = inbox_dir(files)
    if not inbox.exists():
        return {}
    return {p.name: identities_in(p.read_bytes()) for p in sorted(inbox.iterdir())
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".end")}


def truth_of(report: dict[str, Any], key: str) -> set[Identity]:
    return {tuple(i) for i in report["truth"][key]}  # type: ignore[misc]


def remote_results(sim: MpnSimProcess) -> list[str]:
    results = sim.root / "results"
    return sorted(p.name for p in results.iterdir()) if results.exists() else []


def sample(metrics: str, name: str, labels: str = "") -> float:
    """The value of one sample of the exposition (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in metrics.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def wait_until_relayed(files: GatewayFiles, sim: MpnSimProcess, daemon: DaemonProcess, timeout: float,
                       slips: int = 1) -> dict[str, Any]:
    """Bounded wait: the simulator has delivered everything, and every result of its truth is in the inbox."""
    state: dict[str, Any] = {}

    def finished() -> dict[str, Any] | None:
        report = sim.report()
        state["report"] = report
        if report is None or report["pending"] or len(report["slips"]) < slips:
            return None
        relayed = {i for ids in relayed_files(files).values() for i in ids}
        state["missing"] = len(truth_of(report, "results") - relayed)
        state["remote"] = remote_results(sim)
        if state["missing"] or state["remote"]:
            return None
        return report

    def describe() -> str:
        report = state.get("report")
        produced = [(p["name"], p["delivery"]) for p in report["produced"]] if report else None
        return (f"missing results: {state.get('missing')}, left at the peer: {state.get('remote')}, "
                f"produced: {produced}, pushes: {report and report['push_statuses']}\n"
                f"daemon:\n{daemon.stderr()[-4000:]}\nsimulator:\n{sim.log_path.read_text(errors='replace')[-3000:]}")

    return poll_until(finished, timeout, "every result relayed and nothing left at the peer", describe)


def reconcile_totals(files: GatewayFiles, days: Iterable[datetime.date]) -> Counter[str]:
    """``kei-gateway results reconcile --date D --csv`` for each day, the 合計 rows summed by column."""
    totals: Counter[str] = Counter()
    for day in sorted(set(days)):
        out = files.base / f"reconcile-{day.isoformat()}.csv"
        done = subprocess.run(
            [sys.executable, "-m", "kei_gateway", "-c", str(files.config), "results", "reconcile",
             "--date", day.isoformat(), "--csv", str(out)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        rows = list(csv.reader(io.StringIO(out.read_bytes().decode("utf-8-sig"))))
        heading = rows[1]
        total = next(r for r in rows if r and r[0] == "" and r[1].startswith("合計"))
        measures = {h: m for m, h in MEASURES}
        for column, value in zip(heading[2:], total[2:]):
            totals[measures[column]] += int(value)
    return totals


@pytest.fixture
def flow(tmp_path: Path) -> Iterator[tuple[GatewayFiles, MpnSimProcess, DaemonProcess]]:
    files = make_gateway_files(tmp_path)
    push_port = free_port()
    sim = start_mpn_sim(files, push_port, *SIM_OPTIONS)
    try:
        files.write_mpn_config(sim.url, push_port, unconfirmed_after=f"{UNCONFIRMED_AFTER:g}s")
        daemon = start_daemon(files)
        try:
            daemon.notify.wait_for("READY=1")
            yield files, sim, daemon
        finally:
            assert daemon.stop() == 0, daemon.stderr()[-3000:]
            daemon.notify.close()
    finally:
        sim.stop()


def test_when_slips_are_dropped_then_every_payment_result_reaches_the_inbox_exactly_once(
        flow: tuple[GatewayFiles, MpnSimProcess, DaemonProcess]) -> None:
    files, sim, daemon = flow
    drop_slips(files, "slips-001.dat", slips_file(300))
    report = wait_until_relayed(files, sim, daemon, FLOW_TIMEOUT)

    deliveries = Counter(p["delivery"] for p in report["produced"])
    assert deliveries["push"] and deliveries["both"] and deliveries["pull"], \
        f"the seed should exercise every delivery: {deliveries}"
    assert report["truth"]["duplicates"] > 0 and report["push_statuses"].get("204"), \
        "the seed should repeat 速報 and pushes"
    assert report["slips"][0]["rejected"] == 0 and report["slips"][0]["records"] == 300

    relayed = relayed_files(files)
    truth = truth_of(report, "results")
    everywhere = Counter(i for ids in relayed.values() for i in ids)
    assert set(everywhere) == truth, "exactly the simulator's distinct results, nothing else"
    assert [i for i, n in everywhere.items() if n > 1] == [], "no result relayed twice"
    for name, ids in relayed.items():
        assert len(ids) == len(set(ids)), f"{name} holds a result twice"
    assert [p.name for p in inbox_dir(files).iterdir() if p.name.endswith(".part")] == []
    assert remote_results(sim) == [], "pulled files are deleted at the peer"
    assert list((files.base / "spool" / "outbox" / "mpn-slips").iterdir()) == []
    quarantine = files.base / "spool" / "quarantine"
    assert not quarantine.exists() or [p for p in quarantine.rglob("*") if p.is_file()] == []
    uploaded = list((sim.root / "slips").iterdir())
    assert len(uploaded) == 1 and not uploaded[0].name.endswith(".part")

    def all_done() -> list[dict[str, object]] | None:
        rows = transfers(files)
        return rows if rows and all(r["state"] == "DONE" for r in rows) else None

    rows = poll_until(all_done, 10, "every transfer DONE", lambda: str(transfers(files)))
    assert Counter(str(r["flow"]) for r in rows)["mpn-slips"] == 1

    code, body = daemon.get("/metrics")
    metrics = body.decode()
    assert code == 200
    duplicates = sum(sample(metrics, "kei_gateway_payment_results_total", f'kind="{kind}",outcome="duplicate"')
                     for kind in ("provisional", "final", "cancellation"))
    relayed_count = sum(sample(metrics, "kei_gateway_payment_results_total", f'kind="{kind}",outcome="relayed"')
                        for kind in ("provisional", "final", "cancellation"))
    assert duplicates > 0, "duplicated 速報 and files delivered both ways are counted as duplicates"
    assert relayed_count == len(truth)
    assert sample(metrics, "kei_gateway_relay_latency_seconds_count") > 0
    assert sample(metrics, "kei_gateway_transfers_total", 'flow="mpn-slips",outcome="done"') == 1

    # The ledger reconciles to the simulator's truth (one day at a time; 収納日時 may cross midnight).
    provisional = {i for i in truth if i[6] == "1"}

    def received(identity: Identity) -> datetime.datetime:
        return datetime.datetime.strptime(identity[5], "%Y%m%d%H%M%S").replace(tzinfo=JST)

    # The command judges "overdue" by its own clock, some time after ``before`` (each day's run
    # starts a process): every result overdue at ``before`` is overdue for it, and none that is
    # not yet overdue at ``after`` can be (±1 s for 収納日時's whole seconds).
    unconfirmed = truth_of(report, "unconfirmed")
    before = datetime.datetime.now(JST)
    totals = reconcile_totals(files, (received(i).date() for i in truth))
    after = datetime.datetime.now(JST)
    surely_overdue = {i for i in unconfirmed if (before - received(i)).total_seconds() > UNCONFIRMED_AFTER + 1}
    maybe_overdue = {i for i in unconfirmed if (after - received(i)).total_seconds() > UNCONFIRMED_AFTER - 1}
    mismatched = truth_of(report, "mismatched")
    assert totals["provisional"] == len(provisional)
    assert totals["final"] == len(truth_of(report, "confirmed"))
    assert totals["cancel"] == len(truth_of(report, "cancelled"))
    assert totals["confirmed"] == len(truth_of(report, "confirmed") - mismatched)
    assert totals["mismatched"] == len(mismatched) > 0
    assert totals["cancelled"] == len(truth_of(report, "cancelled")) > 0
    assert len(surely_overdue) <= totals["unconfirmed"] <= len(maybe_overdue)
    assert totals["unconfirmed"] + totals["pending"] == len(unconfirmed) > 0
    assert totals["conflicting"] == totals["final_without_provisional"] == totals["cancel_without_provisional"] == 0
