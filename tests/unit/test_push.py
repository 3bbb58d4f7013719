"""The push listener's request and intake logic (SPEC §5), driven over an in-memory HTTP connection.

The TLS layer is left out here (``PushSite(tls=None, assumed_peers=...)`` stands for a
connection whose client certificate identified those peers); tests/integration/
test_push_listener.py covers TLS with real certificates.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel

from kei_gateway.adapters.ledger import TransferRow
from kei_gateway.config import Config, config_from_string
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.inbound.push import PushReceiver
from kei_gateway.flows.inbound.push_listener import PushSite
from kei_gateway.flows.inbound.push_routing import PushTarget, Refusal, route_push
from kei_gateway.layouts import generate_file, get_layout
from kei_gateway.layouts.generator import violations
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.testing import InMemoryBlobStore, InMemoryLedger, SynchronousBlocking
from tests.unit.helpers import push_peers_config, temporary_directory

NOW = datetime.datetime(2026, 11, 21, 9, 0, tzinfo=datetime.timezone.utc)
TODAY = datetime.date(2026, 11, 21)
LAYOUT = get_layout("mpn-results")

PEERS = push_peers_config("/nonexistent")


def results_file(records: int = 3, seed: int = 1, invalid_rate: float = 0.0) -> bytes:
    return b"".join(generate_file(LAYOUT, records, seed=seed, today=TODAY, invalid_rate=invalid_rate))


def failing_ledger() -> InMemoryLedger:
    """A ledger whose every call fails, as a database that went away."""
    ledger = InMemoryLedger()
    ledger.fail = OSError(5, "Input/output error")
    return ledger


class HookRelay:
    """A relay that calls *hook(row, received_at)*: what the tests watch of the hand-off."""

    accept_bytes = 0  # never inside the accepting commit: every committed push is handed over

    def __init__(self, hook: Any) -> None:
        self.hook = hook

    def relay_on_accept(self, records: int, received_at: float | None = None, key: Any = None) -> None:
        return None

    def relay(self, row: TransferRow, received_at: float | None = None, fence: Any = None) -> Any:
        return self.hook(row, received_at)


class PushHarness:
    def __init__(self, case: SynchronousTestCase, *, max_bytes: int | None = None, ledger: Any = None,
                 on_committed: Any = None, relay: Any = None) -> None:
        base = temporary_directory(case)
        self.config: Config = config_from_string(demo_config_text(base, 9464, extra=PEERS))
        self.ledger = InMemoryLedger()
        self.store = InMemoryBlobStore()
        self.clock = task.Clock()
        self.clock.advance(NOW.timestamp())
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, process=False)
        self.committed: list[tuple[TransferRow, float, str]] = []

        def record(row: TransferRow, started_at: float) -> None:
            state = self.ledger.get(row.id).state  # what the ledger holds when the hook runs
            self.committed.append((row, started_at, state))

        kwargs: dict[str, Any] = {}
        if max_bytes is not None:
            kwargs["max_bytes"] = max_bytes
        self.receiver = PushReceiver(config_source=lambda: self.config, ledger=ledger or self.ledger,
                                     store=self.store, blocking=SynchronousBlocking(), clock=self.clock,
                                     metrics=self.metrics, relay=relay or HookRelay(on_committed or record),
                                     **kwargs)
        self.peers = frozenset({"mpn"})

    def connect(self, peers: Iterable[str] | None = None, source: str = "10.0.0.1") -> tuple[HTTPChannel, StringTransport]:
        site = PushSite(self.receiver, None, self.clock, frozenset(peers) if peers is not None else self.peers)
        channel = site.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", source, 40000))
        channel.makeConnection(transport)
        return channel, transport

    def request(self, method: str, path: str, body: bytes = b"", *, peers: Iterable[str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
        channel, transport = self.connect(peers)
        lines = [f"{method} {path} HTTP/1.1", "Host: gateway"]
        if body or method == "PUT":
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return parse_response(transport.value())

    def denied(self, reason: str) -> float:
        value = self.registry.get_sample_value("kei_gateway_denied_connections_total",
                                               {"listener": "push", "reason": reason})
        return value or 0.0

    def transfers(self, outcome: str) -> float:
        return self.registry.get_sample_value("kei_gateway_transfers_total",
                                              {"flow": "mpn-results", "outcome": outcome}) or 0.0


def parse_response(raw: bytes) -> tuple[int, bytes, bytes]:
    """(status, headers block, body) of the first response in *raw*; (0, b"", b"") when there is none."""
    if not raw:
        return 0, b"", b""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.lower(), body


class RouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = config_from_string(demo_config_text("/tmp/kei-route", 9464, extra=PEERS))

    def test_when_the_owner_pushes_a_valid_name_then_the_target_is_its_flow(self) -> None:
        self.assertEqual(route_push(b"PUT", b"/push/mpn-results/R0001.dat", {"mpn"}, self.config, 10),
                         PushTarget("mpn-results", "R0001.dat", "mpn"))

    def test_when_path_method_owner_or_size_is_wrong_then_each_has_its_status_and_reason(self) -> None:
        cases = [
            (b"PUT", b"/push/mpn-results/.hidden", {"mpn"}, 10, 404, "path"),
            (b"PUT", b"/push/mpn-results/a%2Fb", {"mpn"}, 10, 404, "path"),
            (b"PUT", b"/push/mpn-results/x?y=1", {"mpn"}, 10, 404, "path"),
            (b"PUT", b"/push/mpn-results/a/b", {"mpn"}, 10, 404, "path"),
            (b"PUT", b"/push/jnks-receipts/R1", {"jnks"}, 10, 404, "path"),  # not a push flow
            (b"PUT", b"/push/mpn-slips/R1", {"mpn"}, 10, 404, "path"),
            (b"PUT", b"/upload/R1", {"mpn"}, 10, 404, "path"),
            (b"GET", b"/push/mpn-results/R1", {"mpn"}, None, 405, "method"),
            (b"DELETE", b"/push/mpn-results/R1", {"mpn"}, None, 405, "method"),
            (b"PUT", b"/push/mpn-results/R1", {"jnks"}, 10, 403, "flow"),
            (b"PUT", b"/push/mpn-results/R1", set(), 10, 403, "flow"),
            (b"PUT", b"/push/mpn-results/R1", {"mpn"}, 1001, 413, "too_large"),
        ]
        for method, path, peers, length, status, reason in cases:
            decision = route_push(method, path, peers, self.config, length, max_bytes=1000)
            self.assertIsInstance(decision, Refusal, path)
            assert isinstance(decision, Refusal)
            self.assertEqual((decision.status, decision.reason), (status, reason), (method, path))


class PushTests(SynchronousTestCase):
    def test_when_the_peer_pushes_a_valid_file_then_201_comes_after_the_commit_and_the_hook_runs_once(self) -> None:
        h = PushHarness(self)
        body = results_file(3)
        status, headers, _ = h.request("PUT", "/push/mpn-results/R20261121.dat", body)
        self.assertEqual(status, 201)
        self.assertIn(b"location: /push/mpn-results/r20261121.dat", headers)
        [row] = h.ledger.inbound_for("mpn-results", "R20261121.dat")
        self.assertEqual((row.state, row.direction, row.peer, row.local_name, row.size, row.record_count),
                         ("VALIDATED", "in", "mpn", "R20261121.dat", len(body), 3))
        import hashlib
        self.assertEqual(row.sha256, hashlib.sha256(body).hexdigest())
        assert row.blob_id is not None
        self.assertEqual(b"".join(h.store.read(row.blob_id)), body)
        self.assertEqual(len(h.committed), 1)
        hooked, started_at, state_then = h.committed[0]
        self.assertEqual((hooked.id, started_at, state_then), (row.id, NOW.timestamp(), "VALIDATED"))
        self.assertEqual(h.transfers("received"), 1)

    def test_when_the_same_file_is_pushed_again_then_204_and_nothing_is_stored_or_handed_over_again(self) -> None:
        h = PushHarness(self)
        body = results_file(3)
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", body)[0], 201)
        blobs = h.store.list_ids()
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", body)[0], 204)
        self.assertEqual(h.store.list_ids(), blobs)
        self.assertEqual(len(h.ledger.inbound_for("mpn-results", "R1.dat")), 1)
        self.assertEqual(len(h.committed), 1)

    def test_when_the_same_name_comes_with_other_content_then_409_and_nothing_is_kept(self) -> None:
        h = PushHarness(self)
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", results_file(3, seed=1))[0], 201)
        blobs = h.store.list_ids()
        status, _, body = h.request("PUT", "/push/mpn-results/R1.dat", results_file(3, seed=2))
        self.assertEqual(status, 409)
        self.assertIn(b"new name", body)
        self.assertEqual(h.store.list_ids(), blobs)
        self.assertEqual(len(h.ledger.inbound_for("mpn-results", "R1.dat")), 1)
        self.assertEqual(len(h.committed), 1)

    def test_when_the_file_is_invalid_then_422_lists_masked_errors_and_it_is_quarantined(self) -> None:
        h = PushHarness(self)
        data = results_file(20, invalid_rate=0.5, seed=3)
        status, _, body = h.request("PUT", "/push/mpn-results/BAD.dat", data)
        self.assertEqual(status, 422)
        text = body.decode("utf-8")
        self.assertIn("rejected by kei-gateway, flow mpn-results", text)
        self.assertRegex(text, r"record \d+")
        [row] = h.ledger.inbound_for("mpn-results", "BAD.dat")
        self.assertEqual(row.state, "QUARANTINED")
        assert row.blob_id is not None
        self.assertEqual(b"".join(h.store.read(row.blob_id)), data)  # kept, encrypted
        errors = os.path.join(h.config.spool_path("quarantine/mpn-results"), "BAD.dat.errors.txt")
        self.assertTrue(os.path.exists(errors))
        self.assertEqual(h.committed, [])
        self.assertEqual(h.transfers("quarantined"), 1)
        self.assertEqual(h.registry.get_sample_value("kei_gateway_payment_results_total",
                                                     {"kind": "unknown", "outcome": "rejected"}), 20)
        # Pushed again unchanged: 422 again, but quarantined only once.
        self.assertEqual(h.request("PUT", "/push/mpn-results/BAD.dat", data)[0], 422)
        self.assertEqual(len(h.ledger.inbound_for("mpn-results", "BAD.dat")), 1)
        self.assertEqual(len(h.store.list_ids()), 1)
        # The corrected file under the same name is accepted.
        self.assertEqual(h.request("PUT", "/push/mpn-results/BAD.dat", results_file(3))[0], 201)

    def test_when_the_same_name_comes_with_other_invalid_content_then_each_keeps_its_errors_file(self) -> None:
        h = PushHarness(self)
        first, second = (results_file(10, invalid_rate=0.5, seed=seed) for seed in (3, 4))
        self.assertEqual(h.request("PUT", "/push/mpn-results/BAD.dat", first)[0], 422)
        self.assertEqual(h.request("PUT", "/push/mpn-results/BAD.dat", second)[0], 422)
        rows = h.ledger.inbound_for("mpn-results", "BAD.dat")
        self.assertEqual([row.state for row in rows], ["QUARANTINED", "QUARANTINED"])
        quarantine = h.config.spool_path("quarantine/mpn-results")
        texts = []
        for name in ("BAD.dat.errors.txt", "BAD.dat.2.errors.txt"):
            with open(os.path.join(quarantine, name), encoding="utf-8") as f:
                texts.append(f.read())
        # Each errors file points at its own encrypted blob: the first is not overwritten by the second.
        self.assertEqual(sorted(row.blob_id for row in rows if row.blob_id),
                         sorted(blob for text in texts for blob in h.store.list_ids() if blob in text))

    def test_when_a_push_is_accepted_then_its_audit_record_commits_with_its_transfer(self) -> None:
        """Issue 11: push.accepted is chained in the transaction of the VALIDATED transfer (the twin keeps the
        records it was given with each action); a repeat and a conflict commit nothing, so they add none."""
        h = PushHarness(self)
        body = results_file(3)
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", body)[0], 201)
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", body)[0], 204)
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", results_file(3, seed=2))[0], 409)
        [row] = h.ledger.inbound_for("mpn-results", "R1.dat")
        self.assertEqual(h.ledger.audit, [("push.accepted", {"flow": "mpn-results", "peer": "mpn", "records": 3,
                                                             "sha256": row.sha256, "transfer_id": row.id})])

    def test_when_a_push_is_quarantined_then_its_record_commits_with_the_quarantined_transfer_once(self) -> None:
        h = PushHarness(self)
        data = results_file(20, invalid_rate=0.5, seed=3)
        self.assertEqual(h.request("PUT", "/push/mpn-results/BAD.dat", data)[0], 422)
        self.assertEqual(h.request("PUT", "/push/mpn-results/BAD.dat", data)[0], 422)  # known invalid: no new row
        [row] = h.ledger.inbound_for("mpn-results", "BAD.dat")
        [(event, fields)] = h.ledger.audit
        self.assertEqual((event, fields["transfer_id"], fields["records"], fields["sha256"]),
                         ("push.quarantined", row.id, 20, row.sha256))
        self.assertNotIn("BAD", repr(fields))  # no file name in a record

    def test_when_the_422_body_is_built_then_values_are_masked(self) -> None:
        h = PushHarness(self)
        record = results_file(1)
        way = next(w for w in violations(LAYOUT, TODAY) if w.description == "amount_billed is not the sum")
        broken = way.apply(record, record)
        amount = broken[112:122].decode("ascii").lstrip("0")  # 請求金額, a personal value
        status, _, body = h.request("PUT", "/push/mpn-results/BAD2.dat", broken)
        self.assertEqual(status, 422)
        self.assertIn("請求金額 (amount_billed): is not the sum".encode(), body)
        self.assertIn(b"[value '****']", body)
        self.assertNotIn(amount.encode(), body)
        # The errors file for the tax division keeps the full value, as for the poller.
        errors = os.path.join(h.config.spool_path("quarantine/mpn-results"), "BAD2.dat.errors.txt")
        with open(errors, encoding="utf-8") as f:
            self.assertIn(f"[value '{amount}']", f.read())

    def test_when_path_method_or_flow_are_wrong_then_404_405_403_are_answered_and_counted(self) -> None:
        h = PushHarness(self)
        self.assertEqual(h.request("PUT", "/push/mpn-results/..", b"x")[0], 404)
        status, headers, _ = h.request("GET", "/push/mpn-results/R1.dat")
        self.assertEqual(status, 405)
        self.assertIn(b"allow: put", headers)
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", results_file(1), peers={"jnks"})[0], 403)
        self.assertEqual((h.denied("path"), h.denied("method"), h.denied("flow")), (1, 1, 1))
        self.assertEqual(h.store.list_ids(), [])
        self.assertEqual(h.ledger.inbound_for("mpn-results", "R1.dat"), [])
        # The listed peer still gets in.
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", results_file(1))[0], 201)

    def test_when_a_refused_request_expects_100_continue_then_the_refusal_is_sent_at_once(self) -> None:
        h = PushHarness(self)
        channel, transport = h.connect({"jnks"})
        channel.dataReceived(b"PUT /push/mpn-results/R1.dat HTTP/1.1\r\nHost: g\r\nContent-Length: 2580\r\n"
                             b"Expect: 100-continue\r\n\r\n")
        status, headers, _ = parse_response(transport.value())
        self.assertEqual(status, 403)
        self.assertNotIn(b"100 continue", transport.value().lower())
        self.assertTrue(transport.disconnecting)

    def test_when_the_announced_length_is_too_large_then_413_before_the_body_and_nothing_stored(self) -> None:
        h = PushHarness(self, max_bytes=1000)
        channel, transport = h.connect()
        channel.dataReceived(b"PUT /push/mpn-results/R1.dat HTTP/1.1\r\nHost: g\r\nContent-Length: 1001\r\n\r\n")
        self.assertEqual(parse_response(transport.value())[0], 413)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.denied("too_large"), 1)
        self.assertEqual(h.store.list_ids(), [])

    def test_when_a_chunked_body_grows_past_the_limit_then_413_and_nothing_is_kept(self) -> None:
        h = PushHarness(self, max_bytes=600)
        channel, transport = h.connect()
        channel.dataReceived(b"PUT /push/mpn-results/R1.dat HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n")
        body = results_file(3)  # 774 bytes
        for piece in (body[:400], body[400:]):
            channel.dataReceived(b"%x\r\n" % len(piece) + piece + b"\r\n")
        self.assertEqual(parse_response(transport.value())[0], 413)
        self.assertEqual(h.denied("too_large"), 1)
        self.assertEqual(h.store.list_ids(), [])
        self.assertEqual(h.ledger.inbound_for("mpn-results", "R1.dat"), [])
        # The name is free again.
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", body[:258])[0], 201)

    def test_when_the_connection_breaks_mid_body_then_nothing_is_committed_or_stored(self) -> None:
        h = PushHarness(self)
        body = results_file(3)
        channel, transport = h.connect()
        channel.dataReceived(b"PUT /push/mpn-results/R1.dat HTTP/1.1\r\nHost: g\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body[:300])
        channel.connectionLost(Failure(ConnectionError("reset")))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(h.store.list_ids(), [])
        self.assertEqual(h.ledger.inbound_for("mpn-results", "R1.dat"), [])
        self.assertEqual(h.committed, [])
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", body)[0], 201)  # and it may come again

    def test_when_the_body_arrives_in_pieces_then_it_is_stored_whole(self) -> None:
        h = PushHarness(self)
        body = results_file(5)
        channel, transport = h.connect()
        channel.dataReceived(b"PUT /push/mpn-results/R1.dat HTTP/1.1\r\nHost: g\r\nContent-Length: %d\r\n\r\n"
                             % len(body))
        for start in range(0, len(body), 100):
            channel.dataReceived(body[start:start + 100])
        self.assertEqual(parse_response(transport.value())[0], 201)
        [row] = h.ledger.inbound_for("mpn-results", "R1.dat")
        assert row.blob_id is not None
        self.assertEqual(b"".join(h.store.read(row.blob_id)), body)

    def test_when_the_ledger_fails_then_503_with_retry_after_and_the_blob_is_gone(self) -> None:
        h = PushHarness(self, ledger=failing_ledger())
        status, headers, _ = h.request("PUT", "/push/mpn-results/R1.dat", results_file(2))
        self.assertEqual(status, 503)
        self.assertIn(b"retry-after: 30", headers)
        self.assertEqual(h.store.list_ids(), [])
        self.assertEqual(h.committed, [])

    def test_when_the_hook_fails_then_the_push_is_still_201_and_committed(self) -> None:
        calls: list[int] = []

        def hook(row: TransferRow, started_at: float) -> defer.Deferred[None]:
            calls.append(row.id)
            return defer.fail(RuntimeError("relay down"))

        h = PushHarness(self, on_committed=hook)
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", results_file(2))[0], 201)
        self.assertEqual(len(calls), 1)
        self.assertEqual(h.ledger.inbound_for("mpn-results", "R1.dat")[0].state, "VALIDATED")

    def test_when_the_hook_does_not_finish_then_201_is_not_held_back(self) -> None:
        pending: defer.Deferred[None] = defer.Deferred()
        h = PushHarness(self, on_committed=lambda row, started_at: pending)
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", results_file(2))[0], 201)
        self.assertFalse(pending.called)

    def test_when_the_same_name_is_being_received_then_a_second_push_gets_503(self) -> None:
        h = PushHarness(self)
        body = results_file(3)
        first, first_transport = h.connect()
        first.dataReceived(b"PUT /push/mpn-results/R1.dat HTTP/1.1\r\nHost: g\r\nContent-Length: %d\r\n\r\n"
                           % len(body) + body[:100])
        status, headers, _ = h.request("PUT", "/push/mpn-results/R1.dat", body)
        self.assertEqual(status, 503)
        self.assertIn(b"retry-after: 2", headers)  # busy clears in moments, unlike store trouble (30 s)
        first.dataReceived(body[100:])
        self.assertEqual(parse_response(first_transport.value())[0], 201)
        self.assertEqual(h.denied("path") + h.denied("flow"), 0)  # busy is not a denial


def put_head(body_length: int, name: str = "R1.dat", extra: str = "") -> bytes:
    return (f"PUT /push/mpn-results/{name} HTTP/1.1\r\nHost: g\r\n{extra}Content-Length: {body_length}\r\n\r\n"
            .encode())


class PushLimitTests(SynchronousTestCase):
    """The listener's limits (issue 11): late or oversized headers, slow bodies, busy slots, each counted."""

    def with_limits(self, h: PushHarness, **limits: Any) -> None:
        import dataclasses

        from kei_gateway.config import HostPort, ListenerSection, Listeners

        section = ListenerSection(address=HostPort("127.0.0.1", 8443), **limits)
        h.config = dataclasses.replace(h.config, listeners=Listeners(h.config.listeners.metrics, section))

    def test_when_headers_do_not_arrive_within_header_timeout_then_408_closed_and_counted(self) -> None:
        h = PushHarness(self)
        channel, transport = h.connect()
        channel.dataReceived(b"PUT /push/mpn-results/R1.dat HTTP/1.1\r\nHost: g\r\n")  # and then nothing
        h.clock.advance(9.9)
        self.assertEqual(transport.value(), b"")
        h.clock.advance(0.2)
        self.assertEqual(parse_response(transport.value())[0], 408)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.denied("header_timeout"), 1)

    def test_when_a_kept_alive_connection_idles_between_requests_then_the_header_clock_waits_for_its_first_byte(
            self) -> None:
        h = PushHarness(self)
        channel, transport = h.connect()
        channel.dataReceived(put_head(258) + results_file(1))
        self.assertEqual(parse_response(transport.value())[0], 201)
        transport.clear()
        h.clock.advance(30)  # idle between requests: no header_timeout
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(put_head(258, "R2.dat") + results_file(1, seed=2))
        self.assertEqual(parse_response(transport.value())[0], 201)
        h.clock.advance(60)  # Twisted closes the idle connection: not a refusal after a finished request
        self.assertEqual(sum(h.denied(reason) for reason in ("header_timeout", "idle_timeout")), 0)

    def test_when_a_connection_stays_silent_past_the_idle_timeout_then_twisted_closes_it_and_it_is_counted(
            self) -> None:
        h = PushHarness(self)
        self.with_limits(h, header_timeout=120.0)
        channel, transport = h.connect()
        h.clock.advance(61)
        self.assertTrue(transport.disconnecting)
        self.assertEqual((h.denied("idle_timeout"), h.denied("header_timeout")), (1, 0))

    def test_when_headers_are_too_large_or_too_many_then_431_and_each_reason_is_counted(self) -> None:
        h = PushHarness(self)
        self.with_limits(h, max_header_bytes=2048, max_headers=8)
        channel, transport = h.connect()
        channel.dataReceived(put_head(10, extra="X-Padding: " + "a" * 3000 + "\r\n"))
        self.assertEqual(parse_response(transport.value())[0], 431)
        self.assertTrue(transport.disconnecting)
        channel, transport = h.connect()
        channel.dataReceived(put_head(10, extra="".join(f"X-H{i}: {i}\r\n" for i in range(20))))
        status, _, body = parse_response(transport.value())
        self.assertEqual(status, 431)
        self.assertIn(b"more than 8 header fields", body)
        channel, transport = h.connect()
        channel.dataReceived(b"PUT /push/mpn-results/R1.dat HTTP/1.1\r\n" + b"Y" * 4000)  # one line, no end
        self.assertEqual(parse_response(transport.value())[0], 431)
        self.assertEqual((h.denied("header_size"), h.denied("header_count")), (2, 1))
        self.assertEqual(h.store.list_ids(), [])

    def test_when_twisted_refuses_a_malformed_request_with_400_then_it_is_counted(self) -> None:
        h = PushHarness(self)
        channel, transport = h.connect()
        channel.dataReceived(b"PUT /push/mpn-results/R1.dat HTTP/1.1\r\nContent-Length: ten\r\n\r\n")
        self.assertEqual(parse_response(transport.value())[0], 400)
        self.assertEqual(h.denied("bad_request"), 1)

    def test_when_a_body_trickles_under_min_body_rate_then_408_nothing_kept_and_the_slot_is_free(self) -> None:
        h = PushHarness(self)
        body = results_file(3)
        channel, transport = h.connect()
        channel.dataReceived(put_head(len(body)) + body[:1])
        for _ in range(9):
            h.clock.advance(1)
            channel.dataReceived(b"")  # nothing more comes
        self.assertEqual(transport.value(), b"")
        h.clock.advance(1)
        status, _, answer = parse_response(transport.value())
        self.assertEqual(status, 408)
        self.assertIn(b"too slowly", answer)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.denied("slow_body"), 1)
        channel.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(h.store.list_ids(), [])
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", body)[0], 201)

    def test_when_a_body_keeps_up_with_min_body_rate_then_it_is_taken_however_long(self) -> None:
        h = PushHarness(self)
        self.with_limits(h, min_body_rate=10)
        body = results_file(3)  # 774 bytes at 100 bytes a window of 10 s: over a minute
        channel, transport = h.connect()
        channel.dataReceived(put_head(len(body)))
        for start in range(0, len(body), 100):
            channel.dataReceived(body[start:start + 100])
            h.clock.advance(10)
        self.assertEqual(parse_response(transport.value())[0], 201)
        self.assertEqual(h.denied("slow_body"), 0)

    def test_when_one_source_holds_half_the_slots_then_its_next_push_is_busy_and_another_source_gets_201(
            self) -> None:
        h = PushHarness(self)  # max_pushes 4: one source may hold 2
        body = results_file(2)
        held = []
        for name in ("A.dat", "B.dat"):
            channel, transport = h.connect(source="10.0.0.1")
            channel.dataReceived(put_head(len(body), name) + body[:10])
            held.append((channel, transport))
        channel, transport = h.connect(source="10.0.0.1")
        channel.dataReceived(put_head(len(body), "C.dat") + body)
        status, headers, answer = parse_response(transport.value())
        self.assertEqual(status, 503)
        self.assertIn(b"retry-after: 2", headers)
        self.assertIn(b"from this address", answer)
        self.assertEqual(h.denied("busy"), 1)
        channel, transport = h.connect(source="10.0.0.2")
        channel.dataReceived(put_head(len(body), "D.dat") + body)
        self.assertEqual(parse_response(transport.value())[0], 201)
        for channel, transport in held:  # the held ones finish too
            channel.dataReceived(body[10:])
            self.assertEqual(parse_response(transport.value())[0], 201)

    def test_when_every_slot_is_taken_then_busy_is_counted_and_logged_once_per_burst(self) -> None:
        from twisted.logger import globalLogPublisher

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        h = PushHarness(self)
        self.with_limits(h, max_pushes=1)
        body = results_file(2)
        first, _ = h.connect(source="10.0.0.1")
        first.dataReceived(put_head(len(body), "A.dat") + body[:10])
        for n in range(5):
            self.assertEqual(h.request("PUT", f"/push/mpn-results/N{n}.dat", body)[0], 503)
        self.assertEqual(h.denied("busy"), 5)
        refused = [e for e in logged if e.get("kei_event") == "push.refused"]
        self.assertEqual([e["reason"] for e in refused], ["busy"])
        h.clock.advance(60)
        [summary] = [e for e in logged if e.get("kei_event") == "listener.refusals_repeated"]
        self.assertEqual((summary["count"], summary["reason"]), (4, "busy"))


