"""``wasi-tls-host:tls/server@0.2.0``: TLS servers for WASI 0.3 guests, the 0.1.0 design on
native streams (see wit/deps/tls-host-0.2.0/server.wit):

    accept(ciphertext)                    -> (incoming-client-hello, outgoing ciphertext)
    incoming-client-hello.accept(answer)  -> incoming-client-exchange   (async: waits for the hello)
    incoming-client-exchange.finish()     -> connection                 (async: waits for the handshake)

From ``accept`` on, a host task reads the client's first flight (``ClientHelloReader``,
as in 0.1.0) and, once the hello is in, waits for the guest's answer; the embedder's
handshake deadline ends the connection whichever comes first: a guest that never answers
leaves the client with an alert, not a hung socket. The answer builds the same OpenSSL
engine as 0.1.0 (``server.answer_engine``) and the connection goes on in a
``StreamTransport`` over the same ciphertext streams.

Calls that do several of these in one, for servers (each call a guest makes is a round trip
through both runtimes): ``accept-socket`` (the socket's receive, ``accept``, the socket's send
and remote address), ``incoming-client-hello.establish`` (``accept``, ``finish`` and the
connection's ``receive`` and ``send``, borrowing the answer), ``incoming-client-hello.summary``.
"""

from __future__ import annotations

import logging
from typing import Any

from ..runtime.binding import Interface
from ..runtime.resources import HostResource
from ..runtime.scheduler import Cancelled, HostTask, Scheduler
from ..runtime.scheduler import Event as Signal
from ..runtime.store import StoreState
from ..runtime.streams import Future, Stream, StreamReader
from ..runtime.values import WitError
from ..wasi.sockets.p3 import TcpSocket, receive_directly, tcp_send
from .attested import peer_code_check
from .ciphers import suite_number
from .client_hello import ALERT_FATAL, ClientHello, alert_record
from .config import tls_config
from .connection import failure_record, tls_error
from .connection_p3 import ConnectionP3, connection_receive, connection_send, preopened_identity
from .engine import CLOSED, TlsFailure
from .identities import PublicIdentity
from .limits import LimitExceeded, usage_of
from .p3 import StreamPort, StreamTransport
from .server import (ALERT_INTERNAL_ERROR, ClientHelloIntake, OutgoingServerHello, Refusal, answer_engine, require_state, server_failure,
                     server_iface)
from .states import CLIENT_EXCHANGE, ClientHelloState, Event, HandshakeState
from .transport import ALERT_USER_CANCELED, HandshakeDeadline, PortFailed

log = logging.getLogger("wasi_tls_host.tls")

server_iface_p3 = Interface("wasi-tls-host:tls/server@0.2.0")

_ORIGIN = "wasi-tls-host:tls/server@0.2.0#accept"
_CIPHERTEXT_ORIGIN = f"{_ORIGIN} (ciphertext)"


