"""The encrypted store: every payload the gateway keeps, AES-256-GCM at rest (SPEC §7).

A blob is written and read as a stream in bounded memory (a few segments,
whatever its size), under the key of ``[keys] store``; older keys named in
``[keys] store_previous`` still read the blobs written under them until
``kei-gateway keys rotate`` has re-encrypted those.

Blob format, version 1
----------------------

A 45-byte header, then the payload in segments::

    offset size  field
    0      8     magic b"KEISTORE"
    8      1     format version, 1
    9      1     flags, 0 (reserved)
    10     4     plaintext bytes per segment S, big-endian (65536 by default; 1..16 MiB)
    14     8     key id: the first 8 bytes of SHA-256(b"kei-gateway store key id v1\\0" || key)
    22     16    salt, random per blob
    38     7     nonce prefix, random per blob

    segment i: AES-256-GCM(blob key, nonce_i, plaintext_i, associated data) = ciphertext_i || tag_i (16 bytes)

* ``blob key = HKDF-SHA256(key, salt, info=b"kei-gateway store segment key v1")``: a fresh
  key per blob, so random nonces never meet under one key however many blobs are written.
* ``nonce_i = prefix (7) || i as uint32 big-endian (4) || last (1: 0x01 on the final
  segment, else 0x00)`` — the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015;
  the layout of Tink's AES-GCM-HKDF streaming AEAD).
* ``associated data = header (45 bytes) || blob id (UTF-8)``: the header cannot be changed and
  a blob file cannot be renamed to another id without the first segment failing.
* Every segment but the last holds exactly S plaintext bytes; the last holds 0..S (an empty
  blob is one empty final segment, 16 bytes of tag).

Reading decrypts and verifies each segment before yielding its plaintext, so a changed
byte, a truncation (the new final segment was not sealed as final), an append (the
true final segment is no longer last), or swapped/reordered segments (counter in the
nonce) raise :class:`BlobCorrupt` naming the blob and segment, and no plaintext of a bad
segment is ever returned. Plaintext of the *earlier*, verified segments has been yielded
by then: a caller that must not act on a partial blob (an upload) aborts what it started.

On disk (:class:`FileBlobStore`) each blob is one file ``<directory>/<blob id>``, mode 0600.
Writes go to a locked temp file ``.tmp-*`` in the same directory, are fsynced, renamed
(linked) to the final name and the directory is fsynced, so a crash leaves either the
whole blob or none under its name; :meth:`FileBlobStore.recover` removes temps whose
writer is gone (their ``flock`` is free), which is safe while another process writes.

All methods block (disk, fsync, encryption): the daemon calls them through its one door,
:class:`kei_gateway.blocking.Blocking`.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import hashlib
import os
import re
import secrets
import stat
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from kei_gateway.config import Config

__all__ = [
    "BlobStore", "FileBlobStore", "StoreKeyring", "BlobInfo", "BlobStat",
    "StoreError", "StoreKeyError", "InvalidBlobId", "BlobNotFound", "BlobExists", "BlobUnreadable",
    "BlobCorrupt", "UnknownStoreKey",
    "load_store_key", "parse_store_key", "key_id_of", "store_directory", "keyring_from_config", "open_store", "validate_blob_id",
    "encrypt_stream", "decrypt_stream", "read_header", "degenerations_blob_id",
    "KEY_BYTES", "DEFAULT_SEGMENT_SIZE", "MAX_SEGMENT_SIZE", "HEADER_SIZE", "TAG_SIZE", "MAGIC", "FORMAT_VERSION",
]

KEY_BYTES = 32
MAGIC = b"KEISTORE"
FORMAT_VERSION = 1
DEFAULT_SEGMENT_SIZE = 64 * 1024
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
TAG_SIZE = 16
_HEADER = struct.Struct(">8sBBI8s16s7s")
HEADER_SIZE = _HEADER.size  # 45
_KEY_ID_DOMAIN = b"kei-gateway store key id v1\x00"
_HKDF_INFO = b"kei-gateway store segment key v1"
_MAX_SEGMENTS = 1 << 32
_BLOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TEMP_PREFIX = ".tmp-"
_LOCK_NAME = ".lock"


# --- errors -------------------------------------------------------------------------

class StoreError(Exception):
    """Base of every error of the encrypted store."""


class StoreKeyError(StoreError):
    """A store key file is unusable; the message names the file and what to write."""


class InvalidBlobId(StoreError, ValueError):
    """A blob id that is not ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``."""


class BlobNotFound(StoreError, KeyError):
    """No blob has this id."""

    def __init__(self, blob_id: str) -> None:
        self.blob_id = blob_id
        super().__init__(blob_id)

    def __str__(self) -> str:
        return f"blob {self.blob_id}: not in the store"


class BlobExists(StoreError):
    """A write without ``replace=True`` found a blob under that id already."""

    def __init__(self, blob_id: str) -> None:
        self.blob_id = blob_id
        super().__init__(f"blob {blob_id}: already in the store; delete it first or write with replace=True")


class BlobUnreadable(StoreError):
    """A blob cannot be decrypted: corrupt, or written under a key not configured."""

    blob_id: str


class BlobCorrupt(BlobUnreadable):
    """A blob failed verification; :attr:`segment` is the failing segment (``None``: the header)."""

    def __init__(self, blob_id: str, segment: int | None, reason: str) -> None:
        self.blob_id = blob_id
        self.segment = segment
        self.reason = reason
        where = "header" if segment is None else f"segment {segment}"
        super().__init__(f"blob {blob_id}: {where}: {reason}; the blob is corrupt or was tampered with "
                         f"and cannot be used (no unverified data was returned)")


class UnknownStoreKey(BlobUnreadable):
    """A blob was written under a key that is neither ``keys.store`` nor in ``keys.store_previous``."""

    def __init__(self, blob_id: str, key_id: str, known: Sequence[str]) -> None:
        self.blob_id = blob_id
        self.key_id = key_id
        self.known = tuple(known)
        super().__init__(f"blob {blob_id}: written under store key id {key_id}, which is not configured "
                         f"(configured key ids: {', '.join(known) or 'none'}); add the key file it was written "
                         f"under to keys.store_previous, then run 'kei-gateway keys rotate'")


# --- keys -----------------------------------------------------------------------------

def key_id_of(key: bytes) -> str:
    """The public id of a key (16 hex characters), stable and never revealing the key."""
    return hashlib.sha256(_KEY_ID_DOMAIN + key).hexdigest()[:16]


def _key_problem(path: str, problem: str) -> StoreKeyError:
    return StoreKeyError(f"{path}: {problem}; a store key is 32 random bytes, raw or base64: create one with "
                         f"'kei-gateway keys generate --output {path}' or 'head -c 32 /dev/urandom > {path} && chmod 600 {path}'")


def parse_store_key(data: bytes, path: str) -> bytes:
    """The 32-byte key held by a key file's contents: raw bytes, or base64 text."""
    if len(data) == KEY_BYTES:
        # 32 printable ASCII characters are a typed password or hex, not random bytes
        # (a random key is all printable with probability ~1e-14).
        if all(32 <= b < 127 or b in b"\t\r\n" for b in data):
            raise _key_problem(path, "holds 32 characters of text, not 32 random bytes")
        key = data
    else:
        text = data.strip()
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            try:
                key = base64.urlsafe_b64decode(text) if re.fullmatch(rb"[A-Za-z0-9_-]+={0,2}", text) else b""
            except (binascii.Error, ValueError):
                key = b""
        if len(key) != KEY_BYTES:
            raise _key_problem(path, f"holds {len(data)} bytes that are neither 32 raw bytes nor base64 of 32 bytes")
    if key == bytes(KEY_BYTES):
        raise _key_problem(path, "is all zero bytes")
    return key


