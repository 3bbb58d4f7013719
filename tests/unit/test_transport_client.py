"""The WebDAV client and its outbound endpoint on a memory reactor: allow-list, timeouts, TLS checks, bodies."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from OpenSSL import crypto
from twisted.internet import defer
from twisted.internet.error import ConnectionAborted
from twisted.python.failure import Failure
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.adapters.transport import (
    BodySourceError,
    OutboundDenied,
    PeerTLS,
    TransientError,
    WebDavClient,
    checked_addresses,
    spki_pin,
)
from kei_gateway.adapters.transport.webdav import _PulledBody
from kei_gateway.config._kinds import Pins
from kei_gateway.sim import pki
from kei_gateway.testing import SynchronousBlocking
from tests.unit.helpers import temporary_directory

URL = "https://jnks.example.lg.jp/upload/"


class Credentials:
    def __init__(self, case: SynchronousTestCase) -> None:
        base = Path(temporary_directory(case))
        self.ca = pki.make_ca("peer CA")
        self.server = pki.issue(self.ca, "peer", hosts=("jnks.example.lg.jp", "10.1.2.3"))
        gateway = pki.issue(self.ca, "gateway")
        self.ca_path = base / "ca.pem"
        self.ca_path.write_bytes(self.ca.certificate_pem())
        self.cert_path = base / "gateway.crt"
        self.cert_path.write_bytes(gateway.certificate_pem())
        self.key_path = base / "gateway.key"
        pki.write_secret(str(self.key_path), gateway.key_pem())

    def tls(self, host: str, pins: tuple[str, ...] = ()) -> PeerTLS:
        return PeerTLS("jnks", host, str(self.ca_path), str(self.cert_path), str(self.key_path), "1.2", pins)


class TcpTransport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class FakeResolver:
    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> defer.Deferred[list[str]]:
        self.calls.append((host, port))
        return defer.succeed(self.answers.pop(0))


class OutboundTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.credentials = Credentials(self)

    def client(self, resolver: FakeResolver, allow: str = "10.1.2.0/24") -> WebDavClient:
        return WebDavClient(self.reactor, "jnks", [URL], [ipaddress.ip_network(allow)], self.credentials.tls,
                            SynchronousBlocking(), connect_timeout=5.0, transfer_timeout=60.0, resolve=resolver)

    def test_when_the_address_is_outside_allow_then_denied_before_any_connection(self) -> None:
        resolver = FakeResolver(["127.0.0.1"])
        d = self.client(resolver).put(URL, "a.dat", lambda: [b"x"], 1, hashlib.sha256(b"x").hexdigest())
        failure = self.failureResultOf(d, OutboundDenied)
        self.assertEqual((failure.value.kind, failure.value.reason), ("denied", "address"))
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(resolver.calls, [("jnks.example.lg.jp", 443)])

    def test_when_the_url_is_not_the_peers_then_denied_without_a_lookup(self) -> None:
        resolver = FakeResolver(["10.1.2.3"])
        d = self.client(resolver).get("https://elsewhere.example.jp/upload/a.dat", lambda chunk: None)
        self.assertEqual(self.failureResultOf(d, OutboundDenied).value.reason, "host")
        d = self.client(resolver).get("https://jnks.example.lg.jp:8443/upload/a.dat", lambda chunk: None)
        self.assertEqual(self.failureResultOf(d, OutboundDenied).value.reason, "host")
        self.assertEqual((resolver.calls, self.reactor.tcpClients), ([], []))

    def test_when_allowed_then_the_connection_goes_to_the_checked_ip_not_a_second_lookup(self) -> None:
        resolver = FakeResolver(["192.0.2.66", "10.1.2.3"], ["192.0.2.66"])
        self.client(resolver).get(URL + "a.dat", lambda chunk: None)
        self.assertEqual(len(resolver.calls), 1)
        self.assertEqual([(host, port) for host, port, *_ in self.reactor.tcpClients], [("10.1.2.3", 443)])

    def test_when_dns_gives_no_address_then_transient_resolve(self) -> None:
        d = self.client(FakeResolver([])).delete(URL + "a.dat")
        self.assertEqual(self.failureResultOf(d, TransientError).value.kind, "resolve")

    def test_when_the_connection_does_not_come_up_then_transient_connect_timeout(self) -> None:
        d = self.client(FakeResolver(["10.1.2.3"])).propfind(URL)
        self.assertNoResult(d)
        self.reactor.advance(5.0)
        self.assertEqual(self.failureResultOf(d, TransientError).value.kind, "connect_timeout")

    def test_when_tcp_connects_but_tls_never_completes_then_connect_timeout(self) -> None:
        d = self.client(FakeResolver(["10.1.2.3"])).propfind(URL)
        factory = self.reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        transport = TcpTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.value(), "a ClientHello was sent")
        self.assertNoResult(d)
        self.reactor.advance(5.0)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual(self.failureResultOf(d, TransientError).value.kind, "connect_timeout")

    def test_checked_addresses_is_pure(self) -> None:
        networks = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]
        self.assertEqual(checked_addresses("p", "h", ["2001:db8::1", "8.8.8.8", "10.0.0.1"], networks),
                         ["2001:db8::1", "10.0.0.1"])
        with self.assertRaises(OutboundDenied):
            checked_addresses("p", "h", ["8.8.8.8"], networks)


class _Owner:
    """Stands for the TLS protocol a connection belongs to (weakly referenced by PeerTLS)."""


class _Connection:
    """What the verify callback needs of an OpenSSL connection."""

    def __init__(self) -> None:
        self.owner = _Owner()

    def get_app_data(self) -> object:
        return self.owner


class TlsChecksTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.credentials = Credentials(self)
        self.leaf = crypto.X509.from_cryptography(self.credentials.server.certificate)

    def verify(self, tls: PeerTLS, ok: int = 1, depth: int = 0) -> tuple[bool, tuple[str, str] | None]:
        connection = _Connection()
        result = tls._verify(connection, self.leaf, 0 if ok else 20, depth, ok)  # type: ignore[arg-type]
        return result, tls.failure_kind(connection.owner)

    def test_when_the_name_and_pin_match_then_accepted(self) -> None:
        pin = spki_pin(self.credentials.server.certificate)
        self.assertEqual(self.verify(self.credentials.tls("jnks.example.lg.jp", (pin,))), (True, None))
        self.assertEqual(self.verify(self.credentials.tls("10.1.2.3")), (True, None))

    def test_when_openssl_rejects_the_chain_then_kind_ca(self) -> None:
        ok, failure = self.verify(self.credentials.tls("jnks.example.lg.jp"), ok=0, depth=1)
        self.assertFalse(ok)
        self.assertEqual(failure and failure[0], "ca")

    def test_when_the_host_differs_then_kind_hostname(self) -> None:
        for host in ("mpn.example.lg.jp", "10.1.2.4"):
            ok, failure = self.verify(self.credentials.tls(host))
            self.assertEqual((ok, failure and failure[0]), (False, "hostname"))

    def test_when_no_pin_matches_then_kind_pin(self) -> None:
        ok, failure = self.verify(self.credentials.tls("jnks.example.lg.jp", ("sha256/" + "B" * 43 + "=",)))
        self.assertEqual((ok, failure and failure[0]), (False, "pin"))

    def test_spki_pin_is_a_valid_config_pin_of_the_public_key(self) -> None:
        from cryptography.hazmat.primitives import serialization
        import base64

        certificate = self.credentials.server.certificate
        pin = spki_pin(certificate)
        self.assertEqual(Pins().parse([pin]), (pin,))
        der = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        self.assertEqual(pin, "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode())


class Consumer:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class PulledBodyTests(SynchronousTestCase):
    def body(self, chunks: Any, data: bytes, sha: str | None = None) -> _PulledBody:
        """One piece per pull (batch of 1 byte), so the tests see each chunk's fate."""
        return _PulledBody("jnks", chunks, len(data), sha or hashlib.sha256(data).hexdigest(), SynchronousBlocking(),
                           batch_bytes=1)

    def test_when_pieces_are_small_then_they_are_pulled_and_written_in_batches(self) -> None:
        pieces = [bytes([65 + i]) * 1000 for i in range(10)]
        data = b"".join(pieces)
        blocking = SynchronousBlocking()
        producer = _PulledBody("jnks", lambda: iter(pieces), len(data), hashlib.sha256(data).hexdigest(), blocking,
                               batch_bytes=4000)
        consumer = Consumer()
        self.successResultOf(producer.startProducing(consumer))  # type: ignore[arg-type]
        self.assertEqual(b"".join(consumer.written), data)
        self.assertEqual([len(w) for w in consumer.written], [4000, 4000, 2000])

    def test_when_the_source_is_whole_then_every_chunk_is_written_and_verified(self) -> None:
        producer = self.body(lambda: iter([b"ab", b"", b"cd", b"e"]), b"abcde")
        consumer = Consumer()
        self.successResultOf(producer.startProducing(consumer))  # type: ignore[arg-type]
        self.assertEqual(b"".join(consumer.written), b"abcde")
        self.assertTrue(self.successResultOf(producer.verified))

    def test_when_the_source_fails_at_the_end_then_the_last_chunk_is_never_written(self) -> None:
        def corrupt() -> Iterator[bytes]:
            yield b"ab"
            yield b"cd"
            raise ValueError("GCM tag")

        producer = self.body(corrupt, b"abcd")
        consumer = Consumer()
        failure = self.failureResultOf(producer.startProducing(consumer), BodySourceError)  # type: ignore[arg-type]
        self.assertIsInstance(failure.value.cause, ValueError)
        self.assertEqual(consumer.written, [b"ab"])

    def test_when_size_or_hash_differ_then_the_body_is_not_completed(self) -> None:
        consumer = Consumer()
        producer = self.body(lambda: iter([b"ab", b"cd"]), b"abcd", sha="0" * 64)
        self.failureResultOf(producer.startProducing(consumer), BodySourceError)  # type: ignore[arg-type]
        self.assertEqual(consumer.written, [b"ab"])
        producer = _PulledBody("jnks", lambda: iter([b"ab", b"cd", b"ef"]), 4, "0" * 64, SynchronousBlocking())
        self.failureResultOf(producer.startProducing(Consumer()), BodySourceError)  # type: ignore[arg-type]

    def test_when_paused_then_nothing_is_written_and_at_most_one_batch_is_read_ahead(self) -> None:
        pulled: list[int] = []

        def source() -> Iterator[bytes]:
            for i in range(3):
                pulled.append(i)
                yield b"x"

        producer = self.body(source, b"xxx")
        producer.pauseProducing()
        consumer = Consumer()
        d = producer.startProducing(consumer)  # type: ignore[arg-type]
        self.assertEqual(pulled, [0])  # the read-ahead batch, no more: memory stays bounded
        self.assertEqual(consumer.written, [])
        self.assertNoResult(d)
        producer.resumeProducing()
        self.successResultOf(d)
        self.assertEqual(pulled, [0, 1, 2])
        self.assertEqual(b"".join(consumer.written), b"xxx")

    def test_when_stopped_while_a_batch_is_read_then_the_source_is_closed_after_that_read(self) -> None:
        closed: list[str] = []

        def source() -> Iterator[bytes]:
            try:
                yield b"ab"
                yield b"cd"
            finally:
                closed.append("closed")

        producer = self.body(source, b"abcd")
        producer.pauseProducing()
        d = producer.startProducing(Consumer())  # type: ignore[arg-type]
        producer.stopProducing()
        self.assertNoResult(d)  # IBodyProducer: never fires after stopProducing
        self.assertEqual(closed, ["closed"])

    def test_when_stopped_before_the_end_then_verified_says_false_instead_of_never_firing(self) -> None:
        """The PUT awaits ``verified`` before its MOVE: unfired, it would hang until the transfer timeout."""
        producer = self.body(lambda: [b"ab", b"cd"], b"abcd")
        producer.pauseProducing()
        producer.startProducing(Consumer())  # type: ignore[arg-type]
        producer.stopProducing()
        self.assertIs(self.successResultOf(producer.verified), False)

    def test_when_stopped_after_the_whole_body_then_verified_stays_true(self) -> None:
        producer = self.body(lambda: [b"ab", b"cd"], b"abcd")
        self.successResultOf(producer.startProducing(Consumer()))  # type: ignore[arg-type]
        producer.stopProducing()
        self.assertIs(self.successResultOf(producer.verified), True)


