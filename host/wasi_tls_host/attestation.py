"""Code-bound TLS identities: certificates that say which code holds the key.

The embedder preopens an attestation CA (``AttestationCA``). For each guest instance the host
then makes a fresh key pair, which never leaves the host, and a short-lived certificate
signed by that CA carrying the Open DICE extension (OID 1.3.6.1.4.1.11129.2.1.24):

- code: SHA-512 of the component's bytes; descriptor ``sha256:<hex>`` (its content name);
- configuration: SHA-512 of a canonical JSON document of what the embedder granted this
  instance (``configuration_document``), with the document itself as the descriptor;
- authority: SHA-512 over the raw Ed25519 keys that verified the component's signature
  (absent when nothing verified one), with those keys (hex, JSON) as the descriptor;
- mode: debug when the embedder ran the guest with isolation weakened, else normal.

Measurement of code and of configuration stay apart, as Gramine's MRENCLAVE and CONFIGID do
(two instances of one component with different grants share the code hash). The host is
the root of trust: a verifier trusts whoever holds the attestation CA's key.

``verify`` checks a chain against the CA and the expected claims, failing with an error
that names the claim. DER is written and read here by hand for this one small structure
(``cryptography`` parses X.509 but has no general ASN.1 codec; pyasn1 would be a new
dependency for ~60 lines); the codec is in ``provenance/dice.py`` so the TLS layer can read
claims without importing this module.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .provenance import CodeEvidence
from .provenance.dice import DICE_OID, MODE_DEBUG, MODE_NAMES, MODE_NORMAL, PROFILE_NAME, Claims, claims_of, describe
from .tls import config as tls_config

__all__ = [
    "AttestationCA", "AttestationError", "AuthorityMismatch", "Claims", "CodeMismatch",
    "ConfigurationMismatch", "DICE_OID", "Expired", "MODE_NAMES", "NotAttested", "PROFILE_NAME",
    "UntrustedIssuer", "authority_hash", "claims_of", "configuration_document", "describe",
    "load_certificates", "verify",
]

DEFAULT_LIFETIME = datetime.timedelta(hours=24)
DEFAULT_IDENTITY_NAME = "attested"


# --- what is measured ----------------------------------------------------------------------


def _fingerprint(cert: x509.Certificate) -> str:
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def configuration_document(config: Any) -> bytes:
    """Canonical JSON (sorted keys, no spaces, ASCII) of what the embedder granted: arguments,
    environment (names with the SHA-256 of each value: the document is public, values may be
    secrets), working directory, preopened directories and their modes, network grants, and
    TLS policy with trust anchors and identities by certificate fingerprint."""
    tls = config.tls
    network = config.network
    document: dict[str, Any] = {
        "version": 1,
        "args": list(config.args),
        "env": {k: "sha256:" + hashlib.sha256(v.encode()).hexdigest() for k, v in sorted(config.env.items())},
        "cwd": config.cwd,
        "preopens": sorted(
            ({"host": str(p.host_path), "guest": p.guest_path, "mode": "ro" if p.read_only else "rw"} for p in config.preopens),
            key=lambda p: (p["guest"], p["host"]),
        ),
        "network": None if network is None else {
            "connect": [p.text for p in network.connect],
            "listen": [p.text for p in network.bind],
            "dns": bool(network.dns),
        },
        "tls": None,
    }
    if tls is not None:
        document["tls"] = {
            "min_version": tls.min_version,
            "max_version": tls.max_version,
            "system_roots": bool(tls.use_system_roots),
            "trust": sorted(_fingerprint(c) for c in tls.anchors),
            "client_ca": sorted(_fingerprint(c) for c in tls.client_anchors()),
            "identities": sorted(({"name": i.name, "certificate": _fingerprint(i.chain[0])} for i in tls.identities), key=lambda i: i["name"]),
            "attestation_ca": _fingerprint(tls.attest_ca.certificate) if getattr(tls, "attest_ca", None) else None,
        }
        if tls.client_ca_sets:  # (only when there are: configurations without keep their hash)
            document["tls"]["client_ca_sets"] = {name: sorted(_fingerprint(c) for c in tls.client_anchors(name))
                                                 for name in tls.client_ca_sets}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def authority_hash(keys: Iterable[bytes | Ed25519PublicKey]) -> bytes | None:
    """SHA-512 over the sorted raw public keys that verified the code; None for none."""
    raw = sorted(k if isinstance(k, bytes) else k.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) for k in keys)
    return hashlib.sha512(b"".join(raw)).digest() if raw else None


def claims_for(evidence: CodeEvidence, document: bytes, debug: bool) -> Claims:
    authority = authority_hash(evidence.signers)
    return Claims(
        code_hash=evidence.sha512,
        code_descriptor=evidence.digest.encode(),
        configuration_hash=hashlib.sha512(document).digest(),
        configuration_descriptor=document,
        authority_hash=authority,
        authority_descriptor=json.dumps({"ed25519": [k.hex() for k in sorted(evidence.signers)]}, separators=(",", ":")).encode() if authority else None,
        mode=MODE_DEBUG if debug else MODE_NORMAL,
        profile_name=PROFILE_NAME,
    )


# --- the CA and the certificates it issues ----------------------------------------------------


@dataclass(eq=False)
class AttestationCA:
    """A CA the embedder lends the host to certify guests' keys with their code.

    ``names``: DNS names or IP addresses for the certificates (``--attest-name``);
    ``lifetime``: how long each certificate is valid; ``debug``: the embedder runs guests
    with options that weaken isolation (certificates then say mode=debug).
    """

    certificate: x509.Certificate
    key: Any = field(repr=False)
    names: list[str] = field(default_factory=list)
    lifetime: datetime.timedelta = DEFAULT_LIFETIME
    debug: bool = False
    identity_name: str = DEFAULT_IDENTITY_NAME

    def __post_init__(self) -> None:
        ours = self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        theirs = self.certificate.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if ours != theirs:
            raise ValueError("attestation CA: the private key does not match the certificate")
        try:
            constraints = self.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ValueError("attestation CA: the certificate is not a CA certificate (basicConstraints cA)")
        if self.lifetime <= datetime.timedelta(0):
            raise ValueError("attestation CA: the certificate lifetime must be positive")

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path, **options: Any) -> AttestationCA:
        try:
            cert_pem, key_pem = Path(cert).read_bytes(), Path(key).read_bytes()
        except OSError as e:
            raise ValueError(f"attestation CA: cannot read {e.filename}: {e.strerror}") from None
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
            private = serialization.load_pem_private_key(key_pem, None)
        except (ValueError, TypeError) as e:
            raise ValueError(f"attestation CA: {e}") from None
        return cls(certificate, private, **options)

    def issue(self, evidence: CodeEvidence, document: bytes, now: datetime.datetime | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A fresh key pair and a certificate binding it to ``evidence`` and ``document``."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        claims = claims_for(evidence, document, self.debug)
        common_name = self.names[0] if self.names else f"wasi-tls-host guest {evidence.digest[:23]}"
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + self.lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.certificate.public_key()), critical=False)
            .add_extension(x509.UnrecognizedExtension(DICE_OID, claims.encode()), critical=False)
        )
        if self.names:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in self.names]), critical=False)
        algorithm = None if isinstance(self.key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
        return builder.sign(self.key, algorithm), key


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


# --- verification ------------------------------------------------------------------------


class AttestationError(Exception):
    """A certificate's code-bound claims could not be accepted; subclasses name the claim."""

    claim = "attestation"


