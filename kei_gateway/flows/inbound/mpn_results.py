"""MPN 納付結果 (SPEC §2.4, flow ``mpn-results``): relay each payment result exactly once.

A results file arrives by pull (:class:`~kei_gateway.flows.inbound.downloads.DownloadPoller`)
or push (:mod:`kei_gateway.flows.inbound.push.PushReceiver`) and is committed as an inbound transfer in
``VALIDATED`` with its encrypted blob. :class:`ResultRelay` then relays it:

1. reads the stored file, computes each record's identity (keyed digests,
   :mod:`kei_gateway.core.results`) and looks them up: results already recorded — from push
   and pull, a repeated 速報, a repeat anywhere in the file — are duplicates;
2. writes the new records, byte for byte, as ``inbox/.<name>.part`` (and an empty
   ``.<name>.end.part`` when the flow asks for markers), fsyncs them, then the directory —
   dotfiles the tax system does not take;
3. in ONE transaction records the new results (the dedupe key is unique), sets the relay
   name on the transfer, makes it ``DONE`` and chains the relay's audit record;
4. renames ``.<name>.part`` to ``<name>`` (fsync the directory), then the marker.

Two lanes (issue 16, see :class:`ResultRelay`): files of at most :data:`SMALL_FILE` records
are relayed in groups — every small file waiting when the lane frees up, in one lookup,
one directory fsync, ONE commit and one more directory fsync for the renames
(:func:`relay_small_files`); a larger file on its own, a batch of :data:`RELAY_BATCH` records
at a time through a temporary table (memory holds one batch whatever the file's size: a
1,000,000-result push is 258 MB; SPEC §4) and the same single commit (:func:`relay_stored_results`).

Why this order gives exactly once under kill -9: before step 3 nothing is recorded, so a
restart relays the file again (its staged files are rewritten under the same names, or
removed if none of its results is new any more). After step 3 the decision is durable and
the transfer ``DONE``: at every start and check, :func:`finish_published` renames each staged
file whose transfer is ``DONE`` under that name — if ``.<name>.part`` still exists the rename
did not happen; if it is gone the rename happened (the file is in the inbox, or the tax
system has already taken it) and it is never written again. A file whose results are all
duplicates stages nothing and becomes ``DONE`` in step 3. A transfer left ``VALIDATED`` with
a relay name by an earlier version (which committed the name, renamed, then ``DONE``) is
finished the old way.
"""

from __future__ import annotations

import datetime
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from kei_gateway.adapters.ledger import TransferNotFound, TransferRow
from kei_gateway.adapters.ledger.leases import Fence, Fenced
from kei_gateway.adapters.ledger.ledger import AuditEvent, NewTransfer
from kei_gateway.adapters.ledger.results import DuplicateResult, KnownLookup, RelayDecision
from kei_gateway.adapters.ports import ResultLedgerPort, TransferLedgerPort
from kei_gateway.adapters.spool import (
    discard_staged, publish_relays, publish_staged, stage_relays, staged_mtime, staged_relays,
)
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.adapters.transport.names import remote_name
from kei_gateway.core.results import (
    ResultFacts,
    ResultKeyer,
    facts_of,
    fresh_results,
    unconfirmed_counts,
)
from kei_gateway.core.lease import LeaseKind, StagedAction, renew_interval, staged_action
from kei_gateway.core.results.identity import raw_fields
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.layouts import get_layout
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking, retry_transient
from kei_gateway.runtime.crashpoints import crashpoint
from kei_gateway.runtime.leases import NodeLeases
from kei_gateway.flows.inbound.relay import under_received_lease
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.runtime.timeline import TIMELINE

__all__ = ["ResultRelay", "RelayOutcome", "relay_stored_results", "relay_small_files", "finish_published",
           "accept_and_relay", "AcceptingNames", "orphan_age", "ORPHAN_LEASES",
           "KIND_LABELS", "UNCONFIRMED_CHECK_INTERVAL", "UNCONFIRMED_WINDOW", "RELAY_BATCH", "SMALL_FILE",
           "GROUP_RECORDS", "GROUP_FILES", "record_batches"]

FLOW = "mpn-results"
KIND_LABELS = {1: "provisional", 2: "final", 3: "cancellation"}
"""``kind`` label of ``kei_gateway_payment_results_total`` for 収納区分 1 速報, 2 確報, 3 速報取消."""
UNCONFIRMED_CHECK_INTERVAL = 300.0
"""Seconds between refreshes of ``kei_gateway_unconfirmed_results`` and retries of failed relays."""
UNCONFIRMED_WINDOW = datetime.timedelta(days=35)
"""Only 速報 this recent count in the gauge: one nobody will ever confirm stops alerting after a month
(``results reconcile`` still lists it for its day)."""
_ATTEMPTS = 3
RELAY_BATCH = 2_000
"""Records looked up, recorded and staged at a time: about 8 MB of records, digests and insert parameters
(10,000 a batch held 52 MB for the same speed; docs/performance.md)."""
SMALL_FILE = RELAY_BATCH
"""A file of at most this many records is relayed whole, in the small-file lane, grouped with the others waiting."""
GROUP_RECORDS = RELAY_BATCH
"""Records of one group of small files at most (a single file is a group whatever its size): one batch's memory."""
GROUP_FILES = 32
"""Files of one group at most (each has its audit record and transfer update in the group's commit)."""
ORPHAN_LEASES = 4
"""On a ledger shared by nodes, a staged file without a transfer is removed once this many leases old: the
transaction that staged it (on another node, perhaps) is ended by the database after one lease idle
(``idle_in_transaction_session_timeout``), so by then it committed — the transfer is seen — or never will."""
PENDING_SLICE = 256
"""Pending files handed to the lanes at a time at start and at each check (a stop waits for one slice at most)."""

