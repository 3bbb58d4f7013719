"""Ingest (SPEC §4): validate, encrypt, commit, remove the original — and crash leftovers."""

from __future__ import annotations

import datetime
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from kei_gateway.adapters.scratch import EncryptedScratch, ScratchError
from kei_gateway.adapters.store.blobs import FileBlobStore
from kei_gateway.adapters.store.keys import StoreKeyring
from kei_gateway.flows.outbound.ingest import IngestResult, ingest_file, listed_name, quarantine_refused
from kei_gateway.layouts import ValidationOptions, generate_file, get_layout
from kei_gateway.testing import InMemoryLedger
from kei_gateway.adapters.store.format import degenerations_blob_id
from kei_gateway.layouts import parse_degenerations

NOW = datetime.datetime(2026, 11, 21, 9, 0, tzinfo=datetime.timezone.utc)
TODAY = datetime.date(2026, 11, 21)
LAYOUT = get_layout("jnks-payments")


class Spool:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.outbox = base / "outbox" / "jnks"
        self.quarantine = base / "quarantine" / "jnks-payments"
        self.outbox.mkdir(parents=True)
        self.ledger = InMemoryLedger()
        self.store = FileBlobStore(str(base / "store"), StoreKeyring(secrets.token_bytes(32)))

    def put(self, name: str, records: int = 5, invalid_rate: float = 0.0, seed: int = 1) -> bytes:
        data = b"".join(generate_file(LAYOUT, records, seed=seed, today=TODAY, invalid_rate=invalid_rate,
                                      lg_code="131041"))
        (self.outbox / name).write_bytes(data)
        return data

    def ingest(self, name: str, hold: int = 0, marker: str | None = None,
               options: ValidationOptions | None = None) -> IngestResult:
        return ingest_file(flow="jnks-payments", peer="jnks", outbox_dir=str(self.outbox),
                           quarantine_dir=str(self.quarantine), name=name, marker=marker, layout=LAYOUT,
                           options=options or ValidationOptions(today=TODAY, lg_code="131041"), hold_over_records=hold,
                           store=self.store, ledger=self.ledger, now=NOW)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    yield Spool(tmp_path)


def test_when_a_valid_file_is_ingested_then_it_is_queued_encrypted_and_the_original_is_gone(spool: Spool) -> None:
    data = spool.put("pay1.dat")
    result = spool.ingest("pay1.dat")
    assert result.outcome == "queued" and result.records == 5
    assert os.listdir(spool.outbox) == []
    assert result.transfer_id is not None
    row = spool.ledger.get(result.transfer_id)
    assert row.state == "QUEUED" and row.source_removed and row.record_count == 5 and row.size == len(data)
    assert row.blob_id is not None and b"".join(spool.store.read(row.blob_id)) == data
    stored = spool.base / "store" / str(row.blob_id)
    assert stored.exists() and data[:40] not in stored.read_bytes(), "the store holds no plaintext"


def test_when_a_file_has_more_records_than_the_hold_limit_then_it_is_held(spool: Spool) -> None:
    spool.put("bulk.dat", records=11)
    assert spool.ingest("bulk.dat", hold=10).outcome == "held"


def test_when_a_file_is_invalid_then_it_is_kept_encrypted_with_full_errors_and_the_plaintext_is_gone(
        spool: Spool) -> None:
    data = spool.put("bad.dat", records=20, invalid_rate=0.5, seed=3)
    result = spool.ingest("bad.dat")
    assert result.outcome == "quarantined" and result.error_count > 0
    assert os.listdir(spool.outbox) == []
    assert sorted(os.listdir(spool.quarantine)) == ["bad.dat.errors.txt"], "no plaintext copy in quarantine/"
    errors = (spool.quarantine / "bad.dat.errors.txt").read_text(encoding="utf-8")
    assert "record " in errors and "nothing of this file was sent" in errors
    assert f"kei-gateway transfers export {result.transfer_id}" in errors
    assert result.transfer_id is not None
    row = spool.ledger.get(result.transfer_id)
    assert row.state == "QUARANTINED" and row.source_removed and row.blob_id is not None
    assert b"".join(spool.store.read(row.blob_id)) == data, "the original, byte for byte, encrypted"
    assert data[:40] not in (spool.base / "store" / row.blob_id).read_bytes()
    assert result.reason.startswith(("record ", "file"))
    assert spool.ledger.due("jnks-payments", NOW) == [], "a quarantined file is never sent"


