"""Code-bound identities in the TLS interfaces (wasi-tls-host:tls, issue 10).

- ``InstanceAttestation``: one guest instance's attested identity, issued by the embedder's
  attestation CA on first use; it is one more private identity (``attested-identity()``,
  and an entry of ``preopened-identities()``), so every server and client path that takes
  a private identity takes it, and its key stays in the host like any other.
- ``public-identity.code-identity()``: the Open DICE claims of a certificate, as stated.
- ``expect-peer-code(digest)`` on a client hello (the server's code) and on a server hello
  (the client identity's code): after the handshake the peer's leaf must have been issued
  by an attestation CA this guest's embedder trusts and must name that digest; otherwise
  the handshake ends with ``code-mismatch``.

This module adds functions to the interfaces of identities.py, client.py and server.py and
is imported by tls/__init__.py before they are linked.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

from cryptography import x509

from .. import attestation
from ..provenance import CodeEvidence, parse_digest
from ..provenance.dice import MODE_DEBUG, claims_of
from ..runtime.store import StoreState
from .client import OutgoingClientHello, client_iface
from .config import TlsConfig, load_certificates, tls_config
from .connection import peer_identity, tls_error
from .engine import TlsFailure
from .identities import PrivateIdentity, PrivateIdentityHandle, PublicIdentity, identities_iface
from .server import OutgoingServerHello, server_iface
from .states import HandshakeState
from .transport import PendingHandshake

CODE_MISMATCH = "code-mismatch"


class InstanceAttestation:
    """The code-bound identity of one guest instance: a fresh key made on first use, kept
    only here and in OpenSSL contexts, certified with this instance's code and grants."""

    def __init__(self, ca: attestation.AttestationCA, evidence: CodeEvidence, config: Any) -> None:
        self.ca = ca
        self.evidence = evidence
        self.document = attestation.configuration_document(config)
        self.tls = config.tls
        self._identity: PrivateIdentity | None = None

    def identity(self) -> PrivateIdentity:
        """The current identity; a fresh key and certificate once the last one is in the
        final tenth of its lifetime (an instance may outlive a short-lived certificate;
        handles the guest already holds keep the identity they named)."""
        if self._identity is not None:
            remaining = self._identity.chain[0].not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
            if remaining < self.ca.lifetime / 10:
                self._identity = None
        if self._identity is None:
            cert, key = self.ca.issue(self.evidence, self.document)
            self._identity = PrivateIdentity(self.ca.identity_name, [cert], key)
        return self._identity


def instance_attestation(cx: StoreState) -> InstanceAttestation | None:
    found = getattr(cx.wasi, "attestation", None)
    return found if isinstance(found, InstanceAttestation) else None


def attested_identities(cx: StoreState) -> list[PrivateIdentity]:
    """The instance's attested identity, if the embedder preopened an attestation CA."""
    found = instance_attestation(cx)
    return [found.identity()] if found is not None else []


def attestation_anchors(config: TlsConfig) -> list[x509.Certificate]:
    """CAs whose code claims this guest may rely on: ``attest_trust`` and the guest's own
    attestation CA."""
    anchors = [c for a in config.attest_trust for c in load_certificates(a)]  # certificates already (TlsConfig)
    if config.attest_ca is not None:
        anchors.append(config.attest_ca.certificate)
    return anchors


def code_identity_record(identity: PublicIdentity) -> dict[str, Any] | None:
    try:
        claims = claims_of(identity.leaf)
    except ValueError:
        return None
    if claims is None:
        return None
    return {
        "digest": claims.digest or "",
        "code_hash": claims.code_hash,
        "configuration_hash": claims.configuration_hash or b"",
        "configuration": (claims.configuration_descriptor or b"").decode("utf-8", "replace"),
        "authority_hash": claims.authority_hash or b"",
        "debug": claims.mode == MODE_DEBUG,
    }


def peer_code_problem(identity: PublicIdentity | None, expected: str, config: TlsConfig, peer: str) -> str | None:
    """Why the peer's certificate does not show the ``expected`` code (not attested by an
    attestation CA this guest's embedder trusts, or for other code), or None if it does."""
    anchors = attestation_anchors(config)
    if identity is None:
        return f"the {peer} presented no certificate, so its code cannot be checked"
    if not anchors:
        return "no attestation CA is trusted for code claims (the embedder gives attest_trust)"
    try:
        attestation.verify(identity.chain, anchors, expect_code=expected)
    except attestation.AttestationError as e:
        return f"the {peer}'s code identity was refused: {e}"
    return None


def peer_code_check(expected: str | None, config: TlsConfig, peer: str) -> Callable[[PublicIdentity | None], str | None] | None:
    """The check a handshake runs before it counts as established (None: nothing expected)."""
    if expected is None:
        return None
    return lambda identity: peer_code_problem(identity, expected, config, peer)


def enforce_peer_code(handshake: PendingHandshake, expected: str | None, config: TlsConfig, peer: str) -> None:
    """Once the handshake is established, end it with ``code-mismatch`` unless the peer's
    certificate is attested by a trusted attestation CA for the ``expected`` digest."""
    if expected is None or handshake.state is not HandshakeState.ESTABLISHED or handshake.code_checked:
        return
    handshake.code_checked = True
    problem = peer_code_problem(peer_identity(handshake.transport), expected, config, peer)
    if problem is not None:
        handshake.fail(TlsFailure(CODE_MISMATCH, problem))


def _expected(digest: str) -> str:
    try:
        return parse_digest(digest)
    except ValueError as e:
        raise tls_error("invalid-argument", str(e)) from None


@identities_iface.func("attested-identity")
def attested_identity(cx: StoreState) -> PrivateIdentityHandle:
    found = instance_attestation(cx)
    if found is None:
        raise tls_error("access-denied", "no attestation CA was preopened for this guest (the embedder gives --attest-ca or TlsConfig(attest_ca=...))")
    return PrivateIdentityHandle(found.identity())


@identities_iface.func("[method]public-identity.code-identity")
def public_identity_code_identity(cx: StoreState, this: PublicIdentity) -> dict[str, Any] | None:
    return code_identity_record(this)


@client_iface.func("[method]outgoing-client-hello.expect-peer-code")
def outgoing_client_hello_expect_peer_code(cx: StoreState, this: OutgoingClientHello, digest: str) -> None:
    this.expected_code = _expected(digest)


@server_iface.func("[method]outgoing-server-hello.expect-peer-code")
def outgoing_server_hello_expect_peer_code(cx: StoreState, this: OutgoingServerHello, digest: str) -> None:
    this.expected_code = _expected(digest)
    if this.client_auth is None:
        this.client_auth = "required"  # a client's code can only be checked on its certificate


def check_server(cx: StoreState, handshake: PendingHandshake) -> None:
    """Client side: the server's code, if the guest asked (called before results are given)."""
    enforce_peer_code(handshake, handshake.expected_code, tls_config(cx), "server")


def check_client(cx: StoreState, handshake: PendingHandshake) -> None:
    """Server side: the client identity's code, if the guest asked."""
    enforce_peer_code(handshake, handshake.expected_code, tls_config(cx), "client")
