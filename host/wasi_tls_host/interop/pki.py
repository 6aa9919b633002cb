"""Certificates for an interop run, made with ``cryptography`` in the run's scratch folder.

One CA every side trusts (``ca_pem``) issues the server and client certificates; a second,
unknown CA issues the "unknown CA" server certificate. Server certificates come in the key
types the matrix's signature rows need (ECDSA P-256, the default, and P-384; RSA, which TLS
1.3 signs with RSA-PSS; Ed25519), and in the broken forms of its certificate-failure rows
(expired, issued for another name, issued by the unknown CA).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]

KEY_KINDS = ("ecdsa-p256", "ecdsa-p384", "rsa", "ed25519")
SERVER_NAME = "localhost"  # every server certificate also names 127.0.0.1
CLIENT_NAME = "interop-client"


def _new_key(kind: str) -> PrivateKey:
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r} (one of {', '.join(KEY_KINDS)})")


def _pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass(frozen=True)
class Credentials:
    """A certificate and its key as files: ``cert`` (PEM chain, leaf first), ``key`` (PKCS#8
    PEM), ``bundle`` (key then chain, for ``openssl s_server -cert``), and as PEM bytes."""

    name: str
    cert: Path
    key: Path
    bundle: Path
    subject: str  # the leaf's common name

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


class CertificateSource(Protocol):
    """What peers and guest runners need of a run's certificates (``Pki``, or the pytest
    plugin's trustme-based one)."""

    ca_pem: Path

    def server(self, kind: str = ..., *, names: tuple[str, ...] = ..., expired: bool = ..., unknown_ca: bool = ...) -> Credentials: ...

    def client(self, kind: str = ..., *, unknown_ca: bool = ...) -> Credentials: ...


class _Authority:
    def __init__(self, common_name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, key: PrivateKey, common_name: str, names: tuple[str, ...], *, client: bool, expired: bool) -> x509.Certificate:
        now = datetime.datetime.now(datetime.timezone.utc)
        if expired:
            not_before, not_after = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
        else:
            not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(self.key, hashes.SHA256())


class Pki:
    """The run's CA (``ca_pem``) and the certificates cases ask for, made once each."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca = _Authority("wasi-tls-host interop CA")
        self._unknown = _Authority("an unknown CA")
        self.ca_pem = self.dir / "ca.pem"
        self.ca_pem.write_bytes(self._ca.cert.public_bytes(serialization.Encoding.PEM))
        self._made: dict[tuple[object, ...], Credentials] = {}

    def server(self, kind: str = "ecdsa-p256", *, names: tuple[str, ...] = (SERVER_NAME, "127.0.0.1"),
               expired: bool = False, unknown_ca: bool = False) -> Credentials:
        """A server certificate for ``names`` (the first is its common name)."""
        return self._credentials(("server", kind, names, expired, unknown_ca), kind, names[0], names,
                                 client=False, expired=expired, unknown_ca=unknown_ca)

    def client(self, kind: str = "ecdsa-p256", *, unknown_ca: bool = False) -> Credentials:
        """A client certificate (common name ``interop-client``)."""
        return self._credentials(("client", kind, unknown_ca), kind, CLIENT_NAME, (), client=True, expired=False,
                                 unknown_ca=unknown_ca)

    def _credentials(self, memo: tuple[object, ...], kind: str, common_name: str, names: tuple[str, ...], *,
                     client: bool, expired: bool, unknown_ca: bool) -> Credentials:
        made = self._made.get(memo)
        if made is not None:
            return made
        authority = self._unknown if unknown_ca else self._ca
        key = _new_key(kind)
        cert = authority.issue(key, common_name, names, client=client, expired=expired)
        stem = "-".join(["client" if client else "server", kind, *(["expired"] if expired else []),
                         *(["unknown-ca"] if unknown_ca else []), *([common_name] if not client else [])])
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        paths = (self.dir / f"{stem}.pem", self.dir / f"{stem}.key", self.dir / f"{stem}-bundle.pem")
        paths[0].write_bytes(cert_pem)
        paths[1].write_bytes(_pem(key))
        paths[2].write_bytes(_pem(key) + cert_pem)
        made = Credentials(stem, *paths, subject=common_name)
        self._made[memo] = made
        return made