def test_when_the_daemon_crashed_after_commit_before_unlink_then_the_rescan_finishes_without_a_duplicate(
        spool: Spool) -> None:
    data = spool.put("pay1.dat")
    first = spool.ingest("pay1.dat")
    (spool.outbox / "pay1.dat").write_bytes(data)  # as if the unlink never happened …
    assert first.transfer_id is not None
    spool.ledger.update(first.transfer_id, NOW, source_removed=False)
    again = spool.ingest("pay1.dat")
    assert again.outcome == "resumed" and again.transfer_id == first.transfer_id
    assert os.listdir(spool.outbox) == []
    assert len(spool.ledger.list_transfers()) == 1 and len(spool.store.list_ids()) == 1


def test_when_the_same_file_is_sent_again_later_then_it_is_a_new_transfer(spool: Spool) -> None:
    spool.put("pay1.dat")
    first = spool.ingest("pay1.dat")
    spool.put("pay1.dat")
    second = spool.ingest("pay1.dat")
    assert second.outcome == "queued" and second.transfer_id != first.transfer_id


def test_when_a_marker_file_announced_the_data_then_both_are_removed(spool: Spool) -> None:
    spool.put("pay1.dat")
    (spool.outbox / "pay1.dat.end").write_bytes(b"")
    assert spool.ingest("pay1.dat", marker="pay1.dat.end").outcome == "queued"
    assert os.listdir(spool.outbox) == []


