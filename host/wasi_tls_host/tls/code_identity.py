"""Code-bound identities in the TLS interfaces (wasi-tls-host:tls, issue 10).

- ``attested-identity()``: the instance's attested identity (attested.py), one more private
  identity (also an entry of ``preopened-identities()``), so every server and client path
  that takes a private identity takes it, and its key stays in the host like any other.
- ``public-identity.code-identity()``: the Open DICE claims of a certificate, as stated.
- ``expect-peer-code(digest)`` on a client hello (the server's code) and on a server hello
  (the client identity's code): the handshake checks the peer's leaf before it counts as
  established (attested.peer_code_check); if it was not issued by an attestation CA this
  guest's embedder trusts for that digest, the handshake ends with ``code-mismatch``.

This module adds functions to the interfaces of identities.py, client.py and server.py and
is imported by tls/__init__.py before they are linked.
"""

from __future__ import annotations

from typing import Any

from ..provenance import parse_digest
from ..runtime.store import StoreState
from .attested import code_identity_record, instance_attestation
from .client import OutgoingClientHello, client_iface
from .connection import tls_error
from .identities import PrivateIdentityHandle, PublicIdentity, identities_iface
from .server import OutgoingServerHello, server_iface


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
