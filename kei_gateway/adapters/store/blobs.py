"""The encrypted store: every payload the gateway keeps, AES-256-GCM at rest (SPEC §7).

A blob is written and read as a stream in bounded memory (a few segments,
whatever its size), under the key of ``[keys] store``; older keys named in
``[keys] store_previous`` still read the blobs written under them until
``kei-gateway keys rotate`` has re-encrypted those.

The blob format is :mod:`kei_gateway.adapters.store.format`; key files are
:mod:`kei_gateway.adapters.store.keys`.

On disk (:class:`FileBlobStore`) each blob is one file ``<directory>/<blob id>``, mode 0600.
Writes go to a locked temp file ``.tmp-*`` in the same directory, are fsynced, renamed
(linked) to the final name and the directory is fsynced, so a crash leaves either the
whole blob or none under its name; :meth:`FileBlobStore.recover` removes temps whose
writer is gone (their ``flock`` is free), which is safe while another process writes.

All methods block (disk, fsync, encryption): the daemon calls them through its one door,
:class:`kei_gateway.runtime.blocking.Blocking`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, BinaryIO, Protocol

from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from kei_gateway.adapters.durable import fsync_directory
from kei_gateway.adapters.store.errors import BlobBusy, BlobCorrupt, BlobExists, BlobNotFound
from kei_gateway.adapters.store.format import BlobInfo, BlobStat, DEFAULT_SEGMENT_SIZE, HEADER_SIZE, BLOB_ID_PATTERN, read_exact, decrypt_stream, encrypt_stream, read_header, validate_blob_id
from kei_gateway.adapters.store.keys import StoreKeyring, keyring_from_config

if TYPE_CHECKING:
    from kei_gateway.config import Config

__all__ = ["BlobStore", "FileBlobStore", "store_directory", "open_store"]

_TEMP_PREFIX = ".tmp-"
LOCK_WAIT = 2.0
"""Seconds a delete or re-encryption retries a blob another process holds locked, then :class:`BlobBusy`."""
_LOCK_POLL = 0.05


def store_directory(config: Config) -> str:
    return os.path.join(config.gateway.state_dir, "store")


def open_store(config: Config, environ: Mapping[str, str] = os.environ) -> FileBlobStore:
    """The store under ``<gateway.state_dir>/store`` with the configured keys (call :meth:`~FileBlobStore.recover` at start)."""
    return FileBlobStore(store_directory(config), keyring_from_config(config, environ))


# --- the interface and the filesystem adapter --------------------------------------

class BlobStore(Protocol):
    """Encrypted blobs by id. Every method blocks: call through :class:`~kei_gateway.runtime.blocking.Blocking`."""

    keyring: StoreKeyring

    def write(self, blob_id: str, chunks: Iterable[bytes], *, replace: bool = False) -> BlobInfo:
        """Store *chunks* under the current key, all or nothing; :class:`BlobExists` unless *replace*."""
        ...

    def read(self, blob_id: str) -> Iterator[bytes]:
        """The plaintext, one verified segment at a time; :class:`BlobNotFound`, :class:`BlobUnreadable`."""
        ...

    def exists(self, blob_id: str) -> bool:
        ...

    def delete(self, blob_id: str) -> bool:
        """Erase the blob durably; False if there was none."""
        ...

    def list_ids(self) -> list[str]:
        """Every blob id, sorted."""
        ...

    def info(self, blob_id: str) -> BlobStat:
        """Key id and stored size from the header, without decrypting; :class:`BlobNotFound`."""
        ...

    def rekey(self, blob_id: str) -> bool:
        """Re-encrypt under the current key, all or nothing; False if it already was (or vanished meanwhile)."""
        ...

    def recover(self) -> int:
        """Remove what interrupted writes left behind; the number of temp files removed."""
        ...


class FileBlobStore:
    """:class:`BlobStore` on a local directory (``<state_dir>/store``, mode 0700), one file per blob."""

    def __init__(self, directory: str, keyring: StoreKeyring, segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        self.directory = os.path.abspath(directory)
        self.keyring = keyring
        self.segment_size = segment_size
        self.lock_wait = LOCK_WAIT
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def _path(self, blob_id: str) -> str:
        return os.path.join(self.directory, validate_blob_id(blob_id))

    def _lock_blob(self, blob_id: str) -> int | None:
        """Lock the blob now under *blob_id*'s name, for a change of that name that must not race another: a
        replace (whose check-then-replace in :meth:`rekey` must not bring back a blob deleted meanwhile) and an
        unlink. The descriptor holding the lock, or None when there is no blob; :class:`BlobBusy` after
        :attr:`lock_wait` seconds.

        The lock is the blob file's own ``flock``, never a store-wide one: the store is shared by the nodes of
        SPEC §14, and a node stopped (SIGSTOP, a paused VM) while holding a lock must hold no other blob than
        the one it was changing — not the other node's pushes, ingests or their clean-up. It is taken without
        blocking, retried for at most :attr:`lock_wait`: never a wait as long as the other's stop. Held for the
        rename or unlink alone, never for a directory fsync."""
        final = self._path(blob_id)
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                fd = _open_for_lock(final)
            except FileNotFoundError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise BlobBusy(blob_id, self.lock_wait) from None
                time.sleep(_LOCK_POLL)
                continue
            try:
                now = os.lstat(final)
            except FileNotFoundError:
                now = None
            held = os.fstat(fd)
            if now is not None and (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev):
                return fd
            os.close(fd)  # deleted or replaced between the open and the lock: look again
            if now is None:
                return None

    def _new_temp(self, blob_id: str) -> tuple[int, str]:
        """A fresh temp file, exclusively locked for as long as its writer lives (see :meth:`recover`)."""
        while True:
            path = os.path.join(self.directory, f"{_TEMP_PREFIX}{blob_id}-{secrets.token_hex(8)}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd, path
            except FileNotFoundError:
                pass  # recover() took it between open and flock: make another
            os.close(fd)

    def _write_temp(self, blob_id: str, chunks: Iterable[bytes]) -> tuple[int, str, BlobInfo]:
        fd, temp = self._new_temp(blob_id)
        try:
            with open(fd, "wb", closefd=False, buffering=1 << 20) as out:
                info = encrypt_stream(self.keyring, blob_id, chunks, BoundedWriteback(fd, out).write,
                                      self.segment_size)
            os.fsync(fd)
        except BaseException:
            _discard(fd, temp)
            raise
        return fd, temp, info

    def write(self, blob_id: str, chunks: Iterable[bytes], *, replace: bool = False) -> BlobInfo:
        final = self._path(blob_id)
        fd, temp, info = self._write_temp(blob_id, chunks)
        try:
            if replace:
                lock = self._lock_blob(blob_id)
                try:
                    os.replace(temp, final)
                finally:
                    if lock is not None:
                        os.close(lock)
            else:
                try:
                    os.link(temp, final)  # never clobbers (EEXIST): no lock, see _lock_blob
                except FileExistsError:
                    raise BlobExists(blob_id) from None
                os.unlink(temp)
            fsync_directory(self.directory)
        except BaseException:
            _discard(fd, temp)
            raise
        os.close(fd)
        return info

    def read(self, blob_id: str) -> Iterator[bytes]:
        f = _open_blob(self._path(blob_id), blob_id)
        try:
            segments = decrypt_stream(self.keyring, blob_id, f.read)
        except BaseException:
            f.close()
            raise
        return _closing(segments, f.close)

    def exists(self, blob_id: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self._path(blob_id)).st_mode)
        except FileNotFoundError:
            return False

    def delete(self, blob_id: str) -> bool:
        path = self._path(blob_id)
        try:
            lock = self._lock_blob(blob_id)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            os.unlink(path)  # a symbolic link, not a blob (never followed): nothing to race, removed
            fsync_directory(self.directory)
            return True
        if lock is None:
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        finally:
            os.close(lock)
        fsync_directory(self.directory)
        return True

    def list_ids(self) -> list[str]:
        ids = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if BLOB_ID_PATTERN.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    ids.append(entry.name)
        return sorted(ids)

    def info(self, blob_id: str) -> BlobStat:
        with _open_blob(self._path(blob_id), blob_id) as f:
            header = read_header(blob_id, read_exact(f.read, HEADER_SIZE))
            size = os.fstat(f.fileno()).st_size
        return BlobStat(blob_id, header.key_id, size)

    def rekey(self, blob_id: str) -> bool:
        final = self._path(blob_id)
        with _open_blob(final, blob_id) as source:
            header = read_header(blob_id, read_exact(source.read, HEADER_SIZE))
            if header.key_id == self.keyring.current_id:
                return False
            source.seek(0)
            identity = os.fstat(source.fileno())
            fd, temp, _ = self._write_temp(blob_id, decrypt_stream(self.keyring, blob_id, source.read))
        try:
            lock = self._lock_blob(blob_id)
            try:
                held = os.fstat(lock) if lock is not None else None
                if held is None or (held.st_ino, held.st_dev) != (identity.st_ino, identity.st_dev):
                    _discard(fd, temp)  # deleted or replaced meanwhile: never bring old data back
                    return False
                os.replace(temp, final)
            finally:
                if lock is not None:
                    os.close(lock)
            fsync_directory(self.directory)
        except BaseException:
            _discard(fd, temp)
            raise
        os.close(fd)
        return True

    def recover(self) -> int:
        removed = 0
        with os.scandir(self.directory) as entries:
            temps = [e.path for e in entries if e.name.startswith(_TEMP_PREFIX)]
        for path in temps:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                        continue  # a live writer holds it
                    raise
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
            finally:
                os.close(fd)
        if removed:
            fsync_directory(self.directory)
        return removed


def _open_for_lock(path: str) -> int:
    """A descriptor of the blob file to lock: read-write where allowed (a lock emulated over NFS, as POSIX locks,
    wants it for an exclusive lock), else read-only (a blob made read-only by hand); never through a symlink."""
    try:
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _open_blob(path: str, blob_id: str) -> BinaryIO:
    """The blob file, unbuffered; never through a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BlobNotFound(blob_id) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BlobCorrupt(blob_id, None, "the store holds a symbolic link under this id, not a blob") from None
        raise
    return open(fd, "rb", buffering=0)


