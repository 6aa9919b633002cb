"""``wasi-tls-host:tls/server``: a TLS server handshake as resource state machines.

    accept(input, output)              -> incoming-client-hello   (host reads the hello)
    incoming-client-hello.accept(hello) -> incoming-client-exchange (OpenSSL takes over)
    incoming-client-exchange.finish()   -> (connection, input-stream, output-stream)

The ClientHello is read and parsed by the host before OpenSSL sees it (OpenSSL's own
client-hello callback is not reachable from pyOpenSSL); the guest's answer then selects the
identity, ALPN protocol, versions, suites and client authentication of a fresh OpenSSL
connection, and the buffered bytes are replayed into its memory BIO.

Each call that is not valid in the resource's state fails with ``invalid-state``; each
result that is not there yet fails with ``would-block`` (the tables are in states.py).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL, crypto

from ..runtime.binding import Interface
from ..runtime.resources import HostResource
from ..runtime.store import StoreState
from ..runtime.values import WitError
from ..wasi.io import CallbackPollable, InputStream, OutputStream, Pollable, Waits
from .ciphers import split_suites
from .client_hello import ALERT_FATAL, ClientHello, ClientHelloError, ClientHelloReader, alert_name, alert_record
from .attested import peer_code_check
from .config import TlsConfig, openssl_version, tls_config
from .connection import answer, finish_established, guest_errors, tls_error
from .engine import BAD_CERTIFICATE, TlsEngine, TlsFailure
from .profiles import configure_resumption
from .identities import PrivateIdentity, PrivateIdentityHandle, PublicIdentity
from .limits import LimitExceeded, TlsUsage, usage_of
from .states import CLIENT_EXCHANGE, CLIENT_HELLO, ClientHelloState, Event, StateMachine, WrongState
from .p2 import PendingHandshake, WasiIoPort, WasiIoTransport
from .transport import ALERT_USER_CANCELED, CiphertextPort, HandshakeDeadline, PortFailed

log = logging.getLogger("wasi_tls_host.tls")

server_iface = Interface("wasi-tls-host:tls/server@0.1.0")

_READ_CHUNK = 16384


def _version(value: int) -> int:
    try:
        return openssl_version(value)
    except ValueError as e:
        raise tls_error("invalid-argument", str(e)) from None


ALERT_HANDSHAKE_FAILURE = 40
ALERT_INTERNAL_ERROR = 80
ALERT_NO_APPLICATION_PROTOCOL = 120


class OutgoingServerHello(HostResource):
    def __init__(self, identity: PrivateIdentity) -> None:
        self.identity = identity
        self.alpn: bytes | None = None
        self.alpn_preferences: list[bytes] | None = None  # the server's, to choose from the client's offer
        self.min_version = 0x0303
        self.max_version = 0x0304
        self.suites: list[int] | None = None
        self.client_auth: str | None = None  # None, "optional" or "required"
        self.client_ca: str | None = None  # a named client CA set (None: the default one)
        self.expected_code: str | None = None  # set by expect-peer-code (tls/code_identity.py)


@dataclass(frozen=True)
class _ContextKey:
    identity: int
    min_version: int
    max_version: int
    suites: tuple[int, ...] | None
    client_auth: str | None
    client_ca: str | None


class NoClientCa(Exception):
    """The guest asked for client certificates; the embedder gave no CA to check them."""


def _select_alpn(conn: SSL.Connection, offered: list[bytes]) -> bytes:
    chosen = conn.get_app_data()
    return chosen if chosen in offered else SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[no-any-return]


def policy_versions(config: TlsConfig, min_wire: int, max_wire: int) -> tuple[int, int]:
    """The guest's versions within the embedder's (profile, --tls-min/--tls-max), as OpenSSL
    constants; ValueError if nothing is left."""
    floor, ceiling = config.version_bounds()
    low, high = max(floor, _version(min_wire)), min(ceiling, _version(max_wire))
    if low > high:
        raise ValueError(f"TLS versions 0x{min_wire:04x} to 0x{max_wire:04x} are outside what the host allows "
                         f"(TLS profile {config.policy.describe()}, --tls-min/--tls-max)")
    return low, high


def server_context(config: TlsConfig, hello: OutgoingServerHello) -> SSL.Context:
    """An OpenSSL context for this answer within the embedder's profile, built once per
    distinct answer and config (and again after each ticket-key rotation)."""
    # Keyed by the identity's id; each entry holds the identity itself, so that id cannot be
    # reused by another identity while the entry lives (and a hit is checked against it).
    cache = config.server_context_cache()
    key = _ContextKey(id(hello.identity), hello.min_version, hello.max_version,
                      tuple(hello.suites) if hello.suites is not None else None, hello.client_auth, hello.client_ca)
    cached = cache.get(key)
    if cached is not None and cached[0] is hello.identity:
        return cached[1]
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    if hello.suites is not None:
        config.policy.check_suites(hello.suites)
    config.policy.configure(ctx, policy_versions(config, hello.min_version, hello.max_version), hello.suites)
    # The session id context names the answer by what it is, not by this process's objects, so
    # that hosts sharing ticket keys resume each other's sessions for the same answer.
    answer = (hello.identity.name, hello.identity.public.fingerprint, key.min_version, key.max_version, key.suites, key.client_auth)
    configure_resumption(ctx, config.resumption, hashlib.sha256(repr(answer).encode()).digest(), config.ticket_key_lifetime,
                         config.ticket_key_ring)
    hello.identity.use_in(ctx)
    if hello.client_auth is not None:
        anchors = config.client_anchors(hello.client_ca)
        if not anchors:
            raise NoClientCa("client certificates were requested but the embedder configured no client CA (--client-ca)")
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if hello.client_auth == "required":
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode)
        store = ctx.get_cert_store()
        assert store is not None
        for anchor in anchors:
            store.add_cert(crypto.X509.from_cryptography(anchor))
        # No set_client_ca_list: its X509Name API is deprecated in pyOpenSSL, and the CA names
        # in a CertificateRequest are only a hint to the client.
    ctx.set_alpn_select_callback(_select_alpn)
    cache[key] = (hello.identity, ctx)
    return ctx


class ClientHelloIntake:
    """A client's first flight, read from a ciphertext port until it is complete (either
    surface: ``IncomingClientHello`` here, ``server_p3.IncomingClientHelloP3``).

    States (``CLIENT_HELLO`` in states.py): READING until the hello is parsed (RECEIVED) or
    cannot be (FAILED: malformed, too big, peer gone, deadline passed; the client gets an
    alert and the port is closed); accept or reject consume it (ANSWERED).

    An accepted socket's access-log record learns the SNI as soon as the hello is read, and
    why the connection ended here if it did (``tls=failed: ...``).
    """

    def __init__(self, port: CiphertextPort, *, max_size: int | None, deadline: HandshakeDeadline | None) -> None:
        self.port = port
        self.states = StateMachine(CLIENT_HELLO)
        self.reader = ClientHelloReader(max_size)
        self.hello: ClientHello | None = None
        self.usage: TlsUsage | None = None  # set once the limits let the connection start
        self.deadline = deadline
        self.handed_over = False  # an accepted answer gave the port to the connection

    @property
    def state(self) -> ClientHelloState:
        return self.states.state

    def read_hello(self) -> bool:
        """Read what the port has; True once the hello is complete or failed."""
        if self.state is not ClientHelloState.READING:
            return True
        try:
            while self.hello is None:
                data = self.port.receive(_READ_CHUNK)
                if data is None:
                    self.fail("closed", "the client closed the connection before sending a complete ClientHello")
                    return True
                if not data:
                    if self.deadline is not None and self.deadline.passed():
                        failure = self.deadline.failure()
                        self.fail(failure.code, failure.message, alert=ALERT_USER_CANCELED)
                        return True
                    return False
                self.hello = self.reader.feed(data)
        except ClientHelloError as e:
            self.fail(e.code, e.message, alert=e.alert)
            return True
        except PortFailed as e:
            self.fail("closed", f"reading the ClientHello failed: {e.reason}")
            return True
        except Exception as e:  # a host bug reading what a client sent: that client gets internal_error
            log.exception("reading a ClientHello failed")
            self.fail("internal", f"TLS handshake failed: host error: {type(e).__name__}: {e}", alert=ALERT_INTERNAL_ERROR)
            return True
        self.states.advance(Event.HELLO_COMPLETE)
        if self.port.record is not None and self.hello.server_name is not None:
            self.port.record.annotate(sni=self.hello.server_name)
        return True

    def fail(self, code: str, message: str, alert: int | None = None) -> None:
        """The FAIL transition: later calls answer this error; the client gets ``alert``."""
        log.info("TLS server: %s", message)
        self.states.advance(Event.FAIL, tls_error(code, message))
        self.note_failure(message)
        self.end(alert)

    def refuse(self, code: str, message: str, alert: int) -> WitError:
        """Fail (the client gets ``alert``); the error to raise for the guest."""
        self.fail(code, message, alert=alert)
        return tls_error(code, message)

    def reject(self, alert: int, reason: str | None = None) -> None:
        """The REJECT transition (the guest refused it, or let it go unanswered). A hello
        that failed has had its alert: rejecting it only lets it go (a second alert could
        reach the client first, while the first still waits for the socket)."""
        failed = self.state is ClientHelloState.FAILED
        self.states.advance(Event.REJECT)
        if failed:
            return
        self.note_failure(reason or f"the guest refused the ClientHello with {alert_name(alert)}")
        self.end(alert)

    def note_failure(self, reason: str) -> None:
        """Tell the access log why the connection ended before its handshake began."""
        if self.port.record is not None:
            self.port.record.annotate(tls=f"failed: {reason}")

    def end(self, alert: int | None) -> None:
        """The connection ends here: the client gets ``alert`` (if any), the port closes.
        A surface sends it as it can (WASI 0.2: now, if the stream takes it; 0.3: once
        its reader takes it)."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of the port (unless the connection has it) and of the guest's limits."""
        if not self.handed_over:
            self.port.close()
            if self.usage is not None:
                self.usage.closed(self.port)
                self.usage = None

    def hand_over(self) -> None:
        """The ACCEPT transition: the port now belongs to the connection's transport."""
        self.states.advance(Event.ACCEPT)
        self.handed_over = True

    def let_go(self) -> None:
        """The guest dropped it unanswered (or a refused accept consumed it): the client is
        told."""
        if self.state in (ClientHelloState.READING, ClientHelloState.RECEIVED):
            self.reject(ALERT_USER_CANCELED, "the guest let go of the connection without answering its ClientHello "
                                             f"(the client got {alert_name(ALERT_USER_CANCELED)})")

    def answers(self, call: str) -> ClientHello:
        """The parsed hello, if the state answers ``call``; the guest-facing error if not."""
        require_state(self.states, call)
        assert self.hello is not None
        return self.hello


