"""Payment results in the ledger (``payment_results``): dedupe, the relay decision, reconcile queries.

Every method blocks: call it through the blocking door. Rows hold keyed digests, codes,
times and a masked slip hint only (see :mod:`kei_gateway.core.results.identity`).

Times: ``received_at`` (収納日時) and ``recorded_at`` are stored as UTC (SQLite keeps no
offset) and handed back aware, ``received_at`` in JST.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import (
    Column, Connection, DateTime, bindparam, Engine, MetaData, Select, SmallInteger, String, Table, exists, insert, literal,
    select, update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from kei_gateway.adapters.ledger.leases import Fence, check_fence, check_fence_on
from kei_gateway.core.lease import ends_with_done
from kei_gateway.adapters.ledger.ledger import (
    IN_CHUNK, AuditEvent, AuditWriter, NewTransfer, TransferNotFound, TransferRow, in_chunks, write_audit,
)
from kei_gateway.adapters.ledger.models import PaymentResult, Transfer, TransferState
from kei_gateway.core.jst import JST
from kei_gateway.core.results.identity import (
    KEPT_FIELDS, KIND_CANCEL, KIND_FINAL, KIND_PROVISIONAL, ResultFacts, earlier_match_keys, fresh_results,
    under_recorded_keys,
)
from kei_gateway.core.results.reconcile import StoredResult
from kei_gateway.core.transfer import check_transition
from kei_gateway.runtime.blocking import retry_transient

__all__ = ["ResultLedger", "DuplicateResult", "IN_CHUNK", "SqlRelayTransaction", "RelayDecision", "NotRelayable",
           "AcceptDecider", "KnownLookup"]



class DuplicateResult(Exception):
    """A result of the batch was recorded meanwhile (another relay won the race); nothing was written.

    The caller recomputes which results are new (``known_identities``) and records again.
    """

    def __init__(self, transfer_id: int) -> None:
        super().__init__(f"a payment result of transfer {transfer_id} was recorded by another relay meanwhile; "
                         "nothing of this relay was written: recompute the new results and record again")
        self.transfer_id = transfer_id


class NotRelayable(ValueError):
    """A transfer of a group relay is no longer ``VALIDATED`` with no relay decided (relayed meanwhile, decided by
    an earlier version, or missing); nothing was written."""

    def __init__(self, transfer_id: int, state: str | None) -> None:
        super().__init__(f"transfer {transfer_id} is {state or 'missing'}, not VALIDATED without a relay decided: its "
                         "results were not relayed with the others (it is relayed alone; 'kei-gateway transfers "
                         "show' tells its state)")
        self.transfer_id, self.state = transfer_id, state


@dataclass(frozen=True)
class RelayDecision:
    """One received file's relay, decided: its new results (in file order, repeats dropped), the inbox name
    they were staged under (None when none is new), the transfer's summary and the relay's audit record."""

    transfer_id: int
    results: Sequence[ResultFacts]
    relay_name: str | None
    summary: str
    audit: AuditEvent | None = None
    fence: Fence | None = None
    """The lease it is relayed under (SPEC §14): checked in the commit, :class:`Fenced` and nothing written."""


KnownLookup = Callable[[Collection[str]], set[str]]
"""Those of the given identity keys already recorded (``ResultLedger.known_identities``, on an open transaction)."""
AcceptDecider = Callable[[TransferRow, KnownLookup], RelayDecision]
"""``ResultLedger.accept_relay``'s relay: given the transfer just inserted and the lookup of its transaction, it
stages the file's new records and returns the decision to commit with the transfer."""


def _known_on(connection: Connection, keys: Collection[str]) -> set[str]:
    """Those of *keys* already recorded, read on *connection*."""
    found: set[str] = set()
    for chunk in in_chunks(sorted(set(keys))):
        query = select(PaymentResult.identity_key).where(PaymentResult.identity_key.in_(chunk))
        found.update(connection.execute(query).scalars())
    return found


