"""Benchmark (issue 15): failover time of two gateway nodes on one PostgreSQL.

One run: a throwaway PostgreSQL cluster (``tests/pg.py``), the JNKS simulator on loopback
holding every response ``--delay`` seconds (so an upload is in flight long enough to kill
its node), two real daemons ``gw-a`` and ``gw-b`` sharing one spool/state directory, with
``[database] lease = --lease``.

Each trial drops one valid payment file into the shared outbox, waits until it is SENDING
under a node's lease, kills that node with SIGKILL and times until the other node has taken
the transfer over and committed it SENDING again — the commit that immediately precedes the
first byte of its new PUT (the simulator's request log has one-second resolution, so the
ledger's commit is the finer clock). The transfer is then waited for DONE, exactly one copy
at the peer is checked, and the killed node is started again (READY=1) for the next trial.

Reported: p50, p99 and max over ``--trials`` trials, and the ratio p99 / (2 × lease) — the
target of issue 15 is ≤ 1.0. Run: ``.venv/bin/python bench/ha.py [--lease 15] [--trials 20]``.
Figures go in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from sqlalchemy import select  # noqa: E402

from kei_gateway.adapters.ledger import create_ledger_engine  # noqa: E402
from kei_gateway.adapters.ledger.models import LeaseRow, Transfer  # noqa: E402
from kei_gateway.sim.harness import free_port  # noqa: E402
from tests.integration.harness import GatewayFiles, make_gateway_files, start_daemon, start_jnks_sim  # noqa: E402
from tests.pg import start_cluster  # noqa: E402


def wait(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lease", type=float, default=15.0, help="[database] lease in seconds (default 15)")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--delay", type=int, default=4, help="seconds the simulator holds each response")
    parser.add_argument("--records", type=int, default=2000, help="records of each file (100 bytes each)")
    args = parser.parse_args()

    from tests.integration.test_two_nodes import drop, node_config

    import tests.integration.test_two_nodes as two_nodes
    two_nodes.LEASE = args.lease  # node_config writes the lease from there

    base = Path(tempfile.mkdtemp(prefix="kei-bench-ha-"))
    pg = start_cluster()
    url = pg.create_database("bench_ha")
    engine = create_ledger_engine(url)
    shared = base / "shared"
    sim = start_jnks_sim(make_gateway_files(shared), "--fault", f"delay_seconds={args.delay}")
    files: dict[str, GatewayFiles] = {}
    daemons = {}
    timings: list[float] = []

    class Shared:
        pass

    where = Shared()
    where.shared, where.sim = shared, sim  # what drop() reads
    try:
        for node in ("gw-a", "gw-b"):
            (base / node).mkdir()
            files[node] = GatewayFiles(base / node, base / node / "kei-gateway.toml", free_port())
            files[node].config.write_text(node_config(shared, node, files[node].metrics_port, sim.url, url),
                                          encoding="utf-8")
            daemons[node] = start_daemon(files[node], watchdog_usec=None)
            daemons[node].notify.wait_for("READY=1")
        for trial in range(args.trials):
            drop(where, f"pay-bench-{trial:03d}.dat", args.records)  # type: ignore[arg-type]

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
            daemons[holder].process.send_signal(signal.SIGKILL)
            survivor = "gw-b" if holder == "gw-a" else "gw-a"

            def taken_over() -> bool:
                with engine.connect() as connection:
                    transfer = connection.execute(select(Transfer).where(Transfer.id == transfer_id)).one()
                    lease = connection.execute(select(LeaseRow.holder).where(
                        LeaseRow.kind == "transfer", LeaseRow.key == str(transfer_id))).scalar()
                return transfer.state in ("SENDING", "DONE") and transfer.attempts > attempts and lease == survivor

            wait(taken_over, 4 * args.lease + 60, "the takeover")
            timings.append(time.monotonic() - killed_at)
            daemons[holder].process.wait(timeout=30)
            daemons[holder].notify.close()

            def done() -> bool:
                with engine.connect() as connection:
                    return connection.execute(select(Transfer.state).where(Transfer.id == transfer_id)).scalar() == "DONE"

            wait(done, 120, "DONE")
            print(f"trial {trial + 1:2d}: killed {holder}, {survivor} took over after {timings[-1]:.2f}s", flush=True)
            daemons[holder] = start_daemon(files[holder], watchdog_usec=None)
            daemons[holder].notify.wait_for("READY=1")
        delivered = sorted((sim.root / "upload").glob("*.dat"))
        digests = {hashlib.sha256(path.read_bytes()).hexdigest() for path in delivered}
        assert len(delivered) == args.trials == len(digests), f"{len(delivered)} files at the peer"
    finally:
        for daemon in daemons.values():
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(timeout=30)
        sim.stop()
        engine.dispose()
        pg.stop()
    p50, p99 = statistics.median(timings), percentile(timings, 0.99)
    print(f"lease {args.lease:g}s, {args.trials} trials, {args.records} records, response delay {args.delay}s")
    print(f"failover (kill -9 of the holder -> the other node's SENDING commit): p50 {p50:.2f}s, p99 {p99:.2f}s, "
          f"max {max(timings):.2f}s; p99 / (2 x lease) = {p99 / (2 * args.lease):.2f} (target <= 1.0)")
    print(f"load: {open('/proc/loadavg').read().strip()}; cpus {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
