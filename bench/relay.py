"""Benchmark (issue 5): payment-result relay throughput and latency, pushed 速報 → inbox.

One run, one real daemon (``python -m kei_gateway -c CONFIG run``, started with the
``tests/integration/harness.py`` helpers) on loopback with the embedded SQLite ledger,
``[listeners.push]`` on a free loopback port, ``[peers.mpn]`` trusting the demo
``ca.pem`` with ``push_allow = ["127.0.0.1/32"]`` and ``[flows.mpn-results]`` (its pull
side points at a closed loopback port and polls once an hour, so only pushes relay).

* **pusher**: ``--clients`` threads (default 2: one address may hold half of ``max_pushes``, 4),
  each with one keep-alive ``http.client.HTTPSConnection`` presenting ``peer-sim.crt`` (the
  demo CA signs it, as it signs the MPN simulator's pushes). For each target rate R
  (results/s) batches of B 速報 (収納区分 1) records are pushed open-loop: batch k is due at
  ``t0 + k·B/R`` whatever happened to the batches before; a client that is late sends at
  once. B is ``R/10`` (10 batches a second, at least 25 records) unless ``--batch`` says.
  Every record of a run is distinct (the 納付書番号 carries a run prefix and a counter), so
  every result is new and relayed exactly once. A ``503`` is counted, not retried.
* **external latency**: from the start of a batch's ``PUT`` until its relayed file appears
  under its final name in ``inbox/mpn-results/`` (inotify ``IN_MOVED_TO`` on the inbox,
  timestamped when the event is read; the file is matched to its batch by its first record,
  then deleted, as the tax system would take it). It includes the TLS request, the store
  write with fsync, the ledger commits, the relay (fsynced ``.part``, one transaction,
  rename, fsync of the directory) and any wait behind earlier files.
* **daemon latency**: ``kei_gateway_relay_latency_seconds`` (push request received →
  new results durable in the inbox) from ``/metrics``, the bucket deltas of each rate step,
  p50/p99 interpolated linearly inside the bucket as Prometheus' ``histogram_quantile`` does
  (so they are only as fine as the buckets: 5, 10, 25, 50, 100, 250 ms ...).
* **throughput**: results relayed (counted in the inbox files) divided by
  ``max(schedule length, last relayed file − t0)``; it equals R when the daemon keeps up.
  The check: ``kei_gateway_payment_results_total{kind="provisional",outcome="relayed"}``
  grew by the same count.

After each run the pusher waits (bounded) for every accepted batch to be relayed. Each rate
is run ``--runs`` times (default 3; issue 16), each run reported with ``/proc/loadavg`` at
its start. The rates stop rising once the daemon falls behind: under 90 % of R relayed,
any ``503``, or a batch not relayed in time.

**Breakdown of the slowest requests** (issue 16): the daemon runs with
``$KEI_BENCH_TIMELINE`` set to the bench's temporary directory, so it writes a timeline per
push (monotonic stamps of each stage, by transfer id; :mod:`kei_gateway.runtime.timeline`)
and every reactor tick more than 5 ms late. The bench matches each inbox file to its push by
the transfer id in the file's name and prints, for each rate, the slowest 1 % (at least 5)
and each run's median request by stage, then each stage's share of the slowest requests'
time — the evidence that holds on a shared, loaded machine.

**Maximum-size push** (``--max-push``, issue 11): one daemon; first a baseline push of
10,000 results, then one push of 1,000,000 results (258 MB, under the 256 MiB body limit),
each streamed from a file over one connection; for each, the time to the ``201`` and to
the relayed file in the inbox, and the daemon's peak RSS (``VmHWM`` in
``/proc/<pid>/status``) after it — the ratio is the maximum push's peak over the
baseline's. The target is a peak under 150 MB (it was 3.7 GB before the relay streamed).

**Ledger** (issue 16): SQLite by default; ``--postgresql`` runs the daemon on a throwaway
PostgreSQL cluster (``tests/pg.py``, unix socket) restarted with ``fsync``,
``synchronous_commit`` and ``full_page_writes`` on, as a production ledger runs. The daemon's
peak RSS (``VmHWM``) is printed at READY and after the run.

Run: ``.venv/bin/python bench/relay.py [--quick] [--rates 250,500,...] [--seconds S] [--postgresql]``
(about a minute; ``--quick``: 2 s at 100 and 250 results/s, about 6 s).
``KEI_BENCH_PROFILE=DIR`` runs the daemon under cProfile (every thread) and writes
``DIR/relay.prof``. Figures go in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import ctypes.util
import http.client
import json
import os
import re
import secrets
import select
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from upload import (  # noqa: E402
    _drain_notifications,
    _start_profiled_daemon,
    machine,
    percentile,
    stop_gateway,
    vm_hwm_bytes,
)

from kei_gateway.core.jst import today_in_jst  # noqa: E402
from kei_gateway.layouts import get_layout  # noqa: E402
from kei_gateway.layouts.engine import render_record  # noqa: E402
from kei_gateway.layouts.generator import generate_records  # noqa: E402
from kei_gateway.sim.harness import free_port  # noqa: E402
from tests.integration.harness import DaemonProcess, GatewayFiles, make_gateway_files, start_daemon  # noqa: E402

LAYOUT = get_layout("mpn-results")
RECORD = LAYOUT.record_length
FULL_RATES = (250, 500, 1000, 2000, 4000, 8000)
QUICK_RATES = (100, 250)
BATCHES_PER_SECOND = 10
MIN_BATCH = 25
TEMPLATE_RECORDS = 1000
BEHIND = 0.9
"""A rate is kept up with when at least this share of it is relayed (and no 503, nothing left over)."""
TARGET_THROUGHPUT = 5000.0
TARGET_P99_RATE = 500
TARGET_P99_SECONDS = 0.020
"""Issue 16: p99 ≤ 20 ms on an idle machine (≤ 50 ms with the other core busy)."""
TARGET_P99_BUSY_SECONDS = 0.050
"""Issue 16: p99 ≤ 50 ms at 500 results/s with the machine's other core busy (``--busy-core``)."""
RUNS = 3
SLOWEST_SHARE = 0.01
"""The slowest 1 % of a rate's requests (at least :data:`SLOWEST_MIN`) get a breakdown."""
SLOWEST_MIN = 5
STAGES = (("tls+headers", None, "received"), ("body", "received", "body"), ("store+fsync", "body", "stored"),
          ("commit", "stored", "committed"), ("relay queue", "committed", "relay_start"),
          ("read+lookup", "relay_start", "looked_up"), ("stage .part+fsyncs", "looked_up", "staged"),
          ("relay commit", "staged", "recorded"), ("rename+dir fsync", "recorded", "published"),
          ("to reactor", "published", "done"))
