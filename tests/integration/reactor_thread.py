"""Twisted's global reactor in a background thread, for integration tests under plain pytest.

``pytest-twisted`` is not installed and trial's ``TestCase`` does not run a real
reactor under pytest, so the ``reactor_thread`` fixture (session scope: a reactor
cannot be restarted) runs ``reactor.run(installSignalHandlers=False)`` in a
daemon thread and :meth:`ReactorThread.run` executes a Deferred-returning
function there, waiting at most *timeout* seconds (the Deferred is cancelled
then). Results and exceptions come back to the test thread as they are::

    def test_x(reactor_thread: ReactorThread) -> None:
        result = reactor_thread.run(lambda: client.put(...), timeout=30)
        with pytest.raises(RemoteConflict):
            reactor_thread.run(lambda: client.put(...))

Only integration tests use it; unit tests use ``Clock``/``MemoryReactor``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

T = TypeVar("T")


class ReactorThread:
    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self._thread = threading.Thread(target=self._run, name="twisted-reactor", daemon=True)
        self._thread.start()
        started: queue.Queue[bool] = queue.Queue()
        self.reactor.callFromThread(started.put, True)
        started.get(timeout=30)

    def _run(self) -> None:
        self.reactor.run(installSignalHandlers=False)

    def run(self, f: Callable[[], defer.Deferred[T] | T], timeout: float = 30.0) -> T:
        """Call *f* in the reactor thread; return its (Deferred's) result or raise its exception."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("ReactorThread.run called from the reactor thread itself: it would deadlock")
        outcome: queue.Queue[tuple[bool, Any]] = queue.Queue()
        holder: list[defer.Deferred[Any]] = []

        def start() -> None:
            d = defer.maybeDeferred(f)
            holder.append(d)
            d.addCallbacks(lambda result: outcome.put((True, result)),
                           lambda failure: outcome.put((False, failure)))

        self.reactor.callFromThread(start)
        try:
            ok, value = outcome.get(timeout=timeout)
        except queue.Empty:
            self.reactor.callFromThread(lambda: holder and holder[0].cancel())
            pytest.fail(f"the reactor call did not finish within {timeout:g}s")
        if ok:
            return value  # type: ignore[no-any-return]
        assert isinstance(value, Failure)
        raise value.value

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self._thread.join(timeout=30)


@pytest.fixture(scope="session")
def reactor_thread() -> Iterator[ReactorThread]:
    """The global reactor running in a background thread for the rest of the session."""
    thread = ReactorThread()
    yield thread
    thread.stop()
