"""Outbound connections to a peer: allow-list first, then TCP to the checked IP, then verified TLS.

:class:`PeerEndpoint` resolves the peer's host once, refuses with
:class:`~kei_gateway.adapters.transport.errors.OutboundDenied` unless an address is inside
the peer's ``allow`` CIDRs (before any connection is attempted), and connects to
that very address — no second lookup, so DNS rebinding cannot redirect it —
while TLS still sends and verifies the URL host. Its ``connect()`` fires only
after the TLS handshake (with every identity check) completed, so the HTTP client
never writes a byte to an unverified peer. The connection is aborted when the
handshake takes longer than the connect timeout, and later when nothing was sent
or received for the idle timeout.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress, IHandshakeListener, IHostResolution, IProtocol, IProtocolFactory, IReactorTime,
    IResolutionReceiver, IStreamClientEndpoint,
)
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from kei_gateway.adapters.transport._bulktls import BulkWriteTLSFactory
from kei_gateway.adapters.transport.errors import OutboundDenied, PeerIdentityError, TransientError
from kei_gateway.adapters.transport.tls import PeerTLS
from kei_gateway.core.allowlist import Network, address_allowed

__all__ = ["Resolver", "reactor_resolver", "PeerEndpoint", "checked_addresses"]

Resolver = Callable[[str, int], "defer.Deferred[Sequence[str]]"]
"""Resolves ``(host, port)`` to IP address strings."""


def reactor_resolver(reactor: Any) -> Resolver:
    """A :data:`Resolver` on ``reactor.nameResolver`` (getaddrinfo in the reactor's thread pool).

    An IP literal resolves to itself without a lookup.
    """

    def resolve(host: str, port: int) -> defer.Deferred[Sequence[str]]:
        try:
            return defer.succeed([str(ipaddress.ip_address(host))])
        except ValueError:
            pass
        found: list[str] = []
        done: defer.Deferred[Sequence[str]] = defer.Deferred()

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolution: IHostResolution) -> None:
                pass

            def addressResolved(self, address: IAddress) -> None:
                if isinstance(address, (IPv4Address, IPv6Address)) and address.host not in found:
                    found.append(address.host)

            def resolutionComplete(self) -> None:
                done.callback(found)

        reactor.nameResolver.resolveHostName(Receiver(), host, port, transportSemantics="TCP")
        return done

    return resolve


def checked_addresses(peer: str, host: str, addresses: Sequence[str], allow: Sequence[Network]) -> list[str]:
    """The resolved *addresses* inside *allow*; :class:`OutboundDenied` when there is none. (Pure.)"""
    if not addresses:
        raise TransientError(peer, "resolve", f"{host} has no address")
    inside = [address for address in addresses if address_allowed(address, allow)]
    if not inside:
        raise OutboundDenied(peer, "address", f"{host} resolves to {', '.join(addresses)}, outside the peer's allow")
    return inside


@implementer(IHandshakeListener)
class _Gate(ProtocolWrapper):
    """Sits between TLS and the HTTP protocol: reports the handshake, then watches for idleness."""

    factory: Any

    def __init__(self, factory: Any, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)
        self._idle: Any = None

    def handshakeCompleted(self) -> None:
        self.factory.handshake_done(self)
        self._touch()

    def _touch(self) -> None:
        clock, timeout = self.factory.clock, self.factory.idle_timeout
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = clock.callLater(timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        self.factory.idle_expired = True
        self._abort()

    def _abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._touch()
        super().dataReceived(data)

    def write(self, data: bytes) -> None:
        self._touch()
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self._touch()
        super().writeSequence(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        if self.factory.idle_expired:
            reason = Failure(TransientError(self.factory.peer, "idle_timeout",
                                            f"nothing sent or received for {self.factory.idle_timeout:g}s"))
        self.factory.lost_before_handshake(self, reason)
        super().connectionLost(reason)


class _GateFactory(WrappingFactory):
    protocol = _Gate  # type: ignore[assignment]
    noisy = False  # one "Starting factory" line per connection would flood the journal

    def __init__(self, wrapped: IProtocolFactory, peer: str, tls: PeerTLS, clock: IReactorTime,
                 idle_timeout: float) -> None:
        super().__init__(wrapped)
        self.peer = peer
        self.tls = tls
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.idle_expired = False
        self.ready: defer.Deferred[IProtocol] = defer.Deferred()
        self.gate: _Gate | None = None

    def buildProtocol(self, addr: IAddress | None) -> ProtocolWrapper:
        gate = super().buildProtocol(addr)
        assert isinstance(gate, _Gate)
        self.gate = gate
        return gate

    def handshake_done(self, gate: _Gate) -> None:
        if not self.ready.called:
            self.ready.callback(gate.wrappedProtocol)

    def lost_before_handshake(self, gate: _Gate, reason: Failure) -> None:
        if self.ready.called:
            return
        failed = self.tls.failure_kind(gate.transport)
        if failed is not None:
            self.ready.errback(PeerIdentityError(self.peer, failed[0], failed[1]))
        elif reason.check(SSL.Error):
            self.ready.errback(PeerIdentityError(self.peer, "handshake", str(reason.value)))
        elif reason.check(TransientError):
            self.ready.errback(reason)
        else:
            self.ready.errback(TransientError(self.peer, "connection_lost",
                                              f"connection closed during the TLS handshake: {reason.value}"))


@implementer(IStreamClientEndpoint)
class PeerEndpoint:
    """One connection to a peer: allow-listed address, verified TLS, bounded connect and idle time."""

    def __init__(self, reactor: Any, peer: str, host: str, port: int, allow: Sequence[Network],
                 tls: PeerTLS, resolve: Resolver, connect_timeout: float, idle_timeout: float) -> None:
        self._reactor = reactor
        self.peer = peer
        self.host = host
        self.port = port
        self.allow = tuple(allow)
        self.tls = tls
        self.resolve = resolve
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        return defer.Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        addresses = await self.resolve(self.host, self.port)
        address = checked_addresses(self.peer, self.host, addresses, self.allow)[0]
        endpoint_class = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint = endpoint_class(self._reactor, address, self.port, timeout=max(1, round(self.connect_timeout)))
        gate = _GateFactory(factory, self.peer, self.tls, self._reactor, self.idle_timeout)
        connecting = endpoint.connect(BulkWriteTLSFactory(self.tls, True, gate))
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            if not connecting.called:
                connecting.cancel()
            elif gate.gate is not None:
                gate.gate._abort()

        timer = self._reactor.callLater(self.connect_timeout, expire)
        try:
            try:
                await connecting
            except Exception as failure:
                if timed_out or isinstance(failure, (error.TimeoutError, error.ConnectingCancelledError,
                                                     defer.CancelledError)):
                    raise TransientError(self.peer, "connect_timeout",
                                         f"no connection to {address}:{self.port} within "
                                         f"{self.connect_timeout:g}s") from None
                raise TransientError(self.peer, "connect", f"{address}:{self.port}: {failure}") from None
            try:
                return await gate.ready
            except TransientError as failure:
                if timed_out:
                    raise TransientError(self.peer, "connect_timeout",
                                         f"no TLS handshake with {address}:{self.port} within "
                                         f"{self.connect_timeout:g}s") from failure
                raise
        finally:
            if timer.active():
                timer.cancel()
