"""The purge executor on a temporary directory, a real ledger (SQLite and PostgreSQL) and a real FileBlobStore."""

from __future__ import annotations

import csv
import datetime
import io
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from kei_gateway.adapters.ledger import TransferLedger, create_ledger_engine, upgrade
from kei_gateway.adapters.ledger.models import PaymentResult, Transfer, TransferState
from kei_gateway.adapters.spool import atomic_write
from kei_gateway.adapters.store.blobs import FileBlobStore
from kei_gateway.adapters.store.keys import StoreKeyring
from kei_gateway.config import Config, config_from_string
from kei_gateway.operations.purge import PurgeLedger, last_completed, run_purge, secure_unlink
from kei_gateway.operations.purge.execute import LOCK_NAME, PurgeBusy, _lock
from kei_gateway.operations.purge.report import CSV_BOM, HEADINGS
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.testing import DUMMY_STORE_KEY

UTC = datetime.timezone.utc
DAY = 86400.0
FLOWS = """
[peers.jnks]
url = "https://127.0.0.1:1/upload/"
results_url = "https://127.0.0.1:1/results/"
ca = "/nonexistent/ca.pem"
allow = ["127.0.0.0/8"]

[peers.mpn]
url = "https://127.0.0.1:2/upload/"
results_url = "https://127.0.0.1:2/results/"
ca = "/nonexistent/ca.pem"
allow = ["127.0.0.0/8"]

[flows.jnks-payments]
peer = "jnks"
outbox = "outbox/jnks"

[flows.jnks-receipts]
peer = "jnks"
inbox = "inbox/jnks-receipts"

[flows.mpn-results]
peer = "mpn"
inbox = "inbox/mpn-results"
"""