log = Logger(namespace="kei_gateway.flows.mpn_results")


@dataclass(frozen=True)
class RelayOutcome:
    """What relaying one received file did."""

    transfer_id: int
    relay_name: str | None
    """The inbox file of its new results; None when every result was a duplicate."""
    relayed: Counter[int] = field(default_factory=Counter)
    """New results by 収納区分."""
    duplicates: Counter[int] = field(default_factory=Counter)
    """Results already relayed before (or repeated in the file), by 収納区分."""
    already_done: bool = False
    """The transfer was DONE already: nothing happened now."""
    recovered: bool = False
    """The relay had been decided before a stop or crash; only its last steps ran now."""


def record_batches(chunks: Iterable[bytes], record_length: int, size: int = RELAY_BATCH) -> Iterator[list[bytes]]:
    """The whole records of a fixed-length file given in chunks, *size* at a time, in file order."""
    pending = b""
    batch: list[bytes] = []
    for chunk in chunks:
        pending += chunk
        whole = len(pending) - len(pending) % record_length
        for offset in range(0, whole, record_length):
            batch.append(pending[offset:offset + record_length])
            if len(batch) == size:
                yield batch
                batch = []
        pending = pending[whole:]
    if pending:
        raise ValueError(f"the stored file ends with {len(pending)} bytes that are not a whole record")
    if batch:
        yield batch


def relay_tag(fence: Fence | None) -> int | None:
    """The tag of a relay's staged files (:func:`~kei_gateway.adapters.spool.staged_name`): its received file's
    lease token when it relays under one (two nodes, SPEC §14), else None (one node: the plain ``.name.part``)."""
    return fence.token if fence is not None and fence.kind == LeaseKind.RECEIVED else None


def _candidates(facts: Iterable[ResultFacts]) -> set[str]:
    """Every identity key of *facts*, under the current store key and each previous one."""
    return {key for item in facts for key in (item.identity_key, *(v.identity_key for v in item.variants))}


@dataclass(frozen=True)
class _Planned:
    """A small file's relay worked out before its commit: its inbox name, the decision, what to stage, its outcome."""

    name: str
    decision: RelayDecision
    staged: bytes | None
    outcome: RelayOutcome
    tag: int | None = None


def _plan(row: TransferRow, data: bytes, facts: list[ResultFacts], known: set[str], lg_code: str,
          fence: Fence | None) -> _Planned:
    """Decide one small file against *known* (updated with its new results, for the files after it)."""
    layout = get_layout(FLOW)
    length = layout.record_length
    fresh = fresh_results(facts, known)
    known |= _candidates(fresh)
    total = Counter(item.kind for item in facts)
    relayed = Counter(item.kind for item in fresh)
    name = remote_name(lg_code, FLOW, row.created_at, row.id)
    relay_name = name if fresh else None
    staged = b"".join(data[item.record_index * length:(item.record_index + 1) * length] for item in fresh) \
        if fresh else None
    new, count = sum(relayed.values()), sum(total.values())
    decision = RelayDecision(row.id, fresh, relay_name, _summary(new, count), _relayed(relay_name, new, count - new),
                             fence)
    return _Planned(name, decision, staged, RelayOutcome(row.id, relay_name, relayed, total - relayed),
                    relay_tag(fence))