def test_when_the_file_became_a_symlink_then_it_is_not_followed_but_quarantined(spool: Spool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.dat"
    secret.write_bytes(b"not for the peer")
    os.symlink(secret, spool.outbox / "pay1.dat")
    result = spool.ingest("pay1.dat")
    assert result.outcome == "quarantined"
    assert os.path.islink(spool.quarantine / "pay1.dat") and spool.store.list_ids() == []


def test_when_an_entry_has_a_bad_name_then_it_is_kept_encrypted_under_a_safe_name_never_in_plaintext(
        spool: Spool) -> None:
    """Rewritten (issue 11): the refused file used to be moved to quarantine/ as it was, in plaintext."""
    (spool.outbox / "納付 1.dat").write_bytes(b"A\r\n")
    result = refuse_name(spool, "納付 1.dat")
    listed = listed_name("納付 1.dat")
    assert result.outcome == "quarantined" and listed.startswith("refused-name-")
    assert os.listdir(spool.outbox) == []
    assert sorted(os.listdir(spool.quarantine)) == [listed + ".errors.txt"], "only the errors file, no payload"
    errors = (spool.quarantine / (listed + ".errors.txt")).read_text(encoding="utf-8")
    assert ascii("納付 1.dat") in errors and f"transfers export {result.transfer_id}" in errors
    assert result.transfer_id is not None
    row = spool.ledger.get(result.transfer_id)
    assert row.state == "QUARANTINED" and row.source_removed and row.local_name == listed
    assert row.blob_id is not None and b"".join(spool.store.read(row.blob_id)) == b"A\r\n"
    assert b"A\r\n" not in (spool.base / "store" / row.blob_id).read_bytes()


def refuse_name(spool: Spool, name: str) -> IngestResult:
    return quarantine_refused("jnks-payments", str(spool.outbox), str(spool.quarantine), name, "name",
                              "the name must match …", spool.ledger, "jnks", NOW, spool.store)


class Crash(BaseException):
    """kill -9 stand-in: nothing after the point runs."""


@pytest.mark.parametrize("point", ["ingest.quarantine-committed", "ingest.quarantine-listed"])
@pytest.mark.parametrize("kind", ["invalid", "bad name"])
def test_when_a_quarantine_is_cut_off_after_its_commit_then_the_rescan_finishes_it_as_one_transfer(
        spool: Spool, monkeypatch: pytest.MonkeyPatch, point: str, kind: str) -> None:
    name = "pay1.dat" if kind == "invalid" else "納付.dat"
    if kind == "invalid":
        spool.put(name, invalid_rate=1.0)
    else:
        (spool.outbox / name).write_bytes(b"A\r\n")

    def take() -> IngestResult:
        return spool.ingest(name) if kind == "invalid" else refuse_name(spool, name)

    def crash(at: str) -> None:
        if at == point:
            raise Crash(at)

    monkeypatch.setattr("kei_gateway.flows.outbound.ingest.crashpoint", crash)
    with pytest.raises(Crash):
        take()
    monkeypatch.setattr("kei_gateway.flows.outbound.ingest.crashpoint", lambda at: None)
    result = take()
    assert result.outcome == "quarantined"
    rows = spool.ledger.list_transfers()
    assert [row.id for row in rows] == [result.transfer_id] and rows[0].source_removed
    assert spool.store.list_ids() == [rows[0].blob_id], "one encrypted copy"
    assert os.listdir(spool.outbox) == []
    listed = listed_name(name)
    assert sorted(os.listdir(spool.quarantine)) == [listed + ".errors.txt"], "one errors file, no payload"


def test_when_a_link_is_cut_off_after_its_record_then_the_rescan_moves_it_without_a_second_record(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    os.symlink("/etc/hostname", spool.outbox / "link.dat")
    real = os.rename
    monkeypatch.setattr("kei_gateway.adapters.spool.os.rename", lambda *a: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        quarantine_refused("jnks-payments", str(spool.outbox), str(spool.quarantine), "link.dat", "symlink",
                           "never followed", spool.ledger, "jnks", NOW, spool.store)
    monkeypatch.setattr("kei_gateway.adapters.spool.os.rename", real)
    result = quarantine_refused("jnks-payments", str(spool.outbox), str(spool.quarantine), "link.dat", "symlink",
                                "never followed", spool.ledger, "jnks", NOW, spool.store)
    assert [row.id for row in spool.ledger.list_transfers()] == [result.transfer_id]
    assert os.path.islink(spool.quarantine / "link.dat") and os.listdir(spool.outbox) == []


def test_when_a_file_cannot_be_read_then_it_is_skipped_with_its_reason_and_left_in_the_outbox(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    spool.put("pay1.dat")
    real = os.open

    def denied(path: str, *args: object) -> int:
        if str(path).endswith("pay1.dat"):
            raise PermissionError(13, "Permission denied", path)
        return real(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr("kei_gateway.flows.outbound.ingest.os.open", denied)
    result = spool.ingest("pay1.dat")
    assert result.outcome == "skipped" and "umask" in result.reason
    assert os.listdir(spool.outbox) == ["pay1.dat"] and spool.ledger.list_transfers() == []


def test_when_the_file_vanished_before_ingest_then_nothing_happens(spool: Spool) -> None:
    assert spool.ingest("gone.dat").outcome == "vanished"
    assert spool.ledger.list_transfers() == []


def put_with_duplicate(spool: Spool, name: str, records: int, source: int, target: int) -> bytes:
    """A valid file whose record ``target`` (0-based) repeats the (chassis_no, tax_year) of record ``source``."""
    lines = list(generate_file(LAYOUT, records, seed=4, today=TODAY, lg_code="131041"))
    record = bytearray(lines[target])
    for key in ("chassis_no", "tax_year"):
        start, end = LAYOUT.offsets[key], LAYOUT.offsets[key] + LAYOUT[key].width
        record[start:end] = lines[source][start:end]
    lines[target] = bytes(record)
    data = b"".join(lines)
    (spool.outbox / name).write_bytes(data)
    return data


def test_when_a_file_repeats_a_key_then_the_second_read_finds_it_at_the_later_record_and_it_is_quarantined(
        spool: Spool) -> None:
    put_with_duplicate(spool, "dup.dat", records=6000, source=2, target=5000)
    result = spool.ingest("dup.dat")
    assert result.outcome == "quarantined" and result.error_count == 1
    assert result.reason.startswith("record 5001, byte 350018: 車台番号 (chassis_no): repeats the (chassis_no, tax_year)")
    assert os.listdir(spool.outbox) == []


def spill_everything(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[EncryptedScratch]:
    """Make every file's key log go to the ingest's scratch (as a file over ~2 M records does), in tmp_path."""
    from kei_gateway.flows.outbound import ingest
    from kei_gateway.layouts import uniqueness

    made: list[EncryptedScratch] = []

    def scratch() -> EncryptedScratch:
        made.append(EncryptedScratch(str(tmp_path)))
        return made[-1]

    monkeypatch.setattr(uniqueness, "log_capacity_for", lambda records, largest: None)
    monkeypatch.setattr(ingest.ingest_file, "__kwdefaults__", {**(ingest.ingest_file.__kwdefaults__ or {}),
                                                               "scratch": scratch})
    return made


def test_when_the_key_log_is_spilled_then_a_valid_file_is_read_once_and_the_scratch_leaves_nothing(
        spool: Spool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scratch_dir = tmp_path / "scratch"
    scratch_dir.mkdir()
    made = spill_everything(monkeypatch, scratch_dir)
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, size: int) -> bytes:
        chunk = real_read(fd, size)
        reads.append(len(chunk))
        return chunk

    data = spool.put("pay1.dat", records=3000)
    monkeypatch.setattr(os, "read", counting_read)
    result = spool.ingest("pay1.dat")
    monkeypatch.undo()
    assert result.outcome == "queued" and result.records == 3000
    assert sum(reads) == len(data)  # one read of the file: no second read for a valid file
    assert len(made) == 1 and made[0].size > 3000 * 8  # every key's fingerprint went to the scratch
    assert os.listdir(scratch_dir) == []  # unnamed: nothing left behind


def test_when_the_key_log_is_spilled_and_a_key_repeats_then_the_record_is_named_and_the_file_quarantined(
        spool: Spool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    made = spill_everything(monkeypatch, tmp_path / "scratch")
    (tmp_path / "scratch").mkdir()
    put_with_duplicate(spool, "dup.dat", records=3000, source=2, target=2500)
    result = spool.ingest("dup.dat")
    assert result.outcome == "quarantined" and result.error_count == 1 and len(made) == 1
    assert result.reason.startswith("record 2501, byte 175018: 車台番号 (chassis_no): repeats the (chassis_no, tax_year)")


def test_when_the_scratch_cannot_be_written_then_the_ingest_fails_the_file_stays_and_nothing_is_stored(
        spool: Spool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spill_everything(monkeypatch, tmp_path / "missing")  # the directory does not exist
    spool.put("pay1.dat", records=100)
    with pytest.raises(ScratchError, match="the scratch file of the uniqueness check in .*missing"):
        spool.ingest("pay1.dat")
    assert os.listdir(spool.outbox) == ["pay1.dat"]
    assert spool.store.list_ids() == [] and spool.ledger.list_transfers() == []


def test_when_the_key_filter_leaves_false_suspects_then_a_valid_file_is_still_queued(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    from kei_gateway.flows.outbound import ingest
    from kei_gateway.layouts import Validator

    rescans: list[int] = []

    class TinyFilterValidator(Validator):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            # A 64-bit Bloom filter instead of the ingest's key log (spilled to its scratch): false suspects.
            super().__init__(*args, **{**kwargs, "filter_bits_log2": 6, "fast_path": False, "scratch": None})

        def rescan(self, chunks):  # type: ignore[no-untyped-def]
            rescans.append(1)
            return super().rescan(chunks)

    monkeypatch.setattr(ingest, "Validator", TinyFilterValidator)
    spool.put("pay1.dat", records=300)
    result = spool.ingest("pay1.dat")
    assert rescans == [1]
    assert result.outcome == "queued" and result.records == 300


def test_when_the_file_changes_between_the_two_reads_then_nothing_is_stored_and_it_stays_for_the_next_scan(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    from kei_gateway.flows.outbound import ingest
    from kei_gateway.layouts import Validator

    class ChangingFile(Validator):
        def rescan(self, chunks):  # type: ignore[no-untyped-def]
            raise ValueError("the file changed between the two reads of its validation; validate it again")

    monkeypatch.setattr(ingest, "Validator", ChangingFile)
    put_with_duplicate(spool, "dup.dat", records=20, source=1, target=10)
    with pytest.raises(ValueError, match="changed"):
        spool.ingest("dup.dat")
    assert os.listdir(spool.outbox) == ["dup.dat"]
    assert spool.store.list_ids() == [] and spool.ledger.list_transfers() == []


def test_when_a_file_is_taken_or_quarantined_then_its_audit_record_is_written_with_the_transfer(spool: Spool) -> None:
    spool.put("pay1.dat")
    spool.put("bad.dat", invalid_rate=1.0, seed=2)
    queued, quarantined = spool.ingest("pay1.dat"), spool.ingest("bad.dat")
    assert [(event, fields["transfer_id"]) for event, fields in spool.ledger.audit] == [
        ("ingest.queued", queued.transfer_id), ("ingest.quarantined", quarantined.transfer_id)]
    assert "pay1.dat" not in repr(spool.ledger.audit) and "bad.dat" not in repr(spool.ledger.audit)


def test_when_utf8_mj_characters_are_degenerated_then_the_list_is_kept_encrypted_beside_the_payload(
        spool: Spool) -> None:
    data = b"".join(generate_file(LAYOUT, 200, seed=4, today=TODAY, lg_code="131041", encoding="utf-8",
                                  mj_rate=0.1))
    (spool.outbox / "std.dat").write_bytes(data)
    options = ValidationOptions(today=TODAY, lg_code="131041", encoding="utf-8", gaiji="degenerate")
    result = spool.ingest("std.dat", options=options)
    assert result.outcome == "queued" and result.degenerated > 0
    assert result.transfer_id is not None
    row = spool.ledger.get(result.transfer_id)
    assert row.blob_id is not None
    document = b"".join(spool.store.read(degenerations_blob_id(row.blob_id)))
    entries = parse_degenerations(document)
    assert document.startswith(f"# degenerated {result.degenerated} listed {result.degenerated} maps ".encode())
    assert len(entries) == result.degenerated and {e.key for e in entries} == {"plate_office"}
    stored = (spool.base / "store" / degenerations_blob_id(row.blob_id)).read_bytes()
    assert entries[0].source.encode("utf-8") not in stored, "the list is encrypted at rest"
    payload = b"".join(spool.store.read(row.blob_id))
    assert all(e.target.encode("cp932") in payload.splitlines()[e.record - 1] for e in entries)


def test_when_nothing_is_degenerated_then_no_list_is_written(spool: Spool) -> None:
    spool.put("plain.dat")
    options = ValidationOptions(today=TODAY, lg_code="131041", gaiji="degenerate")
    result = spool.ingest("plain.dat", options=options)
    assert result.outcome == "queued" and result.degenerated == 0 and result.transfer_id is not None
    blob_id = spool.ledger.get(result.transfer_id).blob_id
    assert blob_id is not None and not spool.store.exists(degenerations_blob_id(blob_id))


def test_when_chunks_go_through_the_helper_thread_then_they_arrive_in_order_and_an_error_after_them() -> None:
    from kei_gateway.flows.outbound.ingest import in_helper_thread

    def source() -> Iterator[bytes]:
        yield from (bytes([n]) * 10 for n in range(20))
        raise ValueError("the file changed")

    received: list[bytes] = []
    with pytest.raises(ValueError, match="the file changed"):
        for chunk in in_helper_thread(source(), "test", depth=2):
            received.append(chunk)
    assert received == [bytes([n]) * 10 for n in range(20)]


def test_when_the_consumer_stops_early_then_the_helper_stops_too_and_is_joined() -> None:
    import threading

    from kei_gateway.flows.outbound.ingest import in_helper_thread

    produced: list[int] = []

    def source() -> Iterator[bytes]:
        for n in range(1000):
            produced.append(n)
            yield b"x"

    before = threading.active_count()
    chunks = in_helper_thread(source(), "test-early", depth=2)
    assert next(chunks) == b"x"
    chunks.close()  # as store.write does when it fails
    assert threading.active_count() == before
    assert len(produced) <= 1 + 2 + 2, "the helper stopped within the queue's depth"


def test_when_validation_stops_early_then_the_reading_thread_is_joined_and_the_rest_is_not_read(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from kei_gateway.flows.outbound import ingest

    reads: list[int] = []
    real = ingest._read_chunks

    def counted(fd: int) -> Iterator[bytes]:
        for chunk in real(fd):
            if threading.current_thread().name.startswith("kei-gateway-read"):  # not the quarantine's copy
                reads.append(len(chunk))
            yield chunk

    monkeypatch.setattr(ingest, "READ_CHUNK", 64 * 1024)
    monkeypatch.setattr(ingest, "_read_chunks", counted)
    data = spool.put("bad.dat", records=40_000, invalid_rate=1.0)  # 2.8 MB, every record invalid
    result = spool.ingest("bad.dat", options=ValidationOptions(today=TODAY, lg_code="131041", max_errors=10))
    assert result.outcome == "quarantined"
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("kei-gateway-read")]
    # Stopped after max_errors: read no further than the first block and the reader's queue (and a chunk each side).
    from kei_gateway.layouts import validator as validator_module
    assert sum(reads) <= validator_module._BLOCK_SIZE + (ingest._HANDOVER_DEPTH + 2) * ingest.READ_CHUNK < len(data)


# --------------------------------------------------------------------------- issue 11: changed while read, too large


def appending_store(spool: Spool, name: str, more: bytes) -> None:
    """The store's writer appends *more* to the outbox file after the first chunk is read (a writer still busy)."""
    real = spool.store.write

    def write(blob_id: str, chunks):  # type: ignore[no-untyped-def]
        def chunks_then_append():  # type: ignore[no-untyped-def]
            appended = False
            for chunk in chunks:
                yield chunk
                if not appended:
                    with open(spool.outbox / name, "ab") as writer:
                        writer.write(more)
                    appended = True
        return real(blob_id, chunks_then_append())

    spool.store.write = write  # type: ignore[method-assign]


def test_when_the_writer_still_appends_during_the_read_then_nothing_is_stored_or_sent_and_it_is_taken_whole_later(
        spool: Spool) -> None:
    whole = b"".join(generate_file(LAYOUT, 40, seed=6, today=TODAY, lg_code="131041"))
    (spool.outbox / "pay1.dat").write_bytes(whole[:20 * LAYOUT.record_length])
    real_write = spool.store.write
    appending_store(spool, "pay1.dat", whole[20 * LAYOUT.record_length:])
    result = spool.ingest("pay1.dat")
    assert result.outcome == "skipped" and "changed while it was read (its size changed)" in result.reason
    assert "rename" in result.reason, "the reason tells the writer what to do"
    assert os.listdir(spool.outbox) == ["pay1.dat"], "it stays in the outbox"
    assert spool.store.list_ids() == [] and spool.ledger.list_transfers() == [], "no partial send, no record"
    spool.store.write = real_write  # type: ignore[method-assign]  # the writer has finished
    again = spool.ingest("pay1.dat")
    assert again.outcome == "queued" and again.records == 40
    assert again.transfer_id is not None
    row = spool.ledger.get(again.transfer_id)
    assert row.blob_id is not None and b"".join(spool.store.read(row.blob_id)) == whole


def test_when_an_invalid_file_grows_while_it_is_read_then_it_is_not_quarantined_but_left_for_the_next_scan(
        spool: Spool) -> None:
    data = spool.put("bad.dat", records=10, invalid_rate=1.0, seed=2)
    appending_store(spool, "bad.dat", data[:LAYOUT.record_length])
    result = spool.ingest("bad.dat")
    assert result.outcome == "skipped" and "changed while it was read" in result.reason
    assert os.listdir(spool.outbox) == ["bad.dat"] and spool.store.list_ids() == []
    assert spool.ledger.list_transfers() == [] and not spool.quarantine.exists()


def test_when_the_outbox_entry_is_replaced_during_the_read_then_the_file_is_left_for_the_next_scan(
        spool: Spool) -> None:
    data = spool.put("pay1.dat")
    real = spool.store.write

    def write(blob_id: str, chunks):  # type: ignore[no-untyped-def]
        info = real(blob_id, chunks)
        (spool.outbox / "pay1.dat.tmp").write_bytes(data)
        os.rename(spool.outbox / "pay1.dat.tmp", spool.outbox / "pay1.dat")  # same size, another inode
        return info

    spool.store.write = write  # type: ignore[method-assign]
    result = spool.ingest("pay1.dat")
    assert result.outcome == "skipped" and "the outbox entry was replaced or removed" in result.reason
    assert spool.store.list_ids() == [] and spool.ledger.list_transfers() == []


def test_when_size_mtime_or_inode_differ_then_changed_while_read_names_what_changed() -> None:
    from kei_gateway.flows.outbound.ingest import FileIdentity, changed_while_read

    before = FileIdentity(1, 10, 1400, 5)
    assert changed_while_read(before, before, before) is None
    assert "its size changed" in str(changed_while_read(before, FileIdentity(1, 10, 2800, 6), FileIdentity(1, 10, 2800, 6)))
    assert "it was modified" in str(changed_while_read(before, FileIdentity(1, 10, 1400, 7), FileIdentity(1, 10, 1400, 7)))
    assert "replaced or removed" in str(changed_while_read(before, before, FileIdentity(1, 11, 1400, 5)))
    assert "replaced or removed" in str(changed_while_read(before, before, None))


def test_when_a_file_is_larger_than_max_file_size_then_it_is_refused_unread_recorded_and_removed(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    from kei_gateway.flows.outbound import ingest

    data = spool.put("big.dat", records=30)

    def never(fd: int):  # type: ignore[no-untyped-def]
        raise AssertionError("a file over max_file_size must not be read")

    monkeypatch.setattr(ingest, "_read_chunks", never)
    result = ingest_file(flow="jnks-payments", peer="jnks", outbox_dir=str(spool.outbox),
                         quarantine_dir=str(spool.quarantine), name="big.dat", marker=None, layout=LAYOUT,
                         options=ValidationOptions(today=TODAY, lg_code="131041"), hold_over_records=0,
                         store=spool.store, ledger=spool.ledger, now=NOW, max_file_size=len(data) - 1)
    assert result.outcome == "quarantined" and result.reason == "too-large"
    assert os.listdir(spool.outbox) == [] and spool.store.list_ids() == []
    assert sorted(os.listdir(spool.quarantine)) == ["big.dat.errors.txt"], "nothing of it is kept"
    errors = (spool.quarantine / "big.dat.errors.txt").read_text(encoding="utf-8")
    assert f"{len(data)} bytes, larger than [gateway] max_file_size ({len(data) - 1} bytes)" in errors
    assert "refused unread" in errors and f"as transfer {result.transfer_id}" in errors
    assert result.transfer_id is not None
    row = spool.ledger.get(result.transfer_id)
    assert row.state == "QUARANTINED" and row.size == len(data) and row.blob_id is None and row.source_removed
    assert [event for event, _ in spool.ledger.audit] == ["ingest.quarantined"]


def test_when_a_refusal_unread_is_cut_off_after_its_record_then_the_rescan_finishes_it_as_one_transfer(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    from kei_gateway.flows.outbound import ingest

    data = spool.put("big.dat", records=30)
    real = ingest._remove_source
    monkeypatch.setattr(ingest, "_remove_source", lambda *args: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        ingest_file(flow="jnks-payments", peer="jnks", outbox_dir=str(spool.outbox),
                    quarantine_dir=str(spool.quarantine), name="big.dat", marker=None, layout=LAYOUT,
                    options=ValidationOptions(today=TODAY), hold_over_records=0, store=spool.store,
                    ledger=spool.ledger, now=NOW, max_file_size=len(data) - 1)
    monkeypatch.setattr(ingest, "_remove_source", real)
    result = ingest_file(flow="jnks-payments", peer="jnks", outbox_dir=str(spool.outbox),
                         quarantine_dir=str(spool.quarantine), name="big.dat", marker=None, layout=LAYOUT,
                         options=ValidationOptions(today=TODAY), hold_over_records=0, store=spool.store,
                         ledger=spool.ledger, now=NOW, max_file_size=len(data) - 1)
    assert [row.id for row in spool.ledger.list_transfers()] == [result.transfer_id]
    assert sorted(os.listdir(spool.quarantine)) == ["big.dat.errors.txt"] and os.listdir(spool.outbox) == []


def test_when_a_badly_named_file_is_over_max_file_size_then_it_is_refused_unread_too(spool: Spool) -> None:
    (spool.outbox / "納付.dat").write_bytes(b"A\r\n" * 1000)
    result = quarantine_refused("jnks-payments", str(spool.outbox), str(spool.quarantine), "納付.dat", "name",
                                "not allowed", spool.ledger, "jnks", NOW, spool.store, max_file_size=1024)
    assert result.outcome == "quarantined" and result.reason == "too-large"
    assert spool.store.list_ids() == [] and os.listdir(spool.outbox) == []
    assert os.listdir(spool.quarantine) == [listed_name("納付.dat") + ".errors.txt"]
