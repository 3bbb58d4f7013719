"""The process harness for the demo, the benchmarks and the integration tests: configs, simulator processes, a notify socket, free ports.

Not imported by the daemon; it starts real processes and opens real sockets.
"""

from __future__ import annotations

import os
import socket
import threading
import subprocess
import sys
import time
from pathlib import Path


__all__ = ["NotifySocket", "NotificationTimeout", "free_port", "demo_config_text", "jnks_flow_config_text",
    "mpn_flow_config_text", "start_jnks_sim_process", "start_mpn_sim_process", "SimulatorNotStarted"]


def demo_config_text(base: str, metrics_port: int, lg_code: str = "131041", extra: str = "") -> str:
    """A minimal configuration: spool and state under *base*, credentials in *base*/credentials."""
    return f"""\
[gateway]
lg_code = "{lg_code}"
spool_dir = "{base}/spool"
state_dir = "{base}/state"

[tls]
certificate = "{base}/credentials/gateway.crt"
private_key = "{base}/credentials/gateway.key"

[keys]
store = "{base}/credentials/store.key"
audit = "{base}/credentials/audit.key"

[listeners.metrics]
address = "127.0.0.1:{metrics_port}"
allow = ["127.0.0.1/32"]
{extra}"""


def jnks_flow_config_text(sim_url: str, ca: str, allow: str = "127.0.0.0/8", poll_interval: str = "1s",
                          extra: str = "") -> str:
    """``[peers.jnks]``, ``[flows.jnks-payments]`` and ``[flows.jnks-receipts]`` against a JNKS simulator.

    *sim_url* is the simulator's base URL (``https://127.0.0.1:PORT/``), *ca* the CA file its
    server certificate chains to. Short timeouts and retries, for the demo and the tests; pass
    the result as ``extra`` to :func:`demo_config_text`.
    """
    return f"""
[peers.jnks]
url = "{sim_url}upload/"
results_url = "{sim_url}results/"
ca = "{ca}"
allow = ["{allow}"]
connect_timeout = "5s"
transfer_timeout = "1m"
retry = {{ attempts = 5, first_delay = "1s", max_delay = "5s" }}

[flows.jnks-payments]
peer = "jnks"
outbox = "outbox/jnks"

[flows.jnks-receipts]
peer = "jnks"
inbox = "inbox/jnks-receipts"
poll_interval = "{poll_interval}"
{extra}"""


def mpn_flow_config_text(sim_url: str, ca: str, push_port: int, allow: str = "127.0.0.0/8",
                         push_allow: str = "127.0.0.1/32", poll_interval: str = "1s",
                         unconfirmed_after: str = "3d", extra: str = "") -> str:
    """``[peers.mpn]``, ``[flows.mpn-slips]``, ``[flows.mpn-results]`` and ``[listeners.push]`` against an MPN simulator.

    *sim_url* is the simulator's base URL (``https://127.0.0.1:PORT/``: slips go to ``slips/``,
    results are pulled from ``results/``), *ca* the CA file its server certificate and its push
    client certificate chain to, *push_port* the loopback port of the gateway's push listener
    (the simulator pushes to ``https://127.0.0.1:<push_port>/push/mpn-results``). Short timeouts
    and retries, for the demo and the tests; pass the result as ``extra`` to :func:`demo_config_text`.
    """
    return f"""
[peers.mpn]
url = "{sim_url}slips/"
results_url = "{sim_url}results/"
ca = "{ca}"
allow = ["{allow}"]
push_allow = ["{push_allow}"]
connect_timeout = "5s"
transfer_timeout = "1m"
retry = {{ attempts = 5, first_delay = "1s", max_delay = "5s" }}

[flows.mpn-slips]
peer = "mpn"
outbox = "outbox/mpn-slips"

[flows.mpn-results]
peer = "mpn"
inbox = "inbox/mpn-results"
poll_interval = "{poll_interval}"
unconfirmed_after = "{unconfirmed_after}"

[listeners.push]
address = "127.0.0.1:{push_port}"
{extra}"""