@dataclass
class World:
    base: Path
    config: Config
    ledger: TransferLedger
    purge_ledger: PurgeLedger
    store: FileBlobStore
    start: datetime.datetime
    """Real time at set-up (file ctimes cannot be set back; the purge's clock runs from here)."""

    def add(self, *, state: TransferState, age_days: float, flow: str = "jnks-payments", direction: str = "out",
            name: str = "pay.dat", data: bytes | None = b"dummy payload\r\n", relay_name: str | None = None) -> Any:
        blob_id = None
        info = None
        if data is not None:
            blob_id = f"{direction}-{name}-{state.value}".replace("_", "-")
            info = self.store.write(blob_id, [data])
        row = self.ledger.add_transfer(
            flow=flow, direction=direction, peer="jnks" if flow.startswith("jnks") else "mpn", local_name=name,
            state=state, size=info.size if info else 0, sha256=info.sha256 if info else None, record_count=1,
            blob_id=blob_id, now=self.start - datetime.timedelta(days=age_days))
        if relay_name is not None:
            self.ledger.update(row.id, row.updated_at, relay_name=relay_name)
        return row

    def spool(self, *parts: str) -> Path:
        return self.base.joinpath("spool", *parts)

    def file(self, relative: str, data: bytes, age_days: float) -> Path:
        path = self.spool(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(str(path), [data])
        when = self.start.timestamp() - age_days * DAY
        os.utime(path, (when, when), follow_symlinks=False)
        return path

    def purge(self, days_later: float, **kw: Any) -> Any:
        at = self.start + datetime.timedelta(days=days_later)
        return run_purge(self.config, self.purge_ledger, self.store, now=lambda: at, **kw)

    def row(self, transfer_id: int) -> Any:
        with self.ledger.engine.connect() as connection:
            return connection.execute(select(Transfer).where(Transfer.id == transfer_id)).first()


@pytest.fixture
def world(tmp_path: Path, ledger_url: str) -> Iterator[World]:
    config = config_from_string(demo_config_text(str(tmp_path), 9464, extra=FLOWS))
    engine = create_ledger_engine(ledger_url)
    upgrade(engine)
    store_dir = tmp_path / "state" / "store"
    store_dir.mkdir(parents=True)
    store = FileBlobStore(str(store_dir), StoreKeyring(DUMMY_STORE_KEY))
    start = datetime.datetime.fromtimestamp(time.time(), UTC)
    yield World(tmp_path, config, TransferLedger(engine), PurgeLedger(engine), store, start)
    engine.dispose()


def test_when_the_purge_runs_then_what_is_due_is_erased_and_everything_else_is_kept(world: World) -> None:
    done = world.add(state=TransferState.DONE, age_days=2, name="done.dat")
    young = world.add(state=TransferState.DONE, age_days=0.5, name="young.dat")
    queued = world.add(state=TransferState.QUEUED, age_days=400, name="queued.dat")
    failed = world.add(state=TransferState.FAILED, age_days=400, name="failed.dat")
    receipt = world.add(state=TransferState.DONE, age_days=8, flow="jnks-receipts", direction="in", name="R001.dat")
    results = world.add(state=TransferState.DONE, age_days=8, flow="mpn-results", direction="in", name="pulled.dat",
                        relay_name="131041_relay_1.dat")
    world.file("inbox/jnks-receipts/R001.dat", b"relayed receipt\r\n", 8)
    world.file("inbox/jnks-receipts/R001.dat.end", b"", 8)
    world.file("inbox/jnks-receipts/theirs.dat", b"not ours\r\n", 100)
    world.file("inbox/mpn-results/131041_relay_1.dat", b"new results\r\n", 8)
    world.file("inbox/mpn-results/pulled.dat", b"same name as the download\r\n", 100)

    outcome = world.purge(0)

    assert outcome.ok and outcome.run is not None
    assert not world.store.exists(done.blob_id) and world.row(done.id).blob_id is None
    raw = world.row(done.id).updated_at  # SQLite: naive UTC; PostgreSQL: aware, in the server's time zone
    assert (raw if raw.tzinfo else raw.replace(tzinfo=UTC)) == world.ledger.get(done.id).updated_at
    for kept in (young, queued, failed):
        assert world.store.exists(kept.blob_id) and world.row(kept.id).blob_id == kept.blob_id
    assert not world.store.exists(receipt.blob_id) and not world.store.exists(results.blob_id)
    assert sorted(os.listdir(world.spool("inbox", "jnks-receipts"))) == ["theirs.dat"]
    assert sorted(os.listdir(world.spool("inbox", "mpn-results"))) == ["pulled.dat"]
    assert outcome.run.counts() == {"store": 3, "inbox": 3, "quarantine": 0, "ledger": 0}
    assert outcome.plan.kept_failed == (failed.id,)
    erased = {item.name: item for item in outcome.run.items}
    assert erased["inbox/jnks-receipts/R001.dat"].size == len(b"relayed receipt\r\n")
    import hashlib
    assert erased["inbox/jnks-receipts/R001.dat"].sha256 == hashlib.sha256(b"relayed receipt\r\n").hexdigest()
    assert erased["done.dat"].sha256 == done.sha256

    again = world.purge(0)
    assert again.ok and again.run is not None and again.run.items == []


def test_when_quarantine_and_ledger_retention_pass_then_files_rows_and_their_payment_results_go(world: World) -> None:
    invalid = world.add(state=TransferState.QUARANTINED, age_days=0, name="bad.dat")
    quarantine = world.spool("quarantine", "jnks-payments")
    world.file("quarantine/jnks-payments/bad.dat.errors.txt", "1 行目: エラー\n".encode(), 0)
    world.file("quarantine/jnks-payments/refused-name-1", b"moved here", 400)
    world.file("quarantine/jnks-payments/refused-name-1.errors.txt", b"name: ...\n", 0)
    os.symlink("/etc/hostname", quarantine / "link")
    (quarantine / "adir").mkdir()
    (quarantine / "adir" / "inner.dat").write_bytes(b"inside")
    old = world.add(state=TransferState.DONE, age_days=1826, flow="mpn-results", direction="in", name="old.dat",
                    data=None)
    with world.ledger.engine.begin() as connection:
        connection.execute(insert(PaymentResult).values(
            identity_key="i" * 64, match_key="m" * 64, amount_key="a" * 64, kind=1, channel="01", tax_item="01",
            pay_method="01", received_at=world.start, slip_hint="****1234", transfer_id=old.id,
            relay_name=None, recorded_at=world.start))

    early = world.purge(29)
    assert early.run is not None
    assert [i.name for i in early.run.items] == ["old.dat"]  # only the ledger row, 1826 days old
    assert early.run.payment_results == 1
    assert world.row(old.id) is None
    with world.ledger.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(PaymentResult)) == 0
    assert sorted(os.listdir(quarantine)) == ["adir", "bad.dat.errors.txt", "link", "refused-name-1",
                                              "refused-name-1.errors.txt"]
    assert world.store.exists(invalid.blob_id)

    later = world.purge(31)
    assert later.ok and later.run is not None
    assert os.listdir(quarantine) == []
    assert os.path.exists("/etc/hostname")  # the link was removed, never followed
    assert not world.store.exists(invalid.blob_id)
    assert later.run.counts() == {"store": 1, "inbox": 0, "quarantine": 5, "ledger": 0}


