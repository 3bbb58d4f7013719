"""The in-memory twin of the encrypted store."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from kei_gateway.adapters.store.errors import BlobExists, BlobNotFound
from kei_gateway.adapters.store.format import (
    DEFAULT_SEGMENT_SIZE, BlobInfo, BlobStat, decrypt_stream, encrypt_stream, read_header, validate_blob_id,
)
from kei_gateway.adapters.store.keys import StoreKeyring

__all__ = ["InMemoryBlobStore", "DUMMY_STORE_KEY"]

DUMMY_STORE_KEY = bytes(range(1, 33))
"""A fixed store key for tests (never use it for real data)."""


class InMemoryBlobStore:
    """A :class:`~kei_gateway.adapters.store.blobs.BlobStore` in a dict: the same blob format, errors and behaviour.

    Blobs are kept encrypted, as the file store keeps them, so tests may tamper with
    :attr:`blobs` (id → stored bytes) and see the same :class:`~kei_gateway.adapters.store.errors.BlobCorrupt`.
    """

    def __init__(self, keyring: Any = None, segment_size: int | None = None) -> None:
        self.keyring: StoreKeyring = keyring if keyring is not None else StoreKeyring(DUMMY_STORE_KEY)
        self.segment_size = segment_size or DEFAULT_SEGMENT_SIZE
        self.blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _get(self, blob_id: str) -> bytes:
        validate_blob_id(blob_id)
        with self._lock:
            data = self.blobs.get(blob_id)
        if data is None:
            raise BlobNotFound(blob_id)
        return data

    def write(self, blob_id: str, chunks: Iterable[bytes], *, replace: bool = False) -> BlobInfo:
        validate_blob_id(blob_id)
        parts: list[bytes] = []
        info = encrypt_stream(self.keyring, blob_id, chunks, parts.append, self.segment_size)
        with self._lock:
            if not replace and blob_id in self.blobs:
                raise BlobExists(blob_id)
            self.blobs[blob_id] = b"".join(parts)
        return info

    def read(self, blob_id: str) -> Iterator[bytes]:
        return decrypt_stream(self.keyring, blob_id, io.BytesIO(self._get(blob_id)).read)

    def exists(self, blob_id: str) -> bool:
        validate_blob_id(blob_id)
        return blob_id in self.blobs

    def delete(self, blob_id: str) -> bool:
        validate_blob_id(blob_id)
        with self._lock:
            return self.blobs.pop(blob_id, None) is not None

    def list_ids(self) -> list[str]:
        return sorted(self.blobs)

    def info(self, blob_id: str) -> BlobStat:
        data = self._get(blob_id)
        return BlobStat(blob_id, read_header(blob_id, data).key_id, len(data))

    def rekey(self, blob_id: str) -> bool:
        data = self._get(blob_id)
        if read_header(blob_id, data).key_id == self.keyring.current_id:
            return False
        parts: list[bytes] = []
        plaintext = decrypt_stream(self.keyring, blob_id, io.BytesIO(data).read)
        encrypt_stream(self.keyring, blob_id, plaintext, parts.append, self.segment_size)
        with self._lock:
            if self.blobs.get(blob_id) is not data:
                return False  # deleted or replaced meanwhile
            self.blobs[blob_id] = b"".join(parts)
        return True

    def recover(self) -> int:
        return 0
