"""Ingest one outbox file (SPEC §4): read, validate, encrypt into the store, commit, remove the original.

All of it blocks: the outbound flow calls :func:`ingest_file` through the blocking door.
The order is what makes a crash lose nothing and duplicate nothing:

1. the file is read (in one helper thread) and validated (in another) while what was
   validated is encrypted, hashed and written into the store, as it streams (the list
   of 縮退 made under ``gaiji = "degenerate"`` goes into a second blob); the
   uniqueness check logs every key's fingerprint (in memory, or for a large file
   on an unnamed encrypted scratch file), and only when keys repeat is the same
   open file read a second time to name them exactly (a crash in either read
   leaves at most an unreferenced blob, removed at the next start; the scratch
   file has no name and goes with the process);
2. the transfer is committed in the ledger;
3. the plaintext original (and its marker) is unlinked and the directory fsynced;
4. the transfer is marked ``source_removed``.

A crash between 2 and 4 leaves the original in the outbox and a committed transfer
whose source is not marked removed: the rescan finds that transfer by flow, name and
SHA-256 and finishes steps 3–4 instead of creating a second transfer.

Two refusals come before any of it: a file larger than ``[gateway] max_file_size`` is
refused unread (:func:`refuse_unread`: recorded, its errors file written, the original
removed, nothing kept), and a file that changed while it was read — its size or
modification time moved, or the outbox entry is no longer the inode that was read (a
writer still appending after the rename) — is left in the outbox, its blob deleted, and
read again whole at the next scan (:func:`changed_while_read`): no partial send.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import threading
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime

from kei_gateway.adapters.durable import fsync_directory
from kei_gateway.adapters.ports import TransferLedgerPort
from kei_gateway.adapters.scratch import scratch_in
from kei_gateway.adapters.spool import (
    ERRORS_SUFFIX,
    NAME_PATTERN,
    QUARANTINE_DIR_MODE,
    ensure_directory,
    free_name,
    quarantine_entry,
    write_errors_file,
)
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.core.transfer import state_after_validation
from kei_gateway.core.transfer import TransferState
from kei_gateway.layouts import Layout, Scratch, ValidationOptions, ValidationReport, Validator
from kei_gateway.runtime.crashpoints import crashpoint
from kei_gateway.adapters.store.format import degenerations_blob_id
from kei_gateway.layouts.degenerate import MAP_VERSIONS

__all__ = ["IngestResult", "ingest_file", "quarantine_refused", "READ_CHUNK", "errors_file_lines", "listed_name",
           "UNREADABLE", "CHANGED_WHILE_READ", "DEFAULT_MAX_FILE_SIZE", "FileIdentity", "changed_while_read",
           "in_helper_thread", "degenerations_document"]

READ_CHUNK = 1 << 20
DEFAULT_MAX_FILE_SIZE = 2 << 30
"""``[gateway] max_file_size`` when not configured (SPEC §4): ``"2GiB"``."""

CHANGED_WHILE_READ = ("changed while it was read ({what}): its writer had not finished when it was put in the "
                      "outbox; nothing of it was stored or sent, it stays in the outbox and is read again whole "
                      "at the next scan. The writer must write name.tmp (or a dotfile) and rename it only once "
                      "it is complete and closed")

UNREADABLE = ("cannot be read (permission denied); it stays in the outbox: let the gateway's group read it "
              "(the writer's umask must be 027 or less) and it is taken at the next scan")


@dataclass(frozen=True)
class IngestResult:
    name: str
    outcome: str
    """``queued``, ``held``, ``quarantined``, ``resumed`` (a crash's leftover finished), ``vanished``,
    ``skipped`` (left in the outbox for a reason the writer must fix) or ``failed`` (tried again at the next scan)."""
    transfer_id: int | None = None
    records: int = 0
    size: int = 0
    sha256: str | None = None
    error_count: int = 0
    reason: str = ""
    """For quarantines: the first error, masked (fit for a log)."""
    gaiji_substituted: int = 0
    degenerated: int = 0
    """外字 replaced by their 縮退 candidate; the list is in the store (:func:`degenerations_blob_id`)."""


@dataclass(frozen=True)
class FileIdentity:
    """What tells whether a file changed: its inode, size and modification time."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> FileIdentity:
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def changed_while_read(before: FileIdentity, after: FileIdentity, entry: FileIdentity | None) -> str | None:
    """Pure: why a file read between *before* and *after* (``fstat`` of the open descriptor) cannot be trusted,
    or None. *entry* is the outbox path's ``lstat`` after the read (None: the entry is gone)."""
    if entry is None or (entry.device, entry.inode) != (after.device, after.inode):
        return CHANGED_WHILE_READ.format(what="the outbox entry was replaced or removed")
    if after.size != before.size:
        return CHANGED_WHILE_READ.format(what="its size changed")
    if after.mtime_ns != before.mtime_ns:
        return CHANGED_WHILE_READ.format(what="it was modified")
    return None


def _entry_changed(fd: int, path: str, before: FileIdentity) -> str | None:
    try:
        entry: FileIdentity | None = FileIdentity.of(os.lstat(path))
    except FileNotFoundError:
        entry = None
    return changed_while_read(before, FileIdentity.of(os.fstat(fd)), entry)


def _too_large(size: int, max_file_size: int) -> str:
    return (f"{size} bytes, larger than [gateway] max_file_size ({max_file_size} bytes): refused unread, nothing "
            f"of it was kept or sent; split it into smaller files (or raise max_file_size) and write them again")


def _read_chunks(fd: int) -> Iterator[bytes]:
    while True:
        chunk = os.read(fd, READ_CHUNK)
        if not chunk:
            return
        yield chunk


def errors_file_lines(flow: str, name: str, report: ValidationReport) -> list[str]:
    """The quarantine errors file for the tax division: full values, every kept error, the total."""
    lines = [f"# {name}: rejected by kei-gateway, flow {flow}, layout {report.layout}",
             f"# {report.error_count} error(s) in {report.records} record(s); nothing of this file was sent.",
             "# Correct the records named below and write the whole file to the outbox again."]
    lines += [error.message(full_values=True) for error in report.errors]
    if report.error_count > len(report.errors):
        lines.append(f"... and {report.error_count - len(report.errors)} more error(s) not listed")
    if report.stop_note:
        lines.append(f"# {report.stop_note}")
    return lines


def degenerations_document(report: ValidationReport) -> bytes:
    """What the store keeps of a file's 縮退 (personal: encrypted, never logged): a header, then one a line.

    ``# degenerated TOTAL listed N maps VERSIONS`` then ``record TAB key TAB from TAB to`` lines,
    read back by :func:`kei_gateway.layouts.parse_degenerations`.
    """
    listed = report.degeneration_lines.count(b"\n")
    header = f"# degenerated {report.degenerated} listed {listed} maps {MAP_VERSIONS}\n".encode("utf-8")
    return header + bytes(report.degeneration_lines)


def ingest_file(*, flow: str, peer: str, outbox_dir: str, quarantine_dir: str, name: str, marker: str | None,
                layout: Layout, options: ValidationOptions, hold_over_records: int, store: BlobStore,
                ledger: TransferLedgerPort, now: datetime,
                new_blob_id: Callable[[], str] = lambda: f"out-{uuid.uuid4().hex}",
                max_file_size: int = DEFAULT_MAX_FILE_SIZE,
                scratch: Callable[[], Scratch] = scratch_in()) -> IngestResult:
    """Take one ready outbox file into the gateway (see the module docstring for the order of steps).

    ``scratch`` takes the uniqueness check's key log of a file over about 2 M records (8 bytes a
    record, encrypted, unnamed: :mod:`kei_gateway.adapters.scratch`), so one read settles it.
    """
    path = os.path.join(outbox_dir, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return IngestResult(name, "vanished")
    except PermissionError:
        return IngestResult(name, "skipped", reason=UNREADABLE)
    except OSError as error:  # ELOOP: it became a symlink since the listing
        return _move_refused(flow, outbox_dir, quarantine_dir, name, "not-regular",
                             f"cannot be opened safely: {error.strerror}", ledger, peer, now)
    try:
        if not _is_regular(fd):
            return _move_refused(flow, outbox_dir, quarantine_dir, name, "not-regular", "not a regular file",
                                 ledger, peer, now)
        before = FileIdentity.of(os.fstat(fd))
        if before.size > max_file_size:
            return refuse_unread(flow, outbox_dir, quarantine_dir, name, "too-large",
                                 _too_large(before.size, max_file_size), ledger, peer, now, before.size)
        pending: list[bytes] = []
        # The file can be read again through the same descriptor (the outbox entry we opened,
        # O_NOFOLLOW), so uniqueness takes fixed memory: a key log (in memory, or spilled to the
        # scratch for a large file) leaves suspects only when keys repeat, and then a second read
        # names them.  The store blob would not do for it: it holds the converted output, whose
        # offsets differ from the input's for UTF-8 files.
        validator = Validator(layout, options, sink=pending.append, rereadable=True,
                              expected_size=before.size, scratch=scratch)

        def converted() -> Iterator[bytes]:
            # The file is read in a thread of its own (os.read lets go of the GIL): validating is the
            # slowest stage, and reading beside it took ~10 % off a 512 MiB ingest (wall and CPU,
            # four A/B pairs).  Closed (its thread joined) before any second read of the same fd.
            reader = in_helper_thread(_read_chunks(fd), f"kei-gateway-read {flow}")
            try:
                for chunk in reader:
                    validator.feed(chunk)
                    yield from pending
                    pending.clear()
                    crashpoint("ingest.reading")
                    if validator.stopped:  # invalid (max_errors, or no CR LF within a record): read no more
                        break
            finally:
                reader.close()
            validator.close()
            yield from pending
            pending.clear()

        blob_id = new_blob_id()
        # Reading and validating run in a helper thread, encrypting, hashing and writing in this
        # one: the file's ingest costs about its slowest stage, not the sum.  Nothing is sent
        # from here: the blob is only queued (step 2) once the whole file is valid.
        info = store.write(blob_id, in_helper_thread(converted(), f"kei-gateway-validate {flow}"))
        if validator.needs_rescan:
            os.lseek(fd, 0, os.SEEK_SET)
            try:
                validator.rescan(_read_chunks(fd))
            except BaseException:  # the file changed between the reads (ValueError), or a read failed
                store.delete(blob_id)
                raise  # the file stays in the outbox for the next scan
        changed = _entry_changed(fd, path, before)
        if changed is not None:  # a writer still appending: neither a partial send nor a quarantine
            store.delete(blob_id)
            return IngestResult(name, "skipped", reason=changed)
        crashpoint("ingest.stored")
    finally:
        os.close(fd)
    report = validator.report
    if not report.valid:
        store.delete(blob_id)
        first = report.errors[0].message() if report.errors else "invalid"
        return _quarantine_payload(
            flow=flow, peer=peer, outbox_dir=outbox_dir, quarantine_dir=quarantine_dir, name=name, listed=name,
            marker=marker, lines=errors_file_lines(flow, name, report), records=report.records,
            error_count=report.error_count, last_error=f"{report.error_count} error(s); first: {first}", reason=first,
            store=store, ledger=ledger, now=now, new_blob_id=new_blob_id, max_file_size=max_file_size,
            validated=before)

    leftover = ledger.unremoved_source(flow, name, info.sha256)
    if leftover is not None:
        store.delete(blob_id)
        _remove_source(outbox_dir, name, marker)
        ledger.update(leftover.id, now, source_removed=True)
        return IngestResult(name, "resumed", leftover.id, leftover.record_count, leftover.size, leftover.sha256)

    if report.degenerated:
        try:
            store.write(degenerations_blob_id(blob_id), (degenerations_document(report),))
        except BaseException:
            store.delete(blob_id)
            raise  # the file stays in the outbox for the next scan
    state = state_after_validation(report.records, hold_over_records)
    row = ledger.add_transfer(flow=flow, direction="out", peer=peer, local_name=name, state=state, size=info.size,
                              sha256=info.sha256, record_count=report.records, blob_id=blob_id, now=now,
                              audit=("ingest.queued", {"flow": flow, "records": report.records, "sha256": info.sha256,
                                                       "state": state}))
    crashpoint("ingest.committed")
    _remove_source(outbox_dir, name, marker)
    ledger.update(row.id, now, source_removed=True)
    return IngestResult(name, "held" if state is TransferState.HELD else "queued", row.id, report.records, info.size,
                        info.sha256, gaiji_substituted=report.gaiji_substituted, degenerated=report.degenerated)


_HANDOVER_DEPTH = 2
"""Chunks (validated blocks, the validator's 512 KiB) waiting between the two threads of an ingest:
validating is the slower stage by far (about 8× encrypting and hashing), so a deeper queue only
holds more memory (4 deep with 1 MiB blocks, the daemon peaked at 151 MB on the 512 MiB upload)."""


def in_helper_thread(source: Iterator[bytes], name: str,
                     depth: int = _HANDOVER_DEPTH) -> Generator[bytes, None, None]:
    """Iterate *source* in a helper thread and hand its chunks over through a queue of *depth* (bounded memory).

    An exception in *source* is raised here, in the consumer's thread, after the chunks before it.
    When the consumer stops early (its own error), the helper stops at its next chunk and
    is joined before this generator finishes, so no thread outlives the ingest (the queue is
    emptied first, so a helper waiting to hand a chunk over sees the stop at once).
    """
    handover: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                handover.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in source:
                if not put(("chunk", chunk)):
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            put(("error", error))
            return
        put(("end", None))

    helper = threading.Thread(target=produce, name=name, daemon=True)
    helper.start()
    try:
        while True:
            kind, item = handover.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(item, BaseException)
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
        while True:  # free a put() waiting on a full queue: it then sees the stop
            try:
                handover.get_nowait()
            except queue.Empty:
                break
        helper.join()


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def _remove_source(outbox_dir: str, *names: str | None) -> None:
    for leftover in names:
        if not leftover:
            continue
        try:
            os.unlink(os.path.join(outbox_dir, leftover))
        except FileNotFoundError:
            pass
    fsync_directory(outbox_dir)


def listed_name(name: str) -> str:
    """The name an outbox entry is known by in the ledger and in quarantine/: its own if allowed (SPEC §4),
    else ``refused-name-`` and a hash of it, the same at every scan so a crash's leftover is found again."""
    if NAME_PATTERN.fullmatch(name):
        return name
    return "refused-name-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _errors_file_written(quarantine_dir: str, name: str, transfer_id: int) -> bool:
    """Whether an errors file for *name* (``name.errors.txt``, ``name.2.errors.txt`` …) names this transfer."""
    candidate, n = name, 1
    while os.path.lexists(path := os.path.join(quarantine_dir, candidate + ERRORS_SUFFIX)):
        try:
            with open(path, "rb") as errors:
                if f" as transfer {transfer_id}:".encode() in errors.read(ERRORS_FILE_PROBE):
                    return True
        except OSError:
            pass
        n += 1
        candidate = f"{name}.{n}"
    return False


ERRORS_FILE_PROBE = 1 << 20


def _quarantine_payload(*, flow: str, peer: str, outbox_dir: str, quarantine_dir: str, name: str, listed: str,
                        marker: str | None, lines: list[str], records: int, error_count: int, last_error: str,
                        reason: str, store: BlobStore, ledger: TransferLedgerPort, now: datetime,
                        new_blob_id: Callable[[], str], max_file_size: int,
                        validated: FileIdentity | None = None) -> IngestResult:
    """Keep a refused regular file encrypted in the store (SPEC §7), its errors in quarantine/, remove the original.

    The tax division reads ``listed.errors.txt``; the file itself comes back with
    ``kei-gateway transfers export ID``. Like the valid path, a transfer committed before a
    crash whose original was not removed is found again (flow, listed name, SHA-256) and
    finished: one transfer per source file whatever the crash point. *validated* is the file as the
    validating read saw it: a file that changed since (or while this read ran) stays in the outbox.
    """
    blob_id = "quarantine-" + new_blob_id()
    path = os.path.join(outbox_dir, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return IngestResult(name, "vanished")
    except PermissionError:
        return IngestResult(name, "skipped", reason=UNREADABLE)
    try:
        if not _is_regular(fd):
            return _move_refused(flow, outbox_dir, quarantine_dir, name, "not-regular", "not a regular file",
                                 ledger, peer, now)
        before = FileIdentity.of(os.fstat(fd))
        if validated is not None and validated != before:
            return IngestResult(name, "skipped", reason=CHANGED_WHILE_READ.format(what="it changed after validation"))
        if before.size > max_file_size:
            return refuse_unread(flow, outbox_dir, quarantine_dir, name, "too-large",
                                 _too_large(before.size, max_file_size), ledger, peer, now, before.size)
        info = store.write(blob_id, _read_chunks(fd))
        changed = _entry_changed(fd, path, before)
        if changed is not None:
            store.delete(blob_id)
            return IngestResult(name, "skipped", reason=changed)
    finally:
        os.close(fd)
    leftover = ledger.unremoved_source(flow, listed, info.sha256)
    if leftover is not None:
        store.delete(blob_id)
        transfer_id = leftover.id
    else:
        transfer_id = ledger.add_transfer(
            flow=flow, direction="out", peer=peer, local_name=listed, state=TransferState.QUARANTINED,
            size=info.size, sha256=info.sha256, record_count=records, blob_id=blob_id, now=now,
            last_error=last_error, source_removed=False,
            audit=("ingest.quarantined", {"flow": flow, "reason": reason, "records": records})).id
        crashpoint("ingest.quarantine-committed")
    if leftover is None or not _errors_file_written(quarantine_dir, listed, transfer_id):
        ensure_directory(quarantine_dir, QUARANTINE_DIR_MODE)
        write_errors_file(quarantine_dir, free_name(quarantine_dir, listed), lines + [
            f"# The file itself is kept encrypted as transfer {transfer_id}: "
            f"kei-gateway transfers export {transfer_id} --output FILE"])
    crashpoint("ingest.quarantine-listed")
    _remove_source(outbox_dir, name, marker)
    ledger.update(transfer_id, now, source_removed=True)
    return IngestResult(name, "quarantined", transfer_id, records, error_count=error_count, reason=reason)


def quarantine_refused(flow: str, outbox_dir: str, quarantine_dir: str, name: str, reason: str, detail: str,
                       ledger: TransferLedgerPort, peer: str, now: datetime, store: BlobStore,
                       new_blob_id: Callable[[], str] = lambda: f"out-{uuid.uuid4().hex}",
                       max_file_size: int = DEFAULT_MAX_FILE_SIZE) -> IngestResult:
    """Quarantine an entry refused without validating it (bad name, link, directory, device).

    A regular file (refused for its name) is kept encrypted like an invalid one; a link, empty
    directory or device holds no payload of its own and is moved to quarantine/ as it is; a
    directory holding files is left in the outbox (``skipped``).
    """
    lines = [f"# {ascii(name)}: refused by kei-gateway, flow {flow}; nothing was validated or sent.",
             f"{reason}: {detail}"]
    return _quarantine_payload(flow=flow, peer=peer, outbox_dir=outbox_dir, quarantine_dir=quarantine_dir, name=name,
                               listed=listed_name(name), marker=None, lines=lines, records=0, error_count=0,
                               last_error=f"{reason}: {detail}", reason=reason, store=store, ledger=ledger, now=now,
                               new_blob_id=new_blob_id, max_file_size=max_file_size) if _regular_entry(outbox_dir, name) else _move_refused(
        flow, outbox_dir, quarantine_dir, name, reason, detail, ledger, peer, now)


def _regular_entry(outbox_dir: str, name: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(os.path.join(outbox_dir, name)).st_mode)
    except OSError:
        return False


def _move_refused(flow: str, outbox_dir: str, quarantine_dir: str, name: str, reason: str, detail: str,
                  ledger: TransferLedgerPort, peer: str, now: datetime) -> IngestResult:
    """Move a link, empty directory or device into quarantine/ unfollowed, recorded first so no crash loses the
    record. A directory that holds entries stays where it is, skipped with its reason: its files are the writer's
    plaintext, which quarantine/ must not keep (SPEC §7) and the gateway must not delete unread."""
    if _holds_entries(os.path.join(outbox_dir, name)):
        return IngestResult(name, "skipped", reason=(
            f"{reason}: {detail}; it holds files, which kei-gateway does not keep unencrypted in quarantine/ "
            f"and does not delete: move it out of the outbox"))
    return _refuse_entry(flow, outbox_dir, quarantine_dir, name, reason, detail, ledger, peer, now, size=0, keep=True)


def _holds_entries(path: str) -> bool:
    """A directory (not followed through a link) with at least one entry; reads one entry at most."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    except FileNotFoundError:
        return False


def refuse_unread(flow: str, outbox_dir: str, quarantine_dir: str, name: str, reason: str, detail: str,
                  ledger: TransferLedgerPort, peer: str, now: datetime, size: int) -> IngestResult:
    """Refuse a regular file without reading it (over ``max_file_size``): recorded, its errors file written,
    the original removed — nothing of it is kept (SPEC §4, §7: no plaintext in quarantine/)."""
    return _refuse_entry(flow, outbox_dir, quarantine_dir, name, reason, detail, ledger, peer, now, size=size,
                         keep=False)


def _refuse_entry(flow: str, outbox_dir: str, quarantine_dir: str, name: str, reason: str, detail: str,
                  ledger: TransferLedgerPort, peer: str, now: datetime, *, size: int, keep: bool) -> IngestResult:
    """Quarantine an entry unread: moved to quarantine/ as it is (*keep*) or removed, recorded first.

    The transfer is committed before the move or removal (its original not yet removed) and
    found again by name after a crash, so a rescan does not record the entry twice.
    """
    listed = listed_name(name)
    if not os.path.lexists(os.path.join(outbox_dir, name)):
        return IngestResult(name, "vanished")
    leftover = ledger.unremoved_source(flow, listed, None)
    transfer_id = leftover.id if leftover is not None else ledger.add_transfer(
        flow=flow, direction="out", peer=peer, local_name=listed, state=TransferState.QUARANTINED, size=size,
        sha256=None, record_count=0, blob_id=None, now=now, last_error=f"{reason}: {detail}",
        source_removed=False, audit=("ingest.quarantined", {"flow": flow, "reason": reason, "records": 0})).id
    lines = [f"# {ascii(name)}: refused by kei-gateway, flow {flow}, as transfer {transfer_id}: nothing was read"
             f"{' or sent' if keep else ', kept or sent'}.", f"{reason}: {detail}"]
    if keep:
        try:
            moved = quarantine_entry(outbox_dir, name, quarantine_dir, safe_name=listed)
        except FileNotFoundError:
            return IngestResult(name, "vanished")
        write_errors_file(quarantine_dir, moved, lines)
    elif leftover is None or not _errors_file_written(quarantine_dir, listed, transfer_id):
        ensure_directory(quarantine_dir, QUARANTINE_DIR_MODE)
        write_errors_file(quarantine_dir, free_name(quarantine_dir, listed), lines)
    if not keep:
        _remove_source(outbox_dir, name)
    ledger.update(transfer_id, now, source_removed=True)
    return IngestResult(name, "quarantined", transfer_id, size=size, reason=reason)
