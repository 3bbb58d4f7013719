"""Approvals (issue 6 part 4): HELD files older than 24 h are warned about once a day; approve/cancel/list."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet import task
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from kei_gateway.adapters.ledger import TransferLedger, TransferRow, create_ledger_engine, upgrade
from kei_gateway.cli import main as cli, exitcodes
from kei_gateway.config import read_config
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.flows.outbound.held import CHECK_INTERVAL, HeldWatch, overdue_holds
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.testing import InMemoryLedger, SynchronousBlocking
from tests.unit.helpers import temporary_directory

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)
HOUR = 3600.0


def row(transfer_id: int, state: str = "HELD", created: datetime = T0) -> TransferRow:
    return TransferRow(id=transfer_id, flow="mpn-slips", direction="out", peer="mpn", state=state,
                       local_name=f"slips-{transfer_id}.dat", remote_name=None, size=1580, sha256="ab" * 32,
                       record_count=10, attempts=0, next_attempt_at=None, last_error=None, receipt_summary=None,
                       created_at=created, updated_at=created, blob_id="out-x", source_removed=True,
                       approved_by=None, remote_etag=None, relay_name=None)


class OverdueRuleTests(SynchronousTestCase):
    def test_when_a_hold_is_24_hours_old_or_less_then_nothing_is_due(self) -> None:
        warned: dict[int, float] = {}
        self.assertEqual(overdue_holds([row(1)], T0.timestamp() + 24 * HOUR, warned), [])
        self.assertEqual(warned, {})

    def test_when_a_hold_passes_24_hours_then_it_is_due_once_until_a_day_later(self) -> None:
        warned: dict[int, float] = {}
        start = T0.timestamp() + 24 * HOUR + 1
        due = overdue_holds([row(1)], start, warned)
        self.assertEqual([(d.row.id, d.hours) for d in due], [(1, 24)])
        self.assertEqual(overdue_holds([row(1)], start + 23 * HOUR, warned), [])
        again = overdue_holds([row(1)], start + 24 * HOUR, warned)
        self.assertEqual([(d.row.id, d.hours) for d in again], [(1, 48)])

    def test_when_a_transfer_is_no_longer_held_then_it_is_not_due_and_forgotten(self) -> None:
        warned = {1: T0.timestamp(), 2: T0.timestamp()}
        later = T0.timestamp() + 30 * HOUR
        due = overdue_holds([row(1, state="QUEUED"), row(2)], later, warned)
        self.assertEqual([d.row.id for d in due], [2])
        self.assertEqual(set(warned), {2})

    def test_when_several_are_overdue_then_the_oldest_comes_first(self) -> None:
        rows = [row(5, created=T0), row(3, created=T0 - timedelta(days=2))]
        due = overdue_holds(rows, T0.timestamp() + 25 * HOUR, {})
        self.assertEqual([d.row.id for d in due], [3, 5])


class HeldWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ledger = InMemoryLedger()
        self.clock = task.Clock()
        self.clock.advance(T0.timestamp())
        self.seen: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.seen.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.watch = HeldWatch(self.ledger, SynchronousBlocking(), self.clock)

    def add(self, state: S, created: datetime = T0) -> int:
        return self.ledger.add_transfer(flow="mpn-slips", direction="out", peer="mpn", local_name="slips.dat",
                                        state=state, size=1580, sha256="cd" * 32, record_count=10, blob_id="out-y",
                                        now=created).id

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.seen if e.get("kei_event") == "transfer.held_overdue"]

    def test_when_a_file_is_held_for_more_than_24_hours_then_one_warning_a_day_is_logged(self) -> None:
        held = self.add(S.HELD)
        self.add(S.QUEUED, created=T0 - timedelta(days=3))  # not held: never warned
        self.watch.startService()
        self.addCleanup(self.watch.stopService)
        self.assertEqual(self.warnings(), [])
        self.clock.advance(24 * HOUR)  # 96 checks, none of them past 24 h yet
        self.assertEqual(self.warnings(), [])
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.warnings()), 1)
        warning = self.warnings()[0]
        self.assertEqual((warning["transfer_id"], warning["flow"], warning["hours"], warning["log_level"]),
                         (held, "mpn-slips", 24, LogLevel.warn))
        self.assertEqual(warning["held_since"], "2026-11-21T09:00:00Z")
        for _ in range(int(23 * HOUR / CHECK_INTERVAL)):  # checked every 15 minutes, warned no more
            self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.warnings()), 1)
        for _ in range(int(HOUR / CHECK_INTERVAL)):
            self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.warnings()), 2)

    def test_when_more_holds_wait_than_one_check_reads_then_the_oldest_are_the_ones_read(self) -> None:
        from kei_gateway.flows.outbound import held as held_module

        oldest = self.add(S.HELD, created=T0 - timedelta(days=3))
        for _ in range(3):
            self.add(S.HELD)  # newer, not yet overdue
        self.patch(held_module, "HELD_LIMIT", 2)
        self.watch.startService()
        self.addCleanup(self.watch.stopService)
        self.assertEqual([w["transfer_id"] for w in self.warnings()], [oldest])

    def test_when_the_hold_is_approved_then_the_warnings_stop(self) -> None:
        held = self.add(S.HELD, created=T0 - timedelta(days=2))
        self.watch.startService()
        self.addCleanup(self.watch.stopService)
        self.assertEqual(len(self.warnings()), 1, "an overdue hold is warned about at start")
        self.ledger.transition(held, S.QUEUED, T0, approved_by="dummy-approver")
        self.clock.advance(3 * 86400)
        self.assertEqual(len(self.warnings()), 1)
        self.assertEqual(self.watch.last_warned, {})

    def test_when_the_ledger_cannot_be_read_then_an_error_is_logged_and_the_watch_goes_on(self) -> None:
        self.ledger.fail = OSError(5, "Input/output error")
        broken = HeldWatch(self.ledger, SynchronousBlocking(), self.clock)
        self.assertEqual(self.successResultOf(broken.check()), [])
        self.assertTrue([e for e in self.seen if e.get("kei_event") == "internal.error"])


# -- approve / cancel / list --state HELD (the CLI) ----------------------------------

@pytest.fixture
def cli_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, TransferLedger]:
    monkeypatch.setenv("SUDO_USER", "dummy-approver")
    config = tmp_path / "k.toml"
    config.write_text(demo_config_text(str(tmp_path), 9464), encoding="utf-8")
    engine = create_ledger_engine(read_config(str(config)).database_url)
    upgrade(engine)
    return config, TransferLedger(engine)


def add_held(ledger: TransferLedger, name: str, state: S = S.HELD) -> int:
    return ledger.add_transfer(flow="mpn-slips", direction="out", peer="mpn", local_name=name, state=state,
                               size=1580, sha256="ef" * 32, record_count=5000, blob_id=f"out-{name}", now=T0).id


@pytest.mark.integration  # the CLI opens the SQLite ledger file of the config
def test_when_listing_held_transfers_then_only_held_ones_are_shown(
        cli_setup: tuple[Path, TransferLedger], capsys: pytest.CaptureFixture[str]) -> None:
    config, ledger = cli_setup
    add_held(ledger, "held.dat")
    add_held(ledger, "queued.dat", S.QUEUED)
    assert cli.main(["-c", str(config), "transfers", "list", "--state", "HELD"]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "held.dat" in out and "queued.dat" not in out and "5000 rec" in out


@pytest.mark.integration  # the CLI opens the SQLite ledger file of the config
def test_when_a_held_transfer_is_cancelled_then_its_payload_stays_for_the_purge(
        cli_setup: tuple[Path, TransferLedger], capsys: pytest.CaptureFixture[str]) -> None:
    """When cancelled, then it is CANCELLED with who and why, and keeps blob_id: the daily purge erases and reports it."""
    config, ledger = cli_setup
    held = add_held(ledger, "bulk.dat")
    assert cli.main(["-c", str(config), "transfers", "cancel", str(held), "--reason", "wrong month"]) == exitcodes.OK
    row = ledger.get(held)
    assert row.state == "CANCELLED" and row.blob_id == "out-bulk.dat"
    assert row.last_error == "cancelled by dummy-approver: wrong month"
    assert "CANCELLED (by dummy-approver)" in capsys.readouterr().out
    assert cli.main(["-c", str(config), "transfers", "approve", str(held)]) == exitcodes.FAILED, "no approving it later"
