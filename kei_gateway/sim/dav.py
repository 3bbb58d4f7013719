"""A WebDAV-subset file server (SPEC §3) over a root directory, for the peer simulators.

Served: ``OPTIONS``, ``PUT`` (with ``Content-Digest: sha-256=:…:`` checked),
``MOVE`` (``Destination``, ``Overwrite: F`` → 412), ``PROPFIND`` (Depth 0/1,
nginx dav-ext shaped multistatus), ``GET``/``HEAD`` (streamed) and ``DELETE``
— only inside the configured flat collections (``/upload/``, ``/results/`` …).
File names must match ``[A-Za-z0-9][A-Za-z0-9._-]{0,254}`` after percent-decoding,
so ``..``, dotfiles, encoded slashes and anything outside a collection are refused.

:class:`DavStore` is the filesystem side (atomic create and rename, listing);
:class:`DavResource` turns requests into calls on it and applies the
:class:`~kei_gateway.sim.faults.FaultState`; :func:`dav_site` builds the Site.
A request body is held by Twisted itself (memory below 100 kB, else an
anonymous temporary file), then copied in 64 kB chunks into a temporary file
next to the collections and renamed into place: memory stays bounded.
"""

from __future__ import annotations

import base64
import contextlib
import binascii
import email.utils
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote_to_bytes, urlsplit
from xml.sax.saxutils import escape

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.web import resource, server

from kei_gateway.sim.faults import FaultState

__all__ = [
    "DavPath", "DavStore", "DavResource", "DavSite", "Entry", "PathRefused", "DigestMismatch", "ALLOWED_METHODS",
    "resolve_path", "parse_content_digest", "multistatus_xml", "dav_site", "etag_of",
]

COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
ALLOWED_METHODS = (b"OPTIONS", b"GET", b"HEAD", b"PUT", b"DELETE", b"MOVE", b"PROPFIND")
CHUNK = 64 * 1024
_log = Logger(namespace="kei_gateway.sim")
INCOMING = ".incoming"
"""Temporary files live here, inside the root (same filesystem, so the rename is atomic) but in no collection."""


class PathRefused(Exception):
    """A request path (or Destination) outside the served collections, or a name we do not serve."""


class DigestMismatch(Exception):
    """The body's SHA-256 is not the one its ``Content-Digest`` announced."""


@dataclass(frozen=True)
class DavPath:
    """``/<collection>/`` (``name`` None) or ``/<collection>/<name>``."""

    collection: str
    name: str | None = None

    @property
    def href(self) -> str:
        return f"/{self.collection}/" + (quote(self.name) if self.name else "")


@dataclass(frozen=True)
class Entry:
    """What PROPFIND reports about a file or a collection."""

    href: str
    displayname: str
    is_collection: bool
    size: int
    mtime: float

    @property
    def etag(self) -> str:
        return etag_of(self.size, self.mtime)


def etag_of(size: int, mtime: float) -> str:
    """nginx's ETag: ``"<hex mtime>-<hex size>"``."""
    return f'"{int(mtime):x}-{size:x}"'


def resolve_path(raw: bytes, collections: Iterable[str]) -> DavPath:
    """The served path of a request path or ``Destination`` (absolute URL or path); PathRefused otherwise."""
    if raw.startswith((b"http://", b"https://")):
        raw = urlsplit(raw).path or b"/"
    raw = raw.split(b"?", 1)[0]
    if not raw.startswith(b"/"):
        raise PathRefused("not an absolute path")
    try:
        decoded = unquote_to_bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        raise PathRefused("non-ASCII path") from None
    parts = decoded.split("/")
    if len(parts) not in (2, 3) or parts[0] != "":
        raise PathRefused("not /<collection>/ or /<collection>/<name>")
    collection = parts[1]
    if collection not in collections:
        raise PathRefused("not a served collection")
    name = parts[2] if len(parts) == 3 else ""
    if name == "":
        return DavPath(collection)
    if not FILE_NAME.fullmatch(name):
        raise PathRefused("file name not allowed")
    return DavPath(collection, name)


