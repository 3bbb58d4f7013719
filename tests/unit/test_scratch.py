"""The uniqueness check's scratch file: unnamed, encrypted with a key kept in memory, read back exactly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag

from kei_gateway.adapters.scratch import EncryptedScratch, ScratchError, scratch_in
from kei_gateway.layouts._keyfilter import SpilledLog, fingerprint


def on_disk(scratch: EncryptedScratch) -> bytes:
    with open(f"/proc/self/fd/{scratch._fd}", "rb") as raw:
        return raw.read()


def test_when_chunks_are_appended_then_each_reads_back_and_the_file_has_no_name_and_no_plaintext(
        tmp_path: Path) -> None:
    scratch = EncryptedScratch(str(tmp_path))
    chunks = [np.arange(start, start + 1000, dtype=np.uint64).tobytes() for start in (0, 5000, 77)] + [b"x" * 10]
    handles = [scratch.append(chunk) for chunk in chunks]
    assert os.listdir(tmp_path) == []  # O_TMPFILE (or unlinked at once): nothing to find or clean up
    assert [scratch.read(handle, len(chunk)) for handle, chunk in zip(handles, chunks)] == chunks
    assert scratch.size == sum(len(chunk) + 16 for chunk in chunks)  # AES-GCM: a tag a chunk
    stored = on_disk(scratch)
    assert len(stored) == scratch.size and not any(chunk[:64] in stored for chunk in chunks)
    scratch.close()
    scratch.close()  # twice is harmless


def test_when_the_scratch_bytes_are_changed_then_reading_them_fails_instead_of_a_wrong_answer(tmp_path: Path) -> None:
    scratch = EncryptedScratch(str(tmp_path))
    handle = scratch.append(b"\x01" * 4096)
    stored = os.pread(scratch._fd, 1, handle + 100)
    os.pwrite(scratch._fd, bytes([stored[0] ^ 0xFF]), handle + 100)  # always a change (writing 0x00 was none 1 time in 256)
    with pytest.raises(InvalidTag):
        scratch.read(handle, 4096)


def test_when_two_scratches_hold_the_same_bytes_then_their_files_differ(tmp_path: Path) -> None:
    first, second = EncryptedScratch(str(tmp_path)), EncryptedScratch(str(tmp_path))
    first.append(b"\x00" * 1024)
    second.append(b"\x00" * 1024)
    assert on_disk(first) != on_disk(second)  # a key per scratch, never written


def test_when_the_directory_cannot_take_a_file_then_a_scratch_error_says_where_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ScratchError, match=r"missing \(\$TMPDIR\) failed: .*point TMPDIR elsewhere"):
        EncryptedScratch(str(tmp_path / "missing"))


def test_when_a_spilled_log_uses_the_encrypted_scratch_then_it_finds_the_repeats(tmp_path: Path) -> None:
    log = SpilledLog(scratch_in(str(tmp_path))(), 100_000, salt=3, staging=4096, pass_bytes=16 * 1024)
    keys = np.arange(100_000, dtype=np.uint64)
    log.add_fingerprints(keys)
    log.add_fingerprints(keys[[10, 99_999, 500]])
    found = sorted(int(value) for part in log.repeated() for value in part.tolist())
    assert found == sorted(int(value) for value in keys[[10, 99_999, 500]].tolist())
    assert fingerprint(3, b"A") != fingerprint(4, b"A")  # keyed: the salt changes every fingerprint


def test_when_many_more_keys_are_spilled_than_fit_its_memory_then_the_log_never_holds_them(tmp_path: Path) -> None:
    """400,000 fingerprints (3.2 MB) through a log with 64 KiB of staging and 128 KiB passes:
    what Python allocates at any moment (numpy arrays included) stays a small multiple of those."""
    import tracemalloc

    log = SpilledLog(EncryptedScratch(str(tmp_path)), 400_000, salt=9, staging=8192, pass_bytes=128 * 1024)
    keys = np.random.default_rng(1).integers(0, 2**63, 400_000, dtype=np.uint64)
    tracemalloc.start()
    try:
        for start in range(0, keys.size, 10_000):
            log.add_fingerprints(keys[start:start + 10_000])
        log.add_fingerprints(keys[[3, 399_999]])
        found = [int(value) for part in log.repeated() for value in part.tolist()]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(found) == sorted(int(value) for value in keys[[3, 399_999]].tolist())
    assert log.partitions == 32 and peak < 1 << 20  # under 1 MiB while 3.2 MB went through
