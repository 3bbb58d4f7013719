"""In-memory twins of the runtime doors: the blocking pool run at once, a notifier that records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer

__all__ = ["SynchronousBlocking", "RecordingNotifier"]


T = TypeVar("T")


class SynchronousBlocking:
    """A :class:`~kei_gateway.runtime.blocking.Blocking` door that runs the work at once, in the caller's thread."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        self.calls += 1
        return defer.maybeDeferred(f, *args, **kwargs)


class RecordingNotifier:
    """A :class:`~kei_gateway.runtime.sdnotify.Notifier` that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def notify(self, message: str) -> None:
        self.messages.append(message)

    def states(self, prefix: str) -> list[str]:
        return [m for m in self.messages if m.startswith(prefix)]