class SimulatorNotStarted(Exception):
    """``kei-gateway sim jnks`` exited or did not listen in time; the message holds its log."""


def start_jnks_sim_process(credentials: str, root: str, log_path: str, *extra: str,
                           timeout: float = 60.0) -> tuple["subprocess.Popen[bytes]", int]:
    """``python -m kei_gateway sim jnks`` on a free loopback port, with the demo PKI in *credentials*.

    It serves ``peer-sim.crt``/``peer-sim.key`` and accepts clients whose certificate chains to
    ``ca.pem`` (the gateway's, from :func:`~kei_gateway.sim.pki.write_demo_credentials`); *extra* are
    more ``sim jnks`` options (``--reject-lines 3,7``). Returns the process and its port once it
    accepts connections; its output goes to *log_path*.
    """
    return _start_sim_process("jnks", "JNKS", credentials, root, log_path, extra, timeout)


def start_mpn_sim_process(credentials: str, root: str, log_path: str, *extra: str,
                          timeout: float = 60.0) -> tuple["subprocess.Popen[bytes]", int]:
    """``python -m kei_gateway sim mpn`` on a free loopback port, like :func:`start_jnks_sim_process`.

    *extra* are more ``sim mpn`` options (``--confirm-after 5``, ``--report FILE``, and for
    pushing ``--push-url``, ``--push-cert``, ``--push-key``, ``--push-ca``; ``peer-sim.crt``
    also serves as the push client certificate).
    """
    return _start_sim_process("mpn", "MPN", credentials, root, log_path, extra, timeout)


def _start_sim_process(kind: str, title: str, credentials: str, root: str, log_path: str, extra: tuple[str, ...],
                       timeout: float) -> tuple["subprocess.Popen[bytes]", int]:
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kei_gateway", "sim", kind, "--listen", f"127.0.0.1:{port}", "--root", root,
             "--cert", os.path.join(credentials, "peer-sim.crt"), "--key", os.path.join(credentials, "peer-sim.key"),
             "--client-ca", os.path.join(credentials, "ca.pem"), *extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
            process.wait()
            with open(log_path, encoding="utf-8", errors="replace") as f:
                raise SimulatorNotStarted(f"the {title} simulator did not start (exit code {process.returncode}): "
                                          f"{f.read()}")
        time.sleep(0.05)  # bounded poll of the port, not a wait for an outcome


class NotificationTimeout(Exception):
    """The awaited notification did not come in time."""


class NotifySocket:
    """What systemd's notification socket sees: the datagrams a service sends (``$NOTIFY_SOCKET``).

    Like systemd, it reads every datagram as it comes (a background thread), so the
    service never blocks on a full socket queue (only ~10 datagrams fit).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        """Notifications read but not yet returned by :meth:`wait_for`."""
        self.history: list[tuple[float, str]] = []
        """Every notification read, with the ``time.monotonic()`` it arrived at (e.g. the gaps between
        ``WATCHDOG=1``, which systemd would judge against ``WatchdogSec=``)."""
        self._lock = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                message = self.sock.recv(65536).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(message)
                self.history.append((time.monotonic(), message))
                self._lock.notify_all()

    def close(self) -> None:
        self._closed = True
        self._reader.join(timeout=5)
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def wait_for(self, wanted: str, timeout: float = 30.0) -> str:
        """The first unread notification holding a line that starts with *wanted*; at most *timeout* seconds.

        Notifications before it stay unread for later calls.
        """

        def matches(message: str) -> bool:
            return any(line.startswith(wanted) for line in message.splitlines())

        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for message in self.messages:
                    if matches(message):
                        self.messages.remove(message)
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NotificationTimeout(f"no {wanted!r} notification within {timeout:g}s; got {self.messages[-20:]}")
                self._lock.wait(remaining)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on *host*."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


