"""``kei-gateway demo``: the gateway end to end on throwaway defaults, then a summary.

It makes a throwaway PKI and keys in a temporary directory, writes a configuration
on loopback with SQLite, starts ``kei-gateway run`` as systemd would (with a
notification socket and a watchdog), waits for ``READY=1``, shows health,
readiness and metrics, reloads it with SIGHUP, stops it with SIGTERM and checks
that it stopped cleanly. Later flows extend it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

from kei_gateway import exitcodes
from kei_gateway.pki import write_demo_credentials
from kei_gateway.testing import NotificationTimeout, NotifySocket, demo_config_text, free_port

__all__ = ["register", "run_demo"]

DEMO_METRICS = ("kei_gateway_build_info", "kei_gateway_denied_connections_total",
                "kei_gateway_certificate_expiry_timestamp_seconds", "kei_gateway_database_up")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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


def run_demo(args: argparse.Namespace) -> int:
    base = tempfile.mkdtemp(prefix="kei-gateway-demo-")
    try:
        return _demo(base)
    finally:
        if args.keep:
            _say(f"\nKept {base} (config kei-gateway.toml, state/, spool/, credentials/, daemon.log).")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _demo(base: str) -> int:
    _say(f"== kei-gateway demo in {base} (dummy PKI and keys, SQLite, loopback only)")
    write_demo_credentials(os.path.join(base, "credentials"))
    port = free_port()
    config_path = os.path.join(base, "kei-gateway.toml")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(demo_config_text(base, port))
    check = subprocess.run([sys.executable, "-m", "kei_gateway", "-c", config_path, "check-config"],
                           capture_output=True, text=True, timeout=60)
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
    try:
        notify.wait_for("READY=1")
        _say(f"-- daemon pid {daemon.pid} sent READY=1")
        _say("   " + notify.wait_for("STATUS=Ready").strip())
        notify.wait_for("WATCHDOG=1")
        _say("   watchdog is fed (WATCHDOG=1 every 2 s while the reactor and database answer)")
        url = f"http://127.0.0.1:{port}"
        for path in ("/healthz", "/readyz"):
            code, body = _get(url + path)
            checks = ", ".join(f"{name} {'ok' if c['ok'] else 'FAIL: ' + c['detail']}"
                               for name, c in json.loads(body)["checks"].items())
            _say(f"-- GET {url}{path}: {code} ({checks})")
            if code != 200:
                return exitcodes.FAILED
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
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        _say("-- SIGHUP: RELOADING=1 ... READY=1 (configuration re-read, allow-lists applied)")
        daemon.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        code = daemon.wait(timeout=30)
        _say(f"-- SIGTERM: STOPPING=1, exit code {code}")
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
    _say("== demo " + ("finished: a ready, healthy daemon that stopped cleanly" if code == 0 else "FAILED"))
    _say("   Next: README.md (install on a server, configure, operate), docs/configuration.md")
    return exitcodes.OK if code == 0 else exitcodes.FAILED
