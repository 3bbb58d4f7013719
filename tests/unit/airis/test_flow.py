"""The airis-reconcile flow in the service tree: inputs in, results in the inbox, inputs erased, audited, counted."""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.adapters.airis_zip import write_airis_zip
from kei_gateway.flows.airis_reconcile import FlowPaths, FlowRun, run_flow_once
from kei_gateway.runtime.crashpoints import POINTS
from kei_gateway.operations.audit import AuditLog, audit_key_from_config
from kei_gateway.operations.audit.observer import AuditObserver
from kei_gateway.config import read_config
from kei_gateway.layouts import render_records
from kei_gateway.layouts.airis import TAX_REGISTER_2W, airis_csv_bytes, generate_airis_case
from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine, upgrade
from kei_gateway.sim.pki import write_demo_credentials
from kei_gateway.runtime.service import make_service
from kei_gateway.adapters.store.blobs import open_store
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.testing import RecordingNotifier, SynchronousBlocking
from tests.unit.helpers import temporary_directory

pytestmark = pytest.mark.integration  # a real SQLite ledger and store on disk

FLOW_CONFIG = """
[flows.airis-reconcile]
airis_outbox = "outbox/airis"
register_outbox = "outbox/airis-register"
inbox = "inbox/airis-reconcile"
"""
KEY = "dummy-key-for-tests"
PLANT = {"02": 2, "03": 1, "04": 1, "05": 3, "06": 2, "07": 1, "08": 2}


class AirisFlowCase(SynchronousTestCase):
    gateway_extra = ""
    """Settings added to ``[gateway]`` of the test configuration."""

    def setUp(self) -> None:
        self.base = Path(temporary_directory(self))
        write_demo_credentials(str(self.base / "credentials"))
        path = self.base / "kei-gateway.toml"
        text = demo_config_text(str(self.base), 19997, lg_code="131202", extra=FLOW_CONFIG)
        path.write_text(text.replace("[gateway]\n", "[gateway]\n" + self.gateway_extra, 1), encoding="utf-8")
        self.config = read_config(str(path))
        engine = create_ledger_engine(self.config.database_url)
        upgrade(engine)
        self.addCleanup(engine.dispose)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_750_000_000)
        self.registry = CollectorRegistry()
        self.audit_log = AuditLog(engine, audit_key_from_config(self.config, {}))
        self.audit = AuditObserver(self.reactor)
        globalLogPublisher.addObserver(self.audit)
        self.addCleanup(globalLogPublisher.removeObserver, self.audit)
        self.ledger = TransferLedger(engine)
        self.gateway = make_service(self.config, self.reactor, self.ledger, notifier=RecordingNotifier(),
                                    registry=self.registry, blocking=SynchronousBlocking(), environ={},
                                    store=open_store(self.config, {}), use_inotify=False,
                                    audit=self.audit, audit_log=self.audit_log)
        self.spool = self.base / "spool"
        self.case = generate_airis_case(30, PLANT, seed=4, variants={"degenerate": 2})

    def put_inputs(self, *, key: str = KEY, with_key: bool = True) -> None:
        airis, register = self.spool / "outbox" / "airis", self.spool / "outbox" / "airis-register"
        airis.mkdir(parents=True, exist_ok=True)
        register.mkdir(parents=True, exist_ok=True)
        (airis / "AIRIS20250701.zip").write_bytes(write_airis_zip(airis_csv_bytes(self.case.airis), KEY))
        if with_key:
            (airis / "AIRIS20250701.zip.key").write_text(key + "\n", encoding="utf-8")
        (register / "REG2W.dat").write_bytes(b"".join(render_records(TAX_REGISTER_2W, self.case.register)))

    def audit_records(self) -> list[tuple[str, str | None, str | None, int | None]]:
        return [(s.record.event, s.record.sha256, s.record.reason, s.record.count)
                for s in self.audit_log.iter_records()]