class IncomingClientHelloP3(HostResource, ClientHelloIntake):
    """The client's first flight (``server.ClientHelloIntake``), read by a task of its own
    that also ends the connection if the guest has not answered by the deadline."""

    port: StreamPort

    def __init__(self, port: StreamPort, *, max_size: int | None, deadline: HandshakeDeadline | None) -> None:
        ClientHelloIntake.__init__(self, port, max_size=max_size, deadline=deadline)
        self.received = Signal()  # set once the hello is in, or failed
        self.alert = bytearray()  # an alert on its way to the client, before the end
        self.ending = False  # refused, failed or given up: the port closes once the alert is out
        self.task: HostTask | None = None
        # The connection's transport, once an accepted answer handed the port over: this
        # task goes on as its task (one task per connection, from accept to the end).
        self.successor: StreamTransport | None = None

    def start(self, scheduler: Scheduler) -> None:
        self.task = scheduler.start(self.run(), "TLS server connection")

    def _deadline_ns(self) -> int | None:
        """The handshake deadline, while it can still end this hello (once it fails, the
        task only waits to send the alert: a passed deadline would wake it at once)."""
        if self.deadline is None or self.ending or self.state not in (ClientHelloState.READING, ClientHelloState.RECEIVED):
            return None
        return self.deadline.at_ns

    async def run(self) -> None:
        port = self.port
        try:
            while True:
                port.wake.clear()
                port.begin_step()
                if self.step():
                    break
                await port.waits(self._deadline_ns())
        except (Cancelled, GeneratorExit):
            self.close()
            raise
        except Exception as e:  # a host bug: the connection ends and the guest hears of it, not a silent hang
            log.exception("TLS ClientHello task failed")
            if self.state is not ClientHelloState.ANSWERED:  # (FAIL is allowed from every other state)
                self.fail("internal", f"TLS handshake failed: host error: {type(e).__name__}: {e}")
            self.close()
            raise
        transport, self.successor = self.successor, None
        if transport is not None:
            await transport.run()

    def step(self) -> bool:
        """Move on as far as possible now; True once this task is done."""
        if self.handed_over:
            return True
        if self.read_hello() and self.state is ClientHelloState.RECEIVED:
            self.received.set()
            if self.deadline is not None and self.deadline.passed():
                failure = self.deadline.failure()
                self.fail(failure.code, failure.message, alert=ALERT_USER_CANCELED)
        if self.ending:
            return self._send_alert_and_close()
        return False

    def end(self, alert: int | None) -> None:
        if alert is not None:
            self.alert += alert_record(ALERT_FATAL, alert)
        self.ending = True
        self.received.set()
        self.port.wake.set()

    def _send_alert_and_close(self) -> bool:
        """The alert, as far as the client's reader takes it now; the end once it is out
        (or can never be)."""
        if self.alert:
            try:
                taken = self.port.send(bytearray(self.alert))  # a host reader keeps what it is given
            except PortFailed:
                taken = len(self.alert)
            del self.alert[:taken]
            if self.alert:
                return False
        self.close()
        return True

    def hand_over(self, transport: StreamTransport, scheduler: Scheduler) -> None:
        """The ACCEPT transition: ``transport`` runs the connection on, in this task (it
        waits on the port's event, which wakes it to begin the handshake)."""
        ClientHelloIntake.hand_over(self)
        task = self.task
        if task is not None and not task.done:
            self.successor = transport
            transport.task = task
            self.port.wake.set()
        else:
            transport.start(scheduler)

    async def require(self, call: str) -> ClientHello:
        """The parsed hello, once in, if the state answers ``call``; the guest-facing error
        if not."""
        await self.received
        return self.answers(call)

    def drop(self) -> None:
        self.let_go()


class OutgoingServerHelloP3(OutgoingServerHello):
    """The guest's answer; its identity is named, and found when the answer is used."""

    def __init__(self, identity_name: str) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.identity_name = identity_name


class ExchangeP3(HostResource):
    """incoming-client-exchange: the handshake in its ``StreamTransport``, until finish
    hands out the connection."""

    def __init__(self, transport: StreamTransport) -> None:
        self.transport = transport

    async def require(self, call: str) -> None:
        await self.transport.settled
        require_state(self.transport.states, call)

    async def finish(self) -> ConnectionP3:
        """The FINISH transition: the connection now holds the transport."""
        await self.require("finish")
        self.transport.states.advance(Event.FINISH)
        return ConnectionP3(self.transport)

    def drop(self) -> None:
        """Dropped before its finish: a running handshake is abandoned (the peer gets
        user_canceled while records are plaintext), an established one closed."""
        t = self.transport
        if t.state is HandshakeState.RUNNING:
            t.abort_handshake(TlsFailure(CLOSED, "TLS handshake failed: the guest let go of the handshake"))
        elif t.state is HandshakeState.ESTABLISHED:
            t.let_go(receiving=True, sending=True)


server_iface_p3.resource("incoming-client-hello", IncomingClientHelloP3)
server_iface_p3.resource("outgoing-server-hello", OutgoingServerHelloP3)
server_iface_p3.resource("incoming-client-exchange", ExchangeP3)


