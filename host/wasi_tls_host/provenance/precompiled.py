"""Pre-compiled artifacts made elsewhere, loaded only when a trusted key vouches for them.

Loading a compiled artifact runs native code wasmtime does not re-check, so an artifact the
host did not compile itself is used only with a statement signed by a key the embedder
trusts for this purpose (``--trust-compiled PUB.pem``). The statement binds the component's
digest, the wasmtime version, the engine's configuration and the platform, and the
artifact's own SHA-256:

    {"artifact":"sha256:...","component":"sha256:...","engine":"...","platform":"linux-x86_64",
     "purpose":"wasi-tls-host compiled artifact v1","wasmtime":"49.0.0"}

(canonical JSON), signed with Ed25519; the signature file is JSON holding the statement,
the base64 signature and the signer's raw public key (hex). Anything that does not match is
not loaded: the host compiles the component itself.
"""

from __future__ import annotations

import base64
import json
import platform
import sys
from dataclasses import dataclass
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .digest import ProvenanceError, digest
from .signatures import key_fingerprint, raw_public_key

PURPOSE = "wasi-tls-host compiled artifact v1"


class ArtifactRefused(ProvenanceError):
    """A pre-compiled artifact was not vouched for (the host compiles the component)."""


def platform_name() -> str:
    return f"{sys.platform}-{platform.machine()}"


@dataclass(frozen=True)
class Target:
    """What an artifact was compiled for: it must equal the loading host's."""

    wasmtime: str
    engine: str = "default"
    platform: str = ""

    def __post_init__(self) -> None:
        if not self.platform:
            object.__setattr__(self, "platform", platform_name())


def statement(component: str, artifact: bytes, target: Target) -> bytes:
    """``component``: the component's digest (``sha256:<hex>``)."""
    return json.dumps({
        "purpose": PURPOSE,
        "component": component,
        "artifact": digest(artifact),
        "wasmtime": target.wasmtime,
        "engine": target.engine,
        "platform": target.platform,
    }, sort_keys=True, separators=(",", ":")).encode()


def sign_artifact(wasm: bytes, artifact: bytes, target: Target, key: Ed25519PrivateKey) -> bytes:
    """The signature file for ``artifact`` (compiled from ``wasm`` for ``target``)."""
    body = statement(digest(wasm), artifact, target)
    return json.dumps({
        "statement": body.decode(),
        "signature": base64.b64encode(key.sign(body)).decode(),
        "public_key": raw_public_key(key.public_key()).hex(),
    }, indent=1).encode() + b"\n"


def verify_artifact(component: str, artifact: bytes, signature_file: bytes, target: Target, trusted: Iterable[Ed25519PublicKey]) -> Ed25519PublicKey:
    """The trusted key that vouches for ``artifact`` compiled from the component whose
    digest is ``component`` (the loader has it already); ArtifactRefused saying why otherwise."""
    try:
        parsed = json.loads(signature_file)
        body = parsed["statement"].encode()
        signature = base64.b64decode(parsed["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactRefused(f"the artifact's signature file is malformed: {e}") from None
    trusted = list(trusted)
    signer = next((k for k in trusted if _valid(k, signature, body)), None)
    if signer is None:
        names = ", ".join(key_fingerprint(k) for k in trusted) or "no key"
        raise ArtifactRefused(f"the artifact is not signed by a key trusted for compiled code ({names})")
    expected = json.loads(statement(component, artifact, target))
    stated = json.loads(body)
    for field in ("purpose", "component", "artifact", "wasmtime", "engine", "platform"):
        if stated.get(field) != expected[field]:
            raise ArtifactRefused(f"the artifact was made for {field} {stated.get(field)!r}, this host needs {expected[field]!r}")
    return signer


def _valid(key: Ed25519PublicKey, signature: bytes, body: bytes) -> bool:
    try:
        key.verify(signature, body)
    except InvalidSignature:
        return False
    return True


def artifact_digest(artifact: bytes) -> str:
    return digest(artifact)
