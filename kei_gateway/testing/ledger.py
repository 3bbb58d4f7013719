"""In-memory twins of the ledgers: the same rows, the same checked transitions, no database.

:class:`InMemoryLedger` is a :class:`~kei_gateway.adapters.ports.TransferLedgerPort`;
:class:`InMemoryResultLedger` a :class:`~kei_gateway.adapters.ports.ResultLedgerPort` over
the transfers of an :class:`InMemoryLedger` (the relay decision changes both in one step,
as the real one does in one transaction). ``tests/unit/test_ledger_twins.py`` runs the
same contract against the SQLite adapters and these twins.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from kei_gateway.adapters.ledger.leases import Fence, Fenced, Hold
from kei_gateway.adapters.ledger.ledger import OPEN_STATES, AuditEvent, Claimed, NewTransfer, TransferNotFound, TransferRow
from kei_gateway.core.lease import LeaseKind, StartAction, decide_claim, decide_release, ends_with_done, is_current, \
    is_live, on_start, revoke
from kei_gateway.adapters.ledger.results import AcceptDecider, DuplicateResult, NotRelayable, RelayDecision
from kei_gateway.core.jst import JST
from kei_gateway.core.results import KIND_CANCEL, KIND_FINAL, KIND_PROVISIONAL, ResultFacts, StoredResult
from kei_gateway.core.results import fresh_results, under_recorded_keys
from kei_gateway.core.transfer import Transition, TransferState, check_transition, on_restart
from kei_gateway.testing.leases import LeaseTable

__all__ = ["InMemoryLedger", "InMemoryResultLedger"]

_WAITING = (TransferState.QUEUED, TransferState.RETRY_WAIT, TransferState.SENDING)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time given to the ledger must be timezone-aware")
    return value.astimezone(timezone.utc)


class InMemoryLedger:
    """Transfers in a dict. :attr:`fail` set to an exception makes every call raise it (a database gone away)."""

    def __init__(self) -> None:
        self.rows: dict[int, TransferRow] = {}
        self.audit: list[tuple[str, dict[str, Any]]] = []
        """The audit records written with their actions (event name, fields), as the real ledger chains them."""
        self.fail: BaseException | None = None
        self._next_id = 1
        self._lock = threading.RLock()
        self.leases: LeaseTable = LeaseTable()
        """The lease rows (SPEC §14); share one table between two ledgers' twins to play two nodes."""

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    # -- Ledger

    def ping(self) -> None:
        self._check()

    def queue_counts(self) -> dict[tuple[str, str], int]:
        self._check()
        counts: dict[tuple[str, str], int] = {}
        for row in self.rows.values():
            if row.state in OPEN_STATES:
                key = (row.flow, str(row.state))
                counts[key] = counts.get(key, 0) + 1
        return counts

    def oldest_queued(self) -> dict[str, Any]:
        self._check()
        oldest: dict[str, datetime] = {}
        for row in self.rows.values():
            if row.state in _WAITING and (row.flow not in oldest or row.created_at < oldest[row.flow]):
                oldest[row.flow] = row.created_at
        return dict(oldest)

    # -- TransferLedger

    @property
    def records_audit(self) -> bool:
        return True

    def add_transfer(self, *, flow: str, direction: str, peer: str, local_name: str, state: TransferState,
                     size: int, sha256: str | None, record_count: int, blob_id: str | None, now: datetime,
                     last_error: str | None = None, source_removed: bool = False, remote_name: str | None = None,
                     remote_etag: str | None = None, audit: AuditEvent | None = None,
                     fence: Fence | None = None, hold: Hold | None = None) -> TransferRow:
        self._check()
        with self._lock, self.leases.lock:
            self.check_fence(fence)
            if hold is not None and (hold.kind, str(self._next_id)) in self.leases.leases:
                raise ValueError(f"lease {hold.kind}:{self._next_id} exists already")
            row = TransferRow(id=self._next_id, flow=flow, direction=direction, peer=peer,
                              state=TransferState(state), local_name=local_name, remote_name=remote_name, size=size,
                              sha256=sha256, record_count=record_count, attempts=0, next_attempt_at=None,
                              last_error=last_error, receipt_summary=None, created_at=_utc(now),
                              updated_at=_utc(now), blob_id=blob_id, source_removed=source_removed,
                              approved_by=None, remote_etag=remote_etag, relay_name=None)
            self.rows[row.id] = row
            self._next_id += 1
            if hold is not None:
                lease = decide_claim(None, kind=hold.kind, key=str(row.id), node=hold.node, now=_utc(now),
                                     duration=hold.duration).lease
                assert lease is not None
                self.leases.leases[(hold.kind, str(row.id))] = lease
            if audit is not None:
                self.audit.append((audit[0], {**audit[1], "transfer_id": row.id}))
            return row

    def get(self, transfer_id: int) -> TransferRow:
        self._check()
        row = self.rows.get(transfer_id)
        if row is None:
            raise TransferNotFound(transfer_id)
        return row

    def transition(self, transfer_id: int, new_state: TransferState, now: datetime, *,
                   audit: AuditEvent | None = None, fence: Fence | None = None, release: bool = False,
                   **fields: Any) -> TransferRow:
        return self._change(transfer_id, now, new_state, fields, audit, fence, release)

    def apply(self, transfer_id: int, transition: Transition, now: datetime, *, fence: Fence | None = None,
              release: bool = False) -> TransferRow:
        return self._change(transfer_id, now, transition.state, dict(transition.fields), None, fence, release)

    def update(self, transfer_id: int, now: datetime, *, fence: Fence | None = None, **fields: Any) -> TransferRow:
        return self._change(transfer_id, now, None, fields, None, fence)

    def check_fence(self, fence: Fence | None) -> None:
        """Raise :class:`Fenced` unless *fence* (if any) is current: what the real ledger checks in a commit."""
        if fence is None:
            return
        with self.leases.lock:
            current = self.leases.leases.get((fence.kind, fence.key))
            if not is_current(current, fence.node, fence.token):
                raise Fenced(fence, current)

    def _change(self, transfer_id: int, now: datetime, new_state: TransferState | None,
                fields: dict[str, Any], audit: AuditEvent | None = None, fence: Fence | None = None,
                release: bool = False) -> TransferRow:
        with self._lock, self.leases.lock:
            self.check_fence(fence)
            row = self.get(transfer_id)
            changes = dict(fields, updated_at=_utc(now))
            if new_state is not None:
                changes["state"] = check_transition(row.state, new_state)
            unknown = set(changes) - set(TransferRow.__dataclass_fields__)
            if unknown:
                raise AttributeError(f"transfers have no column {', '.join(sorted(unknown))}")
            row = dataclasses.replace(row, **changes)
            self.rows[transfer_id] = row
            if fence is not None and release:
                released = decide_release(self.leases.leases.get((fence.kind, fence.key)), node=fence.node,
                                          token=fence.token)
                if released is not None:
                    self.leases.leases[(fence.kind, fence.key)] = released
            if audit is not None:
                self.audit.append((audit[0], {**audit[1], "transfer_id": transfer_id}))
            return row

    def unremoved_source(self, flow: str, local_name: str, sha256: str | None) -> TransferRow | None:
        self._check()
        return next((row for row in sorted(self.rows.values(), key=lambda r: r.id)
                     if (row.flow, row.local_name, row.sha256, row.direction) == (flow, local_name, sha256, "out")
                     and not row.source_removed), None)

    def requeue_sending(self, now: datetime, node: str | None = None) -> int:
        self._check()
        count = 0
        with self._lock, self.leases.lock:
            for row in list(self.rows.values()):
                if row.state != TransferState.SENDING:
                    continue
                key = (LeaseKind.TRANSFER.value, str(row.id))
                lease = self.leases.leases.get(key)
                if on_start(lease, node=node or "", now=now) is StartAction.LEAVE:
                    continue
                after = on_restart(row.state)
                if after is not None:
                    self.transition(row.id, after, now)
                    if lease is not None:
                        self.leases.leases[key] = revoke(lease)
                    count += 1
        return count

    def claim_due(self, flow: str, now: datetime, node: str, duration: float, scan: int = 20) -> Claimed | None:
        self._check()
        with self._lock, self.leases.lock:
            for row in sorted(self.rows.values(), key=lambda r: r.id):
                if row.flow != flow or row.direction != "out":
                    continue
                key = (LeaseKind.TRANSFER.value, str(row.id))
                lease = self.leases.leases.get(key)
                waiting = row.state == TransferState.QUEUED or (
                    row.state == TransferState.RETRY_WAIT and row.next_attempt_at is not None
                    and row.next_attempt_at <= now)
                stale_send = row.state == TransferState.SENDING and lease is not None and not is_live(lease, now)
                if not (waiting or stale_send):
                    continue
                decision = decide_claim(lease, kind=key[0], key=key[1], node=node, now=now, duration=duration)
                if decision.lease is None:
                    continue
                self.leases.leases[key] = decision.lease
                if stale_send:
                    row = self.transition(row.id, on_restart(row.state) or row.state, now)
                return Claimed(row, Fence(key[0], key[1], node, decision.lease.token), decision)
        return None

    def claim_received(self, transfer_id: int, node: str, now: datetime, duration: float) -> Claimed | None:
        self._check()
        with self._lock, self.leases.lock:
            row = self.rows.get(transfer_id)
            if row is None or row.state != TransferState.VALIDATED:
                return None
            key = (LeaseKind.RECEIVED.value, str(transfer_id))
            decision = decide_claim(self.leases.leases.get(key), kind=key[0], key=key[1], node=node, now=now,
                                    duration=duration)
            if decision.lease is None:
                return None
            self.leases.leases[key] = decision.lease
            return Claimed(row, Fence(key[0], key[1], node, decision.lease.token), decision)

    def received_token(self, transfer_id: int) -> int | None:
        self._check()
        lease = self.leases.leases.get((LeaseKind.RECEIVED.value, str(transfer_id)))
        return lease.token if lease is not None else None

    def due(self, flow: str, now: datetime, limit: int = 10) -> list[TransferRow]:
        self._check()
        due = [row for row in sorted(self.rows.values(), key=lambda r: r.id)
               if row.flow == flow and row.direction == "out"
               and (row.state == TransferState.QUEUED
                    or (row.state == TransferState.RETRY_WAIT and row.next_attempt_at is not None
                        and row.next_attempt_at <= now))]
        return due[:limit]

    def list_transfers(self, *, state: str | None = None, flow: str | None = None,
                       limit: int = 100, oldest_first: bool = False) -> list[TransferRow]:
        self._check()
        rows = sorted(self.rows.values(), key=lambda r: r.id, reverse=not oldest_first)
        return [row for row in rows if (state is None or row.state == state)
                and (flow is None or row.flow == flow)][:limit]

    def referenced_blobs(self) -> set[str]:
        self._check()
        return {row.blob_id for row in self.rows.values() if row.blob_id}

    def inbound_for(self, flow: str, remote_name: str) -> list[TransferRow]:
        self._check()
        return [row for row in sorted(self.rows.values(), key=lambda r: r.id, reverse=True)
                if (row.flow, row.direction, row.remote_name) == (flow, "in", remote_name)]

    def by_remote_name(self, flow: str, remote_name: str) -> TransferRow | None:
        self._check()
        return next((row for row in sorted(self.rows.values(), key=lambda r: r.id, reverse=True)
                     if (row.flow, row.direction, row.remote_name) == (flow, "out", remote_name)), None)