"""The breakdown's columns: (label, from stamp, to stamp); None is the PUT start (see runtime/timeline.py).
Before issue 16's fixes "relay commit" was the results' commit and "to reactor" held the DONE commit too."""


# --------------------------------------------------------------------------- dummy 速報 batches


class BatchMaker:
    """Distinct valid 速報 records: generated templates whose 納付書番号 is replaced by run prefix + counter."""

    def __init__(self, seed: int = 5) -> None:
        today = today_in_jst(time.time())
        templates = []
        for record in generate_records(LAYOUT, TEMPLATE_RECORDS, seed=seed, today=today):
            record["result_kind"] = "1"  # 速報
            templates.append(render_record(LAYOUT, record))
        self.templates = templates
        self.slip_at = LAYOUT.offsets["slip_no"]
        self.slip_width = LAYOUT["slip_no"].width
        self.prefix = f"{secrets.randbelow(10 ** 5) + 1:05d}"
        self.counter = 0

    def batch(self, size: int) -> bytes:
        out = []
        for _ in range(size):
            self.counter += 1
            template = self.templates[self.counter % len(self.templates)]
            slip = f"{self.prefix}{self.counter:0{self.slip_width - len(self.prefix)}d}".encode()
            out.append(template[:self.slip_at] + slip + template[self.slip_at + self.slip_width:])
        return b"".join(out)


# --------------------------------------------------------------------------- the inbox, watched with inotify


_IN_MOVED_TO = 0x00000080
_IN_NONBLOCK = 0o4000
_EVENT = struct.Struct("iIII")


