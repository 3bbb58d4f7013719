"""The upload sender: done, retried on schedule, failed for a person, or paused on refusal."""

from __future__ import annotations

import datetime
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.adapters.transport import (
    HttpError,
    OutboundDenied,
    PeerIdentityError,
    RemoteConflict,
    TransientError,
)
from kei_gateway.config import RetryPolicy
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.outbound.sender import UploadSender
from kei_gateway.flows.peer_link import FixedPeerLink
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.testing import InMemoryBlobStore, InMemoryLedger, InMemoryPeer, SynchronousBlocking

START = datetime.datetime(2026, 11, 21, 0, 0, tzinfo=datetime.timezone.utc)
PAYLOAD = b"1" * 70


def peer_failing(*outcomes: Exception | None) -> InMemoryPeer:
    """The JNKS peer, whose next uploads end in *outcomes* in turn (None: that one works)."""
    peer = InMemoryPeer("jnks")
    peer.fail_next("PUT", *outcomes)
    return peer


def put_names(peer: InMemoryPeer) -> list[str]:
    return [url.rsplit("/", 1)[1] for method, url in peer.calls if method == "PUT"]


class SenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ledger = InMemoryLedger()
        self.store = InMemoryBlobStore()
        info = self.store.write("blob-1", [PAYLOAD])
        self.transfer = self.ledger.add_transfer(
            flow="jnks-payments", direction="out", peer="jnks", local_name="a.dat", state=S.QUEUED, size=info.size,
            sha256=info.sha256, record_count=1, blob_id="blob-1", now=START).id
        self.clock = task.Clock()
        self.clock.advance(START.timestamp() + 60)
        self.registry = CollectorRegistry()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def sender(self, client: InMemoryPeer, attempts: int = 3) -> UploadSender:
        link = FixedPeerLink("jnks", client, url="https://jnks.example/upload/",
                             retry=RetryPolicy(attempts=attempts, first_delay=30.0, max_delay=3600.0))
        sender = UploadSender(flow="jnks-payments", lg_code="131041", link=link,
                              ledger=self.ledger, store=self.store, blocking=SynchronousBlocking(), clock=self.clock,
                              metrics=GatewayMetrics(self.registry, process=False))
        sender.startService()
        self.addCleanup(sender.stopService)
        self.clock.advance(0)
        return sender

    def kinds(self) -> list[str]:
        return [str(e["kei_event"]) for e in self.events if "kei_event" in e]

    def state(self) -> str:
        return self.ledger.get(self.transfer).state

    def test_when_the_upload_succeeds_then_the_transfer_is_done_under_its_deterministic_name(self) -> None:
        client = peer_failing()
        self.sender(client)
        self.assertEqual(self.state(), "DONE")
        [name] = put_names(client)
        self.assertEqual(name, f"131041_jnks-payments_20261121090000_{self.transfer}.dat")  # created 00:00 UTC = 09:00 JST
        self.assertEqual(client.files, {f"https://jnks.example/upload/{name}": PAYLOAD})
        self.assertEqual(self.ledger.get(self.transfer).remote_name, name)
        self.assertEqual(self.registry.get_sample_value("kei_gateway_transfers_total",
                                                        {"flow": "jnks-payments", "outcome": "done"}), 1)
        self.assertEqual(self.registry.get_sample_value("kei_gateway_transfer_bytes_total", {"flow": "jnks-payments"}), 70)
        self.assertEqual(self.registry.get_sample_value("kei_gateway_peer_up", {"peer": "jnks"}), 1)
        self.assertIn("transfer.sent", self.kinds())
        self.assertEqual([(event, fields["transfer_id"]) for event, fields in self.ledger.audit],
                         [("transfer.sent", self.transfer)], "the delivery's record is committed with DONE")

    def test_when_the_network_fails_then_it_waits_its_back_off_and_the_same_name_is_sent_again(self) -> None:
        client = peer_failing(TransientError("jnks", "connect", "refused"))
        self.sender(client)
        row = self.ledger.get(self.transfer)
        self.assertEqual((row.state, row.attempts), ("RETRY_WAIT", 1))
        self.assertIsNotNone(row.next_attempt_at)
        wait = row.next_attempt_at.timestamp() - self.clock.seconds()  # type: ignore[union-attr]
        self.assertTrue(30 <= wait <= 45, wait)
        self.clock.advance(10)
        self.assertEqual(len(put_names(client)), 1, "not before its time")
        self.clock.advance(40)
        self.assertEqual(self.state(), "DONE")
        first, second = put_names(client)
        self.assertEqual(first, second, "a retry repeats the same remote name")
        self.assertEqual(self.registry.get_sample_value("kei_gateway_retries_total", {"peer": "jnks"}), 1)

    def test_when_the_peer_says_retry_after_then_no_attempt_comes_sooner(self) -> None:
        client = peer_failing(HttpError("jnks", "PUT", "/upload/x.part", 503, retry_after=600))
        self.sender(client)
        row = self.ledger.get(self.transfer)
        self.assertEqual(row.next_attempt_at.timestamp() - self.clock.seconds(), 600)  # type: ignore[union-attr]

    def test_when_every_attempt_fails_then_the_transfer_is_failed_with_an_alert(self) -> None:
        client = peer_failing(*[TransientError("jnks", "connect", "refused")] * 3)
        self.sender(client, attempts=3)
        for _ in range(10):
            self.clock.advance(3600)
        row = self.ledger.get(self.transfer)
        self.assertEqual((row.state, row.attempts, len(put_names(client))), ("FAILED", 3, 3))
        self.assertIn("transfer.failed", self.kinds())
        self.assertEqual(self.registry.get_sample_value("kei_gateway_transfers_total",
                                                        {"flow": "jnks-payments", "outcome": "failed"}), 1)

    def test_when_the_name_exists_with_other_content_then_it_fails_at_once_for_a_person(self) -> None:
        self.sender(peer_failing(RemoteConflict("jnks", "x.dat", "a" * 64, "b" * 64)))
        self.assertEqual(self.state(), "FAILED")

    def test_when_the_address_is_refused_then_the_transfer_stays_queued_and_the_flow_pauses_until_resumed(self) -> None:
        client = peer_failing(OutboundDenied("jnks", "address", "10.9.9.9 outside allow"))
        sender = self.sender(client)
        row = self.ledger.get(self.transfer)
        self.assertEqual((row.state, row.attempts), ("QUEUED", 0))
        self.assertIsNotNone(sender.paused)
        self.clock.advance(60)
        self.assertEqual(len(put_names(client)), 1, "paused: no more attempts until a person acts")
        self.assertIn("peer.denied", self.kinds())
        self.assertEqual(self.registry.get_sample_value("kei_gateway_denied_connections_total",
                                                        {"listener": "outbound", "reason": "address"}), 1)
        sender.resume()
        self.assertEqual(self.state(), "DONE")

    def test_when_the_peer_fails_its_identity_check_then_it_is_a_critical_event_and_nothing_more_is_tried(self) -> None:
        client = peer_failing(PeerIdentityError("jnks", "pin", "SPKI hash differs"))
        sender = self.sender(client)
        self.assertEqual(self.state(), "QUEUED")
        self.assertIsNotNone(sender.paused)
        critical = [e for e in self.events if e.get("kei_event") == "peer.identity_failed"]
        self.assertEqual(len(critical), 1)
        self.assertEqual(critical[0]["reason"], "pin")

    def test_when_the_ledger_cannot_be_reached_then_the_sender_says_so_once_per_outage_and_sends_once_it_is_back(
            self) -> None:
        """The daemon outlives a database outage now (the watchdog stays fed, issue 15): the sender's passes during
        it are not an unexpected error each, every few seconds, but one line; the queue goes on once it is back."""
        from sqlalchemy.exc import OperationalError

        self.ledger.fail = OperationalError("SELECT", {}, Exception("disk I/O error"))
        sender = self.sender(InMemoryPeer())
        for _ in range(5):
            self.clock.advance(sender.poll_interval)
        away = [e for e in self.events if e.get("kei_event") == "message" and "cannot reach the ledger" in e["text"]]
        self.assertEqual(len(away), 1, "said once")
        self.assertNotIn("internal.error", self.kinds())
        self.ledger.fail = None
        self.clock.advance(sender.poll_interval)
        self.assertEqual(self.state(), "DONE")
        self.ledger.fail = OperationalError("SELECT", {}, Exception("disk I/O error"))
        self.clock.advance(sender.poll_interval)
        again = [e for e in self.events if e.get("kei_event") == "message" and "cannot reach the ledger" in e["text"]]
        self.assertEqual(len(again), 2, "a new outage is said again")

    def test_when_the_pass_fails_otherwise_then_it_is_an_internal_error_each_time(self) -> None:
        self.ledger.fail = RuntimeError("a bug")
        sender = self.sender(InMemoryPeer())
        self.clock.advance(sender.poll_interval)
        self.assertEqual(self.kinds().count("internal.error"), 2)