def test_when_a_run_erases_then_the_days_report_has_the_headings_rows_bom_and_text(world: World) -> None:
    world.add(state=TransferState.DONE, age_days=2, name="done.dat")
    world.file("inbox/jnks-receipts/R001.dat", b"x", 8)
    world.add(state=TransferState.DONE, age_days=8, flow="jnks-receipts", direction="in", name="R001.dat", data=None)
    first = world.purge(0)
    assert first.report_paths is not None
    csv_path, text_path = first.report_paths
    day = first.plan.now.astimezone(datetime.timezone(datetime.timedelta(hours=9))).strftime("%Y%m%d")
    assert csv_path.endswith(f"state/reports/erasure-{day}.csv") and text_path.endswith(f"erasure-{day}.txt")
    raw = Path(csv_path).read_bytes()
    assert raw.startswith(CSV_BOM.encode("utf-8")) and b"\r\n" in raw
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert tuple(rows[0]) == HEADINGS == ("消去日時", "ファイル名", "SHA-256", "サイズ", "区分", "理由")
    assert {r[1] for r in rows[1:]} == {"done.dat", "inbox/jnks-receipts/R001.dat"}
    done_row = next(r for r in rows[1:] if r[1] == "done.dat")
    assert len(done_row[2]) == 64 and done_row[3] == str(len(b"dummy payload\r\n")) and "保管データ" in done_row[4]
    assert "retention.payloads" in done_row[5]
    text = Path(text_path).read_text("utf-8")
    for heading in HEADINGS:
        assert heading in text
    assert "消去報告" in text and "完了 (completed)" in text and "inbox/jnks-receipts/R001.dat" in text
    assert b"dummy payload" not in raw and "dummy payload" not in text  # names and hashes, never contents

    world.add(state=TransferState.CANCELLED, age_days=2, name="cancelled.dat")
    world.purge(0)  # a second run the same day appends
    rows = list(csv.reader(io.StringIO(Path(csv_path).read_bytes().decode("utf-8-sig"), newline="")))
    assert [r[0] for r in rows].count("消去日時") == 1 and rows[0][0] == "消去日時"
    assert rows[-1][1] == "cancelled.dat" and len(rows) == 4
    assert Path(csv_path).read_bytes().count(CSV_BOM.encode("utf-8")) == 1
    assert Path(text_path).read_text("utf-8").count("完了時刻 (completed at)") == 2
    assert last_completed(os.path.dirname(text_path)) == first.plan.now.replace(microsecond=0)


class FailingStore(FileBlobStore):
    def delete(self, blob_id: str) -> bool:
        raise PermissionError(13, "Permission denied", blob_id)


def test_when_an_item_cannot_be_erased_then_the_rest_is_and_the_run_is_not_completed(world: World) -> None:
    done = world.add(state=TransferState.DONE, age_days=2, name="done.dat")
    world.file("inbox/jnks-receipts/R001.dat", b"x", 8)
    world.add(state=TransferState.DONE, age_days=8, flow="jnks-receipts", direction="in", name="R001.dat", data=None)
    failing = FailingStore(world.store.directory, world.store.keyring)
    at = world.start
    outcome = run_purge(world.config, world.purge_ledger, failing, now=lambda: at)
    assert not outcome.ok and outcome.run is not None
    assert [i.name for i in outcome.run.items] == ["inbox/jnks-receipts/R001.dat"]
    assert "done.dat" in outcome.run.errors[0] and "Permission denied" in outcome.run.errors[0]
    assert outcome.report_paths is not None
    text = Path(outcome.report_paths[1]).read_text("utf-8")
    assert "一部失敗" in text and "完了時刻" not in text
    assert last_completed(os.path.dirname(outcome.report_paths[1])) is None
    assert world.store.exists(done.blob_id)


def test_when_nothing_is_due_then_the_run_still_writes_a_report_saying_so(world: World) -> None:
    outcome = world.purge(0)
    assert outcome.run is not None and outcome.run.items == [] and outcome.report_paths is not None
    assert "消去対象なし" in Path(outcome.report_paths[1]).read_text("utf-8")
    assert Path(outcome.report_paths[0]).read_bytes() == (CSV_BOM + ",".join(HEADINGS) + "\r\n").encode("utf-8")