def require_state(states: StateMachine[Any], call: str) -> None:
    """``states.require(call)``, refused with the guest-facing error as ``guest_errors``
    words it (entered only then: a context manager costs microseconds on every connection's
    calls, which almost always pass)."""
    try:
        states.require(call)
    except (WrongState, TlsFailure):
        with guest_errors():
            raise


class IncomingClientHello(HostResource, ClientHelloIntake):
    """The client's first flight over wasi:io streams, read inside guest calls (``poll``)
    and waited on through the input's pollable."""

    port: WasiIoPort

    def __init__(self, port: WasiIoPort, *, max_size: int | None, deadline: HandshakeDeadline | None = None) -> None:
        ClientHelloIntake.__init__(self, port, max_size=max_size, deadline=deadline)

    def poll(self) -> bool:
        return self.read_hello()

    def end(self, alert: int | None) -> None:
        """Best effort: a fatal alert to the client (if the stream takes it whole now), then
        the port closes."""
        if alert is not None:
            self.port.send_whole(alert_record(ALERT_FATAL, alert))
        self.close()

    def waits(self, waits: Waits) -> None:
        if self.state is not ClientHelloState.READING:
            waits.soon()
            return
        self.port.add_waits(waits, output=False, input=True)
        if self.deadline is not None:
            waits.until(self.deadline.at_ns)

    def require(self, call: str) -> ClientHello:
        self.poll()
        return self.answers(call)

    def drop(self) -> None:
        self.let_go()
        self.close()


