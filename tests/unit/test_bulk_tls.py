"""The outbound TLS write path (transport/_bulktls.py): same bytes, far fewer trips through pyOpenSSL."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.adapters.transport import PeerTLS
from kei_gateway.adapters.transport._bulktls import WRITE_PIECE, BulkWriteTLSFactory
from kei_gateway.adapters.transport.tls import server_context
from kei_gateway.sim import pki
from kei_gateway.sim.tls import MutualTLSContextFactory
from tests.unit.helpers import temporary_directory


class Collector(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class CountingConnection:
    """Wraps an SSL.Connection to count the calls the write path makes."""

    def __init__(self, connection: SSL.Connection) -> None:
        self._connection = connection
        self.calls = {"send": 0, "bio_read": 0}

    def send(self, data: Any) -> int:
        self.calls["send"] += 1
        return self._connection.send(data)

    def bio_read(self, size: int) -> bytes:
        self.calls["bio_read"] += 1
        return self._connection.bio_read(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class BulkWriteTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = Path(temporary_directory(self))
        ca = pki.make_ca("peer CA")
        server = pki.issue(ca, "peer", hosts=("jnks.example.lg.jp",))
        gateway = pki.issue(ca, "gateway")
        files = {"ca.pem": ca.certificate_pem(), "server.crt": server.certificate_pem(),
                 "gateway.crt": gateway.certificate_pem()}
        for name, data in files.items():
            (base / name).write_bytes(data)
        pki.write_secret(str(base / "server.key"), server.key_pem())
        pki.write_secret(str(base / "gateway.key"), gateway.key_pem())
        self.client_tls = PeerTLS("jnks", "jnks.example.lg.jp", str(base / "ca.pem"), str(base / "gateway.crt"),
                                  str(base / "gateway.key"))
        self.server_tls = MutualTLSContextFactory(server_context(str(base / "server.crt"), str(base / "server.key"),
                                                                 str(base / "ca.pem")))

    def connected(self) -> tuple[Any, Collector, Any]:
        received = Collector()
        server = TLSMemoryBIOFactory(self.server_tls, False, Factory.forProtocol(lambda: received)).buildProtocol(None)
        client = BulkWriteTLSFactory(self.client_tls, True, Factory.forProtocol(Protocol)).buildProtocol(None)
        pump = connect(server, FakeTransport(server, isServer=True), client, FakeTransport(client, isServer=False))
        return pump, received, client

    def test_when_a_large_write_is_made_then_the_server_reads_the_same_bytes(self) -> None:
        pump, received, client = self.connected()
        data = os.urandom(3 * WRITE_PIECE + 12345)
        client.write(data)
        pump.flush()
        self.assertEqual(hashlib.sha256(bytes(received.received)).hexdigest(), hashlib.sha256(data).hexdigest())

    def test_when_a_megabyte_is_written_then_openssl_is_called_per_piece_not_per_record(self) -> None:
        pump, received, client = self.connected()
        counting = CountingConnection(client._tlsConnection)
        client._tlsConnection = counting
        data = os.urandom(4 * WRITE_PIECE)
        client.write(data)
        pump.flush()
        self.assertEqual(bytes(received.received), data)
        # Twisted's own path: 64 SSL_write and 64 bio_read calls (one per 16 KiB record).
        self.assertEqual(counting.calls["send"], 4)
        self.assertLessEqual(counting.calls["bio_read"], 8)
