"""``kei-gateway results reconcile`` end to end against a temporary SQLite ledger built by the migrations."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import Any

import pytest

from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine, upgrade
from kei_gateway.adapters.ledger.results import ResultLedger
from kei_gateway.cli import main as cli, exitcodes
from kei_gateway.config import read_config
from kei_gateway.core.jst import JST
from kei_gateway.core.results import ResultKeyer, facts_of
from kei_gateway.core.transfer import TransferState as S
from kei_gateway.layouts import Record, ValidationOptions, generate_file, get_layout, parse_records
from kei_gateway.sim.harness import demo_config_text

LAYOUT = get_layout("mpn-results")
TODAY = dt.date(2026, 11, 21)
RECORDS: list[Record] = list(parse_records([b"".join(generate_file(LAYOUT, 10, seed=5, today=TODAY))], LAYOUT,
                                           ValidationOptions(today=TODAY)))
KEYER = ResultKeyer([b"\x07" * 32])
DAY = dt.date(2026, 3, 2)
AT = dt.datetime(2026, 3, 2, 10, 15, 0)  # 収納日時, JST wall-clock time as the layout parses it
MPN_FLOW = """
[peers.mpn]
url = "https://127.0.0.1:9/upload/"
results_url = "https://127.0.0.1:9/results/"
ca = "{base}/credentials/ca.pem"
allow = ["127.0.0.0/8"]