class InMemoryResultLedger:
    """Payment results in a list, over the transfers of *ledger*."""

    def __init__(self, ledger: InMemoryLedger) -> None:
        self.ledger = ledger
        self.results: list[StoredResult] = []

    def known_identities(self, keys: Collection[str]) -> set[str]:
        self.ledger._check()
        recorded = {result.identity_key for result in self.results}
        return set(keys) & recorded

    def identities_of_transfer(self, transfer_id: int) -> set[str]:
        self.ledger._check()
        return {result.identity_key for result in self.results if result.transfer_id == transfer_id}

    @property
    def records_audit(self) -> bool:
        return self.ledger.records_audit

    def record_relay(self, transfer_id: int, results: Sequence[ResultFacts], relay_name: str | None,
                     now: datetime, summary: str, done: bool, audit: AuditEvent | None = None,
                     fence: Fence | None = None) -> None:
        if len({r.identity_key for r in results}) != len(results):
            raise ValueError("results repeat an identity; keep the first of each (see fresh_results)")
        self.ledger.check_fence(fence)
        recorded_at = _utc(now)
        row = self.ledger.get(transfer_id)
        if done:
            check_transition(row.state, TransferState.DONE)
        chosen = self._under_recorded_keys(results)
        recorded = {result.identity_key for result in self.results}
        every_key = {d.identity_key for r in chosen for d in r.variants} | {r.identity_key for r in chosen}
        if every_key & recorded:
            raise DuplicateResult(transfer_id)
        self.results.extend(StoredResult(
            **{**r.kept(), "received_at": _utc(r.received_at).astimezone(JST)}, transfer_id=transfer_id,
            relay_name=relay_name, recorded_at=recorded_at) for r in chosen)
        fields: dict[str, Any] = {"relay_name": relay_name, "receipt_summary": summary}
        if done:  # DONE ends a received file's lease, in the same commit
            self.ledger.transition(transfer_id, TransferState.DONE, recorded_at, audit=audit, fence=fence,
                                   release=fence is not None and ends_with_done(fence.kind), **fields)
        else:
            self.ledger.update(transfer_id, recorded_at, fence=fence, **fields)

    def _under_recorded_keys(self, results: Sequence[ResultFacts]) -> list[ResultFacts]:
        """Each result under the key its match group was first recorded with (current if none)."""
        return under_recorded_keys(results, {result.match_key for result in self.results})

    @contextmanager
    def relay_transaction(self, transfer_id: int, relay_name: str, now: datetime,
                          fence: Fence | None = None) -> Iterator[_InMemoryRelay]:
        """Like ``ResultLedger.relay_transaction``: nothing is kept unless the block ends without an error; the
        transfer is DONE with the results."""
        self.ledger.get(transfer_id)  # TransferNotFound
        relay = _InMemoryRelay(self, transfer_id, relay_name, now)
        yield relay
        if not relay.finished:
            raise RuntimeError(f"transfer {transfer_id}: the relay transaction ended without a decision")
        self.record_relay(transfer_id, relay.pending, relay_name if relay.pending else None, now, relay.summary,
                          done=True, audit=relay.audit, fence=fence)

    def commit_relays(self, decisions: Sequence[RelayDecision], now: datetime) -> None:
        """Like ``ResultLedger.commit_relays``: all the decisions, or nothing."""
        self.ledger._check()
        for decision in decisions:
            self.ledger.check_fence(decision.fence)
            try:
                row = self.ledger.get(decision.transfer_id)
            except TransferNotFound:
                raise NotRelayable(decision.transfer_id, None) from None
            if row.state != TransferState.VALIDATED or row.relay_name is not None:
                raise NotRelayable(decision.transfer_id, str(TransferState(row.state).value))
        every = [r for d in decisions for r in d.results]
        if len({r.identity_key for r in every}) != len(every):
            raise ValueError("results repeat an identity across the files; keep the first of each")
        recorded = {result.identity_key for result in self.results}
        if recorded & {k for r in every for k in (r.identity_key, *(v.identity_key for v in r.variants))}:
            raise DuplicateResult(decisions[0].transfer_id)
        for decision in decisions:
            self.record_relay(decision.transfer_id, decision.results, decision.relay_name, now, decision.summary,
                              done=True, audit=decision.audit, fence=decision.fence)

    def accept_relay(self, transfer: NewTransfer, audit: AuditEvent | None, decide: AcceptDecider,
                     now: datetime) -> TransferRow:
        """Like ``ResultLedger.accept_relay``: the transfer, its relay and both audit records, or nothing at all."""
        ledger = self.ledger
        ledger._check()
        with ledger._lock:
            row = ledger.add_transfer(**transfer.arguments())
            audit_length, results_length = len(ledger.audit), len(self.results)
            try:
                decision = decide(row, self.known_identities)
                if audit is not None:
                    ledger.audit.append((audit[0], {**audit[1], "transfer_id": row.id}))
                self.commit_relays([decision], now)
            except BaseException:
                del ledger.rows[row.id]  # rolled back: no transfer, no result, no record
                del ledger.audit[audit_length:]
                del self.results[results_length:]
                raise
            return ledger.rows[row.id]

    def finish_relay(self, transfer_id: int, now: datetime, audit: AuditEvent | None = None,
                     fence: Fence | None = None) -> None:
        self.ledger.transition(transfer_id, TransferState.DONE, now, audit=audit, fence=fence,
                               release=fence is not None and ends_with_done(fence.kind))

    def _sorted(self, results: Iterable[StoredResult]) -> list[StoredResult]:
        return sorted(results, key=lambda r: r.received_at)

    def results_received_on(self, day: date) -> list[StoredResult]:
        start = datetime.combine(day, time(0), JST)
        return self.results_between(start, start + timedelta(days=1))

    def results_since(self, start: datetime) -> list[StoredResult]:
        self.ledger._check()
        return self._sorted(r for r in self.results if r.received_at >= _utc(start))

    def results_between(self, start: datetime, end: datetime) -> list[StoredResult]:
        self.ledger._check()
        return self._sorted(r for r in self.results if _utc(start) <= r.received_at < _utc(end))

    def open_provisional(self, now: datetime, within: timedelta | None = None) -> list[StoredResult]:
        self.ledger._check()
        settled = {r.match_key for r in self.results if r.kind in (KIND_FINAL, KIND_CANCEL)}
        return self._sorted(r for r in self.results if r.kind == KIND_PROVISIONAL and r.match_key not in settled
                            and (within is None or r.received_at >= _utc(now - within)))


class _InMemoryRelay:
    """The open "transaction" of :meth:`InMemoryResultLedger.relay_transaction`: results kept aside until the end."""

    def __init__(self, results: InMemoryResultLedger, transfer_id: int, relay_name: str, now: datetime) -> None:
        self._results = results
        self.pending: list[ResultFacts] = []
        self.summary = ""
        self.audit: AuditEvent | None = None
        self.finished = False

    def record(self, facts: Sequence[ResultFacts]) -> list[ResultFacts]:
        self._results.ledger._check()
        known = {result.identity_key for result in self._results.results}
        known |= {key for item in self.pending for key in (item.identity_key, *(v.identity_key for v in item.variants))}
        fresh = fresh_results(facts, known)
        self.pending.extend(fresh)
        return fresh

    def finish(self, summary: str, audit: AuditEvent | None = None) -> bool:
        self.summary, self.audit = summary, audit
        self.finished = True
        return bool(self.pending)