def parse_content_digest(value: bytes | None) -> bytes | None:
    """The SHA-256 announced by a ``Content-Digest`` header (RFC 9530), or None when absent.

    Other algorithms are ignored (we cannot check them); a malformed ``sha-256``
    member raises ValueError.
    """
    if value is None:
        return None
    for member in value.split(b","):
        key, sep, item = member.strip().partition(b"=")
        if key.strip().lower() != b"sha-256":
            continue
        item = item.strip()
        if not sep or len(item) < 2 or not (item.startswith(b":") and item.endswith(b":")):
            raise ValueError("sha-256 member is not a byte sequence (:<base64>:)")
        try:
            digest = base64.b64decode(item[1:-1], validate=True)
        except binascii.Error:
            raise ValueError("sha-256 member is not base64") from None
        if len(digest) != 32:
            raise ValueError("sha-256 digest is not 32 bytes")
        return digest
    return None


def _http_date(mtime: float) -> str:
    return email.utils.formatdate(mtime, usegmt=True)


def multistatus_xml(entries: Sequence[Entry]) -> bytes:
    """A ``207`` body shaped like nginx dav-ext's: one ``D:response`` per entry."""
    out = ['<?xml version="1.0" encoding="utf-8" ?>\n<D:multistatus xmlns:D="DAV:">\n']
    for entry in entries:
        out.append("<D:response>\n")
        out.append(f"<D:href>{escape(entry.href)}</D:href>\n")
        out.append("<D:propstat>\n<D:prop>\n")
        out.append(f"<D:displayname>{escape(entry.displayname)}</D:displayname>\n")
        if not entry.is_collection:
            out.append(f"<D:getcontentlength>{entry.size}</D:getcontentlength>\n")
            out.append(f"<D:getetag>{escape(entry.etag)}</D:getetag>\n")
        out.append(f"<D:getlastmodified>{_http_date(entry.mtime)}</D:getlastmodified>\n")
        out.append("<D:resourcetype><D:collection/></D:resourcetype>\n" if entry.is_collection
                   else "<D:resourcetype></D:resourcetype>\n")
        out.append("</D:prop>\n<D:status>HTTP/1.1 200 OK</D:status>\n</D:propstat>\n</D:response>\n")
    out.append("</D:multistatus>\n")
    return "".join(out).encode("utf-8")


