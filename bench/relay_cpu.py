"""Benchmark (issue 16): the relay's own cost per pushed results file, CPU time and wall time, against a baseline tree.

The relay as the daemon runs it, without the network or the reactor: one process per tree
(``PYTHONPATH`` = the tree), a SQLite ledger file (WAL, ``synchronous=FULL``) migrated with the
audit chain wired in, the encrypted file store, both in a temporary directory on the bench's
disk (``bench/out``). For each of ``--files`` files of ``--results`` distinct dummy 速報 (the
layout generator), one at a time: the blob written, the transfer committed ``VALIDATED`` with
its ``push.accepted`` record (what the push listener does), then ``ResultRelay.relay`` (a
synchronous blocking door: the relay's whole work in this thread). Timed: the relay only —
process CPU time (``time.process_time``: steadier than wall time on a shared machine) and wall
time per file, after a warm-up of 20 files.

``--baseline DIR`` runs the same measurement on the tree in DIR (e.g. an export of main before
the change: ``git archive <commit> | tar -x -C DIR``) in the same invocation, alternating
baseline and this tree ``--runs`` times, and prints each run and the ratios.

``--accept`` (issue 16, fourth sitting) times the push's commit with its relay instead of the relay alone: in a
tree that relays a small push in the commit that accepts it (``ResultRelay.relay_on_accept``), that one
transaction; in a tree before it, the ``VALIDATED`` commit then the relay.

Run: ``.venv/bin/python bench/relay_cpu.py [--files 200] [--results 50] [--runs 3] [--baseline DIR] [--accept]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 20

_CHILD = r"""
import datetime as dt, json, os, sys, tempfile, time
from prometheus_client import CollectorRegistry
from twisted.internet import task
from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine, upgrade
from kei_gateway.adapters.ledger.results import ResultLedger
from kei_gateway.adapters.store.blobs import FileBlobStore
from kei_gateway.adapters.store.keys import StoreKeyring
from kei_gateway.core.results import ResultKeyer
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.inbound.mpn_results import ResultRelay
from kei_gateway.layouts import get_layout
from kei_gateway.layouts.engine import render_record
from kei_gateway.layouts.generator import generate_records
from kei_gateway.operations.audit.log import AuditLog
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.testing import SynchronousBlocking

files, results, out, accept = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
layout = get_layout("mpn-results")
today = dt.date.today()
templates = []
for record in generate_records(layout, 1000, seed=5, today=today):
    record["result_kind"] = "1"
    templates.append(render_record(layout, record))
