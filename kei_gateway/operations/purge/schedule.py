"""When the daily purge runs: ``gateway.purge_at`` as JST wall-clock time (pure functions of ``now``).

JST has no daylight saving, so "00:30 every day" is one instant a day, 24 hours
apart. A run is *missed* when the most recent scheduled time is later than the
last run that completed (the daemon was down, or the run failed): the daemon then
runs the purge at start.
"""

from __future__ import annotations

import datetime

from kei_gateway.core.jst import JST

__all__ = ["scheduled_before", "next_scheduled", "missed_run"]


def scheduled_before(now: datetime.datetime, purge_at: tuple[int, int]) -> datetime.datetime:
    """The latest scheduled purge time at or before *now* (UTC)."""
    local = now.astimezone(JST)
    hour, minute = purge_at
    today = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    when = today if today <= local else today - datetime.timedelta(days=1)
    return when.astimezone(datetime.timezone.utc)


def next_scheduled(now: datetime.datetime, purge_at: tuple[int, int]) -> datetime.datetime:
    """The first scheduled purge time strictly after *now* (UTC)."""
    return scheduled_before(now, purge_at) + datetime.timedelta(days=1)


def missed_run(last_completed: datetime.datetime | None, now: datetime.datetime,
               purge_at: tuple[int, int]) -> datetime.datetime | None:
    """The scheduled time whose run is missing (to run now), or None when the last run is recent enough.

    With no completed run at all (a new installation, or the reports were removed)
    the purge is due: running it finds nothing to erase, or erases what is overdue.
    """
    due = scheduled_before(now, purge_at)
    if last_completed is None or last_completed < due:
        return due
    return None
