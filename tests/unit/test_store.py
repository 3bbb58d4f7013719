"""The encrypted store: round trips, every corruption caught, key rotation, crash safety, bounded memory.

Behavioural tests run against both :class:`FileBlobStore` and the in-memory twin
:class:`kei_gateway.testing.InMemoryBlobStore`. All data is dummy bytes.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import stat
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kei_gateway.adapters.store.blobs import BlobStore, BoundedWriteback, FileBlobStore
from kei_gateway.adapters.store.errors import (
    BlobBusy,
    BlobCorrupt,
    BlobExists,
    BlobNotFound,
    BlobUnreadable,
    InvalidBlobId,
    StoreKeyError,
    UnknownStoreKey,
)
from kei_gateway.adapters.store.format import DEFAULT_SEGMENT_SIZE, HEADER_SIZE, TAG_SIZE, BlobInfo
from kei_gateway.adapters.store.keys import StoreKeyring, key_id_of, load_store_key
from kei_gateway.cli import main as cli, exitcodes
from kei_gateway.config import check_files, config_from_string
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.testing import InMemoryBlobStore

KEY_A = bytes(range(1, 33))
KEY_B = bytes(range(101, 133))
SMALL = 64  # segment size for corruption tests: a few segments in a few hundred bytes
BACKENDS = ("file", "memory")


def make_store(kind: str, directory: Path, keyring: StoreKeyring, segment_size: int = DEFAULT_SEGMENT_SIZE) -> BlobStore:
    if kind == "file":
        return FileBlobStore(str(directory), keyring, segment_size)
    return InMemoryBlobStore(keyring, segment_size)


class Raw:
    """The stored bytes of a blob, whichever the backend, so tests can tamper with them."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def get(self, blob_id: str) -> bytes:
        if isinstance(self.store, FileBlobStore):
            return Path(self.store.directory, blob_id).read_bytes()
        assert isinstance(self.store, InMemoryBlobStore)
        return self.store.blobs[blob_id]

    def put(self, blob_id: str, data: bytes) -> None:
        if isinstance(self.store, FileBlobStore):
            Path(self.store.directory, blob_id).write_bytes(data)
        else:
            assert isinstance(self.store, InMemoryBlobStore)
            self.store.blobs[blob_id] = data


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path) -> BlobStore:
    return make_store(backend, tmp_path / "store", StoreKeyring(KEY_A))


@pytest.fixture
def small_store(backend: str, tmp_path: Path) -> BlobStore:
    return make_store(backend, tmp_path / "store", StoreKeyring(KEY_A), SMALL)


