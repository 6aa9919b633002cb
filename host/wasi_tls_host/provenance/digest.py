"""Content digests of WebAssembly binaries: the ``sha256:<hex>`` names pins and stores use."""

from __future__ import annotations

import hashlib
import re

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class ProvenanceError(Exception):
    """A component was refused because of what it is (digest, signature) or where it came
    from; the message is one line that names what was expected and what was found."""


class DigestMismatch(ProvenanceError):
    def __init__(self, found: str, expected: list[str], what: str = "component") -> None:
        self.found, self.expected = found, list(expected)
        wanted = " or ".join(self.expected)
        super().__init__(f"refused: the {what} is {found}, not the required {wanted}")


def digest(wasm: bytes) -> str:
    """The content name of a binary: ``sha256:`` and 64 lowercase hex digits."""
    return "sha256:" + hashlib.sha256(wasm).hexdigest()


def parse_digest(text: str) -> str:
    """Normalise a digest given by a person (``sha256:<hex>``, any case); raise ValueError
    for anything else."""
    candidate = text.strip().lower()
    if not _DIGEST.fullmatch(candidate):
        raise ValueError(f"a digest is sha256: followed by 64 hex digits, not {text!r}")
    return candidate


def is_digest(text: str) -> bool:
    return _DIGEST.fullmatch(text.strip().lower()) is not None


def check_digest(wasm: bytes, allowed: list[str], what: str = "component") -> str:
    """Return the binary's digest if it is one of ``allowed`` (any of them); raise
    DigestMismatch naming both otherwise. An empty ``allowed`` allows everything."""
    found = digest(wasm)
    if allowed and found not in {parse_digest(d) for d in allowed}:
        raise DigestMismatch(found, [parse_digest(d) for d in allowed], what)
    return found
