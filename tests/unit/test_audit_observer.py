"""The daemon's audit observer: audited events become records, in batches, surviving a database outage."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase
import pytest

from kei_gateway.adapters.ledger import create_ledger_engine, upgrade
from kei_gateway.operations.audit import AuditLog, AuditRecord, StoredRecord
from kei_gateway.operations.audit.observer import AUDITED, AuditObserver, audited_event_names, verify_now
from kei_gateway.operations.audit.spool import PENDING_NAME, AuditSpool, read_pending, recover_pending
from kei_gateway.runtime import events
from kei_gateway.runtime.metrics import GatewayMetrics
from kei_gateway.testing import SynchronousBlocking

KEY = bytes(range(32))


class FlakyAuditLog(AuditLog):
    """A real AuditLog whose database can be 'down'; counts the batches it was given."""

    down = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def append_batch(self, records: Sequence[AuditRecord]) -> list[StoredRecord]:
        if self.down:
            from sqlalchemy.exc import OperationalError

            raise OperationalError("INSERT", {}, Exception("unable to open database file"))
        self.batches.append(len(records))
        return super().append_batch(records)


@pytest.mark.integration  # opens a SQLite ledger file
class AuditObserverTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="audit-observer-"))
        self.addCleanup(shutil.rmtree, directory, True)
        self.engine = create_ledger_engine(f"sqlite:///{directory}/ledger.sqlite3")
        upgrade(self.engine)
        self.audit_log = FlakyAuditLog(self.engine, KEY)
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, process=False)
        self.logged: list[dict[str, Any]] = []
        self.log = Logger(observer=cast(ILogObserver, self._both))
        self.observer = AuditObserver(self.clock, max_queue=50, batch_size=10, log=self.log)

    def _both(self, event: Any) -> None:
        self.logged.append(event)
        self.observer(event)

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels or None) or 0.0

    def emit_sent(self, n: int) -> None:
        for i in range(n):
            events.emit(self.log, events.TRANSFER_SENT, flow="jnks-payments", transfer_id=i, peer="jnks",
                        remote_name="KEI-DUMMY.dat", size=10, records=3, sha256="a" * 64)

    def test_when_audited_events_are_logged_then_they_are_written_in_batches_of_at_most_batch_size(self) -> None:
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics)
        self.emit_sent(25)
        self.clock.advance(1)
        self.assertEqual(self.audit_log.batches, [10, 10, 5])
        records = list(self.audit_log.iter_records())
        self.assertEqual([r.record.transfer_id for r in records], list(range(25)))
        self.assertEqual({(r.record.actor, r.record.event, r.record.count) for r in records},
                         {("kei-gateway", "transfer.sent", 3)})
        self.assertNotIn("KEI-DUMMY", repr(records))  # file names are not recorded
        self.assertEqual(self.sample("kei_gateway_audit_events_total", event="transfer.sent"), 25)
        self.assertTrue(self.audit_log.verify().ok)

    def test_when_an_event_says_its_record_was_committed_with_the_action_then_it_is_not_written_twice(self) -> None:
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics)
        events.emit(self.log, events.INGEST_QUEUED, flow="jnks-payments", name="a.dat", records=3, transfer_id=1,
                    sha256="a" * 64, state="QUEUED", audit_recorded=True)
        self.emit_sent(1)
        self.clock.advance(1)
        self.assertEqual([r.record.event for r in self.audit_log.iter_records()], ["transfer.sent"])

    def test_when_a_message_or_an_undeclared_event_is_logged_then_it_is_not_audited(self) -> None:
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics)
        events.emit(self.log, events.MESSAGE, text="hello")
        self.log.info("plain {x}", x=1)
        self.clock.advance(1)
        self.assertEqual(list(self.audit_log.iter_records()), [])

    def test_when_the_database_is_down_then_records_wait_in_memory_and_are_written_in_order_when_it_is_back(self) -> None:
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics)
        self.audit_log.down = True
        self.emit_sent(5)
        self.clock.advance(1)
        failures = [e for e in self.logged if e.get("kei_event") == "audit.write_failed"]
        self.assertEqual(len(failures), 1)
        self.assertEqual(self.observer.queued, 6)  # the five, and audit.write_failed itself
        self.emit_sent(3)
        self.clock.advance(1)
        self.assertEqual(len([e for e in self.logged if e.get("kei_event") == "audit.write_failed"]), 1)  # once per minute
        self.audit_log.down = False
        self.clock.advance(1)
        records = list(self.audit_log.iter_records())
        self.assertEqual([r.record.event for r in records],
                         ["transfer.sent"] * 5 + ["audit.write_failed"] + ["transfer.sent"] * 3)
        self.assertEqual(self.observer.queued, 0)
        self.assertTrue(self.audit_log.verify().ok)

    def test_when_the_database_refuses_one_record_then_only_that_one_is_dropped_and_the_trail_goes_on(self) -> None:
        from sqlalchemy.exc import DataError

        refused = 3
        original = self.audit_log.append_batch

        def refusing(records: Sequence[AuditRecord]) -> list[StoredRecord]:
            if any(r.transfer_id == refused for r in records):  # e.g. a value too long for its column
                raise DataError("INSERT", {}, Exception("value too long"))
            return original(records)

        self.audit_log.append_batch = refusing  # type: ignore[method-assign]
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics)
        self.emit_sent(6)
        self.clock.advance(1)
        self.emit_sent(2)  # later events are not held behind the refused one
        self.clock.advance(1)
        written = [r.record.transfer_id for r in self.audit_log.iter_records() if r.record.event == "transfer.sent"]
        self.assertEqual(written, [0, 1, 2, 4, 5, 0, 1])
        self.assertEqual(self.observer.queued, 0)
        self.assertEqual(self.sample("kei_gateway_audit_dropped_events_total"), 1)
        said = [e for e in self.logged if e.get("kei_event") == "audit.write_failed"]
        self.assertEqual(len(said), 1)
        self.assertIn("transfer.sent", said[0]["reason"])
        self.assertTrue(self.audit_log.verify().ok)

    def test_when_the_outage_outlasts_the_bound_then_the_excess_is_dropped_counted_and_said(self) -> None:
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics)
        self.audit_log.down = True
        self.emit_sent(70)
        self.clock.advance(61)
        self.assertEqual(self.observer.queued, 50)
        last = [e for e in self.logged if e.get("kei_event") == "audit.write_failed"][-1]
        self.assertEqual((last["queued"], last["dropped"]), (50, 20))
        # the notice itself found the queue full: dropped from the audit table, but it is in the journal
        self.assertEqual(self.observer.dropped, 21)
        self.assertEqual(self.sample("kei_gateway_audit_dropped_events_total"), 21)

    def test_when_events_come_before_start_then_they_are_written_at_start(self) -> None:
        self.emit_sent(2)
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics)
        self.assertEqual(len(list(self.audit_log.iter_records())), 2)

    def test_when_stopped_then_what_is_queued_is_flushed(self) -> None:
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics)
        self.emit_sent(4)
        self.successResultOf(self.observer.stop())
        self.assertEqual(len(list(self.audit_log.iter_records())), 4)

    def test_when_stopped_with_the_database_down_then_the_loss_is_logged(self) -> None:
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics)
        self.audit_log.down = True
        self.emit_sent(4)
        self.successResultOf(self.observer.stop())
        last = [e for e in self.logged if e.get("kei_event") == "audit.write_failed"][-1]
        self.assertIn("stopping", last["reason"])

    def test_when_verify_now_finds_the_chain_intact_then_chain_ok_is_1_and_then_0_after_tampering_each_time_stamped(
            self) -> None:
        self.audit_log.append_batch([AuditRecord(time=events_time(), actor="t", event="operator.test", count=i)
                                     for i in range(3)])
        self.assertEqual(self.sample("kei_gateway_audit_chain_checked_timestamp_seconds"), 0)
        self.clock.advance(1000)
        report = self.successResultOf(verify_now(self.audit_log, SynchronousBlocking(), self.metrics, self.log,
                                                 clock=self.clock))
        assert report is not None
        self.assertTrue(report.ok)
        self.assertEqual(self.sample("kei_gateway_audit_chain_ok"), 1)
        self.assertEqual(self.sample("kei_gateway_audit_chain_checked_timestamp_seconds"), 1000)
        with self.engine.begin() as connection:
            connection.execute(text("UPDATE audit SET count = 7 WHERE sequence = 2"))
        self.clock.advance(500)
        report = self.successResultOf(verify_now(self.audit_log, SynchronousBlocking(), self.metrics, self.log,
                                                 clock=self.clock))
        assert report is not None and report.problem is not None
        self.assertEqual(self.sample("kei_gateway_audit_chain_ok"), 0)
        self.assertEqual(self.sample("kei_gateway_audit_chain_checked_timestamp_seconds"), 1500)
        broken = [e for e in self.logged if e.get("kei_event") == "audit.chain_broken"]
        self.assertEqual((broken[0]["sequence"], broken[0]["kind"]), (2, "changed"))

    def test_when_verify_cannot_read_the_database_then_chain_ok_is_0_stamped_and_verify_failed_is_logged(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(text("DROP TABLE audit_head"))
        self.metrics.audit_chain_ok.set(1)
        self.clock.advance(42)
        self.assertIsNone(self.successResultOf(verify_now(self.audit_log, SynchronousBlocking(), self.metrics, self.log,
                                                          clock=self.clock)))
        self.assertEqual(self.sample("kei_gateway_audit_chain_ok"), 0)
        self.assertEqual(self.sample("kei_gateway_audit_chain_checked_timestamp_seconds"), 42)
        self.assertTrue(any(e.get("kei_event") == "audit.verify_failed" for e in self.logged))


def events_time() -> Any:
    from datetime import datetime, timezone

    return datetime(2026, 11, 1, tzinfo=timezone.utc)


    # --- the pending file: records with no transaction of their own survive kill -9 (issue 11) ---------------

    def spooled(self) -> tuple[Path, AuditSpool]:
        directory = Path(tempfile.mkdtemp(prefix="audit-spool-"))
        self.addCleanup(shutil.rmtree, directory, True)
        return directory / PENDING_NAME, AuditSpool(str(directory / PENDING_NAME))

    def test_when_a_record_is_queued_then_it_is_in_the_pending_file_until_chained_and_then_the_file_is_empty(
            self) -> None:
        path, spool = self.spooled()
        self.emit_sent(1)  # before start: written to the file at start
        self.audit_log.down = True
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics, spool=spool)
        self.emit_sent(2)
        self.assertEqual([r.transfer_id for r in read_pending(str(path)) if r.event == "transfer.sent"], [0, 0, 1])
        self.audit_log.down = False
        self.clock.advance(1)
        self.assertEqual(path.read_bytes(), b"")
        self.assertEqual([r.record.transfer_id for r in self.audit_log.iter_records()
                          if r.record.event == "transfer.sent"], [0, 0, 1])

    def test_when_the_daemon_is_killed_with_records_queued_then_the_next_start_chains_each_once(self) -> None:
        path, spool = self.spooled()
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics, spool=spool)
        self.emit_sent(3)
        self.clock.advance(1)  # chained: the file is emptied
        self.audit_log.down = True
        events.emit(self.log, events.LISTENER_DENIED, listener="push", source="192.0.2.7", reason="address")
        self.emit_sent(2)
        # kill -9 here: nothing more runs in this daemon; its file is what the kernel has
        self.audit_log.down = False
        fresh = AuditLog(self.engine, KEY)
        self.assertEqual(recover_pending(str(path), fresh), (4, 0))  # denied, audit.write_failed, two sent
        events_chained = [r.record.event for r in fresh.iter_records()]
        self.assertEqual(events_chained, ["transfer.sent"] * 3 + ["listener.denied", "audit.write_failed"]
                         + ["transfer.sent"] * 2)
        self.assertFalse(path.exists())
        self.assertTrue(fresh.verify().ok)

    def test_when_killed_between_a_chained_batch_and_emptying_the_file_then_nothing_is_chained_twice(self) -> None:
        path, _ = self.spooled()
        chained = [AuditRecord(time=events_time(), actor="kei-gateway", event="push.refused", source="192.0.2.7",
                               reason=f"address {i}") for i in range(3)]
        self.audit_log.append_batch(chained)
        waiting = AuditRecord(time=events_time(), actor="kei-gateway", event="push.refused", source="192.0.2.8",
                              reason="unknown_ca")
        spool = AuditSpool(str(path))
        spool.open([*chained, waiting])
        with path.open("ab") as cut:
            cut.write(b'{"time":"2026-12-02T07:00:00+00:00","actor":"kei-ga')  # the write the kill cut short
        spool.close()
        self.assertEqual(recover_pending(str(path), self.audit_log), (1, 3))
        self.assertEqual([r.record.reason for r in self.audit_log.iter_records()],
                         ["address 0", "address 1", "address 2", "unknown_ca"])

    def test_when_the_file_grows_past_its_bound_then_it_keeps_only_the_records_still_queued(self) -> None:
        import kei_gateway.operations.audit.spool as spool_module

        path, spool = self.spooled()
        self.patch(spool_module, "COMPACT_BYTES", 2000)
        original = self.audit_log.append_batch

        def one_batch_then_down(records: Sequence[AuditRecord]) -> list[StoredRecord]:
            stored = original(records)
            self.audit_log.down = True
            return stored

        self.audit_log.append_batch = one_batch_then_down  # type: ignore[method-assign]
        self.emit_sent(15)  # 15 lines, more than 2000 bytes; a batch is 10
        self.observer.start(self.audit_log, SynchronousBlocking(), self.metrics, spool=spool)
        left = read_pending(str(path))
        self.assertEqual([(r.event, r.transfer_id) for r in left],
                         [("transfer.sent", i) for i in range(10, 15)] + [("audit.write_failed", None)])
        self.assertEqual(self.observer.queued, 6)


def test_when_the_audited_set_is_derived_then_messages_debug_and_the_purge_anchor_are_left_out() -> None:
    assert "message" not in AUDITED and "audit.purged" not in AUDITED
    assert {"listener.denied", "ingest.queued", "transfer.failed", "operator.transfer_approved",
            "audit.write_failed", "config.reloaded"} <= AUDITED
    debug = events.EventType("x.debug", "0" * 32, LogLevel.debug, "", "", "", "", "")
    assert "x.debug" not in audited_event_names([debug])
