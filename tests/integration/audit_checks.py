"""After a kill -9 loop: every action in the ledger has its audit record, and no record lacks its action.

Issue 11: an action's record is committed in the action's own transaction, so no crash point can
separate them. Read straight from the daemon's SQLite ledger (the daemon is stopped first).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass

from tests.integration.harness import GatewayFiles

__all__ = ["Ledger", "read_ledger", "assert_every_action_recorded"]


@dataclass(frozen=True)
class Ledger:
    transfers: dict[int, tuple[str, str, str, bool]]
    """id → (direction, flow, state, pushed). *pushed*: an inbound transfer with no remote ETag (the
    simulators list an ETag with every file they offer for pull; a push has none)."""
    records: list[tuple[str, int | None]]
    """(event, transfer_id) of every audit record, in chain order."""


def read_ledger(files: GatewayFiles) -> Ledger:
    with sqlite3.connect(files.base / "state" / "ledger.sqlite3") as db:
        transfers = {int(row[0]): (row[1], row[2], row[3], row[1] == "in" and row[4] is None)
                     for row in db.execute("SELECT id, direction, flow, state, remote_etag FROM transfers")}
        records = [(str(row[0]), row[1]) for row in db.execute("SELECT event, transfer_id FROM audit ORDER BY sequence")]
    return Ledger(transfers, records)


def _expected(direction: str, flow: str, state: str, pushed: bool) -> Counter[str]:
    """The records the action(s) behind a transfer in this state must have left (one each)."""
    expected: Counter[str] = Counter()
    if direction == "out":
        expected["ingest.quarantined" if state == "QUARANTINED" else "ingest.queued"] += 1
        if state == "DONE":
            expected["transfer.sent"] += 1
        return expected
    if state == "QUARANTINED":
        expected["push.quarantined" if pushed else "download.quarantined"] += 1
        return expected
    expected["push.accepted" if pushed else "download.received"] += 1
    if state == "DONE":
        expected["results.relayed" if flow == "mpn-results" else "download.relayed"] += 1
    return expected


ACTION_EVENTS = frozenset({"ingest.queued", "ingest.quarantined", "transfer.sent", "push.accepted", "download.received",
                           "push.quarantined", "download.quarantined", "download.relayed", "results.relayed"})
"""The events whose record is committed with a transfer's action (``results.relay_finished`` counts as
``results.relayed``: the same relay, finished after a restart)."""


def assert_every_action_recorded(files: GatewayFiles, where: str) -> Ledger:
    """Each transfer has exactly the records of its actions, and each action record names a transfer that
    took that action; *where* goes in the message (the crash point)."""
    ledger = read_ledger(files)
    found: dict[int | None, Counter[str]] = {}
    for event, transfer_id in ledger.records:
        event = "results.relayed" if event == "results.relay_finished" else event
        if event in ACTION_EVENTS:
            found.setdefault(transfer_id, Counter())[event] += 1
    orphans = {tid: dict(c) for tid, c in found.items() if tid not in ledger.transfers}
    assert not orphans, f"after a crash at {where}: records of actions no transfer took: {orphans}"
    wrong = {}
    for transfer_id, (direction, flow, state, pushed) in sorted(ledger.transfers.items()):
        expected = _expected(direction, flow, state, pushed)
        got = found.get(transfer_id, Counter())
        if got != expected:
            wrong[transfer_id] = (direction, flow, state, "pushed" if pushed else "", dict(expected), dict(got))
    assert not wrong, (f"after a crash at {where}: transfers whose action records are not one per action "
                       f"(direction, flow, state, door, expected, found): {wrong}")
    return ledger