@server_iface_p3.func("accept")
def accept(cx: StoreState, ciphertext: Stream) -> tuple[IncomingClientHelloP3, Stream]:
    port = StreamPort(Signal(), _CIPHERTEXT_ORIGIN, ciphertext)
    return _start_hello(cx, port), port.outgoing


def _start_hello(cx: StoreState, port: StreamPort) -> IncomingClientHelloP3:
    """The hello of a connection whose ciphertext ``port`` carries, its task started."""
    limits = tls_config(cx).limits
    hello = IncomingClientHelloP3(port, max_size=limits.max_client_hello, deadline=HandshakeDeadline.start(limits))
    usage = usage_of(cx)
    try:
        usage.start(port, limits)
    except LimitExceeded as e:
        # accept has no error result: the hello answers with the refusal, the client is told.
        hello.fail("access-denied", f"TLS connection refused by the host: {e}", alert=ALERT_USER_CANCELED)
    else:
        hello.usage = usage
    hello.start(cx.scheduler)
    return hello


@server_iface_p3.func("accept-socket")
def accept_socket(cx: StoreState, sock: TcpSocket) -> tuple[IncomingClientHelloP3, Future, Any]:
    """receive, accept, send and get-remote-address in one call (see server.wit for why)."""
    if sock.receiving or sock.sending:
        raise tls_error("invalid-state", "this socket's receive or send was called already: accept-socket takes both")
    try:
        sock.socket.require("receive")
    except WitError as e:
        raise tls_error("invalid-state", f"the socket is not a connected one ({e.payload})") from None
    # The host reads the socket itself from the start (no receive stream, future or task to
    # stop again); how the client's data ended is the connection's to say.
    source = receive_directly(sock)
    try:
        peer = sock.socket.remote_address().to_wit()
    except WitError:
        peer = None  # the client is gone already: its handshake says so
    port = StreamPort(Signal(), _CIPHERTEXT_ORIGIN)
    port.attach_source(source, sock.socket.shared.record)
    # The socket is written directly before the hello's task takes its first step (which
    # reads the hello at once): no wake-up of it, later, only to learn that.
    sent = tcp_send(cx, sock, port.outgoing)
    return _start_hello(cx, port), sent, peer


def _hello_getter(call: str, value: Any) -> Any:
    # summary answers where server-name does (the state table is shared with 0.1.0, which has none)
    asked = "server-name" if call == "summary" else call

    async def get(cx: StoreState, this: IncomingClientHelloP3) -> Any:
        return value(await this.require(asked))

    get.__name__ = get.__qualname__ = f"incoming_client_hello_{call.replace('-', '_')}"
    return get


def _protocol_versions(hello: ClientHello) -> list[int]:
    return list(hello.supported_versions) or [hello.legacy_version]


for _call, _value in (
    ("server-name", lambda hello: hello.server_name),
    ("summary", lambda hello: {"server_name": hello.server_name, "alpn_ids": list(hello.alpn_protocols),
                               "protocol_versions": _protocol_versions(hello)}),
    ("alpn-ids", lambda hello: list(hello.alpn_protocols)),
    ("protocol-versions", _protocol_versions),
    ("cipher-suites", lambda hello: list(hello.cipher_suites)),
    ("signature-schemes", lambda hello: list(hello.signature_algorithms)),
):
    server_iface_p3.func(f"[method]incoming-client-hello.{_call}")(_hello_getter(_call, _value))