def server_failure(failure: TlsFailure) -> TlsFailure:
    """Failures only a server meets, in the words of the interface."""
    if "peer did not return a certificate" in failure.message:
        # OpenSSL says handshake failure; for the guest this is a missing certificate.
        return TlsFailure(BAD_CERTIFICATE, "TLS handshake failed: the client sent no certificate, but this server requires one (mutual TLS)")
    return failure


class IncomingClientExchange(PendingHandshake):
    """The rest of the handshake, run by OpenSSL over the replayed hello."""

    machine = CLIENT_EXCHANGE
    reword = staticmethod(server_failure)


server_iface.resource("incoming-client-hello", IncomingClientHello)
server_iface.resource("outgoing-server-hello", OutgoingServerHello)
server_iface.resource("incoming-client-exchange", IncomingClientExchange)


@server_iface.func("accept", keeps=("input", "output"))
def accept(cx: StoreState, input: InputStream, output: OutputStream) -> IncomingClientHello:
    limits = tls_config(cx).limits
    usage = usage_of(cx)
    hello = IncomingClientHello(WasiIoPort(input, output), max_size=limits.max_client_hello, deadline=HandshakeDeadline.start(limits))
    try:
        usage.start(hello.port, limits)
    except LimitExceeded as e:
        # accept has no error result: the hello answers with the refusal, the client is told.
        hello.fail("access-denied", f"TLS connection refused by the host: {e}", alert=ALERT_USER_CANCELED)
        return hello
    hello.usage = usage
    hello.poll()
    return hello