def test_when_a_dry_run_plans_then_nothing_changes_and_no_report_is_written(world: World) -> None:
    done = world.add(state=TransferState.DONE, age_days=2, name="done.dat")
    outcome = world.purge(0, dry_run=True)
    assert outcome.run is None and [i.name for i in outcome.plan.items] == ["done.dat"]
    assert world.store.exists(done.blob_id) and world.row(done.id).blob_id == done.blob_id
    assert not (world.base / "state" / "reports").exists()


def test_when_a_file_is_securely_unlinked_then_its_content_is_overwritten_before_the_unlink(tmp_path: Path) -> None:
    path = tmp_path / "plain.dat"
    path.write_bytes(b"secret dummy value" * 1000)
    with open(path, "rb") as still_open:  # holds the inode: what the disk blocks now contain
        size, sha256 = secure_unlink(str(path))
        assert still_open.read() == bytes(len(b"secret dummy value" * 1000))
    assert size == 18000 and sha256 is not None and not path.exists()
    assert os.listdir(tmp_path) == []


def test_when_a_file_has_another_hard_link_then_it_is_unlinked_without_destroying_the_other(tmp_path: Path) -> None:
    path = tmp_path / "plain.dat"
    path.write_bytes(b"kept by the tax system")
    os.link(path, tmp_path / "taken.dat")
    secure_unlink(str(path))
    assert not path.exists() and (tmp_path / "taken.dat").read_bytes() == b"kept by the tax system"


def test_when_the_entry_is_a_symlink_then_only_the_link_goes(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"elsewhere")
    os.symlink(target, tmp_path / "link")
    assert secure_unlink(str(tmp_path / "link")) == (0, None)
    assert target.read_bytes() == b"elsewhere" and not os.path.lexists(tmp_path / "link")


def test_when_a_purge_was_killed_after_hiding_an_inbox_file_then_the_next_run_erases_the_hidden_file(
        world: World) -> None:
    receipt = world.add(state=TransferState.DONE, age_days=8, flow="jnks-receipts", direction="in", name="R001.dat",
                        data=None)
    world.file("inbox/jnks-receipts/R001.dat", b"relayed receipt\r\n", 8)
    # secure_unlink's first step, then kill -9: the plaintext is left under a dotfile name
    os.rename(world.spool("inbox", "jnks-receipts", "R001.dat"), world.spool("inbox", "jnks-receipts", ".purge-4242-R001.dat"))
    world.file("inbox/jnks-receipts/.purge-4242-theirs.dat", b"not ours\r\n", 100)

    outcome = world.purge(0)

    assert outcome.ok and outcome.run is not None
    assert sorted(os.listdir(world.spool("inbox", "jnks-receipts"))) == [".purge-4242-theirs.dat"]
    (item,) = outcome.run.items
    assert item.name == "inbox/jnks-receipts/.purge-4242-R001.dat" and f"転送 {receipt.id}" in item.reason


def test_when_the_ledger_has_no_transfers_but_the_store_has_blobs_then_no_blob_is_erased(world: World) -> None:
    """A wrong or new database.url must not turn the whole store into "leftovers" (review finding)."""
    world.store.write("out-queued-elsewhere", [b"a payload the other ledger still queues\r\n"])
    outcome = world.purge(30)
    assert world.store.exists("out-queued-elsewhere")
    assert outcome.ok and outcome.run is not None and outcome.run.counts()["store"] == 0


