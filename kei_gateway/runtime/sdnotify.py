"""systemd service notifications (``sd_notify``) and the watchdog.

Outside systemd (no ``$NOTIFY_SOCKET``) every notification is a no-op, so the same
command runs in a terminal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

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
    """Pings ``WATCHDOG=1`` every *interval* only while the reactor and the database answer.

    The reactor answers by running the timer at all; the database by completing *probe*
    within the interval. While a probe is still pending (a stalled database), no new
    probe is started and no ping is sent, so systemd restarts the service once
    ``WatchdogSec=`` passes.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, notifier: Notifier, probe: Callable[[], defer.Deferred[object]],
                 interval: float, on_health: Callable[[bool], None] = lambda healthy: None) -> None:
        self._clock = clock
        self._notifier = notifier
        self._probe = probe
        self.interval = interval
        self._on_health = on_health
        self._pending: defer.Deferred[object] | None = None
        self._healthy = True
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
            self._set_health(False, "the database did not answer within the watchdog interval")
            return
        started = self._clock.seconds()
        d = defer.maybeDeferred(self._probe)
        self._pending = d

        def answered(_: object) -> None:
            self._pending = None
            if self._clock.seconds() - started <= self.interval:
                self._set_health(True)
                self._notifier.notify("WATCHDOG=1")
                self.pings += 1
            else:
                self._set_health(False, "the database answered too late")

        def failed(failure: object) -> None:
            self._pending = None
            reason = getattr(failure, "getErrorMessage", lambda: str(failure))()
            self._set_health(False, reason)

        d.addCallbacks(answered, failed)

    def _set_health(self, healthy: bool, reason: str = "") -> None:
        if self._healthy and not healthy:
            events.emit(self.log, events.DATABASE_UNAVAILABLE, reason=reason)
        self._healthy = healthy
        self._on_health(healthy)