def load_store_key(path: str) -> bytes:
    """Read a store key file (raw or base64); :class:`StoreKeyError` names the file and what to do."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except OSError as error:
        raise _key_problem(path, f"cannot read ({error.strerror})") from None
    return parse_store_key(data, path)


class StoreKeyring:
    """The current store key (new blobs) and previous keys (blobs not yet re-encrypted)."""

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        for key in (current, *previous):
            if len(key) != KEY_BYTES:
                raise ValueError(f"a store key is {KEY_BYTES} bytes, got {len(key)}")
        self._current = bytes(current)
        self.current_id = key_id_of(self._current)
        self._keys: dict[str, bytes] = {self.current_id: self._current}
        for key in previous:
            self._keys.setdefault(key_id_of(key), bytes(key))

    @classmethod
    def from_files(cls, current: str, previous: Sequence[str] = ()) -> StoreKeyring:
        return cls(load_store_key(current), [load_store_key(p) for p in previous])

    @property
    def ids(self) -> tuple[str, ...]:
        """Every key id, the current one first."""
        return tuple(self._keys)

    @property
    def previous_ids(self) -> tuple[str, ...]:
        return tuple(i for i in self._keys if i != self.current_id)

    def current(self) -> tuple[str, bytes]:
        return self.current_id, self._current

    def key_for(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def __repr__(self) -> str:  # never the keys themselves
        return f"StoreKeyring(current={self.current_id}, previous={list(self.previous_ids)})"


def keyring_from_config(config: Config, environ: Mapping[str, str] = os.environ) -> StoreKeyring:
    """The keyring of ``keys.store`` and ``keys.store_previous``."""
    return StoreKeyring.from_files(config.file_path(config.keys.store, environ),
                                   [config.file_path(ref, environ) for ref in config.keys.store_previous])


def store_directory(config: Config) -> str:
    return os.path.join(config.gateway.state_dir, "store")


def open_store(config: Config, environ: Mapping[str, str] = os.environ) -> FileBlobStore:
    """The store under ``<gateway.state_dir>/store`` with the configured keys (call :meth:`~FileBlobStore.recover` at start)."""
    return FileBlobStore(store_directory(config), keyring_from_config(config, environ))


# --- the pure core: a blob as a stream of bytes -------------------------------------

@dataclass(frozen=True)
class BlobInfo:
    """What a write stored: the plaintext's size and SHA-256 (hex), and the key it is under."""

    blob_id: str
    size: int
    sha256: str
    key_id: str