@retry_transient
def relay_small_files(*, rows: Sequence[TransferRow], results: ResultLedgerPort, store: BlobStore,
                      keyer: ResultKeyer, inbox_dir: str, marker: bool, lg_code: str,
                      now: datetime.datetime, fences: Sequence[Fence | None] | None = None) -> list[RelayOutcome]:
    """Blocking: relay several received files of at most :data:`SMALL_FILE` records together (see the module
    docstring): one lookup, the new records of each staged with ONE directory fsync, ONE commit of every
    decision (results, ``DONE``, audit records), then the renames with ONE directory fsync.

    Each of *rows* must be ``VALIDATED`` with no relay decided (a stale row raises
    :class:`~kei_gateway.adapters.ledger.results.NotRelayable` and nothing is written: relay the files one
    at a time with :func:`relay_stored_results` then). The files' order is the order of dedupe: a result
    in two of them is relayed with the first. *fences* (one per row, SPEC §14) are checked in the commit:
    :class:`~kei_gateway.adapters.ledger.leases.Fenced`, nothing written, and the group's staged files removed
    (under a received file's lease each relay stages under its own tag, :func:`relay_tag`, so they are its own).
    """
    layout = get_layout(FLOW)
    widths = {item.key: item.width for item in layout.fields}
    loaded = []
    for row in rows:
        assert row.blob_id is not None and row.relay_name is None, f"transfer {row.id} is not a file to relay"
        data = b"".join(store.read(row.blob_id))  # AEAD-verified as it is read; at most SMALL_FILE records
        if len(data) % layout.record_length:
            raise ValueError(f"transfer {row.id}: the stored file ends with {len(data) % layout.record_length} "
                             "bytes that are not a whole record")
        # Validated at intake: only the identity fields are sliced out.
        fields = raw_fields((data,), layout.offsets, widths, layout.record_length)
        loaded.append((row, data, [facts_of(item, n, keyer) for n, item in enumerate(fields)]))
    for _ in range(_ATTEMPTS):
        known = results.known_identities(_candidates(item for _, _, facts in loaded for item in facts))
        planned = [_plan(row, data, facts, known, lg_code, fence)
                   for (row, data, facts), fence in zip(loaded, fences or [None] * len(loaded))]
        staged = [(p.name, p.staged) for p in planned if p.staged is not None]
        tags = {p.name: p.tag for p in planned}
        _stamp_all(rows, "looked_up")
        if staged:
            stage_relays(inbox_dir, [(name, (body,)) for name, body in staged], marker, tags=tags)
        _stamp_all(rows, "staged")
        crashpoint("results.staged")
        try:
            results.commit_relays([p.decision for p in planned], now)
        except DuplicateResult:
            continue  # recorded meanwhile by another relay: compute the new ones again
        except Fenced:
            for p in planned:
                if p.tag is not None:  # this relay's own copies: nobody else writes or publishes them
                    discard_staged(inbox_dir, p.name, p.tag)
            raise
        _stamp_all(rows, "recorded")
        crashpoint("results.recorded")
        if staged:
            publish_relays(inbox_dir, [name for name, _ in staged], tags)
        for p in planned:
            if p.staged is None:  # DONE with nothing new: what an attempt cut off before its commit left staged
                discard_staged(inbox_dir, p.name, p.tag)
        _stamp_all(rows, "published")
        crashpoint("results.published")
        return [p.outcome for p in planned]
    raise RuntimeError(f"transfers {[row.id for row in rows]}: their results kept changing while being relayed")


def _stamp_all(rows: Sequence[TransferRow], stage: str) -> None:
    for row in rows:
        TIMELINE.stamp(row.id, stage)


