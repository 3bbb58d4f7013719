"""Benchmark (issues 11 and 16): the daemon's resident memory at READY, what it is made of, and after pushes.

**Imports** (one clean interpreter, ``sys.executable`` with this tree first on ``sys.path``): the
resident size after each group of imports ``kei-gateway run`` makes, in its order, then what
the daemon no longer imports — Alembic (the migration runs in a forked child) and the AIRIS
突合 flow (imported only when ``[flows.airis]`` is configured) — to show what they would add.

**The daemon** (``python -m kei_gateway run``, started with the ``tests/integration/harness.py``
helpers and ``bench/relay.py``'s configuration: ``[flows.mpn-results]``, the push listener,
SQLite): for each variant of the environment, ``--runs`` daemons; each one's ``VmRSS`` and
``VmHWM`` at READY, split from ``/proc/<pid>/smaps`` into file-backed pages (shared
libraries), the C heap (``[heap]``), glibc's per-thread arenas (64 MiB-aligned heaps) and the
other anonymous mappings (Python's object arenas, thread stacks, numpy), and its thread count;
then its ``VmHWM`` after a push of each size in ``--pushes`` (each relayed to the inbox before
the next). The baseline is the daemon as shipped (glibc's arenas capped at 2 by
``runtime/malloc.py``); the other variants give it glibc's default number of arenas
(``MALLOC_ARENA_MAX`` = 8 per core) or one OpenBLAS thread (``OPENBLAS_NUM_THREADS=1``); their
ratios to the baseline are printed — the evidence for or against each setting
(docs/decisions.md).

Run: ``.venv/bin/python bench/memory.py [--quick] [--runs N] [--pushes 10000,100000]`` (about
three minutes; ``--quick``: one run of each variant, one push of 10,000 results, about a minute).
Figures go in ``docs/performance.md`` ("Daemon memory at READY").
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from relay import BatchMaker, client_context, configure, push_file, wait_for_inbox_file  # noqa: E402
from upload import _drain_notifications, machine, stop_gateway  # noqa: E402

from kei_gateway.sim.harness import free_port  # noqa: E402
from tests.integration.harness import make_gateway_files, start_daemon  # noqa: E402

VARIANTS: dict[str, dict[str, str]] = {
    "as shipped": {},
    "glibc's arenas": {"MALLOC_ARENA_MAX": str(8 * (os.cpu_count() or 1))},
    "OpenBLAS 1 thread": {"OPENBLAS_NUM_THREADS": "1"},
}
"""The first is the baseline the others' ratios are taken against. As shipped, every ``kei-gateway``
process caps glibc's arenas at 2 (``runtime/malloc.py``) unless ``$MALLOC_ARENA_MAX`` is set: the
second variant sets glibc's own default (8 per core) that way."""

IMPORT_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Twisted reactor, TLS (pyOpenSSL, cryptography)", ("twisted.internet.reactor", "twisted.internet.ssl",
                                                        "twisted.web.server")),
    ("SQLAlchemy (core, ORM)", ("sqlalchemy", "sqlalchemy.orm")),
    ("prometheus-client, systemd, tenacity", ("prometheus_client", "systemd.journal", "tenacity")),
    ("numpy", ("numpy",)),
    ("kei_gateway.config (the layouts, jntajis)", ("kei_gateway.config",)),
    ("kei_gateway.cli.daemon (ledger, store, audit)", ("kei_gateway.cli.daemon",)),
    ("kei_gateway.runtime.service (the flows)", ("kei_gateway.runtime.service",)),
    ("not imported: Alembic (the migration's child has it)", ("alembic.command", "alembic.script",
                                                              "alembic.runtime.migration")),
    ("not imported: the AIRIS 突合 flow (only with [flows.airis])", ("kei_gateway.flows.airis_flow",)),
)

_IMPORTS_PROGRAM = r"""
import importlib, json, sys
def rss_kb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4
steps = json.loads(sys.argv[1])
print(json.dumps({"start": rss_kb()}))
for label, modules in steps:
    for module in modules:
        importlib.import_module(module)
    print(json.dumps({label: rss_kb()}), flush=True)
print(json.dumps({"modules": len(sys.modules)}))
"""


def import_breakdown() -> list[tuple[str, float]]:
    """(step, resident MiB after it) in a clean interpreter, this tree first on its path."""
    import json

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _IMPORTS_PROGRAM, json.dumps(IMPORT_STEPS)], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True).stdout
    return [(label, value / 1024) for line in out.splitlines() for label, value in json.loads(line).items()]


