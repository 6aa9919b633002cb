"""``wasi-tls-host:tls/client@0.2.0``: TLS clients for WASI 0.3 guests, the 0.1.0 design on
native streams (see wit/deps/tls-host-0.2.0/client.wit):

    outgoing-client-hello(server-name).connect(ciphertext) -> (incoming-server-hello, outgoing ciphertext)
    incoming-server-hello.finish() -> connection                (async: waits for the handshake)

The hello's setters are 0.1.0's; the client identity is named (``preopened_identity``). The
handshake runs in a ``StreamTransport``; the server's code is checked (``expect-peer-code``)
before it counts as established.
"""

from __future__ import annotations

from typing import Any

from ..runtime.binding import Interface
from ..runtime.scheduler import Event as Signal
from ..runtime.store import StoreState
from ..runtime.streams import Stream
from .client import OutgoingClientHello, client_iface, client_versions
from .attested import peer_code_check
from .config import tls_config
from .connection import failure_error, failure_record, limit_error
from .connection_p3 import ConnectionP3, preopened_identity
from .ciphers import suite_number
from .engine import TlsFailure
from .identities import PublicIdentity
from .limits import LimitExceeded, usage_of
from .server_p3 import ExchangeP3
from .sessions import client_engine
from .states import SERVER_HELLO
from .p3 import StreamPort, StreamTransport
from .transport import HandshakeDeadline

client_iface_p3 = Interface("wasi-tls-host:tls/client@0.2.0")

_ORIGIN = "wasi-tls-host:tls/client@0.2.0#outgoing-client-hello.connect"


class IncomingServerHelloP3(ExchangeP3):
    """The handshake as the client sees it, until finish hands out the connection (the
    same life as a server's exchange; another state table, ``SERVER_HELLO``)."""


client_iface_p3.resource("outgoing-client-hello", OutgoingClientHello)
client_iface_p3.resource("incoming-server-hello", IncomingServerHelloP3)


@client_iface_p3.func("[constructor]outgoing-client-hello")
def outgoing_client_hello_new(cx: StoreState, server_name: str) -> OutgoingClientHello:
    return OutgoingClientHello(server_name)


client_iface_p3.share(client_iface, "[method]outgoing-client-hello.set-alpn-ids", "[method]outgoing-client-hello.set-protocol-versions",
                      "[method]outgoing-client-hello.expect-peer-code")


@client_iface_p3.func("[method]outgoing-client-hello.set-client-identity")
def outgoing_client_hello_set_client_identity(cx: StoreState, this: OutgoingClientHello, identity: str) -> None:
    this.identity = preopened_identity(cx, identity)


@client_iface_p3.func("[static]outgoing-client-hello.connect")
def outgoing_client_hello_connect(cx: StoreState, this: OutgoingClientHello, ciphertext: Stream) -> tuple[IncomingServerHelloP3, Stream]:
    config = tls_config(cx)
    port = StreamPort(Signal(), f"{_ORIGIN} (ciphertext)", ciphertext)
    try:
        versions = client_versions(config, this)  # before the connection counts: it may refuse
        usage = usage_of(cx)
        try:
            usage.start(port, config.limits)
        except LimitExceeded as e:
            raise limit_error(e) from None
        try:
            engine = client_engine(cx, config, this.server_name, port, versions, this.identity)
            if this.alpn_ids:
                engine.conn.set_alpn_protos(this.alpn_ids)
        except TlsFailure as e:
            usage.closed(port)
            raise failure_error(e) from None
    except BaseException:
        port.close()  # the call failed: the stream given is let go, the outgoing one ends
        raise
    transport = StreamTransport(engine, port, error_value=failure_record, usage=usage)
    transport.needs_input = False  # a client speaks first: its first step reads no socket
    transport.begin_handshake(SERVER_HELLO, deadline=HandshakeDeadline.start(config.limits), on_handshake=config.on_handshake,
                              peer_check=peer_code_check(this.expected_code, config, "server"))
    transport.start(cx.scheduler)
    return IncomingServerHelloP3(transport), port.outgoing


def _server_hello_getter(call: str, value: Any) -> Any:
    async def get(cx: StoreState, this: IncomingServerHelloP3) -> Any:
        await this.require(call)
        return value(this.transport)

    get.__name__ = get.__qualname__ = f"incoming_server_hello_{call.replace('-', '_')}"
    return get


def _server_chain(transport: StreamTransport) -> list[PublicIdentity]:
    """What the server sent, whether or not it verified (no chain: why there is none)."""
    peer = transport.peer
    if peer is None and transport.failure is not None:
        raise failure_error(transport.failure)
    return [PublicIdentity([cert]) for cert in peer.chain] if peer is not None else []  # one handle per certificate


for _call, _value in (
    ("protocol-version", lambda t: t.engine.protocol_version()),
    ("cipher-suite", lambda t: suite_number(t.engine.cipher_name())),
    ("alpn-id", lambda t: t.engine.alpn()),
    ("server-chain", _server_chain),
    ("verification", lambda t: None),
):
    client_iface_p3.func(f"[method]incoming-server-hello.{_call}")(_server_hello_getter(_call, _value))


@client_iface_p3.func("[static]incoming-server-hello.finish")
async def incoming_server_hello_finish(cx: StoreState, this: IncomingServerHelloP3) -> ConnectionP3:
    return await this.finish()


INTERFACES = (client_iface_p3,)