class InboxWatcher:
    """Timestamps each file that appears under its final name in *directory*, matches it by its first record.

    ``expect(first_record, started)`` registers a batch before it is sent; ``arrived`` maps
    each batch's first record to ``(PUT start, arrival, results in the file, transfer id)`` (``time.monotonic``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(_IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, str(directory).encode(), _IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self.lock = threading.Lock()
        self.started: dict[bytes, float] = {}
        self.arrived: dict[bytes, tuple[float, float, int, int]] = {}
        self.strays = 0
        self.results = 0
        self.last_arrival = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inbox-watch", daemon=True)
        self._thread.start()

    def expect(self, first_record: bytes, started: float) -> None:
        with self.lock:
            self.started[first_record] = started

    def reset(self) -> None:
        with self.lock:
            self.started.clear()
            self.arrived.clear()
            self.results = 0
            self.last_arrival = 0.0

    def count(self) -> int:
        with self.lock:
            return len(self.arrived)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            now = time.monotonic()  # the daemon's timeline stamps are time.monotonic too
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0").decode()
                offset += _EVENT.size + length
                if name.startswith(".") or name.endswith(".end"):
                    continue
                self._take(name, now)

    def _take(self, name: str, now: float) -> None:
        path = self.directory / name
        try:
            with open(path, "rb") as file:
                first = file.read(RECORD)
                size = os.fstat(file.fileno()).st_size
            path.unlink()
        except FileNotFoundError:
            return
        with self.lock:
            started = self.started.get(first)
            if started is None or first in self.arrived:
                self.strays += 1
                return
            transfer = name.rsplit("_", 1)[-1].removesuffix(".dat")  # <lg>_<flow>_<stamp>_<transfer id>.dat
            self.arrived[first] = (started, now, size // RECORD, int(transfer) if transfer.isdigit() else -1)
            self.results += size // RECORD
            self.last_arrival = max(self.last_arrival, now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self.fd)


# --------------------------------------------------------------------------- the pusher


@dataclass
class Step:
    rate: int
    batch: int
    seconds: float
    clients: int
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    late: float = 0.0
    """The largest delay of a send behind its due time (s)."""
    t0: float = 0.0
    put_seconds: list[float] = field(default_factory=list)
    """Each 201's PUT start → response (s)."""


