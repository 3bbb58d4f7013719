"""The service tree built by the composition root, on a memory reactor with a fake clock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
import pytest

from kei_gateway.adapters.ledger import Ledger, TransferLedger, create_ledger_engine, head_revision, upgrade
from kei_gateway.adapters.store.keys import StoreKeyring
from kei_gateway.config import config_from_string, read_config, restart_needed
from kei_gateway.core.transfer import longest_wait
from kei_gateway.flows.outbound.sender import SEND_POLL_INTERVAL
from kei_gateway.runtime.blocking import ThreadPoolBlocking
from kei_gateway.runtime.metrics import exposition
from kei_gateway.runtime.service import make_service
from kei_gateway.sim.pki import write_demo_credentials
from tests.unit.helpers import temporary_directory
from kei_gateway.sim.harness import demo_config_text, jnks_flow_config_text, mpn_flow_config_text
from kei_gateway.testing import DUMMY_STORE_KEY, InMemoryBlobStore, RecordingNotifier, SynchronousBlocking


@pytest.mark.integration  # opens a SQLite ledger file
class ServiceTreeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(temporary_directory(self))
        write_demo_credentials(str(self.base / "credentials"))
        self.path = self.base / "kei-gateway.toml"
        self.path.write_text(demo_config_text(str(self.base), 19999), encoding="utf-8")
        self.config = read_config(str(self.path))
        engine = create_ledger_engine(self.config.database_url)
        upgrade(engine)
        self.addCleanup(engine.dispose)
        self.reactor = MemoryReactorClock()
        self.notifier = RecordingNotifier()
        self.registry = CollectorRegistry()
        self.levels: list[str] = []
        self.gateway = make_service(self.config, self.reactor, Ledger(engine), notifier=self.notifier,
                                    registry=self.registry, blocking=SynchronousBlocking(), environ={},
                                    watchdog_interval=10.0, on_log_level=self.levels.append)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def test_when_started_then_it_listens_and_only_then_says_ready_with_a_status(self) -> None:
        self.assertEqual(self.notifier.messages, [])
        self.gateway.startService()
        self.assertEqual(self.reactor.tcpServers[0][0], 19999)
        self.assertEqual(self.reactor.tcpServers[0][3], "127.0.0.1")
        addresses = self.successResultOf(self.gateway.ready)
        self.assertEqual(len(addresses), 1)
        self.assertTrue(addresses[0].startswith("metrics ") and addresses[0].endswith(":19999"), addresses)
        self.assertEqual(self.notifier.states("READY=1"), ["READY=1"])
        status = self.notifier.states("STATUS=")[-1]
        self.assertIn("0 queued", status)
        self.assertEqual(self.notifier.states("WATCHDOG=1"), ["WATCHDOG=1"])
        self.reactor.advance(10)
        self.assertEqual(len(self.notifier.states("WATCHDOG=1")), 2)
        self.assertEqual(self.metric("kei_gateway_database_up"), 1)
        expiry = self.metric("kei_gateway_certificate_expiry_timestamp_seconds", role="gateway")
        self.assertIsNotNone(expiry)

    def test_when_stopped_then_stopping_is_notified_and_the_watchdog_stops(self) -> None:
        self.gateway.startService()
        self.successResultOf(self.gateway.ready)
        self.successResultOf(self.gateway.stopService())
        self.assertIn("STOPPING=1", self.notifier.messages)
        pings = len(self.notifier.states("WATCHDOG=1"))
        self.reactor.advance(60)
        self.assertEqual(len(self.notifier.states("WATCHDOG=1")), pings)

    def test_when_reloaded_with_a_valid_file_then_allow_list_and_level_change_live(self) -> None:
        self.gateway.startService()
        self.path.write_text(demo_config_text(str(self.base), 19999).replace(
            'allow = ["127.0.0.1/32"]', 'allow = ["127.0.0.0/8"]').replace(
            '[gateway]\n', '[gateway]\nlog_level = "debug"\n'), encoding="utf-8")
        self.notifier.messages.clear()
        self.assertTrue(self.successResultOf(self.gateway.reload_from(str(self.path))))
        self.assertTrue(self.notifier.messages[0].startswith("RELOADING=1\nMONOTONIC_USEC="))
        self.assertIn("READY=1", self.notifier.messages)
        self.assertEqual([str(n) for n in self.gateway.config.listeners.metrics.allow], ["127.0.0.0/8"])
        self.assertEqual(self.levels, ["debug"])

    def test_when_reloaded_with_an_invalid_file_then_the_old_config_stays(self) -> None:
        self.gateway.startService()
        old = self.gateway.config
        self.path.write_text("[gateway]\nlg_code = \"131040\"\n", encoding="utf-8")
        self.assertFalse(self.successResultOf(self.gateway.reload_from(str(self.path))))
        self.assertIs(self.gateway.config, old)
        self.assertIn("READY=1", self.notifier.messages)
        self.assertIn("check-config", self.notifier.states("STATUS=")[-1])

    def audited_gateway(self) -> tuple[Any, Any, Any]:
        from kei_gateway.adapters.ledger import TransferLedger
        from kei_gateway.operations.audit import AuditLog
        from kei_gateway.operations.audit.observer import AuditObserver

        engine = create_ledger_engine(self.config.database_url)
        self.addCleanup(engine.dispose)
        ledger, audit_log = TransferLedger(engine), AuditLog(engine, bytes(32))
        from twisted.logger import globalLogPublisher

        observer = AuditObserver(self.reactor)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        gateway = make_service(self.config, self.reactor, ledger, notifier=RecordingNotifier(),
                               registry=CollectorRegistry(), blocking=SynchronousBlocking(), environ={},
                               audit=observer, audit_log=audit_log)
        return gateway, ledger, audit_log

    def test_when_built_with_an_audit_trail_then_the_ledger_chains_each_record_in_its_action_s_transaction(
            self) -> None:
        """The composition root (not the CLI) wires TransferLedger.audit_writer (issue 10 phase E, issue 11)."""
        _, ledger, audit_log = self.audited_gateway()
        self.assertEqual(ledger.audit_writer, audit_log.append_in)

    def test_when_a_reload_is_accepted_then_its_record_is_chained_before_it_applies(self) -> None:
        gateway, _, audit_log = self.audited_gateway()
        applied: list[int] = []
        original = gateway.apply

        def apply(new: Any, audit_recorded: bool = False) -> Any:
            applied.append(audit_log.count())  # the record is there when the new configuration takes effect
            self.assertTrue(audit_recorded)
            return original(new, audit_recorded=audit_recorded)

        gateway.apply = apply
        self.path.write_text(demo_config_text(str(self.base), 19999).replace(
            'allow = ["127.0.0.1/32"]', 'allow = ["127.0.0.0/8"]'), encoding="utf-8")
        self.assertTrue(self.successResultOf(gateway.reload_from(str(self.path))))
        [stored] = list(audit_log.iter_records())
        self.assertEqual((stored.record.event, stored.record.reason),
                         ("config.reloaded", "changes: metrics allow-list"))
        self.assertEqual(applied, [1])
        queued = [record.event for record in gateway.audit._queue]
        self.assertNotIn("config.reloaded", queued, "not queued a second time by the observer")

    def test_when_run_by_systemd_then_each_reload_verdict_is_written_for_systemctl_reload(self) -> None:
        """When RUNTIME_DIRECTORY is set, then every reload writes pid, a growing generation and the verdict."""
        from kei_gateway.runtime.reload_outcome import ReloadOutcome, read_outcome

        runtime = self.base / "run"
        runtime.mkdir()
        gateway = make_service(self.config, MemoryReactorClock(), Ledger(create_ledger_engine(self.config.database_url)),
                               notifier=RecordingNotifier(), registry=CollectorRegistry(), blocking=SynchronousBlocking(),
                               environ={"RUNTIME_DIRECTORY": str(runtime)}, watchdog_interval=10.0)
        self.assertTrue(self.successResultOf(gateway.reload_from(str(self.path))))
        self.assertEqual(read_outcome(str(runtime / "reload")), ReloadOutcome(os.getpid(), 1, True))
        self.path.write_text(self.path.read_text(encoding="utf-8") + "bogus = 1\n", encoding="utf-8")
        self.assertFalse(self.successResultOf(gateway.reload_from(str(self.path))))
        refused = read_outcome(str(runtime / "reload"))
        assert refused is not None
        self.assertEqual((refused.generation, refused.accepted), (2, False))
        self.assertIn("bogus: unknown key", refused.reason)
        self.assertFalse((self.base / "reload").exists() or any(runtime.glob("*.tmp")))

    def test_when_a_queue_exists_then_status_and_gauges_show_it(self) -> None:
        from datetime import datetime, timezone

        from sqlalchemy.orm import Session

        from kei_gateway.adapters.ledger import Transfer

        now = datetime.now(timezone.utc)
        with Session(self.gateway.ledger.engine) as session, session.begin():
            for state in ("QUEUED", "QUEUED", "HELD", "DONE"):
                session.add(Transfer(flow="jnks-payments", direction="out", peer="jnks", state=state,
                                     local_name="x.dat", size=70, record_count=1, attempts=0,
                                     created_at=now, updated_at=now))
        self.successResultOf(self.gateway.status.update())
        self.assertIn("2 queued", self.notifier.states("STATUS=")[-1])
        self.assertIn("1 held", self.notifier.states("STATUS=")[-1])
        self.assertEqual(self.metric("kei_gateway_queue_files", flow="jnks-payments", state="QUEUED"), 2)
        self.assertEqual(self.metric("kei_gateway_queue_files", flow="jnks-payments", state="FAILED"), 0)
        self.reactor.advance(now.timestamp() + 100 - self.reactor.seconds())
        self.successResultOf(self.gateway.status.update())
        self.assertEqual(self.metric("kei_gateway_oldest_queued_age_seconds", flow="jnks-payments"), 100)


class RestartNeededTests(SynchronousTestCase):
    def test_when_listener_address_or_database_change_then_a_restart_is_needed(self) -> None:
        base = config_from_string('[gateway]\nlg_code = "131041"\n')
        moved = config_from_string('[gateway]\nlg_code = "131041"\n[listeners.metrics]\naddress = "127.0.0.1:9999"\n'
                                   '[database]\nurl = "sqlite:////tmp/other.sqlite3"\n')
        self.assertEqual(restart_needed(base, moved), ["database", "listeners.metrics.address"])
        self.assertEqual(restart_needed(base, base), [])
        with_flow = config_from_string('[gateway]\nlg_code = "131041"\n[peers.jnks]\nurl = "https://j.example/u/"\n'
                                       'ca = "/ca.pem"\nallow = ["10.0.0.0/8"]\n[flows.jnks-payments]\npeer = "jnks"\n'
                                       'outbox = "outbox/jnks"\n')
        self.assertEqual(restart_needed(base, with_flow), ["flows"], "flows start and stop with the process")


class LedgerTests(SynchronousTestCase):
    @pytest.mark.integration  # opens a SQLite ledger file
    def test_when_sqlite_is_set_up_then_wal_and_synchronous_full_are_in_force(self) -> None:
        path = os.path.join(temporary_directory(self), "ledger.sqlite3")
        engine = create_ledger_engine(f"sqlite:///{path}")
        self.assertEqual(upgrade(engine), head_revision())
        with engine.connect() as connection:
            self.assertEqual(connection.exec_driver_sql("PRAGMA journal_mode").scalar(), "wal")
            self.assertEqual(connection.exec_driver_sql("PRAGMA synchronous").scalar(), 2)
            self.assertEqual(connection.exec_driver_sql("PRAGMA busy_timeout").scalar(), 5000)
        self.assertEqual(upgrade(engine), head_revision(), "a second upgrade is a no-op")
        engine.dispose()

    @pytest.mark.integration  # opens a SQLite ledger file
    def test_when_migrated_then_the_schema_matches_the_models_exactly(self) -> None:
        from alembic.autogenerate import compare_metadata
        from alembic.runtime.migration import MigrationContext

        from kei_gateway.adapters.ledger import Base

        engine = create_ledger_engine(f"sqlite:///{temporary_directory(self)}/ledger.sqlite3")
        upgrade(engine)
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        engine.dispose()
        self.assertEqual(differences, [], "a model changed without a migration (or the reverse)")

    def test_when_the_database_is_locked_then_the_blocking_call_is_retried(self) -> None:
        from sqlalchemy.exc import OperationalError

        from kei_gateway.runtime.blocking import is_transient, retry_transient

        calls = []

        @retry_transient
        def flaky() -> str:
            calls.append(1)
            if len(calls) < 3:
                raise OperationalError("SELECT 1", {}, Exception("database is locked"))
            return "ok"

        self.assertEqual(flaky(), "ok")
        self.assertEqual(len(calls), 3)
        self.assertFalse(is_transient(OperationalError("x", {}, Exception("no such table: transfers"))))


@pytest.mark.integration  # opens a SQLite ledger file
class ThreadPoolTests(SynchronousTestCase):
    def test_when_built_for_real_then_store_writers_have_their_own_pool_apart_from_the_ledger_and_watchdog(
            self) -> None:
        """A push or download waiting on the network must never hold a thread the watchdog's ping needs."""

        base = Path(temporary_directory(self))
        credentials = write_demo_credentials(str(base / "credentials"))
        ca = f"{credentials.directory}/ca.pem"
        flows = (jnks_flow_config_text("https://127.0.0.1:9/", ca)
                 + mpn_flow_config_text("https://127.0.0.1:9/", ca, 19998))
        config = config_from_string(demo_config_text(str(base), 19999, extra=flows))
        engine = create_ledger_engine(config.database_url)
        upgrade(engine)
        self.addCleanup(engine.dispose)
        gateway = make_service(config, MemoryReactorClock(), TransferLedger(engine), notifier=RecordingNotifier(),
                               registry=CollectorRegistry(), environ={}, store=InMemoryBlobStore(
                                   StoreKeyring(DUMMY_STORE_KEY)))
        assert gateway.pool is not None and gateway.intake_pool is not None
        self.assertIsNot(gateway.intake_pool, gateway.pool)
        self.assertIsInstance(gateway.blocking, ThreadPoolBlocking)
        self.assertIs(gateway.blocking.pool, gateway.pool)  # type: ignore[attr-defined]
        for poller in gateway.pollers:
            self.assertIs(poller.intake_blocking.pool, gateway.intake_pool)  # type: ignore[attr-defined]
            self.assertIs(poller.blocking, gateway.blocking)


