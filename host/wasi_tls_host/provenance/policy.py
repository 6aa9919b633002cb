"""What an embedder requires of the code it runs, and what the host established about it.

``CodePolicy`` holds the pins (digests, any of them) and the trusted signers (any of them,
or all); ``CodePolicy.check`` runs before a component is compiled and returns
``CodeEvidence``: the component's digests and the keys that verified its signature, which a
code-bound identity (``wasi_tls_host.attestation``) then certifies.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .digest import DigestMismatch, parse_digest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


@dataclass(frozen=True)
class CodeEvidence:
    """Facts about one component's bytes, established before it was compiled."""

    digest: str                         # "sha256:<hex>" of the bytes as loaded
    sha512: bytes                       # SHA-512 of the same bytes (the DICE code hash)
    signers: tuple[bytes, ...] = ()     # raw Ed25519 public keys that verified its signature

    @classmethod
    def of(cls, wasm: bytes, signers: tuple[bytes, ...] = ()) -> CodeEvidence:
        # Every load hashes the whole component twice (about 16 + 25 ms for an 18 MB guest):
        # hashlib releases the GIL on large inputs, so SHA-512 runs on another core meanwhile.
        sha512: list[bytes] = []
        worker = threading.Thread(target=lambda: sha512.append(hashlib.sha512(wasm).digest()), name="sha512")
        worker.start()
        sha256 = hashlib.sha256(wasm).hexdigest()
        worker.join()
        return cls("sha256:" + sha256, sha512[0], tuple(sorted(signers)))


@dataclass
class CodePolicy:
    """Pins and signers a component must satisfy before the host compiles it.

    ``digests``: the component must be one of these (``sha256:<hex>``); empty: any.
    ``signers``: Ed25519 keys; one valid signature over the whole component by any of them
    is required (by every one of them with ``require_all_signers``); empty: none required.
    ``signature``: a detached signature to use instead of an embedded one.
    """

    digests: list[str] = field(default_factory=list)
    signers: list[Ed25519PublicKey] = field(default_factory=list)
    require_all_signers: bool = False
    signature: bytes | None = None

    def __post_init__(self) -> None:
        self.digests = [parse_digest(d) for d in self.digests]

    @property
    def empty(self) -> bool:
        return not self.digests and not self.signers

    def check(self, wasm: bytes) -> CodeEvidence:
        """Raise ProvenanceError (DigestMismatch, SignatureError) unless ``wasm`` satisfies
        this policy; return what was established."""
        evidence = CodeEvidence.of(wasm)  # its sha256 is the digest the pins are checked against
        if self.digests and evidence.digest not in self.digests:
            raise DigestMismatch(evidence.digest, self.digests)
        if not self.signers:
            return evidence
        from . import signatures  # cryptography: loaded only when signers are required (start-up time)

        verified = signatures.verify(wasm, self.signers, self.signature, require_all=self.require_all_signers)
        return replace(evidence, signers=tuple(sorted(signatures.raw_public_key(k) for k in verified.signers)))
