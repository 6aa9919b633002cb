"""Identities: certificates guests may read, and private identities whose keys stay here.

``PrivateIdentity`` is created by the embedder (PEM files, encrypted keys with a
passphrase, or ``cryptography`` objects) and preopened for a guest through
``TlsConfig.identities``. The guest receives handles; no host function returns key bytes:
``private-identity`` exposes only its name and its public part.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import types as key_types
from cryptography.x509.oid import PublicKeyAlgorithmOID
from OpenSSL import SSL, crypto
from OpenSSL._util import exception_from_error_queue as _exception_from_error_queue
from OpenSSL._util import lib as _lib

from ..runtime.binding import Interface
from ..runtime.resources import HostResource
from ..runtime.store import StoreState
from ..runtime.values import WitError
from .config import TlsConfig, load_certificates, tls_config

PrivateKey = key_types.CertificateIssuerPrivateKeyTypes


def _datetime(value: Any) -> dict[str, int]:
    return {"seconds": int(value.timestamp()), "nanoseconds": 0}


class PublicIdentity(HostResource):
    """A certificate chain (leaf first) anyone may inspect."""

    def __init__(self, chain: list[x509.Certificate]) -> None:
        if not chain:
            raise ValueError("an identity needs at least one certificate")
        self.chain = chain
        self.leaf = chain[0]
        self.der_chain = [c.public_bytes(serialization.Encoding.DER) for c in chain]
        self.fingerprint = hashlib.sha256(self.der_chain[0]).digest()

    def copy(self) -> PublicIdentity:
        """Another handle on the same certificates (each handle a guest gets is its own
        object, so dropping one leaves the others valid); nothing is decoded again."""
        twin = PublicIdentity.__new__(PublicIdentity)
        twin.__dict__.update(self.__dict__)
        return twin

    def names(self) -> list[str]:
        try:
            sans = self.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return []
        return [str(n.value) for n in sans if isinstance(n, (x509.DNSName, x509.IPAddress))]

    def valid_for(self, host_name: str) -> bool:
        """Whether the leaf's SAN covers ``host_name`` (one leftmost wildcard label allowed)."""
        try:
            ip = ipaddress.ip_address(host_name.strip("[]"))
        except ValueError:
            ip = None
        try:
            sans = self.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        if ip is not None:
            return ip in sans.get_values_for_type(x509.IPAddress)
        wanted = host_name.rstrip(".").lower()
        for pattern in sans.get_values_for_type(x509.DNSName):
            pattern = pattern.rstrip(".").lower()
            if pattern == wanted:
                return True
            if pattern.startswith("*.") and "." in wanted:
                if wanted.split(".", 1)[1] == pattern[2:] and wanted.split(".", 1)[0] != "":
                    return True
        return False


class PassphraseNeeded(ValueError):
    """The private key is encrypted and no passphrase was given."""


@dataclass(frozen=True)
class IdentityFiles:
    """Where an identity was read from, so that it can be read again (rotation)."""

    cert: Path
    key: Path
    passphrase: bytes | None = field(default=None, repr=False)