slip_at, slip_width = layout.offsets["slip_no"], layout["slip_no"].width
with tempfile.TemporaryDirectory(dir=out) as tmp:
    engine = create_ledger_engine(f"sqlite:///{tmp}/ledger.db")
    upgrade(engine)
    audit = AuditLog(engine, bytes(range(32)))
    ledger = TransferLedger(engine)
    ledger.audit_writer = audit.append_in
    keyring = StoreKeyring(b"\x05" * 32)
    store = FileBlobStore(f"{tmp}/store", keyring)
    clock = task.Clock()
    clock.advance(time.time())
    relay = ResultRelay(inbox_dir=f"{tmp}/inbox", marker=False, lg_code="131041", ledger=ledger,
                        results=ResultLedger(engine, audit_writer=audit.append_in),
                        keyer=ResultKeyer.from_keyring(keyring), store=store, blocking=SynchronousBlocking(),
                        clock=clock, metrics=GatewayMetrics(CollectorRegistry(), process=False),
                        unconfirmed_after=3 * 86400.0)
    relay.running = True  # started (for relay_on_accept), without its periodic pass
    cpu, wall, counter = [], [], 0
    for n in range(WARM_UP + files):
        records = []
        for _ in range(results):
            counter += 1
            t = templates[counter % len(templates)]
            records.append(t[:slip_at] + f"9{counter:0{slip_width - 1}d}".encode() + t[slip_at + slip_width:])
        data = b"".join(records)
        info = store.write(f"in-{n:06d}", [data])
        now = dt.datetime.now(dt.timezone.utc)
        fields = dict(flow="mpn-results", direction="in", peer="mpn", local_name=f"r{n}.dat", state=S.VALIDATED,
                      size=len(data), sha256=info.sha256, record_count=results, blob_id=f"in-{n:06d}", now=now,
                      remote_name=f"r{n}.dat")
        accepted = ("push.accepted", {"flow": "mpn-results", "peer": "mpn", "records": results, "sha256": info.sha256})
        if not accept:
            row = ledger.add_transfer(**fields, audit=accepted)
        c0, w0 = time.process_time(), time.perf_counter()
        failures = []
        inline = relay.relay_on_accept(results) if accept and hasattr(relay, "relay_on_accept") else None
        if inline is not None:  # the push's commit and its relay in one transaction (issue 16, fourth sitting)
            from kei_gateway.adapters.ledger.ledger import NewTransfer
            inline.end(inline(NewTransfer(**fields), accepted, data))
        else:
            if accept:  # the push's commit, then its relay (the tree before)
                row = ledger.add_transfer(**fields, audit=accepted)
            relay.relay(row).addErrback(failures.append)
        c1, w1 = time.process_time(), time.perf_counter()
        if failures:
            failures[0].raiseException()
        if n >= WARM_UP:
            cpu.append(c1 - c0)
            wall.append(w1 - w0)
    relayed = len(os.listdir(f"{tmp}/inbox"))
    engine.dispose()
print(json.dumps({"cpu": cpu, "wall": wall, "relayed": relayed}))
""".replace("WARM_UP", str(WARM_UP))


def measure(tree: Path, files: int, results: int, accept: bool = False) -> dict[str, float]:
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(files), str(results), str(out), str(int(accept))], env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the measurement on {tree} failed:\n{done.stderr[-3000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    if data["relayed"] != files + WARM_UP:
        raise SystemExit(f"{tree}: {data['relayed']} files in the inbox, not {files + WARM_UP}")
    cpu, wall = sorted(data["cpu"]), sorted(data["wall"])
    return {"cpu_mean": statistics.fmean(cpu) * 1000, "wall_p50": statistics.median(wall) * 1000,
            "wall_p99": wall[min(len(wall) - 1, int(len(wall) * 0.99))] * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--results", type=int, default=50, help="results a file (default 50: 500/s in 10 files)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a tree to compare with (its kei_gateway package)")
    parser.add_argument("--accept", action="store_true",
                        help="time the push's commit with its relay: one transaction where the tree relays a small "
                             "push in the commit that accepts it, else the VALIDATED commit then the relay")
    args = parser.parse_args()
    what = "push commit + relay" if args.accept else "relay"
    print(f"# {what} cost per file of {args.results} results, {args.files} files a run (after {WARM_UP} to warm up); "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"| tree | run | {what} CPU ms/file | wall p50 ms | wall p99 ms | /proc/loadavg at its start |")
    print("|---|---:|---:|---:|---:|---|")
    rows: dict[str, list[dict[str, float]]] = {"baseline": [], "this tree": []}
    trees = ([("baseline", args.baseline)] if args.baseline else []) + [("this tree", ROOT)]
    for run in range(1, args.runs + 1):
        for label, tree in trees:
            load = Path("/proc/loadavg").read_text().strip()
            row = measure(tree.resolve(), args.files, args.results, args.accept)
            rows[label].append(row)
            print(f"| {label} | {run} | {row['cpu_mean']:.2f} | {row['wall_p50']:.2f} | {row['wall_p99']:.2f} | "
                  f"{load} |", flush=True)
    if args.baseline:
        for run, (base, new) in enumerate(zip(rows["baseline"], rows["this tree"]), 1):
            print(f"- run {run}: CPU ratio this tree / baseline {new['cpu_mean'] / base['cpu_mean']:.2f}, "
                  f"wall p50 ratio {new['wall_p50'] / base['wall_p50']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
