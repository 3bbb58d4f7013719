"""The WebDAV client of one peer (SPEC §3) on Twisted's HTTP client.

Every request goes through :class:`~kei_gateway.adapters.transport.outbound.PeerEndpoint`
(allow-list, connect to the checked IP, verified mutual TLS) and is bounded by the
peer's ``transfer_timeout`` as a whole and by an idle timeout on the connection.

Uploads stream: the body is a callable returning an iterator of plaintext
chunks (the encrypted store's verified segments), pulled one chunk at a time
through the :class:`~kei_gateway.runtime.blocking.Blocking` door with backpressure from
the TLS transport, one chunk held back until the next was read. The last chunk
is written only after the iterator finished cleanly and the byte count and
SHA-256 match, so a corrupt blob (a GCM tag that fails) aborts the ``PUT``
before the request body is complete; the ``MOVE`` is never sent and the peer
never sees the final name.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, error
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed, _HTTP11ClientFactory
from twisted.web._newclient import (
    PotentialDataLoss, RequestGenerationFailed, RequestTransmissionFailed, ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from kei_gateway.adapters.transport._dav import (
    PROPFIND_BODY,
    MultistatusError,
    RemoteEntry,
    file_url,
    parse_multistatus,
    parse_retry_after,
)
from kei_gateway.adapters.transport.errors import (
    BodySourceError,
    HttpError,
    RemoteConflict,
    TransientError,
    TransportError,
    OutboundDenied,
)
from kei_gateway.adapters.transport.names import content_digest, part_name
from kei_gateway.adapters.transport.outbound import PeerEndpoint, Resolver, reactor_resolver
from kei_gateway.adapters.transport.tls import PeerTLS
from kei_gateway.runtime.blocking import Blocking
from kei_gateway.runtime.crashpoints import crashpoint

__all__ = ["WebDavClient", "PutResult", "RemoteEntry", "BodySource", "Sink", "TlsFactory", "BytesBody",
           "DEFAULT_IDLE_TIMEOUT"]

DEFAULT_IDLE_TIMEOUT = 60.0
"""Seconds without a byte sent or received before a connection is aborted."""

PROPFIND_LIMIT = 16 * 1024 * 1024
ERROR_BODY_LIMIT = 64 * 1024

BodySource = Callable[[], Iterable[bytes]]
"""Called (in the blocking door) to start reading a body; yields plaintext chunks."""

Sink = Callable[[bytes], "defer.Deferred[Any] | None"]
"""Receives each downloaded chunk; may return a Deferred to pause the download until it fires."""

TlsFactory = Callable[[str], PeerTLS]
"""Makes the client TLS creator for a host of the peer (the host the certificate must match)."""


class _QuietClientFactory(_HTTP11ClientFactory):
    """Twisted's per-connection HTTP client factory without its "Starting factory" log lines."""

    noisy = False


@dataclass(frozen=True)
class PutResult:
    """A finished upload: the final *name* and *url*; *already_present* when the 412 rule found our file there."""

    name: str
    url: str
    already_present: bool


BATCH_BYTES = 1 << 20
"""Body bytes pulled per trip through the blocking door (the store yields 64 KiB segments)."""


def _next_chunk(iterator: Iterator[bytes], limit: int = BATCH_BYTES) -> bytes | None:
    """The next pieces of *iterator*, joined up to about *limit* bytes; None at its end.

    One thread hop per megabyte instead of per 64 KiB segment: the hops, not the
    cipher, bounded the upload speed (bench/upload.py).
    """
    pieces: list[bytes] = []
    size = 0
    for piece in iterator:
        pieces.append(piece)
        size += len(piece)
        if size >= limit:
            break
    if not pieces:
        return None
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


