"""Benchmark (issue 4): upload throughput and outbox-to-peer latency against a real nginx over mutual TLS.

One run, one nginx (WebDAV + dav-ext, mutual TLS, on loopback, started as the
integration fixture ``tests/integration/nginx.py`` starts it), the gateway's demo
credentials (``write_demo_credentials``):

* **curl baseline**: ``curl --cacert ca.pem --cert gateway.crt --key gateway.key -T FILE URL``
  for each throughput file (wall time of the curl process).
* **end to end (outbox → peer)**: the real daemon (``python -m kei_gateway -c CONFIG run``,
  a fresh process per scenario so its peak RSS — ``VmHWM`` in ``/proc/<pid>/status`` —
  belongs to that scenario); the file is renamed from ``name.tmp`` into the outbox and
  the clock runs until the file appears under its final name in nginx's root (bounded
  polling every 2 ms). This includes validation, encryption into the store with fsync,
  the ledger commits and the upload.
* **upload stage, in the daemon**: the sender's own ``kei_gateway_transfer_duration_seconds``
  for that transfer, read from ``/metrics`` (``SENDING`` → ``DONE``: PUT ``.part`` + MOVE
  and two ledger transitions).
* **upload stage (store → peer), alone**: a child process writes the file into a
  :class:`FileBlobStore` (not timed), then times :meth:`WebDavClient.put` from the store,
  with the daemon's own client (``WebDavClient.from_config``) and reactor; its peak RSS is
  the child's ``VmHWM``.
* **latency**: 50 valid files of 3,200 records dropped one at a time (each waited for at
  the peer before the next), from the rename into the outbox to the final name at the peer;
  p50/p90/p99/max.

Input files are valid JNKS 納付情報 files (``bench/_jnks_data.py``), cached under
``bench/out/``; they and nginx's copies sit on the same disk, in the page cache.

* **hostile files** (``--hostile``, issue 11): a fresh daemon per file, each renamed alone into the outbox
  and timed until it is *decided* (its outbox entry is gone: taken, or quarantined with its errors file):
  a valid 512 MiB file, a file of the same size made of identical invalid 70-byte lines, and a 2 GiB sparse
  file without a CR LF (exactly ``max_file_size``'s default, so it is read; its encrypted copy is kept).
  Wall time, the daemon's CPU time (``utime + stime`` from ``/proc/<pid>/stat``, the steadier figure on a
  shared machine), each against the valid file's, and the daemon's peak RSS (``VmHWM``).

Run: ``.venv/bin/python bench/upload.py [--quick] [--repeat N] [--hostile]`` (about 2 minutes;
``--quick``: small sizes, one run each, about 10 s; throughput figures are the median of
``--repeat`` runs, 3 by default; ``--hostile`` measures only the hostile files, about 3 minutes, ``--quick
--hostile`` with 64 MiB and 256 MiB files). ``KEI_BENCH_PROFILE=DIR`` runs the daemon under cProfile (every thread) and
writes one ``.prof`` file per scenario into DIR. Figures go in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from _jnks_data import RECORD, jnks_file, small_files  # noqa: E402

from tests.integration.harness import (  # noqa: E402
    DaemonProcess, GatewayFiles, jnks_flow_config, make_gateway_files, start_daemon,
)
from tests.integration.nginx import NginxDav, NginxTLS, start_nginx  # noqa: E402

MIB = 1 << 20
BIG_RECORDS = (512 * MIB) // RECORD  # 7,669,584 records = 512 MiB less 32 bytes
POLL = 0.002
ARRIVAL_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Sizes:
    throughput: tuple[tuple[str, int], ...]
    latency_files: int
    latency_records: int


FULL = Sizes((("1M records", 1_000_000), ("512 MiB", BIG_RECORDS)), 50, 3_200)
QUICK = Sizes((("100k records", 100_000),), 10, 3_200)
INVALID_LINE = b"X" * (RECORD - 2) + b"\r\n"  # a JNKS record's length, every field wrong
SPARSE_SIZE = 2 << 30  # [gateway] max_file_size's default: not larger, so it is read


# --------------------------------------------------------------------------- helpers


def vm_hwm_bytes(pid: int) -> int:
    """Peak resident set size of a live process (``VmHWM``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def wait_for_new_file(directory: Path, before: set[str], timeout: float = ARRIVAL_TIMEOUT,
                      proc: DaemonProcess | None = None) -> tuple[str, float]:
    """Poll *directory* until a visible final name (not ``.part``, not a dotfile) appears; its name and the time."""
    deadline = time.monotonic() + timeout
    while True:
        for name in os.listdir(directory):
            if name not in before and not name.endswith(".part") and not name.startswith("."):
                return name, time.perf_counter()
        if time.monotonic() > deadline:
            tail = proc.stderr()[-3000:] if proc is not None else ""
            raise SystemExit(f"nothing arrived in {directory} within {timeout:g}s\n{tail}")
        if proc is not None and proc.process.poll() is not None:
            raise SystemExit(f"the daemon exited ({proc.process.returncode}):\n{proc.stderr()[-3000:]}")
        time.sleep(POLL)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as source:
        while chunk := source.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def place(source: Path, target: Path) -> None:
    """Put *source* at *target* without copying when possible (a hard link; the ingest unlinks only its name)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def metric_sum(daemon: DaemonProcess, name: str, flow: str = "jnks-payments") -> float:
    _, body = daemon.get("/metrics")
    pattern = re.compile(rf'^{re.escape(name)}\{{flow="{re.escape(flow)}"\}} (\S+)$', re.M)
    found = pattern.search(body.decode())
    return float(found.group(1)) if found else 0.0


# --------------------------------------------------------------------------- the setting


@dataclass
class Bench:
    base: Path
    files: GatewayFiles
    nginx: NginxDav

    @property
    def credentials(self) -> Path:
        return self.files.base / "credentials"

    @property
    def upload_dir(self) -> Path:
        return self.nginx.root / "upload"

    @property
    def outbox(self) -> Path:
        return self.files.base / "spool" / "outbox" / "jnks"

    def clear_upload(self) -> None:
        for entry in self.upload_dir.iterdir():
            if entry.is_file():
                entry.unlink()

    def start_gateway(self, scenario: str) -> DaemonProcess:
        """A fresh daemon (fresh VmHWM) for one scenario; waits for READY=1."""
        extra_env: dict[str, str] = {}
        profile_dir = os.environ.get("KEI_BENCH_PROFILE")
        if profile_dir:
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            extra_env["KEI_BENCH_PROFILE_OUT"] = str(Path(profile_dir).resolve() / f"{scenario}.prof")
            extra_env["PYTHONPATH"] = str(Path(__file__).resolve().parent) + os.pathsep + str(ROOT)
            extra_env["PYTHONSTARTUP"] = ""
        daemon = start_daemon(self.files, watchdog_usec=None, extra_env=extra_env) if not profile_dir else \
            _start_profiled_daemon(self.files, extra_env)
        daemon.notify.wait_for("READY=1", timeout=60)
        _drain_notifications(daemon)
        return daemon


def _drain_notifications(daemon: DaemonProcess) -> None:
    """Read ``$NOTIFY_SOCKET`` as systemd does, until the daemon exits.

    The daemon sends ``STATUS=`` after each ingest; unread, the datagram queue
    (``net.unix.max_dgram_qlen``) fills and ``sd_notify`` blocks the reactor thread,
    which would stall the very thing being measured.
    """
    sock = daemon.notify.sock

    def drain() -> None:
        sock.settimeout(0.2)
        while daemon.process.poll() is None:
            try:
                sock.recv(65536)
            except OSError:  # timeout, or closed
                continue

    threading.Thread(target=drain, name="notify-drain", daemon=True).start()


def _start_profiled_daemon(files: GatewayFiles, extra_env: dict[str, str]) -> DaemonProcess:
    """Like ``start_daemon``, but ``python bench/_profiled_daemon.py`` (cProfile on every thread) instead of ``-m``."""
    from kei_gateway.sim.harness import NotifySocket

    notify = NotifySocket(files.base / "notify.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(extra_env, NOTIFY_SOCKET=str(notify.path))
    stderr_path = files.base / "daemon.stderr"
    with open(stderr_path, "wb") as out:
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent / "_profiled_daemon.py"),
                                    "-c", str(files.config), "run", "--log-target", "terminal"],
                                   env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out)
    return DaemonProcess(process, notify, files, stderr_path)


def stop_gateway(daemon: DaemonProcess) -> None:
    code = daemon.stop()
    time.sleep(0.3)  # the drain thread notices the exit within its 0.2 s receive timeout
    daemon.notify.close()
    (daemon.files.base / "notify.sock").unlink(missing_ok=True)
    if code != 0:
        raise SystemExit(f"the daemon exited {code}:\n{daemon.stderr()[-3000:]}")


def setup(base: Path) -> Bench:
    files = make_gateway_files(base / "gateway")
    credentials = files.base / "credentials"
    nginx = start_nginx(base / "nginx", NginxTLS(certificate=credentials / "peer-sim.crt",
                                                   private_key=credentials / "peer-sim.key",
                                                   client_ca=credentials / "ca.pem"))
    flow = jnks_flow_config(nginx.url()).replace("CREDENTIALS", str(credentials)).replace(
        'transfer_timeout = "1m"', 'transfer_timeout = "30m"')
    files.write_config(extra=flow)
    return Bench(base, files, nginx)


# --------------------------------------------------------------------------- measurements


def measure_curl(bench: Bench, path: Path) -> dict[str, float]:
    name = f"curl-{path.name}"
    credentials = bench.credentials
    command = ["curl", "-sS", "--fail", "-o", "/dev/null", "--cacert", str(credentials / "ca.pem"),
               "--cert", str(credentials / "gateway.crt"), "--key", str(credentials / "gateway.key"),
               "-T", str(path), bench.nginx.url(f"upload/{name}")]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, timeout=ARRIVAL_TIMEOUT)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    delivered = bench.upload_dir / name
    if delivered.stat().st_size != path.stat().st_size:
        raise SystemExit(f"curl delivered {delivered.stat().st_size} of {path.stat().st_size} bytes")
    delivered.unlink()
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return {"seconds": seconds, "cpu": cpu, "load": float(open("/proc/loadavg").read().split()[0])}


def measure_gateway(bench: Bench, path: Path, label: str) -> dict[str, float]:
    """End to end through the real daemon, plus the sender's own upload-stage time."""
    daemon = bench.start_gateway(f"throughput-{label.replace(' ', '-')}")
    try:
        bench.outbox.mkdir(parents=True, exist_ok=True)
        temporary = bench.outbox / f"{path.name}.tmp"
        place(path, temporary)
        before = set(os.listdir(bench.upload_dir))
        upload_before = metric_sum(daemon, "kei_gateway_transfer_duration_seconds_sum")
        cpu_before = cpu_seconds(daemon.process.pid)
        start = time.perf_counter()
        os.rename(temporary, bench.outbox / path.name)
        name, arrived = wait_for_new_file(bench.upload_dir, before, proc=daemon)
        seconds = arrived - start
        cpu = cpu_seconds(daemon.process.pid) - cpu_before
        upload_seconds = _wait_metric_change(daemon, upload_before)
        hwm = vm_hwm_bytes(daemon.process.pid)
    finally:
        stop_gateway(daemon)
    delivered = bench.upload_dir / name
    if delivered.stat().st_size != path.stat().st_size or sha256_file(delivered) != sha256_file(path):
        raise SystemExit(f"the gateway delivered {name} different from {path}")
    delivered.unlink()
    return {"seconds": seconds, "upload_seconds": upload_seconds, "peak_rss": hwm, "cpu": cpu}


def _wait_metric_change(daemon: DaemonProcess, before: float, timeout: float = 60.0) -> float:
    """The sender records the duration after the MOVE's answer and the DONE commit: wait for it (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        now = metric_sum(daemon, "kei_gateway_transfer_duration_seconds_sum")
        if now != before:
            return now - before
        if time.monotonic() > deadline:
            raise SystemExit("the transfer's duration never reached /metrics")
        time.sleep(0.02)


def measure_upload_stage(bench: Bench, path: Path) -> dict[str, float]:
    """``WebDavClient.put`` from the encrypted store, alone, in a child process running the reactor."""
    work = bench.base / "upload-stage"
    work.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, __file__, "--upload-stage-child", str(bench.files.config), str(path),
                             str(work)], capture_output=True, text=True, timeout=ARRIVAL_TIMEOUT)
    if result.returncode != 0:
        raise SystemExit(f"the upload-stage child failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    delivered = bench.upload_dir / figures.pop("name")
    if delivered.stat().st_size != path.stat().st_size:
        raise SystemExit("the upload stage delivered a different size")
    delivered.unlink()
    shutil.rmtree(work)
    return figures


def upload_stage_child(config_path: str, source: str, work: str) -> None:
    """In the child: store the file (untimed), then time the daemon's client putting it from the store."""
    from twisted.internet import reactor
    from twisted.python.threadpool import ThreadPool

    from kei_gateway.runtime.blocking import ThreadPoolBlocking
    from kei_gateway.config import read_config
    from kei_gateway.adapters.store.blobs import FileBlobStore
    from kei_gateway.adapters.store.keys import StoreKeyring
    from kei_gateway.adapters.transport import WebDavClient

    config = read_config(config_path)
    store = FileBlobStore(os.path.join(work, "store"), StoreKeyring.from_files(config.file_path(config.keys.store)))
    with open(source, "rb", buffering=0) as data:
        info = store.write("bench-upload", iter(lambda: data.read(MIB), b""))
    pool = ThreadPool(minthreads=1, maxthreads=4, name="bench-blocking")
    pool.start()
    from twisted.internet.interfaces import IReactorFromThreads

    client = WebDavClient.from_config(reactor, config, "jnks",
                                      ThreadPoolBlocking(cast(IReactorFromThreads, reactor), pool))
    name = f"stage-{Path(source).name}"
    figures: dict[str, object] = {"name": name}

    async def run() -> None:
        start = time.perf_counter()
        await client.put(config.peers["jnks"].url, name, lambda: store.read("bench-upload"), info.size, info.sha256)
        figures["seconds"] = time.perf_counter() - start
        await client.close()

    def done(result: object) -> None:
        figures["ok"] = not hasattr(result, "getTraceback")
        if not figures["ok"]:
            print(result.getTraceback(), file=sys.stderr)  # type: ignore[attr-defined]
        pool.stop()
        reactor.stop()  # type: ignore[attr-defined]

    from twisted.internet import defer

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(run()).addBoth(done))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if not figures["ok"]:
        raise SystemExit(1)
    figures["peak_rss"] = vm_hwm_bytes(os.getpid())
    print(json.dumps(figures))


