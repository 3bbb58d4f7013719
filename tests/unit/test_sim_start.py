"""``start_jnks_simulator``: the programmatic API, on a MemoryReactorClock (no global reactor, no socket)."""

from __future__ import annotations

import os

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.sim import pki
from kei_gateway.sim import Faults, JnksOptions, RunningSim, start_jnks_simulator
from kei_gateway.testing import SynchronousBlocking
from tests.unit.helpers import temporary_directory


class StartTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = temporary_directory(self)
        ca = pki.make_ca("unit CA")
        server = pki.issue(ca, "unit server", client=False)
        self.paths = {n: os.path.join(self.base, n) for n in ("ca.pem", "server.crt", "server.key")}
        with open(self.paths["ca.pem"], "wb") as f:
            f.write(ca.certificate_pem())
        with open(self.paths["server.crt"], "wb") as f:
            f.write(server.certificate_pem() + ca.certificate_pem())
        pki.write_secret(self.paths["server.key"], server.key_pem())
        self.server_cert = server.certificate

    def start(self, reactor: MemoryReactorClock, faults: Faults | None = None) -> RunningSim:
        d = start_jnks_simulator(reactor, "127.0.0.1:8443", os.path.join(self.base, "root"),
                                 self.paths["server.crt"], self.paths["server.key"], self.paths["ca.pem"], faults,
                                 options=JnksOptions(lg_code="131202"), blocking=SynchronousBlocking())
        return self.successResultOf(d)

    def test_when_started_then_it_listens_with_mutual_tls_and_serves_upload_and_results(self) -> None:
        reactor = MemoryReactorClock()
        running = self.start(reactor)
        [(port, factory, contexts, _, interface)] = reactor.sslServers
        self.assertEqual((port, interface, running.port, running.url), (8443, "127.0.0.1", 8443,
                                                                          "https://127.0.0.1:8443/"))
        self.assertTrue(os.path.isdir(os.path.join(self.base, "root", "upload")))
        self.assertTrue(os.path.isdir(os.path.join(self.base, "root", "results")))
        self.assertEqual(running.personality.options.lg_code, "131202")
        connection = contexts.serverConnectionForTLS(None)
        self.assertEqual(connection.get_context().get_verify_mode() & 0x3, 0x3)  # PEER | FAIL_IF_NO_PEER_CERT
        self.successResultOf(running.stop())

    def test_when_the_wrong_certificate_fault_is_toggled_then_connections_get_the_other_context(self) -> None:
        reactor = MemoryReactorClock()
        running = self.start(reactor)
        [(_, factory, contexts, _, _)] = reactor.sslServers
        right = contexts.getContext()
        running.faults.wrong_server_cert = True
        self.assertIsNot(contexts.getContext(), right)
        factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.assertEqual(running.faults_fired["wrong_server_cert"], 1)
        running.faults.wrong_server_cert = False
        self.assertIs(contexts.getContext(), right)

    def test_when_a_file_is_missing_then_the_deferred_fails(self) -> None:
        d = start_jnks_simulator(MemoryReactorClock(), "127.0.0.1:0", self.base, os.path.join(self.base, "none"),
                                 self.paths["server.key"], self.paths["ca.pem"])
        self.failureResultOf(d, OSError)
