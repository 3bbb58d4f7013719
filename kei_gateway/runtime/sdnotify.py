"""systemd service notifications (``sd_notify``) and the watchdog.

Outside systemd (no ``$NOTIFY_SOCKET``) every notification is a no-op, so the same
command runs in a terminal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kei_gateway.core.watchdog import ProbeOutcome, WatchdogVerdict, judge_probe
from kei_gateway.runtime import events

__all__ = ["Notifier", "SystemdNotifier", "watchdog_interval", "Watchdog", "reloading_message"]


class Notifier(Protocol):
    def notify(self, message: str) -> None:
        """Send one notification, e.g. ``"READY=1"`` or ``"STATUS=..."``."""
        ...


class SystemdNotifier:
    """Notifications through systemd-python's ``sd_notify``; a no-op without ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))

    def notify(self, message: str) -> None:
        if not self.enabled:
            return
        from systemd import daemon  # type: ignore[attr-defined]

        daemon.notify(message)


def reloading_message(monotonic_usec: int | None = None) -> str:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` that newer systemd versions expect."""
    usec = monotonic_usec if monotonic_usec is not None else time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return f"RELOADING=1\nMONOTONIC_USEC={usec}"


def watchdog_interval(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec=``), or None when no watchdog is asked for."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and int(owner) != (pid if pid is not None else os.getpid()):
        return None
    try:
        return max(int(usec) / 1_000_000 / 2, 0.05)
    except ValueError:
        return None


class Watchdog:
    """Pings ``WATCHDOG=1`` every *interval* while the reactor turns and a ledger check ends within it.

    The reactor answers by running the timer at all; the blocking pool and the ledger by ending *probe* —
    answered, or failed with the database's own error (*is_database_failure*: refused, unreachable, timed
    out) — within the interval (:func:`kei_gateway.core.watchdog.judge_probe`). A database that is down is
    reported (``database.unavailable``, *on_health*: ``/readyz`` and the gauge) but keeps the watchdog fed: a
    restart would not bring it back (issue 15). While a probe is still pending (a ledger call or the pool
    hangs), no new probe is started and no ping is sent, so systemd restarts the service once
    ``WatchdogSec=`` passes (``watchdog.starved``).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, notifier: Notifier, probe: Callable[[], defer.Deferred[object]],
                 interval: float, on_health: Callable[[bool], None] = lambda healthy: None,
                 is_database_failure: Callable[[BaseException], bool] = lambda error: True) -> None:
        self._clock = clock
        self._notifier = notifier
        self._probe = probe
        self.interval = interval
        self._on_health = on_health
        self._is_database_failure = is_database_failure
        self._pending: defer.Deferred[object] | None = None
        self._started = 0.0
        self._healthy = True
        self._down_since: float | None = None
        self._starving = False
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = clock
        self.pings = 0

    def start(self) -> None:
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()

    def _tick(self) -> None:
        if self._pending is not None:
            self._apply(judge_probe(ProbeOutcome.PENDING, self._clock.seconds() - self._started, self.interval))
            return
        started = self._started = self._clock.seconds()
        d = defer.maybeDeferred(self._probe)
        self._pending = d

        def answered(_: object) -> None:
            self._pending = None
            self._apply(judge_probe(ProbeOutcome.ANSWERED, self._clock.seconds() - started, self.interval))

        def failed(failure: Any) -> None:
            if failure.check(defer.CancelledError) and self._pending is not d:
                return  # stopped
            self._pending = None
            error = failure.value
            outcome = ProbeOutcome.REFUSED if self._is_database_failure(error) else ProbeOutcome.BROKEN
            detail = events.describe_error(error) if isinstance(error, BaseException) else str(error)
            self._apply(judge_probe(outcome, self._clock.seconds() - started, self.interval, detail))

        d.addCallbacks(answered, failed)

    def _apply(self, verdict: WatchdogVerdict) -> None:
        if verdict.database_up is not None:
            self._set_health(verdict.database_up, verdict.database_reason)
        if verdict.feed:
            self._starving = False
            self._notifier.notify("WATCHDOG=1")
            self.pings += 1
        elif verdict.starved and not self._starving:
            self._starving = True
            events.emit(self.log, events.WATCHDOG_STARVED, reason=verdict.starved)

    def _set_health(self, healthy: bool, reason: str = "") -> None:
        now = self._clock.seconds()
        if self._healthy and not healthy:
            self._down_since = now
            events.emit(self.log, events.DATABASE_UNAVAILABLE, reason=reason)
        elif healthy and not self._healthy:
            since, self._down_since = self._down_since, None
            events.emit(self.log, events.DATABASE_AVAILABLE, seconds=f"{now - since:.0f}" if since is not None else "?")
        self._healthy = healthy
        self._on_health(healthy)
