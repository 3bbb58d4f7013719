"""Store key files (``[keys] store``, ``store_previous``): parsing, key ids, the keyring. Blocking reads only."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from kei_gateway.adapters.store.errors import StoreKeyError

if TYPE_CHECKING:
    from kei_gateway.config import Config

__all__ = ["KEY_BYTES", "key_id_of", "parse_store_key", "load_store_key", "StoreKeyring",
    "keyring_from_config"]


KEY_BYTES = 32
_KEY_ID_DOMAIN = b"kei-gateway store key id v1\x00"
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