class AirisFlowTests(AirisFlowCase):
    def test_when_all_three_inputs_are_there_then_results_appear_and_the_plaintext_is_erased_and_reported(
            self) -> None:
        self.put_inputs()
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        self.reactor.advance(1)
        inbox = sorted(os.listdir(self.spool / "inbox" / "airis-reconcile"))
        self.assertEqual([name.rsplit(".", 1)[1] for name in inbox], ["csv", "dat", "txt"])
        self.assertTrue(all(name.startswith("131202_airis-reconcile_") for name in inbox))
        self.assertEqual(os.listdir(self.spool / "outbox" / "airis"), [])
        self.assertEqual(os.listdir(self.spool / "outbox" / "airis-register"), [])
        for code, count in self.case.expected.items():
            self.assertEqual(self.registry.get_sample_value("kei_gateway_airis_vehicles_total",
                                                            {"category": code}), count)
        (run,) = [r for r in self.audit_records() if r[0] == "airis.reconciled"]
        self.assertEqual(len(run[1] or ""), 64)
        self.assertIn("08=2", run[2] or "")
        reports = self.base / "state" / "reports"
        (csv_report,) = reports.glob("erasure-*.csv")
        text = csv_report.read_text(encoding="utf-8-sig")
        for name in ("outbox/airis/AIRIS20250701.zip", "outbox/airis/AIRIS20250701.zip.key",
                     "outbox/airis-register/REG2W.dat"):
            self.assertIn(name, text)
        (text_report,) = reports.glob("erasure-*.txt")
        report_text = text_report.read_text(encoding="utf-8")
        self.assertIn("AIRIS 突合の入力の消去", report_text)
        # the AIRIS block adds no "completed" line: only purge runs have one (the missed-purge check reads them)
        self.assertEqual(report_text.count("完了時刻"), report_text.count("実行 (run):"))
        stored = [row for row in self.ledger.list_transfers(flow="airis-reconcile")]
        self.assertEqual(len(stored), 6)  # three inputs and three results, each encrypted in the store
        self.assertTrue(all(row.blob_id and row.state == "DONE" for row in stored))
        # issue 11: each transfer committed with its record (the .dat's is the run's airis.reconciled, the other
        # five airis.stored), so audit verify finds none without one
        recorded = sorted(s.record.transfer_id or 0 for s in self.audit_log.iter_records()
                          if s.record.event in ("airis.stored", "airis.reconciled"))
        self.assertEqual(recorded, sorted(row.id for row in stored))
        self.assertEqual(self.audit_log.unrecorded_transfers(), (0, []))
        personal = [str(r[key]) for r in self.case.register for key in ("owner_name", "owner_address", "chassis_no")]
        dumped = repr(self.audit_records())
        self.assertFalse([value for value in personal if value in dumped])

    def test_when_the_key_is_wrong_then_nothing_reaches_the_inbox_and_an_errors_file_says_why(self) -> None:
        self.put_inputs(key="wrong")
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        self.reactor.advance(1)
        self.assertFalse((self.spool / "inbox" / "airis-reconcile").exists()
                         and os.listdir(self.spool / "inbox" / "airis-reconcile"))
        (errors,) = (self.spool / "quarantine" / "airis-reconcile").glob("*.errors.txt")
        self.assertIn("the key does not open it", errors.read_text(encoding="utf-8"))
        self.assertIn("airis.rejected", [r[0] for r in self.audit_records()])
        self.assertEqual(os.listdir(self.spool / "outbox" / "airis"), [])

    def test_when_the_key_file_is_missing_then_nothing_runs_and_the_inputs_wait(self) -> None:
        self.put_inputs(with_key=False)
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        self.reactor.advance(31)
        self.assertEqual(sorted(os.listdir(self.spool / "outbox" / "airis")), ["AIRIS20250701.zip"])
        self.assertEqual(self.ledger.list_transfers(flow="airis-reconcile"), [])

    def test_when_retention_passes_then_the_purge_erases_the_results_and_the_encrypted_inputs_and_reports_them(
            self) -> None:
        import datetime

        from kei_gateway.operations.purge.execute import PurgeLedger, run_purge

        self.put_inputs()
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        self.reactor.advance(1)
        inbox = self.spool / "inbox" / "airis-reconcile"
        self.assertEqual(len(os.listdir(inbox)), 3)
        for name in os.listdir(inbox):  # inbox files are timed by their mtime: put them on the fake clock
            os.utime(inbox / name, (self.reactor.seconds(), self.reactor.seconds()))
        later = datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.timezone.utc) + datetime.timedelta(days=8)
        outcome = run_purge(self.config, PurgeLedger(self.ledger.engine), open_store(self.config, {}),
                            now=lambda: later)
        self.assertTrue(outcome.ok)
        erased = {(item.area, item.name) for item in outcome.run.items} if outcome.run else set()
        self.assertEqual(os.listdir(inbox), [])
        self.assertEqual(len([name for area, name in erased if area == "inbox"]), 3)
        self.assertEqual(len([name for area, name in erased if area == "store"]), 6)
        self.assertTrue(all(row.blob_id is None for row in self.ledger.list_transfers(flow="airis-reconcile")))