@dataclass(frozen=True)
class BlobStat:
    """What the store knows without decrypting: the key id in the header and the bytes stored."""

    blob_id: str
    key_id: str
    stored_size: int


@dataclass(frozen=True)
class _Header:
    raw: bytes
    segment_size: int
    key_id: str
    salt: bytes
    nonce_prefix: bytes


def validate_blob_id(blob_id: str) -> str:
    """*blob_id* if it is a safe file name (``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``), else :class:`InvalidBlobId`."""
    if not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id):
        raise InvalidBlobId(f"blob id {blob_id!r}: use 1 to 128 characters A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return blob_id


def degenerations_blob_id(blob_id: str) -> str:
    """The blob holding the 縮退 list of the transfer whose payload is *blob_id* (written, read and
    erased with it: ingest, ``transfers show --degenerations``, purge)."""
    return f"{blob_id}.degenerations"


def _blob_cipher(key: bytes, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=_HKDF_INFO)
    return AESGCM(hkdf.derive(key))


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


def encrypt_stream(keyring: StoreKeyring, blob_id: str, chunks: Iterable[bytes], write: Callable[[bytes], object],
                   segment_size: int = DEFAULT_SEGMENT_SIZE) -> BlobInfo:
    """Encrypt *chunks* as blob *blob_id* under the current key, passing the ciphertext to *write*.

    Holds at most one pending and one partial segment besides the caller's chunk.
    """
    if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"segment_size must be 1..{MAX_SEGMENT_SIZE}, got {segment_size}")
    key_id, key = keyring.current()
    salt, prefix = secrets.token_bytes(16), secrets.token_bytes(7)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, segment_size, bytes.fromhex(key_id), salt, prefix)
    aad = header + blob_id.encode()
    cipher = _blob_cipher(key, salt)
    digest = hashlib.sha256()
    size = 0
    counter = 0
    write(header)

    def seal(plaintext: bytes | bytearray | memoryview, last: bool) -> None:
        nonlocal counter, size
        if counter >= _MAX_SEGMENTS:
            raise StoreError(f"blob {blob_id}: more than {_MAX_SEGMENTS} segments; use a larger segment size")
        digest.update(plaintext)
        size += len(plaintext)
        write(cipher.encrypt(_nonce(prefix, counter, last), plaintext, aad))
        counter += 1

    partial = bytearray()
    pending: bytes | bytearray | memoryview | None = None  # a full segment: sealed once we know whether it is last
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while len(view):
            if not partial and len(view) >= segment_size:
                full: bytes | bytearray | memoryview = view[:segment_size]
                view = view[segment_size:]
            else:
                take = segment_size - len(partial)
                partial += view[:take]
                view = view[take:]
                if len(partial) < segment_size:
                    break
                full, partial = partial, bytearray()
            if pending is not None:
                seal(pending, last=False)
            pending = full
        if pending is not None and isinstance(pending, memoryview):
            pending = bytes(pending)  # do not keep a view into a chunk the caller may reuse
        full = view = memoryview(b"")  # nor the chunk itself while the caller makes the next one
        del chunk
    if pending is not None and partial:
        seal(pending, last=False)
        seal(partial, last=True)
    elif pending is not None:
        seal(pending, last=True)
    else:
        seal(partial, last=True)
    return BlobInfo(blob_id, size, digest.hexdigest(), key_id)


