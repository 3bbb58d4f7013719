"""Benchmark (issue 15): failover time of two gateway nodes on one PostgreSQL, and their relay throughput.

One invocation, one throwaway PostgreSQL cluster (``tests/pg.py``); each part gets a fresh database, a fresh
shared spool/state directory and fresh simulators, and two real daemons ``gw-a`` and ``gw-b`` sharing them.

**Failover**, for each lease of ``--leases`` (default ``15,3``: the default lease and a short one): the JNKS
simulator on loopback holds every response ``--delay`` seconds (so an upload is in flight long enough to kill
its node). Each of ``--trials`` trials (default 20) drops one valid payment file into the shared outbox, waits
until it is SENDING under a node's lease, kills that node with SIGKILL and times until the other node has taken
the transfer over and committed it SENDING again — the commit that immediately precedes the first byte of its
new PUT (the simulator's request log has one-second resolution, so the ledger's commit is the finer clock).
The transfer is then waited for DONE, the killed node started again (READY=1) for the next trial, and at the
end exactly one copy per file is checked at the peer. Reported per lease: p50, p99 and max, and p99 / (2 ×
lease) — the target of issue 15 is ≤ 1.0.

**Relay throughput, two nodes against one** (``--relay-runs`` runs of each, alternated, lease 15 s): both
nodes run with ``[listeners.push]`` and ``[flows.mpn-results]`` (its pull side at a closed port, polled once
an hour: only pushes relay). A phase pushes ``--relay-pushes`` files of ``--relay-batch`` distinct 速報 each,
closed loop, with ``--relay-clients`` keep-alive connections per listener (2: the most one source address may
hold of the default ``max_pushes`` 4): **one node** sends every push to gw-a's listener, **two nodes** split
them across gw-a's and gw-b's (as the MPN centre does with both addresses configured). Throughput = results
/ (first PUT → every pushed file's transfer DONE in the ledger); the daemons' CPU seconds (utime + stime, both
processes) per 1,000 results beside it. The ratio is two nodes over one node (target ≥ 1.0).

Run: ``.venv/bin/python bench/ha.py [--leases 15,3] [--trials 20] [--skip-failover] [--skip-relay]``
(about 20 minutes with the defaults). Figures go in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import signal
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from relay import BatchMaker, client_context  # noqa: E402
from sqlalchemy import Engine, func, select  # noqa: E402

from kei_gateway.adapters.ledger import create_ledger_engine  # noqa: E402
from kei_gateway.adapters.ledger.models import LeaseRow, Transfer  # noqa: E402
from kei_gateway.sim.harness import free_port, mpn_flow_config_text  # noqa: E402
from tests.integration.harness import DaemonProcess, GatewayFiles, SimProcess, make_gateway_files, start_daemon, \
    start_jnks_sim  # noqa: E402
from tests.pg import Cluster, start_cluster  # noqa: E402

T = TypeVar("T")
NODES = ("gw-a", "gw-b")


def wait(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def load() -> str:
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Pair:
    """Two daemons on one fresh database and one fresh shared directory, against *sim*."""

    def __init__(self, base: Path, pg: Cluster, database: str, lease: float, sim: SimProcess,
                 extra: Callable[[Path, str], str] = lambda shared, node: "") -> None:
        from tests.integration.test_two_nodes import node_config
        import tests.integration.test_two_nodes as two_nodes

        two_nodes.LEASE = lease  # node_config writes the lease from there
        self.url = pg.create_database(database)
        self.engine: Engine = create_ledger_engine(self.url)
        self.shared, self.sim = base / "shared", sim
        self.files: dict[str, GatewayFiles] = {}
        self.daemons: dict[str, DaemonProcess] = {}
        for node in NODES:
            (base / node).mkdir()
            files = GatewayFiles(base / node, base / node / "kei-gateway.toml", free_port())
            text = node_config(self.shared, node, files.metrics_port, sim.url, self.url) + extra(self.shared, node)
            files.config.write_text(text, encoding="utf-8")
            self.files[node] = files
            self.start(node)

    def start(self, node: str) -> None:
        self.daemons[node] = start_daemon(self.files[node], watchdog_usec=None)
        self.daemons[node].notify.wait_for("READY=1", timeout=60)

    def close(self) -> None:
        for daemon in self.daemons.values():
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(timeout=30)
            daemon.notify.close()
        self.engine.dispose()


# --------------------------------------------------------------------------- failover


def failover(base: Path, pg: Cluster, lease: float, trials: int, delay: int, records: int) -> list[float]:
    from tests.integration.test_two_nodes import drop

    shared = base / "shared"
    sim = start_jnks_sim(make_gateway_files(shared), "--fault", f"delay_seconds={delay}")
    pair: Pair | None = None
    timings: list[float] = []
    try:
        pair = Pair(base, pg, f"bench_ha_{int(lease * 1000)}", lease, sim)
        engine = pair.engine
        for trial in range(trials):
            drop(pair, f"pay-bench-{trial:03d}.dat", records, seed=trial)  # type: ignore[arg-type]

            def sending() -> tuple[int, str, int] | None:
                with engine.connect() as connection:
                    for transfer in connection.execute(select(Transfer).where(Transfer.state == "SENDING")):
                        holder = connection.execute(select(LeaseRow.holder).where(
                            LeaseRow.kind == "transfer", LeaseRow.key == str(transfer.id))).scalar()
                        if holder:
                            return transfer.id, holder, transfer.attempts
                return None

            transfer_id, holder, attempts = wait(sending, 120, "a transfer SENDING")
            killed_at = time.monotonic()
            pair.daemons[holder].process.send_signal(signal.SIGKILL)
            survivor = "gw-b" if holder == "gw-a" else "gw-a"

            def taken_over() -> bool:
                with engine.connect() as connection:
                    transfer = connection.execute(select(Transfer).where(Transfer.id == transfer_id)).one()
                    lease_holder = connection.execute(select(LeaseRow.holder).where(
                        LeaseRow.kind == "transfer", LeaseRow.key == str(transfer_id))).scalar()
                return transfer.state in ("SENDING", "DONE") and transfer.attempts > attempts \
                    and lease_holder == survivor

            wait(taken_over, 4 * lease + 60, "the takeover")
            timings.append(time.monotonic() - killed_at)
            pair.daemons[holder].process.wait(timeout=30)
            pair.daemons[holder].notify.close()

            def done() -> bool:
                with engine.connect() as connection:
                    return connection.execute(select(Transfer.state).where(Transfer.id == transfer_id)).scalar() \
                        == "DONE"

            wait(done, 120, "DONE")
            print(f"  lease {lease:g}s trial {trial + 1:2d}: killed {holder}, {survivor} took over after "
                  f"{timings[-1]:.2f}s (load {load()})", flush=True)
            pair.start(holder)
        delivered = sorted((sim.root / "upload").glob("*.dat"))
        digests = {hashlib.sha256(path.read_bytes()).hexdigest() for path in delivered}
        assert len(delivered) == trials == len(digests), f"{len(delivered)} files at the peer"
    finally:
        if pair is not None:
            pair.close()
        sim.stop()
    return timings


# --------------------------------------------------------------------------- relay throughput


def push_all(ports: list[int], context: ssl.SSLContext, bodies: list[bytes], prefix: str, clients: int) -> int:
    """Push every body, *clients* keep-alive connections per listener, each listener taking every len(ports)-th;
    the number of pushes answered 201 (a refused or failed one is retried on its connection)."""
    accepted = [0]
    lock = threading.Lock()
    queues = [list(range(n, len(bodies), len(ports))) for n in range(len(ports))]

    def work(port: int, queue: list[int]) -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                index = queue.pop(0)
            for _ in range(20):
                try:
                    connection.request("PUT", f"/push/mpn-results/{prefix}-{index:06d}.dat", body=bodies[index],
                                       headers={"Content-Type": "application/octet-stream"})
                    response = connection.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):
                    connection.close()
                    continue
                if response.will_close:
                    connection.close()
                if response.status in (201, 204):
                    with lock:
                        accepted[0] += 1
                    break
                time.sleep(0.05)  # 503 busy: again
        connection.close()

    threads = [threading.Thread(target=work, args=(port, queue), name=f"pusher-{port}-{n}")
               for port, queue in zip(ports, queues) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return accepted[0]


def relay_phase(pair: Pair, push_ports: dict[str, int], context: ssl.SSLContext, maker: BatchMaker, label: str,
                nodes: tuple[str, ...], pushes: int, batch: int, clients: int) -> tuple[float, float]:
    """Results/s and daemon CPU seconds per 1,000 results of one phase."""
    bodies = [maker.batch(batch) for _ in range(pushes)]
    with pair.engine.connect() as connection:
        before = connection.execute(select(func.count()).select_from(Transfer).where(
            Transfer.flow == "mpn-results", Transfer.state == "DONE")).scalar_one()
    cpu_before = sum(cpu_seconds(d.process.pid) for d in pair.daemons.values())
    started = time.monotonic()
    accepted = push_all([push_ports[node] for node in nodes], context, bodies, label, clients)
    assert accepted == pushes, f"{accepted} of {pushes} pushes accepted"

    def relayed() -> bool:
        with pair.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(Transfer).where(
                Transfer.flow == "mpn-results", Transfer.state == "DONE")).scalar_one() - before >= pushes

    wait(relayed, 300, f"{pushes} pushes relayed")
    elapsed = time.monotonic() - started
    cpu = sum(cpu_seconds(d.process.pid) for d in pair.daemons.values()) - cpu_before
    return pushes * batch / elapsed, cpu / (pushes * batch / 1000)


def relay_throughput(base: Path, pg: Cluster, runs: int, pushes: int, batch: int,
                     clients: int) -> list[tuple[str, float, float, str]]:
    closed = free_port()  # nothing listens there: the pull sides find no peer
    push_ports = {node: free_port() for node in NODES}
    shared = base / "shared"
    sim = start_jnks_sim(make_gateway_files(shared))

    def mpn(shared: Path, node: str) -> str:
        return mpn_flow_config_text(f"https://127.0.0.1:{closed}/", str(shared / "credentials" / "ca.pem"),
                                    push_ports[node], poll_interval="1h")

    pair: Pair | None = None
    rows: list[tuple[str, float, float, str]] = []
    try:
        pair = Pair(base, pg, "bench_ha_relay", 15.0, sim, extra=mpn)
        context = client_context(shared / "credentials")
        maker = BatchMaker()
        relay_phase(pair, push_ports, context, maker, "warm", NODES, max(4, pushes // 10), batch, clients)
        for run in range(runs):
            for label, nodes in (("one node", NODES[:1]), ("two nodes", NODES)):
                at = load()
                rate, cpu = relay_phase(pair, push_ports, context, maker, f"r{run}-{len(nodes)}", nodes, pushes,
                                        batch, clients)
                rows.append((label, rate, cpu, at))
                print(f"  relay run {run + 1}, {label}: {rate:.0f} results/s, {cpu:.3f} CPU s per 1,000 results "
                      f"(load before {at})", flush=True)
    finally:
        if pair is not None:
            pair.close()
        sim.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--leases", default="15,3", help="[database] lease values in seconds (default 15,3)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--delay", type=int, default=4, help="seconds the simulator holds each response")
    parser.add_argument("--records", type=int, default=2000, help="records of each file (100 bytes each)")
    parser.add_argument("--relay-runs", type=int, default=3)
    parser.add_argument("--relay-pushes", type=int, default=200)
    parser.add_argument("--relay-batch", type=int, default=100, help="results per push")
    parser.add_argument("--relay-clients", type=int, default=2, help="connections per listener")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--skip-relay", action="store_true")
    args = parser.parse_args()

    print(f"bench/ha.py, load at start {load()}, cpus {os.cpu_count()}", flush=True)
    pg = start_cluster()
    results: dict[float, list[float]] = {}
    relay_rows: list[tuple[str, float, float, str]] = []
    try:
        if not args.skip_failover:
            for lease in (float(value) for value in args.leases.split(",")):
                print(f"failover, lease {lease:g}s, {args.trials} trials (load {load()})", flush=True)
                base = Path(tempfile.mkdtemp(prefix=f"kei-bench-ha-{lease:g}-"))
                results[lease] = failover(base, pg, lease, args.trials, args.delay, args.records)
        if not args.skip_relay:
            print(f"relay throughput, two nodes against one (load {load()})", flush=True)
            base = Path(tempfile.mkdtemp(prefix="kei-bench-ha-relay-"))
            relay_rows = relay_throughput(base, pg, args.relay_runs, args.relay_pushes, args.relay_batch,
                                          args.relay_clients)
    finally:
        pg.stop()
    for lease, timings in results.items():
        p50, p99 = statistics.median(timings), percentile(timings, 0.99)
        print(f"lease {lease:g}s, {len(timings)} trials, {args.records} records, response delay {args.delay}s: "
              f"failover (kill -9 of the holder -> the other node's SENDING commit) p50 {p50:.2f}s, p99 {p99:.2f}s, "
              f"max {max(timings):.2f}s; p99 / (2 x lease) = {p99 / (2 * lease):.2f} (target <= 1.0)")
    if relay_rows:
        one = statistics.median(rate for label, rate, _, _ in relay_rows if label == "one node")
        two = statistics.median(rate for label, rate, _, _ in relay_rows if label == "two nodes")
        cpu_one = statistics.median(cpu for label, _, cpu, _ in relay_rows if label == "one node")
        cpu_two = statistics.median(cpu for label, _, cpu, _ in relay_rows if label == "two nodes")
        print(f"relay throughput ({args.relay_pushes} pushes x {args.relay_batch} results, {args.relay_clients} "
              f"connection(s) per listener): one node {one:.0f} results/s ({cpu_one:.3f} CPU s/1,000), two nodes "
              f"{two:.0f} results/s ({cpu_two:.3f} CPU s/1,000); two / one = {two / one:.2f} (target >= 1.0)")
    print(f"load at end {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
