"""Refusals logged once per burst: the first at once, the rest as one summary when the burst is over.

A hostile or broken client can be refused hundreds of times a second (closed connections,
timeouts, 431s). Each refusal is counted in ``kei_gateway_denied_connections_total``; the
journal gets the first refusal of each (listener, source, reason) at once and, when that
burst is over (*window* seconds after its first refusal), one ``listener.refusals_repeated``
line with how many more there were. Memory is bounded: at most *max_bursts* bursts are
tracked; refusals beyond that go into one burst per listener and reason with source
``(many)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from kei_gateway.runtime import events

__all__ = ["BurstLog", "BURST_WINDOW", "MAX_BURSTS"]

BURST_WINDOW = 60.0
"""Seconds from a burst's first refusal to its summary."""
MAX_BURSTS = 256
"""Bursts tracked at once (listener, source, reason); more share one burst per listener and reason."""


@dataclass
class _Burst:
    listener: str
    source: str
    reason: str
    more: int
    call: IDelayedCall | None


class BurstLog:
    """Logs refusals once per burst (see the module docstring); *clock* is an ``IReactorTime``."""

    log = Logger(namespace="kei_gateway.runtime.bursts")

    def __init__(self, clock: Any, window: float = BURST_WINDOW, max_bursts: int = MAX_BURSTS) -> None:
        self.clock = clock
        self.window = window
        self.max_bursts = max_bursts
        self._bursts: dict[tuple[str, str, str], _Burst] = {}

    def refused(self, event: events.EventType, *, listener: str, source: str, reason: str,
                fields: Mapping[str, Any]) -> bool:
        """One refusal: log *event* with *fields* if it starts a burst (returns True), else count it for the summary."""
        key = (listener, source, reason)
        if key not in self._bursts and len(self._bursts) >= self.max_bursts:
            key = (listener, "(many)", reason)
        burst = self._bursts.get(key)
        if burst is not None:
            burst.more += 1
            return False
        events.emit(self.log, event, listener=listener, source=source, reason=reason, **fields)
        self._bursts[key] = _Burst(listener, key[1], reason, 0, self.clock.callLater(self.window, self._end, key))
        return True

    def _end(self, key: tuple[str, str, str]) -> None:
        burst = self._bursts.pop(key, None)
        if burst is not None and burst.more:
            events.emit(self.log, events.LISTENER_REFUSALS_REPEATED, listener=burst.listener, source=burst.source,
                        reason=burst.reason, count=burst.more, seconds=f"{self.window:g}")

    def flush(self) -> None:
        """End every burst now (at stop): the summaries are logged, no timer is left behind."""
        for key, burst in list(self._bursts.items()):
            if burst.call is not None and burst.call.active():
                burst.call.cancel()
            self._end(key)
