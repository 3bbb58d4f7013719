"""Run a job one at a time; a request while it runs asks for exactly one more run after it.

The outbox watcher's scans, the sender's passes and the AIRIS flow's checks are
requested from several places (inotify, a periodic timer, a reload, the end of a
transfer). Requests that arrive during a run are coalesced into one run after it,
so nothing is missed and no two runs overlap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

__all__ = ["OneAtATime"]


class OneAtATime:
    """Coalesces requests for *job* (a function returning a Deferred).

    *may_start* is asked before each run (e.g. "the service is running"); *more* is
    asked with a run's result whether to run again at once (e.g. "the queue was not
    empty"); *schedule*, when given, starts that next run (``lambda f: clock.callLater(0, f)``
    drains a queue without recursion), else it starts directly.
    """

    def __init__(self, job: Callable[[], defer.Deferred[Any]], *, may_start: Callable[[], bool],
                 more: Callable[[object], bool] = lambda _: False,
                 schedule: Callable[[Callable[[], object]], object] | None = None) -> None:
        self._job, self._may_start, self._more, self._schedule = job, may_start, more, schedule
        self.in_flight: defer.Deferred[Any] | None = None
        """The run in progress, if any (a stop waits for it)."""
        self._again = False

    def request(self) -> defer.Deferred[Any] | None:
        """Run now; or, if a run is in progress, once more after it. None when it may not start."""
        if self.in_flight is not None:
            self._again = True
            return self.in_flight
        if not self._may_start():
            return None
        self._again = False
        d = self._job()
        self.in_flight = d

        def finished(result: object) -> None:
            self.in_flight = None
            if (self._again or self._more(result)) and self._may_start():
                if self._schedule is None:
                    self.request()
                else:
                    self._schedule(self.request)

        d.addBoth(finished)
        return d
