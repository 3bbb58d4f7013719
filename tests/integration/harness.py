"""Running the real daemon in tests: a fake ``NOTIFY_SOCKET``, a throwaway config, HTTP helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from kei_gateway.sim.harness import (
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

PROCESS_TIMEOUT = 60.0  # generous: an fsync on a busy disk can take many seconds


@dataclass
class GatewayFiles:
    base: Path
    config: Path
    metrics_port: int

    def write_config(self, extra: str = "", **replace: str) -> None:
        text = demo_config_text(str(self.base), self.metrics_port, extra=extra)
        for old, new in replace.items():
            text = text.replace(old, new)
        self.config.write_text(text, encoding="utf-8")

    def write_jnks_config(self, sim_url: str, allow: str = "127.0.0.0/8", extra: str = "", **replace: str) -> None:
        """The configuration with the JNKS flows against a simulator (or nginx) at *sim_url*."""
        flows = jnks_flow_config_text(sim_url, str(self.base / "credentials" / "ca.pem"), allow=allow, extra=extra)
        self.write_config(extra=flows, **replace)

    def write_mpn_config(self, sim_url: str, push_port: int, unconfirmed_after: str = "3d", extra: str = "",
                         **replace: str) -> None:
        """The configuration with the MPN flows against a simulator at *sim_url*, pushing to *push_port*."""
        flows = mpn_flow_config_text(sim_url, str(self.base / "credentials" / "ca.pem"), push_port,
                                     unconfirmed_after=unconfirmed_after, extra=extra)
        self.write_config(extra=flows, **replace)


def make_gateway_files(base: Path) -> GatewayFiles:
    base = base.absolute()
    write_demo_credentials(str(base / "credentials"))
    files = GatewayFiles(base, base / "kei-gateway.toml", free_port())
    files.write_config()
    return files


@dataclass
class DaemonProcess:
    process: subprocess.Popen[bytes]
    notify: NotifySocket
    files: GatewayFiles
    stderr_path: Path
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.files.metrics_port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)  # faulthandler dumps every thread's stack
            self.process.wait(timeout=PROCESS_TIMEOUT)
            raise AssertionError(f"the daemon did not exit within {PROCESS_TIMEOUT:g}s of SIGTERM:\n{self.stderr()}") from None
        self.stopped = True
        return code

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


def start_daemon(files: GatewayFiles, *, log_target: str = "terminal", watchdog_usec: int | None = 2_000_000,
                 stderr: int | None = None, extra_env: dict[str, str] | None = None,
                 prefix: tuple[str, ...] = ()) -> DaemonProcess:
    """The daemon on *files*' configuration; *prefix* goes before its command (e.g. ``setpriv`` to run it as
    another user, who must be able to write the notify socket: it is made 0666)."""
    notify = NotifySocket(files.base / "notify.sock")
    if prefix:
        os.chmod(notify.path, 0o666)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                                              "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY")}
    env["NOTIFY_SOCKET"] = str(notify.path)
    env["PYTHONFAULTHANDLER"] = "1"
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    env.update(extra_env or {})
    stderr_path = files.base / "daemon.stderr"
    out = open(stderr_path, "wb") if stderr is None else None
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "kei_gateway", "-c", str(files.config), "run", "--log-target", log_target],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr if stderr is not None else out,
    )
    if out is not None:
        out.close()
    return DaemonProcess(process, notify, files, stderr_path)


def run_until_killed(files: GatewayFiles, point: str, act: Callable[[], object], timeout: float = 120.0,
                     crash_at: str | None = None) -> None:
    """Start the daemon armed to SIGKILL itself at crash *point* (``$KEI_GATEWAY_CRASH_AT`` = *crash_at*, default
    *point*), do *act* once it is ready, and wait until it has been killed there (asserted, with its stderr)."""
    from kei_gateway.runtime.crashpoints import CRASH_ENV

    crashing = start_daemon(files, extra_env={CRASH_ENV: crash_at or point})
    try:
        crashing.notify.wait_for("READY=1")
        act()
        code = crashing.process.wait(timeout=timeout)
    finally:
        crashing.notify.close()
    assert code == -9, f"the daemon should have been killed at {point}; stderr:\n{crashing.stderr()[-3000:]}"


@dataclass
class SimProcess:
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=PROCESS_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_jnks_sim(files: GatewayFiles, *extra: str) -> SimProcess:
    """``kei-gateway sim jnks`` on loopback, trusting the gateway's throwaway CA; waits until it accepts."""
    sim_dir = files.base / "sim"
    sim_dir.mkdir(exist_ok=True)
    log_path = sim_dir / "sim.log"
    try:
        process, port = start_jnks_sim_process(str(files.base / "credentials"), str(sim_dir / "root"), str(log_path),
                                               *extra, timeout=PROCESS_TIMEOUT)
    except SimulatorNotStarted as error:
        raise AssertionError(str(error)) from None
    return SimProcess(process, port, sim_dir / "root", log_path)


def jnks_flow_config(sim_url: str, allow: str = "127.0.0.0/8", extra: str = "") -> str:
    """:func:`~kei_gateway.sim.harness.jnks_flow_config_text` with the CA as ``CREDENTIALS/ca.pem`` (replace CREDENTIALS)."""
    return jnks_flow_config_text(sim_url, "CREDENTIALS/ca.pem", allow=allow, extra=extra)


@dataclass
class MpnSimProcess(SimProcess):
    """The MPN simulator process and its ``--report`` file."""

    report_path: Path = field(default_factory=Path)

    def report(self) -> dict[str, Any] | None:
        """The last report (written whenever nothing is pending), or None before the first."""
        try:
            return dict(json.loads(self.report_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None


def start_mpn_sim(files: GatewayFiles, push_port: int | None, *extra: str) -> MpnSimProcess:
    """``kei-gateway sim mpn`` on loopback with a ``--report``; pushing to the gateway on *push_port* if given.

    It pushes with ``peer-sim.crt`` (chaining to the gateway's ``ca.pem``) and trusts ``ca.pem`` for the
    gateway's server certificate; *extra* are more ``sim mpn`` options (shares, batch size, seed).
    """
    sim_dir = files.base / "mpn-sim"
    sim_dir.mkdir(exist_ok=True)
    log_path = sim_dir / "sim.log"
    report_path = sim_dir / "report.json"
    credentials = files.base / "credentials"
    push: list[str] = []
    if push_port is not None:
        push = ["--push-url", f"https://127.0.0.1:{push_port}/push/mpn-results",
                "--push-cert", str(credentials / "peer-sim.crt"), "--push-key", str(credentials / "peer-sim.key"),
                "--push-ca", str(credentials / "ca.pem")]
    try:
        process, port = start_mpn_sim_process(str(credentials), str(sim_dir / "root"), str(log_path),
                                              "--report", str(report_path), *push, *extra, timeout=PROCESS_TIMEOUT)
    except SimulatorNotStarted as error:
        raise AssertionError(str(error)) from None
    return MpnSimProcess(process, port, sim_dir / "root", log_path, report_path)