class NotAttested(AttestationError):
    claim = "extension"


class UntrustedIssuer(AttestationError):
    claim = "issuer"


class Expired(AttestationError):
    claim = "validity"


class CodeMismatch(AttestationError):
    claim = "code"


class ConfigurationMismatch(AttestationError):
    claim = "configuration"


class AuthorityMismatch(AttestationError):
    claim = "authority"


def load_certificates(value: Any) -> list[x509.Certificate]:
    """Certificates from a certificate, PEM or DER bytes, a path, or a list of those."""
    if isinstance(value, x509.Certificate):
        return [value]
    if isinstance(value, (list, tuple)):
        return [c for item in value for c in load_certificates(item)]
    return tls_config.load_certificates(value)  # PEM or DER, each certificate parsed through


def verify(
    chain: Any,
    ca: Any,
    *,
    expect_code: str | bytes | None = None,
    expect_config: bytes | str | None = None,
    expect_authority: Iterable[bytes | Ed25519PublicKey] | bytes | None = None,
    now: datetime.datetime | None = None,
) -> Claims:
    """Check a certificate chain (leaf first; PEM/DER bytes, paths or certificates) against
    the attestation CA ``ca`` and the expected claims; return the leaf's claims.

    ``expect_code``: ``sha256:<hex>`` (the component's name) or its 64-byte SHA-512.
    ``expect_config``: the configuration document (bytes or str) or its 64-byte SHA-512.
    ``expect_authority``: the Ed25519 keys expected to have signed the code (empty: unsigned)
    or the 64-byte authority hash.
    Each failure raises the AttestationError subclass of its claim, saying expected vs found.
    """
    certs = load_certificates(chain)
    anchors = load_certificates(ca)
    if not certs:
        raise NotAttested("no certificate to verify")
    leaf = certs[0]
    issuer = next((a for a in anchors if _issued_by(leaf, a)), None)
    if issuer is None:
        raise UntrustedIssuer(f"the certificate ({leaf.subject.rfc4514_string()}) was not issued by the attestation CA "
                              f"({', '.join(a.subject.rfc4514_string() for a in anchors)})")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise Expired(f"the certificate is valid from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} to "
                      f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC, not at {now:%Y-%m-%d %H:%M:%S} UTC")
    try:
        claims = claims_of(leaf)
    except ValueError as e:
        raise NotAttested(f"the certificate's DICE extension is malformed: {e}") from None
    if claims is None:
        raise NotAttested("the certificate carries no code claims (no Open DICE extension)")
    if expect_code is not None:
        if isinstance(expect_code, str):
            if claims.digest != expect_code.strip().lower():
                raise CodeMismatch(f"code: expected {expect_code.strip().lower()}, the certificate names {claims.digest}")
        elif claims.code_hash != expect_code:
            raise CodeMismatch(f"code: expected SHA-512 {bytes(expect_code).hex()[:32]}..., the certificate has {claims.code_hash.hex()[:32]}...")
    if claims.configuration_hash is not None and claims.configuration_descriptor is not None:
        if hashlib.sha512(claims.configuration_descriptor).digest() != claims.configuration_hash:
            raise ConfigurationMismatch("configuration: the descriptor does not hash to the stated configuration hash")
    if expect_config is not None:
        wanted = expect_config.encode() if isinstance(expect_config, str) else bytes(expect_config)
        wanted_hash = wanted if len(wanted) == 64 else hashlib.sha512(wanted).digest()
        if claims.configuration_hash != wanted_hash:
            raise ConfigurationMismatch(f"configuration: expected SHA-512 {wanted_hash.hex()[:32]}..., the certificate has "
                                        f"{(claims.configuration_hash or b'').hex()[:32] or 'none'}...")
    if expect_authority is not None:
        wanted_authority = expect_authority if isinstance(expect_authority, bytes) else authority_hash(expect_authority)
        if claims.authority_hash != wanted_authority:
            def show(h: bytes | None) -> str:
                return "none (unsigned)" if h is None else h.hex()[:32] + "..."
            raise AuthorityMismatch(f"authority: expected {show(wanted_authority)}, the certificate has {show(claims.authority_hash)}")
    return claims


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def fetch_chain(address: str, timeout: float = 10.0, server_name: str | None = None) -> list[x509.Certificate]:
    """The certificate chain a TLS server at ``HOST:PORT`` presents, unverified (for
    inspecting, and for ``verify``, which checks it against the attestation CA). Python
    before 3.13 exposes only the leaf of an unverified chain, which is what ``verify``
    needs."""
    import socket
    import ssl

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    host = host.strip("[]")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # looking, not trusting: verify() does the checking
    try:
        ipaddress.ip_address(server_name or host)
        sni = None
    except ValueError:
        sni = server_name or host
    with socket.create_connection((host, int(port)), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            chain = getattr(tls, "get_unverified_chain", lambda: None)()
            if chain:
                return [x509.load_der_x509_certificate(c if isinstance(c, bytes) else c.public_bytes(ssl.ENCODING_DER)) for c in chain]
            der = tls.getpeercert(binary_form=True)
    return [x509.load_der_x509_certificate(der)] if der else []


def parse_lifetime(text: str) -> datetime.timedelta:
    """``24h``, ``90m``, ``3600s`` or a number of hours."""
    units = {"h": 3600, "m": 60, "s": 1, "d": 86400}
    value = text.strip().lower()
    scale = units.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 3600)
    except ValueError:
        raise ValueError(f"a lifetime is like 24h, 90m or 3600s, not {text!r}") from None
    if not 0 < seconds < float("inf"):  # also refuses nan
        raise ValueError(f"a lifetime must be a positive, finite time, not {text!r}")
    try:
        return datetime.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"a lifetime of {text!r} is too long") from None
