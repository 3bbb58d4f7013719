"""Benchmark: the encrypted store's write and read speed and memory against plain copies.

Generates (once, under ``bench/out/``) a file of dummy random bytes (256 MiB by default),
then measures, each in a child process so peak RSS is per measurement:

* ``sha256sum`` (coreutils) of the file;
* copy: the file read in 1 MiB pieces and written to a new file, fsynced (what a plain
  spool copy costs);
* hash: the file read in 1 MiB pieces and hashed with ``hashlib.sha256``;
* store write: :meth:`FileBlobStore.write` of the file read in 1 MiB pieces (encrypt,
  SHA-256 of the plaintext, fsync, rename, fsync the directory);
* store read: :meth:`FileBlobStore.read` of that blob, verified segment by segment and
  hashed (what an upload does before sending).

The input file is in the page cache throughout (it was just written or read), so the
figures are CPU and write-back costs, not disk reads.

Run: ``.venv/bin/python bench/store.py [--mib N] [--repeat R]``. Figures go in
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
PIECE = 1 << 20
BENCH_KEY = bytes(range(7, 39))  # a throwaway key for dummy data


def ensure_file(mib: int) -> Path:
    path = OUT / f"store-input-{mib}MiB.dat"
    if not path.exists():
        OUT.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for _ in range(mib):
                out.write(os.urandom(PIECE))
        tmp.rename(path)
    return path


def pieces(path: Path):  # type: ignore[no-untyped-def]
    with path.open("rb", buffering=0) as f:
        while True:
            piece = f.read(PIECE)
            if not piece:
                return
            yield piece


def measure(what: str, path: Path, work: Path) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from kei_gateway.adapters.store.blobs import FileBlobStore
    from kei_gateway.adapters.store.keys import StoreKeyring

    store = FileBlobStore(str(work / "store"), StoreKeyring(BENCH_KEY))
    start = time.perf_counter()
    if what == "sha256sum":
        subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
    elif what == "copy":
        with (work / "copy.dat").open("wb") as out:
            for piece in pieces(path):
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
    elif what == "hash":
        digest = hashlib.sha256()
        for piece in pieces(path):
            digest.update(piece)
    elif what == "store-write":
        store.write("bench", pieces(path), replace=True)
    elif what == "store-read":
        digest = hashlib.sha256()
        for piece in store.read("bench"):
            digest.update(piece)
    else:
        raise SystemExit(f"unknown measurement {what}")
    elapsed = time.perf_counter() - start
    # sha256sum's own peak is not measurable here (its RUSAGE_CHILDREN figure counts the forking Python)
    rss = -1 if what == "sha256sum" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": elapsed, "peak_rss_mb": rss / 1024}


def run_child(what: str, path: Path, work: Path) -> dict[str, float]:
    output = subprocess.run([sys.executable, __file__, "--child", what, str(path), str(work)],
                            check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output))


MEASUREMENTS = ("sha256sum", "hash", "copy", "store-write", "store-read")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the blob in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, path, work = args.child
        print(json.dumps(measure(what, Path(path), Path(work))))
        return
    path = ensure_file(args.mib)
    work = OUT / "store-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {platform.platform()}")
    print(f"{args.mib} MiB of dummy bytes, best of {args.repeat}")
    print(f"{'measurement':<12} {'seconds':>8} {'MB/s':>8} {'peak RSS':>9}")
    size_mb = args.mib * PIECE / 1e6
    try:
        for what in MEASUREMENTS:
            best = min((run_child(what, path, work) for _ in range(args.repeat)), key=lambda r: r["seconds"])
            rss = f"{best['peak_rss_mb']:>7.0f}MB" if best["peak_rss_mb"] >= 0 else f"{'-':>9}"
            print(f"{what:<12} {best['seconds']:>8.2f} {size_mb / best['seconds']:>8.0f} {rss}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