def all_invalid_file(records: int) -> Path:
    """A cached file of *records* identical invalid lines, as long as the valid file of as many records."""
    path = ROOT / "bench" / "out" / f"upload-all-invalid-{records}.dat"
    if path.exists() and path.stat().st_size == records * RECORD:
        return path
    tmp = path.with_suffix(".tmp")
    block = INVALID_LINE * (MIB // RECORD)
    with tmp.open("wb") as out:
        remaining = records
        while remaining > 0:
            take = min(remaining, MIB // RECORD)
            out.write(block[:take * RECORD])
            remaining -= take
    tmp.rename(path)
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_decided(bench: Bench, label: str, make: object) -> dict[str, float]:
    """Rename one file into the outbox of a fresh daemon; wall and CPU time until its entry is gone, and peak RSS."""
    daemon = bench.start_gateway(f"hostile-{label}")
    try:
        bench.outbox.mkdir(parents=True, exist_ok=True)
        name = f"hostile-{label}.dat"
        temporary = bench.outbox / f"{name}.tmp"
        make(temporary)  # type: ignore[operator]
        cpu_before = cpu_seconds(daemon.process.pid)
        start = time.perf_counter()
        os.rename(temporary, bench.outbox / name)
        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while (bench.outbox / name).exists():
            if time.monotonic() > deadline or daemon.process.poll() is not None:
                raise SystemExit(f"{name} was not decided:\n{daemon.stderr()[-3000:]}")
            time.sleep(POLL)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(daemon.process.pid) - cpu_before
        while not re.search(rf"ingest\.(queued|quarantined): .*{re.escape(name)}", daemon.stderr()):
            if time.monotonic() > deadline:  # the scan reports its files once it is over: bounded wait
                raise SystemExit(f"{name} was decided but not reported:\n{daemon.stderr()[-3000:]}")
            time.sleep(0.05)
        hwm = vm_hwm_bytes(daemon.process.pid)
        quarantined = f"ingest.quarantined: jnks-payments: quarantined {name}" in daemon.stderr()
    finally:
        stop_gateway(daemon)
    bench.clear_upload()
    return {"seconds": seconds, "cpu": cpu, "peak_rss": hwm, "quarantined": float(quarantined)}


def measure_hostile(bench: Bench, records: int, sparse_size: int, repeat: int) -> list[str]:
    """The hostile files against a valid one of the same size: rows of a markdown table, every run."""
    valid, invalid = jnks_file(records), all_invalid_file(records)

    def sparse(path: Path) -> None:
        with path.open("wb") as out:
            out.truncate(sparse_size)

    scenarios = (("valid", lambda path: place(valid, path)), ("all-invalid", lambda path: place(invalid, path)),
                 ("sparse-no-crlf", sparse))
    rows = []
    for run in range(1, repeat + 1):
        load = open("/proc/loadavg").read().split()[:3]
        figures = {label: measure_decided(bench, label, make) for label, make in scenarios}
        base = figures["valid"]
        for label, found in figures.items():
            expected = label != "valid"
            if bool(found["quarantined"]) != expected:
                raise SystemExit(f"{label}: quarantined={bool(found['quarantined'])}, expected {expected}")
            rows.append(f"| {run} | {label} | {found['seconds']:.2f} | {found['seconds'] / base['seconds']:.2f} | "
                        f"{found['cpu']:.2f} | {found['cpu'] / base['cpu']:.2f} | {found['peak_rss'] / 1e6:.0f} MB | "
                        f"{' '.join(load)} |")
        print("\n".join(rows[-len(scenarios):]), flush=True)
    return rows


def measure_latency(bench: Bench, count: int, records: int) -> dict[str, object]:
    payloads = small_files(count, records)
    daemon = bench.start_gateway("latency")
    samples: list[float] = []
    try:
        bench.outbox.mkdir(parents=True, exist_ok=True)
        upload_before = metric_sum(daemon, "kei_gateway_transfer_duration_seconds_sum")
        for number, payload in enumerate(payloads, 1):
            name = f"pay-{number:03d}.dat"
            temporary = bench.outbox / f"{name}.tmp"
            temporary.write_bytes(payload)
            before = set(os.listdir(bench.upload_dir))
            start = time.perf_counter()
            os.rename(temporary, bench.outbox / name)
            arrived_name, arrived = wait_for_new_file(bench.upload_dir, before, timeout=60, proc=daemon)
            samples.append(arrived - start)
            if (bench.upload_dir / arrived_name).stat().st_size != len(payload):
                raise SystemExit(f"{arrived_name} arrived with the wrong size")
        time.sleep(0.2)  # let the last DONE commit reach the metrics (only the mean below uses it)
        upload_total = metric_sum(daemon, "kei_gateway_transfer_duration_seconds_sum") - upload_before
        hwm = vm_hwm_bytes(daemon.process.pid)
    finally:
        stop_gateway(daemon)
    bench.clear_upload()
    return {"samples": samples, "upload_mean": upload_total / count, "peak_rss": hwm}


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 50 samples is the largest but none)."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


# --------------------------------------------------------------------------- report


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs, except peak RSS: its maximum."""
    return {key: (max if key == "peak_rss" else statistics.median)([run[key] for run in runs])
            for key in runs[0]}


def mb_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (about a minute)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs of each throughput measurement; the median is shown (default 3, 1 with --quick)")
    parser.add_argument("--hostile", action="store_true",
                        help="only the hostile files (issue 11): all-invalid and sparse against a valid one")
    parser.add_argument("--upload-stage-child", nargs=3, metavar=("CONFIG", "FILE", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.upload_stage_child:
        upload_stage_child(*args.upload_stage_child)
        return 0
    sizes = QUICK if args.quick else FULL
    args.repeat = args.repeat or (1 if args.quick else 3)
    print(f"# kei-gateway upload benchmark — {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# {machine()}")
    print(f"# throughput: median of {args.repeat} run(s); peak RSS: the largest")
    inputs = [(label, jnks_file(records), records) for label, records in sizes.throughput]
    rows: list[str] = []
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    if args.hostile:
        records = (64 * MIB) // RECORD if args.quick else BIG_RECORDS
        sparse_size = (256 * MIB) if args.quick else SPARSE_SIZE
        with tempfile.TemporaryDirectory(prefix="kei-bench-upload-", dir=ROOT / "bench" / "out") as tmp:
            bench = setup(Path(tmp))
            try:
                print(f"# hostile files: {records:,} records ({records * RECORD / 1e6:,.0f} MB) valid and all-invalid, "
                      f"{sparse_size / 2**30:g} GiB sparse; decided = the outbox entry gone")
                print("| run | file | decided s | × valid | daemon CPU s | × valid | daemon peak RSS | load |")
                print("|---:|---|---:|---:|---:|---:|---:|---|")
                measure_hostile(bench, records, sparse_size, args.repeat)
            finally:
                bench.nginx.stop()
        return 0
    with tempfile.TemporaryDirectory(prefix="kei-bench-upload-", dir=ROOT / "bench" / "out") as tmp:
        bench = setup(Path(tmp))
        try:
            for label, path, records in inputs:
                size = path.stat().st_size
                runs = [(measure_curl(bench, path), measure_gateway(bench, path, label),
                         measure_upload_stage(bench, path)) for _ in range(args.repeat)]
                curl = median_of([run[0] for run in runs])
                gateway = median_of([run[1] for run in runs])
                stage = median_of([run[2] for run in runs])
                curl_rate = mb_s(size, curl["seconds"])
                rows.append(f"| {label} ({records:,} records, {size / 1e6:,.0f} MB) | curl -T | "
                            f"{curl['seconds']:.2f} | {curl_rate:.0f} | 1.00 | – |")
                for what, figures in (("gateway end to end (outbox → peer)", gateway),
                                      ("gateway upload stage in the daemon (sender: PUT+MOVE)",
                                       {"seconds": gateway["upload_seconds"], "peak_rss": None}),
                                      ("gateway upload stage alone (store → peer)", stage)):
                    rate = mb_s(size, float(figures["seconds"]))  # type: ignore[arg-type]
                    rss = figures["peak_rss"]
                    rss_text = f"{rss / 1e6:.0f} MB" if rss else "(same daemon)"  # type: ignore[operator]
                    rows.append(f"| | {what} | {figures['seconds']:.2f} | {rate:.0f} | "
                                f"{rate / curl_rate:.2f} | {rss_text} |")
                print("\n".join(rows[-4:]), flush=True)
                for number, (curl_run, gateway_run, _) in enumerate(runs, 1):
                    print(f"#   {label} run {number} (load {curl_run['load']:.2f} before curl): curl "
                          f"{curl_run['seconds']:.2f} s ({curl_run['cpu']:.2f} s CPU), end to end "
                          f"{gateway_run['seconds']:.2f} s ({gateway_run['cpu']:.2f} s daemon CPU): "
                          f"{curl_run['seconds'] / gateway_run['seconds']:.2f}x curl's rate, daemon CPU "
                          f"{gateway_run['cpu'] / curl_run['cpu']:.1f}x curl's", flush=True)
                for what, key, index in (("curl", "seconds", 0), ("end to end", "seconds", 1),
                                         ("upload stage in the daemon", "upload_seconds", 1),
                                         ("upload stage alone", "seconds", 2)):
                    print(f"#   {label} {what}, every run (s): "
                          f"{' '.join(f'{run[index][key]:.2f}' for run in runs)}", flush=True)
            latency = measure_latency(bench, sizes.latency_files, sizes.latency_records)
        finally:
            bench.nginx.stop()
    samples = [s * 1000 for s in cast("list[float]", latency["samples"])]
    print()
    print("## Throughput (MB = 10^6 bytes; ratio = rate / curl's rate; peak RSS = VmHWM of that process)")
    print()
    print("| file | what | seconds | MB/s | × curl | peak RSS |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    print()
    print(f"## Latency: {sizes.latency_files} files × {sizes.latency_records:,} records "
          f"({sizes.latency_records * RECORD / 1e3:.0f} kB), one at a time, rename into the outbox → final name "
          "at the peer")
    print()
    print("| p50 | p90 | p99 | max | mean upload stage (sender) | daemon peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {percentile(samples, 50):.0f} ms | {percentile(samples, 90):.0f} ms | {percentile(samples, 99):.0f} ms "
          f"| {max(samples):.0f} ms | {latency['upload_mean'] * 1000:.0f} ms "  # type: ignore[operator]
          f"| {latency['peak_rss'] / 1e6:.0f} MB |")  # type: ignore[operator]
    print()
    print(f"latency samples (ms): {' '.join(f'{s:.0f}' for s in samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
