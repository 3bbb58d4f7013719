"""Benchmark (issue 11): a legitimate push while a listed peer floods the push listener.

One real daemon (``python -m kei_gateway -c CONFIG run``, as ``bench/relay.py`` starts it),
``[peers.mpn]`` trusting the demo CA with ``push_allow = ["127.0.0.0/29"]`` and the push
listener's default limits. Two phases of ``--pushes`` pushes (default 20) of 1,000 速報 each,
one every ``--interval`` seconds (default 1.25, so a phase spans more than two body-rate
windows), each on a new TLS connection from ``127.0.0.2`` with the demo peer's certificate:

* **baseline**: nothing else happens;
* **under flood**: from ``127.0.0.1`` with the same (listed, valid) certificate, two
  connections trickle a body byte every 2 s and 50 connections send a PUT's headers and
  no body; whatever the gateway closes is opened again every second, for the whole phase.

For each phase: the time from connecting to the ``201`` (p50, max), the statuses, and the
growth of ``kei_gateway_denied_connections_total{listener="push"}`` by reason. The ratio is
the flood's p50 over the baseline's. Figures go in ``docs/performance.md``.

Run: ``.venv/bin/python bench/push_flood.py [--pushes N] [--interval S]`` (about a minute).
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from relay import BatchMaker, client_context, start_gateway  # noqa: E402
from relay import configure as relay_configure  # noqa: E402
from upload import machine, percentile, stop_gateway  # noqa: E402

from kei_gateway.sim.harness import free_port  # noqa: E402
from tests.integration.harness import DaemonProcess, GatewayFiles, make_gateway_files  # noqa: E402

HOSTILE, LEGITIMATE = "127.0.0.1", "127.0.0.2"
TRICKLERS, HEADER_ONLY = 2, 50


def configure(files: GatewayFiles, push_port: int) -> None:
    """The relay bench's config, pushes allowed from 127.0.0.0/29 (the flood and the legitimate sources)."""
    relay_configure(files, push_port, push_allow="127.0.0.0/29")


def denied(daemon: DaemonProcess) -> dict[str, float]:
    _, body = daemon.get("/metrics")
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith('kei_gateway_denied_connections_total{listener="push"'):
            key, _, value = line.rpartition(" ")
            values[key.split('reason="')[1].split('"')[0]] = float(value)
    return values


def push_once(port: int, context: ssl.SSLContext, name: str, body: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60,
                                             source_address=(LEGITIMATE, 0))
    try:
        connection.request("PUT", f"/push/mpn-results/{name}", body=body)
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    except (OSError, http.client.HTTPException):
        return 0, time.perf_counter() - started
    finally:
        connection.close()


class Flood:
    """Keeps TRICKLERS trickling and HEADER_ONLY header-only connections open from HOSTILE until stopped."""

    def __init__(self, port: int, context: ssl.SSLContext, body_length: int) -> None:
        self.port, self.context, self.body_length = port, context, body_length
        self.stop = threading.Event()
        self.tricklers: list[ssl.SSLSocket | None] = [None] * TRICKLERS
        self.header_only: list[ssl.SSLSocket | None] = [None] * HEADER_ONLY
        self.opened = 0
        self.thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def _open(self, name: str, first: bytes) -> ssl.SSLSocket | None:
        try:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(HOSTILE, 0))
        except OSError:
            return None
        try:
            wrapped = self.context.wrap_socket(raw, server_hostname="127.0.0.1")
            wrapped.sendall(f"PUT /push/mpn-results/{name} HTTP/1.1\r\nHost: gateway\r\n"
                            f"Content-Length: {self.body_length}\r\n\r\n".encode() + first)
            wrapped.setblocking(False)
            self.opened += 1
            return wrapped
        except (OSError, ssl.SSLError):
            raw.close()
            return None

    @staticmethod
    def _alive(connection: ssl.SSLSocket | None) -> bool:
        if connection is None:
            return False
        try:
            if connection.recv(1024) == b"":
                connection.close()
                return False
            connection.close()  # the gateway answered (408, 503): it will close
            return False
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            connection.close()
            return False

    def _run(self) -> None:
        tick = 0
        while not self.stop.is_set():
            for n in range(TRICKLERS):
                if not self._alive(self.tricklers[n]):
                    self.tricklers[n] = self._open(f"T{n}-{tick}.dat", b"0")
                elif tick % 2 == 0:
                    try:
                        self.tricklers[n].send(b"0")  # type: ignore[union-attr]
                    except (OSError, ssl.SSLError):
                        pass
            for n in range(HEADER_ONLY):
                if not self._alive(self.header_only[n]):
                    self.header_only[n] = self._open(f"H{n}-{tick}.dat", b"")
            tick += 1
            self.stop.wait(1.0)
        for connection in [*self.tricklers, *self.header_only]:
            if connection is not None:
                connection.close()


