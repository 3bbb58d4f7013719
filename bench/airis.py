"""Benchmark: one AIRIS 突合 of a large city (100,000 小型二輪 on each side) against a plain ``csv`` read.

Generates (once, under ``bench/out/``) a dummy case with discrepancies of every category
planted: the register extract (``tax-register-2w``), the AIRIS CSV and its AES-256 ZIP.
Then, each in a child process so peak RSS is per measurement:

* baseline: the AIRIS CSV (plaintext, from disk) read with Python's ``csv`` module after a
  CP932 decode — the least any reader of the file does;
* run: exactly what ``kei-gateway airis reconcile`` does in memory: open the ZIP, check every
  row of the CSV and every register record, match, and render the ``.dat``, ``.csv`` and
  ``.txt`` (into memory, not to disk: the disk is not what is measured).

Targets (issue 14): the run ≤ 5 s, peak RSS ≤ 200 MB. "ratio" = run / baseline (wall clock). The run's
CPU time is printed too: on a machine shared with other jobs the wall clock says more about them.
Run: ``.venv/bin/python bench/airis.py [--vehicles N] [--runs 3]``.  Figures go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
KEY = "bench-airis-key"
PLANT_SHARE = {"02": 0.01, "03": 0.02, "04": 0.005, "05": 0.01, "06": 0.01, "07": 0.002, "08": 0.002}


def ensure_files(vehicles: int) -> tuple[Path, Path, Path]:
    from kei_gateway.adapters.airis_zip import write_airis_zip
    from kei_gateway.layouts import render_records
    from kei_gateway.layouts.airis import TAX_REGISTER_2W, airis_csv_bytes, generate_airis_case

    stem = OUT / f"airis-{vehicles}"
    paths = (stem.with_suffix(".csv"), stem.with_suffix(".zip"), stem.with_suffix(".register.dat"))
    if not all(path.exists() for path in paths):
        OUT.mkdir(exist_ok=True)
        plant = {code: max(2, int(vehicles * share)) for code, share in PLANT_SHARE.items()}
        case = generate_airis_case(vehicles, plant, seed=42,
                                   variants={"width": vehicles // 100, "degenerate": vehicles // 200,
                                             "address": vehicles // 100})
        data = airis_csv_bytes(case.airis)
        paths[0].write_bytes(data)
        paths[1].write_bytes(write_airis_zip(data, KEY))
        paths[2].write_bytes(b"".join(render_records(TAX_REGISTER_2W, case.register)))
    return paths


def child(kind: str, csv_path: str, zip_path: str, register_path: str) -> None:
    """One measurement; prints JSON (seconds, CPU seconds, peak RSS, rows)."""
    start = time.perf_counter()
    cpu = time.process_time()
    if kind == "baseline":
        with open(csv_path, "rb") as file:
            rows = sum(1 for _ in csv.reader(io.TextIOWrapper(file, encoding="cp932", newline="")))
    else:
        from kei_gateway.flows.airis_reconcile import reconcile

        zip_data = Path(zip_path).read_bytes()
        register = Path(register_path).read_bytes()
        start = time.perf_counter()
        cpu = time.process_time()
        result = reconcile(airis_zip=zip_data, key_file=KEY.encode(), register=register, lg_code="131202",
                           at=datetime.datetime.now(datetime.timezone.utc))
        size = sum(len(chunk) for chunk in result.dat_chunks()) + sum(len(c) for c in result.csv_chunks())
        size += len(result.text())
        rows = len(result.rows)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    # VmHWM, not ru_maxrss: the latter carries the parent's peak (it generated the inputs) over the exec.
    peak = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_rss": peak, "rows": rows}))


def measure(kind: str, paths: tuple[Path, Path, Path]) -> dict[str, float]:
    output = subprocess.run([sys.executable, __file__, "--child", kind, *map(str, paths)], check=True,
                            capture_output=True, text=True).stdout
    return json.loads(output)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vehicles", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=4, metavar=("KIND", "CSV", "ZIP", "REGISTER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    paths = ensure_files(args.vehicles)
    print(f"AIRIS 突合 bench: {args.vehicles:,} vehicles each side; CSV {paths[0].stat().st_size:,} bytes, "
          f"ZIP {paths[1].stat().st_size:,} bytes, register {paths[2].stat().st_size:,} bytes")
    for run in range(1, args.runs + 1):
        load = Path("/proc/loadavg").read_text().split()[:3]
        base = measure("baseline", paths)
        full = measure("run", paths)
        print(f"run {run}: csv read {base['seconds']:.2f} s ({base['peak_rss'] / 2 ** 20:.0f} MB)  "
              f"突合 {full['seconds']:.2f} s, CPU {full['cpu']:.2f} s ({full['peak_rss'] / 2 ** 20:.0f} MB, "
              f"{full['rows']:,} rows)  "
              f"ratio {full['seconds'] / base['seconds']:.1f}x  load {' '.join(load)}  "
              f"[targets: ≤ 5 s, ≤ 200 MB: {'met' if full['seconds'] <= 5 and full['peak_rss'] <= 200 * 2 ** 20 else 'NOT met'}]")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
