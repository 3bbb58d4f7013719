"""TLS for the peer connections (SPEC §3): pyOpenSSL contexts with the gateway's policy.

Client side (:class:`PeerTLS`): TLS 1.2 or 1.3 minimum, ECDHE + AEAD suites only
for TLS 1.2 (every TLS 1.3 suite is AEAD with an ephemeral exchange), the
gateway's client certificate, the server verified against the peer's CA bundle
*only* (never the system store), its name or IP address checked against the URL
host with ``service_identity``, and optional SHA-256 SPKI pins on the leaf.

All checks run in the OpenSSL verify callback, so a failed check aborts the
handshake with an alert: no application byte is sent. The kind of failure
(``ca``, ``hostname``, ``pin``) is recorded per connection and read back with
:meth:`PeerTLS.failure_kind`; anything else is ``handshake``. A server
certificate that passed every check is reported to ``on_certificate`` (its
notAfter feeds ``kei_gateway_certificate_expiry_timestamp_seconds{role="peer:<name>"}``).

Server side (:func:`server_context`): a context for simulators and tests that
presents a certificate and requires a client certificate chaining to a CA.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

__all__ = ["PeerTLS", "spki_pin", "server_context", "base_context", "TLS12_CIPHERS", "MIN_VERSIONS"]

TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
)
"""TLS 1.2 suites offered: ECDHE key exchange and AEAD (GCM, ChaCha20-Poly1305) only."""

MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}

_OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET | getattr(SSL, "OP_NO_RENEGOTIATION", 0)


def spki_pin(certificate: x509.Certificate) -> str:
    """The pin of *certificate*: ``"sha256/"`` + base64 of the SHA-256 of its SubjectPublicKeyInfo (DER)."""
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


_SSL_MODE_ENABLE_PARTIAL_WRITE = 0x00000001
"""``SSL_MODE_ENABLE_PARTIAL_WRITE`` of ``openssl/ssl.h`` (pyOpenSSL sets it, but exports no name for it)."""


def base_context(certificate_path: str, private_key_path: str, min_version: str) -> SSL.Context:
    """Our TLS policy (minimum version, ECDHE+AEAD suites, options) with the gateway's certificate and key."""
    if min_version not in MIN_VERSIONS:
        raise ValueError(f"tls min_version must be one of {sorted(MIN_VERSIONS)}, got {min_version!r}")
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(MIN_VERSIONS[min_version])
    context.set_options(_OPTIONS)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    context.use_certificate_chain_file(certificate_path.encode())
    context.use_privatekey_file(private_key_path.encode())
    context.check_privatekey()
    return context


@implementer(IOpenSSLClientConnectionCreator)
class PeerTLS:
    """Client TLS connections to one peer, verified as SPEC §3 says.

    *host* is the host of the peer's URL (DNS name or IP literal): the name sent as
    SNI (DNS names only) and checked against the server certificate, whatever IP
    address the connection actually goes to. *pins* are ``"sha256/<base64>"``
    strings; empty means no pinning.
    """

    def __init__(self, peer: str, host: str, ca_path: str, certificate_path: str, private_key_path: str,
                 min_version: str = "1.2", pins: tuple[str, ...] = (),
                 on_certificate: Callable[[str, datetime], None] | None = None) -> None:
        self.peer = peer
        self.on_certificate = on_certificate
        """Called with (peer, notAfter) of the server certificate once it passed every check (expiry metrics)."""
        self.host = host
        self.pins = frozenset(pins)
        try:
            self._ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            self._ip = None
        self._failures: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()
        context = base_context(certificate_path, private_key_path, min_version)
        # The peer's CA bundle only: set_default_verify_paths() is deliberately never called.
        context.load_verify_locations(ca_path.encode())
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        # Over a memory BIO a write never blocks: let SSL_write take a whole piece at once
        # instead of returning after each 16 KiB record (see transport/_bulktls.py).
        context.clear_mode(_SSL_MODE_ENABLE_PARTIAL_WRITE)
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._ip is None:
            connection.set_tlsext_host_name(self.host.encode("idna"))
        connection.set_connect_state()
        return connection

    def failure_kind(self, tls_protocol: Any) -> tuple[str, str] | None:
        """``(kind, detail)`` of the check that failed on the connection of *tls_protocol*, if one did."""
        return self._failures.get(tls_protocol)

    def _fail(self, connection: SSL.Connection, kind: str, detail: str) -> bool:
        owner = connection.get_app_data()
        if owner is not None and owner not in self._failures:
            self._failures[owner] = (kind, detail)
        return False

    def _verify(self, connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            return self._fail(connection, "ca", f"certificate at depth {depth} not trusted by the peer's CA "
                              f"(OpenSSL verify error {errno})")
        if depth != 0:
            return True
        leaf = certificate.to_cryptography()
        try:
            if self._ip is not None:
                verify_certificate_ip_address(leaf, str(self._ip))
            else:
                verify_certificate_hostname(leaf, self.host)
        except (VerificationError, CertificateError) as error:
            return self._fail(connection, "hostname", f"certificate is not valid for {self.host}: {error}")
        if self.pins:
            pin = spki_pin(leaf)
            if pin not in self.pins:
                return self._fail(connection, "pin", f"server key {pin} matches none of the configured pins")
        if self.on_certificate is not None:
            try:
                self.on_certificate(self.peer, leaf.not_valid_after_utc)
            except Exception:  # a metrics hook must never break a handshake
                pass
        return True


def server_context(certificate_path: str, private_key_path: str, client_ca_path: str,
                   min_version: str = "1.2") -> SSL.Context:
    """A server context with the same policy: our suites, and a client certificate chaining to *client_ca_path*.

    Use with ``twisted.internet.ssl.ContextFactory``-style objects, e.g.
    ``TLSMemoryBIOFactory(ServerContext(ctx), False, factory)`` or ``listenSSL``.
    """
    context = base_context(certificate_path, private_key_path, min_version)
    context.load_verify_locations(client_ca_path.encode())
    with open(client_ca_path, "rb") as bundle:
        authorities = x509.load_pem_x509_certificates(bundle.read())
    for authority in authorities:
        context.add_client_ca(authority)
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: bool(args[-1]))
    return context
