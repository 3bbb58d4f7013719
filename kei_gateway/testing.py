"""Test doubles shipped with the package, so every consumer tests against the same fakes."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer

__all__ = ["SynchronousBlocking", "RecordingNotifier", "NotifySocket", "NotificationTimeout", "free_port", "demo_config_text",
           "InMemoryBlobStore", "DUMMY_STORE_KEY"]

T = TypeVar("T")


class SynchronousBlocking:
    """A :class:`~kei_gateway.blocking.Blocking` door that runs the work at once, in the caller's thread."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        self.calls += 1
        return defer.maybeDeferred(f, *args, **kwargs)


class RecordingNotifier:
    """A :class:`~kei_gateway.sdnotify.Notifier` that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def notify(self, message: str) -> None:
        self.messages.append(message)

    def states(self, prefix: str) -> list[str]:
        return [m for m in self.messages if m.startswith(prefix)]


def demo_config_text(base: str, metrics_port: int, lg_code: str = "131041", extra: str = "") -> str:
    """A minimal configuration: spool and state under *base*, credentials in *base*/credentials."""
    return f"""\
[gateway]
lg_code = "{lg_code}"
spool_dir = "{base}/spool"
state_dir = "{base}/state"

[tls]
certificate = "{base}/credentials/gateway.crt"
private_key = "{base}/credentials/gateway.key"

[keys]
store = "{base}/credentials/store.key"
audit = "{base}/credentials/audit.key"

[listeners.metrics]
address = "127.0.0.1:{metrics_port}"
allow = ["127.0.0.1/32"]
{extra}"""


class NotificationTimeout(Exception):
    """The awaited notification did not come in time."""


class NotifySocket:
    """What systemd's notification socket sees: the datagrams a service sends (``$NOTIFY_SOCKET``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[str] = []
        """Notifications read but not yet returned by :meth:`wait_for`."""

    def close(self) -> None:
        self.sock.close()

    def wait_for(self, wanted: str, timeout: float = 30.0) -> str:
        """The first notification holding a line that starts with *wanted*; at most *timeout* seconds."""

        def matches(message: str) -> bool:
            return any(line.startswith(wanted) for line in message.splitlines())

        for message in self.messages:
            if matches(message):
                self.messages.remove(message)
                return message
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NotificationTimeout(f"no {wanted!r} notification within {timeout:g}s; got {self.messages}")
            self.sock.settimeout(remaining)
            try:
                message = self.sock.recv(65536).decode()
            except socket.timeout:
                continue
            if matches(message):
                return message
            self.messages.append(message)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on *host*."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


DUMMY_STORE_KEY = bytes(range(1, 33))
"""A fixed store key for tests (never use it for real data)."""


class InMemoryBlobStore:
    """A :class:`~kei_gateway.store.BlobStore` in a dict: the same blob format, errors and behaviour.

    Blobs are kept encrypted, as the file store keeps them, so tests may tamper with
    :attr:`blobs` (id → stored bytes) and see the same :class:`~kei_gateway.store.BlobCorrupt`.
    """

    def __init__(self, keyring: Any = None, segment_size: int | None = None) -> None:
        import threading

        from kei_gateway import store

        self._store = store
        self.keyring: store.StoreKeyring = keyring if keyring is not None else store.StoreKeyring(DUMMY_STORE_KEY)
        self.segment_size = segment_size or store.DEFAULT_SEGMENT_SIZE
        self.blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _get(self, blob_id: str) -> bytes:
        self._store.validate_blob_id(blob_id)
        with self._lock:
            data = self.blobs.get(blob_id)
        if data is None:
            raise self._store.BlobNotFound(blob_id)
        return data

    def write(self, blob_id: str, chunks: Iterable[bytes], *, replace: bool = False) -> Any:
        self._store.validate_blob_id(blob_id)
        parts: list[bytes] = []
        info = self._store.encrypt_stream(self.keyring, blob_id, chunks, parts.append, self.segment_size)
        with self._lock:
            if not replace and blob_id in self.blobs:
                raise self._store.BlobExists(blob_id)
            self.blobs[blob_id] = b"".join(parts)
        return info

    def read(self, blob_id: str) -> Iterator[bytes]:
        return self._store.decrypt_stream(self.keyring, blob_id, io.BytesIO(self._get(blob_id)).read)

    def exists(self, blob_id: str) -> bool:
        self._store.validate_blob_id(blob_id)
        return blob_id in self.blobs

    def delete(self, blob_id: str) -> bool:
        self._store.validate_blob_id(blob_id)
        with self._lock:
            return self.blobs.pop(blob_id, None) is not None

    def list_ids(self) -> list[str]:
        return sorted(self.blobs)

    def info(self, blob_id: str) -> Any:
        data = self._get(blob_id)
        return self._store.BlobStat(blob_id, self._store.read_header(blob_id, data).key_id, len(data))

    def rekey(self, blob_id: str) -> bool:
        data = self._get(blob_id)
        if self._store.read_header(blob_id, data).key_id == self.keyring.current_id:
            return False
        parts: list[bytes] = []
        plaintext = self._store.decrypt_stream(self.keyring, blob_id, io.BytesIO(data).read)
        self._store.encrypt_stream(self.keyring, blob_id, plaintext, parts.append, self.segment_size)
        with self._lock:
            if self.blobs.get(blob_id) is not data:
                return False  # deleted or replaced meanwhile
            self.blobs[blob_id] = b"".join(parts)
        return True

    def recover(self) -> int:
        return 0
