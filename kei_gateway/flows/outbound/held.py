"""Bulk holds that wait too long (SPEC §7, issue 6 part 4): a HELD file older than 24 h raises a warning.

A file over ``hold_over_records`` is ``HELD`` until the person in charge runs
``kei-gateway transfers approve ID`` (or ``cancel``). Nobody may forget one:
:class:`HeldWatch` looks at the ledger every :data:`CHECK_INTERVAL` seconds and
emits ``transfer.held_overdue`` for each transfer HELD for more than
:data:`OVERDUE_AFTER` — once per transfer per :data:`REPEAT_AFTER` (a day), not
at every look. The memory of what was warned is the process's: after a restart
each overdue hold is warned once more, which is what an operator wants anyway.

:func:`overdue_holds` is the pure rule; the service is the thin adapter around it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from kei_gateway.adapters.ledger import TransferRow
from kei_gateway.adapters.ports import TransferLedgerPort
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking

__all__ = ["HeldWatch", "OverdueHold", "overdue_holds", "OVERDUE_AFTER", "REPEAT_AFTER", "CHECK_INTERVAL"]

OVERDUE_AFTER = 24 * 3600.0
"""A hold older than this (seconds since the transfer was created) is overdue."""
REPEAT_AFTER = 24 * 3600.0
"""An overdue hold is warned again only after this long."""
CHECK_INTERVAL = 15 * 60.0
"""How often the ledger is looked at."""
HELD_LIMIT = 10_000
"""At most this many HELD transfers are looked at per check (newest first)."""

log = Logger(namespace="kei_gateway.flows.held")


@dataclass(frozen=True)
class OverdueHold:
    """A HELD transfer to warn about now."""

    row: TransferRow
    hours: int


def overdue_holds(rows: Iterable[TransferRow], now: float, last_warned: dict[int, float],
                  overdue_after: float = OVERDUE_AFTER, repeat_after: float = REPEAT_AFTER) -> list[OverdueHold]:
    """The HELD transfers among *rows* to warn about at *now* (Unix time), oldest first.

    *last_warned* maps transfer id to when it was last warned; it is updated for
    every hold returned, and forgets transfers that are no longer HELD, so it
    stays as small as the set of holds.
    """
    held = [row for row in rows if row.state == S.HELD]
    for gone in set(last_warned) - {row.id for row in held}:
        del last_warned[gone]
    due = []
    for row in sorted(held, key=lambda r: (r.created_at, r.id)):
        age = now - row.created_at.timestamp()
        if age <= overdue_after:
            continue
        warned = last_warned.get(row.id)
        if warned is not None and now - warned < repeat_after:
            continue
        last_warned[row.id] = now
        due.append(OverdueHold(row, int(age // 3600)))
    return due


class HeldWatch(service.Service):
    """Warns (``transfer.held_overdue``) about each HELD transfer waiting more than 24 h, once a day.

    *clock* is an ``IReactorTime``; the ledger is read through *blocking*.
    """

    name = "held-watch"

    def __init__(self, ledger: TransferLedgerPort, blocking: Blocking, clock: Any,
                 interval: float = CHECK_INTERVAL, overdue_after: float = OVERDUE_AFTER,
                 repeat_after: float = REPEAT_AFTER) -> None:
        self.ledger, self.blocking, self.clock = ledger, blocking, clock
        self.interval, self.overdue_after, self.repeat_after = interval, overdue_after, repeat_after
        self.last_warned: dict[int, float] = {}
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        # now=True: holds left over from before a restart are warned about at once.
        self._loop.start(self.interval, now=True).addErrback(self._stopped)

    def _stopped(self, failure: Failure) -> None:
        events.emit(log, events.INTERNAL_ERROR,
                    reason=f"held-transfer check stopped: {failure.type.__name__ if failure.type else 'error'}")

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self) -> defer.Deferred[list[OverdueHold]]:
        """Look at the HELD transfers once; warn about the overdue ones. A database failure is logged, not raised."""

        def warn(rows: list[TransferRow]) -> list[OverdueHold]:
            due = overdue_holds(rows, self.clock.seconds(), self.last_warned, self.overdue_after, self.repeat_after)
            for hold in due:
                row = hold.row
                events.emit(log, events.TRANSFER_HELD_OVERDUE, flow=row.flow, peer=row.peer, transfer_id=row.id,
                            records=row.record_count, sha256=row.sha256, hours=hold.hours,
                            held_since=row.created_at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            return due

        def failed(failure: Any) -> list[OverdueHold]:
            events.emit(log, events.INTERNAL_ERROR,
                        reason=f"cannot list HELD transfers: {events.describe_error(failure.value)}")
            return []

        d = self.blocking.run(self.ledger.list_transfers, state=S.HELD, limit=HELD_LIMIT, oldest_first=True)
        return d.addCallbacks(warn, failed)