def dummy(size: int, seed: int = 0) -> bytes:
    """Deterministic dummy bytes (no personal data)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"dummy %d %d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def collect(store: BlobStore, blob_id: str) -> tuple[bytes, BlobUnreadable | None]:
    """The plaintext yielded before reading stopped, and the error that stopped it."""
    got = bytearray()
    try:
        for chunk in store.read(blob_id):
            got += chunk
    except BlobUnreadable as error:
        return bytes(got), error
    return bytes(got), None


# --- round trips ------------------------------------------------------------------------

S = DEFAULT_SEGMENT_SIZE


@pytest.mark.parametrize("size", [0, 1, S - 1, S, S + 1, 2 * S, 3 * 1024 * 1024 + 7])
@pytest.mark.parametrize("chunk", [1000, S, 1 << 20])
def test_when_a_blob_of_any_size_is_written_then_it_reads_back_identical_with_its_size_and_sha256(
        store: BlobStore, size: int, chunk: int) -> None:
    data = dummy(size)
    info = store.write("b-1", pieces(data, chunk))
    assert info == BlobInfo("b-1", size, hashlib.sha256(data).hexdigest(), key_id_of(KEY_A))
    chunks = list(store.read("b-1"))
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= S for c in chunks)
    segments = max(1, -(-size // S))
    assert store.info("b-1").stored_size == HEADER_SIZE + size + segments * TAG_SIZE


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8),
       segment_size=st.sampled_from([1, 7, 64, 100]), kind=st.sampled_from(BACKENDS))
def test_when_data_arrives_in_any_chunking_then_the_round_trip_is_exact(
        tmp_path_factory: pytest.TempPathFactory, data: bytes, cuts: list[int], segment_size: int, kind: str) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])] + [b""]
    store = make_store(kind, tmp_path_factory.mktemp("store"), StoreKeyring(KEY_A), segment_size)
    assert store.write("x", iter(chunks)).sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(store.read("x")) == data


def test_when_the_caller_reuses_its_chunk_buffer_then_the_stored_blob_is_still_what_was_passed(store: BlobStore) -> None:
    buffer = bytearray(S)

    def chunks() -> Iterator[bytearray]:
        for i in range(3):
            buffer[:] = bytes([i]) * S
            yield buffer

    store.write("reuse", chunks())
    assert b"".join(store.read("reuse")) == b"\x00" * S + b"\x01" * S + b"\x02" * S


# --- corruption -------------------------------------------------------------------------

def _three_and_a_half_segments(store: BlobStore) -> bytes:
    data = dummy(3 * SMALL + SMALL // 2, seed=1)
    store.write("blob", pieces(data, 50))
    return data


def test_when_any_byte_of_header_or_body_is_changed_then_reading_fails_before_that_segment_yields(
        small_store: BlobStore) -> None:
    data = _three_and_a_half_segments(small_store)
    raw = Raw(small_store)
    original = raw.get("blob")
    stored_segment = SMALL + TAG_SIZE
    for position in range(len(original)):
        changed = bytearray(original)
        changed[position] ^= 0x01
        raw.put("blob", bytes(changed))
        got, error = collect(small_store, "blob")
        assert error is not None, f"a change at byte {position} was not detected"
        if position < HEADER_SIZE:
            assert got == b""  # the header is authenticated with the first segment
            expected: type[BlobUnreadable] = UnknownStoreKey if 14 <= position < 22 else BlobCorrupt
            assert type(error) is expected, position
        else:
            bad_segment = (position - HEADER_SIZE) // stored_segment
            assert isinstance(error, BlobCorrupt) and error.segment == bad_segment
            assert got == data[:bad_segment * SMALL]  # only the verified segments before it
        assert "blob" in str(error)


def test_when_the_blob_is_truncated_anywhere_then_reading_fails(small_store: BlobStore) -> None:
    _three_and_a_half_segments(small_store)
    raw = Raw(small_store)
    original = raw.get("blob")
    for length in range(len(original)):
        raw.put("blob", original[:length])
        assert isinstance(collect(small_store, "blob")[1], BlobCorrupt), length


@pytest.mark.parametrize("extra", [b"\x00", b"x" * TAG_SIZE, b"y" * (SMALL + TAG_SIZE)])
def test_when_bytes_are_appended_then_reading_fails(small_store: BlobStore, extra: bytes) -> None:
    _three_and_a_half_segments(small_store)
    raw = Raw(small_store)
    raw.put("blob", raw.get("blob") + extra)
    assert isinstance(collect(small_store, "blob")[1], BlobCorrupt)


def test_when_a_full_segment_is_appended_as_a_copy_of_the_last_then_reading_fails(small_store: BlobStore) -> None:
    data = dummy(2 * SMALL)
    small_store.write("even", [data])
    raw = Raw(small_store)
    stored = raw.get("even")
    raw.put("even", stored + stored[-(SMALL + TAG_SIZE):])
    got, error = collect(small_store, "even")
    assert isinstance(error, BlobCorrupt) and error.segment == 1 and got == data[:SMALL]


def _segments_of(stored: bytes) -> list[bytes]:
    return pieces(stored[HEADER_SIZE:], SMALL + TAG_SIZE)


@pytest.mark.parametrize("order", [(1, 0, 2, 3), (0, 2, 1, 3), (0, 1, 3), (1, 2, 3), (0, 1, 2)])
def test_when_segments_are_swapped_or_dropped_then_reading_fails_at_the_first_misplaced_one(
        small_store: BlobStore, order: tuple[int, ...]) -> None:
    _three_and_a_half_segments(small_store)
    raw = Raw(small_store)
    stored = raw.get("blob")
    segments = _segments_of(stored)
    raw.put("blob", stored[:HEADER_SIZE] + b"".join(segments[i] for i in order))
    _, error = collect(small_store, "blob")
    first_wrong = next(n for n, i in enumerate(order) if i != n) if order != (0, 1, 2) else 2
    assert isinstance(error, BlobCorrupt) and error.segment == first_wrong


def test_when_a_blob_is_stored_under_another_id_then_reading_fails(small_store: BlobStore) -> None:
    _three_and_a_half_segments(small_store)
    small_store.write("other", [b"dummy"])
    raw = Raw(small_store)
    raw.put("other", raw.get("blob"))
    _, error = collect(small_store, "other")
    assert isinstance(error, BlobCorrupt) and error.segment == 0


def test_when_the_header_is_short_or_not_a_blob_then_the_error_names_the_header(small_store: BlobStore) -> None:
    small_store.write("h", [b"dummy"])
    raw = Raw(small_store)
    for content in (b"", b"KEISTORE", b"plain text that is not a blob at all, 45+ bytes long"):
        raw.put("h", content)
        with pytest.raises(BlobCorrupt, match="blob h: header") as caught:
            b"".join(small_store.read("h"))
        assert caught.value.segment is None


# --- keys ---------------------------------------------------------------------------------

def test_when_a_blob_was_written_under_another_key_then_the_error_names_its_key_id_and_the_remedy(
        backend: str, tmp_path: Path) -> None:
    writer = make_store(backend, tmp_path / "store", StoreKeyring(KEY_A))
    writer.write("old", [b"dummy"])
    reader = make_store(backend, tmp_path / "store", StoreKeyring(KEY_B))
    if isinstance(reader, InMemoryBlobStore):
        assert isinstance(writer, InMemoryBlobStore)
        reader.blobs = writer.blobs
    with pytest.raises(UnknownStoreKey) as caught:
        reader.read("old")
    assert caught.value.key_id == key_id_of(KEY_A)
    assert key_id_of(KEY_A) in str(caught.value) and "keys.store_previous" in str(caught.value)
    assert KEY_A.hex() not in str(caught.value)


def test_when_the_key_rotates_then_old_blobs_read_with_the_previous_key_and_rekey_moves_them(
        backend: str, tmp_path: Path) -> None:
    old = make_store(backend, tmp_path / "store", StoreKeyring(KEY_A))
    data = dummy(3 * S + 5)
    old.write("kept", pieces(data, 4096))
    rotated = make_store(backend, tmp_path / "store", StoreKeyring(KEY_B, [KEY_A]))
    if isinstance(rotated, InMemoryBlobStore):
        assert isinstance(old, InMemoryBlobStore)
        rotated.blobs = old.blobs
    assert b"".join(rotated.read("kept")) == data
    assert rotated.info("kept").key_id == key_id_of(KEY_A)
    assert rotated.rekey("kept") is True
    assert rotated.info("kept").key_id == key_id_of(KEY_B)
    assert rotated.rekey("kept") is False
    only_new = make_store(backend, tmp_path / "store", StoreKeyring(KEY_B))
    if isinstance(only_new, InMemoryBlobStore):
        assert isinstance(rotated, InMemoryBlobStore)
        only_new.blobs = rotated.blobs
    assert b"".join(only_new.read("kept")) == data


def test_when_a_key_id_is_computed_then_it_is_stable_short_and_not_the_key() -> None:
    assert key_id_of(KEY_A) == key_id_of(bytes(KEY_A))
    assert len(key_id_of(KEY_A)) == 16 and key_id_of(KEY_A) != key_id_of(KEY_B)
    assert key_id_of(KEY_A) not in KEY_A.hex()
    assert StoreKeyring(KEY_B, [KEY_A, KEY_B]).ids == (key_id_of(KEY_B), key_id_of(KEY_A))
    assert KEY_A.hex() not in repr(StoreKeyring(KEY_A))


@pytest.mark.parametrize("content", [
    KEY_A, base64.b64encode(KEY_A), base64.b64encode(KEY_A) + b"\n", base64.urlsafe_b64encode(b"\xff" * 32) + b"\n",
])
def test_when_a_key_file_holds_32_raw_bytes_or_their_base64_then_it_loads(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "store.key"
    path.write_bytes(content)
    assert len(load_store_key(str(path))) == 32


@pytest.mark.parametrize("content", [
    b"", KEY_A[:31], KEY_A + b"\n", KEY_A.hex().encode(), b"correct horse battery staple 123",
    bytes(32), base64.b64encode(KEY_A[:16]),
])
def test_when_a_key_file_is_not_32_random_bytes_then_the_error_names_the_file_and_how_to_make_one(
        tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "store.key"
    path.write_bytes(content)
    with pytest.raises(StoreKeyError) as caught:
        load_store_key(str(path))
    assert str(path) in str(caught.value) and "head -c 32 /dev/urandom" in str(caught.value)


def test_when_a_key_file_is_missing_then_the_error_names_it(tmp_path: Path) -> None:
    with pytest.raises(StoreKeyError, match="missing.key: cannot read"):
        load_store_key(str(tmp_path / "missing.key"))


# --- the interface ------------------------------------------------------------------------

def test_when_an_id_is_taken_then_write_refuses_unless_replace_is_given(store: BlobStore) -> None:
    store.write("dup", [b"first"])
    with pytest.raises(BlobExists):
        store.write("dup", [b"second"])
    assert b"".join(store.read("dup")) == b"first"
    store.write("dup", [b"second"], replace=True)
    assert b"".join(store.read("dup")) == b"second"


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", ".hidden", ".tmp-x", "-x", "x" * 129, "名前", "a b", "x\x00"])
def test_when_a_blob_id_is_not_a_plain_name_then_every_method_refuses_it(store: BlobStore, bad: str) -> None:
    for call in (lambda: store.write(bad, [b"x"]), lambda: store.read(bad), lambda: store.exists(bad),
                 lambda: store.delete(bad), lambda: store.info(bad), lambda: store.rekey(bad)):
        with pytest.raises(InvalidBlobId):
            call()


def test_when_a_blob_is_missing_then_read_info_and_rekey_raise_and_delete_says_false(store: BlobStore) -> None:
    for call in (lambda: store.read("nope"), lambda: store.info("nope"), lambda: store.rekey("nope")):
        with pytest.raises(BlobNotFound, match="blob nope: not in the store"):
            call()
    assert store.delete("nope") is False
    assert store.exists("nope") is False


def test_when_blobs_are_written_and_deleted_then_list_ids_and_exists_follow(store: BlobStore) -> None:
    for blob_id in ("c", "a.1", "b_2"):
        store.write(blob_id, [b"dummy"])
    assert store.list_ids() == ["a.1", "b_2", "c"]
    assert store.delete("b_2") is True
    assert store.list_ids() == ["a.1", "c"] and not store.exists("b_2") and store.exists("c")
    assert store.info("c").key_id == key_id_of(KEY_A)


def test_when_the_chunks_fail_mid_write_then_no_blob_exists_under_the_name(store: BlobStore) -> None:
    def failing() -> Iterator[bytes]:
        yield dummy(S * 2)
        raise OSError("the source file vanished")

    with pytest.raises(OSError, match="vanished"):
        store.write("half", failing())
    assert not store.exists("half") and store.list_ids() == []
    if isinstance(store, FileBlobStore):
        assert os.listdir(store.directory) == []


# --- the file store: crash safety, modes, memory ---------------------------------------

@pytest.mark.integration  # kills a writer process
def test_when_the_process_dies_mid_write_then_no_blob_exists_and_recover_removes_the_temp(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_A))

    def dies() -> Iterator[bytes]:
        yield dummy(S * 3)
        os._exit(0)  # the crash: no cleanup, no rename

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            store.write("crashed", dies())
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    leftovers = [n for n in os.listdir(store.directory) if n.startswith(".tmp-")]
    assert len(leftovers) == 1
    assert not store.exists("crashed") and store.list_ids() == []
    assert store.recover() == 1
    assert [n for n in os.listdir(store.directory) if n.startswith(".tmp-")] == []
    assert store.recover() == 0


def test_when_a_writer_is_still_alive_then_recover_leaves_its_temp_alone(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_A))
    fd, temp = store._new_temp("busy")
    try:
        assert store.recover() == 0 and os.path.exists(temp)
    finally:
        os.close(fd)
    assert store.recover() == 1 and not os.path.exists(temp)


def test_when_a_blob_is_deleted_while_it_is_rekeyed_then_rekey_does_not_bring_it_back(tmp_path: Path) -> None:
    FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_A)).write("purged", [dummy(3 * S)])

    class PurgedMeanwhile(FileBlobStore):
        def _write_temp(self, blob_id: str, chunks: Iterable[bytes]) -> tuple[int, str, BlobInfo]:
            result = super()._write_temp(blob_id, chunks)
            assert self.delete(blob_id)  # the daily purge, in another thread or process
            return result

    store = PurgedMeanwhile(str(tmp_path / "store"), StoreKeyring(KEY_B, [KEY_A]))
    assert store.rekey("purged") is False
    assert os.listdir(store.directory) == []


def test_when_a_symlink_sits_under_a_blob_id_then_it_is_not_followed(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_A))
    store.write("real", [b"dummy"])
    os.symlink(tmp_path / "store" / "real", tmp_path / "store" / "link")
    assert not store.exists("link") and store.list_ids() == ["real"]
    with pytest.raises(BlobCorrupt, match="symbolic link"):
        store.read("link")


def test_when_blobs_are_written_then_files_are_0600_and_the_directory_0700(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_A))
    store.write("mode", [b"dummy"])
    store.write("mode", [b"dummy 2"], replace=True)
    FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_B, [KEY_A])).rekey("mode")
    assert stat.S_IMODE(os.stat(tmp_path / "store" / "mode").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "store").st_mode) == 0o700


def test_when_a_large_blob_is_written_then_writeback_follows_it_and_at_most_two_steps_stay_dirty(
        tmp_path: Path) -> None:
    """Issue 11: a 2 GiB quarantine copy stayed dirty until its final fsync, which then held the filesystem's
    other fsyncs (/healthz). The writer starts each step's writeback and waits for the step before it."""
    step = 4096
    started: list[tuple[int, int]] = []
    on_disk = 0
    path = tmp_path / "blob"
    with open(path, "wb", buffering=1 << 20) as out:
        def sync(fd: int, offset: int, length: int, flags: int) -> None:
            nonlocal on_disk
            assert fd == out.fileno() and os.fstat(fd).st_size >= offset + length, "flushed before its writeback"
            if flags & 4:  # SYNC_FILE_RANGE_WAIT_AFTER
                assert offset == on_disk, "waited for in order"
                on_disk = offset + length
            else:
                assert flags == 2  # SYNC_FILE_RANGE_WRITE
                started.append((offset, length))

        writer = BoundedWriteback(out.fileno(), out, step=step, sync=sync)
        data = os.urandom(1000)
        for n in range(1, 41):
            writer.write(data)
            assert n * len(data) - on_disk <= 2 * step + len(data), "at most two steps (and a write) not on disk"
    assert path.read_bytes() == data * 40
    assert [offset for offset, _ in started] == [sum(length for _, length in started[:n]) for n in range(len(started))]
    assert sum(length for _, length in started) >= 40_000 - step