def test_when_a_run_is_killed_part_way_then_the_next_run_reports_what_it_had_erased(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every erasure reaches a 消去報告, even one made by a run that never finished (kill -9)."""
    from kei_gateway.operations.purge import execute

    first = world.add(state=TransferState.DONE, age_days=2, name="first.dat")
    second = world.add(state=TransferState.DONE, age_days=2, name="second.dat")
    real_erase = execute._erase
    calls: list[str] = []

    def killed_after_one(item: Any, *args: Any) -> Any:
        if calls:
            raise KeyboardInterrupt  # stands for the kill: nothing after this line of the run happens
        calls.append(item.name)
        return real_erase(item, *args)

    monkeypatch.setattr(execute, "_erase", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        world.purge(0)
    assert not (world.base / "state" / "reports" / "erasure-*.csv").exists()
    monkeypatch.setattr(execute, "_erase", real_erase)

    outcome = world.purge(0)

    assert outcome.ok and outcome.run is not None
    reasons = {item.name: item.reason for item in outcome.run.items}
    erased_first, erased_second = (calls[0], "second.dat") if calls[0] == "first.dat" else (calls[0], "first.dat")
    assert reasons[erased_first].endswith(execute.INTERRUPTED_NOTE)  # reported from the journal
    assert not reasons[erased_second].endswith(execute.INTERRUPTED_NOTE)  # erased by this run
    assert not world.store.exists(first.blob_id) and not world.store.exists(second.blob_id)
    assert not os.path.exists(os.path.join(outcome.report_paths[0].rsplit("/", 1)[0], execute.JOURNAL_NAME))
    csv_text = open(outcome.report_paths[0], encoding="utf-8-sig").read()
    assert erased_first in csv_text and "interrupted run" in csv_text


def test_when_a_payload_is_erased_then_its_degenerations_list_goes_with_it_and_a_kept_ones_stays(
        world: World) -> None:
    from kei_gateway.adapters.store.format import degenerations_blob_id

    done = world.add(state=TransferState.DONE, age_days=2, name="done.dat")
    young = world.add(state=TransferState.DONE, age_days=0.5, name="young.dat")
    for row in (done, young):
        world.store.write(degenerations_blob_id(row.blob_id), [b"# degenerated 1 listed 1\n1\tplate_office\tx\ty\n"])

    outcome = world.purge(0)  # done is due (payloads 1d), young is not

    assert outcome.ok and outcome.run is not None
    assert not world.store.exists(done.blob_id) and not world.store.exists(degenerations_blob_id(done.blob_id))
    assert world.store.exists(young.blob_id) and world.store.exists(degenerations_blob_id(young.blob_id))
    assert [item.name for item in outcome.run.items] == ["done.dat"], "the list is part of its payload's erasure"


def hold_purge_lock(world: World) -> int:
    """The purge's lock as another run holds it (a node stopped in the middle of its purge, or 'kei-gateway purge'):
    its own open file description, so this process's run finds it taken."""
    reports = world.base / "state" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    fd = os.open(reports / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_when_another_run_holds_the_purge_lock_then_this_run_gives_up_at_once_and_erases_nothing(world: World) -> None:
    """The lock stays under the lease (an operator's 'kei-gateway purge' takes no lease, and two runs would share
    one journal), but a node stopped in the middle of a run must not hold the other node's run — nor a thread of its
    pool — for as long as it stays stopped: the run gives up after its bounded wait, and runs again later."""
    done = world.add(state=TransferState.DONE, age_days=2, name="done.dat")
    held = hold_purge_lock(world)
    try:
        with pytest.raises(PurgeBusy, match=r"another purge run holds .*\.purge\.lock .* after 0s: this run erased "
                                             r"nothing and runs again later"):
            world.purge(0, lock_wait=0.0)
        assert world.store.exists(done.blob_id) and world.row(done.id).blob_id == done.blob_id
        assert sorted(p.name for p in (world.base / "state" / "reports").iterdir()) == [LOCK_NAME], "no journal, no report"
    finally:
        os.close(held)
    outcome = world.purge(0, lock_wait=0.0)
    assert outcome.ok and [i.name for i in outcome.run.items] == ["done.dat"]


def test_when_the_purge_lock_is_freed_within_the_wait_then_the_run_takes_it_and_a_longer_hold_is_given_up(
        tmp_path: Path) -> None:
    """The wait is bounded and polls without blocking (a fake clock: no real time passes)."""
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    clock = [0.0]
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        clock[0] += seconds
        if len(naps) == 3:
            fcntl.flock(fd, fcntl.LOCK_UN)  # the other run finishes

    taken = _lock(str(tmp_path), 5.0, sleep=sleep, monotonic=lambda: clock[0])
    os.close(taken)
    assert naps == [0.25, 0.25, 0.25]
    fcntl.flock(fd, fcntl.LOCK_EX)
    naps.clear()

    def nap(seconds: float) -> None:
        naps.append(seconds)
        clock[0] += seconds

    with pytest.raises(PurgeBusy):
        _lock(str(tmp_path), 1.1, sleep=nap, monotonic=lambda: clock[0])
    assert naps == pytest.approx([0.25, 0.25, 0.25, 0.25, 0.1])
    os.close(fd)
