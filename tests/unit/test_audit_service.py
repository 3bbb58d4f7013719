"""The audit trail in the service tree: events of the running gateway are recorded, verified, flushed at stop."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
import pytest

from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine, upgrade
from kei_gateway.config import read_config
from kei_gateway.operations.audit import AuditLog, audit_key_from_config
from kei_gateway.operations.audit.observer import VERIFY_INTERVAL, AuditObserver
from kei_gateway.runtime.service import make_service
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.sim.pki import write_demo_credentials
from kei_gateway.testing import RecordingNotifier, SynchronousBlocking
from tests.unit.helpers import temporary_directory


@pytest.mark.integration  # opens a SQLite ledger file
class AuditInServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = Path(temporary_directory(self))
        write_demo_credentials(str(base / "credentials"))
        path = base / "kei-gateway.toml"
        path.write_text(demo_config_text(str(base), 19998), encoding="utf-8")
        config = read_config(str(path))
        engine = create_ledger_engine(config.database_url)
        upgrade(engine)
        self.addCleanup(engine.dispose)
        self.reactor = MemoryReactorClock()
        self.registry = CollectorRegistry()
        self.audit_log = AuditLog(engine, audit_key_from_config(config, {}))
        self.audit = AuditObserver(self.reactor)
        globalLogPublisher.addObserver(self.audit)
        self.addCleanup(globalLogPublisher.removeObserver, self.audit)
        self.gateway = make_service(config, self.reactor, TransferLedger(engine), notifier=RecordingNotifier(),
                                    registry=self.registry, blocking=SynchronousBlocking(), environ={},
                                    audit=self.audit, audit_log=self.audit_log)

    def events(self) -> list[str]:
        return [s.record.event for s in self.audit_log.iter_records()]

    def test_when_the_gateway_starts_then_its_events_are_recorded_and_the_chain_is_verified(self) -> None:
        self.gateway.startService()
        self.successResultOf(self.gateway.ready)
        self.reactor.advance(1)
        recorded = self.events()
        self.assertIn("listener.bound", recorded)
        self.assertIn("daemon.ready", recorded)
        self.assertIn("audit.chain_verified", recorded)
        self.assertEqual(self.registry.get_sample_value("kei_gateway_audit_chain_ok"), 1)
        self.assertEqual(self.registry.get_sample_value("kei_gateway_audit_events_total", {"event": "daemon.ready"}), 1)
        self.assertTrue(all(s.record.actor == "kei-gateway" for s in self.audit_log.iter_records()))

    def test_when_a_day_passes_then_the_chain_is_verified_again(self) -> None:
        self.gateway.startService()
        self.reactor.advance(1)
        before = self.events().count("audit.chain_verified")
        self.reactor.advance(VERIFY_INTERVAL)
        self.reactor.advance(1)
        self.assertEqual(self.events().count("audit.chain_verified"), before + 1)

    def test_when_the_gateway_stops_then_the_last_events_are_flushed_before_the_pool_stops(self) -> None:
        self.gateway.startService()
        self.successResultOf(self.gateway.ready)
        self.successResultOf(self.gateway.stopService())
        self.assertEqual(self.events()[-1], "daemon.stopping")
        self.assertEqual(self.audit.queued, 0)
        self.assertTrue(self.audit_log.verify().ok)