def test_when_sync_file_range_is_refused_then_the_blob_is_written_whole_all_the_same(tmp_path: Path) -> None:
    def refuse(*_: int) -> None:
        raise OSError(95, "Operation not supported")

    path = tmp_path / "blob"
    with open(path, "wb") as out:
        writer = BoundedWriteback(out.fileno(), out, step=10, sync=refuse)
        for n in range(10):
            writer.write(bytes([n]) * 7)
    assert path.read_bytes() == b"".join(bytes([n]) * 7 for n in range(10))


def test_when_64_mib_are_written_and_read_then_memory_stays_within_a_few_segments(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_A))
    chunk = dummy(1 << 20)
    total = 64

    def source() -> Iterator[bytes]:
        for i in range(total):
            yield bytearray(chunk)  # a new 1 MiB object each time, as a file reader makes

    tracemalloc.start()
    try:
        info = store.write("big", source())
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        largest = 0
        for piece in store.read("big"):
            largest = max(largest, len(piece))
            digest.update(piece)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == total << 20 and digest.hexdigest() == info.sha256
    assert largest == S
    # the caller's chunk (1 MiB) + the file buffer (1 MiB) + a few 64 KiB segments
    assert write_peak < 3 << 20, write_peak
    assert read_peak < 1 << 20, read_peak


