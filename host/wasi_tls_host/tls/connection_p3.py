"""``wasi-tls-host:tls@0.2.0`` types, identities and connection: this project's TLS for
WASI 0.3 guests (wit/deps/tls-host-0.2.0). Identities are served by the 0.1.0 functions
(the interface did not change but for a 0.3 clock type of the same shape); a connection is a
``StreamTransport`` (p3.py) whose plaintext ends the guest asks for.
"""

from __future__ import annotations

from typing import Any

from ..runtime.binding import Interface
from ..runtime.resources import HostResource
from ..runtime.store import StoreState
from ..runtime.streams import Future, Stream, StreamReader
from ..runtime.values import Err
from . import code_identity  # noqa: F401  (completes the 0.1.0 identities interface this one shares)
from .connection import connection_iface, tls_error
from .identities import IdentityStore, PrivateIdentity, PrivateIdentityHandle, PublicIdentity, TrustStore, identities_iface
from .attested import attested_identities
from .config import tls_config
from .p3 import PlaintextIn, PlaintextOut, StreamTransport, ended_stream, resolved_future

types_iface = Interface("wasi-tls-host:tls/types@0.2.0")  # types only: nothing to serve
identities_iface_p3 = Interface("wasi-tls-host:tls/identities@0.2.0")
connection_iface_p3 = Interface("wasi-tls-host:tls/connection@0.2.0")

identities_iface_p3.resource("public-identity", PublicIdentity)
identities_iface_p3.resource("private-identity", PrivateIdentityHandle)
identities_iface_p3.resource("identity-store", IdentityStore)
identities_iface_p3.resource("trust-store", TrustStore)

_ORIGIN = "wasi-tls-host:tls/connection@0.2.0#connection"


def preopened_identity(cx: StoreState, name: str) -> PrivateIdentity:
    """The private identity preopened for this guest under ``name`` (the attested one is
    ``attested``); ``access-denied`` naming those there are, if none."""
    identities = list(tls_config(cx).identities)
    for identity in identities:
        if identity.name == name:
            return identity  # type: ignore[no-any-return]
    identities += attested_identities(cx)
    for identity in identities:
        if identity.name == name:
            return identity  # type: ignore[no-any-return]
    have = ", ".join(repr(i.name) for i in identities) or "none"
    raise tls_error("access-denied", f"no identity named {name!r} was preopened for this guest (it has: {have}; "
                                     "the embedder gives them with --identity NAME=CERT,KEY or TlsConfig.identities)")


class ConnectionP3(HostResource):
    """An established connection; the bytes flow through the ends ``receive`` and ``send``
    hand out. Dropping it lets go of the directions the guest never asked for: reading
    stops, sending ends with close_notify; the others live on in their streams."""

    def __init__(self, transport: StreamTransport) -> None:
        self.transport = transport
        self.peer = transport.peer
        self.receiver: PlaintextOut | None = None
        self.sender: PlaintextIn | None = None

    def drop(self) -> None:
        self.transport.let_go(receiving=self.receiver is None, sending=self.sender is None)


connection_iface_p3.resource("connection", ConnectionP3)
connection_iface_p3.share(connection_iface, "[method]connection.protocol-version", "[method]connection.cipher-suite",
                          "[method]connection.alpn-id", "[method]connection.server-name", "[method]connection.peer-identity",
                          "[method]connection.resumed")


def _again(what: str) -> dict[str, Any]:
    return {"code": "invalid-state", "message": f"connection.{what} was already called (each connection has one {what} stream)"}


@connection_iface_p3.func("[method]connection.receive")
def connection_receive(cx: StoreState, this: ConnectionP3) -> tuple[Stream, Future]:
    if this.receiver is not None:
        return ended_stream(), resolved_future(Err(_again("receive")))
    this.receiver = PlaintextOut(this.transport.wake, f"{_ORIGIN}.receive (plaintext)")
    this.transport.attach_receiver(this.receiver)
    return this.receiver.stream, this.receiver.future


@connection_iface_p3.func("[method]connection.send")
def connection_send(cx: StoreState, this: ConnectionP3, data: Stream) -> Future:
    if this.sender is not None:
        StreamReader(data, is_bytes=True).close()
        return resolved_future(Err(_again("send")))
    this.sender = PlaintextIn(data, f"{_ORIGIN}.send (how sending ended)")
    this.transport.attach_sender(this.sender)
    return this.sender.future


identities_iface_p3.share(identities_iface, *[name for name in identities_iface.funcs])

INTERFACES = (types_iface, identities_iface_p3, connection_iface_p3)
