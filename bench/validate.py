"""Benchmark: ``kei-gateway validate`` speed and memory against a bare CP932 decode.

Generates (once, under ``bench/out/``) 1,000,000 JNKS 納付情報 records and
1,000,000 MPN 納付結果情報 records of dummy data, then for each file measures,
in child processes so peak RSS is per measurement:

* baseline: the file decoded line by line with Python's ``codecs`` CP932
  incremental decoder (``for line in f: decoder.decode(line)``);
* validate: the layout engine validating the file streamed in 64 KiB reads,
  exactly what ``kei-gateway validate FILE`` does (uniqueness through the
  fixed-size key filter; the file is read again only if it leaves suspects).

"ratio" is best validate time / best decode time; "median" is the median of
the ratios of decode/validate pairs run back to back; "cpu" columns are the
best CPU seconds (user + system) of each, less sensitive to other load on the
machine than wall-clock time.

Run: ``.venv/bin/python bench/validate.py [--records N]``.  Figures go in
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import codecs
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
TODAY = datetime.date(2025, 6, 30)
LAYOUT_NAMES = ("jnks-payments", "mpn-results")


def ensure_file(layout_name: str, records: int) -> Path:
    from kei_gateway.layouts import generate_file, get_layout

    path = OUT / f"{layout_name}-{records}.dat"
    if not path.exists():
        OUT.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            batch: list[bytes] = []
            for data in generate_file(get_layout(layout_name), records, seed=42, today=TODAY):
                batch.append(data)
                if len(batch) == 10_000:
                    out.write(b"".join(batch))
                    batch.clear()
            out.write(b"".join(batch))
        tmp.rename(path)
    return path


def measure_decode(path: str) -> dict[str, float]:
    decoder = codecs.getincrementaldecoder("cp932")()
    cpu = time.process_time()
    start = time.perf_counter()
    count = 0
    with open(path, "rb") as source:
        for line in source:
            decoder.decode(line)
            count += 1
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "records": count}


def measure_validate(path: str, layout_name: str) -> dict[str, float]:
    from kei_gateway.layouts import ValidationOptions, get_layout, validate_stream

    options = ValidationOptions(today=TODAY)
    cpu = time.process_time()
    start = time.perf_counter()
    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as source:
            yield from iter(partial(source.read, 1 << 16), b"")

    # As ``kei-gateway validate FILE``: the file may be read a second time, so uniqueness takes fixed memory.
    report = validate_stream(chunks(), get_layout(layout_name), options, reread=chunks,
                             expected_size=os.path.getsize(path))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if not report.valid:
        raise SystemExit(f"benchmark file {path} is invalid: {report.errors[:3]}")
    return {"seconds": elapsed, "cpu": cpu, "records": report.records}


def child(what: str, path: str, layout_name: str) -> None:
    result = measure_decode(path) if what == "decode" else measure_validate(path, layout_name)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_child(what: str, path: Path, layout_name: str) -> dict[str, float]:
    output = subprocess.run([sys.executable, __file__, "--child", what, str(path), layout_name],
                            check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {platform.platform()}")
    print(f"{'layout':<15} {'records':>9} {'MB':>6} {'decode s':>9} {'validate s':>10} {'records/s':>11} "
          f"{'ratio':>6} {'median':>8} {'cpu dec':>7} {'cpu val':>7} {'cpu x':>6} {'RSS decode':>10} "
          f"{'RSS validate':>12}")
    for name in LAYOUT_NAMES:
        path = ensure_file(name, args.records)
        # Decode and validate alternate, so load from other processes hits both alike.
        pairs = [(run_child("decode", path, name), run_child("validate", path, name)) for _ in range(args.repeat)]
        decode = min((d for d, _ in pairs), key=lambda r: r["seconds"])
        validate = min((v for _, v in pairs), key=lambda r: r["seconds"])
        ratios = sorted(v["seconds"] / d["seconds"] for d, v in pairs)
        cpu_decode = min(d["cpu"] for d, _ in pairs)
        cpu_validate = min(v["cpu"] for _, v in pairs)
        size = path.stat().st_size / 1e6
        print(f"{name:<15} {int(validate['records']):>9} {size:>6.0f} {decode['seconds']:>9.2f} "
              f"{validate['seconds']:>10.2f} {validate['records'] / validate['seconds']:>11,.0f} "
              f"{validate['seconds'] / decode['seconds']:>5.2f}x {ratios[len(ratios) // 2]:>7.2f}x "
              f"{cpu_decode:>6.2f} {cpu_validate:>6.2f} {cpu_validate / cpu_decode:>5.2f}x "
              f"{decode['peak_rss_mb']:>8.0f}MB {validate['peak_rss_mb']:>10.0f}MB")


if __name__ == "__main__":
    main()