# --- configuration and the CLI --------------------------------------------------------------

def _config(tmp_path: Path, store_key: str, previous: Iterable[str] = ()) -> Path:
    text = demo_config_text(str(tmp_path), 9464).replace(
        f'store = "{tmp_path}/credentials/store.key"',
        f'store = "{store_key}"\nstore_previous = [{", ".join(repr(str(p)).replace(chr(39), chr(34)) for p in previous)}]')
    path = tmp_path / "kei-gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_when_store_previous_is_group_readable_then_check_files_names_it(tmp_path: Path) -> None:
    (tmp_path / "old.key").write_bytes(KEY_A)
    os.chmod(tmp_path / "old.key", 0o640)
    config = config_from_string(_config(tmp_path, str(tmp_path / "new.key"), [tmp_path / "old.key"]).read_text())
    assert config.keys.store_previous == (str(tmp_path / "old.key"),)
    problems = [p for p in check_files(config) if p.path.startswith("keys.store_previous")]
    assert len(problems) == 1 and problems[0].path == "keys.store_previous[0]" and "chmod 600" in problems[0].message


def test_when_keys_generate_runs_then_it_writes_32_random_bytes_0600_and_never_overwrites(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "new.key"
    assert cli.main(["keys", "generate", "--output", str(target)]) == exitcodes.OK
    key = target.read_bytes()
    assert len(key) == 32 and load_store_key(str(target)) == key
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert cli.main(["keys", "generate", "--output", str(target)]) == exitcodes.FAILED
    assert "never overwritten" in capsys.readouterr().err and target.read_bytes() == key


def test_when_keys_rotate_runs_after_a_key_change_then_every_blob_moves_and_a_rerun_finds_none(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old_key, new_key = tmp_path / "old.key", tmp_path / "new.key"
    for path, key in ((old_key, KEY_A), (new_key, KEY_B)):
        path.write_bytes(key)
        path.chmod(0o600)
    directory = tmp_path / "state" / "store"
    before = FileBlobStore(str(directory), StoreKeyring(KEY_A))
    contents = {f"t-{i}": dummy(i * 50_000, seed=i) for i in range(4)}
    for blob_id, data in contents.items():
        before.write(blob_id, pieces(data, 8192))
    # an earlier run was interrupted: one blob already moved, one temp left by a killed writer
    FileBlobStore(str(directory), StoreKeyring(KEY_B, [KEY_A])).rekey("t-0")
    (directory / ".tmp-t-1-deadbeef").write_bytes(b"half written")
    config = _config(tmp_path, str(new_key), [old_key])

    assert cli.main(["-c", str(config), "keys", "rotate"]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "4 blob(s)" in out and "re-encrypted now:            3" in out
    assert "already under the current key: 1" in out and "leftovers of interrupted writes removed: 1" in out
    assert "keys.store_previous can now be emptied" in out

    assert cli.main(["-c", str(config), "keys", "rotate"]) == exitcodes.OK
    assert "re-encrypted now:            0" in capsys.readouterr().out
    after = FileBlobStore(str(directory), StoreKeyring(KEY_B))
    assert {b: b"".join(after.read(b)) for b in after.list_ids()} == contents


def test_when_a_blob_cannot_be_read_then_keys_rotate_exits_1_and_says_to_keep_store_previous(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old_key, new_key = tmp_path / "old.key", tmp_path / "new.key"
    for path, key in ((old_key, KEY_A), (new_key, KEY_B)):
        path.write_bytes(key)
        path.chmod(0o600)
    directory = tmp_path / "state" / "store"
    FileBlobStore(str(directory), StoreKeyring(KEY_A)).write("good", [b"dummy"])
    (directory / "bad").write_bytes(b"not a blob")
    config = _config(tmp_path, str(new_key), [old_key])
    assert cli.main(["-c", str(config), "keys", "rotate"]) == exitcodes.FAILED
    captured = capsys.readouterr()
    assert "re-encrypted now:            1" in captured.out
    assert "blob bad: header" in captured.err and "Keep keys.store_previous" in captured.err


def test_when_a_previous_key_is_group_readable_then_keys_rotate_exits_2_naming_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "old.key").write_bytes(KEY_A)
    (tmp_path / "old.key").chmod(0o644)
    (tmp_path / "new.key").write_bytes(KEY_B)
    (tmp_path / "new.key").chmod(0o600)
    config = _config(tmp_path, str(tmp_path / "new.key"), [tmp_path / "old.key"])
    assert cli.main(["-c", str(config), "keys", "rotate"]) == exitcodes.USAGE
    assert "keys.store_previous[0]" in capsys.readouterr().err


def test_when_a_key_file_is_not_a_key_then_keys_rotate_exits_2_with_how_to_make_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "new.key").write_text("password\n")
    (tmp_path / "new.key").chmod(0o600)
    config = _config(tmp_path, str(tmp_path / "new.key"))
    assert cli.main(["-c", str(config), "keys", "rotate"]) == exitcodes.USAGE
    assert "head -c 32 /dev/urandom" in capsys.readouterr().err


def test_when_another_node_holds_a_blob_locked_then_other_blobs_go_on_and_that_blob_is_refused_not_waited_for(
        tmp_path: Path) -> None:
    """The store is shared by two nodes (SPEC §14): a node stopped (SIGSTOP) while deleting or re-encrypting a blob
    holds that blob's own lock and nothing else. The other node's new blobs, and its deletes and replaces of other
    blobs (an invalid file's clean-up, a push's discard, the purge), go on; a delete of the held blob gives up after
    ``lock_wait`` with :class:`BlobBusy` and changes nothing (the purge retries it at its next run) — never a wait
    as long as the other's stop (the clean-clone chaos loop saw a node hang behind a stopped one's store lock)."""
    store = FileBlobStore(str(tmp_path / "store"), StoreKeyring(os.urandom(32)))
    store.lock_wait = 0.0  # one attempt: no clock in a unit test
    store.write("held", [b"payload"])
    store.write("other", [b"other"])
    stopped_node = os.open(os.path.join(store.directory, "held"), os.O_RDWR)  # its own open file description
    fcntl.flock(stopped_node, fcntl.LOCK_EX)
    try:
        store.write("b-new", [b"new"])
        assert store.delete("other") and not store.exists("other")
        store.write("b-new", [b"newer"], replace=True)
        with pytest.raises(BlobBusy, match="blob held: another process .* held it for more than 0s"):
            store.delete("held")
        with pytest.raises(BlobBusy):
            store.write("held", [b"replacement"], replace=True)
        assert collect(store, "held") == (b"payload", None), "nothing changed"
        assert sorted(n for n in os.listdir(store.directory)) == ["b-new", "held"], "no temp left behind"
    finally:
        os.close(stopped_node)
    assert store.delete("held") and store.list_ids() == ["b-new"]
    assert collect(store, "b-new") == (b"newer", None)


def test_when_a_blob_is_replaced_between_the_open_and_the_lock_then_the_lock_follows_the_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock is on the blob the name holds at the moment it is locked: a delete never unlinks a newer blob it
    did not lock, a rekey never replaces one it did not read."""
    store = FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_A))
    store.write("moving", [b"first"])
    swapped: list[str] = []
    real_flock = fcntl.flock

    def swap_then_lock(fd: int, operation: int) -> None:
        if not swapped:
            swapped.append("replaced")
            FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_A)).write("moving", [b"second"], replace=True)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", swap_then_lock)
    lock = store._lock_blob("moving")
    monkeypatch.undo()
    assert lock is not None and swapped == ["replaced"]
    try:
        assert os.fstat(lock).st_ino == os.stat(os.path.join(store.directory, "moving")).st_ino
    finally:
        os.close(lock)
    assert collect(store, "moving") == (b"second", None)


def test_when_a_symlink_sits_under_a_blob_id_then_delete_removes_the_link_not_its_target(tmp_path: Path) -> None:
    store = FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_A))
    store.write("real", [b"dummy"])
    os.symlink(tmp_path / "store" / "real", tmp_path / "store" / "link")
    assert store.delete("link")
    assert not os.path.lexists(tmp_path / "store" / "link") and store.list_ids() == ["real"]


def test_when_keys_rotate_finds_a_blob_held_by_another_process_then_it_lists_it_as_failed_and_goes_on(
        tmp_path: Path) -> None:
    """A blob the other node is deleting (the purge, stopped in the middle): rotation does not wait for it, moves
    the others and says which one to run it again for."""
    from kei_gateway.cli.keys import rotate_store

    FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_A)).write("held", [b"one"])
    FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_A)).write("free", [b"two"])
    store = FileBlobStore(str(tmp_path / "store"), StoreKeyring(KEY_B, [KEY_A]))
    store.lock_wait = 0.0
    other = os.open(tmp_path / "store" / "held", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        counts = rotate_store(store)
    finally:
        os.close(other)
    assert (counts.total, counts.reencrypted, len(counts.failed)) == (2, 1, 1)
    assert "blob held: another process" in counts.failed[0]
    assert store.info("free").key_id == key_id_of(KEY_B) and store.info("held").key_id == key_id_of(KEY_A)
    assert rotate_store(store).reencrypted == 1, "a second run moves it"
