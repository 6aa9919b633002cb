"""``wasi:tls/types@0.2.0-draft``: the upstream client interface, as Wasmtime's ``-S tls``
implements it, so components built for Wasmtime run here unchanged.

    client-handshake(server-name, input, output) --finish--> future-client-streams
    future-client-streams --get (once ready)--> (client-connection, input-stream, output-stream)

The handshake runs on the host (OpenSSL, memory BIOs) over the guest's own streams, which the
constructor takes ownership of; verification uses the embedder's ``TlsConfig``.
"""

from __future__ import annotations

from typing import Any

from ..runtime.binding import Interface
from ..runtime.resources import HostResource
from ..runtime.store import StoreState
from ..runtime.values import Err, Ok, Trap
from ..wasi.io import CallbackPollable, InputStream, IoError, OutputStream, Pollable
from .config import tls_config
from .engine import ACCESS_DENIED, INVALID_ARGUMENT, TlsEngine, TlsFailure
from .limits import LimitExceeded, usage_of
from .sessions import client_engine
from .states import FUTURE_CLIENT_STREAMS, Event, HandshakeState, WrongState
from .p2 import PendingHandshake, TlsConnection, TlsInputStream, TlsOutputStream, WasiIoPort, WasiIoTransport
from .transport import HandshakeDeadline

types_iface = Interface("wasi:tls/types@0.2.0-draft")


class ClientHandshake(HostResource):
    """Holds the guest's streams until ``finish`` (one state: consumed by finish)."""

    def __init__(self, server_name: str, input: InputStream, output: OutputStream) -> None:
        self.server_name = server_name
        self.input: InputStream | None = input
        self.output: OutputStream | None = output

    def take_streams(self) -> tuple[InputStream, OutputStream]:
        assert self.input is not None and self.output is not None
        streams = (self.input, self.output)
        self.input = self.output = None
        return streams

    def drop(self) -> None:
        # Dropped without finish: the streams it took over are closed with it.
        if self.input is not None and self.output is not None:
            self.input.drop()
            self.output.drop()
            self.input = self.output = None


class ClientConnection(TlsConnection):
    pass


class FutureClientStreams(PendingHandshake):
    """The handshake in progress; ``get`` yields its outcome exactly once."""

    machine = FUTURE_CLIENT_STREAMS


types_iface.resource("client-handshake", ClientHandshake)
types_iface.resource("client-connection", ClientConnection)
types_iface.resource("future-client-streams", FutureClientStreams)


@types_iface.func("[constructor]client-handshake", keeps=("input", "output"))
def client_handshake_new(cx: StoreState, server_name: str, input: InputStream, output: OutputStream) -> ClientHandshake:
    return ClientHandshake(server_name, input, output)


@types_iface.func("[static]client-handshake.finish")
def client_handshake_finish(cx: StoreState, this: ClientHandshake) -> FutureClientStreams:
    config = tls_config(cx)
    usage = usage_of(cx)
    cin, cout = this.take_streams()
    refused: TlsFailure | None = None
    try:
        engine: TlsEngine = client_engine(cx, config, this.server_name, cin)
    except TlsFailure as e:
        if e.code != INVALID_ARGUMENT:
            cin.drop()
            cout.drop()
            raise Trap(str(e)) from None
        # A server name that is no name: this interface has no error result here, so the
        # future answers with it (the engine is never driven).
        refused = e
        engine = TlsEngine(config.client_context(), server_side=False)
    transport = WasiIoTransport(engine, WasiIoPort(cin, cout))
    future = FutureClientStreams(transport, config.on_handshake, deadline=HandshakeDeadline.start(config.limits))
    if refused is not None:
        future.fail(refused)
        return future
    try:
        usage.start(transport.port, config.limits)
    except LimitExceeded as e:
        # This interface has no error result here: the future answers with the refusal.
        future.fail(TlsFailure(ACCESS_DENIED, f"TLS connection refused by the host: {e}"))
        return future
    transport.usage = usage
    future.poll()  # sends the ClientHello right away
    return future


@types_iface.func("[method]client-connection.close-output")
def client_connection_close_output(cx: StoreState, this: ClientConnection) -> None:
    this.close_output()


@types_iface.func("[method]future-client-streams.subscribe")
def future_client_streams_subscribe(cx: StoreState, this: FutureClientStreams) -> Pollable:
    return CallbackPollable(this.poll, this.waits)


@types_iface.func("[method]future-client-streams.get")
def future_client_streams_get(cx: StoreState, this: FutureClientStreams) -> Any:
    try:
        this.require("get")
    except WrongState as e:
        return None if e.code == "would-block" else Err(None)  # none: not yet; some(err): taken
    if this.state is HandshakeState.FAILED:
        failure = this.failure
        assert failure is not None
        this.states.advance(Event.FINISH)
        return Ok(Err(IoError(failure.message, failure.code, "tls")))
    t = this.finish("get")
    return Ok(Ok((ClientConnection(t), TlsInputStream(t), TlsOutputStream(t))))


INTERFACES = (types_iface,)