@server_iface_p3.func("[static]incoming-client-hello.accept")
async def incoming_client_hello_accept(cx: StoreState, this: IncomingClientHelloP3, response: OutgoingServerHelloP3) -> ExchangeP3:
    # Every way out of here but success ends the handshake: the client gets an alert.
    hello = await this.require("accept")
    config = tls_config(cx)
    try:
        response.identity = preopened_identity(cx, response.identity_name)
    except WitError as e:
        raise this.refuse(e.payload["code"], e.payload["message"], ALERT_INTERNAL_ERROR) from None
    try:
        engine = answer_engine(config, hello, response, this.reader.buffered())
    except Refusal as r:
        raise this.refuse(r.code, r.message, r.alert) from None
    transport = StreamTransport(engine, this.port, error_value=failure_record, usage=this.usage)
    transport.begin_handshake(CLIENT_EXCHANGE, deadline=this.deadline, on_handshake=config.on_handshake, reword=server_failure,
                              peer_check=peer_code_check(response.expected_code, config, "client"))
    this.hand_over(transport, cx.scheduler)
    return ExchangeP3(transport)


@server_iface_p3.func("[static]incoming-client-hello.establish")
async def incoming_client_hello_establish(cx: StoreState, this: IncomingClientHelloP3, response: OutgoingServerHelloP3,
                                          data: Stream) -> dict[str, Any]:
    """accept, finish, receive and send(data) in one call (see server.wit for why)."""
    try:
        exchange = await incoming_client_hello_accept(cx, this, response)
        try:
            connection = await exchange.finish()
        finally:
            exchange.drop()  # as the owned argument of finish is: the connection holds the transport now
    except BaseException:
        StreamReader(data, is_bytes=True).close()  # the guest's writer sees it dropped
        raise
    plaintext, received = connection_receive(cx, connection)
    sent = connection_send(cx, connection, data)
    engine = connection.transport.engine
    return {"connection": connection, "plaintext": plaintext, "received": received, "sent": sent,
            "protocol_version": engine.protocol_version(), "cipher_suite": suite_number(engine.cipher_name()),
            "alpn_id": engine.alpn()}


@server_iface_p3.func("[static]incoming-client-hello.reject")
def incoming_client_hello_reject(cx: StoreState, this: IncomingClientHelloP3, alert: int) -> None:
    this.states.require("reject")
    this.reject(alert)


@server_iface_p3.func("[constructor]outgoing-server-hello")
def outgoing_server_hello_new(cx: StoreState, identity: str) -> OutgoingServerHelloP3:
    return OutgoingServerHelloP3(identity)


@server_iface_p3.func("[method]outgoing-server-hello.set-client-ca")
def outgoing_server_hello_set_client_ca(cx: StoreState, this: OutgoingServerHelloP3, name: str) -> None:
    sets = tls_config(cx).client_ca_sets
    if name not in sets:
        have = ", ".join(sorted(sets)) or "none"
        raise tls_error("access-denied", f"no client CA set named {name!r} was preopened for this guest (it has: {have}; "
                                         "the embedder gives --client-ca NAME=CA.pem)")
    this.client_ca = name


@server_iface_p3.func("[method]outgoing-server-hello.set-alpn-preferences")
def outgoing_server_hello_set_alpn_preferences(cx: StoreState, this: OutgoingServerHelloP3, ids: list[bytes]) -> None:
    if not all(0 < len(i) < 256 for i in ids):
        raise tls_error("invalid-argument", "an ALPN id is 1 to 255 bytes")
    this.alpn, this.alpn_preferences = None, [bytes(i) for i in ids]


server_iface_p3.share(server_iface, "[method]outgoing-server-hello.set-alpn-id", "[method]outgoing-server-hello.set-protocol-versions",
                      "[method]outgoing-server-hello.set-cipher-suites", "[method]outgoing-server-hello.request-client-identity",
                      "[method]outgoing-server-hello.expect-peer-code")


@server_iface_p3.func("[method]incoming-client-exchange.client-identity")
async def incoming_client_exchange_client_identity(cx: StoreState, this: ExchangeP3) -> PublicIdentity | None:
    await this.require("client-identity")
    peer = this.transport.peer
    return peer.copy() if peer is not None else None


@server_iface_p3.func("[static]incoming-client-exchange.finish")
async def incoming_client_exchange_finish(cx: StoreState, this: ExchangeP3) -> ConnectionP3:
    return await this.finish()


INTERFACES = (server_iface_p3,)
