"""Test doubles shipped with the package, so every consumer tests against the same fakes."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer

__all__ = ["SynchronousBlocking", "RecordingNotifier", "NotifySocket", "NotificationTimeout", "free_port", "demo_config_text"]

T = TypeVar("T")


class SynchronousBlocking:
    """A :class:`~kei_gateway.blocking.Blocking` door that runs the work at once, in the caller's thread."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        self.calls += 1
        return defer.maybeDeferred(f, *args, **kwargs)


class RecordingNotifier:
    """A :class:`~kei_gateway.sdnotify.Notifier` that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def notify(self, message: str) -> None:
        self.messages.append(message)

    def states(self, prefix: str) -> list[str]:
        return [m for m in self.messages if m.startswith(prefix)]


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


class NotificationTimeout(Exception):
    """The awaited notification did not come in time."""


class NotifySocket:
    """What systemd's notification socket sees: the datagrams a service sends (``$NOTIFY_SOCKET``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[str] = []
        """Notifications read but not yet returned by :meth:`wait_for`."""

    def close(self) -> None:
        self.sock.close()

    def wait_for(self, wanted: str, timeout: float = 30.0) -> str:
        """The first notification holding a line that starts with *wanted*; at most *timeout* seconds."""

        def matches(message: str) -> bool:
            return any(line.startswith(wanted) for line in message.splitlines())

        for message in self.messages:
            if matches(message):
                self.messages.remove(message)
                return message
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NotificationTimeout(f"no {wanted!r} notification within {timeout:g}s; got {self.messages}")
            self.sock.settimeout(remaining)
            try:
                message = self.sock.recv(65536).decode()
            except socket.timeout:
                continue
            if matches(message):
                return message
            self.messages.append(message)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on *host*."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