class AcceptingNames:
    """The inbox names this process stages inside an accepting transaction not committed yet (issue 16).

    Their transfer is not visible to another transaction, so :func:`finish_published` would take their staged
    files for an orphan of a crash: it leaves these. The lock makes "not here, and no transfer" one check.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: set[str] = set()


def accept_and_relay(*, transfer: NewTransfer, audit: AuditEvent | None, data: bytes, results: ResultLedgerPort,
                     keyer: ResultKeyer, inbox_dir: str, marker: bool, lg_code: str, now: datetime.datetime,
                     accepting: AcceptingNames, key: Any = None) -> tuple[TransferRow, RelayOutcome]:
    """Blocking: a new small results file (*data*: its bytes, validated and durable in the store) accepted and
    relayed in ONE transaction (issue 16): the transfer inserted, its results looked up in that transaction, its
    new records staged from *data* (no read back from the store), then ONE commit of the transfer, its results,
    ``DONE``, the accept's *audit* record and the relay's; then the rename and the directory fsync.

    Crash rules: before the commit nothing is recorded — no transfer, so the peer, which got no ``201``, pushes
    again — and the staged file is an orphan that :func:`finish_published` removes; after it, the transfer is
    ``DONE`` under the staged file's name and :func:`finish_published` publishes it. On
    :class:`~kei_gateway.adapters.ledger.results.DuplicateResult` (another relay recorded one of the results
    meanwhile; nothing was written) the staged file is removed and the error raised: the caller commits the
    transfer alone and hands it to the lanes. *key* is the push's timeline key (bench only).
    """
    layout = get_layout(FLOW)
    if len(data) % layout.record_length:
        raise ValueError(f"{transfer.local_name}: the file ends with {len(data) % layout.record_length} bytes "
                         "that are not a whole record")
    widths = {item.key: item.width for item in layout.fields}
    facts = [facts_of(item, n, keyer) for n, item in
             enumerate(raw_fields((data,), layout.offsets, widths, layout.record_length))]
    staged: list[str] = []  # every name an attempt staged (a transaction retried may get another id)
    planned: list[_Planned] = []

    def decide(row: TransferRow, known: KnownLookup) -> RelayDecision:
        TIMELINE.stamp(key, "committed")  # (the transfer inserted, not committed: the bench's columns)
        TIMELINE.stamp(key, "relay_start")
        plan = _plan(row, data, facts, known(_candidates(facts)), lg_code, None)
        TIMELINE.stamp(key, "looked_up")
        if plan.staged is not None:
            with accepting.lock:
                accepting.names.add(plan.name)
            staged.append(plan.name)
            stage_relays(inbox_dir, [(plan.name, (plan.staged,))], marker)
        TIMELINE.stamp(key, "staged")
        crashpoint("results.accept-staged")
        planned.append(plan)
        return plan.decision

    try:
        row = results.accept_relay(transfer, audit, decide, now)
    except DuplicateResult:
        if planned and planned[-1].staged is not None:  # this attempt wrote nothing: its staged file is nobody's
            discard_staged(inbox_dir, planned[-1].name)
        raise
    finally:  # (on any other failure the staged files are left to finish_published: the commit may have happened)
        with accepting.lock:
            accepting.names.difference_update(staged)
    TIMELINE.stamp(key, "recorded")
    crashpoint("results.accept-recorded")
    plan = planned[-1]  # the attempt that committed
    if plan.staged is not None:
        publish_relays(inbox_dir, [plan.name])
    # An earlier attempt's staged file (a transaction retried after a transient failure) is left to
    # finish_published: that attempt's commit may have happened although its answer was lost.
    TIMELINE.stamp(key, "published")
    return row, plan.outcome


@retry_transient
def relay_stored_results(*, transfer_id: int, ledger: TransferLedgerPort, results: ResultLedgerPort, store: BlobStore,
                         keyer: ResultKeyer, inbox_dir: str, marker: bool, lg_code: str,
                         now: datetime.datetime, fence: Fence | None = None) -> RelayOutcome:
    """Blocking: relay the new results of the received file of *transfer_id*, however large, streamed a batch at
    a time (see the module docstring); also finishes what a stop or crash cut off after the decision. With
    *fence* (SPEC §14) the decision and ``DONE`` commit only while that lease is this node's (else
    :class:`~kei_gateway.adapters.ledger.leases.Fenced`, nothing written)."""
    for _ in range(_ATTEMPTS):
        row = ledger.get(transfer_id)
        if row.state == S.DONE.value:  # (a staged file a crash left after the decision: finish_published)
            tag = relay_tag(fence)
            if fence is not None and tag is not None and ledger.received_token(transfer_id) != fence.token:
                # relayed by the node that took it over while this one stalled: its own copy goes, nothing else
                discard_staged(inbox_dir, remote_name(lg_code, FLOW, row.created_at, row.id), tag)
                raise Fenced(fence, None)
            return RelayOutcome(transfer_id, row.relay_name, already_done=True)
        if row.state != S.VALIDATED.value or row.blob_id is None:
            raise ValueError(f"transfer {transfer_id} is {row.state}, not a stored VALIDATED results file")
        if row.relay_name is not None:  # decided by an earlier version (relay name, then DONE): finish it
            publish_staged(inbox_dir, row.relay_name, marker)
            crashpoint("results.published")
            results.finish_relay(transfer_id, now, fence=fence,
                                 audit=(events.RESULTS_RELAY_FINISHED.name, {"flow": FLOW, "name": row.relay_name}))
            return RelayOutcome(transfer_id, row.relay_name, recovered=True)
        try:
            return _relay_once(row, results, store, keyer, inbox_dir, marker, lg_code, now, fence)
        except DuplicateResult:
            continue  # recorded meanwhile by another relay: compute the new ones again
    raise RuntimeError(f"transfer {transfer_id}: its results kept changing while being relayed")


def _relay_once(row: TransferRow, results: ResultLedgerPort, store: BlobStore, keyer: ResultKeyer, inbox_dir: str,
                marker: bool, lg_code: str, now: datetime.datetime, fence: Fence | None = None) -> RelayOutcome:
    name = remote_name(lg_code, FLOW, row.created_at, row.id)
    tag = relay_tag(fence)
    try:
        return _relay_in(row, results, store, keyer, inbox_dir, marker, now, fence, name, tag)
    except Fenced:
        if tag is not None:
            discard_staged(inbox_dir, name, tag)  # this relay's own copy: nobody else writes or publishes it
        raise


def _relay_in(row: TransferRow, results: ResultLedgerPort, store: BlobStore, keyer: ResultKeyer, inbox_dir: str,
              marker: bool, now: datetime.datetime, fence: Fence | None, name: str, tag: int | None) -> RelayOutcome:
    assert row.blob_id is not None
    layout = get_layout(FLOW)
    widths = {item.key: item.width for item in layout.fields}
    blob_id = row.blob_id  # narrowed by the assert above, also inside new_records below
    relayed: Counter[int] = Counter()
    total: Counter[int] = Counter()
    with results.relay_transaction(row.id, name, now, fence) as relay:
        def new_records() -> Iterator[bytes]:
            index = 0
            for records in record_batches(store.read(blob_id), layout.record_length, RELAY_BATCH):
                # Validated at intake and AEAD-verified as it is read: only the identity fields are sliced out.
                fields = raw_fields((b"".join(records),), layout.offsets, widths, layout.record_length)
                facts = [facts_of(item, index + n, keyer) for n, item in enumerate(fields)]
                fresh = relay.record(facts)
                total.update(item.kind for item in facts)
                relayed.update(item.kind for item in fresh)
                if fresh:
                    yield b"".join(records[item.record_index - index] for item in fresh)
                index += len(records)
            TIMELINE.stamp(row.id, "looked_up")  # every result looked up and inserted; the .part's fsyncs follow

        stage_relays(inbox_dir, [(name, new_records())], marker, tags={name: tag})
        TIMELINE.stamp(row.id, "staged")
        crashpoint("results.staged")
        if not relayed:  # every result a duplicate: nothing goes to the inbox
            discard_staged(inbox_dir, name, tag)
        new, count = sum(relayed.values()), sum(total.values())
        # The decision, the results, DONE and the relay's record: one commit.
        relay.finish(_summary(new, count), audit=_relayed(name if relayed else None, new, count - new))
    duplicates = total - relayed
    if not relayed:
        return RelayOutcome(row.id, None, relayed, duplicates)
    TIMELINE.stamp(row.id, "recorded")
    crashpoint("results.recorded")
    publish_relays(inbox_dir, [name], {name: tag})
    TIMELINE.stamp(row.id, "published")
    crashpoint("results.published")
    return RelayOutcome(row.id, name, relayed, duplicates)


def orphan_age(dialect: str, lease: float) -> float:
    """:attr:`ResultRelay.orphan_age` for a ledger of *dialect*: 0 on SQLite (one node writes the inbox: this
    process, which knows what it is staging), else :data:`ORPHAN_LEASES` leases."""
    return 0.0 if dialect == "sqlite" else ORPHAN_LEASES * lease


def finish_published(*, ledger: TransferLedgerPort, inbox_dir: str, accepting: AcceptingNames | None = None,
                     orphan_age: float = 0.0, now: float | None = None) -> list[str]:
    """Blocking, at start and at each check: publish what a crash left staged after its relay was committed.

    For each staged file (``.name[~TAG].part``, ``.name.end[~TAG].part``) of a transfer — the id ends the name —
    :func:`~kei_gateway.core.lease.staged_action` decides: the copy of the relay that committed the transfer
    ``DONE`` under that very name is renamed into place; one of a transfer ``DONE`` under no name or another, or
    staged under another relay's token (a node cut off or fenced, two nodes), is what an attempt that did not
    commit left, and is removed; one of a transfer not yet ``DONE`` is left for its relay. One whose transfer does
    not exist is what a file accepted and relayed in one transaction (:func:`accept_and_relay`) left when cut off
    before its commit, and is removed too — unless it is being staged in this process now (*accepting*) or, with
    *orphan_age* (seconds; a shared inbox: another node may be in that transaction now), it was staged less than
    that before *now* (wall clock). Returns the names published.
    """
    published = []
    for name, tag in staged_relays(inbox_dir):
        transfer_id = _transfer_of(name)
        if transfer_id is None:
            continue
        try:
            row = ledger.get(transfer_id)
        except TransferNotFound:
            if tag is None:
                _remove_orphan(ledger, inbox_dir, name, transfer_id, accepting, orphan_age, now)
            else:  # staged by a relay under a lease, whose transfer existed: gone since (purged), nothing to publish
                discard_staged(inbox_dir, name, tag)
            continue
        done = row.state == S.DONE.value
        committed = ledger.received_token(transfer_id) if done and tag is not None else None
        action = staged_action(done=done, relay_name=row.relay_name, name=name, tag=tag, committed=committed)
        if action is StagedAction.PUBLISH:
            publish_relays(inbox_dir, [name], {name: tag})
            published.append(name)
        elif action is StagedAction.DISCARD:
            discard_staged(inbox_dir, name, tag)
    return published


def _remove_orphan(ledger: TransferLedgerPort, inbox_dir: str, name: str, transfer_id: int,
                   accepting: AcceptingNames | None, orphan_age: float, now: float | None) -> None:
    """Remove the staged file of *name*, whose transfer was not found, if it is an orphan (see finish_published)."""
    if orphan_age > 0:
        staged_at = staged_mtime(inbox_dir, name)
        if staged_at is None or now is None or now - staged_at < orphan_age:
            return
    lock = accepting.lock if accepting is not None else threading.Lock()
    with lock:  # an accept registers its name before staging: under the lock, "not staging" and "no transfer" hold
        if accepting is not None and name in accepting.names:
            return
        try:
            ledger.get(transfer_id)
        except TransferNotFound:
            discard_staged(inbox_dir, name)


def _transfer_of(name: str) -> int | None:
    """The transfer id that ends a relayed file's name (``<lg>_mpn-results_<stamp>_<id>.dat``), or None."""
    stem, _, suffix = name.rpartition(".")
    ident = stem.rpartition("_")[2]
    return int(ident) if suffix == "dat" and ident.isdigit() else None


