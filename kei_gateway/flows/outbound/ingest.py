"""Ingest one outbox file (SPEC §4): read, validate, encrypt into the store, commit, remove the original.

All of it blocks: the outbound flow calls :func:`ingest_file` through the blocking door.
The order is what makes a crash lose nothing and duplicate nothing:

1. the file is read and validated (in a helper thread) while what was validated is
   encrypted, hashed and written into the store, as it streams (the list
   of 縮退 made under ``gaiji = "degenerate"`` goes into a second blob); when
   the uniqueness filter left suspect keys, the same open file is read a second
   time to settle them exactly (a crash in either read leaves at most an
   unreferenced blob, removed at the next start);
2. the transfer is committed in the ledger;
3. the plaintext original (and its marker) is unlinked and the directory fsynced;
4. the transfer is marked ``source_removed``.

A crash between 2 and 4 leaves the original in the outbox and a committed transfer
whose source is not marked removed: the rescan finds that transfer by flow, name and
SHA-256 and finishes steps 3–4 instead of creating a second transfer.
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from kei_gateway.adapters.durable import fsync_directory
from kei_gateway.adapters.ports import TransferLedgerPort
from kei_gateway.adapters.spool import (
    QUARANTINE_DIR_MODE,
    ensure_directory,
    free_name,
    quarantine_entry,
    write_errors_file,
)
from kei_gateway.adapters.store.blobs import BlobStore
from kei_gateway.core.transfer import state_after_validation
from kei_gateway.core.transfer import TransferState
from kei_gateway.layouts import Layout, ValidationOptions, ValidationReport, Validator
from kei_gateway.runtime.crashpoints import crashpoint
from kei_gateway.adapters.store.format import degenerations_blob_id
from kei_gateway.layouts.degenerate import MAP_VERSIONS

__all__ = ["IngestResult", "ingest_file", "quarantine_refused", "READ_CHUNK", "errors_file_lines", "in_helper_thread",
           "degenerations_document"]

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class IngestResult:
    name: str
    outcome: str
    """``queued``, ``held``, ``quarantined``, ``resumed`` (a crash's leftover finished) or ``vanished``."""
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
                new_blob_id: Callable[[], str] = lambda: f"out-{uuid.uuid4().hex}") -> IngestResult:
    """Take one ready outbox file into the gateway (see the module docstring for the order of steps)."""
    path = os.path.join(outbox_dir, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return IngestResult(name, "vanished")
    except OSError as error:  # ELOOP: it became a symlink since the listing
        return _refuse(flow, outbox_dir, quarantine_dir, name, "not-regular", f"cannot be opened safely: {error.strerror}",
                       ledger, peer, now)
    try:
        if not _is_regular(fd):
            return _refuse(flow, outbox_dir, quarantine_dir, name, "not-regular", "not a regular file", ledger, peer, now)
        pending: list[bytes] = []
        # The file can be read again through the same descriptor (the outbox entry we opened,
        # O_NOFOLLOW), so uniqueness takes fixed memory.  The store blob would not do: it holds
        # the converted output, whose offsets differ from the input's for UTF-8 files.
        validator = Validator(layout, options, sink=pending.append, rereadable=True,
                              expected_size=os.fstat(fd).st_size)

        def converted() -> Iterator[bytes]:
            for chunk in _read_chunks(fd):
                validator.feed(chunk)
                yield from pending
                pending.clear()
                crashpoint("ingest.reading")
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
        crashpoint("ingest.stored")
    finally:
        os.close(fd)
    report = validator.report
    if not report.valid:
        store.delete(blob_id)
        return _quarantine_invalid(flow, outbox_dir, quarantine_dir, name, marker, report, store, ledger, peer, now,
                                   new_blob_id)

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
                              sha256=info.sha256, record_count=report.records, blob_id=blob_id, now=now)
    crashpoint("ingest.committed")
    _remove_source(outbox_dir, name, marker)
    ledger.update(row.id, now, source_removed=True)
    return IngestResult(name, "held" if state is TransferState.HELD else "queued", row.id, report.records, info.size,
                        info.sha256, gaiji_substituted=report.gaiji_substituted, degenerated=report.degenerated)


