"""Downloading from a peer's results directory and relaying to an inbox (SPEC §3 "Download", §4).

For each file in ``results_url`` (``PROPFIND Depth: 1``) the poller, one file at a time:

1. skips it if the ledger says it was quarantined before (same name, ETag and size);
2. ``GET`` it, validating and encrypting it into the store as it streams;
3. commits an inbound transfer (``VALIDATED``, with name, ETag, size, SHA-256);
4. relays it into the inbox exactly once: staged as ``.name.part`` (fsync), the decision
   recorded on the transfer, renamed into place (fsync dir; optional ``.end``) — payment
   results instead go through their own relay (``relay=``, dedupe first);
5. marks the transfer ``DONE`` (relayed), then ``DELETE`` s it at the peer.

A crash anywhere repeats at most steps that are idempotent: a ``VALIDATED`` transfer is
relayed again from the store unless its relay was already decided (then only the rename
is finished, never the file written again), a ``DONE`` one with
the same ETag and size is only deleted at the peer (a file that merely reuses a name is
fetched and judged anew). An invalid file is quarantined (encrypted in the store, its
errors in ``quarantine/<flow>/``), recorded, and left at the peer.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from kei_gateway.adapters.ledger import TransferLedger, TransferRow
from kei_gateway.adapters.spool import NAME_PATTERN, publish_staged, stage_for_inbox
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.adapters.transport import RemoteEntry, TransportError, WebDavClient, file_url
from kei_gateway.core.jst import today_in_jst
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.inbound.intake import (
    Received,
    StreamIntake,
    count_quarantined,
    first_error,
    quarantine_received,
)
from kei_gateway.layouts import ValidationOptions, get_layout
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.crashpoints import crashpoint
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["DownloadPoller", "relay_to_inbox", "Downloaded"]

Downloaded = Received
"""The former name of :class:`~kei_gateway.flows.inbound.intake.Received`."""


def relay_to_inbox(ledger: TransferLedger, store: BlobStore, row: TransferRow, inbox_dir: str, marker: bool,
                   now: datetime.datetime) -> None:
    """Blocking: the stored file into the inbox under its name, exactly once (SPEC §4).

    Staged as ``.name.part`` (fsynced), the decision recorded on the transfer
    (``relay_name``), then renamed into place; a transfer whose decision is recorded is
    only published again, never rewritten — see :func:`kei_gateway.adapters.spool.stage_for_inbox`.
    """
    assert row.blob_id is not None
    if row.relay_name is None:
        stage_for_inbox(inbox_dir, row.local_name, store.read(row.blob_id))
        crashpoint("relay.staged")
        row = ledger.update(row.id, now, relay_name=row.local_name)
    assert row.relay_name is not None
    publish_staged(inbox_dir, row.relay_name, marker)


class DownloadPoller(service.Service):
    """Polls one inbound flow's peer directory; relays each file once, then deletes it there."""

    log = Logger()

    def __init__(self, *, flow: str, layout_name: str, peer: str, results_url: str, inbox_dir: str,
                 quarantine_dir: str, marker: bool, client: WebDavClient, ledger: TransferLedger,
                 store: BlobStore, blocking: Blocking, clock: Any, metrics: GatewayMetrics, poll_interval: float,
                 on_relayed: Callable[[TransferRow, BlobStore], Any] | None = None,
                 relay: Callable[[TransferRow], Any] | None = None, intake_blocking: Blocking | None = None) -> None:
        """*relay*, when given, replaces the relay of the whole file (payment results: dedupe first);
        *intake_blocking* is the door of the store writer, which waits on the network for the whole file."""
        self.setName(f"poller:{flow}")
        self.flow, self.peer, self.results_url = flow, peer, results_url
        self.layout = get_layout(layout_name)
        self.inbox_dir, self.quarantine_dir, self.marker = inbox_dir, quarantine_dir, marker
        self.client, self.ledger, self.store = client, ledger, store
        self.blocking, self.clock, self.metrics = blocking, clock, metrics
        self.on_relayed = on_relayed
        self.relay = relay
        self.intake_blocking = intake_blocking or blocking
        self._busy: defer.Deferred[Any] | None = None
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = clock
        self._interval = poll_interval

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> defer.Deferred[Any] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        done = defer.maybeDeferred(lambda: self._busy)
        return done.addBoth(lambda _: getattr(self.client, "close", lambda: None)())

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
                yield self._one(entry)
            except TransportError as error:
                events.emit(self.log, events.TRANSFER_RETRY, flow=self.flow, peer=self.peer, transfer_id="-",
                            attempts=1, reason=error.kind, next_attempt_at=f"+{self._interval:g}s")
                return
            except Exception as error:  # one file's trouble (disk, database) must not stop the others
                events.emit(self.log, events.INTERNAL_ERROR, flow=self.flow, peer=self.peer,
                            reason=f"{entry.name}: {events.describe_error(error)}")

    @defer.inlineCallbacks
    def _one(self, entry: RemoteEntry) -> Any:
        known: list[TransferRow] = yield self.blocking.run(self.ledger.inbound_for, self.flow, entry.name)
        url = file_url(self.results_url, entry.name)
        for row in known:
            if row.state == S.DONE.value:
                if row.remote_etag is not None and (row.remote_etag, row.size) == (entry.etag, entry.size):
                    yield self.client.delete(url)  # this very file was relayed before; the DELETE was lost
                    return
                # A name seen before (or pushed) but not provably the same file: fetched and judged anew
                # (payment results are deduplicated result by result; a receipt replaces its namesake).
                continue
            if row.state == S.RECEIVED.value and row.blob_id:
                # Stored and valid (a RECEIVED row is only added for a valid file); a crash came before VALIDATED.
                now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
                row = yield self.blocking.run(self.ledger.transition, row.id, S.VALIDATED, now)
            if row.state == S.VALIDATED.value and row.blob_id:
                yield self._relay(row)  # a crash came between commit and relay
                yield self.client.delete(url)
                return
            if row.state == S.QUARANTINED.value and (row.remote_etag, row.size) == (entry.etag, entry.size or 0):
                return  # known bad and unchanged: not fetched again
        downloaded = yield self._download(url)
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        report = downloaded.report
        if not report.valid:
            yield self.blocking.run(self._quarantine, entry, downloaded, now)
            return
        row = yield self.blocking.run(
            self.ledger.add_transfer, flow=self.flow, direction="in", peer=self.peer, local_name=entry.name,
            state=S.RECEIVED, size=downloaded.size, sha256=downloaded.sha256, record_count=report.records,
            blob_id=downloaded.blob_id, now=now, remote_name=entry.name, remote_etag=entry.etag)
        row = yield self.blocking.run(self.ledger.transition, row.id, S.VALIDATED, now)
        crashpoint("download.committed")
        yield self._relay(row)
        crashpoint("download.relayed")
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
    def _relay(self, row: TransferRow) -> Any:
        assert row.blob_id is not None
        if self.relay is not None:
            yield self.relay(row)  # it marks the transfer DONE and counts what it relayed
            self.metrics.transfer_bytes.labels(flow=self.flow).inc(row.size)
            return
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        yield self.blocking.run(relay_to_inbox, self.ledger, self.store, row, self.inbox_dir, self.marker, now)
        crashpoint("relay.written")
        if self.on_relayed is not None:
            yield self.on_relayed(row, self.store)  # before DONE: after a crash here it simply runs again
        yield self.blocking.run(self.ledger.transition, row.id, S.DONE, now)
        crashpoint("relay.committed")
        self.metrics.transfers.labels(flow=self.flow, outcome="relayed").inc()
        self.metrics.transfer_bytes.labels(flow=self.flow).inc(row.size)
        self.metrics.last_success.labels(flow=self.flow).set(self.clock.seconds())
        events.emit(self.log, events.DOWNLOAD_RELAYED, flow=self.flow, peer=self.peer, name=row.local_name,
                    records=row.record_count, transfer_id=row.id, sha256=row.sha256)

    def _quarantine(self, entry: RemoteEntry, downloaded: Received, now: datetime.datetime) -> None:
        """Blocking: keep the bad file encrypted, write its errors for a person, record it."""
        quarantine_received(ledger=self.ledger, flow=self.flow, peer=self.peer, name=entry.name,
                            quarantine_dir=self.quarantine_dir, received=downloaded, now=now,
                            note="left at the peer", size=entry.size, remote_etag=entry.etag)
        count_quarantined(self.metrics, self.flow, downloaded.report)
        events.emit(self.log, events.DOWNLOAD_QUARANTINED, flow=self.flow, peer=self.peer, name=entry.name,
                    reason=first_error(downloaded.report), sha256=downloaded.sha256)
