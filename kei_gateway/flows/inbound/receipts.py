"""JNKS 受付結果 (SPEC §2.2): attach a relayed receipt's counts to the upload it answers."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from kei_gateway.adapters.ledger import TransferRow
from kei_gateway.adapters.ports import TransferLedgerPort
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.core.jst import today_in_jst
from kei_gateway.layouts import ValidationOptions, get_layout, parse_records
from kei_gateway.runtime import events
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.metrics import GatewayMetrics

__all__ = ["ReceiptRecorder", "count_results", "RESULT_SUFFIX"]

RESULT_SUFFIX = ".result"
log = Logger(namespace="kei_gateway.flows.receipts")


def count_results(store: BlobStore, blob_id: str, today: datetime.date) -> tuple[int, int]:
    """Blocking: (accepted, rejected) records of a stored, already validated receipt."""
    accepted = rejected = 0
    for record in parse_records(store.read(blob_id), get_layout("jnks-receipts"), ValidationOptions(today=today)):
        if record["result"] == "0":
            accepted += 1
        else:
            rejected += 1
    return accepted, rejected


class ReceiptRecorder:
    """The *after* step of the ``jnks-receipts`` inbox relay (:class:`~kei_gateway.flows.inbound.relay.InboxRelay`)."""

    def __init__(self, ledger: TransferLedgerPort, blocking: Blocking, metrics: GatewayMetrics, clock: Any,
                 upload_flow: str = "jnks-payments") -> None:
        self.ledger, self.blocking, self.metrics, self.clock = ledger, blocking, metrics, clock
        self.upload_flow = upload_flow

    @defer.inlineCallbacks
    def __call__(self, receipt: TransferRow, store: BlobStore) -> Any:
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        today = today_in_jst(self.clock.seconds())
        assert receipt.blob_id is not None
        accepted, rejected = yield self.blocking.run(count_results, store, receipt.blob_id, today)
        uploaded_name = receipt.local_name.removesuffix(RESULT_SUFFIX)
        upload = yield self.blocking.run(self.ledger.by_remote_name, self.upload_flow, uploaded_name)
        summary = f"受付 {accepted}, エラー {rejected} (receipt transfer {receipt.id})"
        if upload is not None:
            yield self.blocking.run(self.ledger.update, upload.id, now, receipt_summary=summary)
        yield self.blocking.run(self.ledger.update, receipt.id, now, receipt_summary=summary)
        self.metrics.records.labels(flow=self.upload_flow, outcome="accepted_by_peer").inc(accepted)
        if rejected:
            self.metrics.records.labels(flow=self.upload_flow, outcome="rejected_by_peer").inc(rejected)
            events.emit(log, events.RECEIPT_REJECTIONS, flow=self.upload_flow, peer=receipt.peer,
                        transfer_id=upload.id if upload is not None else "?", name=uploaded_name,
                        rejected=rejected, records=accepted + rejected)
