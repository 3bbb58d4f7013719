"""The purge planner: what is erased, across every retention boundary (just before / at / after)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kei_gateway.adapters.ledger.ledger import TransferRow
from kei_gateway.core.transfer import TransferState
from kei_gateway.operations.purge.plan import Listed, Retention, format_duration, plan_purge
from kei_gateway.operations.purge.schedule import missed_run, next_scheduled, scheduled_before

UTC = datetime.timezone.utc
JST = datetime.timezone(datetime.timedelta(hours=9))
NOW = datetime.datetime(2026, 11, 21, 15, 30, tzinfo=UTC)  # 2026-11-22 00:30 JST
DAY = 86400.0
RETENTION = Retention(payloads=DAY, inbox=7 * DAY, quarantine=30 * DAY, ledger=1826 * DAY)
SECOND = datetime.timedelta(seconds=1)
OPEN = ("RECEIVED", "VALIDATED", "HELD", "QUEUED", "SENDING", "RETRY_WAIT")


def ago(seconds: float) -> datetime.datetime:
    return NOW - datetime.timedelta(seconds=seconds)


def row(id: int = 1, *, state: str = "DONE", flow: str = "jnks-payments", direction: str = "out",
        updated: datetime.datetime = NOW, blob: str | None = "out-blob1", local_name: str = "pay-001.dat",
        relay_name: str | None = None) -> TransferRow:
    return TransferRow(id=id, flow=flow, direction=direction, peer="jnks", state=state, local_name=local_name,
                       remote_name=None, size=700, sha256="ab" * 32, record_count=10, attempts=1,
                       next_attempt_at=None, last_error=None, receipt_summary=None, created_at=updated,
                       updated_at=updated, blob_id=blob, source_removed=True, approved_by=None, remote_etag=None,
                       relay_name=relay_name)


def plan(rows: list[TransferRow], **kw: Any) -> Any:
    return plan_purge(rows, retention=RETENTION, now=NOW, **kw)


@pytest.mark.parametrize("state", ["DONE", "CANCELLED"])
def test_when_a_finished_transfer_reaches_payload_retention_then_its_blob_goes_and_not_a_second_before(state: str) -> None:
    before = plan([row(state=state, updated=ago(DAY) + SECOND)])
    at = plan([row(state=state, updated=ago(DAY))])
    after = plan([row(state=state, updated=ago(DAY) - SECOND)])
    assert before.items == ()
    for result in (at, after):
        (item,) = result.items
        assert (item.area, item.blob_id, item.transfer_id, item.name) == ("store", "out-blob1", 1, "pay-001.dat")
        assert item.sha256 == "ab" * 32 and item.size == 700
        assert "retention.payloads" in item.reason and "1d" in item.reason


@pytest.mark.parametrize("state", OPEN)
def test_when_a_transfer_is_open_then_nothing_of_it_is_ever_erased(state: str) -> None:
    result = plan([row(state=state, updated=ago(10 * 365 * DAY), direction="in", flow="jnks-receipts",
                       local_name="R.dat")],
                  inbox={"jnks-receipts": ("/in", "inbox/jnks-receipts", [Listed("R.dat", 5, ago(100 * DAY))])})
    assert result.items == ()
    assert result.kept_failed == ()


def test_when_a_transfer_failed_then_its_payload_and_row_are_kept_and_counted_as_kept() -> None:
    result = plan([row(state="FAILED", updated=ago(10 * 365 * DAY)), row(2, state="FAILED", updated=ago(DAY / 2))])
    assert result.items == ()
    assert result.kept_failed == (1,)


def test_when_a_quarantined_transfer_reaches_quarantine_retention_then_its_blob_goes() -> None:
    def quarantined(updated: datetime.datetime) -> Any:
        return plan([row(state="QUARANTINED", updated=updated, blob="quarantine-out-x")])

    assert quarantined(ago(30 * DAY) + SECOND).items == ()
    assert quarantined(ago(DAY * 2)).items == ()  # not by the payloads retention
    (item,) = quarantined(ago(30 * DAY)).items
    assert item.area == "store" and item.blob_id == "quarantine-out-x" and "retention.quarantine" in item.reason


def test_when_a_finished_transfer_reaches_ledger_retention_then_its_row_goes_last() -> None:
    old = ago(1826 * DAY)
    result = plan([row(1, state="DONE", updated=old, blob=None), row(2, state="QUARANTINED", updated=old, blob=None),
                   row(3, state="CANCELLED", updated=old + SECOND, blob=None), row(4, state="DONE", updated=old)])
    ledger = result.by_area("ledger")
    assert [i.transfer_id for i in ledger] == [1, 2, 4]
    assert [i.transfer_id for i in result.by_area("store")] == [4]
    assert result.items[-1].area == "ledger"  # payloads and files before rows


def test_when_the_ledger_has_an_audit_trail_then_records_older_than_ledger_retention_are_pruned() -> None:
    (item,) = plan([], audit=True).items
    assert item.area == "ledger" and item.audit_before == ago(1826 * DAY)
    assert plan([]).items == ()


def inbox_rows() -> list[TransferRow]:
    return [row(10, flow="jnks-receipts", direction="in", local_name="R001.dat", blob=None),
            row(11, flow="mpn-results", direction="in", local_name="pulled.dat", relay_name="relay-1.dat", blob=None),
            row(12, flow="jnks-receipts", direction="in", local_name="R002.dat", state="VALIDATED")]


def inbox_listing(since: datetime.datetime) -> dict[str, tuple[str, str, list[Listed]]]:
    return {
        "jnks-receipts": ("/spool/inbox/r", "inbox/r", [
            Listed("R001.dat", 100, since), Listed("R001.dat.end", 0, since), Listed("R002.dat", 100, since),
            Listed("theirs.dat", 100, since), Listed(".R003.dat.123.tmp", 100, since),
            Listed("R001.dat-dir", 0, since, "directory")]),
        "mpn-results": ("/spool/inbox/m", "inbox/m", [
            Listed("relay-1.dat", 258, since), Listed("pulled.dat", 258, since)]),
    }


def test_when_relayed_files_stay_in_the_inbox_past_retention_then_only_the_gateways_own_files_go() -> None:
    assert plan(inbox_rows(), inbox=inbox_listing(ago(7 * DAY) + SECOND)).items == ()
    items = plan(inbox_rows(), inbox=inbox_listing(ago(7 * DAY))).items
    assert [(i.area, i.name, i.transfer_id) for i in items] == [
        ("inbox", "inbox/r/R001.dat", 10), ("inbox", "inbox/r/R001.dat.end", 10), ("inbox", "inbox/m/relay-1.dat", 11)]
    assert items[0].directory == "/spool/inbox/r" and items[0].entry == "R001.dat"
    assert "retention.inbox" in items[0].reason and "7d" in items[0].reason


def test_when_an_inbox_file_has_the_name_of_a_transfer_of_another_flow_then_it_stays() -> None:
    rows = [row(10, flow="jnks-receipts", direction="in", local_name="R001.dat", blob=None)]
    listing = {"mpn-results": ("/m", "inbox/m", [Listed("R001.dat", 1, ago(100 * DAY))])}
    assert plan(rows, inbox=listing).items == ()


def quarantine_listing(errors_since: datetime.datetime, moved_mtime: datetime.datetime) -> dict[str, Any]:
    return {"jnks-payments": ("/spool/quarantine/jnks-payments", "quarantine/jnks-payments", [
        Listed("bad.dat.errors.txt", 50, errors_since),
        Listed("refused-name-1", 10, moved_mtime), Listed("refused-name-1.errors.txt", 40, errors_since),
        Listed("link", 0, errors_since, "symlink"), Listed("link.errors.txt", 40, errors_since)])}


def test_when_quarantine_entries_reach_their_retention_then_they_go_with_their_errors_files() -> None:
    limit = ago(30 * DAY)
    # The refused file was written long ago (its mtime) but quarantined only recently: its errors file decides.
    assert plan([], quarantine=quarantine_listing(limit + SECOND, ago(400 * DAY))).items == ()
    items = plan([], quarantine=quarantine_listing(limit, ago(400 * DAY))).items
    assert [(i.area, i.name, i.kind) for i in items] == [
        ("quarantine", "quarantine/jnks-payments/bad.dat.errors.txt", "file"),
        ("quarantine", "quarantine/jnks-payments/link", "symlink"),
        ("quarantine", "quarantine/jnks-payments/link.errors.txt", "file"),
        ("quarantine", "quarantine/jnks-payments/refused-name-1", "file"),
        ("quarantine", "quarantine/jnks-payments/refused-name-1.errors.txt", "file")]
    assert all("retention.quarantine" in i.reason for i in items)


def test_when_a_blob_is_referenced_by_no_transfer_then_it_goes_after_payload_retention() -> None:
    blobs = [Listed("orphan", 99, ago(DAY)), Listed("young-orphan", 99, ago(DAY) + SECOND), Listed("out-blob1", 9, ago(9 * DAY)),
             Listed("held", 9, ago(9 * DAY))]
    items = plan([row(state="QUEUED")], blobs=blobs, referenced_blobs={"held"}).items
    assert [(i.area, i.blob_id, i.transfer_id) for i in items] == [("store", "orphan", None)]
    assert plan([], blobs=blobs).items == ()  # without the referenced set nothing is judged unreferenced


def test_when_a_days_report_reaches_ledger_retention_then_it_goes() -> None:
    # The report of day D covers until D+1 00:00 JST; it goes retention.ledger after that.
    end_of_day = NOW.astimezone(JST).replace(hour=0, minute=0, second=0, microsecond=0) - datetime.timedelta(days=1826)
    old = (end_of_day - datetime.timedelta(days=1)).strftime("%Y%m%d")
    young = end_of_day.strftime("%Y%m%d")
    reports = [Listed(f"erasure-{old}.csv", 1, NOW), Listed(f"erasure-{old}.txt", 1, NOW),
               Listed(f"erasure-{young}.txt", 1, NOW), Listed(".purge.lock", 0, NOW), Listed("notes.txt", 1, NOW)]
    items = plan([], reports=reports).items
    assert [i.name for i in items] == [f"reports/erasure-{old}.csv", f"reports/erasure-{old}.txt"]


def test_when_retention_is_written_then_the_report_uses_the_config_units() -> None:
    assert [format_duration(s) for s in (86400, 7 * 86400, 3600 * 5, 90, 45)] == ["1d", "7d", "5h", "90s", "45s"]


def test_when_the_daemon_starts_then_a_missed_purge_is_found_from_the_last_completed_run() -> None:
    at = (0, 30)
    start = datetime.datetime(2026, 11, 22, 9, 0, tzinfo=JST)
    due = datetime.datetime(2026, 11, 22, 0, 30, tzinfo=JST)
    assert scheduled_before(start, at) == due
    assert missed_run(None, start, at) == due
    assert missed_run(due - SECOND, start, at) == due
    assert missed_run(due + SECOND, start, at) is None
    # Before today's 00:30, yesterday's run is the one due.
    early = datetime.datetime(2026, 11, 22, 0, 29, tzinfo=JST)
    assert missed_run(due - datetime.timedelta(hours=12), early, at) is None
    assert missed_run(due - datetime.timedelta(days=1, seconds=1), early, at) == due - datetime.timedelta(days=1)


def test_when_the_next_run_is_computed_then_it_is_purge_at_in_jst_across_the_day_boundary() -> None:
    at = (0, 30)
    evening = datetime.datetime(2026, 11, 21, 23, 59, tzinfo=JST)
    assert next_scheduled(evening, at) == datetime.datetime(2026, 11, 22, 0, 30, tzinfo=JST)
    exactly = datetime.datetime(2026, 11, 22, 0, 30, tzinfo=JST)
    assert next_scheduled(exactly, at) == datetime.datetime(2026, 11, 23, 0, 30, tzinfo=JST)
    assert next_scheduled(exactly.astimezone(UTC), at).tzinfo == UTC


def test_when_states_are_listed_then_the_open_ones_are_those_that_still_need_something() -> None:
    assert set(OPEN) | {"DONE", "CANCELLED", "QUARANTINED", "FAILED"} == {s.value for s in TransferState}


def test_when_an_interrupted_purge_left_a_relayed_file_hidden_then_it_goes_only_past_the_inbox_retention() -> None:
    rows = [row(10, flow="jnks-receipts", direction="in", local_name="R001.dat", blob=None)]

    def listing(since: datetime.datetime) -> dict[str, Any]:
        return {"jnks-receipts": ("/in", "inbox/r", [Listed(".purge-77-R001.dat", 9, since),
                                                     Listed(".purge-77-R001.dat.end", 0, since),
                                                     Listed(".purge-77-theirs.dat", 9, ago(100 * DAY))])}

    assert plan(rows, inbox=listing(ago(7 * DAY) + SECOND)).items == ()
    items = plan(rows, inbox=listing(ago(7 * DAY))).items
    assert [(i.name, i.entry, i.transfer_id) for i in items] == [
        ("inbox/r/.purge-77-R001.dat", ".purge-77-R001.dat", 10), ("inbox/r/.purge-77-R001.dat.end", ".purge-77-R001.dat.end", 10)]
