"""Per-push timelines and reactor stalls, for ``bench/relay.py`` only (issue 16).

Inert unless ``$KEI_BENCH_TIMELINE`` names a directory when the daemon starts: then
each push that is relayed appends one JSON line to ``DIR/timeline.jsonl`` with the
monotonic stamps (seconds, ``time.monotonic``) of its stages, keyed by transfer id,
and :class:`StallWatch` appends a line for each reactor tick that came late by more
than :data:`STALL_THRESHOLD`. No name, record or personal value is written: a transfer
id, stage names and times. When off, :func:`stamp` is one attribute test.

Stages of a push, in order (see docs/performance.md, "Issue 16: where the relay's tail comes from"):
``received`` (headers in), ``body`` (last body byte), ``stored`` (blob written and
fsynced), ``committed`` (VALIDATED transfer committed), ``relay_start`` (the relay's
turn came: its lane was free; a small file's group starts together), ``looked_up`` (the file read and
every result looked up; in the large-file lane also inserted aside and the ``.part`` written),
``staged`` (``.part`` files and directory fsynced), ``recorded`` (results, relay name and DONE
committed, issue 16), ``published`` (renamed, directory fsynced), ``done`` (back on the reactor).
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

__all__ = ["TIMELINE_ENV", "Timeline", "TIMELINE", "StallWatch", "STALL_INTERVAL", "STALL_THRESHOLD", "GcWatch"]

TIMELINE_ENV = "KEI_BENCH_TIMELINE"
STALL_INTERVAL = 0.005
"""Seconds between the stall watch's ticks."""
STALL_THRESHOLD = 0.005
"""A tick later than this (seconds) is written as a stall."""


class Timeline:
    """Stamps per push (by a key: first the push object, then its transfer id); a no-op when *out* is None."""

    def __init__(self, out: TextIO | None, now: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.enabled = out is not None
        self.now = now
        self._open: dict[Any, dict[str, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Timeline:
        directory = environ.get(TIMELINE_ENV)
        if not directory:
            return cls(None)
        return cls(open(os.path.join(directory, "timeline.jsonl"), "a", buffering=1, encoding="utf-8"))

    def stamp(self, key: Any, stage: str) -> None:
        """Record *stage* of the push *key* now (any thread)."""
        if not self.enabled:
            return
        at = self.now()
        with self._lock:
            self._open.setdefault(key, {})[stage] = at

    def rekey(self, old: Any, new: Any) -> None:
        """The push *old* is now known as *new* (its transfer id, once committed)."""
        if not self.enabled:
            return
        with self._lock:
            stamps = self._open.pop(old, None)
            if stamps is not None:
                self._open[new] = stamps

    def drop(self, key: Any) -> None:
        """The push *key* ended without a relay (refused, repeated, broken): nothing is written."""
        if not self.enabled:
            return
        with self._lock:
            self._open.pop(key, None)

    def close(self, key: Any, stage: str) -> None:
        """Stamp the last *stage* of *key* and write its line (only if it was opened by a push)."""
        if not self.enabled:
            return
        at = self.now()
        with self._lock:
            stamps = self._open.pop(key, None)
        if stamps is None:
            return  # not a push (a pulled file, a recovery)
        stamps[stage] = at
        self.write({"push": key if isinstance(key, int) else None, **stamps})

    def write(self, line: dict[str, Any]) -> None:
        assert self.out is not None
        with self._lock:
            self.out.write(json.dumps(line) + "\n")


class GcWatch:
    """Writes each garbage collection longer than *threshold* to *timeline* (``gc.callbacks``): a collection
    holds the GIL, so it stalls the reactor and every worker thread alike. Installed only when enabled."""

    def __init__(self, timeline: Timeline, now: Callable[[], float] = time.monotonic,
                 threshold: float = STALL_THRESHOLD) -> None:
        self.timeline, self.now, self.threshold = timeline, now, threshold
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self.now()
            return
        took = self.now() - self._started
        if took > self.threshold:
            self.timeline.write({"gc": round(took, 6), "generation": info.get("generation"), "at": self.now()})

    def install(self) -> None:
        if self.timeline.enabled and self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


TIMELINE = Timeline.from_environ()
"""The daemon's timeline (off unless ``$KEI_BENCH_TIMELINE`` is set at start)."""


class StallWatch:
    """A tick every *interval*; a tick later than *threshold* is written to *timeline* as a stall.

    Started only when the timeline is enabled: it costs a wake-up every 5 ms.
    """

    def __init__(self, clock: Any, timeline: Timeline, now: Callable[[], float] = time.monotonic,
                 interval: float = STALL_INTERVAL, threshold: float = STALL_THRESHOLD) -> None:
        self.clock, self.timeline, self.now = clock, timeline, now
        self.interval, self.threshold = interval, threshold
        self._due = 0.0
        self._call: Any = None

    def start(self) -> None:
        if self.timeline.enabled and self._call is None:
            self._schedule()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self.now() + self.interval
        self._call = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        at = self.now()
        late = at - self._due
        if late > self.threshold:
            self.timeline.write({"stall": round(late, 6), "at": at})
        self._schedule()