_DECIDE = (update(Transfer)
           .where(Transfer.id == bindparam("transfer"), Transfer.state == TransferState.VALIDATED.value,
                  Transfer.relay_name.is_(None))
           .values(state=TransferState.DONE.value, relay_name=bindparam("name"), receipt_summary=bindparam("summary"),
                   updated_at=bindparam("at")))
"""A relay's decision on its transfer, built once (its cache key too: issue 16, the relay's CPU per push)."""


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time given to the ledger must be timezone-aware")
    return value.astimezone(timezone.utc)


def _from_db(value: datetime) -> datetime:
    """Aware, in UTC: SQLite hands back naive UTC datetimes, PostgreSQL aware ones in the server's time zone."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _stored(row: PaymentResult) -> StoredResult:
    kept: dict[str, Any] = {name: getattr(row, name) for name in KEPT_FIELDS}
    kept.update(kind=int(row.kind), received_at=_from_db(row.received_at).astimezone(JST))
    return StoredResult(**kept, transfer_id=row.transfer_id, relay_name=row.relay_name,
                        recorded_at=_from_db(row.recorded_at))


class ResultLedger:
    """``payment_results`` on a SQLAlchemy engine (the same one as :class:`~kei_gateway.adapters.ledger.TransferLedger`)."""

    def __init__(self, engine: Engine, audit_writer: AuditWriter | None = None) -> None:
        self.engine = engine
        self.audit_writer = audit_writer
        """Chains a relay's audit record in the transaction that makes it DONE (as ``TransferLedger.audit_writer``)."""

    @property
    def records_audit(self) -> bool:
        return self.audit_writer is not None

    # ------------------------------------------------------------------ dedupe

    @retry_transient
    def known_identities(self, keys: Collection[str]) -> set[str]:
        """Those of *keys* (identity keys, under any key: see ``ResultKeyer.identity_candidates``) already recorded."""
        with self.engine.connect() as connection:
            return _known_on(connection, keys)

    @retry_transient
    def identities_of_transfer(self, transfer_id: int) -> set[str]:
        """Identity keys first brought by *transfer_id*: after a crash between :meth:`record_relay` and the
        inbox rename, the records of its file whose identity is here are the ones to relay."""
        query = select(PaymentResult.identity_key).where(PaymentResult.transfer_id == transfer_id)
        with self.engine.connect() as connection:
            return set(connection.execute(query).scalars())

    # ------------------------------------------------------------------ the relay decision

    @retry_transient
    def record_relay(self, transfer_id: int, results: Sequence[ResultFacts], relay_name: str | None,
                     now: datetime, summary: str, done: bool, audit: AuditEvent | None = None) -> None:
        """Record a file's new *results* and the relay decision, in ONE transaction.

        Inserts one row per result (with *relay_name*), sets the transfer's ``relay_name``
        and ``receipt_summary`` (= *summary*), and with *done* also moves it to DONE. A
        result whose 速報 (same match key) was recorded under a previous key is recorded
        under that key too, so the pair still matches after a key rotation.

        Raises :class:`DuplicateResult` (nothing written) when one of *results* is already
        recorded, under any key; :class:`~kei_gateway.adapters.ledger.TransferNotFound`;
        ``InvalidTransition`` when *done* and the transfer cannot become DONE; ``ValueError``
        when *results* repeat an identity (drop in-file repeats first: ``fresh_results``).
        With *done*, the relay's *audit* record is chained in the same transaction.
        """

        if len({r.identity_key for r in results}) != len(results):
            raise ValueError("results repeat an identity; keep the first of each (see fresh_results)")
        recorded_at = _utc(now)
        try:
            with Session(self.engine) as session, session.begin():
                transfer = session.get(Transfer, transfer_id, with_for_update=True)
                if transfer is None:
                    raise TransferNotFound(transfer_id)
                if done:
                    check_transition(transfer.state, TransferState.DONE)
                rows = self._under_recorded_keys(session, results)
                if self._any_known_under_previous_keys(session, rows):
                    raise DuplicateResult(transfer_id)
                if rows:  # one executemany, not an ORM object and an INSERT per result (bench/relay.py)
                    session.execute(insert(PaymentResult), [{
                        **r.kept(), "received_at": _utc(r.received_at), "transfer_id": transfer_id,
                        "relay_name": relay_name, "recorded_at": recorded_at} for r in rows])
                transfer.relay_name = relay_name
                transfer.receipt_summary = summary
                transfer.updated_at = recorded_at
                if done:
                    transfer.state = TransferState.DONE.value
                session.flush()
                if done:
                    write_audit(self.audit_writer, session.connection(), audit, transfer_id, recorded_at)
        except IntegrityError as error:
            raise DuplicateResult(transfer_id) from error

    @staticmethod
    def _under_recorded_keys(session: Session, results: Sequence[ResultFacts]) -> list[ResultFacts]:
        """*results*, each under the key its match group was first recorded with (current if none)."""
        previous = earlier_match_keys(results)
        if not previous:
            return list(results)
        found: set[str] = set()
        for chunk in in_chunks(sorted(previous | {r.match_key for r in results})):
            found.update(session.scalars(select(PaymentResult.match_key).where(
                PaymentResult.match_key.in_(chunk)).distinct()))
        return under_recorded_keys(results, found)

    @staticmethod
    def _any_known_under_previous_keys(session: Session | Connection, results: Sequence[ResultFacts]) -> bool:
        """The unique constraint catches a result recorded under the same key; this, under another one."""
        others = {d.identity_key for r in results for d in r.variants} - {r.identity_key for r in results}
        for chunk in in_chunks(sorted(others)):
            query = select(PaymentResult.id).where(PaymentResult.identity_key.in_(chunk)).limit(1)
            if session.execute(query).scalars().first():
                return True
        return False

    @retry_transient
    def commit_relays(self, decisions: Sequence[RelayDecision], now: datetime) -> None:
        """The relays of several received files, each ``VALIDATED``, in ONE transaction (one commit, one fsync).

        For each: its new results inserted (with its relay name), the transfer ``DONE`` with its
        ``relay_name`` and ``receipt_summary``, and its audit record chained. A result whose match
        group was recorded under a previous key is recorded under that key (as :meth:`record_relay`);
        the decisions are applied in order, so a later file's result joins an earlier one's group.

        Raises :class:`DuplicateResult` (nothing written) when a result was recorded meanwhile, under
        any key; :class:`NotRelayable` (nothing written) when a transfer is no longer ``VALIDATED`` or
        has a relay decided already; :class:`~kei_gateway.adapters.ledger.leases.Fenced` (nothing
        written) when a decision's fence is no longer current.
        """
        try:
            with self.engine.connect() as connection, connection.begin():
                self._commit_relays_on(connection, decisions, _utc(now))
        except IntegrityError as error:
            raise DuplicateResult(decisions[0].transfer_id) from error

    @retry_transient
    def accept_relay(self, transfer: NewTransfer, audit: AuditEvent | None, decide: AcceptDecider,
                     now: datetime) -> TransferRow:
        """A new inbound transfer accepted AND relayed in ONE transaction (one commit, one fsync; issue 16).

        In the transaction: *transfer* inserted ``VALIDATED`` (SQLite's write lock is taken there),
        then ``decide(row, known)`` — it looks the file's identities up through ``known`` (on this
        transaction's connection) and stages its new records under the inbox name made of the row's
        id — and the decision it returns applied as :meth:`commit_relays` applies one (results,
        ``DONE``, relay name), with the accept's *audit* record and then the relay's chained last
        (the chain's head is locked only for the commit, never over the staging's fsyncs). Returns
        the transfer as committed (``DONE``). Any failure writes nothing, not even the transfer:
        :class:`DuplicateResult` when a result was recorded meanwhile by another relay.
        """
        recorded_at = _utc(now)
        transfer_id = 0
        try:
            with Session(self.engine) as session, session.begin():
                model = transfer.model()
                session.add(model)
                session.flush()  # the INSERT: its id names the inbox file; on SQLite the write lock from here
                row = TransferRow.of(model)
                transfer_id = row.id
                connection = session.connection()
                decision = decide(row, lambda keys: _known_on(connection, keys))
                write_audit(self.audit_writer, connection, audit, row.id, recorded_at)
                self._commit_relays_on(connection, [decision], recorded_at)
        except IntegrityError as error:
            raise DuplicateResult(transfer_id) from error
        return dataclasses.replace(row, state=TransferState.DONE, relay_name=decision.relay_name,
                                   receipt_summary=decision.summary, updated_at=recorded_at)

    def _commit_relays_on(self, connection: Connection, decisions: Sequence[RelayDecision],
                          recorded_at: datetime) -> None:
        """:meth:`commit_relays`' writes on an open transaction of *connection*."""
        for fence in dict.fromkeys(d.fence for d in decisions if d.fence is not None):
            check_fence_on(connection, fence)  # the lease rows first, as every claim locks them
        for decision in decisions:  # then the writes (without a fence: on SQLite the write lock is first)
            changed = connection.execute(_DECIDE, {
                "transfer": decision.transfer_id, "name": decision.relay_name, "summary": decision.summary,
                "at": recorded_at}).rowcount
            if changed != 1:
                state = connection.execute(select(Transfer.state).where(
                    Transfer.id == decision.transfer_id)).scalar_one_or_none()
                raise NotRelayable(decision.transfer_id, state)
        every = [r for d in decisions for r in d.results]
        found = self._recorded_match_keys(connection, every)
        rows: list[dict[str, Any]] = []
        chosen_all: list[ResultFacts] = []
        for decision in decisions:
            # (a result goes under an earlier key only if that key's group is recorded already: the
            # groups of earlier files in this commit change nothing, and each file is chosen alone)
            chosen = under_recorded_keys(decision.results, found) if found else list(decision.results)
            chosen_all += chosen
            rows += [{**r.kept(), "received_at": _utc(r.received_at), "transfer_id": decision.transfer_id,
                      "relay_name": decision.relay_name, "recorded_at": recorded_at} for r in chosen]
        if len({r.identity_key for r in chosen_all}) != len(chosen_all):
            raise ValueError("results repeat an identity across the files; keep the first of each")
        if self._any_known_under_previous_keys(connection, chosen_all):
            raise DuplicateResult(decisions[0].transfer_id)
        if rows:
            connection.execute(insert(PaymentResult), rows)
        for decision in decisions:
            write_audit(self.audit_writer, connection, decision.audit, decision.transfer_id, recorded_at)

    @staticmethod
    def _recorded_match_keys(connection: Connection, results: Sequence[ResultFacts]) -> set[str]:
        """The match keys of *results*, current or earlier, already recorded — only asked when a previous store
        key exists (with one key every result is recorded under the current one)."""
        previous = earlier_match_keys(results)
        if not previous:
            return set()
        found: set[str] = set()
        for chunk in in_chunks(sorted(previous | {r.match_key for r in results})):
            found.update(connection.execute(select(PaymentResult.match_key).where(
                PaymentResult.match_key.in_(chunk)).distinct()).scalars())
        return found

    @contextmanager
    def relay_transaction(self, transfer_id: int, relay_name: str, now: datetime,
                          fence: Fence | None = None) -> Iterator[SqlRelayTransaction]:
        """A relay decision recorded batch by batch and committed at once by :meth:`SqlRelayTransaction.finish`.

        The file's results are given to :meth:`SqlRelayTransaction.record` a batch at a time
        (the relay streams them from the store): each batch's identities are looked up in the
        ledger and among the batches before it, so a result repeated anywhere in the file or
        recorded by an earlier file is a duplicate; the new ones wait in a ``TEMPORARY``
        table of this connection, committed after each batch (it takes no lock on the
        ledger's tables, and each batch reads a fresh snapshot). Memory holds one batch,
        whatever the file's size (SPEC §4). :meth:`SqlRelayTransaction.finish` then, in ONE
        short transaction, copies them into ``payment_results`` with *relay_name* and makes the
        transfer ``DONE`` with its relay name (*relay_name* when some result was new, else none)
        and the relay's audit record. Nothing reaches the ledger's tables before that transaction; with
        *fence* (SPEC §14) it checks that lease in it and raises
        :class:`~kei_gateway.adapters.ledger.leases.Fenced` instead.
        For the files of at most one batch, :meth:`commit_relays` does the same for several files
        at once without the temporary table.
        :class:`DuplicateResult` when another relay recorded one of the results meanwhile
        (the unique constraint); the caller starts again.
        """
        recorded_at = _utc(now)
        try:
            with self.engine.connect() as connection:
                if connection.execute(select(Transfer.id).where(Transfer.id == transfer_id)).one_or_none() is None:
                    raise TransferNotFound(transfer_id)
                _PENDING.drop(connection, checkfirst=True)
                _PENDING.create(connection)
                connection.commit()
                relay = SqlRelayTransaction(connection, transfer_id, relay_name, recorded_at, self.audit_writer,
                                            fence)
                try:
                    yield relay
                    if not relay.finished:
                        raise RuntimeError(f"transfer {transfer_id}: the relay transaction ended without a decision")
                finally:
                    connection.rollback()
                    _PENDING.drop(connection, checkfirst=True)
                    connection.commit()
        except IntegrityError as error:
            raise DuplicateResult(transfer_id) from error

    @retry_transient
    def finish_relay(self, transfer_id: int, now: datetime, audit: AuditEvent | None = None,
                     fence: Fence | None = None) -> None:
        """The second step after the inbox rename: the transfer is DONE, with the relay's *audit* record (with
        *fence*, only while that lease is this node's)."""

        with Session(self.engine) as session, session.begin():
            if fence is not None:
                check_fence(session, fence, release=ends_with_done(fence.kind))  # DONE ends a received file's lease
            transfer = session.get(Transfer, transfer_id, with_for_update=True)
            if transfer is None:
                raise TransferNotFound(transfer_id)
            check_transition(transfer.state, TransferState.DONE)
            transfer.state = TransferState.DONE.value
            transfer.updated_at = _utc(now)
            session.flush()
            write_audit(self.audit_writer, session.connection(), audit, transfer_id, _utc(now))

    # ------------------------------------------------------------------ reconcile queries

    def _rows(self, query: Select[Any]) -> list[StoredResult]:
        with Session(self.engine) as session:
            return [_stored(row) for row in session.scalars(query.order_by(PaymentResult.received_at,
                                                                            PaymentResult.id))]

    @retry_transient
    def results_received_on(self, day: date) -> list[StoredResult]:
        """Every result whose 収納日時 falls on *day* in JST (a 確報 shares its 速報's 収納日時)."""
        start = datetime.combine(day, time(0), JST)
        return self.results_between(start, start + timedelta(days=1))

    @retry_transient
    def results_since(self, start: datetime) -> list[StoredResult]:
        """Every result whose 収納日時 is at or after *start* (aware)."""
        return self._rows(select(PaymentResult).where(PaymentResult.received_at >= _utc(start)))

    @retry_transient
    def results_between(self, start: datetime, end: datetime) -> list[StoredResult]:
        """Every result whose 収納日時 is in [*start*, *end*) (aware)."""
        return self._rows(select(PaymentResult).where(PaymentResult.received_at >= _utc(start),
                                                      PaymentResult.received_at < _utc(end)))

    @retry_transient
    def open_provisional(self, now: datetime, within: timedelta | None = None) -> list[StoredResult]:
        """速報 with neither 確報 nor 速報取消 (same match key): what ``unconfirmed_counts`` needs.

        With *within*, only those whose 収納日時 is less than that before *now*. One
        anti-join on the match-key index: cheap on tens of thousands of rows.
        """
        later = aliased(PaymentResult)
        settled = exists().where(later.match_key == PaymentResult.match_key,
                                 later.kind.in_((KIND_FINAL, KIND_CANCEL)))
        query = select(PaymentResult).where(PaymentResult.kind == KIND_PROVISIONAL, ~settled)
        if within is not None:
            query = query.where(PaymentResult.received_at >= _utc(now - within))
        return self._rows(query)