def status_kb(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                values[key] = int(value.split()[0])
    return values


_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$")
_ARENA_ALIGN = 64 << 20


def smaps_split(pid: int) -> dict[str, float]:
    """Resident MiB by kind: file-backed, ``[heap]``, glibc thread arenas, other anonymous."""
    mappings: list[list] = []  # [start, permissions, name, rss kB]
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            match = _MAPPING.match(line)
            if match:
                mappings.append([int(match[1], 16), match[3], match[4].strip(), 0])
            elif line.startswith("Rss:"):
                mappings[-1][3] = int(line.split()[1])
    split = {"file": 0, "heap": 0, "arenas": 0, "other anon": 0}
    for index, (start, permissions, name, rss) in enumerate(mappings):
        if name == "[heap]":
            split["heap"] += rss
        elif name.startswith("/"):
            split["file"] += rss
        elif name == "":
            following = mappings[index + 1] if index + 1 < len(mappings) else None
            arena = (start % _ARENA_ALIGN == 0 and permissions != "---p" and following is not None
                     and following[1] == "---p" and following[2] == "")
            split["arenas" if arena else "other anon"] += rss
        else:  # [stack], [vvar], [vdso]
            split["other anon"] += rss
    return {kind: kb / 1024 for kind, kb in split.items()}


@dataclass
class Run:
    variant: str
    ready: dict[str, int]
    split: dict[str, float]
    after: list[tuple[int, int, int]] = field(default_factory=list)
    """(results pushed, VmHWM kB, threads) after each push was relayed."""
    load: str = ""


def measure(variant: str, env: dict[str, str], pushes: list[int], maker: BatchMaker, tmp: Path) -> Run:
    files = make_gateway_files(tmp / "gateway")
    port = free_port()
    configure(files, port)
    inbox = files.base / "spool" / "inbox" / "mpn-results"
    inbox.mkdir(parents=True, exist_ok=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    daemon = start_daemon(files, watchdog_usec=None, extra_env=env)
    try:
        daemon.notify.wait_for("READY=1", timeout=120)
        _drain_notifications(daemon)
        time.sleep(1.0)  # the first timers (audit verify, purge catch-up) have run
        pid = daemon.process.pid
        run = Run(variant, status_kb(pid), smaps_split(pid), load=load)
        context = client_context(files.base / "credentials")
        for results in pushes:
            body = tmp / f"push-{results}.dat"
            with body.open("wb") as out:
                for start in range(0, results, 10_000):
                    out.write(maker.batch(min(10_000, results - start)))
            before = set(os.listdir(inbox))
            status, _ = push_file(port, context, body, body.name)
            if status != 201:
                raise SystemExit(f"the push of {results:,} results was answered {status}")
            wait_for_inbox_file(inbox, before, 900, daemon)
            body.unlink()
            now = status_kb(pid)
            run.after.append((results, now["VmHWM"], now["Threads"]))
    finally:
        stop_gateway(daemon)
    return run


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of each variant, one push of 10,000 results")
    parser.add_argument("--runs", type=int, default=3, help="daemons per variant (default 3)")
    parser.add_argument("--pushes", default="10000,100000", help="results per push, in order (default 10000,100000)")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    pushes = [10_000] if args.quick else [int(n) for n in args.pushes.split(",") if n]
    print(f"# kei-gateway daemon memory benchmark — {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# {machine()}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print()
    print("## What `kei-gateway run` imports (a clean interpreter; resident MiB after each step)")
    print()
    print("| step | resident MiB | + MiB |")
    print("|---|---:|---:|")
    previous = None
    for label, value in import_breakdown():
        if label == "modules":
            print(f"| modules loaded (all the steps) | {value * 1024:.0f} | |")
            continue
        print(f"| {label} | {value:.1f} | {'' if previous is None else f'{value - previous:+.1f}'} |")
        previous = value
    print(flush=True)
    maker = BatchMaker()
    results: list[Run] = []
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    for number in range(runs):
        for variant, env in VARIANTS.items():  # interleaved, so that the load hits every variant alike
            with tempfile.TemporaryDirectory(prefix="kei-bench-memory-", dir=ROOT / "bench" / "out") as tmp:
                run = measure(variant, env, pushes, maker, Path(tmp))
            results.append(run)
            print(f"# run {number + 1}, {variant}: READY {mb(run.ready['VmRSS'])} MiB, after the pushes "
                  + ", ".join(f"{n:,}: {mb(hwm)} MiB" for n, hwm, _ in run.after), flush=True)
    print()
    print("## The daemon (bench/relay.py's configuration; MiB = 2^20 bytes, as /proc counts; peak = VmHWM)")
    print()
    push_columns = "".join(f" peak after {n:,} |" for n in pushes)
    print(f"| variant | READY RSS | READY peak | file-backed | C heap | thread arenas | other anon | threads |"
          f"{push_columns} threads after | load before |")
    print("|---|" + "---:|" * (7 + len(pushes) + 1) + "---|")
    for run in results:
        cells = [run.variant, mb(run.ready["VmRSS"]), mb(run.ready["VmHWM"])]
        cells += [f"{run.split[kind]:.1f}" for kind in ("file", "heap", "arenas", "other anon")]
        cells += [str(run.ready["Threads"])] + [mb(hwm) for _, hwm, _ in run.after]
        cells += [str(run.after[-1][2]) if run.after else "", run.load]
        print("| " + " | ".join(cells) + " |")
    print()
    baseline = list(VARIANTS)[0]

    def median(variant: str, pick) -> float:  # type: ignore[no-untyped-def]
        return statistics.median(pick(run) for run in results if run.variant == variant)

    for variant in list(VARIANTS)[1:]:
        ratios = [f"READY {median(variant, lambda r: r.ready['VmRSS']) / median(baseline, lambda r: r.ready['VmRSS']):.3f}×"]
        for index, results_pushed in enumerate(pushes):
            ratios.append(f"peak after {results_pushed:,} "
                          f"{median(variant, lambda r: r.after[index][1]) / median(baseline, lambda r: r.after[index][1]):.3f}×")
        print(f"- {variant} / {baseline} (medians): " + ", ".join(ratios))
    ready = median(baseline, lambda r: r.ready["VmHWM"]) / 1024
    print(f"- {baseline}: READY peak {ready:.1f} MiB (median); the suite's bound is 116 MiB "
          f"(tests/integration/test_daemon_memory.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
