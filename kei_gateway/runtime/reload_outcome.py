"""What the daemon decided about its last reload, for ``systemctl reload`` to report.

``systemctl reload`` runs the unit's ``ExecReload=kei-gateway reload --pid $MAINPID``:
that signals the daemon (SIGHUP) and waits for the line the daemon writes to
``$RUNTIME_DIRECTORY/reload`` once it has accepted or refused the new file. Exit 0
means accepted; 1 means refused (the reason goes to stderr, i.e. the unit's journal)
or no verdict in time, and systemd then reports the reload as failed.

Why not run ``kei-gateway check-config`` before the signal: under systemd 252 the
control process of ``ExecReload=`` gets no credentials (its ``/run/credentials`` is
mounted inaccessible), so that check refuses every good configuration whose keys
are credentials; and a second check could disagree with the daemon's own. The
daemon is the one that decides; this only carries its answer (docs/decisions.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["FILE_NAME", "ReloadOutcome", "outcome_path", "write_outcome", "read_outcome", "wait_for_outcome"]

FILE_NAME = "reload"
MAX_BYTES = 4096  # one line; a longer file is not ours


@dataclass(frozen=True)
class ReloadOutcome:
    """One reload of the daemon *pid*: its *generation* (1, 2, … per process), accepted or not, and why not."""

    pid: int
    generation: int
    accepted: bool
    reason: str = ""

    def render(self) -> str:
        reason = " ".join(self.reason.split())
        return f"{self.pid} {self.generation} {'accepted' if self.accepted else 'refused'} {reason}".rstrip() + "\n"

    @classmethod
    def parse(cls, text: str) -> ReloadOutcome | None:
        """The outcome in *text*, or None when it is not one (partial, foreign, empty)."""
        if not text.endswith("\n"):
            return None
        fields = text.rstrip("\n").split(" ", 3)
        if len(fields) < 3 or not fields[0].isdigit() or not fields[1].isdigit() or \
                fields[2] not in ("accepted", "refused"):
            return None
        return cls(int(fields[0]), int(fields[1]), fields[2] == "accepted", fields[3] if len(fields) > 3 else "")


def outcome_path(environ: Mapping[str, str]) -> str | None:
    """``$RUNTIME_DIRECTORY/reload`` (the first directory when several are listed); None outside systemd."""
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return os.path.join(runtime, FILE_NAME) if runtime else None


def write_outcome(path: str, outcome: ReloadOutcome) -> None:
    """Replace *path* with *outcome* atomically (a reader never sees half a line)."""
    temporary = f"{path}.{outcome.pid}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(outcome.render())
    os.replace(temporary, path)


def read_outcome(path: str) -> ReloadOutcome | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return ReloadOutcome.parse(f.read(MAX_BYTES))
    except FileNotFoundError:
        return None


def wait_for_outcome(path: str, pid: int, after: int, timeout: float, clock: Callable[[], float],
                     sleep: Callable[[float], None]) -> ReloadOutcome | None:
    """The first outcome of daemon *pid* with a generation above *after*; None after *timeout* seconds."""
    deadline = clock() + timeout
    interval = 0.02
    while True:
        outcome = read_outcome(path)
        if outcome is not None and outcome.pid == pid and outcome.generation > after:
            return outcome
        if clock() >= deadline:
            return None
        sleep(interval)
        interval = min(interval * 2, 0.25)