class FromConfigTests(SynchronousTestCase):
    def test_when_built_from_config_then_the_peer_files_timeouts_and_allow_are_used(self) -> None:
        from kei_gateway.config import config_from_string
        from kei_gateway.sim.harness import demo_config_text

        base = temporary_directory(self)
        credentials = pki.write_demo_credentials(f"{base}/credentials")
        config = config_from_string(demo_config_text(base, 19999, extra=f"""
[peers.jnks]
url = "https://jnks.example.lg.jp/upload/"
results_url = "https://jnks.example.lg.jp:8443/results/"
ca = "{credentials.directory}/ca.pem"
allow = ["10.1.2.0/24"]
connect_timeout = "3s"
transfer_timeout = "2m"
"""))
        reactor = MemoryReactorClock()
        client = WebDavClient.from_config(reactor, config, "jnks", SynchronousBlocking(),
                                          resolve=FakeResolver(["10.1.2.3"], ["10.9.9.9"]))
        self.assertEqual((client.connect_timeout, client.transfer_timeout, client.idle_timeout), (3.0, 120.0, 60.0))
        client.get("https://jnks.example.lg.jp:8443/results/a.dat", lambda chunk: None)
        self.assertEqual([(h, p) for h, p, *_ in reactor.tcpClients], [("10.1.2.3", 8443)])
        d = client.get("https://jnks.example.lg.jp/upload/a.dat", lambda chunk: None)
        self.assertEqual(self.failureResultOf(d, OutboundDenied).value.reason, "address")