class PushRelayedInItsCommitTests(SynchronousTestCase):
    """Issue 16: a lone small push relayed in the commit that accepts it (the real ResultRelay over the twins)."""

    def setUp(self) -> None:
        from kei_gateway.core.results import ResultKeyer
        from kei_gateway.flows.inbound.mpn_results import ResultRelay
        from kei_gateway.testing import InMemoryResultLedger

        self.h = PushHarness(self)
        self.inbox = os.path.join(temporary_directory(self), "inbox")
        self.results = InMemoryResultLedger(self.h.ledger)
        self.relay = ResultRelay(inbox_dir=self.inbox, marker=False, lg_code="131041", ledger=self.h.ledger,
                                 results=self.results, keyer=ResultKeyer([b"\x05" * 32]), store=self.h.store,
                                 blocking=SynchronousBlocking(), clock=self.h.clock, metrics=self.h.metrics,
                                 unconfirmed_after=3 * 86400.0)
        self.relay.running = True  # started, without its periodic pass
        self.h.receiver.relay = self.relay
        self.reads: list[str] = []
        read = self.h.store.read

        def counting_read(blob_id: str) -> Any:
            self.reads.append(blob_id)
            return read(blob_id)

        self.h.store.read = counting_read  # type: ignore[method-assign]

    def test_when_a_small_file_is_pushed_then_the_201_comes_with_it_relayed_done_and_recorded_once(self) -> None:
        body = results_file(3)
        self.assertEqual(self.h.request("PUT", "/push/mpn-results/R1.dat", body)[0], 201)
        [row] = self.h.ledger.inbound_for("mpn-results", "R1.dat")
        self.assertEqual((row.state, os.listdir(self.inbox)), ("DONE", [row.relay_name]), "in the inbox at the 201")
        with open(os.path.join(self.inbox, row.relay_name or "-"), "rb") as relayed:
            self.assertEqual(relayed.read(), body)
        self.assertEqual([event for event, _ in self.h.ledger.audit], ["push.accepted", "results.relayed"])
        self.assertEqual(self.reads, [], "staged from the bytes in memory, not read back from the store")
        self.assertEqual(self.h.transfers("received"), 1)
        self.assertEqual(self.h.transfers("relayed"), 1)
        self.assertEqual(self.h.request("PUT", "/push/mpn-results/R1.dat", body)[0], 204, "a repeat, as before")
        self.assertEqual(self.h.request("PUT", "/push/mpn-results/R1.dat", results_file(3, seed=2))[0], 409)
        self.assertEqual(len(os.listdir(self.inbox)), 1)

    def test_when_the_relay_is_busy_then_the_push_is_committed_alone_and_relayed_after(self) -> None:
        held: list[Any] = []
        self.relay.blocking = type("Held", (), {"run": lambda _, f, *a, **k: held.append(f) or defer.Deferred()})()
        pulled = self.h.ledger.add_transfer(flow="mpn-results", direction="in", peer="mpn", local_name="P.dat",
                                            state=S.VALIDATED, size=1, sha256="ab" * 32, record_count=1,
                                            blob_id="in-pulled", now=NOW, remote_name="P.dat")
        self.relay.relay(pulled)  # the lane relays a pulled file (held)
        self.assertEqual(self.h.request("PUT", "/push/mpn-results/R1.dat", results_file(3))[0], 201)
        [row] = self.h.ledger.inbound_for("mpn-results", "R1.dat")
        self.assertEqual(row.state, "VALIDATED", "the lane was busy: committed alone, not in its commit")
        self.assertEqual([f.__name__ for f in held], ["relay_small_files"], "and waits for the lane")
        self.assertEqual(os.listdir(self.inbox) if os.path.exists(self.inbox) else [], [])

    def test_when_a_result_was_recorded_by_another_relay_meanwhile_then_the_push_is_committed_alone(self) -> None:
        from kei_gateway.adapters.ledger.results import DuplicateResult

        def racing(*args: Any, **kwargs: Any) -> Any:
            raise DuplicateResult(0)

        self.results.accept_relay = racing  # type: ignore[method-assign]
        self.assertEqual(self.h.request("PUT", "/push/mpn-results/R1.dat", results_file(3))[0], 201)
        [row] = self.h.ledger.inbound_for("mpn-results", "R1.dat")
        self.assertEqual(row.state, "DONE", "committed VALIDATED, then relayed by the lane")
        self.assertEqual([event for event, _ in self.h.ledger.audit], ["push.accepted", "results.relayed"])
        self.assertEqual(len(self.reads), 1, "the lane reads it back from the store")

    def test_when_the_accepting_transaction_fails_then_503_and_the_relay_is_free_again(self) -> None:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise OSError("database gone")

        self.results.accept_relay = broken  # type: ignore[method-assign]
        self.assertEqual(self.h.request("PUT", "/push/mpn-results/R1.dat", results_file(3))[0], 503)
        self.assertEqual(self.h.ledger.rows, {})
        self.assertIsNotNone(self.relay.relay_on_accept(1), "the lane was freed")


