"""Named points where the crash-safety tests kill the daemon, as ``kill -9`` would — or stop it.

Inert in production: a point fires only when ``$KEI_GATEWAY_CRASH_AT`` names it
(``point`` or ``point@N`` for its N-th pass), which only the test suite sets. The
process then sends itself SIGKILL: no cleanup, no flush, exactly a crash.

``$KEI_GATEWAY_STOP_AT`` (same form) makes the process send itself SIGSTOP there instead,
once: the two-node tests stall a node at an exact step (a relay half done) and continue it
with SIGCONT later (SPEC §14).
"""

from __future__ import annotations

import os
import signal

__all__ = ["crashpoint", "CRASH_ENV", "STOP_ENV", "POINTS"]

CRASH_ENV = "KEI_GATEWAY_CRASH_AT"
STOP_ENV = "KEI_GATEWAY_STOP_AT"

POINTS = (
    "ingest.reading",      # part of the outbox file read and encrypted, nothing committed
    "ingest.stored",       # the blob is durable, the ledger knows nothing
    "ingest.committed",    # the transfer is committed, the original is still in the outbox
    "ingest.quarantine-committed",  # a refused file is stored and its QUARANTINED transfer committed, no errors file
    "ingest.quarantine-listed",     # ... and its errors file written, the original still in the outbox
    "send.mid-put",        # part of the body is on the wire (PUT name.part)
    "send.before-move",    # the .part is complete at the peer, MOVE not sent
    "send.after-move",     # the peer has the final name, the ledger still says SENDING
    "relay.staged",        # the receipt is durable as inbox/.name.part, the relay not yet recorded
    "relay.written",       # the receipt is in the inbox, the ledger still says VALIDATED
    "relay.committed",     # relayed and DONE, the DELETE at the peer not sent
    "download.committed",  # a downloaded file is stored and VALIDATED, not relayed, still at the peer
    "download.relayed",    # relayed (and DONE), the DELETE at the peer not sent
    "results.staged",      # payment results: the new records (of a group of files) durable as .name.part, nothing recorded
    "results.recorded",    # the results, relay names and DONE committed, the .part files not yet renamed
    "results.published",   # the results files are in the inbox (an earlier version's relay: the transfer still VALIDATED)
    "results.accept-staged",    # a small push relayed in its accepting commit: new records staged, NOTHING committed (no transfer)
    "results.accept-recorded",  # ... its transfer, results, DONE and both audit records committed, the .part not renamed, no 201
    "push.stored",         # a pushed file's blob is durable and valid, nothing committed, no answer sent
    "push.committed",      # the pushed file's transfer is committed VALIDATED, the 201 not yet sent
    "airis.inputs-recorded",  # AIRIS 突合: the three inputs stored and recorded, nothing run
    "airis.recorded",      # the results stored and recorded with the run's audit record, the inbox untouched
    "airis.staged",        # the three results staged as .name.part and their names recorded, none renamed
    "airis.publishing",    # the .dat renamed into the inbox, the .csv and .txt still staged
    "airis.published",     # all three in the inbox, the plaintext inputs still in the outboxes
    "airis.erased",        # the plaintext inputs erased, not yet listed in the 消去報告 nor marked removed
    "airis.listed",        # ... and listed in the 消去報告, the inputs' transfers not yet marked removed
)


def _armed(environ: os._Environ[str] | dict[str, str] = os.environ,
           variable: str = CRASH_ENV) -> tuple[str, int] | None:
    value = environ.get(variable)
    if not value:
        return None
    name, _, count = value.partition("@")
    if name not in POINTS:
        raise ValueError(f"{variable}={value!r}: unknown crash point; the points are {', '.join(POINTS)}")
    return name, int(count or 1)


_ARMED = _armed()
_STOP = _armed(variable=STOP_ENV)
_passes: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """Die here with SIGKILL if the tests armed *name* (for its N-th pass); stop here once with SIGSTOP if they
    asked for a stop (``$KEI_GATEWAY_STOP_AT``)."""
    if _STOP is not None and _STOP[0] == name:
        _passes["stop:" + name] = _passes.get("stop:" + name, 0) + 1
        if _passes["stop:" + name] == _STOP[1]:
            os.kill(os.getpid(), signal.SIGSTOP)  # the whole process, as `kill -STOP` would; SIGCONT goes on here
    if _ARMED is None or _ARMED[0] != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= _ARMED[1]:
        os.kill(os.getpid(), signal.SIGKILL)