class RestartKeysFromTheSchemaTests(SynchronousTestCase):
    def test_when_the_schema_is_read_then_the_restart_keys_are_exactly_those_it_declares(self) -> None:
        from kei_gateway.config._reload import restart_keys

        self.assertEqual([key for key, _ in restart_keys()], [
            "gateway.lg_code", "gateway.spool_dir", "gateway.state_dir", "gateway.node_id", "database", "tls", "keys",
            "flows",
            "listeners.metrics.address", "listeners.push.address"])

    def test_when_only_live_keys_change_then_no_restart_is_needed(self) -> None:
        base = config_from_string('[gateway]\nlg_code = "131041"\n')
        live = config_from_string('[gateway]\nlg_code = "131041"\nlog_level = "debug"\n[listeners.metrics]\n'
                                  'allow = ["10.0.0.0/8"]\n[retention]\ninbox = "1d"\n')
        self.assertEqual(restart_needed(base, live), [])

    def test_when_the_push_listener_appears_then_its_address_needs_a_restart(self) -> None:
        base = config_from_string('[gateway]\nlg_code = "131041"\n')
        pushing = config_from_string('[gateway]\nlg_code = "131041"\n[listeners.push]\naddress = "0.0.0.0:8443"\n')
        self.assertEqual(restart_needed(base, pushing), ["listeners.push.address"])