def read_header(blob_id: str, data: bytes) -> _Header:
    """Parse a blob header (not yet authenticated: the first segment does that)."""
    if len(data) < HEADER_SIZE:
        raise BlobCorrupt(blob_id, None, f"{len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, flags, segment_size, key_id, salt, prefix = _HEADER.unpack(data[:HEADER_SIZE])
    if magic != MAGIC:
        raise BlobCorrupt(blob_id, None, "not a kei-gateway store blob (bad magic)")
    if version != FORMAT_VERSION or flags != 0:
        raise BlobCorrupt(blob_id, None, f"format version {version} flags {flags}; this gateway reads version {FORMAT_VERSION}")
    if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
        raise BlobCorrupt(blob_id, None, f"segment size {segment_size} out of range")
    return _Header(bytes(data[:HEADER_SIZE]), segment_size, key_id.hex(), salt, prefix)


def _read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    first = read(n)
    if len(first) == n or not first:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        more = read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def decrypt_stream(keyring: StoreKeyring, blob_id: str, read: Callable[[int], bytes]) -> Iterator[bytes]:
    """Verify and decrypt blob *blob_id* read through *read(n)*: one plaintext chunk per segment.

    The header is checked at once (:class:`BlobCorrupt` or :class:`UnknownStoreKey` raised by
    this call); each segment is verified before its plaintext is yielded.
    """
    header = read_header(blob_id, _read_exact(read, HEADER_SIZE))
    key = keyring.key_for(header.key_id)
    if key is None:
        raise UnknownStoreKey(blob_id, header.key_id, keyring.ids)
    return _segments(blob_id, header, _blob_cipher(key, header.salt), read)


def _segments(blob_id: str, header: _Header, cipher: AESGCM, read: Callable[[int], bytes]) -> Iterator[bytes]:
    aad = header.raw + blob_id.encode()
    stored = header.segment_size + TAG_SIZE
    current = _read_exact(read, stored)
    counter = 0
    while True:
        following = _read_exact(read, stored) if len(current) == stored else b""
        last = not following
        if len(current) < TAG_SIZE:
            raise BlobCorrupt(blob_id, counter, "truncated: shorter than its authentication tag")
        if counter >= _MAX_SEGMENTS:
            raise BlobCorrupt(blob_id, counter, "too many segments")
        try:
            plaintext = cipher.decrypt(_nonce(header.nonce_prefix, counter, last), current, aad)
        except InvalidTag:
            raise BlobCorrupt(blob_id, counter, "authentication failed (changed, truncated, extended or reordered)") from None
        if plaintext:
            yield plaintext
        if last:
            return
        current = following
        counter += 1


# --- the interface and the filesystem adapter --------------------------------------

class BlobStore(Protocol):
    """Encrypted blobs by id. Every method blocks: call through :class:`~kei_gateway.blocking.Blocking`."""

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


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """:class:`BlobStore` on a local directory (``<state_dir>/store``, mode 0700), one file per blob."""

    def __init__(self, directory: str, keyring: StoreKeyring, segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        self.directory = os.path.abspath(directory)
        self.keyring = keyring
        self.segment_size = segment_size
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def _path(self, blob_id: str) -> str:
        return os.path.join(self.directory, validate_blob_id(blob_id))

    def _store_lock(self) -> int:
        """Hold the store-wide lock for a change of a final name (link, replace, unlink)."""
        fd = os.open(os.path.join(self.directory, _LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

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
                info = encrypt_stream(self.keyring, blob_id, chunks, out.write, self.segment_size)
            os.fsync(fd)
        except BaseException:
            _discard(fd, temp)
            raise
        return fd, temp, info

    def write(self, blob_id: str, chunks: Iterable[bytes], *, replace: bool = False) -> BlobInfo:
        final = self._path(blob_id)
        fd, temp, info = self._write_temp(blob_id, chunks)
        try:
            lock = self._store_lock()
            try:
                if replace:
                    os.replace(temp, final)
                else:
                    try:
                        os.link(temp, final)  # never clobbers: EEXIST
                    except FileExistsError:
                        raise BlobExists(blob_id) from None
                    os.unlink(temp)
                _fsync_dir(self.directory)
            finally:
                os.close(lock)
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
        lock = self._store_lock()
        try:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            _fsync_dir(self.directory)
            return True
        finally:
            os.close(lock)

    def list_ids(self) -> list[str]:
        ids = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if _BLOB_ID.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    ids.append(entry.name)
        return sorted(ids)

    def info(self, blob_id: str) -> BlobStat:
        with _open_blob(self._path(blob_id), blob_id) as f:
            header = read_header(blob_id, _read_exact(f.read, HEADER_SIZE))
            size = os.fstat(f.fileno()).st_size
        return BlobStat(blob_id, header.key_id, size)

    def rekey(self, blob_id: str) -> bool:
        final = self._path(blob_id)
        with _open_blob(final, blob_id) as source:
            header = read_header(blob_id, _read_exact(source.read, HEADER_SIZE))
            if header.key_id == self.keyring.current_id:
                return False
            source.seek(0)
            identity = os.fstat(source.fileno())
            fd, temp, _ = self._write_temp(blob_id, decrypt_stream(self.keyring, blob_id, source.read))
        try:
            lock = self._store_lock()
            try:
                try:
                    now = os.stat(final)
                except FileNotFoundError:
                    now = None
                if now is None or (now.st_ino, now.st_dev) != (identity.st_ino, identity.st_dev):
                    _discard(fd, temp)  # deleted or replaced meanwhile: never bring old data back
                    return False
                os.replace(temp, final)
                _fsync_dir(self.directory)
            finally:
                os.close(lock)
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
            _fsync_dir(self.directory)
        return removed


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
