"""When the daemon feeds systemd's watchdog: the rule, apart from the timer that applies it.

The watchdog is there to restart a daemon that is *stuck* — its reactor no longer turns, its
blocking pool is wedged, a ledger call hangs — and nothing else. A database that is down or
refuses is not a stuck daemon: a restart cannot bring it back, and two nodes restarted together
by one PostgreSQL outage would soon meet ``StartLimitBurst`` and stay down after the database
is back (issue 15). So every interval the daemon runs one bounded ledger check through its
blocking pool and judges how it ended:

- it **completed** within *bound* seconds — the database answered, or refused or timed out (a
  failure the database's driver reports: connection refused, server gone, ``statement_timeout``)
  — : the reactor turns, the pool runs, the ledger call ends. Feed the watchdog; the database's
  health (``/readyz``, ``kei_gateway_database_up``, ``database.unavailable``) follows the answer;
- it is **still pending** after *bound* seconds, or completed later than that: something of ours
  hangs (the pool, a ledger call beyond the driver's timeouts). Stop feeding: systemd restarts the
  daemon after ``WatchdogSec=``;
- it **broke** with an error of our own process (not the database's: the connection pool's
  timeout, a programming error): stop feeding as well.

Pure: times are passed in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ProbeOutcome", "WatchdogVerdict", "judge_probe"]


class ProbeOutcome(enum.Enum):
    """How the ledger check ended (or that it has not)."""

    ANSWERED = "answered"
    """The database answered the check."""
    REFUSED = "refused"
    """The database's driver reported a failure: refused, unreachable, timed out, the server gone."""
    BROKEN = "broken"
    """Our own process failed the check (not the database's answer)."""
    PENDING = "pending"
    """The check has not ended yet."""


@dataclass(frozen=True)
class WatchdogVerdict:
    feed: bool
    """Send ``WATCHDOG=1`` now."""
    database_up: bool | None
    """The database's health as the check shows it (a check that hangs counts as no answer); None: the check
    says nothing of it (still within its bound, or broken in the daemon)."""
    database_reason: str = ""
    """Why the database is not up (the driver's words)."""
    starved: str = ""
    """Why the watchdog is not fed (empty while there is nothing to say yet: a check still within its bound)."""


def judge_probe(outcome: ProbeOutcome, elapsed: float, bound: float, detail: str = "") -> WatchdogVerdict:
    """The verdict on a check that ended with *outcome*, or is still pending, *elapsed* seconds after it
    started; *detail* describes a failure."""
    if outcome is ProbeOutcome.PENDING:
        if elapsed < bound:
            return WatchdogVerdict(feed=False, database_up=None)
        return WatchdogVerdict(feed=False, database_up=False, database_reason=f"no answer within {bound:g}s",
                               starved=f"a ledger check has not ended after {elapsed:.1f}s (bound {bound:g}s): "
                                       f"a ledger call or the blocking pool hangs")
    if outcome is ProbeOutcome.BROKEN:
        return WatchdogVerdict(feed=False, database_up=None, starved=f"the ledger check failed in the daemon: {detail}")
    up = outcome is ProbeOutcome.ANSWERED
    reason = "" if up else detail
    if elapsed > bound:
        return WatchdogVerdict(feed=False, database_up=up, database_reason=reason,
                               starved=f"a ledger check took {elapsed:.1f}s (bound {bound:g}s): "
                                       f"a ledger call or the blocking pool is too slow")
    return WatchdogVerdict(feed=True, database_up=up, database_reason=reason)
