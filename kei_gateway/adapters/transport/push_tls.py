"""Server-side TLS of the push listener: who is on the other end (CA of a peer whose ``push_allow`` holds the address, pins).

The client side (the gateway calling a peer) is :mod:`kei_gateway.adapters.transport.tls`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet import interfaces
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web import server
from zope.interface import implementer

from kei_gateway.adapters.transport.tls import base_context, spki_pin
from kei_gateway.config import Config
from kei_gateway.core.allowlist import Network, address_allowed
from kei_gateway.runtime import events

__all__ = ["ConnectionTrust", "PushTLS", "PushTLSFactory"]


# --------------------------------------------------------------------------- TLS: who is on the other end


@dataclass
class ConnectionTrust:
    """What the TLS layer learned about one connection."""

    source: str
    candidates: tuple[str, ...]
    policy: _Policy
    context: SSL.Context
    chain: set[str] = field(default_factory=set)
    peers: frozenset[str] = frozenset()
    failure: tuple[str, str] | None = None


@dataclass(frozen=True)
class _PeerTrust:
    name: str
    ca_path: str
    anchors: frozenset[str]
    pins: frozenset[str]
    push_allow: tuple[Network, ...]


def _fingerprint(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


class _Policy:
    """The push TLS policy of one configuration: each peer's CA, pins and push_allow; contexts per candidate set."""

    def __init__(self, config: Config, environ: Mapping[str, str], verify: Callable[..., bool]) -> None:
        self.config = config
        self._environ = environ
        self._verify = verify
        self.peers: dict[str, _PeerTrust] = {}
        for name, peer in sorted(config.peers.items()):
            if not peer.push_allow:
                continue
            ca_path = config.file_path(peer.ca, environ)
            with open(ca_path, "rb") as bundle:
                anchors = frozenset(_fingerprint(c) for c in x509.load_pem_x509_certificates(bundle.read()))
            self.peers[name] = _PeerTrust(name, ca_path, anchors, frozenset(peer.pins), tuple(peer.push_allow))
        self._contexts: dict[tuple[str, ...], SSL.Context] = {}

    def allowed_networks(self) -> list[Network]:
        return [net for peer in self.peers.values() for net in peer.push_allow]

    def candidates(self, source: str) -> tuple[str, ...]:
        return tuple(name for name, peer in self.peers.items() if address_allowed(source, peer.push_allow))

    def context(self, candidates: tuple[str, ...]) -> SSL.Context:
        context = self._contexts.get(candidates)
        if context is None:
            context = self._build(candidates)
            self._contexts[candidates] = context
        return context

    def _build(self, candidates: tuple[str, ...]) -> SSL.Context:
        # The same policy as the client side (TLS minimum, ECDHE + AEAD suites, options): transport.tls.
        tls = self.config.tls
        context = base_context(self.config.file_path(tls.certificate, self._environ),
                                self.config.file_path(tls.private_key, self._environ), tls.min_version)
        for name in candidates:  # these peers' CA bundles only: never the system store
            path = self.peers[name].ca_path
            context.load_verify_locations(path.encode())
            with open(path, "rb") as bundle:
                for authority in x509.load_pem_x509_certificates(bundle.read()):
                    context.add_client_ca(authority)
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        # No session resumption: every connection runs the verify callback that identifies the peer.
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        return context


@implementer(interfaces.IOpenSSLServerConnectionCreator)
class PushTLS:
    """Server TLS for the push listener: one context per set of peers a source address may be.

    The verify callback records, per connection, which configured peers the client
    certificate belongs to (its chain holds a certificate of the peer's CA bundle and
    its key matches the peer's pins, if any); a failed check aborts the handshake and
    its kind is kept for the log. :meth:`trust_of` reads it back from the TLS protocol.
    """

    def __init__(self, config_source: Callable[[], Config], environ: Mapping[str, str]) -> None:
        self._config_source = config_source
        self._environ = environ
        self._policy: _Policy | None = None
        self._trust: WeakKeyDictionary[Any, ConnectionTrust] = WeakKeyDictionary()

    def policy(self) -> _Policy:
        """The policy of the current configuration (rebuilt when the configuration object changes)."""
        config = self._config_source()
        if self._policy is None or self._policy.config is not config:
            self._policy = _Policy(config, self._environ, self._verify)
        return self._policy

    def reset(self) -> None:
        """Forget the cached contexts (re-read CA bundles, certificate and key at the next connection)."""
        self._policy = None

    def allowed_networks(self) -> list[Network]:
        try:
            return self.policy().allowed_networks()
        except Exception:
            # A CA file unreadable after a reload: still refuse by address, from the config alone.
            config = self._config_source()
            return [net for peer in config.peers.values() for net in peer.push_allow]

    def prepare(self, tls_protocol: Any, source: str) -> None:
        """Before the handshake of *tls_protocol* (from *source*): pick the peers it may be and their context.

        Raises when the context cannot be built (a CA, certificate or key file unreadable).
        """
        policy = self.policy()
        candidates = policy.candidates(source)
        context = policy.context(candidates)
        self._trust[tls_protocol] = ConnectionTrust(source, candidates, policy, context)

    def trust_of(self, tls_protocol: Any) -> ConnectionTrust | None:
        return self._trust.get(tls_protocol)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        trust = self._trust[tlsProtocol]  # set by prepare() when the protocol was built
        connection = SSL.Connection(trust.context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_accept_state()
        return connection

    def _verify(self, connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int,
                ok: int) -> bool:
        trust = self._trust.get(connection.get_app_data())
        if trust is None:
            return False
        if not ok:
            trust.failure = trust.failure or ("certificate", f"certificate at depth {depth} chains to no CA of "
                                              f"a peer allowed from this address (OpenSSL verify error {errno})")
            return False
        leaf = certificate.to_cryptography()
        trust.chain.add(_fingerprint(leaf))
        if depth != 0:
            return True
        policy = trust.policy
        chained = [name for name in trust.candidates
                   if name in policy.peers and policy.peers[name].anchors & trust.chain]
        if not chained:
            trust.failure = ("certificate", "certificate chains to no CA of a peer allowed from this address")
            return False
        pin = spki_pin(leaf)
        pinned = frozenset(name for name in chained if not policy.peers[name].pins or pin in policy.peers[name].pins)
        if not pinned:
            trust.failure = ("pin", f"client key {pin} matches none of the pins of {', '.join(chained)}")
            return False
        trust.peers = pinned
        return True


class PushTLSFactory(TLSMemoryBIOFactory):
    """TLS around the push site; tells :class:`PushTLS` each connection's source address."""

    def __init__(self, tls: PushTLS, site: server.Site, clock: Any) -> None:
        super().__init__(tls, False, site, clock)
        self._tls = tls

    log = Logger()

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        if protocol is None:
            return None
        try:
            self._tls.prepare(protocol, str(getattr(addr, "host", "")))
        except Exception as error:  # e.g. a CA file unreadable after a reload: refuse, say why, keep serving
            events.emit(self.log, events.INTERNAL_ERROR,
                        reason=f"push listener TLS setup: {events.describe_error(error)}")
            return None
        return protocol
