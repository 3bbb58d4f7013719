"""The one door for blocking work (database, fsync, hashing): a dedicated thread pool.

Code that must block takes a :class:`Blocking` and calls ``blocking.run(f, *args)``,
getting a Deferred. The daemon injects :class:`ThreadPoolBlocking`; unit tests inject
:class:`kei_gateway.testing.SynchronousBlocking`. :func:`retry_transient` wraps a
blocking function so that transient database failures (SQLite "database is locked",
a PostgreSQL connection lost) are retried with tenacity before they surface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import tenacity
from sqlalchemy.exc import DBAPIError, OperationalError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = ["Blocking", "ThreadPoolBlocking", "is_transient", "retry_transient", "TRANSIENT_RETRY"]

T = TypeVar("T")


class Blocking(Protocol):
    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Run ``f(*args, **kwargs)`` off the reactor thread; fire with its result."""
        ...


class ThreadPoolBlocking:
    """Blocking work on a dedicated :class:`ThreadPool` (started and stopped by the service tree)."""

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        self._reactor = reactor
        self.pool = pool

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self.pool, f, *args, **kwargs)  # type: ignore[arg-type]


def is_transient(error: BaseException) -> bool:
    """True for database failures that a retry can cure."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, OperationalError):
        text = str(error.orig).lower() if error.orig is not None else str(error).lower()
        return any(marker in text for marker in (
            "database is locked", "database table is locked", "server closed the connection",
            "connection refused", "terminating connection", "could not connect"))
    return False


TRANSIENT_RETRY = dict(
    retry=tenacity.retry_if_exception(is_transient),
    stop=tenacity.stop_after_attempt(5),
    wait=tenacity.wait_exponential(multiplier=0.05, max=2.0) + tenacity.wait_random(0, 0.05),
    reraise=True,
)
"""tenacity arguments for retrying transient blocking failures (in the worker thread)."""


def retry_transient(f: Callable[..., T]) -> Callable[..., T]:
    """Decorate a blocking function so transient database failures are retried."""
    return tenacity.retry(**TRANSIENT_RETRY)(f)  # type: ignore[call-overload, no-any-return]
