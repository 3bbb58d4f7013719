"""``kei-gateway demo``: the gateway end to end on throwaway defaults, then a summary.

It makes a throwaway PKI and keys in a temporary directory, starts the 軽JNKS
simulator (``kei-gateway sim jnks``) and the MPN centre simulator (``kei-gateway
sim mpn``) on loopback, writes a configuration with SQLite, the JNKS and MPN flows
pointing at them and the push listener, starts ``kei-gateway run`` as systemd
would (with a notification socket and a watchdog), waits for ``READY=1``, shows
health, readiness and metrics, then plays the tax system:

* JNKS: dummy payment files (ダミーデータ) are renamed into the outbox, one of them
  broken on purpose; it waits (bounded) until every valid file is delivered and its
  受付結果 relayed to the inbox and the broken one is quarantined;
* MPN: 1,000 payment slips go out; the simulator answers with 速報 by push, by pull
  and both, later 確報 and some 取消, duplicates and repeated pushes; it waits until
  every distinct result is in the inbox exactly once and prints the reconcile summary;
* AIRIS 突合: 3,200 dummy 小型二輪 (the seed's 想定件数) on the register and in an AES-256 AIRIS
  ZIP with discrepancies of every category planted; it waits until the results are in the
  inbox and prints the rows per category beside what was planted.

It prints what happened and where to look, reloads the daemon with SIGHUP, stops it
with SIGTERM and checks that it stopped cleanly. The exit code is 0 only if all of
that happened.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from kei_gateway.adapters.ledger import TransferLedger, TransferRow, create_ledger_engine
from kei_gateway.cli import exitcodes
from kei_gateway.config import read_config
from kei_gateway.core.jst import today_in_jst
from kei_gateway.layouts import generate_file, get_layout
from kei_gateway.sim.harness import (
    NotificationTimeout,
    NotifySocket,
    SimulatorNotStarted,
    demo_config_text,
    free_port,
    jnks_flow_config_text,
    mpn_flow_config_text,
    start_jnks_sim_process,
    start_mpn_sim_process,
)
from kei_gateway.sim.pki import write_demo_credentials
from kei_gateway.core.transfer import TransferState

__all__ = ["register", "run_demo"]

DEMO_METRICS = ("kei_gateway_build_info", "kei_gateway_denied_connections_total",
                "kei_gateway_certificate_expiry_timestamp_seconds", "kei_gateway_database_up")
FLOW_METRICS = ("kei_gateway_transfers_total{", "kei_gateway_records_total{", "kei_gateway_peer_up{")
LG_CODE = "131041"
REJECT_LINES = "3,7"
"""Records the simulator rejects (E900) in every file, so the receipts show エラー counts."""
DELIVERY_TIMEOUT = 30.0
"""Seconds the demo waits for every file to be delivered, answered and relayed."""
MPN_SLIPS = 1000
MPN_OPTIONS = ("--seed", "1", "--results-share", "0.9", "--push-share", "0.4", "--both-share", "0.2",
               "--cancel-share", "0.05", "--mismatch-share", "0.02", "--missing-share", "0.03",
               "--duplicate-share", "0.02", "--repeat-push-share", "0.2", "--batch-size", "100",
               "--confirm-after", "2")
"""The MPN simulator's behaviour in the demo: every way a result can arrive, at once."""
RESULT_RECORD = 258
IDENTITY_SLICES = ((0, 2), (2, 22), (22, 28), (28, 32), (203, 205), (188, 202), (202, 203))
"""Byte offsets of 税目, 納付書番号, 確認番号, 納付区分, チャネル, 収納日時, 収納区分 in a 258-byte result (SPEC §2.4)."""


@dataclass(frozen=True)
class DemoFile:
    name: str
    records: int
    seed: int
    invalid_rate: float = 0.0