class AirisFlowLimitTests(AirisFlowCase):
    gateway_extra = 'max_file_size = "1KiB"\n'

    def test_when_an_input_is_over_max_file_size_then_the_run_is_refused_unread_and_the_inputs_erased_once(
            self) -> None:
        self.put_inputs()
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        self.reactor.advance(1)
        self.reactor.advance(31)  # a second check finds nothing left to refuse
        self.assertFalse((self.spool / "inbox" / "airis-reconcile").exists()
                         and os.listdir(self.spool / "inbox" / "airis-reconcile"))
        (errors,) = (self.spool / "quarantine" / "airis-reconcile").glob("*.errors.txt")
        text = errors.read_text(encoding="utf-8")
        self.assertIn("AIRIS20250701.zip", text)
        self.assertIn("over [gateway] max_file_size (1,024 bytes): refused unread", text)
        self.assertEqual(os.listdir(self.spool / "outbox" / "airis"), [])
        self.assertEqual(os.listdir(self.spool / "outbox" / "airis-register"), [])
        self.assertEqual([r[0] for r in self.audit_records() if r[0].startswith("airis.")], ["airis.rejected"])
        (row,) = self.ledger.list_transfers(flow="airis-reconcile")
        self.assertEqual((row.state, row.blob_id), ("QUARANTINED", None))  # nothing of the inputs kept
        (report,) = (self.base / "state" / "reports").glob("erasure-*.csv")
        self.assertIn("outbox/airis-register/REG2W.dat", report.read_text(encoding="utf-8-sig"))


class _Crash(BaseException):
    """Stands for kill -9 at a crash point: nothing after it runs (the process state is dropped)."""


