"""Test doubles shipped with the package, so every consumer tests against the same fakes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer

__all__ = ["SynchronousBlocking", "RecordingNotifier", "demo_config_text"]

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