_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4
"""``SYNC_FILE_RANGE_WAIT_BEFORE``, ``_WRITE`` and ``_WAIT_AFTER`` of Linux's ``<fcntl.h>``."""


def _libc_sync_file_range() -> Callable[[int, int, int, int], None] | None:
    """``sync_file_range(2)``: ``os.sync_file_range`` where Python has it (not every build does: this one's
    interpreter lacks it), else glibc's through ctypes; None where neither exists."""
    if hasattr(os, "sync_file_range"):
        return os.sync_file_range  # type: ignore[no-any-return]
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def sync_file_range(fd: int, offset: int, length: int, flags: int) -> None:
        if function(fd, offset, length, flags) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return sync_file_range


WRITEBACK_STEP = 8 << 20
"""Bytes of a blob written between two writebacks started by :class:`BoundedWriteback`."""


class BoundedWriteback:
    """Writes through *out* (buffered, on *fd*) and keeps at most about two steps of the file dirty in the page cache.

    Every :data:`WRITEBACK_STEP` bytes it starts the writeback of the step just written and waits for the one
    before (``sync_file_range``, Linux). Without it a 2 GiB blob stayed dirty until its final fsync, and that
    fsync's flush of gigabytes held every other fsync of the filesystem meanwhile (a ``/healthz`` store probe took
    0.8 s, issue 11) and charged the dirty pages to the unit's ``MemoryMax``. The final fsync still makes the blob
    durable; this only spreads the disk writes over the time the blob is made. Where ``sync_file_range`` does
    not exist or is refused, writes are as before.
    """

    def __init__(self, fd: int, out: BinaryIO, step: int = WRITEBACK_STEP,
                 sync: Callable[[int, int, int, int], None] | None = None) -> None:
        self._fd = fd
        self._out = out
        self._step = step
        self._written = 0
        self._started = 0  # bytes whose writeback has been started
        self._waited = 0  # bytes known to be on disk
        self._sync = sync or _SYNC_FILE_RANGE

    def write(self, data: bytes) -> None:
        self._out.write(data)
        self._written += len(data)
        if self._sync is not None and self._written - self._started >= self._step:
            self._out.flush()
            try:
                if self._started > self._waited:  # the step before: wait until it is on disk (it had a step's time)
                    self._sync(self._fd, self._waited, self._started - self._waited,
                               _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
                self._sync(self._fd, self._started, self._written - self._started, _WRITE)
            except OSError:
                self._sync = None  # e.g. a filesystem that does not support it: leave it to the final fsync
                return
            self._waited, self._started = self._started, self._written


_SYNC_FILE_RANGE = _libc_sync_file_range()


def _discard(fd: int, path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass


def _closing(segments: Iterator[bytes], close: Callable[[], None]) -> Iterator[bytes]:
    try:
        yield from segments
    finally:
        close()