class AirisFlowResumeTests(AirisFlowCase):
    """The run cut at each crash point (as the kill -9 integration test does, in process): the next check finishes
    it — one set of results, the counts of the run for the metric, one audit record, the inputs listed once."""

    def paths(self) -> FlowPaths:
        settings = self.config.flows["airis-reconcile"]
        return FlowPaths(airis_outbox=self.config.spool_path(settings.airis_outbox),
                         register_outbox=self.config.spool_path(settings.register_outbox),
                         inbox=self.config.spool_path(settings.inbox),
                         quarantine=self.config.spool_path("quarantine/airis-reconcile"),
                         airis_label=settings.airis_outbox, register_label=settings.register_outbox)

    def check(self, seconds: float) -> FlowRun | None:
        import datetime

        from kei_gateway.operations.purge.execute import append_input_erasures, reports_directory

        now = datetime.datetime.fromtimestamp(1_750_000_000 + seconds, datetime.timezone.utc)
        return run_flow_once(self.paths(), lg_code="131202", store=open_store(self.config, {}), ledger=self.ledger,
                             now=now, note_erased=partial(append_input_erasures, reports_directory(self.config)))

    def test_when_a_run_is_cut_at_any_crash_point_then_the_next_check_finishes_it_exactly_once(self) -> None:
        from kei_gateway.flows import airis_reconcile

        for number, point in enumerate(p for p in POINTS if p.startswith("airis.")):
            with self.subTest(point=point):
                self.put_inputs()

                def crash(name: str, at: str = point) -> None:
                    if name == at:
                        raise _Crash(name)

                self.patch(airis_reconcile, "crashpoint", crash)
                with self.assertRaises(_Crash):
                    self.check(100 * number)
                self.patch(airis_reconcile, "crashpoint", lambda name: None)
                run = self.check(100 * number + 60)
                assert run is not None and run.reconciled is not None
                self.assertEqual(run.counts, self.case.expected)
                self.assertEqual(run.resumed, point not in ("airis.inputs-recorded",))
                self.assertIsNone(self.check(100 * number + 61))  # nothing left to do
                inbox = sorted(os.listdir(self.spool / "inbox" / "airis-reconcile"))
                self.assertEqual(len(inbox), 3 * (number + 1), inbox)  # one more set per run, no staged leftovers
                self.assertEqual(os.listdir(self.spool / "outbox" / "airis"), [])
                runs = [r for r in self.audit_records() if r[0] == "airis.reconciled"]
                self.assertEqual(len(runs), number + 1)
                (report,) = (self.base / "state" / "reports").glob("erasure-*.csv")
                self.assertEqual(report.read_text(encoding="utf-8-sig").count("outbox/airis-register/REG2W.dat,"),
                                 number + 1)

    def test_when_a_refusal_over_max_file_size_is_cut_after_its_record_then_the_next_check_finishes_it_once(
            self) -> None:
        """Issue 11: the refusal was recorded after its errors file and never found again, so a kill -9 between
        its commit and the erasure made a second transfer, a second errors file and a second audit record."""
        import datetime

        from kei_gateway.operations.purge.execute import append_input_erasures, reports_directory

        ledger = self.ledger

        class CrashAfterCommit:
            """The ledger, killed just after its next transfer is committed (kill -9 between two steps)."""

            def __getattr__(self, name: str) -> object:
                return getattr(ledger, name)

            def add_transfer(self, **fields: object) -> object:
                ledger.add_transfer(**fields)  # type: ignore[arg-type]
                raise _Crash("after the refusal's commit")

        def check(seconds: float, crashing: bool) -> FlowRun | None:
            now = datetime.datetime.fromtimestamp(1_750_000_000 + seconds, datetime.timezone.utc)
            return run_flow_once(self.paths(), lg_code="131202", store=open_store(self.config, {}),
                                 ledger=CrashAfterCommit() if crashing else ledger, now=now,  # type: ignore[arg-type]
                                 note_erased=partial(append_input_erasures, reports_directory(self.config)),
                                 max_input_bytes=1024)

        self.put_inputs()
        with self.assertRaises(_Crash):
            check(0, crashing=True)
        self.assertEqual(len(os.listdir(self.spool / "outbox" / "airis-register")), 1, "cut before the erasure")
        run = check(60, crashing=False)
        assert run is not None and run.rejected is not None
        self.assertIn("REG2W.dat", run.rejected)
        self.assertIsNone(check(61, crashing=False))  # nothing left to do
        (row,) = ledger.list_transfers(flow="airis-reconcile")
        self.assertEqual((row.state, row.source_removed, row.blob_id), ("QUARANTINED", True, None))
        (errors,) = (self.spool / "quarantine" / "airis-reconcile").glob("*.errors.txt")
        self.assertEqual(errors.name, row.local_name)
        self.assertIn("refused unread", errors.read_text(encoding="utf-8"))
        self.assertEqual([r[0] for r in self.audit_records() if r[0].startswith("airis.")], ["airis.rejected"])
        self.assertEqual(os.listdir(self.spool / "outbox" / "airis"), [])
        (report,) = (self.base / "state" / "reports").glob("erasure-*.csv")
        self.assertEqual(report.read_text(encoding="utf-8-sig").count("outbox/airis-register/REG2W.dat,"), 1)

    def test_when_an_input_is_replaced_after_a_cut_run_claimed_it_then_the_new_one_is_used_and_the_old_claim_ends(
            self) -> None:
        from kei_gateway.flows import airis_reconcile
        from kei_gateway.layouts.airis import TAX_REGISTER_2W as LAYOUT

        self.put_inputs()

        def crash(name: str) -> None:
            if name == "airis.inputs-recorded":
                raise _Crash(name)

        self.patch(airis_reconcile, "crashpoint", crash)
        with self.assertRaises(_Crash):
            self.check(0)
        self.patch(airis_reconcile, "crashpoint", lambda name: None)
        register = self.spool / "outbox" / "airis-register" / "REG2W.dat"
        fewer = b"".join(render_records(LAYOUT, self.case.register[1:]))  # the tax system wrote it again, one less
        register.write_bytes(fewer)
        run = self.check(60)
        assert run is not None and run.reconciled is not None and not run.resumed
        rows = {row.id: row for row in self.ledger.list_transfers(flow="airis-reconcile")}
        stale = [row for row in rows.values() if row.last_error == "replaced before the 突合 ran"]
        self.assertEqual([(row.local_name, row.source_removed) for row in stale], [("REG2W.dat", True)])
        self.assertIn(f"register sha256={hashlib.sha256(fewer).hexdigest()}", str(run.reconciled["reason"]))
        self.assertEqual(len(os.listdir(self.spool / "inbox" / "airis-reconcile")), 3)
        runs = [r[0] for r in self.audit_records() if r[0].startswith("airis.") and r[0] != "airis.stored"]
        self.assertEqual(runs, ["airis.reconciled"])  # one run record (airis.stored: each transfer's own, issue 11)