@pytest.mark.integration  # opens a SQLite ledger file
class FlowGaugeTests(SynchronousTestCase):
    """Gauges the shipped alert rules compare against (contrib/prometheus/kei-gateway.rules.yml)."""

    def setUp(self) -> None:
        self.base = Path(temporary_directory(self))
        credentials = write_demo_credentials(str(self.base / "credentials"))
        self.ca = f"{credentials.directory}/ca.pem"
        self.path = self.base / "kei-gateway.toml"
        self.path.write_text(self.text("8", "30s"), encoding="utf-8")
        config = read_config(str(self.path))
        engine = create_ledger_engine(config.database_url)
        upgrade(engine)
        self.addCleanup(engine.dispose)
        self.registry = CollectorRegistry()
        self.gateway = make_service(config, MemoryReactorClock(), TransferLedger(engine), notifier=RecordingNotifier(),
                                    registry=self.registry, blocking=SynchronousBlocking(), environ={},
                                    store=InMemoryBlobStore(StoreKeyring(DUMMY_STORE_KEY)))

    def text(self, attempts: str, first_delay: str) -> str:
        flows = jnks_flow_config_text("https://127.0.0.1:9/", self.ca).replace(
            'retry = { attempts = 5, first_delay = "1s", max_delay = "5s" }',
            f'retry = {{ attempts = {attempts}, first_delay = "{first_delay}", max_delay = "1h" }}')
        return demo_config_text(str(self.base), 19999, extra=flows)

    def limit(self) -> float | None:
        return self.registry.get_sample_value("kei_gateway_queue_age_limit_seconds", {"flow": "jnks-payments"})

    def test_when_built_then_each_outbound_flow_has_its_queue_age_limit_from_the_peers_policy(self) -> None:
        policy = self.gateway.config.peers["jnks"].retry
        self.assertEqual(self.limit(), longest_wait(policy, 60.0, SEND_POLL_INTERVAL))
        self.assertIsNone(self.registry.get_sample_value("kei_gateway_queue_age_limit_seconds",
                                                         {"flow": "jnks-receipts"}))

    def test_when_the_retry_policy_changes_on_reload_then_the_limit_follows(self) -> None:
        before = self.limit()
        self.path.write_text(self.text("3", "10s"), encoding="utf-8")
        self.assertTrue(self.successResultOf(self.gateway.reload_from(str(self.path))))
        self.assertEqual(self.limit(), longest_wait(self.gateway.config.peers["jnks"].retry, 60.0, SEND_POLL_INTERVAL))
        self.assertNotEqual(self.limit(), before)

    def test_when_no_exchange_with_a_peer_happened_yet_then_it_has_no_peer_up_series(self) -> None:
        """0 would read as "down": an idle peer reached only by uploads would alert until its first file."""
        self.assertNotIn("kei_gateway_peer_up{", exposition(self.registry).decode())