class DavStore:
    """Flat collections under *root*: atomic creation, atomic rename, listing."""

    def __init__(self, root: str | os.PathLike[str], collections: Sequence[str]) -> None:
        self.root = Path(root)
        for collection in collections:
            if not COLLECTION_NAME.fullmatch(collection):
                raise ValueError(f"collection name {collection!r} not allowed")
        self.collections = tuple(collections)
        self.incoming = self.root / INCOMING
        self.incoming.mkdir(parents=True, exist_ok=True)
        for collection in self.collections:
            (self.root / collection).mkdir(exist_ok=True)

    def resolve(self, raw: bytes) -> DavPath:
        return resolve_path(raw, self.collections)

    def path_of(self, where: DavPath) -> Path:
        return self.root / where.collection / (where.name or "")

    def exists(self, where: DavPath) -> bool:
        return where.name is not None and self.path_of(where).is_file()

    def put(self, where: DavPath, body: IO[bytes], expected_sha256: bytes | None = None) -> tuple[bool, str, int]:
        """Store *body* under *where* atomically: ``(created, sha256 hex, size)``.

        DigestMismatch (and nothing stored) if *expected_sha256* is given and differs.
        """
        assert where.name is not None
        digest = hashlib.sha256()
        size = 0
        fd, temp = tempfile.mkstemp(dir=self.incoming, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := body.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if expected_sha256 is not None and digest.digest() != expected_sha256:
                raise DigestMismatch(where.href)
            target = self.path_of(where)
            created = not target.exists()
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return created, digest.hexdigest(), size

    def write_bytes(self, where: DavPath, data: bytes) -> None:
        """Create or replace *where* with *data* atomically (for a simulator's own files)."""
        self.put(where, io.BytesIO(data))

    def move(self, source: DavPath, destination: DavPath, overwrite: bool) -> bool:
        """Rename atomically: True if *destination* was created, False if replaced.

        FileNotFoundError if *source* is missing, FileExistsError if *destination*
        exists and not *overwrite*.
        """
        src, dst = self.path_of(source), self.path_of(destination)
        if not src.is_file():
            raise FileNotFoundError(source.href)
        if overwrite:
            created = not dst.exists()
            os.replace(src, dst)
            return created
        os.link(src, dst)  # atomic "create if absent": FileExistsError when it exists
        os.unlink(src)
        return True

    def delete(self, where: DavPath) -> None:
        path = self.path_of(where)
        if not path.is_file():
            raise FileNotFoundError(where.href)
        path.unlink()

    def entry(self, where: DavPath) -> Entry:
        path = self.path_of(where)
        st = path.stat()
        if where.name is None:
            return Entry(where.href, where.collection, True, 0, st.st_mtime)
        if not path.is_file():
            raise FileNotFoundError(where.href)
        return Entry(where.href, where.name, False, st.st_size, st.st_mtime)

    def listing(self, collection: str) -> list[Entry]:
        """The collection itself, then its files (sorted by name; other entries skipped)."""
        top = DavPath(collection)
        found = [self.entry(top)]
        with os.scandir(self.path_of(top)) as scan:
            names = sorted(e.name for e in scan if e.is_file(follow_symlinks=False) and FILE_NAME.fullmatch(e.name))
        for name in names:
            try:
                found.append(self.entry(DavPath(collection, name)))
            except FileNotFoundError:  # deleted meanwhile
                pass
        return found


OnStored = Callable[[DavPath], None]


class DavResource(resource.Resource):
    """The whole tree as one leaf resource: parses the path itself (no Twisted child lookup)."""

    isLeaf = True

    def __init__(self, store: DavStore, clock: IReactorTime, faults: FaultState,
                 on_stored: OnStored | None = None) -> None:
        super().__init__()
        self.store = store
        self._clock = clock
        self.faults = faults
        self._on_stored = on_stored

    def render(self, request: Any) -> Any:
        delay, fault = self.faults.faults.delay_seconds, "delay_seconds"
        if request.method == b"MOVE" and self.faults.faults.delay_move_seconds > 0:
            delay, fault = delay + self.faults.faults.delay_move_seconds, "delay_move_seconds"
        if delay > 0:
            self.faults.note(fault)
            call = self._clock.callLater(delay, self._respond_later, request)
            request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
            return server.NOT_DONE_YET
        return self._dispatch(request)

    def _respond_later(self, request: Any) -> None:
        body = self._dispatch(request)
        if body is not server.NOT_DONE_YET:
            if request.method != b"HEAD":
                request.setHeader(b"content-length", b"%d" % len(body))
                request.write(body)
            request.finish()

    def _dispatch(self, request: Any) -> Any:
        method = request.method
        if method == b"OPTIONS":
            return self._options(request)
        if method not in ALLOWED_METHODS:
            request.setHeader(b"allow", b", ".join(ALLOWED_METHODS))
            return _error(request, 405, "method not supported")
        try:
            where = self.store.resolve(request.path)
        except PathRefused as refused:
            return _error(request, 403, f"refused: {refused}")
        handler = getattr(self, "_" + method.decode().lower())
        try:
            return handler(request, where)
        except FileNotFoundError:
            return _error(request, 404, "not found")

    def _options(self, request: Any) -> bytes:
        request.setHeader(b"dav", b"1")
        request.setHeader(b"allow", b", ".join(ALLOWED_METHODS))
        request.setHeader(b"ms-author-via", b"DAV")
        request.setHeader(b"content-length", b"0")
        return b""

    def _put(self, request: Any, where: DavPath) -> bytes:
        if where.name is None:
            return _error(request, 405, "PUT to a collection")
        if self.faults.take("fail_put_503_times"):
            request.setHeader(b"retry-after", b"%d" % self.faults.faults.retry_after_seconds)
            return _error(request, 503, "simulated overload (fault fail_put_503_times)")
        try:
            expected = parse_content_digest(request.getHeader(b"content-digest"))
        except ValueError as error:
            return _error(request, 400, f"Content-Digest: {error}")
        request.content.seek(0)
        try:
            created, sha256, size = self.store.put(where, request.content, expected)
        except DigestMismatch:
            return _error(request, 400, "Content-Digest does not match the body; nothing stored")
        request.sim_sha256 = sha256
        request.setResponseCode(201 if created else 204)
        request.setHeader(b"location", where.href.encode())
        self._stored(where)
        return b""

    def _move(self, request: Any, where: DavPath) -> bytes:
        destination = request.getHeader(b"destination")
        if where.name is None:
            return _error(request, 403, "MOVE of a collection")
        if not destination:
            return _error(request, 400, "MOVE needs a Destination header")
        try:
            target = self.store.resolve(destination)
        except PathRefused as refused:
            return _error(request, 403, f"Destination refused: {refused}")
        if target.name is None or target == where:
            return _error(request, 403, "Destination must be another file")
        overwrite = (request.getHeader(b"overwrite") or b"T").strip().upper() != b"F"
        try:
            created = self.store.move(where, target, overwrite)
        except FileExistsError:
            return _error(request, 412, "Destination exists and Overwrite is F")
        self._stored(target)
        if self.faults.take("replay_412"):
            return _error(request, 412, "Destination exists and Overwrite is F")
        request.setResponseCode(201 if created else 204)
        return b""

    def _propfind(self, request: Any, where: DavPath) -> bytes:
        depth = (request.getHeader(b"depth") or b"infinity").strip().lower()
        if depth not in (b"0", b"1", b"infinity"):
            return _error(request, 400, "Depth must be 0, 1 or infinity")
        if where.name is not None or depth == b"0":
            entries = [self.store.entry(where)]
        else:  # flat collections: infinity lists the same as 1
            entries = self.store.listing(where.collection)
        request.setResponseCode(207)
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        return multistatus_xml(entries)

    def _get(self, request: Any, where: DavPath) -> Any:
        if where.name is None:
            return _error(request, 405, "GET of a collection: use PROPFIND")
        entry = self.store.entry(where)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % entry.size)
        request.setHeader(b"etag", entry.etag.encode())
        request.setHeader(b"last-modified", _http_date(entry.mtime).encode())
        if request.method == b"HEAD":
            return b""
        f = open(self.store.path_of(where), "rb")
        d = FileSender().beginFileTransfer(f, request)

        def done(_: object) -> None:
            f.close()
            if not request.finished and not getattr(request, "_disconnected", False):
                request.finish()

        d.addBoth(done)
        return server.NOT_DONE_YET

    _head = _get

    def _delete(self, request: Any, where: DavPath) -> bytes:
        if where.name is None:
            return _error(request, 403, "DELETE of a collection")
        self.store.delete(where)
        request.setResponseCode(204)
        return b""

    def _stored(self, where: DavPath) -> None:
        if self._on_stored is not None:
            self._on_stored(where)


