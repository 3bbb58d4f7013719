"""Benchmark: ``kei-gateway validate`` speed and memory against CP932 decoding, and the 縮退 policy's cost.

Generates (once, under ``bench/out/``) dummy files — 1,000,000 JNKS 納付情報 records,
1,000,000 MPN 納付結果情報 records, and 1,000,000 MPN 納付書情報 records in UTF-8 as a
standardised system writes them, once with one MJ character (髙, 𠮷 ...) in 1 % of the
names and once with those characters already degenerated — then measures each in a
child process (so peak RSS is per measurement):

* ``bulk``: ``bytes.decode("cp932")`` of the whole file in one call (the C codec: the
  cost of merely reading every byte as CP932; the file and its text are in memory);
* ``lines``: the file decoded line by line with the incremental CP932 decoder;
* ``validate``: the layout engine on the file streamed in 64 KiB reads, exactly what
  ``kei-gateway validate FILE`` does (uniqueness through the fixed-size key filter);
* ``degenerate``: the UTF-8 slips validated with ``gaiji = "degenerate"``, with and
  without the MJ characters;
* ``invalid``: the JNKS file with every record made invalid (its first byte), against the
  valid one (issue 11: an all-invalid file costs at most 2× a valid one of the same size;
  validation stops after ``max_errors`` errors).

Every run is printed (``--repeat``, default 3) with the load average before it; the
ratios are validate / bulk and validate / lines of the same run, and degenerate with MJ
/ without.  Run: ``.venv/bin/python bench/validate.py [--records N] [--repeat N] [--only WHAT]``
(``--only degenerate``: the 縮退 ratio alone).

``--large`` measures instead the upload bench's 512 MiB JNKS file (7,669,584 records,
``bench/_jnks_data.py``) as the ingest validates it (1 MiB reads, the key log spilled to the
scratch, the second read only if keys are suspect): CPU of each read and peak RSS (issue 13:
≤ 64 MB whatever the size).  ``--baseline DIR`` runs each measurement (of ``--large`` or of
``--only degenerate``) also with the ``kei_gateway`` of another checkout (e.g. ``git archive``
of main into DIR), in the same invocation, one child each.  Figures go in ``docs/performance.md``.
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
from typing import Any
from functools import partial
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
TODAY = datetime.date(2025, 6, 30)
LAYOUT_NAMES = ("jnks-payments", "mpn-results")


def ensure_file(layout_name: str, records: int, variant: str = "cp932") -> Path:
    """The benchmark file; ``variant`` ``cp932``, ``utf8-mj`` (1 % MJ names) or ``utf8-plain`` (degenerated)."""
    from kei_gateway.layouts import generate_file, get_layout
    from kei_gateway.layouts.generator import DUMMY_MJ_CHARS

    path = OUT / f"{layout_name}-{records}-{variant}.dat"
    if variant == "invalid" and not path.exists():
        valid, size = ensure_file(layout_name, records), get_layout(layout_name).record_length
        tmp = path.with_suffix(".tmp")
        with valid.open("rb") as source, tmp.open("wb") as out:
            for block in iter(partial(source.read, size * 10_000), b""):
                marked = bytearray(block)
                marked[0::size] = b"#" * (len(marked) // size)  # no record kind is "#"
                out.write(marked)
        tmp.rename(path)
    if not path.exists():
        OUT.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        encoding = "cp932" if variant == "cp932" else "utf-8"
        mj_rate = 0.0 if variant == "cp932" else 0.01
        plain = {mj.encode("utf-8"): target.encode("utf-8") for mj, target in DUMMY_MJ_CHARS}
        with tmp.open("wb") as out:
            batch: list[bytes] = []
            for data in generate_file(get_layout(layout_name), records, seed=42, today=TODAY,
                                      encoding=encoding, mj_rate=mj_rate):  # type: ignore[arg-type]
                if variant == "utf8-plain":
                    for mj, target in plain.items():
                        data = data.replace(mj, target)
                batch.append(data)
                if len(batch) == 10_000:
                    out.write(b"".join(batch))
                    batch.clear()
            out.write(b"".join(batch))
        tmp.rename(path)
    return path


def measure_bulk(path: str) -> dict[str, float]:
    with open(path, "rb") as source:
        data = source.read()
    cpu = time.process_time()
    start = time.perf_counter()
    text = data.decode("cp932")
    result = {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "records": text.count("\n")}
    return result


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


def scratch_option(function: object) -> dict[str, Any]:
    """``scratch=`` as ``kei-gateway validate`` and the ingest pass it, when this checkout has one (not before)."""
    import inspect

    if "scratch" not in inspect.signature(function).parameters:  # type: ignore[arg-type]
        return {}
    from kei_gateway.adapters.scratch import scratch_in

    return {"scratch": scratch_in()}


def measure_large(path: str, layout_name: str) -> dict[str, float]:
    """The ingest's validation of a large file: 1 MiB reads, the second read only if keys are suspect."""
    from kei_gateway.core.jst import today_in_jst
    from kei_gateway.layouts import ValidationOptions, Validator, get_layout

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def chunks() -> Iterator[bytes]:
        fd = os.open(path, os.O_RDONLY)
        try:
            while chunk := os.read(fd, 1 << 20):
                yield chunk
        finally:
            os.close(fd)

    validator = Validator(get_layout(layout_name), ValidationOptions(today=today_in_jst()), sink=lambda _: None,
                          rereadable=True, expected_size=os.path.getsize(path), **scratch_option(Validator))
    start, first = time.perf_counter(), cpu()
    for chunk in chunks():
        validator.feed(chunk)
    report = validator.close()
    second = cpu()
    rescanned = validator.needs_rescan
    if rescanned:
        report = validator.rescan(chunks())
    end = cpu()
    if not report.valid:
        raise SystemExit(f"benchmark file {path} is not valid: {report.errors[:3]}")
    return {"seconds": time.perf_counter() - start, "cpu": end - first, "first_cpu": second - first,
            "second_cpu": end - second, "second_read": float(rescanned), "records": report.records}