DEMO_FILES = (DemoFile("payments-001.dat", 1000, 1), DemoFile("payments-002.dat", 1000, 2),
              DemoFile("payments-003.dat", 1000, 3), DemoFile("payments-broken.dat", 200, 4, invalid_rate=0.03))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("demo", help="run the gateway end to end on throwaway defaults (loopback, SQLite)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory for a look afterwards")
    parser.set_defaults(func=run_demo)


def _say(text: str) -> None:
    print(text, flush=True)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _cli(config_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kei_gateway", "-c", config_path, *args],
                          capture_output=True, text=True, timeout=60)


def run_demo(args: argparse.Namespace) -> int:
    base = tempfile.mkdtemp(prefix="kei-gateway-demo-")
    try:
        return _demo(base, args.keep)
    finally:
        if args.keep:
            _say(f"\nKept {base} (config kei-gateway.toml, state/, spool/, sim/, credentials/, daemon.log).")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _demo(base: str, keep: bool) -> int:
    started = time.monotonic()
    _say(f"== kei-gateway demo in {base} (dummy PKI and keys, SQLite, loopback only)")
    credentials = os.path.join(base, "credentials")
    write_demo_credentials(credentials)
    sim_dir = os.path.join(base, "sim")
    os.makedirs(sim_dir)
    push_port = free_port()
    sims: list[subprocess.Popen[bytes]] = []
    try:
        sim, sim_port = start_jnks_sim_process(credentials, os.path.join(sim_dir, "root"),
                                               os.path.join(sim_dir, "sim.log"), "--reject-lines", REJECT_LINES)
        sims.append(sim)
        mpn, mpn_port = start_mpn_sim_process(
            credentials, os.path.join(sim_dir, "mpn-root"), os.path.join(sim_dir, "mpn.log"), *MPN_OPTIONS,
            "--push-url", f"https://127.0.0.1:{push_port}/push/mpn-results",
            "--push-cert", os.path.join(credentials, "peer-sim.crt"),
            "--push-key", os.path.join(credentials, "peer-sim.key"),
            "--push-ca", os.path.join(credentials, "ca.pem"), "--report", os.path.join(sim_dir, "mpn-report.json"))
        sims.append(mpn)
    except SimulatorNotStarted as error:
        _say(f"!! {error}")
        _stop_all(sims)
        return exitcodes.FAILED
    sim_url = f"https://127.0.0.1:{sim_port}/"
    mpn_url = f"https://127.0.0.1:{mpn_port}/"
    _say(f"-- 軽JNKS simulator on {sim_url} (mutual TLS; rejects records {REJECT_LINES} of every file with E900)")
    _say(f"-- MPN centre simulator on {mpn_url} (mutual TLS; pushes 速報 to the gateway's push listener on "
         f"127.0.0.1:{push_port})")
    try:
        return _with_simulator(base, sim_url, mpn_url, push_port, keep, started)
    finally:
        _stop_all(sims)


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _with_simulator(base: str, sim_url: str, mpn_url: str, push_port: int, keep: bool, started: float) -> int:
    port = free_port()
    config_path = os.path.join(base, "kei-gateway.toml")
    ca = os.path.join(base, "credentials", "ca.pem")
    flows = jnks_flow_config_text(sim_url, ca) + mpn_flow_config_text(mpn_url, ca, push_port) + AIRIS_FLOW
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(demo_config_text(base, port, lg_code=LG_CODE, extra=flows))
    check = _cli(config_path, "check-config")
    _say("-- kei-gateway check-config\n" + (check.stdout or check.stderr).rstrip())
    if check.returncode != 0:
        return exitcodes.FAILED

    notify = NotifySocket(os.path.join(base, "notify.sock"))
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "CREDENTIALS_DIRECTORY")}
    env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="4000000")
    log_path = os.path.join(base, "daemon.log")
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "kei_gateway", "-c", config_path, "run",
                                   "--log-target", "terminal"], env=env, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    outcome = "FAILED"
    try:
        notify.wait_for("READY=1")
        _say(f"-- daemon pid {daemon.pid} sent READY=1")
        _say("   " + notify.wait_for("STATUS=Ready").strip())
        notify.wait_for("WATCHDOG=1")
        _say("   watchdog is fed (WATCHDOG=1 every 2 s while the reactor turns and a ledger check ends)")
        if not _show_health(url, port):
            code = exitcodes.FAILED
        else:
            delivered = _jnks_flow(base, config_path, daemon, url)
            delivered = _mpn_flows(base, config_path, daemon, url) and delivered
            delivered = _airis_flow(base, daemon) and delivered
            daemon.send_signal(signal.SIGHUP)
            notify.wait_for("RELOADING=1")
            notify.wait_for("READY=1")
            _say("-- SIGHUP: RELOADING=1 ... READY=1 (configuration re-read, allow-lists applied)")
            daemon.send_signal(signal.SIGTERM)
            notify.wait_for("STOPPING=1")
            code = daemon.wait(timeout=30)
            _say(f"-- SIGTERM: STOPPING=1, exit code {code}")
            if code == 0 and delivered:
                outcome = ("finished: every valid file delivered and answered, the broken one quarantined, "
                           "every payment result relayed once, the AIRIS 突合 as planted, the daemon stopped cleanly")
            elif code == 0:
                code = exitcodes.FAILED
    except (NotificationTimeout, OSError, ValueError, subprocess.TimeoutExpired) as error:
        _say(f"!! demo failed: {error}")
        code = exitcodes.FAILED
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        notify.close()
    with open(log_path, encoding="utf-8", errors="replace") as log:
        _say("-- the daemon's events (one line each; under systemd they go to journald):")
        for line in log:
            _say("   " + line.rstrip())
    _where_to_look(base, url, config_path, keep)
    _say(f"== demo {outcome} ({time.monotonic() - started:.0f} s)")
    _say("   Next: README.md (install on a server, configure, operate, the JNKS and MPN flows, privacy and audit), "
         "docs/configuration.md, docs/privacy.md")
    return exitcodes.OK if code == 0 else exitcodes.FAILED


