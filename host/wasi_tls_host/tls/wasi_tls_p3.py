"""``wasi:tls@0.3.0-draft``: the upstream client for WASI 0.3, as Wasmtime's ``-Sp3 -Stls``
implements it, so a component built for Wasmtime runs here unchanged, with this host's
trust, profiles, limits, client sessions and errors.

    connector()                       a CONNECTOR machine (states.py)
    connector.send(cleartext)      -> (ciphertext to send, how sending ended)
    connector.receive(ciphertext)  -> (cleartext received, how receiving ended)
    connector.connect(server-name)    consumes the connector, waits for the handshake

``send`` and ``receive`` each take one stream and return one, in either order, once each;
``connect`` then starts the connection (p3.StreamTransport) and returns when its
handshake is established or failed. Ciphertext flows only after ``connect``; plaintext only
after the handshake. An ``error``'s ``to-debug-string`` is the host's sentence for what
OpenSSL said, prefixed by the error code of ``wasi-tls-host:tls`` (``unknown-issuer: TLS
handshake failed: certificate verification failed: ...``).

Misuse gets an error, not a trap: a second ``send``/``receive`` returns an ended stream and
a future that answers ``invalid-state`` (as a second ``tcp-socket.receive`` does), and
``connect`` before both are set up fails (the streams already given are closed, their
futures answer why).
"""

from __future__ import annotations

from typing import Any

from ..runtime.binding import Interface
from ..runtime.resources import HostResource
from ..runtime.store import StoreState
from ..runtime.scheduler import Cancelled, Event
from ..runtime.streams import Future, Stream, StreamReader
from ..runtime.values import Err, WitError
from .config import tls_config
from .engine import ACCESS_DENIED, CLOSED, TlsFailure
from .limits import LimitExceeded, usage_of
from .sessions import client_engine
from .states import CONNECT, CONNECTOR, ConnectorState, Event as Transition, HandshakeState, StateMachine, WrongState
from .p3 import PlaintextIn, PlaintextOut, StreamPort, StreamTransport, ended_stream, resolved_future
from .transport import HandshakeDeadline

types_iface = Interface("wasi:tls/types@0.3.0-draft")
client_iface = Interface("wasi:tls/client@0.3.0-draft")

_ORIGIN = "wasi:tls/client@0.3.0-draft#connector"


class TlsError(HostResource):
    """``wasi:tls/types.error``: a failure, as words (the only thing the resource offers)."""

    def __init__(self, failure: TlsFailure) -> None:
        self.failure = failure

    def debug_string(self) -> str:
        return f"{self.failure.code}: {self.failure.message}"

    def __repr__(self) -> str:
        return f"<wasi:tls error {self.debug_string()!r}>"


class Connector(HostResource):
    """The streams a connection will use, until ``connect`` takes them."""

    def __init__(self) -> None:
        self.states = StateMachine(CONNECTOR)
        self.wake = Event()  # the connection's one event (see p3.py)
        self.port = StreamPort(self.wake, f"{_ORIGIN}.send (ciphertext)")
        self.sender: PlaintextIn | None = None
        self.receiver: PlaintextOut | None = None
        self.refusal: TlsFailure | None = None  # why a connect that consumed it failed

    def require(self, call: str) -> None:
        try:
            self.states.require(call)
        except WrongState as e:
            raise WitError(TlsError(TlsFailure(e.code, e.message))) from None

    def drop(self) -> None:
        """Dropped without a successful connect: what send and receive set up ends, each
        future saying why."""
        if self.states.state is ConnectorState.CONNECTED:
            return  # the connection has the streams now
        failure = self.refusal or TlsFailure(CLOSED, "TLS connection failed: the connector was dropped before it connected")
        if self.sender is not None:
            self.sender.finish(Err(TlsError(failure)))
        if self.receiver is not None:
            self.receiver.finish(Err(TlsError(failure)))
        self.port.close()


types_iface.resource("error", TlsError)
client_iface.resource("connector", Connector)


@types_iface.func("[method]error.to-debug-string")
def error_to_debug_string(cx: StoreState, this: TlsError) -> str:
    return this.debug_string()


@client_iface.func("[constructor]connector")
def connector_new(cx: StoreState) -> Connector:
    return Connector()


def _refused(e: WitError, given: Stream) -> tuple[Stream, Future]:
    """A second send/receive: the stream given is closed, an ended one returned, and the
    future answers why."""
    StreamReader(given, is_bytes=True).close()
    return ended_stream(), resolved_future(Err(e.payload))


@client_iface.func("[method]connector.send")
def connector_send(cx: StoreState, this: Connector, cleartext: Stream) -> tuple[Stream, Future]:
    try:
        this.require("send")
    except WitError as e:
        return _refused(e, cleartext)
    this.states.advance(Transition.SEND)
    this.sender = PlaintextIn(cleartext, f"{_ORIGIN}.send (how sending ended)")
    return this.port.outgoing, this.sender.future


@client_iface.func("[method]connector.receive")
def connector_receive(cx: StoreState, this: Connector, ciphertext: Stream) -> tuple[Stream, Future]:
    try:
        this.require("receive")
    except WitError as e:
        return _refused(e, ciphertext)
    this.states.advance(Transition.RECEIVE)
    this.port.attach_incoming(ciphertext)
    this.receiver = PlaintextOut(this.wake, f"{_ORIGIN}.receive (cleartext)")
    return this.receiver.stream, this.receiver.future


def _refuse_connect(this: Connector, failure: TlsFailure) -> WitError:
    """connect failed before a connection began: the connector (consumed) ends with it."""
    this.refusal = TlsFailure(failure.code, f"TLS connection failed: connect was refused: {failure.message}")
    return WitError(TlsError(failure))


@client_iface.func("[static]connector.connect")
async def connector_connect(cx: StoreState, this: Connector, server_name: str) -> None:
    try:
        this.states.require("connect")
    except WrongState as e:
        raise _refuse_connect(this, TlsFailure(e.code, e.message)) from None
    config = tls_config(cx)
    try:
        engine = client_engine(cx, config, server_name, this.port)
    except TlsFailure as failure:  # a server name that is no name
        raise _refuse_connect(this, failure) from None
    usage = usage_of(cx)
    try:
        usage.start(this.port, config.limits)
    except LimitExceeded as e:
        raise _refuse_connect(this, TlsFailure(ACCESS_DENIED, f"TLS connection refused by the host: {e}")) from None
    this.states.advance(Transition.CONNECT)
    transport = StreamTransport(engine, this.port, error_value=TlsError, usage=usage, receiver=this.receiver, sender=this.sender)
    transport.offers_peer = False  # upstream has no call that shows the server's certificate
    transport.needs_input = False  # a client speaks first: its first step reads no socket
    transport.begin_handshake(CONNECT, deadline=HandshakeDeadline.start(config.limits), on_handshake=config.on_handshake)
    transport.start(cx.scheduler)
    try:
        await transport.settled
    except Cancelled:
        transport.abort_handshake(TlsFailure(CLOSED, "TLS handshake failed: the guest cancelled connect"))
        raise
    if transport.state is HandshakeState.FAILED:
        assert transport.failure is not None
        raise WitError(TlsError(transport.failure))


INTERFACES = (types_iface, client_iface)