@dataclass(eq=False)
class PrivateIdentity:
    """A named certificate chain and private key, owned by the embedder.

    The key is loaded into OpenSSL contexts by the host; nothing hands it to a guest.
    ``openssl_key`` is the same key as OpenSSL loaded it from the PEM file: cryptography
    reads an RSA-PSS key (``id-RSASSA-PSS``) as a plain RSA key, and OpenSSL pairs a
    certificate only with a key of its own type, so a key converted from ``key`` would
    leave an RSA-PSS certificate without a key (no handshake could use it).
    """

    name: str
    chain: list[x509.Certificate]
    key: PrivateKey = field(repr=False)
    files: IdentityFiles | None = field(default=None, compare=False)
    openssl_key: crypto.PKey | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.chain:
            raise ValueError(f"identity {self.name!r} has no certificate")
        try:
            self.chain[0].public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ValueError(f"identity {self.name!r}: cannot read the certificate's public key: {e}") from None
        if self.chain[0].public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
            raise ValueError(f"identity {self.name!r}: the private key does not match the certificate")
        if self.openssl_key is None:
            self.openssl_key = crypto.PKey.from_cryptography_key(self.key)
        self._check_openssl_pairs()
        self.public = PublicIdentity(self.chain)

    def _check_openssl_pairs(self) -> None:
        """Refuse now, in one line, a certificate and key that OpenSSL would not use
        together, rather than fail every handshake that presents them."""
        ctx = SSL.Context(SSL.TLS_METHOD)
        try:
            ctx.use_certificate(self.chain[0])
            self._use_key(ctx)
        except SSL.Error as e:
            reasons = "; ".join(str(r[2]) for r in e.args[0]) if e.args and isinstance(e.args[0], list) else str(e)
            hint = ""
            if self.chain[0].public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS:
                hint = ("; an RSA-PSS key must be given as its PEM (PrivateIdentity.from_pem or from_files): "
                        "cryptography reads it as a plain RSA key")
            raise ValueError(f"identity {self.name!r}: OpenSSL cannot use this certificate with this key ({reasons}){hint}") from None

    def use_in(self, ctx: SSL.Context) -> None:
        """Present this identity from ``ctx``: the leaf, the intermediates after it, the key."""
        ctx.use_certificate(self.chain[0])
        for extra in self.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        self._use_key(ctx)

    def _use_key(self, ctx: SSL.Context) -> None:
        # pyOpenSSL deprecates passing a PKey to use_privatekey, and a cryptography key would
        # lose the RSA-PSS type (see openssl_key): its private binding of SSL_CTX_use_PrivateKey.
        assert self.openssl_key is not None
        if not _lib.SSL_CTX_use_PrivateKey(ctx._context, self.openssl_key._pkey):
            _exception_from_error_queue(SSL.Error)
        ctx.check_privatekey()

    @classmethod
    def from_pem(cls, name: str, cert_pem: bytes, key_pem: bytes, passphrase: bytes | None = None, *,
                 files: IdentityFiles | None = None) -> PrivateIdentity:
        """``files``: where the bytes came from, named in errors and kept for ``reloaded``."""
        cert_where = f" ({files.cert})" if files else ""
        key_where = f" ({files.key})" if files else ""
        try:
            chain = load_certificates(cert_pem)
        except ValueError as e:
            raise ValueError(f"identity {name!r}: the certificate{cert_where}: {e}") from None
        try:
            key = serialization.load_pem_private_key(key_pem, passphrase)
        except TypeError as e:
            if passphrase is not None:  # cryptography: "Password was given but private key is not encrypted"
                raise ValueError(f"identity {name!r}: a passphrase was given, but the key{key_where} needs none (it is stored in the clear)") from None
            raise PassphraseNeeded(f"identity {name!r}: {e} (the key{key_where} is encrypted: give its passphrase)") from None
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ValueError(f"identity {name!r}: cannot load the private key{key_where}: {e}") from None
        # OpenSSL's own reading keeps the key's type (see openssl_key). The passphrase was
        # checked just above; b"" rather than None so OpenSSL can never prompt for one.
        try:
            openssl_key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem, passphrase or b"")
        except crypto.Error as e:
            raise ValueError(f"identity {name!r}: OpenSSL cannot load the private key{key_where}: {e}") from None
        try:
            return cls(name, chain, key, files, openssl_key=openssl_key)  # type: ignore[arg-type]
        except ValueError as e:
            raise ValueError(f"{e}{f' ({files.cert}, {files.key})' if files else ''}") from None

    @classmethod
    def from_files(cls, name: str, cert: str | Path, key: str | Path, passphrase: bytes | None = None) -> PrivateIdentity:
        try:
            cert_pem, key_pem = Path(cert).read_bytes(), Path(key).read_bytes()
        except OSError as e:
            raise ValueError(f"identity {name!r}: cannot read {e.filename}: {e.strerror}") from None
        return cls.from_pem(name, cert_pem, key_pem, passphrase, files=IdentityFiles(Path(cert), Path(key), passphrase))

    def reloaded(self) -> PrivateIdentity:
        """The same identity read again from its files (ValueError if it cannot be, or was
        not made from files)."""
        if self.files is None:
            raise ValueError(f"identity {self.name!r} was not loaded from files")
        return PrivateIdentity.from_files(self.name, self.files.cert, self.files.key, self.files.passphrase)


class PrivateIdentityHandle(HostResource):
    """What a guest holds for a private identity: a reference, never the key.

    It names the identity rather than pinning one certificate: after a rotation
    (``TlsConfig.reload_identities``) connections that start present the reloaded one."""

    def __init__(self, identity: PrivateIdentity, config: TlsConfig | None = None) -> None:
        self._identity = identity
        self._config = config

    @property
    def identity(self) -> PrivateIdentity:
        if self._config is None:
            return self._identity
        return self._config.current_identity(self._identity)


class IdentityStore(HostResource):
    def __init__(self, config: TlsConfig, attested: list[PrivateIdentity] | None = None) -> None:
        self.config = config
        self.attested = attested or []

    @property
    def identities(self) -> list[PrivateIdentity]:
        # Read from the config each time: a reload (SIGHUP) replaces its identities.
        return [*self.config.identities, *self.attested]

    def handle(self, identity: PrivateIdentity) -> PrivateIdentityHandle:
        return PrivateIdentityHandle(identity, self.config)


