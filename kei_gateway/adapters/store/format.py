"""The encrypted blob format (pure: bytes in, bytes out; no disk).

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
"""

from __future__ import annotations

import hashlib
import re
import secrets
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from kei_gateway.adapters.store.errors import BlobCorrupt, InvalidBlobId, StoreError, UnknownStoreKey
from kei_gateway.adapters.store.keys import KEY_BYTES, StoreKeyring

__all__ = ["MAGIC", "FORMAT_VERSION", "DEFAULT_SEGMENT_SIZE", "MAX_SEGMENT_SIZE", "TAG_SIZE", "HEADER_SIZE",
    "BLOB_ID_PATTERN", "BlobInfo", "BlobStat", "degenerations_blob_id", "validate_blob_id", "encrypt_stream", "read_header",
    "read_exact", "decrypt_stream"]


MAGIC = b"KEISTORE"
FORMAT_VERSION = 1
DEFAULT_SEGMENT_SIZE = 64 * 1024
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
TAG_SIZE = 16
_HEADER = struct.Struct(">8sBBI8s16s7s")
HEADER_SIZE = _HEADER.size  # 45
_HKDF_INFO = b"kei-gateway store segment key v1"
_MAX_SEGMENTS = 1 << 32
BLOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
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


def degenerations_blob_id(blob_id: str) -> str:
    """The blob holding the 縮退 list of the transfer whose payload is *blob_id* (written, read and
    erased with it: ingest, ``transfers show --degenerations``, purge)."""
    return f"{blob_id}.degenerations"


def validate_blob_id(blob_id: str) -> str:
    """*blob_id* if it is a safe file name (``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``), else :class:`InvalidBlobId`."""
    if not isinstance(blob_id, str) or not BLOB_ID_PATTERN.fullmatch(blob_id):
        raise InvalidBlobId(f"blob id {blob_id!r}: use 1 to 128 characters A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return blob_id


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


def read_exact(read: Callable[[int], bytes], n: int) -> bytes:
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
    header = read_header(blob_id, read_exact(read, HEADER_SIZE))
    key = keyring.key_for(header.key_id)
    if key is None:
        raise UnknownStoreKey(blob_id, header.key_id, keyring.ids)
    return _segments(blob_id, header, _blob_cipher(key, header.salt), read)


def _segments(blob_id: str, header: _Header, cipher: AESGCM, read: Callable[[int], bytes]) -> Iterator[bytes]:
    aad = header.raw + blob_id.encode()
    stored = header.segment_size + TAG_SIZE
    current = read_exact(read, stored)
    counter = 0
    while True:
        following = read_exact(read, stored) if len(current) == stored else b""
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
