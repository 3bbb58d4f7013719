"""The interfaces the flows depend on, each with a real adapter and an in-memory twin (STYLE §3).

========================  =============================================  ===========================================
port                      real adapter                                   twin (:mod:`kei_gateway.testing`)
========================  =============================================  ===========================================
:class:`TransferLedgerPort`  :class:`~kei_gateway.adapters.ledger.TransferLedger` (SQLAlchemy)   ``InMemoryLedger``
:class:`ResultLedgerPort`    :class:`~kei_gateway.adapters.ledger.results.ResultLedger`          ``InMemoryResultLedger``
:class:`BlobStore`           :class:`~kei_gateway.adapters.store.blobs.FileBlobStore`            ``InMemoryBlobStore``
:class:`PeerClient`          :class:`~kei_gateway.adapters.transport.WebDavClient`              ``InMemoryPeer``
========================  =============================================  ===========================================

Every ledger and store method blocks: the flows call them through the blocking door.
The peer client returns Deferreds.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from twisted.internet import defer

from kei_gateway.adapters.ledger.leases import Fence, Hold
from kei_gateway.adapters.ledger.ledger import AuditEvent, Claimed, NewTransfer, TransferRow
from kei_gateway.adapters.ledger.results import AcceptDecider, RelayDecision
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.adapters.transport._dav import RemoteEntry
from kei_gateway.adapters.transport.webdav import BodySource, PutResult, Sink
from kei_gateway.core.results import ResultFacts, StoredResult
from kei_gateway.core.transfer import Transition, TransferState

__all__ = ["TransferLedgerPort", "ResultLedgerPort", "BlobStore", "PeerClient"]


class TransferLedgerPort(Protocol):
    """Transfers: create, move between states (every move checked against SPEC §6), query."""

    def ping(self) -> None: ...

    def queue_counts(self) -> dict[tuple[str, str], int]: ...

    def oldest_queued(self) -> dict[str, Any]: ...

    @property
    def records_audit(self) -> bool:
        """Whether :meth:`add_transfer` writes its *audit* record in the transaction of the transfer (STYLE 14)."""
        ...

    def add_transfer(self, *, flow: str, direction: str, peer: str, local_name: str, state: TransferState,
                     size: int, sha256: str | None, record_count: int, blob_id: str | None, now: datetime,
                     last_error: str | None = None, source_removed: bool = False, remote_name: str | None = None,
                     remote_etag: str | None = None, audit: AuditEvent | None = None,
                     fence: Fence | None = None, hold: Hold | None = None) -> TransferRow: ...

    def get(self, transfer_id: int) -> TransferRow: ...

    def transition(self, transfer_id: int, new_state: TransferState, now: datetime, *,
                   audit: AuditEvent | None = None, fence: Fence | None = None, release: bool = False,
                   **fields: Any) -> TransferRow: ...

    def apply(self, transfer_id: int, transition: Transition, now: datetime, *, fence: Fence | None = None,
              release: bool = False) -> TransferRow: ...

    def update(self, transfer_id: int, now: datetime, *, fence: Fence | None = None, **fields: Any) -> TransferRow: ...

    def unremoved_source(self, flow: str, local_name: str, sha256: str | None) -> TransferRow | None: ...

    def requeue_sending(self, now: datetime, node: str | None = None) -> int: ...

    def claim_due(self, flow: str, now: datetime, node: str, duration: float, scan: int = 20) -> Claimed | None: ...

    def claim_received(self, transfer_id: int, node: str, now: datetime, duration: float) -> Claimed | None: ...

    def received_token(self, transfer_id: int) -> int | None: ...

    def due(self, flow: str, now: datetime, limit: int = 10) -> list[TransferRow]: ...

    def list_transfers(self, *, state: str | None = None, flow: str | None = None,
                       limit: int = 100, oldest_first: bool = False) -> list[TransferRow]: ...

    def referenced_blobs(self) -> set[str]: ...

    def inbound_for(self, flow: str, remote_name: str) -> list[TransferRow]: ...

    def by_remote_name(self, flow: str, remote_name: str) -> TransferRow | None: ...


class RelayTransaction(Protocol):
    """One relay decision recorded batch by batch in ONE open transaction (see ``ResultLedger.relay_transaction``)."""

    def record(self, facts: Sequence[ResultFacts]) -> list[ResultFacts]:
        """Record the new results of *facts* (the next records of the file, in order); return them, in file order."""
        ...

    def finish(self, summary: str, audit: AuditEvent | None = None) -> bool:
        """The decision: the transfer ``DONE`` with its relay name if some result was new (True; else none) and
        the relay's *audit* record, committed with the new results."""
        ...


class ResultLedgerPort(Protocol):
    """Payment results: dedupe, the relay decision (recorded with the transfer, in one transaction), reconcile."""

    def known_identities(self, keys: Collection[str]) -> set[str]: ...

    def identities_of_transfer(self, transfer_id: int) -> set[str]: ...

    @property
    def records_audit(self) -> bool:
        """Whether a relay's *audit* record is written in the transaction that makes it DONE (STYLE 14)."""
        ...

    def relay_transaction(self, transfer_id: int, relay_name: str, now: datetime,
                          fence: Fence | None = None) -> AbstractContextManager[RelayTransaction]:
        """With *fence* (SPEC §14), :meth:`RelayTransaction.finish` commits only while that lease is this node's
        (:class:`~kei_gateway.adapters.ledger.leases.Fenced` otherwise, nothing written)."""
        ...

    def commit_relays(self, decisions: Sequence[RelayDecision], now: datetime) -> None:
        """Several files' relays, each ``VALIDATED`` → ``DONE`` with its new results and audit record, in ONE
        transaction; ``DuplicateResult`` or ``NotRelayable`` and nothing written."""
        ...

    def accept_relay(self, transfer: NewTransfer, audit: AuditEvent | None, decide: AcceptDecider,
                     now: datetime) -> TransferRow:
        """A new inbound transfer and its relay in ONE transaction: *transfer* inserted ``VALIDATED`` with its
        *audit* record, ``decide(row, known)`` (lookups in the transaction, the staging), its decision applied as
        :meth:`commit_relays` does; the row as committed (``DONE``). A failure writes nothing, not even the
        transfer (``DuplicateResult`` when a result was recorded meanwhile)."""
        ...

    def finish_relay(self, transfer_id: int, now: datetime, audit: AuditEvent | None = None,
                     fence: Fence | None = None) -> None: ...

    def results_received_on(self, day: date) -> list[StoredResult]: ...

    def results_since(self, start: datetime) -> list[StoredResult]: ...

    def results_between(self, start: datetime, end: datetime) -> list[StoredResult]: ...

    def open_provisional(self, now: datetime, within: timedelta | None = None) -> list[StoredResult]: ...


class PeerClient(Protocol):
    """One peer's WebDAV subset; failures are the typed errors of :mod:`kei_gateway.adapters.transport.errors`."""

    def put(self, dir_url: str, name: str, body: BodySource, size: int, sha256_hex: str) -> defer.Deferred[PutResult]:
        ...

    def propfind(self, dir_url: str) -> defer.Deferred[list[RemoteEntry]]: ...

    def get(self, url: str, sink: Sink) -> defer.Deferred[tuple[int, str]]: ...

    def delete(self, url: str) -> defer.Deferred[bool]: ...

    def close(self) -> defer.Deferred[None]: ...

