"""Certificate expiry: the metric and the warning 30 days ahead."""

from __future__ import annotations

import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
import pytest

from kei_gateway.adapters.ledger import Ledger, create_ledger_engine, upgrade
from kei_gateway.config import read_config
from kei_gateway.operations import certificates as certs
from kei_gateway.runtime.service import make_service
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.sim.pki import issue, make_ca, write_demo_credentials
from kei_gateway.testing import RecordingNotifier, SynchronousBlocking
from tests.unit.helpers import temporary_directory

NOW = datetime.datetime(2026, 11, 21, tzinfo=datetime.timezone.utc)


class ExpiryTests(SynchronousTestCase):
    def info(self, days: int) -> certs.CertificateInfo:
        ca = make_ca("test CA", days=400, now=NOW)
        return certs.read_certificate_info(issue(ca, "leaf", days=days, now=NOW).certificate_pem())

    def test_when_a_certificate_has_more_than_30_days_left_then_no_warning(self) -> None:
        self.assertIsNone(certs.expiry_warning(self.info(31), NOW.timestamp()))

    def test_when_30_days_or_fewer_are_left_then_it_is_expiring(self) -> None:
        self.assertEqual(certs.expiry_warning(self.info(30), NOW.timestamp()), "expiring")
        self.assertEqual(certs.days_left(self.info(10), NOW.timestamp()), 10)

    def test_when_the_end_date_has_passed_then_it_is_expired(self) -> None:
        self.assertEqual(certs.expiry_warning(self.info(1), (NOW + datetime.timedelta(days=2)).timestamp()), "expired")

    @pytest.mark.integration  # opens a SQLite ledger file
    def test_when_the_gateway_certificate_is_near_its_end_then_an_event_and_the_gauge_say_so(self) -> None:
        base = Path(temporary_directory(self))
        write_demo_credentials(str(base / "credentials"), days=10)
        (base / "k.toml").write_text(demo_config_text(str(base), 19998), encoding="utf-8")
        config = read_config(str(base / "k.toml"))
        engine = create_ledger_engine(config.database_url)
        upgrade(engine)
        self.addCleanup(engine.dispose)
        reactor = MemoryReactorClock()
        reactor.advance(datetime.datetime.now(datetime.timezone.utc).timestamp())
        registry = CollectorRegistry()
        gateway = make_service(config, reactor, Ledger(engine), notifier=RecordingNotifier(), registry=registry,
                               blocking=SynchronousBlocking(), environ={})
        seen: list[dict[str, object]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        self.successResultOf(gateway.certificates.check_certificate())
        warnings = [e for e in seen if e.get("kei_event") == "certificate.expiring"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"], LogLevel.warn)
        self.assertIn(warnings[0]["days"], (9, 10))
        expiry = registry.get_sample_value("kei_gateway_certificate_expiry_timestamp_seconds", {"role": "gateway"})
        self.assertLess(abs((expiry or 0) - (reactor.seconds() + 10 * 86400)), 600)
