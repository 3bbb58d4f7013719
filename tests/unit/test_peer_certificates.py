"""Certificate expiry of each peer (issue 6 part 5): the server certificate seen in the handshake and the CA bundle."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, cast

from OpenSSL import crypto
from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
import pytest

from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine, upgrade
from kei_gateway.adapters.transport import PeerTLS
from kei_gateway.config import config_from_string, read_config
from kei_gateway.runtime.service import make_service
from kei_gateway.sim import pki
from kei_gateway.sim.harness import demo_config_text, jnks_flow_config_text
from kei_gateway.testing import InMemoryBlobStore, RecordingNotifier, SynchronousBlocking
from tests.unit.helpers import temporary_directory

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
DAY = 86400.0
GAUGE = "kei_gateway_certificate_expiry_timestamp_seconds"


class _Owner:
    pass


class _Connection:
    def __init__(self) -> None:
        self.owner = _Owner()

    def get_app_data(self) -> object:
        return self.owner


class PeerTlsReportTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = Path(temporary_directory(self))
        ca = pki.make_ca("peer CA", days=400, now=NOW)
        self.server = pki.issue(ca, "peer", hosts=("jnks.example.lg.jp",), days=90, now=NOW)
        gateway = pki.issue(ca, "gateway", now=NOW)
        (base / "ca.pem").write_bytes(ca.certificate_pem())
        (base / "gateway.crt").write_bytes(gateway.certificate_pem())
        pki.write_secret(str(base / "gateway.key"), gateway.key_pem())
        self.seen: list[tuple[str, datetime.datetime]] = []
        self.base = base

    def tls(self, host: str) -> PeerTLS:
        return PeerTLS("jnks", host, str(self.base / "ca.pem"), str(self.base / "gateway.crt"),
                       str(self.base / "gateway.key"), "1.2", (),
                       on_certificate=lambda peer, not_after: self.seen.append((peer, not_after)))

    def verify(self, tls: PeerTLS, depth: int = 0) -> bool:
        leaf = crypto.X509.from_cryptography(self.server.certificate)
        return tls._verify(_Connection(), leaf, 0, depth, 1)  # type: ignore[arg-type]

    def test_when_the_server_certificate_passes_every_check_then_its_end_date_is_reported(self) -> None:
        self.assertTrue(self.verify(self.tls("jnks.example.lg.jp")))
        self.assertEqual(self.seen, [("jnks", self.server.certificate.not_valid_after_utc)])

    def test_when_a_check_fails_or_the_certificate_is_not_the_leaf_then_nothing_is_reported(self) -> None:
        self.assertFalse(self.verify(self.tls("mpn.example.lg.jp")))
        self.assertTrue(self.verify(self.tls("jnks.example.lg.jp"), depth=1))
        self.assertEqual(self.seen, [])

    def test_when_the_report_hook_fails_then_the_handshake_is_not_broken(self) -> None:
        tls = self.tls("jnks.example.lg.jp")
        tls.on_certificate = lambda peer, not_after: 1 / 0  # type: ignore[assignment, func-returns-value]
        self.assertTrue(self.verify(tls))


@pytest.mark.integration  # opens a SQLite ledger file
class GatewayExpiryTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = Path(temporary_directory(self))
        pki.write_demo_credentials(str(base / "credentials"), days=365)
        peer_ca = pki.make_ca("JNKS CA", days=20, now=NOW)  # the peer's CA bundle ends in 20 days
        (base / "jnks-ca.pem").write_bytes(pki.make_ca("JNKS old CA", days=300, now=NOW).certificate_pem()
                                           + peer_ca.certificate_pem())
        self.ca_not_after = peer_ca.certificate.not_valid_after_utc.timestamp()
        self.text = demo_config_text(str(base), 19996, extra=jnks_flow_config_text(
            "https://127.0.0.1:19995/", str(base / "jnks-ca.pem")))
        (base / "k.toml").write_text(self.text, encoding="utf-8")
        self.base = base
        config = read_config(str(base / "k.toml"))
        engine = create_ledger_engine(config.database_url)
        upgrade(engine)
        self.addCleanup(engine.dispose)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW.timestamp())
        self.registry = CollectorRegistry()
        self.gateway = make_service(config, self.reactor, TransferLedger(engine), notifier=RecordingNotifier(),
                                    registry=self.registry, blocking=SynchronousBlocking(), environ={},
                                    store=InMemoryBlobStore())
        self.logged: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def expiring(self, role: str) -> list[dict[str, Any]]:
        return [e for e in self.logged if e.get("kei_event") == "certificate.expiring" and e.get("role") == role]

    def test_when_certificates_are_checked_then_each_peers_ca_bundle_has_a_gauge_and_a_warning(self) -> None:
        self.successResultOf(self.gateway.certificates.check_certificate())
        self.assertEqual(self.registry.get_sample_value(GAUGE, {"role": "ca:jnks"}), self.ca_not_after,
                         "the bundle's earliest end date")
        self.assertIsNotNone(self.registry.get_sample_value(GAUGE, {"role": "gateway"}))
        self.assertEqual([e["days"] for e in self.expiring("ca:jnks")], [20])
        self.assertEqual(self.expiring("gateway"), [], "365 days left")

    def test_when_a_verified_handshake_reports_the_server_certificate_then_the_peer_gauge_is_set(self) -> None:
        soon = NOW + datetime.timedelta(days=10)
        self.gateway.certificates.peer_certificate_seen("jnks", soon)
        self.gateway.certificates.peer_certificate_seen("jnks", soon)  # every handshake reports; one warning
        self.assertEqual(self.registry.get_sample_value(GAUGE, {"role": "peer:jnks"}), soon.timestamp())
        self.assertEqual(len(self.expiring("peer:jnks")), 1)
        self.reactor.advance(DAY)
        self.gateway.certificates.peer_certificate_seen("jnks", soon)
        self.assertEqual([e["days"] for e in self.expiring("peer:jnks")], [10, 9], "again a day later")
        self.gateway.certificates.peer_certificate_seen("stranger", soon)
        self.assertIsNone(self.registry.get_sample_value(GAUGE, {"role": "peer:stranger"}), "labels: configured peers only")

    def test_when_the_default_client_is_built_then_its_tls_reports_to_the_gateway(self) -> None:
        client = self.gateway.senders[0].client
        tls = client._tls_factory("127.0.0.1")
        self.assertEqual(tls.on_certificate, self.gateway.certificates.peer_certificate_seen)

    def test_when_a_peer_is_removed_by_a_reload_then_its_gauges_go_too(self) -> None:
        self.successResultOf(self.gateway.certificates.check_certificate())
        self.gateway.certificates.peer_certificate_seen("jnks", NOW + datetime.timedelta(days=100))
        self.gateway.apply(config_from_string(demo_config_text(str(self.base), 19996), source=str(self.base / "k.toml")))
        self.successResultOf(self.gateway.certificates.check_certificate())
        self.assertIsNone(self.registry.get_sample_value(GAUGE, {"role": "ca:jnks"}))
        self.assertIsNone(self.registry.get_sample_value(GAUGE, {"role": "peer:jnks"}))
        self.assertIsNotNone(self.registry.get_sample_value(GAUGE, {"role": "gateway"}))