_HANDOVER_DEPTH = 4
"""Chunks (validated blocks of about 1 MiB) waiting between the two threads of an ingest."""


def in_helper_thread(source: Iterator[bytes], name: str, depth: int = _HANDOVER_DEPTH) -> Iterator[bytes]:
    """Iterate *source* in a helper thread and hand its chunks over through a queue of *depth* (bounded memory).

    An exception in *source* is raised here, in the consumer's thread, after the chunks before it.
    When the consumer stops early (its own error), the helper stops at its next chunk and
    is joined before this generator finishes, so no thread outlives the ingest.
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
        helper.join()


def _is_regular(fd: int) -> bool:
    import stat

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


def _quarantine_invalid(flow: str, outbox_dir: str, quarantine_dir: str, name: str, marker: str | None,
                        report: ValidationReport, store: BlobStore, ledger: TransferLedgerPort, peer: str, now: datetime,
                        new_blob_id: Callable[[], str]) -> IngestResult:
    """Keep the invalid file encrypted in the store (SPEC §7), its errors in quarantine/, and remove the original.

    The tax division reads ``name.errors.txt``; the file itself comes back with
    ``kei-gateway transfers export ID``.
    """
    blob_id = "quarantine-" + new_blob_id()
    fd = os.open(os.path.join(outbox_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = store.write(blob_id, _read_chunks(fd))
    finally:
        os.close(fd)
    first = report.errors[0].message() if report.errors else "invalid"
    row = ledger.add_transfer(flow=flow, direction="out", peer=peer, local_name=name, state=TransferState.QUARANTINED,
                              size=info.size, sha256=info.sha256, record_count=report.records, blob_id=blob_id,
                              now=now, last_error=f"{report.error_count} error(s); first: {first}",
                              source_removed=False)
    ensure_directory(quarantine_dir, QUARANTINE_DIR_MODE)
    listed = free_name(quarantine_dir, name)
    write_errors_file(quarantine_dir, listed, errors_file_lines(flow, name, report) + [
        f"# The file itself is kept encrypted as transfer {row.id}: "
        f"kei-gateway transfers export {row.id} --output FILE"])
    _remove_source(outbox_dir, name, marker)
    ledger.update(row.id, now, source_removed=True)
    return IngestResult(name, "quarantined", row.id, report.records, error_count=report.error_count, reason=first)


def quarantine_refused(flow: str, outbox_dir: str, quarantine_dir: str, name: str, reason: str, detail: str,
                       ledger: TransferLedgerPort, peer: str, now: datetime) -> IngestResult:
    """Quarantine an entry refused without reading it (bad name, link, directory, device)."""
    return _refuse(flow, outbox_dir, quarantine_dir, name, reason, detail, ledger, peer, now)


def _refuse(flow: str, outbox_dir: str, quarantine_dir: str, name: str, reason: str, detail: str,
            ledger: TransferLedgerPort, peer: str, now: datetime) -> IngestResult:
    safe = name if reason != "name" else f"refused-name-{now.strftime('%Y%m%d%H%M%S')}"
    try:
        moved = quarantine_entry(outbox_dir, name, quarantine_dir, safe_name=safe)
    except FileNotFoundError:
        return IngestResult(name, "vanished")
    write_errors_file(quarantine_dir, moved, [f"# {name!r}: refused by kei-gateway, flow {flow}; nothing was read or sent.",
                                              f"{reason}: {detail}"])
    shown = name if reason != "name" else moved
    row = ledger.add_transfer(flow=flow, direction="out", peer=peer, local_name=shown[:255], state=TransferState.QUARANTINED,
                              size=0, sha256=None, record_count=0, blob_id=None, now=now, last_error=f"{reason}: {detail}",
                              source_removed=True)
    return IngestResult(name, "quarantined", row.id, reason=reason)