@implementer(IBodyProducer)
class _PulledBody:
    """An :class:`IBodyProducer` pulling chunks from a :data:`BodySource` through the blocking door."""

    def __init__(self, peer: str, source: BodySource, size: int, sha256_hex: str, blocking: Blocking,
                 batch_bytes: int = BATCH_BYTES) -> None:
        self.peer = peer
        self._batch_bytes = batch_bytes
        self.length = size
        self._source = source
        self._sha256 = sha256_hex.lower()
        self._blocking = blocking
        self._paused: defer.Deferred[None] | None = None
        self._stopped = False
        self.verified: defer.Deferred[bool] = defer.Deferred()
        """Fires True once every byte was read, counted and hashed and matched; False when the consumer
        stopped the body first (the connection went away); errbacks on a source error."""

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        done: defer.Deferred[None] = defer.Deferred()

        def finished(result: object) -> None:
            if self._stopped:
                return  # IBodyProducer: after stopProducing the Deferred must not fire
            if isinstance(result, Failure):
                if not self.verified.called:
                    self.verified.errback(result)
                    self.verified.addErrback(lambda _: None)
                done.errback(result)
            else:
                self.verified.callback(True)
                done.callback(None)

        defer.Deferred.fromCoroutine(self._produce(consumer)).addBoth(finished)
        return done

    async def _produce(self, consumer: IConsumer) -> None:
        try:
            iterator = await self._blocking.run(lambda: iter(self._source()))
        except Exception as failure:
            raise BodySourceError(self.peer, f"cannot read the body: {type(failure).__name__}", failure) from failure
        digest = hashlib.sha256()
        count = 0
        held: bytes | None = None
        # A three-stage pipeline, each stage in its own thread: a worker reads (and decrypts)
        # batch n+1 while another hashes batch n and the reactor encrypts and writes batch n-1.
        # Each stage waits for its previous step, so at most four batches are in memory.
        reading: defer.Deferred[bytes | None] | None = self._blocking.run(_next_chunk, iterator, self._batch_bytes)
        hashing: defer.Deferred[None] | None = None
        try:
            while True:
                assert reading is not None
                try:
                    chunk = await reading
                except Exception as failure:
                    raise BodySourceError(self.peer, f"reading the body failed after {count} bytes: "
                                          f"{type(failure).__name__}", failure) from failure
                reading = None
                if chunk is None:
                    break
                count += len(chunk)
                if count > self.length:
                    raise BodySourceError(self.peer, f"the body is longer than its declared {self.length} bytes")
                if hashing is not None:
                    await hashing
                hashing = self._blocking.run(digest.update, chunk)
                if self._paused is not None:
                    await self._paused
                if self._stopped:
                    return
                reading = self._blocking.run(_next_chunk, iterator, self._batch_bytes)
                if held is not None:
                    consumer.write(held)
                held = chunk
            if hashing is not None:
                await hashing
            if count != self.length:
                raise BodySourceError(self.peer, f"the body has {count} bytes, {self.length} declared")
            if digest.hexdigest() != self._sha256:
                raise BodySourceError(self.peer, "the body's SHA-256 differs from the declared one")
            if held is not None and not self._stopped:
                consumer.write(held)
        finally:
            # Close the source only after a read still in a worker has finished with it.
            after = reading if reading is not None else defer.succeed(None)
            after.addBoth(lambda _: self._blocking.run(_close, iterator)).addErrback(lambda _: None)

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = defer.Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        if not self.verified.called:
            self.verified.callback(False)  # never left unfired: the PUT waits on it before any MOVE
        self.resumeProducing()