def _show_health(url: str, port: int) -> bool:
    for path in ("/healthz", "/readyz"):
        code, body = _get(url + path)
        checks = ", ".join(f"{name} {'ok' if c['ok'] else 'FAIL: ' + c['detail']}"
                           for name, c in json.loads(body)["checks"].items())
        _say(f"-- GET {url}{path}: {code} ({checks})")
        if code != 200:
            return False
    code, body = _get(url + "/metrics")
    _say(f"-- GET {url}/metrics: {code}, {len(body)} bytes; a few lines:")
    for line in body.decode().splitlines():
        if line.startswith(DEMO_METRICS):
            _say("   " + line)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as outsider:
        outsider.settimeout(10)
        outsider.bind(("127.0.0.2", 0))
        outsider.connect(("127.0.0.1", port))
        closed = outsider.recv(1) == b""
    code, body = _get(url + "/metrics")
    denied = [line for line in body.decode().splitlines()
              if line.startswith('kei_gateway_denied_connections_total{listener="metrics"')]
    _say(f"-- a client on 127.0.0.2 (not in listeners.metrics.allow) was {'closed unanswered' if closed else 'ANSWERED'}: "
         + (denied[0] if denied else "no counter!"))
    return closed


def _drop(outbox: str, name: str, data: bytes) -> None:
    """Write as the tax system does (``ready = "rename"``): a temporary name, then a rename."""
    temporary = os.path.join(outbox, name + ".tmp")
    with open(temporary, "wb") as f:
        f.write(data)
    os.rename(temporary, os.path.join(outbox, name))


