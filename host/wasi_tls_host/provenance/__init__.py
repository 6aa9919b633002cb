"""Provenance of code: content digests and pins, module signatures, content-addressed
module stores. Everything here runs before a component is compiled."""

from .digest import DigestMismatch, ProvenanceError, check_digest, digest, is_digest, parse_digest
from .policy import CodeEvidence, CodePolicy
from .signatures import SignatureError

__all__ = [
    "CodeEvidence", "CodePolicy", "DigestMismatch", "ProvenanceError", "SignatureError",
    "check_digest", "digest", "is_digest", "parse_digest",
]
