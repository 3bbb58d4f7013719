"""The in-memory twin of a peer: its WebDAV directories in a dict, behind the :class:`~kei_gateway.adapters.ports.PeerClient` calls.

It keeps what a flow relies on from the real client and server: an upload lands whole
under its final name or not at all, and on a name already taken the 412 rule holds (the
same SHA-256 is ``already_present``, other content :class:`RemoteConflict`); ``PROPFIND``
lists a directory's files with a size and an ETag that changes with the content; ``GET``
feeds the sink and waits for it; ``DELETE`` says whether there was a file. Every call is
recorded in :attr:`InMemoryPeer.calls`; :meth:`InMemoryPeer.fail_next` scripts the typed
transport errors of the next calls of a method.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer

from kei_gateway.adapters.transport import (
    BodySourceError,
    HttpError,
    PutResult,
    RemoteConflict,
    RemoteEntry,
    TransportError,
    file_url,
)
from kei_gateway.adapters.transport.webdav import BodySource, Sink

__all__ = ["InMemoryPeer"]


class InMemoryPeer:
    """A peer named *peer* whose files live in :attr:`files` (full URL → bytes)."""

    def __init__(self, peer: str = "peer", files: dict[str, bytes] | None = None) -> None:
        self.peer = peer
        self.files: dict[str, bytes] = dict(files or {})
        self.calls: list[tuple[str, str]] = []
        """(method, url) of every call, in order (a PUT is recorded with its final URL)."""
        self.bodies: list[bytes] = []
        """Every uploaded body, as read from its source (also those refused afterwards)."""
        self._faults: dict[str, list[TransportError | None]] = {}
        self.closed = False

    def fail_next(self, method: str, *outcomes: TransportError | None) -> None:
        """The next calls of *method* (``PUT``, ``PROPFIND``, ``GET``, ``DELETE``) end in *outcomes* in turn
        (``None``: that call works)."""
        self._faults.setdefault(method, []).extend(outcomes)

    def _fault(self, method: str) -> TransportError | None:
        pending = self._faults.get(method)
        return pending.pop(0) if pending else None

    @staticmethod
    def etag_of(data: bytes) -> str:
        return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'

    # -- PeerClient

    def put(self, dir_url: str, name: str, body: BodySource, size: int, sha256_hex: str) -> defer.Deferred[PutResult]:
        url = file_url(dir_url, name)
        self.calls.append(("PUT", url))
        try:
            data = b"".join(body())
        except Exception as error:
            return defer.fail(BodySourceError(self.peer, f"reading the body failed: {error}", error))
        self.bodies.append(data)
        fault = self._fault("PUT")
        if fault is not None:
            return defer.fail(fault)
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != size or digest != sha256_hex:
            return defer.fail(BodySourceError(self.peer, f"the body read was {len(data)} bytes, SHA-256 {digest}; "
                                                         f"the ledger says {size} bytes, SHA-256 {sha256_hex}"))
        existing = self.files.get(url)
        if existing is not None:
            remote = hashlib.sha256(existing).hexdigest()
            if remote != digest:
                return defer.fail(RemoteConflict(self.peer, name, digest, remote))
            return defer.succeed(PutResult(name, url, True))
        self.files[url] = data
        return defer.succeed(PutResult(name, url, False))

    def propfind(self, dir_url: str) -> defer.Deferred[list[RemoteEntry]]:
        self.calls.append(("PROPFIND", dir_url))
        fault = self._fault("PROPFIND")
        if fault is not None:
            return defer.fail(fault)
        entries = [RemoteEntry(url[len(dir_url):], len(data), self.etag_of(data), None)
                   for url, data in sorted(self.files.items())
                   if url.startswith(dir_url) and "/" not in url[len(dir_url):]]
        return defer.succeed(entries)

    def get(self, url: str, sink: Sink) -> defer.Deferred[tuple[int, str]]:
        self.calls.append(("GET", url))
        fault = self._fault("GET")
        if fault is not None:
            return defer.fail(fault)
        data = self.files.get(url)
        if data is None:
            return defer.fail(HttpError(self.peer, "GET", url, 404))
        waited = sink(data)
        d: defer.Deferred[Any] = waited if isinstance(waited, defer.Deferred) else defer.succeed(None)
        return d.addCallback(lambda _: (len(data), hashlib.sha256(data).hexdigest()))

    def delete(self, url: str) -> defer.Deferred[bool]:
        self.calls.append(("DELETE", url))
        fault = self._fault("DELETE")
        if fault is not None:
            return defer.fail(fault)
        return defer.succeed(self.files.pop(url, None) is not None)

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)

    # -- for tests

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    def add(self, url: str, data: bytes | Iterable[bytes]) -> None:
        """A file the peer has (as if another party wrote it)."""
        self.files[url] = data if isinstance(data, bytes) else b"".join(data)