def client_context(credentials: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(str(credentials / "ca.pem"))
    context.load_cert_chain(str(credentials / "peer-sim.crt"), str(credentials / "peer-sim.key"))
    return context


def push_step(port: int, context: ssl.SSLContext, watcher: InboxWatcher, maker: BatchMaker, step: Step,
              prefix: str) -> None:
    """Push ``step.rate`` results/s for ``step.seconds`` seconds, open loop, with ``step.clients`` connections."""
    count = max(1, round(step.rate * step.seconds / step.batch))
    bodies = [maker.batch(step.batch) for _ in range(count)]  # made before the clock starts
    interval = step.batch / step.rate
    lock = threading.Lock()
    next_index = [0]
    connections = [http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
                   for _ in range(step.clients)]
    for connection in connections:
        connection.connect()  # the handshakes are not timed
    step.t0 = t0 = time.monotonic() + 0.05

    def work(connection: http.client.HTTPSConnection) -> None:
        while True:
            with lock:
                index = next_index[0]
                if index >= count:
                    return
                next_index[0] += 1
            due = t0 + index * interval
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            body = bodies[index]
            started = time.monotonic()
            watcher.expect(body[:RECORD], started)
            try:
                connection.request("PUT", f"/push/mpn-results/{prefix}-{step.rate}-{index:06d}.dat", body=body,
                                   headers={"Content-Type": "application/octet-stream"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()  # reconnects on the next request
                with lock:
                    step.errors += 1
                continue
            answered = time.monotonic()
            with lock:
                step.statuses[status] = step.statuses.get(status, 0) + 1
                step.late = max(step.late, started - due)
                if status == 201:
                    step.put_seconds.append(answered - started)
            if response.will_close:
                connection.close()

    threads = [threading.Thread(target=work, args=(c,), name=f"pusher-{n}") for n, c in enumerate(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for connection in connections:
        connection.close()


# --------------------------------------------------------------------------- the daemon's metrics


def metric_values(daemon: DaemonProcess) -> dict[str, float]:
    """Every sample of the two metrics read here, by its text (``name{labels}``)."""
    _, body = daemon.get("/metrics")
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(("kei_gateway_relay_latency_seconds", "kei_gateway_payment_results_total")):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


_BUCKET = re.compile(r'^kei_gateway_relay_latency_seconds_bucket\{le="([^"]+)"\}$')


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> list[tuple[float, float]]:
    """``(upper bound, cumulative count)`` of the relay-latency buckets, after minus before."""
    buckets = []
    for key, value in after.items():
        found = _BUCKET.match(key)
        if found:
            bound = float("inf") if found.group(1) == "+Inf" else float(found.group(1))
            buckets.append((bound, value - before.get(key, 0.0)))
    return sorted(buckets)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Like Prometheus' ``histogram_quantile``: linear inside the bucket holding the q-th observation."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower  # above the largest finite bound: that bound, as Prometheus answers
            if cumulative == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


def relayed_total(values: dict[str, float]) -> float:
    return values.get('kei_gateway_payment_results_total{kind="provisional",outcome="relayed"}', 0.0)


# --------------------------------------------------------------------------- one run


@dataclass
class Row:
    step: Step
    relayed: int
    relayed_metric: float
    achieved: float
    missing: int
    external: list[float]
    daemon_p50: float | None
    daemon_p99: float | None
    load: float
    run: int = 1
    load_at_start: str = ""
    """``/proc/loadavg`` when the run started."""
    arrivals: list[tuple[float, float, int, int]] = field(default_factory=list)
    """``(PUT start, in the inbox, results, transfer id)`` of each relayed batch."""

    @property
    def kept_up(self) -> bool:
        return (self.achieved >= BEHIND * self.step.rate and self.missing == 0
                and not self.step.statuses.get(503) and not self.step.errors)


def durable_cluster() -> Any:
    """A throwaway PostgreSQL cluster (``tests/pg.py``) restarted with its durability on, as a real ledger runs:
    the tests' cluster has ``fsync``, ``synchronous_commit`` and ``full_page_writes`` off."""
    from tests.pg import start_cluster

    cluster = start_cluster()
    try:
        cluster.stop_server()
        cluster.options = (cluster.options.replace("-c fsync=off", "-c fsync=on")
                           .replace("-c synchronous_commit=off", "-c synchronous_commit=on")
                           .replace("-c full_page_writes=off", "-c full_page_writes=on"))
        cluster.start_server()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def configure(files: GatewayFiles, push_port: int, push_allow: str = "127.0.0.1/32",
              database_url: str | None = None) -> None:
    """The daemon's config for a push bench: ``[listeners.push]`` on *push_port*, pushes from *push_allow*; the
    ledger at *database_url* (``[database] url``) when given, else the default SQLite file."""
    credentials = files.base / "credentials"
    closed = free_port()  # nothing listens there: the pull side finds no peer
    database = f'\n[database]\nurl = "{database_url}"\n' if database_url else ""
    files.write_config(extra=database + f"""
[peers.mpn]
url = "https://127.0.0.1:{closed}/slips/"
results_url = "https://127.0.0.1:{closed}/results/"
ca = "{credentials}/ca.pem"
allow = ["127.0.0.1/32"]
push_allow = ["{push_allow}"]
connect_timeout = "2s"

[flows.mpn-results]
peer = "mpn"
inbox = "inbox/mpn-results"
poll_interval = "1h"

[listeners.push]
address = "127.0.0.1:{push_port}"
""")


def start_gateway(files: GatewayFiles, timeline_dir: Path | None = None) -> DaemonProcess:
    timeline = {"KEI_BENCH_TIMELINE": str(timeline_dir)} if timeline_dir is not None else {}
    profile_dir = os.environ.get("KEI_BENCH_PROFILE")
    if profile_dir:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        extra_env = {"KEI_BENCH_PROFILE_OUT": str(Path(profile_dir).resolve() / "relay.prof"),
                     "PYTHONPATH": str(Path(__file__).resolve().parent) + os.pathsep + str(ROOT),
                     "PYTHONSTARTUP": "", **timeline}
        daemon = _start_profiled_daemon(files, extra_env)
    else:
        daemon = start_daemon(files, watchdog_usec=None, extra_env=timeline)
    daemon.notify.wait_for("READY=1", timeout=60)
    _drain_notifications(daemon)
    return daemon


def wait_relayed(watcher: InboxWatcher, accepted: int, timeout: float, daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + timeout
    while watcher.count() < accepted and time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise SystemExit(f"the daemon exited ({daemon.process.returncode}):\n{daemon.stderr()[-3000:]}")
        time.sleep(0.01)


def run_step(daemon: DaemonProcess, port: int, context: ssl.SSLContext, watcher: InboxWatcher, maker: BatchMaker,
             step: Step, prefix: str, run: int = 1) -> Row:
    load_at_start = Path("/proc/loadavg").read_text().strip()
    watcher.reset()
    before = metric_values(daemon)
    push_step(port, context, watcher, maker, step, f"{prefix}-{run}")
    accepted = step.statuses.get(201, 0)
    wait_relayed(watcher, accepted, max(30.0, 3 * step.seconds), daemon)
    time.sleep(0.05)  # the metrics are updated right after the rename's fsync
    after = metric_values(daemon)
    with watcher.lock:
        arrivals = list(watcher.arrived.values())
        results, last = watcher.results, watcher.last_arrival
    schedule = max(1, round(step.rate * step.seconds / step.batch)) * step.batch / step.rate
    window = max(schedule, last - step.t0) if arrivals else schedule
    buckets = histogram_delta(before, after)
    return Row(step, results, relayed_total(after) - relayed_total(before), results / window,
               accepted - len(arrivals), [arrival - start for start, arrival, _, _ in arrivals],
               histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets), os.getloadavg()[0], run,
               load_at_start, arrivals)


# --------------------------------------------------------------------------- report


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f}" if value >= 0.0995 else f"{value * 1000:.1f}"


def row_text(row: Row) -> str:
    step, samples = row.step, row.external
    other = sum(n for status, n in step.statuses.items() if status not in (201, 503)) + step.errors
    external = (f"{ms(percentile(samples, 50))} | {ms(percentile(samples, 99))} | {ms(max(samples))}"
                if samples else "– | – | –")
    return (f"| {step.rate:,} | {row.run} | {step.batch} | {row.achieved:,.0f} | {step.statuses.get(201, 0)} | "
            f"{step.statuses.get(503, 0)} | {other} | {row.missing} | {external} | "
            f"{ms(row.daemon_p50)} | {ms(row.daemon_p99)} | {ms(step.late)} | {row.load_at_start} |")


def verdict(rows: list[Row], busy: bool = False) -> list[str]:
    sustained = [row for row in rows if row.kept_up]
    best = max((row.achieved for row in sustained), default=0.0)
    lines = [f"- sustained throughput: {best:,.0f} results/s (highest rate kept up with: ≥ {BEHIND:.0%} relayed, "
             f"no 503, nothing left over) — target ≥ {TARGET_THROUGHPUT:,.0f}: "
             f"{'met' if best >= TARGET_THROUGHPUT else 'NOT met'}"]
    at = [row for row in rows if row.step.rate == TARGET_P99_RATE and row.external]
    target, condition = (TARGET_P99_BUSY_SECONDS, "with the other core busy") if busy else \
        (TARGET_P99_SECONDS, "on an idle machine")
    for row in at:
        p99 = percentile(row.external, 99)
        lines.append(f"- p99 at {TARGET_P99_RATE} results/s, run {row.run} (load at start {row.load_at_start}): "
                     f"{ms(p99)} ms external (PUT start → inbox), {ms(row.daemon_p99)} ms in the daemon's histogram "
                     f"— target ≤ {target * 1000:.0f} ms {condition}: {'met' if p99 <= target else 'NOT met'}")
    if not at:
        lines.append(f"- p99 at {TARGET_P99_RATE} results/s: not measured (rate not in this run)")
    return lines


def read_timeline(path: Path) -> tuple[dict[int, dict[str, float]], list[tuple[float, float]],
                                        list[tuple[float, float]]]:
    """The daemon's timeline file: stamps by transfer id, the reactor stalls and the GC pauses as ``(end, seconds)``."""
    pushes: dict[int, dict[str, float]] = {}
    stalls: list[tuple[float, float]] = []
    pauses: list[tuple[float, float]] = []
    if not path.exists():
        return pushes, stalls, pauses
    for line in path.read_text().splitlines():
        item = json.loads(line)
        if "stall" in item:
            stalls.append((item["at"], item["stall"]))
        elif "gc" in item:
            pauses.append((item["at"], item["gc"]))
        elif item.get("push") is not None:
            pushes[item.pop("push")] = item
    return pushes, stalls, pauses


def breakdown(rows: list[Row], timeline: Path) -> list[str]:
    """For each rate: the slowest requests' time by stage (ms and share), next to the median request's shares.

    Shares, not absolute times, are the evidence that holds on a shared machine: they say which stage
    a slow request spent its time in. ``stalls`` is the reactor lateness (ticks > 5 ms late) inside
    the request's window; ``inbox seen`` is published → the bench's inotify read.
    """
    pushes, stalls, pauses = read_timeline(timeline)
    if not pushes:
        return ["(no timeline: the daemon did not write one)"]
    labels = [label for label, _, _ in STAGES] + ["inbox seen"]
    out = ["| rate | run | request | total ms | " + " | ".join(labels) + " | reactor stalls ms | GC pauses ms |",
           "|---:|---:|---|---:|" + "---:|" * len(labels) + "---:|---:|"]
    summary = []
    for rate in sorted({row.step.rate for row in rows}):
        slow_parts: list[list[float]] = []
        median_parts: list[list[float]] = []
        for row in (r for r in rows if r.step.rate == rate):
            timed = sorted((arrival - start, start, arrival, transfer) for start, arrival, _, transfer in row.arrivals
                           if transfer in pushes)
            if not timed:
                continue
            count = max(SLOWEST_MIN, round(SLOWEST_SHARE * len(timed)))
            chosen = [("median", timed[len(timed) // 2])] + [("slow", item) for item in timed[-count:]]
            for kind, (total, start, arrival, transfer) in chosen:
                stamps = dict(pushes[transfer], _start=start)
                parts = [stamps.get(b, float("nan")) - stamps.get(a or "_start", float("nan")) for _, a, b in STAGES]
                parts.append(arrival - stamps.get("published", float("nan")))
                stalled = sum(late for end, late in stalls if start < end <= arrival)
                collected = sum(took for end, took in pauses if start < end <= arrival)
                (slow_parts if kind == "slow" else median_parts).append(parts)
                out.append(f"| {rate:,} | {row.run} | {kind} #{transfer} | {total * 1000:.1f} | "
                           + " | ".join(f"{part * 1000:.1f}" for part in parts) + f" | {stalled * 1000:.1f} | {collected * 1000:.1f} |")
        for kind, group in (("slowest", slow_parts), ("median", median_parts)):
            sums = [sum(p[i] for p in group if p[i] == p[i]) for i in range(len(labels))]
            whole = sum(sums) or 1.0
            summary.append(f"- {rate:,}/s, {kind} requests ({len(group)}): "
                           + ", ".join(f"{label} {share / whole:.0%}" for label, share in zip(labels, sums)
                                       if share / whole >= 0.02))
    summary.append(f"- the whole run: {len(stalls)} reactor ticks more than 5 ms late ({sum(x for _, x in stalls):.3f} s "
                   f"in all, longest {max((x for _, x in stalls), default=0) * 1000:.0f} ms); {len(pauses)} GC pauses "
                   f"over 5 ms ({sum(x for _, x in pauses):.3f} s, longest "
                   f"{max((x for _, x in pauses), default=0) * 1000:.0f} ms)")
    return out + [""] + summary


MAX_PUSH_RESULTS = 1_000_000
BASELINE_PUSH_RESULTS = 10_000
MAX_PUSH_TARGET_BYTES = 150 * 1000 * 1000


def push_file(port: int, context: ssl.SSLContext, path: Path, name: str) -> tuple[int, float]:
    """PUT *path* (streamed from disk in 1 MiB blocks) as *name*; the status and the seconds to the answer."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=900, blocksize=1 << 20)
    started = time.perf_counter()
    try:
        with path.open("rb") as body:
            connection.request("PUT", f"/push/mpn-results/{name}", body=body,
                               headers={"Content-Type": "application/octet-stream",
                                        "Content-Length": str(path.stat().st_size)})
            response = connection.getresponse()
            response.read()
            return response.status, time.perf_counter() - started
    finally:
        connection.close()


def wait_for_inbox_file(inbox: Path, before: set[str], timeout: float, daemon: DaemonProcess) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise SystemExit(f"the daemon exited ({daemon.process.returncode}):\n{daemon.stderr()[-3000:]}")
        if {n for n in os.listdir(inbox) if not n.startswith(".")} - before:
            return time.perf_counter()
        time.sleep(0.05)
    raise SystemExit(f"no relayed file in {inbox} within {timeout:g} s")


def max_push() -> int:
    """The maximum-size push (see the module docstring); prints one table and the verdict."""
    print(f"# kei-gateway maximum-size push benchmark — {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# {machine()}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    maker = BatchMaker()
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kei-bench-maxpush-", dir=ROOT / "bench" / "out") as tmp:
        files = make_gateway_files(Path(tmp) / "gateway")
        port = free_port()
        configure(files, port)
        inbox = files.base / "spool" / "inbox" / "mpn-results"
        inbox.mkdir(parents=True, exist_ok=True)
        context = client_context(files.base / "credentials")
        daemon = start_gateway(files)
        try:
            ready_peak = vm_hwm_bytes(daemon.process.pid)
            for label, results in (("baseline", BASELINE_PUSH_RESULTS), ("maximum", MAX_PUSH_RESULTS)):
                path = Path(tmp) / f"{label}.dat"
                with path.open("wb") as out:
                    for start in range(0, results, 10_000):
                        out.write(maker.batch(min(10_000, results - start)))
                before = set(os.listdir(inbox))
                started = time.perf_counter()
                status, answered = push_file(port, context, path, f"{label}.dat")
                if status != 201:
                    raise SystemExit(f"the {label} push was answered {status}")
                relayed = wait_for_inbox_file(inbox, before, 1800, daemon) - started
                rows.append((label, results, path.stat().st_size, answered, relayed,
                             vm_hwm_bytes(daemon.process.pid), os.getloadavg()[0]))
                path.unlink()
                print(f"# {label}: {results:,} results pushed in {answered:.1f} s, relayed after {relayed:.1f} s, "
                      f"daemon peak RSS {rows[-1][5] / 1e6:.0f} MB", flush=True)
        finally:
            stop_gateway(daemon)
    print()
    print(f"## Maximum-size push (peak RSS = the daemon's VmHWM after each push; {ready_peak / 1e6:.0f} MB at READY)")
    print()
    print("| push | results | bytes | 201 after s | in the inbox after s | daemon peak RSS MB | load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, results, size, answered, relayed, peak, load in rows:
        print(f"| {label} | {results:,} | {size:,} | {answered:.1f} | {relayed:.1f} | {peak / 1e6:.0f} | {load:.2f} |")
    peak = rows[-1][5]
    print()
    print(f"- peak RSS ratio maximum/baseline: {peak / rows[0][5]:.2f}×")
    print(f"- peak RSS with the maximum push: {peak / 1e6:.0f} MB — target < {MAX_PUSH_TARGET_BYTES / 1e6:.0f} MB: "
          f"{'met' if peak < MAX_PUSH_TARGET_BYTES else 'NOT met'}")
    return 0


class BusyCore:
    """``--busy-core`` (issue 16): a CPU hog — a child Python spinning — pinned to the machine's last core for the
    whole run, so "p99 with the other core busy" is measured; the daemon and the pusher are not pinned (the
    kernel schedules them on whatever core is free). Its CPU time at the end shows it really ran."""

    SPIN = ("import os, sys\n"
            "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
            "while True:\n"
            "    pass\n")

    def __init__(self) -> None:
        self.cpu = max(os.sched_getaffinity(0))
        self.process = subprocess.Popen([sys.executable, "-c", self.SPIN, str(self.cpu)])
        self.started = time.monotonic()
        atexit.register(self.process.kill)  # never left spinning, whatever ends the bench

    def describe(self) -> str:
        return f"a CPU hog (pid {self.process.pid}) spinning, pinned to CPU {self.cpu} of {os.cpu_count()}"

    def cpu_seconds(self) -> float:
        """The hog's user + system CPU time so far (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> str:
        used, wall = self.cpu_seconds(), time.monotonic() - self.started
        self.process.kill()
        self.process.wait()
        return f"the CPU hog used {used:.1f} s of CPU in {wall:.1f} s ({used / wall:.0%} of its core)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s at 100 and 250 results/s (a smoke run)")
    parser.add_argument("--rates", help="comma-separated target rates in results/s (default 250,...,8000)")
    parser.add_argument("--seconds", type=float, help="push duration per rate (default 10, 2 with --quick)")
    parser.add_argument("--batch", type=int, help=f"results per batch (default rate/{BATCHES_PER_SECOND}, "
                                                  f"at least {MIN_BATCH})")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs of each rate (default {RUNS})")
    parser.add_argument("--clients", type=int, default=2, help="concurrent pushing connections (default 2)")
    parser.add_argument("--all-rates", action="store_true", help="keep raising the rate after it falls behind")
    parser.add_argument("--postgresql", action="store_true",
                        help="the ledger on a throwaway PostgreSQL cluster (tests/pg.py) with fsync and "
                             "synchronous_commit on, instead of SQLite")
    parser.add_argument("--busy-core", action="store_true",
                        help="a CPU hog pinned to the last core for the whole run (issue 16: p99 ≤ 50 ms at "
                             "500 results/s with the other core busy)")
    parser.add_argument("--max-push", action="store_true",
                        help=f"one push of {MAX_PUSH_RESULTS:,} results after a baseline of "
                             f"{BASELINE_PUSH_RESULTS:,}: times and the daemon's peak RSS")
    args = parser.parse_args(argv)
    if args.max_push:
        return max_push()
    rates = tuple(int(r) for r in args.rates.split(",")) if args.rates else QUICK_RATES if args.quick else FULL_RATES
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    print(f"# kei-gateway relay benchmark — {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# {machine()}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ledger = "PostgreSQL ledger (throwaway cluster, fsync on)" if args.postgresql else "SQLite ledger"
    print(f"# {args.clients} pushing connection(s), {seconds:g} s per rate, open loop; {ledger}", flush=True)
    hog = BusyCore() if args.busy_core else None
    print(f"# other core: {hog.describe() if hog else 'nothing of the bench (no --busy-core)'}", flush=True)
    cluster = durable_cluster() if args.postgresql else None
    rows: list[Row] = []
    maker = BatchMaker()
    prefix = secrets.token_hex(3)
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kei-bench-relay-", dir=ROOT / "bench" / "out") as tmp:
        files = make_gateway_files(Path(tmp) / "gateway")
        port = free_port()
        configure(files, port, database_url=cluster.create_database("bench_relay") if cluster else None)
        inbox = files.base / "spool" / "inbox" / "mpn-results"
        inbox.mkdir(parents=True, exist_ok=True)
        watcher = InboxWatcher(inbox)
        context = client_context(files.base / "credentials")
        daemon = start_gateway(files, Path(tmp))
        ready_rss = vm_hwm_bytes(daemon.process.pid)
        peak_rss = ready_rss
        try:
            for rate in rates:
                batch = args.batch or max(MIN_BATCH, rate // BATCHES_PER_SECOND)
                for run in range(1, args.runs + 1):
                    row = run_step(daemon, port, context, watcher, maker,
                                   Step(rate, batch, seconds, args.clients), prefix, run)
                    rows.append(row)
                    print(f"# {rate:,}/s run {run} (load at start {row.load_at_start}): {row.relayed:,} results "
                          f"relayed ({row.relayed_metric:,.0f} by the daemon's counter), {row.achieved:,.0f}/s, "
                          f"statuses {dict(sorted(row.step.statuses.items()))}, errors {row.step.errors}, "
                          f"not relayed {row.missing}, strays {watcher.strays}", flush=True)
                    if not row.kept_up:
                        break
                if not row.kept_up and not args.all_rates:
                    print(f"# the daemon fell behind at {rate:,} results/s: no higher rate is tried", flush=True)
                    break
            peak_rss = vm_hwm_bytes(daemon.process.pid)
        finally:
            watcher.close()
            stop_gateway(daemon)
            if cluster is not None:
                cluster.stop()
            hog_used = hog.stop() if hog is not None else ""
        slowest = breakdown(rows, Path(tmp) / "timeline.jsonl")
    print()
    print("## Relay: pushed 速報 → inbox (ms; external = PUT start → file in the inbox; daemon = "
          "kei_gateway_relay_latency_seconds, interpolated in its buckets)")
    print()
    print("| target results/s | run | batch | relayed results/s | 201 | 503 | other | not relayed | external p50 | "
          "external p99 | external max | daemon p50 | daemon p99 | max send lag | /proc/loadavg at its start |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row_text(row))
    print()
    print("\n".join(verdict(rows, busy=hog is not None)))
    if hog_used:
        print(f"- other core busy: {hog_used}")
    print(f"- peak RSS of the daemon (VmHWM): {peak_rss / 1e6:.0f} MB after the run, {ready_rss / 1e6:.0f} MB at READY "
          f"— target < 150 MB: {'met' if peak_rss < 150e6 else 'NOT met'}")
    print()
    print("## The slowest requests (and each run's median) by stage, ms (daemon timeline, $KEI_BENCH_TIMELINE)")
    print()
    print("\n".join(slowest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