@server_iface.func("[method]incoming-client-hello.subscribe")
def incoming_client_hello_subscribe(cx: StoreState, this: IncomingClientHello) -> Pollable:
    return CallbackPollable(this.poll, this.waits)


@server_iface.func("[method]incoming-client-hello.server-name")
def incoming_client_hello_server_name(cx: StoreState, this: IncomingClientHello) -> str | None:
    return this.require("server-name").server_name


@server_iface.func("[method]incoming-client-hello.alpn-ids")
def incoming_client_hello_alpn_ids(cx: StoreState, this: IncomingClientHello) -> list[bytes]:
    return list(this.require("alpn-ids").alpn_protocols)


@server_iface.func("[method]incoming-client-hello.protocol-versions")
def incoming_client_hello_protocol_versions(cx: StoreState, this: IncomingClientHello) -> list[int]:
    hello = this.require("protocol-versions")
    return list(hello.supported_versions) or [hello.legacy_version]


@server_iface.func("[method]incoming-client-hello.cipher-suites")
def incoming_client_hello_cipher_suites(cx: StoreState, this: IncomingClientHello) -> list[int]:
    return list(this.require("cipher-suites").cipher_suites)


@server_iface.func("[method]incoming-client-hello.signature-schemes")
def incoming_client_hello_signature_schemes(cx: StoreState, this: IncomingClientHello) -> list[int]:
    return list(this.require("signature-schemes").signature_algorithms)


class Refusal(Exception):
    """The guest's answer to a ClientHello cannot be used: the client gets ``alert``, the
    guest the error ``code`` and ``message``."""

    def __init__(self, code: str, message: str, alert: int) -> None:
        super().__init__(message)
        self.code, self.message, self.alert = code, message, alert


def answer_engine(config: TlsConfig, hello: ClientHello, response: OutgoingServerHello, replay: bytes) -> TlsEngine:
    """The server engine for the guest's answer to ``hello`` (both package versions), with
    the client's first flight (``replay``) fed in; ``Refusal`` if the answer is unusable."""
    alpn = response.alpn
    if response.alpn_preferences is not None:
        alpn = next((p for p in response.alpn_preferences if p in hello.alpn_protocols), None)
        if alpn is None and hello.alpn_protocols:  # RFC 7301 section 3.2: a fatal alert
            raise Refusal("handshake-failure", f"the client offered ALPN ids {hello.alpn_protocols}, none of those this "
                                               f"server speaks ({response.alpn_preferences})", ALERT_NO_APPLICATION_PROTOCOL)
    elif alpn is not None and alpn not in hello.alpn_protocols:
        raise Refusal("invalid-argument", f"ALPN id {alpn!r} was not offered by the client (it offered {hello.alpn_protocols})",
                      ALERT_NO_APPLICATION_PROTOCOL)
    try:
        context = server_context(config, response)
    except NoClientCa as e:
        raise Refusal("invalid-state", str(e), ALERT_HANDSHAKE_FAILURE) from None
    except (SSL.Error, ValueError) as e:
        raise Refusal("invalid-argument", f"cannot use this answer: {e}", ALERT_INTERNAL_ERROR) from None
    except WitError as e:
        raise Refusal(e.payload["code"], e.payload["message"], ALERT_INTERNAL_ERROR) from None
    engine = TlsEngine(context, server_side=True, server_name=hello.server_name)
    engine.conn.set_app_data(alpn)
    engine.feed(replay)
    return engine