def phase(daemon: DaemonProcess, port: int, context: ssl.SSLContext, maker: BatchMaker, label: str, pushes: int,
          interval: float, flood: bool) -> dict[str, object]:
    bodies = [maker.batch(1000) for _ in range(pushes)]
    before = denied(daemon)
    attack = Flood(port, context, len(bodies[0])) if flood else None
    if attack is not None:
        attack.thread.start()
        time.sleep(2.0)  # the flood is in place before the first push
    times, statuses = [], {}
    t0 = time.perf_counter()
    try:
        for n, body in enumerate(bodies):
            wait = t0 + n * interval - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            status, seconds = push_once(port, context, f"{label}-{n:03d}-{os.getpid()}.dat", body)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 201:
                times.append(seconds)
    finally:
        if attack is not None:
            attack.stop.set()
            attack.thread.join()
    after = denied(daemon)
    growth = {reason: after.get(reason, 0) - before.get(reason, 0) for reason in after}
    return {"label": label, "times": times, "statuses": statuses, "denied": {k: v for k, v in growth.items() if v},
            "opened": attack.opened if attack is not None else 0, "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=20, help="legitimate pushes per phase (default 20)")
    parser.add_argument("--interval", type=float, default=1.25, help="seconds between them (default 1.25)")
    args = parser.parse_args(argv)
    print(f"# kei-gateway push flood benchmark — {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# {machine()}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    maker = BatchMaker()
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kei-bench-flood-", dir=ROOT / "bench" / "out") as tmp:
        files = make_gateway_files(Path(tmp) / "gateway")
        port = free_port()
        configure(files, port)
        context = client_context(files.base / "credentials")
        daemon = start_gateway(files)
        try:
            rows = [phase(daemon, port, context, maker, "baseline", args.pushes, args.interval, flood=False),
                    phase(daemon, port, context, maker, "flood", args.pushes, args.interval, flood=True)]
        finally:
            stop_gateway(daemon)
    print()
    print(f"## A legitimate push (1,000 results, from {LEGITIMATE}) while {HOSTILE} floods ({TRICKLERS} trickling, "
          f"{HEADER_ONLY} header-only connections, reopened every second)")
    print()
    print("| phase | 201 | other statuses | p50 to 201 | max to 201 | hostile connections opened | "
          "refusals counted (reason: n) | load |")
    print("|---|---:|---|---:|---:|---:|---|---:|")
    for row in rows:
        times = row["times"]
        statuses = dict(row["statuses"])  # type: ignore[call-overload]
        ok = statuses.pop(201, 0)
        p50 = percentile(times, 50) if times else float("nan")  # type: ignore[arg-type]
        worst = max(times) if times else float("nan")  # type: ignore[type-var]
        refusals = ", ".join(f"{k}: {v:.0f}" for k, v in sorted(row["denied"].items())) or "–"  # type: ignore[union-attr]
        print(f"| {row['label']} | {ok} | {statuses or '–'} | {p50 * 1000:.0f} ms | {worst * 1000:.0f} ms | "
              f"{row['opened']} | {refusals} | {row['load']:.2f} |")
    base, flood = rows
    if base["times"] and flood["times"]:
        ratio = percentile(flood["times"], 50) / percentile(base["times"], 50)  # type: ignore[arg-type]
        print()
        print(f"- p50 under flood / baseline: {ratio:.2f}×; every legitimate push 201: "
              f"{'yes' if set(flood['statuses']) == {201} else 'NO'}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