def _jnks_flow(base: str, config_path: str, daemon: subprocess.Popen[bytes], url: str) -> bool:
    """Play the tax system on the JNKS payment flow; True if everything arrived where it should."""
    config = read_config(config_path)
    outbox = config.spool_path("outbox/jnks")
    inbox = config.spool_path("inbox/jnks-receipts")
    quarantine = config.spool_path("quarantine/jnks-payments")
    upload = os.path.join(base, "sim", "root", "upload")
    layout = get_layout("jnks-payments")
    today = today_in_jst(time.time())
    _say("-- JNKS payment status (軽自動車税 納付情報), end to end. The tax system writes to spool/outbox/jnks/ "
         "(name.tmp, then rename):")
    os.makedirs(outbox, exist_ok=True)
    for item in DEMO_FILES:
        data = b"".join(generate_file(layout, item.records, seed=item.seed, today=today,
                                      invalid_rate=item.invalid_rate, lg_code=LG_CODE))
        _drop(outbox, item.name, data)
        broken = f", about {item.invalid_rate:.0%} of the records broken on purpose" if item.invalid_rate else ""
        _say(f"   {item.name:<20} {item.records:>6,} records, {len(data):>7,} bytes (dummy data{broken})")
    dropped = time.monotonic()

    valid = [item for item in DEMO_FILES if not item.invalid_rate]
    invalid = [item for item in DEMO_FILES if item.invalid_rate]
    engine = create_ledger_engine(config.database_url)
    ledger = TransferLedger(engine)
    try:
        def missing() -> tuple[list[str], dict[str, TransferRow]]:
            rows = {row.local_name: row for row in ledger.list_transfers(flow="jnks-payments", limit=100)}
            wanting: list[str] = []
            for item in valid:
                row = rows.get(item.name)
                if row is None:
                    wanting.append(f"{item.name}: not taken from the outbox")
                elif row.state != TransferState.DONE or not row.remote_name:
                    wanting.append(f"{item.name}: transfer {row.id} is {row.state}"
                                   + (f" ({row.last_error})" if row.last_error else ""))
                elif not os.path.exists(os.path.join(upload, row.remote_name)):
                    wanting.append(f"{item.name}: not at the peer as {row.remote_name}")
                elif not os.path.exists(os.path.join(inbox, row.remote_name + ".result")):
                    wanting.append(f"{item.name}: receipt {row.remote_name}.result not in the inbox")
                elif not row.receipt_summary:
                    wanting.append(f"{item.name}: receipt not counted in the ledger")
            for item in invalid:
                row = rows.get(item.name)
                if row is None or row.state != TransferState.QUARANTINED:
                    wanting.append(f"{item.name}: not quarantined" + (f" (it is {row.state})" if row else ""))
                elif not os.path.exists(os.path.join(quarantine, item.name + ".errors.txt")):
                    wanting.append(f"{item.name}: no {item.name}.errors.txt in the quarantine")
            return wanting, rows

        deadline = dropped + DELIVERY_TIMEOUT
        while True:
            wanting, rows = missing()
            if not wanting or time.monotonic() > deadline or daemon.poll() is not None:
                break
            time.sleep(0.2)  # a bounded poll of the ledger and the spool, not a wait for an outcome
    finally:
        engine.dispose()
    took = time.monotonic() - dropped

    if wanting:
        _say(f"!! after {took:.1f} s not everything arrived:")
        for line in wanting:
            _say("   " + line)
    else:
        _say(f"   all taken, delivered, answered and relayed within {took:.1f} s; "
             f"outbox now {'empty' if not os.listdir(outbox) else 'NOT empty: ' + ', '.join(os.listdir(outbox))}")
    _say("-- delivered to 軽JNKS (PUT name.part, then MOVE to the final name; the plaintext original removed):")
    for item in valid:
        row = rows.get(item.name)
        if row is not None:
            _say(f"   {item.name:<20} -> {row.remote_name or '(not yet)'}  transfer {row.id} {row.state}, "
                 f"{row.record_count:,} records")
    _say("-- receipts (受付結果) relayed to spool/inbox/jnks-receipts/ for the tax system:")
    for item in valid:
        row = rows.get(item.name)
        if row is not None and row.remote_name:
            receipt = os.path.join(inbox, row.remote_name + ".result")
            if os.path.exists(receipt):
                summary = re.sub(r"\s*\(receipt transfer \d+\)", "", row.receipt_summary or "not counted")
                _say(f"   {os.path.basename(receipt)}  {summary}  ({os.path.getsize(receipt):,} bytes)")
    _say("-- quarantined (nothing of it was sent); the tax division reads the .errors.txt, corrects, writes again:")
    for item in invalid:
        row = rows.get(item.name)
        errors = os.path.join(quarantine, item.name + ".errors.txt")
        if row is not None:
            _say(f"   {item.name}: transfer {row.id} {row.state}: {row.last_error}")
        if os.path.exists(errors):
            _say(f"   {errors}:")
            with open(errors, encoding="utf-8") as f:
                lines = f.read().splitlines()
            shown = skipped = 0
            for line in lines + ["#"]:  # "#": flushes the count of skipped error lines at the end
                if not line.startswith("#"):
                    shown += 1
                    skipped += shown > 3
                    if shown <= 3:
                        _say("     " + line)
                    continue
                if skipped:
                    _say(f"     ... ({skipped} more error line(s))")
                    skipped = 0
                if line != "#":
                    _say("     " + line)
    for title, args in (("kei-gateway status", ("status",)), ("kei-gateway transfers list", ("transfers", "list"))):
        result = _cli(config_path, *args)
        _say(f"-- {title}")
        for line in (result.stdout or result.stderr).rstrip().splitlines():
            _say("   " + line)
    code, body = _get(url + "/metrics")
    _say(f"-- GET {url}/metrics (the JNKS flow's counters):")
    for line in body.decode().splitlines():
        if line.startswith(FLOW_METRICS):
            _say("   " + line)
    return not wanting