@server_iface.func("[static]incoming-client-hello.accept")
def incoming_client_hello_accept(cx: StoreState, this: IncomingClientHello, response: OutgoingServerHello) -> IncomingClientExchange:
    # Every way out of here but success ends the handshake: the client gets an alert (the
    # hello is consumed, so dropping it afterwards closes the streams).
    hello = this.require("accept")
    config = tls_config(cx)
    try:
        engine = answer_engine(config, hello, response, this.reader.buffered())
    except Refusal as r:
        raise this.refuse(r.code, r.message, alert=r.alert) from None
    this.hand_over()
    transport = WasiIoTransport(engine, this.port, this.usage)
    exchange = IncomingClientExchange(transport, config.on_handshake, deadline=this.deadline,
                                      peer_check=peer_code_check(response.expected_code, config, "client"))
    exchange.poll()
    return exchange


@server_iface.func("[static]incoming-client-hello.reject")
def incoming_client_hello_reject(cx: StoreState, this: IncomingClientHello, alert: int) -> None:
    this.states.require("reject")
    this.reject(alert)


@server_iface.func("[constructor]outgoing-server-hello")
def outgoing_server_hello_new(cx: StoreState, identity: PrivateIdentityHandle) -> OutgoingServerHello:
    return OutgoingServerHello(identity.identity)


@server_iface.func("[method]outgoing-server-hello.set-alpn-id")
def outgoing_server_hello_set_alpn_id(cx: StoreState, this: OutgoingServerHello, id: bytes) -> None:
    if not 0 < len(id) < 256:
        raise tls_error("invalid-argument", "an ALPN id is 1 to 255 bytes")
    this.alpn, this.alpn_preferences = bytes(id), None


@server_iface.func("[method]outgoing-server-hello.set-protocol-versions")
def outgoing_server_hello_set_protocol_versions(cx: StoreState, this: OutgoingServerHello, min: int, max: int) -> None:
    _version(min), _version(max)
    if min > max:
        raise tls_error("invalid-argument", f"minimum version 0x{min:04x} is above the maximum 0x{max:04x}")
    try:
        policy_versions(tls_config(cx), min, max)
    except ValueError as e:
        raise tls_error("protocol-version", str(e)) from None
    this.min_version, this.max_version = min, max


@server_iface.func("[method]outgoing-server-hello.set-cipher-suites")
def outgoing_server_hello_set_cipher_suites(cx: StoreState, this: OutgoingServerHello, suites: list[int]) -> None:
    try:
        split_suites(suites)
    except ValueError as e:
        raise tls_error("invalid-argument", str(e)) from None
    if not suites:
        raise tls_error("invalid-argument", "at least one cipher suite is needed")
    try:
        tls_config(cx).policy.check_suites(list(suites))
    except ValueError as e:
        raise tls_error("invalid-argument", str(e)) from None
    this.suites = list(suites)


@server_iface.func("[method]outgoing-server-hello.request-client-identity")
def outgoing_server_hello_request_client_identity(cx: StoreState, this: OutgoingServerHello, required: bool) -> None:
    this.client_auth = "required" if required else "optional"


@server_iface.func("[method]incoming-client-exchange.subscribe")
def incoming_client_exchange_subscribe(cx: StoreState, this: IncomingClientExchange) -> Pollable:
    return CallbackPollable(this.poll, this.waits)


@server_iface.func("[method]incoming-client-exchange.client-identity")
def incoming_client_exchange_client_identity(cx: StoreState, this: IncomingClientExchange) -> PublicIdentity | None:
    answer(this, "client-identity")
    peer = this.transport.peer
    return peer.copy() if peer is not None else None


@server_iface.func("[static]incoming-client-exchange.finish")
def incoming_client_exchange_finish(cx: StoreState, this: IncomingClientExchange) -> Any:
    return finish_established(this)


INTERFACES = (server_iface,)
