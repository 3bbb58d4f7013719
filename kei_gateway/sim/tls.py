"""Server-side mutual TLS for the simulators: a pyOpenSSL context and a listener helper.

The context requires a client certificate chaining to the given CA (OpenSSL's
own chain verification: no Python verify callback, see ``docs/decisions.md``),
TLS 1.2 minimum, ECDHE with AEAD ciphers only (for TLS 1.2; TLS 1.3 suites are
all AEAD). The ``wrong_server_cert`` fault is served per connection: the
factory hands out a second context whose certificate comes from a CA the
client does not trust.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from kei_gateway.sim import pki

__all__ = ["ServerIdentity", "MutualTLSContextFactory", "make_server_context", "wrong_identity", "parse_listen"]

CIPHERS_TLS12 = b"ECDHE+AESGCM:ECDHE+CHACHA20"
SESSION_ID = b"kei-gateway-sim"


@dataclass(frozen=True)
class ServerIdentity:
    """A server certificate chain (leaf first) and its private key, as PEM."""

    chain_pem: bytes
    key_pem: bytes

    @classmethod
    def from_files(cls, certificate: str, key: str) -> ServerIdentity:
        with open(certificate, "rb") as f:
            chain = f.read()
        with open(key, "rb") as f:
            return cls(chain, f.read())

    @classmethod
    def from_issued(cls, leaf: pki.Issued, ca: pki.Issued | None = None) -> ServerIdentity:
        chain = leaf.certificate_pem() + (ca.certificate_pem() if ca is not None else b"")
        return cls(chain, leaf.key_pem())


def wrong_identity(hosts: tuple[str, ...]) -> ServerIdentity:
    """A server certificate for *hosts* from a fresh throwaway CA that no client trusts."""
    ca = pki.make_ca("kei-gateway simulator WRONG CA (fault)", days=2)
    return ServerIdentity.from_issued(pki.issue(ca, "kei-gateway simulator wrong server", hosts=hosts, days=2), ca)


def make_server_context(identity: ServerIdentity, client_ca_pem: bytes) -> SSL.Context:
    """A server context demanding a client certificate that chains to one of *client_ca_pem*'s CAs."""
    chain = x509.load_pem_x509_certificates(identity.chain_pem)
    cas = x509.load_pem_x509_certificates(client_ca_pem)
    key = serialization.load_pem_private_key(identity.key_pem, password=None)
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_TICKET)
    ctx.set_cipher_list(CIPHERS_TLS12)
    ctx.use_certificate(chain[0])
    for extra in chain[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(key)  # type: ignore[arg-type]
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None
    for ca in cas:
        store.add_cert(crypto.X509.from_cryptography(ca))
        ctx.add_client_ca(ca)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
    ctx.set_session_id(SESSION_ID)
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class MutualTLSContextFactory:
    """Makes each accepted connection's TLS object (``serverConnectionForTLS``).

    When ``serve_wrong()`` returns true for a connection, it gets *wrong*'s
    context instead of the right one.
    """

    def __init__(self, right: SSL.Context, wrong: SSL.Context | None = None,
                 serve_wrong: Callable[[], bool] = lambda: False) -> None:
        self._right = right
        self._wrong = wrong
        self._serve_wrong = serve_wrong

    def getContext(self) -> SSL.Context:
        if self._wrong is not None and self._serve_wrong():
            return self._wrong
        return self._right

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.getContext(), None)


def parse_listen(text: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:8443"`` for IPv6) → ``(host, port)``; ValueError with a reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port (for example 127.0.0.1:8443)")
    return host.strip("[]"), int(port)
