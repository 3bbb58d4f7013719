"""Two nodes' senders on one ledger (SPEC §14): each transfer claimed by one, taken over when its holder stalls,
the stalled node's commit fenced — on the twins (one InMemoryLedger and its lease table), a task.Clock."""

from __future__ import annotations

import datetime
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.adapters.transport import PutResult
from kei_gateway.adapters.transport.webdav import BodySource
from kei_gateway.config import RetryPolicy
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.outbound.sender import UploadSender
from kei_gateway.flows.peer_link import FixedPeerLink
from kei_gateway.runtime.leases import NodeLeases
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.testing import InMemoryBlobStore, InMemoryLeases, InMemoryLedger, InMemoryPeer, SynchronousBlocking

START = datetime.datetime(2026, 12, 2, 0, 0, tzinfo=datetime.timezone.utc)
LEASE = 15.0
PAYLOAD = b"1" * 70


class HeldPeer(InMemoryPeer):
    """A peer whose uploads wait until :meth:`finish` (an upload in flight while its node stalls)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__("jnks")
        self.files = files  # one peer, two clients
        self.held: list[tuple[defer.Deferred[PutResult], tuple[Any, ...]]] = []

    def put(self, dir_url: str, name: str, body: BodySource, size: int, sha256_hex: str) -> defer.Deferred[PutResult]:
        waiting: defer.Deferred[PutResult] = defer.Deferred()
        self.held.append((waiting, (dir_url, name, body, size, sha256_hex)))
        return waiting

    def finish(self) -> None:
        waiting, args = self.held.pop(0)
        InMemoryPeer.put(self, *args).chainDeferred(waiting)


class TwoNodeSenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ledger = InMemoryLedger()
        self.store = InMemoryBlobStore()
        self.clock = task.Clock()
        self.clock.advance(START.timestamp())
        self.files: dict[str, bytes] = {}
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def add(self, name: str) -> int:
        info = self.store.write(f"blob-{name}", [PAYLOAD])
        return self.ledger.add_transfer(flow="jnks-payments", direction="out", peer="jnks", local_name=name,
                                        state=S.QUEUED, size=info.size, sha256=info.sha256, record_count=1,
                                        blob_id=f"blob-{name}", now=START).id

    def node(self, name: str, client: InMemoryPeer, lease: float = LEASE) -> tuple[UploadSender, NodeLeases]:
        metrics = GatewayMetrics(CollectorRegistry(), process=False)
        store = InMemoryLeases(self.ledger.leases, name, lease)
        unreachable, self.ledger.leases.unreachable = self.ledger.leases.unreachable, False
        store.join(f"inc-{name}", datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc),
                   name, 1)  # (the node joined at its start, before the database went away)
        self.ledger.leases.unreachable = unreachable
        leases = NodeLeases(store=store, incarnation=f"inc-{name}", clock=self.clock, blocking=SynchronousBlocking(),
                            metrics=metrics)
        leases.startService()
        link = FixedPeerLink("jnks", client, url="https://jnks.example/upload/",
                             retry=RetryPolicy(attempts=3, first_delay=30.0, max_delay=3600.0))
        sender = UploadSender(flow="jnks-payments", lg_code="131041", link=link, ledger=self.ledger,
                              store=self.store, blocking=SynchronousBlocking(), clock=self.clock, metrics=metrics)
        sender.leases = leases
        return sender, leases

    def kinds(self) -> list[str]:
        return [str(e["kei_event"]) for e in self.events if "kei_event" in e]

    def test_when_two_nodes_send_one_queue_then_each_transfer_is_claimed_by_one_and_sent_once(self) -> None:
        ids = [self.add(f"{n}.dat") for n in range(4)]
        peer_a, peer_b = HeldPeer(self.files), HeldPeer(self.files)
        sender_a, _ = self.node("a", peer_a)
        sender_b, _ = self.node("b", peer_b)
        sender_a.startService()
        sender_b.startService()
        self.assertEqual((len(peer_a.held), len(peer_b.held)), (1, 1), "each node uploads a different transfer")
        while peer_a.held or peer_b.held:
            for peer in (peer_a, peer_b):
                if peer.held:
                    peer.finish()
            self.clock.advance(0)  # a sender that sent one looks for the next at once
        self.assertEqual([self.ledger.get(t).state for t in ids], [S.DONE] * 4)
        self.assertEqual(len(self.files), 4)
        self.assertEqual(len([a for a in self.ledger.audit if a[0] == "transfer.sent"]), 4)
        self.assertEqual(self.ledger.leases.leases[("transfer", str(ids[0]))].holder, None, "released with DONE")
        sender_a.stopService()
        sender_b.stopService()

    def test_when_the_uploading_node_stalls_past_its_lease_then_the_other_finishes_and_the_stalled_commit_is_fenced(
            self) -> None:
        transfer = self.add("a.dat")
        peer_a, peer_b = HeldPeer(self.files), HeldPeer(self.files)
        sender_a, leases_a = self.node("a", peer_a)
        sender_a.startService()
        self.assertEqual(self.ledger.get(transfer).state, S.SENDING)
        leases_a._loop.stop()  # node a stalls (SIGSTOP): no renewal
        sender_a._poll.stop()
        sender_b, leases_b = self.node("b", peer_b)
        sender_b.startService()
        self.assertEqual(peer_b.held, [], "a's lease is live: b leaves the transfer alone")
        self.clock.advance(LEASE + 1)  # b's sender polls every 5 s; a's lease has expired
        self.assertEqual(len(peer_b.held), 1)
        self.assertIn("lease.takeover", self.kinds())
        peer_b.finish()
        self.assertEqual(self.ledger.get(transfer).state, S.DONE)
        peer_a.finish()  # a wakes up (SIGCONT): its upload ends (same name, same SHA-256: already present)
        self.assertIn("lease.fenced", self.kinds())
        row = self.ledger.get(transfer)
        self.assertEqual((row.state, row.receipt_summary), (S.DONE, None), "b's commit stands; a's wrote nothing")
        self.assertEqual(len(self.files), 1, "one copy at the peer")
        self.assertEqual([a[0] for a in self.ledger.audit if a[0] == "transfer.sent"], ["transfer.sent"])
        leases_a.beat()
        self.assertTrue(leases_a.may_claim, "a goes on as a normal member")
        sender_b.stopService()

    def test_when_the_lease_is_short_then_a_dead_holders_transfer_is_taken_over_within_a_lease_and_a_third(
            self) -> None:
        lease = 3.0  # a fixed 5 s sender poll would make the takeover wait up to 8 s: past two leases
        transfer = self.add("a.dat")
        sender_a, leases_a = self.node("a", HeldPeer(self.files), lease)
        sender_a.startService()
        self.assertEqual(self.ledger.get(transfer).state, S.SENDING)
        peer_b = HeldPeer(self.files)
        sender_b, _ = self.node("b", peer_b, lease)
        sender_b.startService()
        self.assertEqual(sender_b.poll_interval, lease / 3)
        self.clock.advance(0.5)
        leases_a._loop.stop()  # node a dies (kill -9) just after renewing: its lease runs a full 3 s from here
        sender_a._poll.stop()
        waited = 0.0
        while not peer_b.held and waited < 2 * lease:
            self.clock.advance(0.1)
            waited += 0.1
        self.assertEqual(len(peer_b.held), 1, f"not taken over within {2 * lease:g} s")
        self.assertLessEqual(waited, lease + lease / 3 + 0.15)
        sender_b.stopService()

    def test_when_the_lease_is_the_default_then_the_sender_polls_every_five_seconds(self) -> None:
        sender, _ = self.node("a", HeldPeer(self.files))
        self.assertEqual(sender.poll_interval, 5.0)

    def test_when_the_database_is_away_then_the_sender_claims_nothing_until_it_is_back(self) -> None:
        transfer = self.add("a.dat")
        peer = HeldPeer(self.files)
        self.ledger.leases.unreachable = True
        sender, leases = self.node("a", peer)
        sender.startService()
        self.assertEqual((peer.held, self.ledger.get(transfer).state), ([], S.QUEUED))
        self.ledger.leases.unreachable = False
        self.clock.advance(LEASE / 3)  # the next beat reaches the database
        self.assertTrue(leases.may_claim)
        self.clock.advance(5)  # the next poll
        self.assertEqual(len(peer.held), 1)
        sender.stopService()