def _describe(failure: Failure) -> str:
    return events.describe_error(failure.value) if failure.value is not None else "unknown error"


def _relayed(name: str | None, new: int, repeated: int) -> tuple[str, dict[str, Any]]:
    """The relay's audit record, chained in the transaction that makes the transfer DONE."""
    return events.RESULTS_RELAYED.name, {"flow": FLOW, "name": name or "-", "records": new, "duplicates": repeated}


def _summary(fresh: int, total: int) -> str:
    return f"新規 {fresh}, 重複 {total - fresh} (of {total} results)"


class _AcceptRelay:
    """A small file relayed in the transaction that accepts it, holding the small-file lane (issue 16): made by
    :meth:`ResultRelay.relay_on_accept`, called once in a worker thread (``settle_received``), ended on the
    reactor thread."""

    def __init__(self, relay: ResultRelay, received_at: float | None, key: Any) -> None:
        self.relay, self.received_at, self.key = relay, received_at, key
        self.outcome: RelayOutcome | None = None
        self._ended = False

    def __call__(self, transfer: NewTransfer, audit: AuditEvent | None, data: bytes) -> TransferRow:
        """Blocking: :func:`accept_and_relay`; the committed transfer (``DONE``)."""
        relay = self.relay
        now = datetime.datetime.fromtimestamp(relay.clock.seconds(), datetime.timezone.utc)
        row, self.outcome = accept_and_relay(
            transfer=transfer, audit=audit, data=data, results=relay.results, keyer=relay.keyer,
            inbox_dir=relay.inbox_dir, marker=relay.marker, lg_code=relay.lg_code, now=now,
            accepting=relay.accepting, key=self.key)
        return row

    def end(self, row: TransferRow | None) -> None:
        """On the reactor thread: count what was relayed (*row*: the transfer committed with it), free the lane."""
        if self._ended:
            return
        self._ended = True
        if row is not None and self.outcome is not None:
            TIMELINE.close(row.id, "done")
            self.relay._account(row.id, self.outcome, self.received_at)
        self.relay._small_done(None)


