"""Downloading from a peer's results directory and relaying to an inbox (SPEC §3 "Download", §4).

For each file in ``results_url`` (``PROPFIND Depth: 1``) the poller, one file at a time:

1. asks :func:`kei_gateway.core.transfer.on_remote_entry` what the ledger knows of it
   (skip a file quarantined before with the same ETag and size, finish a relay a crash
   cut short, repeat a lost ``DELETE``, or fetch it);
2. ``GET`` it, validating and encrypting it into the store as it streams
   (:class:`~kei_gateway.flows.inbound.intake.StreamIntake`);
3. settles it (:func:`~kei_gateway.flows.inbound.intake.settle_received`, the decision of
   :mod:`kei_gateway.core.settle` shared with the push listener): an inbound transfer
   committed ``VALIDATED`` (name, ETag, size, SHA-256), or quarantined;
4. hands it to the flow's relay (:mod:`kei_gateway.flows.inbound.relay`), which writes it
   into the inbox exactly once and marks it ``DONE``; then ``DELETE`` s it at the peer.

A crash anywhere repeats at most steps that are idempotent: a ``VALIDATED`` transfer is
relayed again from the store unless its relay was already decided (then only the rename
is finished, never the file written again), a ``DONE`` one with
the same ETag and size is only deleted at the peer (a file that merely reuses a name is
fetched and judged anew). An invalid file is quarantined (encrypted in the store, its
errors in ``quarantine/<flow>/``), recorded, and left at the peer.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from kei_gateway.adapters.ledger import TransferRow
from kei_gateway.adapters.ledger.leases import Fence, Fenced
from kei_gateway.adapters.ports import PeerClient, TransferLedgerPort
from kei_gateway.adapters.spool import NAME_PATTERN
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.adapters.transport import RemoteEntry, TransportError, file_url
from kei_gateway.core.jst import today_in_jst
from kei_gateway.core.lease import LeaseKind
from kei_gateway.core.settle import Door, Settlement
from kei_gateway.core.transfer import RemoteAction, on_remote_entry
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.inbound.intake import Received, StreamIntake, count_quarantined, first_error, settle_received
from kei_gateway.flows.inbound.relay import Relay
from kei_gateway.flows.peer_link import PeerLink
from kei_gateway.layouts import ValidationOptions, get_layout
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.crashpoints import crashpoint
from kei_gateway.runtime.leases import NodeLeases
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["DownloadPoller", "Downloaded"]

Downloaded = Received
"""The former name of :class:`~kei_gateway.flows.inbound.intake.Received`."""


class DownloadPoller(service.Service):
    """Polls one inbound flow's peer directory; relays each file once, then deletes it there."""

    log = Logger()

    def __init__(self, *, flow: str, layout_name: str, link: PeerLink, quarantine_dir: str,
                 relay: Relay, ledger: TransferLedgerPort, store: BlobStore, blocking: Blocking,
                 clock: Any, metrics: GatewayMetrics, poll_interval: float,
                 intake_blocking: Blocking | None = None) -> None:
        """*link* gives the peer's current results URL and client (a reload changes them there); *relay*
        takes each committed file to the tax system (:mod:`kei_gateway.flows.inbound.relay`);
        *intake_blocking* is the door of the store writer, which waits on the network for the whole file."""
        self.setName(f"poller:{flow}")
        self.flow, self.peer, self.link = flow, link.peer, link
        self.layout = get_layout(layout_name)
        self.quarantine_dir = quarantine_dir
        self.ledger, self.store = ledger, store
        self.blocking, self.clock, self.metrics = blocking, clock, metrics
        self.relay = relay
        self.intake_blocking = intake_blocking or blocking
        self._busy: defer.Deferred[Any] | None = None
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = clock
        self._interval = poll_interval

    @property
    def client(self) -> PeerClient:
        return self.link.client()

    @property
    def results_url(self) -> str:
        return str(self.link.settings().results_url)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> defer.Deferred[Any] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        done = defer.maybeDeferred(lambda: self._busy)
        return done.addBoth(lambda _: self.link.close())

    leases: NodeLeases | None = None
    """This node's leases (SPEC §14), set by the flow's builder: a pass runs only under the directory's pull
    lease, and checks it before each relay and DELETE. None: the directory is this process's alone."""

    def poll(self) -> defer.Deferred[Any] | None:
        """One pass over the peer directory (skipped while the previous pass still runs)."""
        if self._busy is not None or not self.running:
            return None
        d = self._poll()
        self._busy = d

        def finished(_: object) -> None:
            self._busy = None

        d.addBoth(finished)
        return d

    @defer.inlineCallbacks
    def _poll(self) -> Any:
        leases = self.leases
        if leases is None:
            yield self._pass(None)
            return
        fence = yield leases.claim(LeaseKind.PULL, self.flow)
        if fence is None:
            return  # another node pulls this directory now (or this node may not claim): the next poll
        try:
            yield self._pass(fence)
        except Fenced:
            leases.fenced(fence)
            return
        yield leases.release(fence)  # before the next pass can claim (a late release would fence it)

    def _still_mine(self, fence: Fence | None) -> defer.Deferred[None]:
        """Before an action on a file that another node may now own (relay, DELETE at the peer): raise
        :class:`Fenced` if this node lost the pull's lease. Cheap and early; the relay's commits check the lease
        again in their own transactions (SPEC §14), the DELETE rests on this check and the peer's 404."""
        leases = self.leases
        if fence is None or leases is None:
            return defer.succeed(None)
        if not leases.holds(fence):
            return defer.fail(Fenced(fence, None))

        def checked(current: bool) -> None:
            if not current:
                raise Fenced(fence, None)

        return self.blocking.run(leases.store.current, fence).addCallback(checked)

    @defer.inlineCallbacks
    def _pass(self, fence: Fence | None) -> Any:
        try:
            entries = yield self.client.propfind(self.results_url)
        except TransportError as error:
            self.metrics.peer_up.labels(peer=self.peer).set(0)
            events.emit(self.log, events.TRANSFER_RETRY, flow=self.flow, peer=self.peer, transfer_id="-", attempts=1,
                        reason=error.kind, next_attempt_at=f"+{self._interval:g}s")
            return
        self.metrics.peer_up.labels(peer=self.peer).set(1)
        for entry in sorted(entries, key=lambda e: e.name):
            if not self.running:
                return
            if not NAME_PATTERN.fullmatch(entry.name) or entry.name.endswith(".part"):
                continue
            try:
                yield self._one(entry, fence)
            except Fenced:
                raise  # another node pulls this directory now: this pass stops
            except TransportError as error:
                events.emit(self.log, events.TRANSFER_RETRY, flow=self.flow, peer=self.peer, transfer_id="-",
                            attempts=1, reason=error.kind, next_attempt_at=f"+{self._interval:g}s")
                return
            except Exception as error:  # one file's trouble (disk, database) must not stop the others
                events.emit(self.log, events.INTERNAL_ERROR, flow=self.flow, peer=self.peer,
                            reason=f"{entry.name}: {events.describe_error(error)}")

    @defer.inlineCallbacks
    def _one(self, entry: RemoteEntry, fence: Fence | None = None) -> Any:
        known: list[TransferRow] = yield self.blocking.run(self.ledger.inbound_for, self.flow, entry.name)
        url = file_url(self.results_url, entry.name)
        decision = on_remote_entry(known, entry.etag, entry.size)
        if decision.action is RemoteAction.DELETE_AT_PEER:
            yield self._still_mine(fence)
            yield self.client.delete(url)  # this very file was relayed before; the DELETE was lost
            return
        if decision.action is RemoteAction.LEAVE:
            return  # known bad and unchanged: not fetched again
        if decision.action is RemoteAction.FINISH_RELAY:
            row = next(row for row in known if row.id == decision.transfer_id)
            if decision.validate_first:
                now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
                row = yield self.blocking.run(self.ledger.transition, row.id, S.VALIDATED, now, fence=fence)
            relay_fence = fence  # one node: the pull's own fence
            leases = self.leases
            if leases is not None and not leases.store.single_node:
                relay_fence = yield leases.claim_received(self.ledger, row.id)
                if relay_fence is None:
                    return  # another node relays it now (its pending pass, or a pull of before): a later pass
            yield self._still_mine(fence)
            relayed = yield self._relay(row, relay_fence)  # a crash came between commit and relay
            if not relayed:
                return
            yield self._still_mine(fence)
            yield self.client.delete(url)
            return
        downloaded = yield self._download(url)
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        settled = yield self.blocking.run(
            settle_received, door=Door.PULL, ledger=self.ledger, store=self.store, flow=self.flow, peer=self.peer,
            name=entry.name, received=downloaded, quarantine_dir=self.quarantine_dir, now=now,
            note="left at the peer", known=known, size=entry.size, remote_etag=entry.etag,
            hold=self.leases.hold_received() if self.leases is not None else None)
        if settled.fence is not None and self.leases is not None:
            self.leases.adopt_held(settled.fence)  # renewed while this node relays it
        if settled.settlement is Settlement.INVALID:
            count_quarantined(self.metrics, self.flow, downloaded.report)
            events.emit(self.log, events.DOWNLOAD_QUARANTINED, flow=self.flow, peer=self.peer, name=entry.name,
                        reason=first_error(downloaded.report), sha256=downloaded.sha256,
                        transfer_id=settled.row.id if settled.row is not None else "-",
                        audit_recorded=self.ledger.records_audit)  # committed with the QUARANTINED transfer
            return
        assert settled.row is not None
        yield self._still_mine(fence)
        relayed = yield self._relay(settled.row, settled.fence or fence)
        if not relayed:
            return
        crashpoint("download.relayed")
        yield self._still_mine(fence)
        yield self.client.delete(url)

    def _download(self, url: str) -> defer.Deferred[Received]:
        """GET *url* into the store, validating as it streams; the intake pauses the GET while the store catches up."""
        intake = StreamIntake(layout=self.layout, options=ValidationOptions(today=today_in_jst(self.clock.seconds())),
                              store=self.store, blocking=self.intake_blocking)

        def failed(failure: Any) -> defer.Deferred[Any]:
            return intake.abort(failure.value).addCallback(lambda _: failure)

        download: defer.Deferred[Any] = self.client.get(url, intake.put)
        return download.addCallbacks(lambda _: intake.finish(), failed)

    @defer.inlineCallbacks
    def _relay(self, row: TransferRow, fence: Fence | None) -> Any:
        """Relay *row*; False when its ``received`` lease was taken over meanwhile (another node relays it: the
        file stays at the peer for now)."""
        assert row.blob_id is not None
        try:
            yield self.relay.relay(row, fence=fence)  # it marks the transfer DONE (fenced), counts what it relayed
        except Fenced as error:
            if error.fence.kind != LeaseKind.RECEIVED:
                raise
            return False
        self.metrics.transfer_bytes.labels(flow=self.flow).inc(row.size)
        return True
