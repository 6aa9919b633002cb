"""Provenance of code: content digests and pins, module signatures, content-addressed
module stores. Everything here runs before a component is compiled.

``signatures`` (cryptography) loads on first use: a run that checks no signature does not
pay for it at start-up."""

from __future__ import annotations

from typing import Any

from .digest import DigestMismatch, ProvenanceError, check_digest, digest, is_digest, parse_digest
from .policy import CodeEvidence, CodePolicy


def __getattr__(name: str) -> Any:
    if name == "SignatureError":
        from .signatures import SignatureError

        return SignatureError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CodeEvidence", "CodePolicy", "DigestMismatch", "ProvenanceError", "SignatureError",
    "check_digest", "digest", "is_digest", "parse_digest",
]
