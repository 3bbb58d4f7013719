"""Run one mutual-TLS handshake, optionally under MDWE, and print the outcome as JSON.

Run as a separate process by ``test_mdwe_tls.py``::

    python mdwe_tls_handshake.py [--mdwe] [--stack pyopenssl|twisted-client]

``--mdwe`` first calls ``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)``: from
then on the kernel refuses any mapping that is, or becomes, writable and
executable — what systemd >= 256 applies for ``MemoryDenyWriteExecute=yes``
(older systemd installs a seccomp filter with the same effect).  It is done
before pyOpenSSL/cffi are imported, as systemd does it before ``exec``.

``--stack pyopenssl``: a pyOpenSSL server and client, each with a certificate
made here by ``cryptography`` under a throwaway CA, both requiring the peer's
certificate with a Python verify callback (``Context.set_verify``), driven
through memory BIOs exactly as Twisted's ``TLSMemoryBIOProtocol`` drives them.

``--stack twisted-client``: builds the pyOpenSSL connection that Twisted's
``optionsForClientTLS`` makes for every outbound connection (it sets a
per-connection verify callback for the host-name check) — the path the
gateway's peer clients take.

The last line on stdout is a JSON object: ``{"ok": true, ...}`` or
``{"ok": false, "error_type": ..., "error": ...}``.  Exit status 0 either way;
anything else means the probe itself broke.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import sys
from typing import Any

PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1


def apply_mdwe() -> int:
    """Turn on MDWE for this process; return PR_GET_MDWE's answer (1 when on)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "prctl(PR_SET_MDWE) refused: the kernel has no MDWE (needs Linux >= 6.3)")
    return int(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0))


def _make_pki() -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(name: str, issuer: Any = None, issuer_key: Any = None) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        is_ca = issuer is None
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if is_ca else issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        if not is_ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        return key, builder.sign(issuer_key or key, hashes.SHA256())

    ca_key, ca_cert = issue("kei-gateway test CA")
    server_key, server_cert = issue("peer.example.lg.jp", ca_cert, ca_key)
    client_key, client_cert = issue("gateway.example.lg.jp", ca_cert, ca_key)
    return {"ca": ca_cert, "server": (server_key, server_cert), "client": (client_key, client_cert)}


def handshake_pyopenssl() -> dict[str, Any]:
    """Mutual TLS between a pyOpenSSL client and server with verify callbacks."""
    from OpenSSL import SSL, crypto

    pki = _make_pki()
    verified: list[tuple[str, int, bool]] = []

    def context(role: str) -> SSL.Context:
        key, cert = pki[role]
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_privatekey(key)
        ctx.use_certificate(cert)
        ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(pki["ca"]))

        def verify(conn: SSL.Connection, x509: crypto.X509, errno: int, depth: int, ok: int) -> bool:
            verified.append((role, depth, bool(ok)))
            return bool(ok)

        # The call under test: a Python verify callback is a cffi closure.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return ctx

    server = SSL.Connection(context("server"), None)
    server.set_accept_state()
    client = SSL.Connection(context("client"), None)
    client.set_connect_state()

    done = {"client": False, "server": False}
    for _ in range(50):  # a TLS 1.3 handshake takes 2-3 flights; bounded, no waiting involved
        for name, conn in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    conn.do_handshake()
                    done[name] = True
                except SSL.WantReadError:
                    pass
        for source, sink in ((client, server), (server, client)):
            try:
                sink.bio_write(source.bio_read(65536))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            break
    if not all(done.values()):
        return {"ok": False, "error_type": "Incomplete", "error": f"handshake did not finish: {done}"}

    client.send(b"ping")
    server.bio_write(client.bio_read(65536))
    echoed = server.recv(4)
    server_saw = server.get_peer_certificate(as_cryptography=True)
    return {
        "ok": True,
        "protocol": client.get_protocol_version_name(),
        "server_saw_client": server_saw.subject.rfc4514_string() if server_saw else None,
        "verify_calls": len(verified),
        "all_verified": all(ok for _, _, ok in verified),
        "payload": echoed.decode("ascii"),
    }


def twisted_client_connection() -> dict[str, Any]:
    """Start an outbound TLS connection the way Twisted does, up to the ClientHello."""
    from OpenSSL import crypto
    from twisted.internet.address import IPv4Address
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import Certificate, optionsForClientTLS
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOFactory

    pki = _make_pki()
    ca = Certificate(crypto.X509.from_cryptography(pki["ca"]))
    options = optionsForClientTLS("peer.example.lg.jp", trustRoot=ca)
    tls_factory = TLSMemoryBIOFactory(options, True, Factory.forProtocol(Protocol))
    protocol = tls_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8443))
    transport = StringTransport()
    protocol.makeConnection(transport)  # creates the SSL.Connection and sends the ClientHello
    sent = transport.value()
    # 0x16 = TLS handshake record: the ClientHello really went out.
    return {"ok": sent[:1] == b"\x16", "client_hello_bytes": len(sent)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mdwe", action="store_true", help="enable MDWE before importing pyOpenSSL")
    parser.add_argument("--stack", choices=("pyopenssl", "twisted-client"), default="pyopenssl")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"mdwe": apply_mdwe() if args.mdwe else 0, "stack": args.stack}
    try:
        result.update(handshake_pyopenssl() if args.stack == "pyopenssl" else twisted_client_connection())
    except Exception as exc:  # the probe reports any failure as data, for the test to judge
        result.update(ok=False, error_type=type(exc).__name__, error=str(exc))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