class PushOnTwoNodesTests(SynchronousTestCase):
    """Issue 15: on a shared ledger a push committed alone carries its ``received`` lease, held by this node."""

    def test_when_a_push_is_committed_alone_then_its_relay_lease_commits_with_it_and_the_relay_gets_its_fence(
            self) -> None:
        from tests.unit.test_relay_fencing import node_leases

        handed: list[Any] = []

        class FenceRelay(HookRelay):
            def relay(self, row: TransferRow, received_at: float | None = None, fence: Any = None) -> Any:
                handed.append((row.id, fence))

        h = PushHarness(self, relay=FenceRelay(lambda row, at: None))
        h.receiver.leases = node_leases(h.ledger, "gw-a", h.clock)
        self.assertEqual(h.request("PUT", "/push/mpn-results/R1.dat", results_file(2))[0], 201)
        [row] = h.ledger.inbound_for("mpn-results", "R1.dat")
        lease = h.ledger.leases.leases[("received", str(row.id))]
        self.assertEqual((lease.holder, lease.token), ("gw-a", 1), "written with the accepting commit")
        [(relayed, fence)] = handed
        self.assertEqual((relayed, fence.kind, fence.key, fence.node, fence.token), (row.id, "received",
                                                                                     str(row.id), "gw-a", 1))
        self.assertIn(("received", str(row.id)), h.receiver.leases.held, "renewed while this node relays it")