def _error(request: Any, code: int, reason: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return (reason + "\n").encode()


class _SimRequest(server.Request):
    """A Request that can cut a PUT body half-way (fault ``reset_mid_body_times``).

    The method is not parsed into the Request before the body arrives, so it is
    read from the channel (``HTTPChannel._command``, stable across Twisted releases).
    """

    _cut_at: int | None = None
    _received = 0

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        state = getattr(getattr(self.channel, "site", None), "fault_state", None)
        command = getattr(self.channel, "_command", b"PUT")
        if (isinstance(state, FaultState) and command == b"PUT" and length is not None and length >= 2
                and state.take("reset_mid_body_times")):
            self._cut_at = length // 2

    def handleContentChunk(self, data: bytes) -> None:
        if self._cut_at is None:
            super().handleContentChunk(data)
            return
        if self._cut_at < 0:
            return
        self._received += len(data)
        if self._received >= self._cut_at:
            _log.info("fault reset_mid_body_times: connection aborted after {received} body bytes of a PUT",
                      received=self._received)
            self._cut_at = -1
            self.channel.transport.abortConnection()  # type: ignore[union-attr]
            return
        super().handleContentChunk(data)


class DavSite(server.Site):
    """The Site: our request class, and one log line per request (names, sizes, hashes only)."""

    noisy = False
    displayTracebacks = False
    requestFactory = _SimRequest

    def __init__(self, root: DavResource, name: str) -> None:
        super().__init__(root)
        self.fault_state = root.faults
        self.sim_name = name

    def log(self, request: Any) -> None:
        sha256 = getattr(request, "sim_sha256", None)
        _log.info("{sim} {method} {path} {code} sent={sent} received={received}",
                  sim=self.sim_name, method=request.method.decode("ascii", "replace"),
                  path=request.path.decode("ascii", "replace")[:300], code=request.code,
                  sent=request.sentLength, received=_content_length(request), sha256=sha256)


def _content_length(request: Any) -> int:
    try:
        return int(request.getHeader(b"content-length") or 0)
    except ValueError:
        return 0


def dav_site(store: DavStore, clock: IReactorTime, faults: FaultState, name: str,
             on_stored: OnStored | None = None) -> DavSite:
    """The simulator's Site over *store*."""
    return DavSite(DavResource(store, clock, faults, on_stored), name)