def _inbox_identities(inbox: str) -> tuple[list[tuple[str, ...]], int]:
    """The identity (SPEC §2.4) of every result record in the inbox files, and the number of files.

    Read by fixed offsets, independently of the gateway's layout engine: what the tax
    system would see.
    """
    found: list[tuple[str, ...]] = []
    files = 0
    for name in sorted(os.listdir(inbox)) if os.path.isdir(inbox) else []:
        if name.startswith(".") or name.endswith(".end"):
            continue
        files += 1
        with open(os.path.join(inbox, name), "rb") as f:
            data = f.read()
        for offset in range(0, len(data), RESULT_RECORD):
            r = data[offset:offset + RESULT_RECORD]  # byte offsets: 納税義務者氏名 is CP932, 2 bytes a character
            found.append(tuple(r[a:b].decode("ascii") for a, b in IDENTITY_SLICES))
    return found, files


def _mpn_flows(base: str, config_path: str, daemon: subprocess.Popen[bytes], url: str) -> bool:
    """Play the tax system and the MPN centre; True if every result was relayed exactly once."""
    config = read_config(config_path)
    outbox = config.spool_path("outbox/mpn-slips")
    inbox = config.spool_path("inbox/mpn-results")
    report_path = os.path.join(base, "sim", "mpn-report.json")
    today = today_in_jst(time.time())
    data = b"".join(generate_file(get_layout("mpn-slips"), MPN_SLIPS, seed=11, today=today, lg_code=LG_CODE))
    os.makedirs(outbox, exist_ok=True)
    _say(f"-- MPN: the tax system writes {MPN_SLIPS:,} payment slips (納付書情報, dummy data) to "
         "spool/outbox/mpn-slips/:")
    _drop(outbox, "slips-001.dat", data)
    _say(f"   slips-001.dat {MPN_SLIPS:>10,} records, {len(data):>7,} bytes")
    dropped = time.monotonic()

    def state() -> tuple[list[str], dict[str, object]]:
        wanting: list[str] = []
        report: dict[str, object] = {}
        try:
            with open(report_path, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError):
            return ["the simulator has not answered yet"], report
        truth = {tuple(item) for item in report["truth"]["results"]}  # type: ignore[index]
        if report.get("pending"):
            wanting.append(f"the simulator still has {report['pending']} file(s) to deliver")
        relayed, _ = _inbox_identities(inbox)
        if len(relayed) != len(set(relayed)):
            wanting.append(f"{len(relayed) - len(set(relayed))} result(s) relayed MORE THAN ONCE")
        missing = truth - set(relayed)
        if missing:
            wanting.append(f"{len(missing)} of {len(truth)} result(s) not in the inbox yet")
        extra = set(relayed) - truth
        if extra:
            wanting.append(f"{len(extra)} result(s) in the inbox that the centre never sent")
        return wanting, report

    deadline = dropped + DELIVERY_TIMEOUT
    while True:
        wanting, report = state()
        if not wanting or time.monotonic() > deadline or daemon.poll() is not None:
            break
        time.sleep(0.2)  # a bounded poll of the inbox and the simulator's report
    took = time.monotonic() - dropped
    if wanting:
        _say(f"!! after {took:.1f} s:")
        for line in wanting:
            _say("   " + line)
        return False
    produced: list[dict[str, object]] = report["produced"]  # type: ignore[assignment]
    truth_block: dict[str, list[object]] = report["truth"]  # type: ignore[assignment]
    by_delivery: dict[str, int] = {}
    for item in produced:
        key = str(item["delivery"])
        by_delivery[key] = by_delivery.get(key, 0) + int(item["records"])  # type: ignore[call-overload]
    relayed, files = _inbox_identities(inbox)
    _say(f"   uploaded to the centre's slips/ and answered within {took:.1f} s: the centre sent "
         f"{sum(by_delivery.values()):,} result records in {len(produced)} files "
         f"({', '.join(f'{count:,} by {how}' for how, count in sorted(by_delivery.items()))}),")
    _say(f"   {len(truth_block['results']):,} distinct results; {truth_block['duplicates']} 速報 repeated, "
         "push answers " + ", ".join(f"{status} ×{count}" for status, count in sorted(
             dict(report["push_statuses"]).items())))  # type: ignore[call-overload]
    _say(f"-- spool/inbox/mpn-results/: {files} file(s) with {len(relayed):,} results, each exactly once "
         "(checked against the simulator's ground truth)")
    code, body = _get(url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(("kei_gateway_payment_results_total{", "kei_gateway_relay_latency_seconds_count",
                            "kei_gateway_unconfirmed_results{", 'kei_gateway_transfers_total{flow="mpn')):
            _say("   " + line)
    since = (datetime.datetime.fromisoformat(today.isoformat()) - datetime.timedelta(days=1)).date()
    result = _cli(config_path, "results", "reconcile", "--since", since.isoformat())
    _say(f"-- kei-gateway results reconcile --since {since.isoformat()}")
    for line in (result.stdout or result.stderr).rstrip().splitlines():
        _say("   " + line)
    return True


AIRIS_FLOW = """
[flows.airis-reconcile]
airis_outbox = "outbox/airis"
register_outbox = "outbox/airis-register"
inbox = "inbox/airis-reconcile"
"""
AIRIS_VEHICLES = 3200
"""The seed's 想定件数 (約 3,200件, 令和5年度当初課税件数)."""
AIRIS_PLANT = {"02": 40, "03": 60, "04": 15, "05": 30, "06": 45, "07": 8, "08": 6}
AIRIS_KEY = "demo-airis-key-ダミー"


def _airis_flow(base: str, daemon: subprocess.Popen[bytes]) -> bool:
    """The tax system and the AIRIS download in the outboxes; the results checked against what was planted."""
    from kei_gateway.adapters.airis_zip import write_airis_zip
    from kei_gateway.layouts import render_records
    from kei_gateway.layouts.airis import CATEGORIES, TAX_REGISTER_2W, airis_csv_bytes, generate_airis_case

    case = generate_airis_case(AIRIS_VEHICLES, AIRIS_PLANT, seed=7,
                               variants={"width": 30, "degenerate": 20, "address": 50})
    spool = os.path.join(base, "spool")
    airis_outbox, register_outbox = os.path.join(spool, "outbox", "airis"), os.path.join(spool, "outbox", "airis-register")
    for directory in (airis_outbox, register_outbox):
        os.makedirs(directory, exist_ok=True)
    _drop(airis_outbox, "AIRIS-demo.zip", write_airis_zip(airis_csv_bytes(case.airis), AIRIS_KEY))
    _drop(airis_outbox, "AIRIS-demo.zip.key", (AIRIS_KEY + "\n").encode("utf-8"))
    _drop(register_outbox, "register-2w.dat", b"".join(render_records(TAX_REGISTER_2W, case.register)))
    _say(f"-- AIRIS 突合: {AIRIS_VEHICLES:,} dummy 小型二輪, the AES-256 ZIP, its key file and the register extract "
         "put in outbox/airis and outbox/airis-register")
    inbox = os.path.join(spool, "inbox", "airis-reconcile")
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    found: list[str] = []
    left: list[str] = []
    while time.monotonic() < deadline and daemon.poll() is None:
        found = sorted(n for n in os.listdir(inbox) if n.endswith(".dat")) if os.path.isdir(inbox) else []
        left = os.listdir(airis_outbox) + os.listdir(register_outbox)
        if found and not left:  # the inputs are erased just after the results are written
            break
        time.sleep(0.2)
    if not found or left:
        _say("!! the AIRIS 突合 results did not appear in the inbox" if not found else
             "!! the AIRIS inputs were not erased from the outboxes")
        return False
    with open(os.path.join(inbox, found[0]), "rb") as f:
        data = f.read()
    rows = [data[i:i + 2].decode("ascii") for i in range(0, len(data), 226)]
    _say(f"   results: {inbox}/{found[0][:-4]}.dat/.csv/.txt; plaintext inputs erased (listed in the 消去報告)")
    _say("   突合区分                     rows  planted")
    ok = True
    for code, name in CATEGORIES.items():
        count = rows.count(code)
        ok = ok and count == case.expected[code]
        _say(f"   {code} {name}{' ' * max(1, 24 - 2 * len(name))}{count:>6}  {case.expected[code]:>6}")
    return ok


def _where_to_look(base: str, url: str, config_path: str, keep: bool) -> None:
    _say("-- where to look" + ("" if keep else " (run 'kei-gateway demo --keep' to keep these for a look afterwards)"))
    for what, where in (
            ("metrics and health (while the daemon runs)", f"{url}/metrics  /healthz  /readyz"),
            ("outbox (the tax system writes here)", f"{base}/spool/outbox/jnks/"),
            ("inbox (receipts for the tax system)", f"{base}/spool/inbox/jnks-receipts/"),
            ("inbox (payment results for the tax system)", f"{base}/spool/inbox/mpn-results/"),
            ("inbox (AIRIS 突合 results .dat/.csv/.txt)", f"{base}/spool/inbox/airis-reconcile/"),
            ("quarantine (.errors.txt of rejected files)", f"{base}/spool/quarantine/jnks-payments/"),
            ("what the peers received (simulators)", f"{base}/sim/root/upload/  {base}/sim/mpn-root/slips/"),
            ("ledger and encrypted store", f"{base}/state/"),
            ("daemon and simulator logs", f"{base}/daemon.log  {base}/sim/sim.log  {base}/sim/mpn.log")):
        _say(f"   {what:<44} {where}")
    if keep:
        _say(f"   operator commands: kei-gateway -c {config_path} status | transfers list | transfers show ID | "
             "results reconcile")
