"""``wasi-tls-host:tls/client``: a TLS client with the same state-machine shape as the server
side, adding what the upstream draft lacks: ALPN, version bounds, a client identity (mutual
TLS), the server's chain and the host's verdict on it.

    outgoing-client-hello(server-name) --connect(input, output)--> incoming-server-hello
    incoming-server-hello.finish() --> (connection, input-stream, output-stream)

Verification is the host's: a chain that does not verify ends the handshake (the guest can
still read the chain and the reason); the guest cannot turn verification off.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL

from ..runtime.binding import Interface
from ..runtime.resources import HostResource
from ..runtime.store import StoreState
from ..wasi.io import CallbackPollable, InputStream, OutputStream, Pollable
from .ciphers import suite_number
from .config import TlsConfig, openssl_version, tls_config
from .connection import answer, failure_error, finish_established, limit_error, tls_error
from .engine import TlsFailure
from .identities import PrivateIdentity, PrivateIdentityHandle, PublicIdentity
from .limits import LimitExceeded, usage_of
from .sessions import client_engine
from .states import SERVER_HELLO
from .attested import peer_code_check
from .p2 import PendingHandshake, WasiIoPort, WasiIoTransport
from .transport import HandshakeDeadline


client_iface = Interface("wasi-tls-host:tls/client@0.1.0")

def _check_version(value: int) -> int:
    try:
        return openssl_version(value)
    except ValueError as e:
        raise tls_error("invalid-argument", str(e)) from None


class OutgoingClientHello(HostResource):
    def __init__(self, server_name: str) -> None:
        self.server_name = server_name
        self.expected_code: str | None = None  # set by expect-peer-code (tls/code_identity.py)
        self.alpn_ids: list[bytes] = []
        self.min_version: int | None = None
        self.max_version: int | None = None
        self.identity: PrivateIdentity | None = None


def client_versions(config: TlsConfig, hello: OutgoingClientHello) -> tuple[int, int]:
    """This hello's version bounds (OpenSSL constants): the guest can narrow the embedder's
    bounds, never widen them."""
    floor, ceiling = config.version_bounds()
    low = max(floor, openssl_version(hello.min_version)) if hello.min_version else floor
    high = min(ceiling, openssl_version(hello.max_version)) if hello.max_version else ceiling
    if low > high:
        raise tls_error("protocol-version", "the requested TLS versions are outside what the embedder allows")
    return low, high


class IncomingServerHello(PendingHandshake):
    """The handshake as seen by the client, until ``finish`` hands out the streams."""

    machine = SERVER_HELLO


client_iface.resource("outgoing-client-hello", OutgoingClientHello)
client_iface.resource("incoming-server-hello", IncomingServerHello)


@client_iface.func("[constructor]outgoing-client-hello")
def outgoing_client_hello_new(cx: StoreState, server_name: str) -> OutgoingClientHello:
    return OutgoingClientHello(server_name)


@client_iface.func("[method]outgoing-client-hello.set-alpn-ids")
def outgoing_client_hello_set_alpn_ids(cx: StoreState, this: OutgoingClientHello, ids: list[bytes]) -> None:
    if any(not 0 < len(i) < 256 for i in ids):
        raise tls_error("invalid-argument", "each ALPN id is 1 to 255 bytes")
    this.alpn_ids = [bytes(i) for i in ids]


@client_iface.func("[method]outgoing-client-hello.set-protocol-versions")
def outgoing_client_hello_set_protocol_versions(cx: StoreState, this: OutgoingClientHello, min: int, max: int) -> None:
    _check_version(min)
    _check_version(max)
    if min > max:
        raise tls_error("invalid-argument", f"minimum version 0x{min:04x} is above the maximum 0x{max:04x}")
    this.min_version, this.max_version = min, max


@client_iface.func("[method]outgoing-client-hello.set-client-identity")
def outgoing_client_hello_set_client_identity(cx: StoreState, this: OutgoingClientHello, identity: PrivateIdentityHandle) -> None:
    this.identity = identity.identity


@client_iface.func("[static]outgoing-client-hello.connect", keeps=("input", "output"))
def outgoing_client_hello_connect(cx: StoreState, this: OutgoingClientHello, input: InputStream, output: OutputStream) -> IncomingServerHello:
    config = tls_config(cx)
    usage = usage_of(cx)
    versions = client_versions(config, this)  # before the connection counts: it may refuse
    port = WasiIoPort(input, output)
    try:
        usage.start(port, config.limits)
    except LimitExceeded as e:
        port.close()
        raise limit_error(e) from None
    try:
        # The identity's whole chain is presented: servers that trust only a root need
        # the intermediates too.
        engine = client_engine(cx, config, this.server_name, input, versions, this.identity)
        if this.alpn_ids:
            engine.conn.set_alpn_protos(this.alpn_ids)
    except TlsFailure as e:
        usage.closed(port)
        port.close()
        raise failure_error(e) from None  # the call failed: input and output are dropped
    hello = IncomingServerHello(WasiIoTransport(engine, port, usage), config.on_handshake, deadline=HandshakeDeadline.start(config.limits),
                                peer_check=peer_code_check(this.expected_code, config, "server"))
    hello.poll()
    return hello


@client_iface.func("[method]incoming-server-hello.subscribe")
def incoming_server_hello_subscribe(cx: StoreState, this: IncomingServerHello) -> Pollable:
    return CallbackPollable(this.poll, this.waits)


@client_iface.func("[method]incoming-server-hello.protocol-version")
def incoming_server_hello_protocol_version(cx: StoreState, this: IncomingServerHello) -> int:
    answer(this, "protocol-version")
    return this.transport.engine.protocol_version()


@client_iface.func("[method]incoming-server-hello.cipher-suite")
def incoming_server_hello_cipher_suite(cx: StoreState, this: IncomingServerHello) -> int:
    answer(this, "cipher-suite")
    return suite_number(this.transport.engine.cipher_name())


@client_iface.func("[method]incoming-server-hello.alpn-id")
def incoming_server_hello_alpn_id(cx: StoreState, this: IncomingServerHello) -> bytes | None:
    answer(this, "alpn-id")
    return this.transport.engine.alpn()


@client_iface.func("[method]incoming-server-hello.server-chain")
def incoming_server_hello_server_chain(cx: StoreState, this: IncomingServerHello) -> list[PublicIdentity]:
    answer(this, "server-chain")
    identity = this.transport.peer
    if identity is None:
        if this.failure is not None:
            raise failure_error(this.failure)  # no chain to show: say why
        return []
    return [PublicIdentity([cert]) for cert in identity.chain]


@client_iface.func("[method]incoming-server-hello.verification")
def incoming_server_hello_verification(cx: StoreState, this: IncomingServerHello) -> None:
    answer(this, "verification")


@client_iface.func("[static]incoming-server-hello.finish")
def incoming_server_hello_finish(cx: StoreState, this: IncomingServerHello) -> Any:
    return finish_established(this)


INTERFACES = (client_iface,)
