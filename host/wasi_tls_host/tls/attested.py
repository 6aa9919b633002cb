"""Code-bound identities as policy (issue 10), with no interface of their own: the
identity of one guest instance, the claims a certificate states, and the check that a
peer shows the code a guest expects. ``code_identity.py`` puts them into the TLS
interfaces; handshakes run ``peer_code_check`` before they count as established
(transport.py).
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

from cryptography import x509

from .. import attestation
from ..provenance import CodeEvidence
from ..provenance.dice import MODE_DEBUG, claims_of
from ..runtime.store import StoreState
from .config import TlsConfig, load_certificates
from .identities import PrivateIdentity, PublicIdentity


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
