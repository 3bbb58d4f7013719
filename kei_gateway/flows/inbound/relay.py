"""The hand-off of a committed inbound file to the tax system: one interface, two relays.

Both doors (the results poller and the push listener) hand a transfer committed
``VALIDATED`` to the flow's :class:`Relay`; the relay writes it into the inbox exactly
once and marks it ``DONE``. The composition root picks the relay of each flow:

* :class:`InboxRelay` — the whole file into the flow's inbox (JNKS 受付結果; *after*, e.g.
  the receipt recorder, runs once the file is in the inbox and before ``DONE``);
* :class:`~kei_gateway.flows.inbound.mpn_results.ResultRelay` — MPN payment results,
  deduplicated result by result first.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from kei_gateway.adapters.ledger import TransferRow
from kei_gateway.adapters.ledger.leases import Fence, Fenced
from kei_gateway.adapters.ledger.ledger import AuditEvent, NewTransfer
from kei_gateway.adapters.ports import TransferLedgerPort
from kei_gateway.adapters.spool import publish_staged, stage_for_inbox
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.core.lease import LeaseKind, ends_with_done
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.crashpoints import crashpoint
from kei_gateway.runtime.leases import NodeLeases
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["Relay", "AcceptRelay", "InboxRelay", "relay_to_inbox", "under_received_lease"]


class Relay(Protocol):
    """Relays a transfer committed ``VALIDATED`` and marks it ``DONE``; a failure leaves it ``VALIDATED``.

    *received_at* (clock seconds) is when a push request started (its relay latency is measured). *fence* is
    the lease the work is done under (SPEC §14; the pull of the flow's directory): the relay's commits — its
    decision and ``DONE`` — check it in their own transaction and fail with
    :class:`~kei_gateway.adapters.ledger.leases.Fenced`, writing nothing, once another node holds it.
    """

    def relay(self, row: TransferRow, received_at: float | None = None,
              fence: Fence | None = None) -> defer.Deferred[Any]: ...

    accept_bytes: int
    """The largest file the relay can take inside the commit that accepts it (the intake keeps a body up to this
    size in memory for it); 0: never."""

    def relay_on_accept(self, records: int, received_at: float | None = None,
                        key: Any = None) -> AcceptRelay | None:
        """On the reactor thread, before a new file of *records* records is committed: a relay to run inside the
        commit that accepts it (issue 16), or None — then the file is committed alone and handed to :meth:`relay`.
        *key* is the push's timeline key (bench only)."""
        ...


class AcceptRelay(Protocol):
    """A relay run inside the transaction that accepts a new inbound file (``settle_received`` calls it in place
    of the ledger's ``add_transfer``): the transfer, the file's relay and both audit records in ONE commit."""

    def __call__(self, transfer: NewTransfer, audit: AuditEvent | None, data: bytes) -> TransferRow:
        """Blocking: accept *transfer* (with its *audit* record) and relay *data*, its content; the committed row,
        ``DONE``. ``DuplicateResult``: nothing written, commit the transfer alone and relay it after."""
        ...

    def end(self, row: TransferRow | None) -> None:
        """On the reactor thread, once, whatever happened: count what was relayed with *row*, free the relay."""
        ...


def under_received_lease(leases: NodeLeases | None, fence: Fence | None, relayed: defer.Deferred[Any]) -> defer.Deferred[Any]:
    """The bookkeeping of a relay done under a received file's lease (kind ``received``, SPEC §14): released with
    ``DONE`` (in its commit), so no longer renewed; fenced (another node took the file over while this one
    stalled): logged (``lease.fenced``), no longer renewed; failed otherwise: released, so that the next pending
    pass — of any node — takes the file. Other fences (a pull's, a pass's) are their holders' business."""
    if leases is None or fence is None or fence.kind != LeaseKind.RECEIVED:
        return relayed
    node_leases = leases

    def done(result: Any) -> Any:
        node_leases.forget(fence)
        return result

    def failed(failure: Any) -> Any:
        if failure.check(Fenced):
            node_leases.fenced(fence)
        else:
            node_leases.release(fence)
        return failure

    return relayed.addCallbacks(done, failed)


def relay_to_inbox(ledger: TransferLedgerPort, store: BlobStore, row: TransferRow, inbox_dir: str, marker: bool,
                   now: datetime.datetime, fence: Fence | None = None) -> None:
    """Blocking: the stored file into the inbox under its name, exactly once (SPEC §4).

    Staged as ``.name.part`` (fsynced), the decision recorded on the transfer
    (``relay_name``), then renamed into place; a transfer whose decision is recorded is
    only published again, never rewritten — see :func:`kei_gateway.adapters.spool.stage_for_inbox`.
    """
    assert row.blob_id is not None
    if row.relay_name is None:
        stage_for_inbox(inbox_dir, row.local_name, store.read(row.blob_id))
        crashpoint("relay.staged")
        row = ledger.update(row.id, now, relay_name=row.local_name, fence=fence)
    assert row.relay_name is not None
    publish_staged(inbox_dir, row.relay_name, marker)


class InboxRelay:
    """The whole file into *inbox_dir* exactly once, then ``DONE`` (a flow without record-level dedupe)."""

    log = Logger()

    def __init__(self, *, flow: str, peer: str, inbox_dir: str, marker: bool, ledger: TransferLedgerPort,
                 store: BlobStore, blocking: Blocking, clock: Any, metrics: GatewayMetrics,
                 after: Callable[[TransferRow, BlobStore], Any] | None = None) -> None:
        self.flow, self.peer, self.inbox_dir, self.marker = flow, peer, inbox_dir, marker
        self.ledger, self.store, self.blocking, self.clock, self.metrics = ledger, store, blocking, clock, metrics
        self.after = after

    accept_bytes = 0
    """The whole file goes to the inbox after its commit (its receipts follow): never inside it."""

    def relay_on_accept(self, records: int, received_at: float | None = None, key: Any = None) -> None:
        return None

    leases: NodeLeases | None = None
    """This node's leases (SPEC §14), set by the composition root: a relay under a received file's lease ends it
    (:func:`under_received_lease`). None: this process's alone."""

    def relay(self, row: TransferRow, received_at: float | None = None,
              fence: Fence | None = None) -> defer.Deferred[Any]:
        return under_received_lease(self.leases, fence, defer.ensureDeferred(self._relay(row, fence)))

    async def _relay(self, row: TransferRow, fence: Fence | None) -> None:
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        await self.blocking.run(relay_to_inbox, self.ledger, self.store, row, self.inbox_dir, self.marker, now, fence)
        crashpoint("relay.written")
        if self.after is not None:
            await defer.maybeDeferred(self.after, row, self.store)  # before DONE: after a crash it simply runs again
        fields = {"flow": self.flow, "peer": self.peer, "name": row.local_name, "records": row.record_count,
                  "sha256": row.sha256}
        await self.blocking.run(self.ledger.transition, row.id, S.DONE, now, fence=fence,
                                release=fence is not None and ends_with_done(fence.kind),
                                audit=(events.DOWNLOAD_RELAYED.name, fields))  # the record commits with DONE
        crashpoint("relay.committed")
        self.metrics.transfers.labels(flow=self.flow, outcome="relayed").inc()
        self.metrics.last_success.labels(flow=self.flow).set(self.clock.seconds())
        events.emit(self.log, events.DOWNLOAD_RELAYED, transfer_id=row.id, audit_recorded=self.ledger.records_audit,
                    **fields)
