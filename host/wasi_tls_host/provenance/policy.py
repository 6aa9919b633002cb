"""What an embedder requires of the code it runs, and what the host established about it.

``CodePolicy`` holds the pins (digests, any of them) and the trusted signers (any of them,
or all); ``CodePolicy.check`` runs before a component is compiled and returns
``CodeEvidence``: the component's digests and the keys that verified its signature, which a
code-bound identity (``wasi_tls_host.attestation``) then certifies.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.records import FrozenFields, ValueFields
from .digest import DigestMismatch, ProvenanceError, parse_digest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class CodeEvidence(FrozenFields):
    """Facts about one component's bytes, established before it was compiled.

    The SHA-512 (the DICE code hash) is only needed by a code-bound identity, and hashing an
    18 MB guest costs about 25 ms of every start: for a component loaded from a file it is
    taken when first asked, from the file read again, whose SHA-256 must still be ``digest``
    (ProvenanceError otherwise), so it is always the hash of the code that was loaded."""

    _fields = ("digest", "code_hash", "signers", "path")

    def __init__(self, digest: str, code_hash: bytes | None, signers: tuple[bytes, ...] = (), path: Path | None = None) -> None:
        object.__setattr__(self, "digest", digest)  # "sha256:<hex>" of the bytes as loaded
        object.__setattr__(self, "code_hash", code_hash)  # SHA-512 of the same bytes, or None: taken from ``path`` when asked
        object.__setattr__(self, "signers", signers)  # raw Ed25519 public keys that verified its signature
        object.__setattr__(self, "path", path)  # where the bytes were read from (not compared)

    def _compared(self) -> tuple[Any, ...]:
        return self.digest, self.code_hash, self.signers

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._compared() == other._compared()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._compared())

    @classmethod
    def of(cls, wasm: bytes, signers: tuple[bytes, ...] = (), path: Path | None = None) -> CodeEvidence:
        """``path``: the file ``wasm`` was read from; the SHA-512 waits until it is asked for."""
        if path is not None:
            return cls("sha256:" + hashlib.sha256(wasm).hexdigest(), None, tuple(sorted(signers)), path)
        # Both hashes of the whole component: hashlib releases the GIL on large inputs, so
        # SHA-512 runs on another core meanwhile.
        sha512: list[bytes] = []
        worker = threading.Thread(target=lambda: sha512.append(hashlib.sha512(wasm).digest()), name="sha512")
        worker.start()
        sha256 = hashlib.sha256(wasm).hexdigest()
        worker.join()
        return cls("sha256:" + sha256, sha512[0], tuple(sorted(signers)))

    @property
    def sha512(self) -> bytes:
        """SHA-512 of the component's bytes (the DICE code hash)."""
        if self.code_hash is None:
            assert self.path is not None
            try:
                wasm = self.path.read_bytes()
            except OSError as e:
                raise ProvenanceError(f"{self.path}: cannot read the component again for its code hash: {e.strerror}") from None
            if "sha256:" + hashlib.sha256(wasm).hexdigest() != self.digest:
                raise ProvenanceError(f"{self.path} changed since it was loaded (its code hash must be of the code that runs): load it again")
            object.__setattr__(self, "code_hash", hashlib.sha512(wasm).digest())
        assert self.code_hash is not None
        return self.code_hash


class CodePolicy(ValueFields):
    """Pins and signers a component must satisfy before the host compiles it.

    ``digests``: the component must be one of these (``sha256:<hex>``); empty: any.
    ``signers``: Ed25519 keys; one valid signature over the whole component by any of them
    is required (by every one of them with ``require_all_signers``); empty: none required.
    ``signature``: a detached signature to use instead of an embedded one.
    """

    _fields = ("digests", "signers", "require_all_signers", "signature")

    def __init__(self, digests: list[str] | None = None, signers: list[Ed25519PublicKey] | None = None, require_all_signers: bool = False,
                 signature: bytes | None = None) -> None:
        self.digests = [parse_digest(d) for d in digests or ()]
        self.signers: list[Ed25519PublicKey] = [] if signers is None else signers
        self.require_all_signers = require_all_signers
        self.signature = signature

    @property
    def empty(self) -> bool:
        return not self.digests and not self.signers

    def check(self, wasm: bytes, path: Path | None = None) -> CodeEvidence:
        """Raise ProvenanceError (DigestMismatch, SignatureError) unless ``wasm`` satisfies
        this policy; return what was established (``path``: see ``CodeEvidence.of``)."""
        evidence = CodeEvidence.of(wasm, path=path)  # its sha256 is the digest the pins are checked against
        if self.digests and evidence.digest not in self.digests:
            raise DigestMismatch(evidence.digest, self.digests)
        if not self.signers:
            return evidence
        from . import signatures  # cryptography: loaded only when signers are required (start-up time)

        verified = signatures.verify(wasm, self.signers, self.signature, require_all=self.require_all_signers)
        return evidence._replace(signers=tuple(sorted(signatures.raw_public_key(k) for k in verified.signers)))