@implementer(IBodyProducer)
class BytesBody:
    """A small in-memory request body (an :class:`IBodyProducer`)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _StreamBody(Protocol):
    """Delivers a response body chunk by chunk to a sink, pausing the transport while the sink is busy."""

    def __init__(self, sink: Sink, limit: int | None = None) -> None:
        self.sink = sink
        self.limit = limit
        self.digest = hashlib.sha256()
        self.size = 0
        self.done: defer.Deferred[tuple[int, str]] = defer.Deferred()
        self._queue: list[bytes] = []
        self._busy = False
        self._ended: Failure | None = None
        self._failed = False

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            self._fail(Failure(ValueError(f"response body longer than {self.limit} bytes")))
            return
        self.digest.update(data)
        self._queue.append(data)
        self._drain()

    def _drain(self) -> None:
        while self._queue and not self._busy and not self._failed:
            chunk = self._queue.pop(0)
            try:
                result = self.sink(chunk)
            except Exception:
                self._fail(Failure())
                return
            if isinstance(result, defer.Deferred):
                self._busy = True
                if self.transport is not None:
                    self.transport.pauseProducing()  # type: ignore[attr-defined]
                result.addCallbacks(self._sink_ready, self._fail)
        if not self._queue and not self._busy and self._ended is not None and not self._failed:
            self._finish(self._ended)

    def _sink_ready(self, _: object) -> None:
        self._busy = False
        if self.transport is not None and self._ended is None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]
        self._drain()

    def _fail(self, failure: Failure) -> None:
        if self._failed:
            return
        self._failed = True
        if self.transport is not None and self._ended is None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
        if not self.done.called:
            self.done.errback(failure)

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        self._ended = reason
        self._drain()

    def _finish(self, reason: Failure) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback((self.size, self.digest.hexdigest()))
        else:
            self.done.errback(reason)


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, client: WebDavClient) -> None:
        self._client = client

    def endpointForURI(self, uri: Any) -> PeerEndpoint:
        return self._client._endpoint(uri.host.decode("idna"), uri.port)


def _authority(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"not an https URL: {url!r}")
    return parts.hostname.lower(), parts.port or 443


class WebDavClient:
    """PUT/MOVE, PROPFIND, GET and DELETE on one peer, each a Deferred bounded by the peer's timeouts.

    *urls* are the peer's directory URLs (``url`` and ``results_url``); requests to
    any other host or port are refused with ``OutboundDenied(reason="host")``.
    *tls* makes the client TLS creator for a host; *blocking* is the door the
    upload body is read through; *resolve* defaults to the reactor's resolver.
    Failures are the typed errors of :mod:`kei_gateway.adapters.transport.errors`.
    """

    def __init__(self, reactor: Any, peer: str, urls: Sequence[str], allow: Sequence[Any], tls: TlsFactory,
                 blocking: Blocking, connect_timeout: float = 10.0, transfer_timeout: float = 600.0,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, resolve: Resolver | None = None,
                 persistent: bool = True) -> None:
        self._reactor = reactor
        self.peer = peer
        self.allow = tuple(allow)
        self._authorities = {_authority(url) for url in urls if url}
        self._tls_factory = tls
        self._tls: dict[str, PeerTLS] = {}
        self._blocking = blocking
        self.connect_timeout = connect_timeout
        self.transfer_timeout = transfer_timeout
        self.idle_timeout = min(idle_timeout, transfer_timeout)
        self._resolve = resolve or reactor_resolver(reactor)
        self._pool = HTTPConnectionPool(reactor, persistent=persistent)
        self._pool._factory = _QuietClientFactory
        self._pool.retryAutomatically = False  # PUT and MOVE are retried by the flow, never behind its back
        self._pool.cachedConnectionTimeout = max(1, int(min(30.0, self.idle_timeout)))
        self._agent = Agent.usingEndpointFactory(reactor, _Endpoints(self), pool=self._pool)

    @classmethod
    def from_config(cls, reactor: Any, config: Any, peer: str, blocking: Blocking,
                    idle_timeout: float = DEFAULT_IDLE_TIMEOUT, resolve: Resolver | None = None, *,
                    environ: Mapping[str, str] | None = None,
                    on_certificate: Callable[[str, datetime.datetime], None] | None = None) -> WebDavClient:
        """The client of ``[peers.<peer>]`` in a :class:`~kei_gateway.config.Config`, with ``[tls]`` as identity.

        *on_certificate* hears of each server certificate that passed every TLS check
        (the peer's name and its notAfter), for the expiry metric.
        """
        section = config.peers[peer]
        paths = {} if environ is None else {"environ": environ}
        ca = config.file_path(section.ca, **paths)
        certificate = config.file_path(config.tls.certificate, **paths)
        key = config.file_path(config.tls.private_key, **paths)

        def tls(host: str) -> PeerTLS:
            return PeerTLS(peer, host, ca, certificate, key, config.tls.min_version, section.pins,
                           on_certificate=on_certificate)

        return cls(reactor, peer, [section.url, section.results_url], section.allow, tls, blocking,
                   connect_timeout=section.connect_timeout, transfer_timeout=section.transfer_timeout,
                   idle_timeout=idle_timeout, resolve=resolve)

    def close(self) -> defer.Deferred[None]:
        """Close the idle connections kept for reuse (at shutdown; also ends a test cleanly)."""
        return self._pool.closeCachedConnections()

    # -- public operations -------------------------------------------------------------------

    def put(self, dir_url: str, name: str, body: BodySource, size: int, sha256_hex: str) -> defer.Deferred[PutResult]:
        """Upload *body* as ``<dir_url><name>``: ``PUT name.part`` then ``MOVE`` with ``Overwrite: F``.

        The ``MOVE`` is sent only after the whole body was read and matched *size*
        and *sha256_hex*. On ``412`` the existing file is fetched: the same SHA-256
        means it was delivered before (``already_present``); other content raises
        :class:`RemoteConflict`. Either way the leftover ``.part`` is deleted. A ``404`` on
        the MOVE (the ``.part`` gone: another attempt's MOVE came first) is judged the same way.
        """
        return self._bounded(f"PUT {name}", self._put(dir_url, name, body, size, sha256_hex))

    def propfind(self, dir_url: str) -> defer.Deferred[list[RemoteEntry]]:
        """The files in *dir_url* (``PROPFIND Depth: 1``), without the directory itself and sub-collections."""
        return self._bounded("PROPFIND", self._propfind(dir_url))

    def get(self, url: str, sink: Sink) -> defer.Deferred[tuple[int, str]]:
        """Stream *url* into *sink*; fires with ``(size, sha256 hex)`` of what was received."""
        return self._bounded("GET", self._get(url, sink))

    def delete(self, url: str) -> defer.Deferred[bool]:
        """Delete *url*; True when deleted, False when it was already gone (404)."""
        return self._bounded("DELETE", self._delete(url))

    # -- machinery ----------------------------------------------------------------------------

    def _endpoint(self, host: str, port: int) -> PeerEndpoint:
        if (host.lower(), port) not in self._authorities:
            raise OutboundDenied(self.peer, "host", f"{host}:{port} is not a URL of this peer")
        tls = self._tls.get(host)
        if tls is None:
            tls = self._tls[host] = self._tls_factory(host)
        return PeerEndpoint(self._reactor, self.peer, host, port, self.allow, tls, self._resolve,
                            self.connect_timeout, self.idle_timeout)

    def _bounded(self, what: str, coroutine: Any) -> defer.Deferred[Any]:
        operation: defer.Deferred[Any] = defer.Deferred.fromCoroutine(coroutine)
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            operation.cancel()

        timer = self._reactor.callLater(self.transfer_timeout, expire)

        def finish(result: object) -> object:
            if timer.active():
                timer.cancel()
            if timed_out and isinstance(result, Failure):
                return Failure(TransientError(self.peer, "transfer_timeout",
                                              f"{what} did not finish within {self.transfer_timeout:g}s"))
            return result

        return operation.addBoth(finish)

    async def _request(self, method: bytes, url: str, headers: dict[bytes, bytes] | None = None,
                       body: IBodyProducer | None = None) -> IResponse:
        try:
            host, port = _authority(url)
        except ValueError:
            raise OutboundDenied(self.peer, "host", "not an https URL") from None
        if (host, port) not in self._authorities:
            raise OutboundDenied(self.peer, "host", f"{host}:{port} is not a URL of this peer")
        request_headers = Headers({b"user-agent": [b"kei-gateway"]})
        for key, value in (headers or {}).items():
            request_headers.setRawHeaders(key, [value])
        try:
            return await self._agent.request(method, url.encode("ascii"), request_headers, body)
        except TransportError:
            raise
        except (ResponseNeverReceived, RequestTransmissionFailed, RequestGenerationFailed, ResponseFailed) as failure:
            for reason in failure.reasons:
                if isinstance(reason.value, TransportError):
                    raise reason.value from None
            for reason in failure.reasons:
                if isinstance(reason.value, defer.CancelledError):
                    raise defer.CancelledError() from None
            detail = "; ".join(f"{type(r.value).__name__}: {r.value}" for r in failure.reasons)
            raise TransientError(self.peer, "connection_lost", f"{method.decode()}: {detail}") from None
        except (error.ConnectionLost, error.ConnectionDone) as failure:
            raise TransientError(self.peer, "connection_lost", f"{method.decode()}: {failure}") from None

    async def _read(self, response: IResponse, sink: Sink, limit: int | None = None) -> tuple[int, str]:
        stream = _StreamBody(sink, limit)
        response.deliverBody(stream)
        try:
            return await stream.done
        except (TransportError, defer.CancelledError):
            raise
        except ResponseFailed as failure:
            for reason in failure.reasons:
                if isinstance(reason.value, TransportError):
                    raise reason.value from None
            raise TransientError(self.peer, "connection_lost", f"response body cut short: {failure}") from None

    async def _discard(self, response: IResponse) -> None:
        if response.length == 0:
            return
        try:
            await self._read(response, lambda chunk: None, ERROR_BODY_LIMIT)
        except (TransportError, ValueError):
            pass

    async def _status_error(self, method: str, url: str, response: IResponse) -> HttpError:
        await self._discard(response)
        retry_after = None
        if response.code in (429, 503):
            values = response.headers.getRawHeaders(b"retry-after")
            retry_after = parse_retry_after(values[0] if values else None, self._reactor.seconds())
        return HttpError(self.peer, method, urlsplit(url).path, response.code, retry_after)

    async def _put(self, dir_url: str, name: str, body: BodySource, size: int, sha256_hex: str) -> PutResult:
        final_url = file_url(dir_url, name)
        part_url = file_url(dir_url, part_name(name))
        producer = _PulledBody(self.peer, body, size, sha256_hex, self._blocking)
        response = await self._request(b"PUT", part_url, {
            b"content-type": b"application/octet-stream",
            b"content-digest": content_digest(sha256_hex).encode("ascii"),
        }, producer)
        if response.code not in (200, 201, 204):
            raise await self._status_error("PUT", part_url, response)
        await self._discard(response)
        if not await producer.verified:  # the peer answered before reading it all: never MOVE then
            # The blob is fine (that would have errbacked): the peer or the connection cut the body short.
            raise TransientError(self.peer, "connection_lost", "the peer answered before the whole body was sent")
        crashpoint("send.before-move")
        response = await self._request(b"MOVE", part_url, {
            b"destination": final_url.encode("ascii"), b"overwrite": b"F",
        })
        if response.code in (201, 204):
            await self._discard(response)
            return PutResult(name, final_url, already_present=False)
        if response.code not in (404, 412):
            raise await self._status_error("MOVE", part_url, response)
        # 412: the final name exists. 404: our .part is gone — another attempt at this very transfer moved it into
        # place first (a node that stalled mid-upload and whose MOVE the peer carried out late, SPEC §14, or a
        # MOVE whose answer was lost). Either way the final name decides, by its SHA-256.
        gone = await self._status_error("MOVE", part_url, response) if response.code == 404 else None
        if gone is None:
            await self._discard(response)
        response = await self._request(b"GET", final_url)
        if response.code != 200:
            if gone is not None:
                await self._discard(response)
                raise gone  # neither the .part nor the final name: the peer lost it (a person looks)
            raise await self._status_error("GET", final_url, response)
        _, remote_sha256 = await self._read(response, lambda chunk: None)
        try:
            await self._delete(part_url)
        except TransportError:
            pass  # a leftover .part is harmless; the next attempt overwrites it
        if remote_sha256 != sha256_hex.lower():
            raise RemoteConflict(self.peer, name, sha256_hex.lower(), remote_sha256)
        return PutResult(name, final_url, already_present=True)

    async def _propfind(self, dir_url: str) -> list[RemoteEntry]:
        response = await self._request(b"PROPFIND", dir_url, {
            b"depth": b"1", b"content-type": b'application/xml; charset="utf-8"',
        }, BytesBody(PROPFIND_BODY))
        if response.code != 207:
            raise await self._status_error("PROPFIND", dir_url, response)
        chunks: list[bytes] = []
        try:
            await self._read(response, chunks.append, PROPFIND_LIMIT)  # type: ignore[arg-type]
        except ValueError as failure:
            raise HttpError(self.peer, "PROPFIND", urlsplit(dir_url).path, 207) from failure
        try:
            return parse_multistatus(b"".join(chunks), dir_url)
        except MultistatusError as failure:
            raise HttpError(self.peer, "PROPFIND", urlsplit(dir_url).path, 207) from failure

    async def _get(self, url: str, sink: Sink) -> tuple[int, str]:
        response = await self._request(b"GET", url)
        if response.code != 200:
            raise await self._status_error("GET", url, response)
        size, sha256 = await self._read(response, sink)
        if response.length is not UNKNOWN_LENGTH and response.length != size:
            raise TransientError(self.peer, "connection_lost", f"GET got {size} of {response.length} bytes")
        return size, sha256

    async def _delete(self, url: str) -> bool:
        response = await self._request(b"DELETE", url)
        await self._discard(response)
        if response.code in (200, 202, 204):
            return True
        if response.code == 404:
            return False
        raise await self._status_error("DELETE", url, response)