class TrustStore(HostResource):
    def __init__(self, anchors: list[x509.Certificate]) -> None:
        self.anchors = [PublicIdentity([a]) for a in anchors]


identities_iface = Interface("wasi-tls-host:tls/identities@0.1.0")
identities_iface.resource("public-identity", PublicIdentity)
identities_iface.resource("private-identity", PrivateIdentityHandle)
identities_iface.resource("identity-store", IdentityStore)
identities_iface.resource("trust-store", TrustStore)


def _copy(identity: PublicIdentity) -> PublicIdentity:
    return identity.copy()


@identities_iface.func("[method]public-identity.subject")
def public_identity_subject(cx: StoreState, this: PublicIdentity) -> str:
    return this.leaf.subject.rfc4514_string()


@identities_iface.func("[method]public-identity.issuer")
def public_identity_issuer(cx: StoreState, this: PublicIdentity) -> str:
    return this.leaf.issuer.rfc4514_string()


@identities_iface.func("[method]public-identity.subject-alt-names")
def public_identity_subject_alt_names(cx: StoreState, this: PublicIdentity) -> list[str]:
    return this.names()


@identities_iface.func("[method]public-identity.not-before")
def public_identity_not_before(cx: StoreState, this: PublicIdentity) -> dict[str, int]:
    return _datetime(this.leaf.not_valid_before_utc)


@identities_iface.func("[method]public-identity.not-after")
def public_identity_not_after(cx: StoreState, this: PublicIdentity) -> dict[str, int]:
    return _datetime(this.leaf.not_valid_after_utc)


@identities_iface.func("[method]public-identity.fingerprint-sha256")
def public_identity_fingerprint_sha256(cx: StoreState, this: PublicIdentity) -> bytes:
    return this.fingerprint


@identities_iface.func("[method]public-identity.export-der")
def public_identity_export_der(cx: StoreState, this: PublicIdentity) -> list[bytes]:
    return list(this.der_chain)


@identities_iface.func("[method]private-identity.name")
def private_identity_name(cx: StoreState, this: PrivateIdentityHandle) -> str:
    return this.identity.name


@identities_iface.func("[method]private-identity.public-identity")
def private_identity_public_identity(cx: StoreState, this: PrivateIdentityHandle) -> PublicIdentity:
    return _copy(this.identity.public)


@identities_iface.func("[method]identity-store.all")
def identity_store_all(cx: StoreState, this: IdentityStore) -> list[PrivateIdentityHandle]:
    return [this.handle(i) for i in this.identities]


@identities_iface.func("[method]identity-store.find-by-name")
def identity_store_find_by_name(cx: StoreState, this: IdentityStore, name: str) -> PrivateIdentityHandle | None:
    return next((this.handle(i) for i in this.identities if i.name == name), None)


@identities_iface.func("[method]identity-store.find-by-host-name")
def identity_store_find_by_host_name(cx: StoreState, this: IdentityStore, host_name: str) -> list[PrivateIdentityHandle]:
    return [this.handle(i) for i in this.identities if i.public.valid_for(host_name)]


@identities_iface.func("[method]identity-store.find-by-fingerprint")
def identity_store_find_by_fingerprint(cx: StoreState, this: IdentityStore, sha256: bytes) -> PrivateIdentityHandle | None:
    return next((this.handle(i) for i in this.identities if i.public.fingerprint == sha256), None)


@identities_iface.func("[method]trust-store.all")
def trust_store_all(cx: StoreState, this: TrustStore) -> list[PublicIdentity]:
    return [_copy(a) for a in this.anchors]


@identities_iface.func("[method]trust-store.find-by-host-name")
def trust_store_find_by_host_name(cx: StoreState, this: TrustStore, host_name: str) -> list[PublicIdentity]:
    return [_copy(a) for a in this.anchors if a.valid_for(host_name)]


@identities_iface.func("[method]trust-store.find-by-fingerprint")
def trust_store_find_by_fingerprint(cx: StoreState, this: TrustStore, sha256: bytes) -> PublicIdentity | None:
    return next((_copy(a) for a in this.anchors if a.fingerprint == sha256), None)


@identities_iface.func("preopened-identities")
def preopened_identities(cx: StoreState) -> IdentityStore:
    from .attested import attested_identities  # the instance's code-bound identity, if any

    return IdentityStore(tls_config(cx), attested_identities(cx))


@identities_iface.func("trust-anchors")
def trust_anchors(cx: StoreState) -> TrustStore:
    return TrustStore(tls_config(cx).anchors)


@identities_iface.func("parse-certificate")
def parse_certificate(cx: StoreState, data: bytes) -> PublicIdentity:
    try:
        return PublicIdentity(load_certificates(data))
    except ValueError as e:
        raise WitError({"code": "invalid-argument", "message": str(e)}) from None


INTERFACES = (identities_iface,)