_PENDING = Table(
    "kei_relay_pending", MetaData(),
    Column("identity_key", String(64), primary_key=True), Column("match_key", String(64), index=True),
    Column("amount_key", String(64)), Column("kind", SmallInteger), Column("channel", String(2)),
    Column("tax_item", String(2)), Column("pay_method", String(2)), Column("received_at", DateTime(timezone=True)),
    Column("slip_hint", String(24)), prefixes=["TEMPORARY"])
"""The new results of a relay being recorded (one connection's temporary table, the columns of ``payment_results``)."""


class SqlRelayTransaction:
    """The open relay of :meth:`ResultLedger.relay_transaction` (its connection and its temporary table)."""

    def __init__(self, connection: Connection, transfer_id: int, relay_name: str, recorded_at: datetime,
                 audit_writer: AuditWriter | None = None, fence: Fence | None = None) -> None:
        self._connection = connection
        self._fence = fence
        self._audit_writer = audit_writer
        self._transfer_id = transfer_id
        self._relay_name = relay_name
        self._recorded_at = recorded_at
        self.recorded = 0
        self.finished = False

    def _found(self, column: str, keys: set[str]) -> set[str]:
        """Those of *keys* in ``payment_results.<column>`` or among this relay's new results."""
        found: set[str] = set()
        for chunk in in_chunks(sorted(keys)):
            for table in (PaymentResult.__table__, _PENDING):
                found.update(self._connection.execute(
                    select(table.c[column]).where(table.c[column].in_(chunk)).distinct()).scalars())
        return found

    def record(self, facts: Sequence[ResultFacts]) -> list[ResultFacts]:
        """Keep aside the results of *facts* not recorded yet (nor earlier in this relay); return them."""
        candidates = {key for item in facts for key in (item.identity_key, *(v.identity_key for v in item.variants))}
        fresh = fresh_results(facts, self._found("identity_key", candidates))
        rows = self._under_recorded_keys(fresh)
        if rows:  # one executemany per batch
            self._connection.execute(insert(_PENDING), [
                {**r.kept(), "received_at": _utc(r.received_at)} for r in rows])
        self._connection.commit()  # the temporary table only: no lock on the ledger, a fresh snapshot next time
        self.recorded += len(rows)
        return fresh

    def _under_recorded_keys(self, results: Sequence[ResultFacts]) -> list[ResultFacts]:
        """*results*, each under the key its match group was first recorded with (current if none)."""
        previous = earlier_match_keys(results)
        if not previous:
            return list(results)
        return under_recorded_keys(results, self._found("match_key", previous | {r.match_key for r in results}))

    def finish(self, summary: str, audit: AuditEvent | None = None) -> bool:
        """The decision, in ONE transaction: the new results into ``payment_results``, the transfer ``DONE`` with its
        relay name (None when none was new) and the relay's *audit* record. True when some result was new (the
        staged file is then published after the commit; a crash before that leaves it for the restart rule)."""
        connection = self._connection
        fresh = self.recorded > 0
        if fresh:  # the write first: on SQLite it takes the write lock before anything is read
            columns = [c.name for c in _PENDING.columns]
            connection.execute(insert(PaymentResult).from_select(
                [*columns, "transfer_id", "relay_name", "recorded_at"],
                select(*_PENDING.columns, literal(self._transfer_id), literal(self._relay_name),
                       literal(self._recorded_at, DateTime(timezone=True)))))
        if self._fence is not None:
            check_fence_on(connection, self._fence)  # in this transaction: a node that lost the lease writes nothing
        changed = connection.execute(
            update(Transfer).where(Transfer.id == self._transfer_id, Transfer.state == TransferState.VALIDATED.value)
            .values(state=TransferState.DONE.value, relay_name=self._relay_name if fresh else None,
                    receipt_summary=summary, updated_at=self._recorded_at)).rowcount
        if changed != 1:
            state = connection.execute(select(Transfer.state).where(Transfer.id == self._transfer_id)).scalar_one_or_none()
            if state is None:
                raise TransferNotFound(self._transfer_id)
            check_transition(state, TransferState.DONE)
            raise NotRelayable(self._transfer_id, state)
        write_audit(self._audit_writer, connection, audit, self._transfer_id, self._recorded_at)
        connection.commit()
        self.finished = True
        return fresh
