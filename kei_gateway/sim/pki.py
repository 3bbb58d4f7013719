"""A throwaway PKI and key set for the demo, the simulators and the tests.

Never for production: production certificates come from the LGPKI application CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "make_ca", "issue", "write_secret", "write_demo_credentials", "DemoCredentials"]


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kei-gateway throwaway PKI (dummy)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str, days: int = 30, now: datetime.datetime | None = None) -> Issued:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(key, cert)


def issue(ca: Issued, common_name: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
          days: int = 30, now: datetime.datetime | None = None, server: bool = True, client: bool = True) -> Issued:
    """A leaf certificate for *hosts* (IP addresses or DNS names), signed by *ca*."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return Issued(key, cert)


def write_secret(path: str, data: bytes) -> None:
    """Write *data* to a new file readable by its owner only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class DemoCredentials:
    directory: str
    ca: Issued
    gateway: Issued


def write_demo_credentials(directory: str, days: int = 365) -> DemoCredentials:
    """``gateway.crt``, ``gateway.key``, ``store.key``, ``audit.key`` and ``ca.pem`` in *directory*.

    Also ``peer-sim.crt``/``peer-sim.key``: a certificate for 127.0.0.1 and localhost from
    the same CA, for the peer simulators of the demo and the tests — as their server
    certificate and as the MPN simulator's client certificate when it pushes.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    ca = make_ca("kei-gateway demo CA", days=days)
    gateway = issue(ca, "kei-gateway demo gateway", days=days)
    with open(os.path.join(directory, "ca.pem"), "wb") as f:
        f.write(ca.certificate_pem())
    with open(os.path.join(directory, "gateway.crt"), "wb") as f:
        f.write(gateway.certificate_pem() + ca.certificate_pem())
    write_secret(os.path.join(directory, "gateway.key"), gateway.key_pem())
    simulator = issue(ca, "kei-gateway demo peer simulator", days=days)
    with open(os.path.join(directory, "peer-sim.crt"), "wb") as f:
        f.write(simulator.certificate_pem() + ca.certificate_pem())
    write_secret(os.path.join(directory, "peer-sim.key"), simulator.key_pem())
    write_secret(os.path.join(directory, "store.key"), secrets.token_bytes(32))
    write_secret(os.path.join(directory, "audit.key"), secrets.token_bytes(32))
    return DemoCredentials(directory, ca, gateway)