def measure_validate(path: str, layout_name: str, policy: str = "", expect_valid: bool = True) -> dict[str, float]:
    from kei_gateway.layouts import ValidationOptions, get_layout, validate_stream

    options = ValidationOptions(today=TODAY) if not policy else ValidationOptions(
        today=TODAY, encoding="utf-8", gaiji=policy)  # type: ignore[arg-type]
    cpu = time.process_time()
    start = time.perf_counter()
    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as source:
            yield from iter(partial(source.read, 1 << 16), b"")

    # As ``kei-gateway validate FILE``: the file may be read a second time, so uniqueness takes fixed memory.
    report = validate_stream(chunks(), get_layout(layout_name), options, reread=chunks,
                             expected_size=os.path.getsize(path), **scratch_option(validate_stream))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if report.valid != expect_valid:
        raise SystemExit(f"benchmark file {path}: valid is {report.valid}, expected {expect_valid}: "
                         f"{report.errors[:3]}")
    return {"seconds": elapsed, "cpu": cpu, "records": report.records, "degenerated": report.degenerated}


def child(what: str, path: str, layout_name: str) -> None:
    from kei_gateway.runtime.malloc import keep_block_buffers

    keep_block_buffers()  # as every ``kei-gateway`` process does at its start (``cli.main``)
    if what == "lines":
        result = measure_decode(path)
    elif what == "bulk":
        result = measure_bulk(path)
    elif what == "validate":
        result = measure_validate(path, layout_name)
    elif what == "invalid":
        result = measure_validate(path, layout_name, expect_valid=False)
    elif what == "large":
        result = measure_large(path, layout_name)
    else:
        result = measure_validate(path, layout_name, policy="degenerate")
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ``ru_maxrss`` would carry the parent's over the exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(what: str, path: Path, layout_name: str, code: str | None = None) -> dict[str, float]:
    """One measurement in a child process; ``code``: the checkout whose ``kei_gateway`` it imports."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = code
    output = subprocess.run([sys.executable, __file__, "--child", what, str(path), layout_name],
                            check=True, capture_output=True, text=True, env=env).stdout
    return dict(json.loads(output))


def main_large(repeat: int, baseline: str | None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _jnks_data import jnks_file

    path = jnks_file(7_669_584)
    here = str(Path(__file__).resolve().parent.parent)
    codes = [("baseline", baseline), ("this", here)] if baseline else [("this", here)]
    print(f"large file: {path.name}, {path.stat().st_size / 1e6:.0f} MB, as the ingest validates it (1 MiB reads)")
    print(f"{'code':<9} {'run':>3} {'load':>14} {'wall s':>7} {'CPU s':>6} {'1st read CPU':>12} "
          f"{'2nd read CPU':>12} {'2nd read':>8} {'records':>9} {'peak RSS':>9}")
    for run in range(1, repeat + 1):
        for label, code in codes:
            before = load()
            result = run_child("large", path, "jnks-payments", code)
            print(f"{label:<9} {run:>3} {before:>14} {result['seconds']:>7.2f} {result['cpu']:>6.2f} "
                  f"{result['first_cpu']:>12.2f} {result['second_cpu']:>12.2f} "
                  f"{'yes' if result['second_read'] else 'no':>8} {int(result['records']):>9} "
                  f"{result['peak_rss_mb']:>7.1f}MB", flush=True)


def load() -> str:
    with open("/proc/loadavg", encoding="ascii") as source:
        return " ".join(source.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; every run is printed")
    parser.add_argument("--only", choices=("validate", "invalid", "degenerate"),
                        help="run only this measurement (e.g. degenerate: the 縮退 policy's ratio)")
    parser.add_argument("--large", action="store_true",
                        help="only the 512 MiB file as the ingest validates it: CPU of each read, peak RSS")
    parser.add_argument("--baseline", metavar="DIR",
                        help="with --large or --only degenerate: also run each measurement with the kei_gateway "
                             "of the checkout DIR")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.large:
        main_large(args.repeat, args.baseline)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {platform.platform()}")
    if args.only in (None, "validate"):
        print(f"{'layout':<15} {'run':>3} {'load':>14} {'MB':>5} {'bulk s':>7} {'lines s':>8} {'validate s':>10} "
              f"{'÷bulk':>6} {'÷lines':>6} {'cpu ÷bulk':>9} {'RSS bulk':>8} {'RSS lines':>9} {'RSS validate':>12}")
    for name in LAYOUT_NAMES if args.only in (None, "validate") else ():
        path = ensure_file(name, args.records)
        size = path.stat().st_size / 1e6
        for run in range(1, args.repeat + 1):
            before = load()
            bulk, lines, validate = (run_child(what, path, name) for what in ("bulk", "lines", "validate"))
            print(f"{name:<15} {run:>3} {before:>14} {size:>5.0f} {bulk['seconds']:>7.2f} {lines['seconds']:>8.2f} "
                  f"{validate['seconds']:>10.2f} {validate['seconds'] / bulk['seconds']:>5.2f}x "
                  f"{validate['seconds'] / lines['seconds']:>5.2f}x {validate['cpu'] / bulk['cpu']:>8.2f}x "
                  f"{bulk['peak_rss_mb']:>6.0f}MB {lines['peak_rss_mb']:>7.0f}MB {validate['peak_rss_mb']:>10.0f}MB",
                  flush=True)
    if args.only in (None, "invalid"):
        measure_invalid(args.records, args.repeat)
    if args.only in (None, "degenerate"):
        measure_degenerate(args.records, args.repeat, args.baseline)


def measure_invalid(records: int, repeat: int) -> None:
    print()
    print(f"{'all invalid (jnks-payments)':<30} {'run':>3} {'load':>14} {'MB':>5} {'valid s':>9} {'invalid s':>9} "
          f"{'ratio':>6} {'cpu ratio':>9} {'records read':>12} {'RSS':>6}")
    valid_path, invalid_path = ensure_file("jnks-payments", records), ensure_file("jnks-payments", records, "invalid")
    for run in range(1, repeat + 1):
        before = load()
        valid, invalid = run_child("validate", valid_path, "jnks-payments"), run_child("invalid", invalid_path,
                                                                                       "jnks-payments")
        print(f"{'':<30} {run:>3} {before:>14} {invalid_path.stat().st_size / 1e6:>5.0f} {valid['seconds']:>9.2f} "
              f"{invalid['seconds']:>9.2f} {invalid['seconds'] / valid['seconds']:>5.2f}x "
              f"{invalid['cpu'] / valid['cpu']:>8.2f}x {int(invalid['records']):>12} {invalid['peak_rss_mb']:>4.0f}MB",
              flush=True)


def measure_degenerate(records: int, repeat: int, baseline: str | None = None) -> None:
    """The 縮退 policy's cost: the UTF-8 slips with 1 % MJ names against the same without (``baseline``: old code too)."""
    here = str(Path(__file__).resolve().parent.parent)
    codes = [("baseline", baseline), ("this", here)] if baseline else [("this", None)]
    print()
    print(f"{'degenerate (mpn-slips, UTF-8)':<30} {'run':>3} {'load':>14} {'MB':>5} {'without s':>9} {'with 1% MJ s':>12} "
          f"{'ratio':>6} {'cpu ratio':>9} {'CPU s without/with':>18} {'degenerated':>11} {'RSS':>6}")
    plain, marked = ensure_file("mpn-slips", records, "utf8-plain"), ensure_file("mpn-slips", records, "utf8-mj")
    for run in range(1, repeat + 1):
        for label, code in codes:
            before = load()
            without = run_child("degenerate", plain, "mpn-slips", code)
            with_mj = run_child("degenerate", marked, "mpn-slips", code)
            print(f"{label if baseline else '':<30} {run:>3} {before:>14} {marked.stat().st_size / 1e6:>5.0f} "
                  f"{without['seconds']:>9.2f} {with_mj['seconds']:>12.2f} {with_mj['seconds'] / without['seconds']:>5.2f}x "
                  f"{with_mj['cpu'] / without['cpu']:>8.2f}x {without['cpu']:>8.2f} / {with_mj['cpu']:<7.2f} "
                  f"{int(with_mj['degenerated']):>11} {with_mj['peak_rss_mb']:>4.0f}MB", flush=True)


if __name__ == "__main__":
    main()