[flows.mpn-results]
peer = "mpn"
inbox = "inbox/mpn-results"
unconfirmed_after = "{limit}"
"""


def write_config(tmp_path: Path, limit: str | None = None) -> Path:
    config = tmp_path / "k.toml"
    extra = MPN_FLOW.format(base=tmp_path, limit=limit) if limit else ""
    config.write_text(demo_config_text(str(tmp_path), 9464, extra=extra), encoding="utf-8")
    return config


def record_results(config: Path, specs: list[tuple[int, str, dict[str, Any]]]) -> None:
    """Record results through ResultLedger: (record number, 収納区分, field changes)."""
    engine = create_ledger_engine(read_config(str(config)).database_url)
    upgrade(engine)
    now = dt.datetime.now(dt.timezone.utc)
    transfer = TransferLedger(engine).add_transfer(
        flow="mpn-results", direction="in", peer="mpn", local_name="r.dat", state=S.VALIDATED, size=258,
        sha256="0" * 64, record_count=len(specs), blob_id=None, now=now).id
    facts = [facts_of({**RECORDS[number], "result_kind": kind, **changes}, i, KEYER)
             for i, (number, kind, changes) in enumerate(specs)]
    ResultLedger(engine).record_relay(transfer, facts, "relay.dat", now, f"{len(facts)} new", done=True)
    engine.dispose()


def run(config: Path, *argv: str) -> int:
    return cli.main(["-c", str(config), "results", "reconcile", *argv])


def slip(number: int) -> str:
    return str(RECORDS[number]["slip_no"])


@pytest.fixture
def day_of_results(tmp_path: Path) -> Path:
    config = write_config(tmp_path)
    record_results(config, [
        (0, "1", {"received_at": AT, "channel": "05"}), (0, "2", {"received_at": AT, "channel": "05"}),  # confirmed
        (1, "1", {"received_at": AT, "channel": "02"}),                                                    # unconfirmed
        (2, "1", {"received_at": AT, "channel": "02", "amount_paid": 1000}),
        (2, "2", {"received_at": AT, "channel": "02", "amount_paid": 1200}),                               # mismatch
        (3, "3", {"received_at": AT, "channel": "01"}),                                                    # orphan 取消
        (4, "1", {"received_at": AT + dt.timedelta(days=1), "channel": "01"}),                             # next day
    ])
    return config


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_reconciling_a_day_then_counts_per_channel_and_problems_are_printed_without_personal_values(
        day_of_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(day_of_results, "--date", DAY.isoformat()) == exitcodes.OK
    out = capsys.readouterr().out
    assert "収納日 (received on) 2026-03-02" in out
    assert "[flows.mpn-results] が設定されていない" in out and "3日 (3d)" in out, "the default limit is said"
    assert "05 コンビニエンスストア" in out and "02 ATM（ペイジー）" in out and "01 金融機関窓口" in out
    totals = {line.split(" (")[0]: line.split()[-1] for line in out.splitlines() if " (" in line and line[:1] != " "}
    assert totals["速報"] == "3" and totals["確認済"] == "1" and totals["未確報・期限超過"] == "1"
    assert totals["金額不一致"] == "1" and totals["速報なしの取消"] == "1"
    assert "要確認 (to check): 3 件" in out
    for number in (1, 2, 3):
        assert "…" + slip(number)[-4:] in out
    for number in range(5):
        assert slip(number) not in out and str(RECORDS[number]["payer_name"]) not in out
    assert "…" + slip(4)[-4:] not in out, "the next day's result is not in this day"


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_asked_for_csv_then_an_excel_readable_file_holds_the_same_report(
        day_of_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "reconcile.csv"
    assert run(day_of_results, "--date", DAY.isoformat(), "--csv", str(target)) == exitcodes.OK
    assert f"CSV: {target}" in capsys.readouterr().out
    data = target.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    total = next(r for r in rows if r[:2] == ["", "合計 (total)"])
    headings = rows[1]
    assert total[headings.index("速報 (provisional)")] == "3"
    assert total[headings.index("確認済 (confirmed)")] == "1"
    problems = {(r[1], r[5]) for r in rows[rows.index([]) + 3:]}
    assert problems == {("02", "unconfirmed"), ("02", "mismatched"), ("01", "cancel_without_provisional")}
    assert all(slip(n).encode() not in data for n in range(5))


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_check_is_asked_and_something_needs_a_person_then_the_exit_status_is_1(
        day_of_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(day_of_results, "--date", DAY.isoformat(), "--check") == exitcodes.FAILED
    assert run(day_of_results, "--date", "2026-03-04", "--check") == exitcodes.OK
    assert "no payment results in this period" in capsys.readouterr().out


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_since_is_given_then_every_later_day_is_included(
        day_of_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(day_of_results, "--since", DAY.isoformat()) == exitcodes.OK
    out = capsys.readouterr().out
    assert "2026-03-02 以降" in out and "…" + slip(4)[-4:] in out


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_flow_sets_the_limit_then_younger_provisionals_are_pending_or_overdue_by_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, limit="2h")
    now_jst = dt.datetime.now(JST).replace(tzinfo=None, microsecond=0)
    record_results(config, [(0, "1", {"received_at": now_jst - dt.timedelta(minutes=30)}),
                            (1, "1", {"received_at": now_jst - dt.timedelta(hours=3)})])
    assert run(config, "--since", (now_jst.date() - dt.timedelta(days=1)).isoformat(), "--check") == exitcodes.FAILED
    out = capsys.readouterr().out
    assert "2時間 (2h)" in out and "設定されていない" not in out
    totals = {line.split(" (")[0]: line.split()[-1] for line in out.splitlines() if " (" in line and line[:1] != " "}
    assert (totals["確報待ち"], totals["未確報・期限超過"]) == ("1", "1")


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_date_is_malformed_then_it_is_a_usage_error(
        day_of_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(day_of_results, "--date", "21.11.2026")
    assert exited.value.code == exitcodes.USAGE
    assert "write YYYY-MM-DD" in capsys.readouterr().err


def test_when_there_is_no_ledger_then_it_fails_and_creates_none(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    database = Path(read_config(str(config)).database_url.removeprefix("sqlite:///"))
    assert run(config) == exitcodes.FAILED
    assert "no ledger at" in capsys.readouterr().err
    assert not database.exists()


@pytest.mark.integration  # opens a SQLite ledger file
def test_when_the_ledger_predates_the_results_table_then_it_says_to_upgrade(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    engine = create_ledger_engine(read_config(str(config)).database_url)
    upgrade(engine, "0003")
    engine.dispose()
    assert run(config) == exitcodes.FAILED
    assert "kei-gateway db upgrade" in capsys.readouterr().err
