"""Japan Standard Time: the zone of every date the peers and the tax system speak of."""

from __future__ import annotations

import datetime
import time

__all__ = ["JST", "today_in_jst"]

JST = datetime.timezone(datetime.timedelta(hours=9), "JST")
"""UTC+9, no daylight saving."""


def today_in_jst(seconds: float | None = None) -> datetime.date:
    """The date in Japan at Unix time *seconds* (now when omitted)."""
    return datetime.datetime.fromtimestamp(time.time() if seconds is None else seconds, JST).date()