@dataclass
class _Waiting:
    """A file waiting in the small-file lane: its row, when its push started, who waits for its outcome."""

    row: TransferRow
    received_at: float | None
    fence: Fence | None = None
    waiters: list[defer.Deferred[RelayOutcome]] = field(default_factory=list)

    def settle(self, result: RelayOutcome | Failure) -> None:
        """Fire every caller's Deferred with the outcome (or the failure)."""
        for waiter in self.waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


class ResultRelay(service.Service):
    """Relays received ``mpn-results`` files in two lanes; keeps the unconfirmed gauge current.

    :meth:`relay` is what the pull poller and the push listener call once a file is
    committed; on start, every received file not yet relayed (a stop or crash came
    first) is relayed, and what a crash left staged after its decision is published.

    The lanes (issue 16): a file of at most :data:`SMALL_FILE` records goes to the small-file
    lane, which relays every file waiting there when it is free — up to :data:`GROUP_RECORDS`
    records — as one group (:func:`relay_small_files`: one commit, one directory fsync
    each for staging and publishing), and a lone file at once: nothing waits for a group to
    fill. A larger file goes to the large-file lane, one at a time, streamed in batches
    (:func:`relay_stored_results`), so a small file never waits behind a large one.
    """

    def __init__(self, *, inbox_dir: str, marker: bool, lg_code: str, ledger: TransferLedgerPort,
                 results: ResultLedgerPort, keyer: ResultKeyer, store: BlobStore, blocking: Blocking, clock: Any,
                 metrics: GatewayMetrics, unconfirmed_after: float,
                 check_interval: float = UNCONFIRMED_CHECK_INTERVAL, orphan_age: float = 0.0) -> None:
        self.setName("relay:mpn-results")
        self.inbox_dir, self.marker, self.lg_code = inbox_dir, marker, lg_code
        self.ledger, self.results, self.keyer, self.store = ledger, results, keyer, store
        self.blocking, self.clock, self.metrics = blocking, clock, metrics
        self.unconfirmed_after = unconfirmed_after
        self._large = defer.DeferredLock()
        self._small: dict[int, _Waiting] = {}
        """The small-file lane's queue, by transfer id (a file handed over twice waits once), oldest first."""
        self._small_busy = False
        self._small_idle: list[defer.Deferred[None]] = []
        self.accepting = AcceptingNames()
        self.orphan_age = orphan_age
        """Seconds a staged file without a transfer is left alone (:func:`finish_published`): 0 when this process
        is the only one to write the inbox (SQLite); on a shared ledger another node may be accepting it now."""
        self._overdue = 0
        self._check = task.LoopingCall(self._periodic)
        self._check.clock = clock
        self._pending = task.LoopingCall(self._pass_pending)
        self._pending.clock = clock
        self._check_interval = check_interval
        self._recovering: defer.Deferred[Any] | None = None
        for kind in KIND_LABELS.values():
            for outcome in ("relayed", "duplicate"):
                metrics.payment_results.labels(kind=kind, outcome=outcome)
        for age in ("pending", "overdue"):
            metrics.unconfirmed_results.labels(age=age)

    def startService(self) -> None:
        super().startService()
        self._check.start(self._check_interval, now=True)  # relays what is pending at once (see _periodic)
        interval = self.pending_interval()
        if interval < self._check_interval:
            self._pending.start(interval, now=False)

    def pending_interval(self) -> float:
        """Seconds between pending passes: the check interval on one node; on a shared ledger a third of the lease
        (as the sender's pass), so a file whose accepting node died or stalled is taken over within
        ``lease + lease/3`` of its last renewal rather than at the next 5-minute check (SPEC §14)."""
        leases = self.leases
        if leases is None or leases.store.single_node:
            return self._check_interval
        return min(self._check_interval, renew_interval(leases.duration))

    def _pass_pending(self) -> None:
        """Start a pending pass unless one is running."""
        if self._recovering is None or self._recovering.called:
            def unlisted(failure: Failure) -> None:
                events.emit(log, events.INTERNAL_ERROR, flow=FLOW,
                            reason=f"listing the results files to relay: {failure.getErrorMessage()}")

            self._recovering = self.relay_pending()
            self._recovering.addErrback(unlisted)

    def _periodic(self) -> defer.Deferred[None]:
        """Every check interval (and at start): relay the files still pending, refresh the unconfirmed gauge.

        Relaying pending files again is what retries a relay that failed (inbox not
        writable, database locked past its retries): nothing else would, since the push
        listener and the poller hand a file over once, and a repeated push is a ``204``.
        """
        self._pass_pending()
        return self.check_unconfirmed()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._check.running:
            self._check.stop()
        if self._pending.running:
            self._pending.stop()
        # Whatever relay is running or waiting finishes (its steps are short and local); then stop.
        idle: defer.Deferred[None] = defer.Deferred()
        self._small_idle.append(idle)
        self._small_maybe_idle()
        return defer.DeferredList([idle, self._large.run(lambda: defer.succeed(None))]).addCallback(lambda _: None)

    def relay(self, row: TransferRow, received_at: float | None = None,
              fence: Fence | None = None) -> defer.Deferred[RelayOutcome]:
        """Relay the committed results file *row*; *received_at* (clock seconds) times a push; *fence*: see
        :class:`~kei_gateway.flows.inbound.relay.Relay`.

        When it fails, the file stays ``VALIDATED`` and is tried again at the next check interval. Under a
        received file's lease (*fence* of kind ``received``) the lease ends with it (``under_received_lease``).
        """
        return under_received_lease(self.leases, fence, self._hand_to_lane(row, received_at, fence))

    def _hand_to_lane(self, row: TransferRow, received_at: float | None,
                      fence: Fence | None) -> defer.Deferred[RelayOutcome]:
        small = row.record_count <= SMALL_FILE and row.relay_name is None and row.state == S.VALIDATED.value
        if not small:
            return self._large.run(self._relay, row.id, received_at, fence)
        waiting = self._small.get(row.id)
        if waiting is None:
            waiting = self._small[row.id] = _Waiting(row, received_at, fence)
        outcome: defer.Deferred[RelayOutcome] = defer.Deferred()
        waiting.waiters.append(outcome)
        if len(waiting.waiters) == 1:
            self._small_next()
        return outcome

    accept_bytes = SMALL_FILE * get_layout(FLOW).record_length
    """A pushed file of at most this size is kept in memory by the intake, for :meth:`relay_on_accept`."""

    def relay_on_accept(self, records: int, received_at: float | None = None,
                        key: Any = None) -> _AcceptRelay | None:
        """On the reactor thread, for a new file of *records* results about to be committed: when it is small and
        the small-file lane is free, the lane is taken and a relay to run inside the commit that accepts it is
        returned (:func:`accept_and_relay`: one commit instead of two, no read back from the store); else None
        and the file is committed alone, then handed to :meth:`relay`. The caller ends it
        (:meth:`_AcceptRelay.end`) on the reactor thread, whatever happened."""
        if not self.running or records > SMALL_FILE or self._small_busy or self._small:
            return None
        self._small_busy = True
        return _AcceptRelay(self, received_at, key)

    leases: NodeLeases | None = None
    """This node's leases (SPEC §14), set by the composition root: the pass over pending files runs under the
    flow's relay lease, on one node at a time; on a shared ledger each pending file is relayed under its own
    ``received`` lease, claimed only when no other node holds it live (a push or a pull that node is relaying
    now), and its commit is fenced by it. None: this process's alone."""

    @defer.inlineCallbacks
    def relay_pending(self) -> Any:
        """Publish what a crash left staged after its decision; relay every received file still VALIDATED."""
        leases = self.leases
        if leases is None:
            yield self._relay_pending(None)
            return
        fence = yield leases.claim(LeaseKind.RELAY, FLOW)
        if fence is None:
            return  # another node relays the pending files now (or this node may not claim): the next check
        try:
            yield self._relay_pending(fence)
        except Fenced:
            leases.fenced(fence)
            return
        yield leases.release(fence)

    @defer.inlineCallbacks
    def _relay_pending(self, fence: Fence | None) -> Any:
        yield self.blocking.run(finish_published, ledger=self.ledger, inbox_dir=self.inbox_dir,
                                accepting=self.accepting, orphan_age=self.orphan_age, now=self.clock.seconds())
        pending: list[TransferRow] = yield self.blocking.run(
            self.ledger.list_transfers, state=S.VALIDATED.value, flow=FLOW, limit=100_000, oldest_first=True)
        pending.sort(key=lambda r: r.id)
        fenced: list[Failure] = []

        def failed(failure: Failure, row: TransferRow) -> None:  # one file's trouble must not keep the others back
            if isinstance(failure.value, Fenced) and failure.value.fence.kind == LeaseKind.RECEIVED:
                return  # another node took this file over (logged as lease.fenced): the others go on
            if failure.check(Fenced):
                fenced.append(failure)  # another node relays the pending files now: this pass stops
                return
            events.emit(log, events.INTERNAL_ERROR, flow=FLOW, transfer_id=row.id,
                        reason=f"relaying the results: {_describe(failure)}")

        for start in range(0, len(pending), PENDING_SLICE):  # handed over together, so the small ones group
            if not self.running or fenced:
                break
            claimed = yield self._claim_each(pending[start:start + PENDING_SLICE], fence)
            yield defer.DeferredList([self.relay(row, fence=file_fence).addErrback(failed, row)
                                      for row, file_fence in claimed])
        if fenced:
            fenced[0].raiseException()

    @defer.inlineCallbacks
    def _claim_each(self, rows: list[TransferRow], fence: Fence | None) -> Any:
        """The pending *rows* to relay now, each with the fence to relay it under: on a shared ledger its own
        ``received`` lease, claimed (a file whose lease another node holds live is that node's to relay, and
        one this node relays already is skipped); on one node the pass's *fence*."""
        leases = self.leases
        if leases is None or leases.store.single_node:
            return [(row, fence) for row in rows]
        claimed = []
        for row in rows:
            file_fence = yield leases.claim_received(self.ledger, row.id)
            if file_fence is not None:
                claimed.append((row, file_fence))
        return claimed

    # -- the small-file lane

    def _small_next(self) -> None:
        """If the lane is free, relay the files waiting (up to GROUP_RECORDS records) as one group."""
        if self._small_busy or not self._small:
            self._small_maybe_idle()
            return
        group: list[_Waiting] = []
        records = 0
        for waiting in self._small.values():
            if group and (records + waiting.row.record_count > GROUP_RECORDS or len(group) >= GROUP_FILES):
                break
            group.append(waiting)
            records += waiting.row.record_count
        for waiting in group:
            del self._small[waiting.row.id]
        self._small_busy = True
        self._relay_group(group).addBoth(self._small_done)

    def _small_done(self, _: object) -> None:
        self._small_busy = False
        self._small_next()

    def _small_maybe_idle(self) -> None:
        if not self._small_busy and not self._small:
            waiters, self._small_idle = self._small_idle, []
            for waiter in waiters:
                waiter.callback(None)

    @defer.inlineCallbacks
    def _relay_group(self, group: list[_Waiting]) -> Any:
        for waiting in group:
            TIMELINE.stamp(waiting.row.id, "relay_start")
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        try:
            outcomes: list[RelayOutcome] = yield self.blocking.run(
                relay_small_files, rows=[w.row for w in group], fences=[w.fence for w in group], results=self.results,
                store=self.store, keyer=self.keyer, inbox_dir=self.inbox_dir, marker=self.marker,
                lg_code=self.lg_code, now=now)
        except Exception:
            # One file of the group stale or broken: each on its own, so the others still go through.
            for waiting in group:
                try:
                    outcome = yield self._relay(waiting.row.id, waiting.received_at, waiting.fence)
                except Exception:
                    waiting.settle(Failure())
                else:
                    waiting.settle(outcome)
            return
        for waiting, outcome in zip(group, outcomes):
            TIMELINE.close(waiting.row.id, "done")
            self._account(waiting.row.id, outcome, waiting.received_at)
            waiting.settle(outcome)

    # -- one file (the large-file lane, and a group's files one by one after a failure)

    @defer.inlineCallbacks
    def _relay(self, transfer_id: int, received_at: float | None, fence: Fence | None = None) -> Any:
        TIMELINE.stamp(transfer_id, "relay_start")
        now_seconds = self.clock.seconds()
        now = datetime.datetime.fromtimestamp(now_seconds, datetime.timezone.utc)
        outcome: RelayOutcome = yield self.blocking.run(
            relay_stored_results, transfer_id=transfer_id, ledger=self.ledger, results=self.results,
            store=self.store, keyer=self.keyer, inbox_dir=self.inbox_dir, marker=self.marker, lg_code=self.lg_code,
            now=now, fence=fence)
        TIMELINE.close(transfer_id, "done")  # a push's line (nothing for a pulled file)
        self._account(transfer_id, outcome, received_at)
        return outcome

    def _account(self, transfer_id: int, outcome: RelayOutcome, received_at: float | None) -> None:
        """A relay's metrics and log line (on the reactor thread, after its commit)."""
        if outcome.already_done:
            return
        if received_at is not None and outcome.relay_name is not None and not outcome.recovered:
            # Push received → its new results durable in the inbox (nothing is written for duplicates).
            self.metrics.relay_latency.observe(max(0.0, self.clock.seconds() - received_at))
        for kind, count in outcome.relayed.items():
            self.metrics.payment_results.labels(kind=KIND_LABELS.get(kind, "unknown"), outcome="relayed").inc(count)
        for kind, count in outcome.duplicates.items():
            self.metrics.payment_results.labels(kind=KIND_LABELS.get(kind, "unknown"), outcome="duplicate").inc(count)
        new, repeated = sum(outcome.relayed.values()), sum(outcome.duplicates.values())
        self.metrics.transfers.labels(flow=FLOW, outcome="relayed" if outcome.relay_name else "duplicate").inc()
        self.metrics.last_success.labels(flow=FLOW).set(self.clock.seconds())
        recorded = self.results.records_audit  # the record was committed with DONE
        if outcome.recovered:
            events.emit(log, events.RESULTS_RELAY_FINISHED, flow=FLOW, transfer_id=transfer_id,
                        name=outcome.relay_name, audit_recorded=recorded)
        else:
            events.emit(log, events.RESULTS_RELAYED, flow=FLOW, transfer_id=transfer_id,
                        name=outcome.relay_name or "-", records=new, duplicates=repeated, audit_recorded=recorded)

    def check_unconfirmed(self) -> defer.Deferred[None]:
        """Refresh ``kei_gateway_unconfirmed_results``; warn when more 速報 are overdue than at the last check."""
        now_seconds = self.clock.seconds()
        now = datetime.datetime.fromtimestamp(now_seconds, datetime.timezone.utc)

        def counted(rows: Any) -> None:
            counts = unconfirmed_counts(rows, now, self.unconfirmed_after)
            for age, count in counts.items():
                self.metrics.unconfirmed_results.labels(age=age).set(count)
            overdue = counts.get("overdue", 0)
            if overdue > self._overdue:
                events.emit(log, events.RESULTS_UNCONFIRMED, flow=FLOW, records=overdue,
                            limit=f"{self.unconfirmed_after / 86400:g}d")
            self._overdue = overdue

        def failed(failure: Any) -> None:
            events.emit(log, events.INTERNAL_ERROR, flow=FLOW,
                        reason=f"counting unconfirmed results: {failure.getErrorMessage()}")

        return self.blocking.run(self.results.open_provisional, now, UNCONFIRMED_WINDOW).addCallbacks(counted, failed)
