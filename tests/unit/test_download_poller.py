"""DownloadPoller: a file stored and committed before a crash is relayed from the store, not fetched again."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.inbound.downloads import DownloadPoller
from kei_gateway.flows.inbound.relay import InboxRelay
from kei_gateway.flows.peer_link import FixedPeerLink
from kei_gateway.layouts import generate_file, get_layout
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.testing import InMemoryBlobStore, InMemoryLedger, InMemoryPeer, SynchronousBlocking
from tests.unit.helpers import temporary_directory

RESULTS_URL = "https://127.0.0.1:9/results/"
NAME = "pay-001.dat.result"
START = dt.datetime(2026, 11, 21, 3, 0, tzinfo=dt.timezone.utc).timestamp()


class PollerCase(SynchronousTestCase):
    """A jnks-receipts poller over a fake peer directory holding one receipt."""

    def setUp(self) -> None:
        self.base = Path(temporary_directory(self))
        self.ledger = InMemoryLedger()
        self.store = InMemoryBlobStore()
        self.clock = task.Clock()
        self.clock.advance(START)
        self.data = b"".join(generate_file(get_layout("jnks-receipts"), 3, seed=4, today=dt.date(2026, 11, 21)))
        self.client = InMemoryPeer("jnks", {RESULTS_URL + NAME: self.data})
        self.inbox = self.base / "inbox"
        metrics = GatewayMetrics(CollectorRegistry(), process=False)
        relay = InboxRelay(flow="jnks-receipts", peer="jnks", inbox_dir=str(self.inbox), marker=False,
                           ledger=self.ledger, store=self.store, blocking=SynchronousBlocking(), clock=self.clock,
                           metrics=metrics)
        self.poller = DownloadPoller(
            flow="jnks-receipts", layout_name="jnks-receipts",
            link=FixedPeerLink("jnks", self.client, results_url=RESULTS_URL),
            quarantine_dir=str(self.base / "quarantine"), relay=relay, ledger=self.ledger, store=self.store,
            blocking=SynchronousBlocking(), clock=self.clock, metrics=metrics, poll_interval=60.0)


class CommittedBeforeACrashTests(PollerCase):
    def test_when_a_download_was_committed_received_but_not_yet_validated_then_it_is_relayed_once_not_fetched_again(
            self) -> None:
        info = self.store.write("in-before-crash", [self.data])
        now = dt.datetime.fromtimestamp(self.clock.seconds(), dt.timezone.utc)
        before = self.ledger.add_transfer(
            flow="jnks-receipts", direction="in", peer="jnks", local_name=NAME, state=S.RECEIVED,
            size=len(self.data), sha256=info.sha256, record_count=3, blob_id="in-before-crash", now=now,
            remote_name=NAME, remote_etag=InMemoryPeer.etag_of(self.data))

        self.poller.startService()
        self.addCleanup(self.poller.stopService)

        rows = self.ledger.inbound_for("jnks-receipts", NAME)
        self.assertEqual([(r.id, r.state) for r in rows], [(before.id, S.DONE.value)])
        self.assertNotIn("GET", self.client.methods())
        self.assertEqual(self.client.files, {}, "deleted at the peer once relayed")
        self.assertEqual((self.inbox / NAME).read_bytes(), self.data)


class AuditedRelayTests(PollerCase):
    def test_when_a_pulled_file_is_relayed_then_download_received_commits_with_it_and_download_relayed_with_done(
            self) -> None:
        """Issue 11: the pull's record is chained in the transaction that records the pulled file (without it, a
        file pulled but not yet relayed was a transfer without a record: ``audit verify`` named it), the relay's
        in the transaction that makes it DONE."""
        self.poller.startService()
        self.addCleanup(self.poller.stopService)
        [row] = self.ledger.inbound_for("jnks-receipts", NAME)
        self.assertEqual(row.state, S.DONE.value)
        self.assertEqual(self.ledger.audit, [("download.received", {
            "flow": "jnks-receipts", "peer": "jnks", "records": 3, "sha256": row.sha256, "transfer_id": row.id}),
            ("download.relayed", {
            "flow": "jnks-receipts", "peer": "jnks", "name": NAME, "records": 3, "sha256": row.sha256,
            "transfer_id": row.id})])


class InvalidPaymentResultsTests(SynchronousTestCase):
    """When a pulled mpn-results file is invalid, then it is quarantined, alerted, counted, left and not fetched again."""

    def test_when_a_pulled_results_file_is_invalid_then_it_is_quarantined_once_and_left_at_the_peer(self) -> None:
        from twisted.logger import LogLevel, globalLogPublisher

        base = Path(temporary_directory(self))
        ledger = InMemoryLedger()
        clock = task.Clock()
        clock.advance(START)
        data = b"".join(generate_file(get_layout("mpn-results"), 10, seed=5, today=dt.date(2026, 11, 21),
                                      invalid_rate=0.5))
        client = InMemoryPeer("mpn", {RESULTS_URL + "r-001.dat": data})
        registry = CollectorRegistry()
        relayed: list[Any] = []

        class RecordingRelay:
            def relay(self, row: Any, received_at: float | None = None) -> defer.Deferred[None]:
                relayed.append(row)
                return defer.succeed(None)

        poller = DownloadPoller(
            flow="mpn-results", layout_name="mpn-results", link=FixedPeerLink("mpn", client, results_url=RESULTS_URL),
            quarantine_dir=str(base / "quarantine"), relay=RecordingRelay(), ledger=ledger, store=InMemoryBlobStore(),
            blocking=SynchronousBlocking(), clock=clock, metrics=GatewayMetrics(registry, process=False),
            poll_interval=60.0)
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)

        poller.startService()
        self.addCleanup(poller.stopService)
        clock.advance(60.0)  # a second poll sees the same file: not fetched again

        [row] = ledger.inbound_for("mpn-results", "r-001.dat")
        self.assertEqual(row.state, S.QUARANTINED.value)
        self.assertEqual(relayed, [])
        self.assertEqual(client.methods().count("GET"), 1)
        self.assertNotIn("DELETE", client.methods())
        self.assertTrue((base / "quarantine" / "r-001.dat.errors.txt").exists())
        alerts = [e for e in logged if e.get("kei_event") == "download.quarantined"]
        self.assertEqual([e["log_level"] for e in alerts], [LogLevel.critical])
        # Issue 11: its record committed with the QUARANTINED transfer, so the observer does not queue it again.
        self.assertEqual([(event, fields["transfer_id"]) for event, fields in ledger.audit],
                         [("download.quarantined", row.id)])
        self.assertEqual([e.get("audit_recorded") for e in alerts], [True])
        self.assertEqual(registry.get_sample_value("kei_gateway_payment_results_total",
                                                   {"kind": "unknown", "outcome": "rejected"}), 10)


class NameSeenBeforeTests(PollerCase):
    """A DONE transfer of the same name: deleted unread only when ETag and size prove it is the same file."""

    def relayed_before(self, etag: str | None) -> None:
        info = self.store.write("in-earlier", [self.data])
        now = dt.datetime.fromtimestamp(self.clock.seconds(), dt.timezone.utc)
        self.ledger.add_transfer(flow="jnks-receipts", direction="in", peer="jnks", local_name=NAME, state=S.DONE,
                                 size=len(self.data), sha256=info.sha256, record_count=3, blob_id="in-earlier",
                                 now=now, remote_name=NAME, remote_etag=etag)

    def test_when_the_same_file_was_relayed_before_then_it_is_deleted_without_fetching(self) -> None:
        self.relayed_before(InMemoryPeer.etag_of(self.data))
        self.poller.startService()
        self.addCleanup(self.poller.stopService)
        self.assertEqual(self.client.methods(), ["PROPFIND", "DELETE"])

    def test_when_a_name_was_used_by_another_file_then_the_new_one_is_fetched_and_relayed(self) -> None:
        self.relayed_before('"older"')
        self.fetched_anew()

    def test_when_the_name_was_pushed_before_then_the_pulled_file_is_fetched_and_judged(self) -> None:
        self.relayed_before(None)  # a pushed file has no ETag: not provably the same
        self.fetched_anew()

    def fetched_anew(self) -> None:
        self.poller.startService()
        self.addCleanup(self.poller.stopService)
        self.assertEqual(self.client.methods(), ["PROPFIND", "GET", "DELETE"])
        rows = self.ledger.inbound_for("jnks-receipts", NAME)
        self.assertEqual([r.state for r in rows], [S.DONE.value, S.DONE.value])
        self.assertEqual((self.inbox / NAME).read_bytes(), self.data)


class ReceiptRelayedOnceTests(PollerCase):
    """A receipt whose relay was decided before a crash is never written to the inbox a second time."""

    def decided_before_a_crash(self) -> int:
        info = self.store.write("in-decided", [self.data])
        now = dt.datetime.fromtimestamp(self.clock.seconds(), dt.timezone.utc)
        row = self.ledger.add_transfer(
            flow="jnks-receipts", direction="in", peer="jnks", local_name=NAME, state=S.VALIDATED,
            size=len(self.data), sha256=info.sha256, record_count=3, blob_id="in-decided", now=now,
            remote_name=NAME, remote_etag=InMemoryPeer.etag_of(self.data))
        self.ledger.update(row.id, now, relay_name=NAME)
        return row.id

    def test_when_the_tax_system_had_taken_the_receipt_then_it_is_not_written_again(self) -> None:
        transfer_id = self.decided_before_a_crash()  # renamed into the inbox, then taken: nothing is left
        self.poller.startService()
        self.addCleanup(self.poller.stopService)
        self.assertFalse(self.inbox.exists() and any(self.inbox.iterdir()))
        self.assertEqual(self.ledger.get(transfer_id).state, S.DONE.value)
        self.assertEqual(self.client.files, {})

    def test_when_the_staged_receipt_was_not_yet_renamed_then_it_is_renamed(self) -> None:
        transfer_id = self.decided_before_a_crash()
        self.inbox.mkdir(parents=True)
        (self.inbox / f".{NAME}.part").write_bytes(self.data)
        self.poller.startService()
        self.addCleanup(self.poller.stopService)
        self.assertEqual(sorted(p.name for p in self.inbox.iterdir()), [NAME])
        self.assertEqual(self.ledger.get(transfer_id).state, S.DONE.value)


class TwoNodesPollOneDirectoryTests(PollerCase):
    """Two nodes poll one peer directory (SPEC §14): a pass runs under the directory's pull lease."""

    def leases(self, name: str) -> Any:
        from kei_gateway.runtime.leases import NodeLeases
        from kei_gateway.testing import InMemoryLeases

        store = InMemoryLeases(self.ledger.leases, name, 15.0)
        store.join(f"inc-{name}", dt.datetime.fromtimestamp(self.clock.seconds(), dt.timezone.utc), name, 1)
        leases = NodeLeases(store=store, incarnation=f"inc-{name}", clock=self.clock, blocking=SynchronousBlocking(),
                            metrics=GatewayMetrics(CollectorRegistry(), process=False))
        leases.startService()
        return leases

    def test_when_another_node_holds_the_pull_then_this_one_does_not_list_the_directory(self) -> None:
        other = self.leases("b")
        fence = self.successResultOf(other.claim("pull", "jnks-receipts"))
        self.assertIsNotNone(fence)
        self.poller.leases = self.leases("a")
        self.poller.startService()
        self.addCleanup(self.poller.stopService)
        self.assertEqual(self.client.calls, [], "b pulls this directory now")
        other.release(fence)
        self.clock.advance(60)
        self.assertEqual(self.client.files, {}, "the next poll pulled, relayed and deleted it")
        self.assertEqual((self.inbox / NAME).read_bytes(), self.data)
        self.assertIsNone(self.ledger.leases.leases[("pull", "jnks-receipts")].holder, "released after the pass")

    def test_when_the_pull_was_taken_over_during_a_pass_then_the_node_neither_relays_nor_deletes(self) -> None:
        from twisted.logger import globalLogPublisher

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        held: defer.Deferred[None] = defer.Deferred()
        original_get = self.client.get

        def slow_get(url: str, sink: Any) -> Any:
            return held.addCallback(lambda _: original_get(url, sink))

        self.client.get = slow_get  # type: ignore[method-assign]
        leases_a = self.leases("a")
        self.poller.leases = leases_a
        self.poller.startService()
        self.addCleanup(self.poller.stopService)
        leases_a._loop.stop()  # a stalls mid-download
        self.clock.advance(16)
        self.assertIsNotNone(self.successResultOf(self.leases("b").claim("pull", "jnks-receipts")))
        held.callback(None)  # a wakes up: the download completes and is committed (deduplicated later), then
        self.assertNotIn("DELETE", self.client.methods())
        self.assertFalse((self.inbox / NAME).exists(), "a relays nothing: the pull is b's now")
        self.assertIn("lease.fenced", [e.get("kei_event") for e in logged])
