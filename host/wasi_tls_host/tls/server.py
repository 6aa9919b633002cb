"""``wasi-tls-host:tls/server``: a TLS server handshake as resource state machines.

    accept(input, output)              -> incoming-client-hello   (host reads the hello)
    incoming-client-hello.accept(hello) -> incoming-client-exchange (OpenSSL takes over)
    incoming-client-exchange.finish()   -> (connection, input-stream, output-stream)

The ClientHello is read and parsed by the host before OpenSSL sees it (OpenSSL's own
client-hello callback is not reachable from pyOpenSSL); the guest's answer then selects the
identity, ALPN protocol, versions, suites and client authentication of a fresh OpenSSL
connection, and the buffered bytes are replayed into its memory BIO.

Each call that is not valid in the resource's state fails with ``invalid-state``; each
result that is not there yet fails with ``would-block``.
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
from ..wasi.io import InputStream, OutputStream, Pollable, StreamClosed, StreamFailed, CallbackPollable, Waits
from .ciphers import split_suites
from .client_hello import ALERT_FATAL, ClientHello, ClientHelloError, ClientHelloReader, alert_record
from .config import TlsConfig, tls_config
from .connection import failure_error, finish_established, peer_identity, require_established, tls_error
from .engine import BAD_CERTIFICATE, TlsEngine, TlsFailure
from .profiles import configure_resumption
from .identities import PrivateIdentity, PrivateIdentityHandle, PublicIdentity
from .transport import PendingHandshake, TlsTransport

log = logging.getLogger("wasi_tls_host.tls")

server_iface = Interface("wasi-tls-host:tls/server@0.1.0")

_VERSIONS = {0x0303: SSL.TLS1_2_VERSION, 0x0304: SSL.TLS1_3_VERSION}
_READ_CHUNK = 16384


def _version(value: int) -> int:
    try:
        return _VERSIONS[value]
    except KeyError:
        raise tls_error("invalid-argument", f"protocol version 0x{value:04x} is not supported (0x0303 = TLS 1.2, 0x0304 = TLS 1.3)") from None


class OutgoingServerHello(HostResource):
    def __init__(self, identity: PrivateIdentity) -> None:
        self.identity = identity
        self.alpn: bytes | None = None
        self.min_version = 0x0303
        self.max_version = 0x0304
        self.suites: list[int] | None = None
        self.client_auth: str | None = None  # None, "optional" or "required"


@dataclass(frozen=True)
class _ContextKey:
    identity: int
    min_version: int
    max_version: int
    suites: tuple[int, ...] | None
    client_auth: str | None


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
    cache = config.server_context_cache()
    key = _ContextKey(id(hello.identity), hello.min_version, hello.max_version,
                      tuple(hello.suites) if hello.suites is not None else None, hello.client_auth)
    ctx = cache.get(key)
    if ctx is not None:
        return ctx
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    if hello.suites is not None:
        config.policy.check_suites(hello.suites)
    config.policy.configure(ctx, policy_versions(config, hello.min_version, hello.max_version), hello.suites)
    configure_resumption(ctx, config.resumption, hashlib.sha256(repr(key).encode()).digest(), config.ticket_key_lifetime)
    identity = hello.identity
    ctx.use_certificate(identity.chain[0])
    for extra in identity.chain[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(identity.key)
    ctx.check_privatekey()
    if hello.client_auth is not None:
        anchors = config.client_anchors()
        if not anchors:
            raise tls_error("invalid-state", "client certificates were requested but the embedder configured no client CA (--client-ca)")
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
    cache[key] = ctx
    return ctx


class IncomingClientHello(HostResource):
    """Reads the client's first flight from the ciphertext input until it is complete."""

    def __init__(self, input: InputStream, output: OutputStream) -> None:
        self.input: InputStream | None = input
        self.output: OutputStream | None = output
        self._input_ready = input.subscribe()
        self.reader = ClientHelloReader()
        self.hello: ClientHello | None = None
        self.error: tuple[str, str] | None = None

    def poll(self) -> bool:
        """Read what is there; True once the hello is complete or failed."""
        if self.hello is not None or self.error is not None:
            return True
        if self.input is None:
            self.error = ("invalid-state", "this client hello was already answered")
            return True
        try:
            while self.hello is None:
                data = self.input.read(_READ_CHUNK)
                if not data:
                    return False
                self.hello = self.reader.feed(data)
        except ClientHelloError as e:
            self._fail(e.code, e.message, alert=e.alert)
        except StreamClosed:
            self._fail("closed", "the client closed the connection before sending a complete ClientHello")
        except StreamFailed as e:
            self._fail("closed", f"reading the ClientHello failed: {e}")
        return True

    def _fail(self, code: str, message: str, alert: int | None = None) -> None:
        self.error = (code, message)
        log.info("TLS server: %s", message)
        if alert is not None:
            self.send_alert(alert)

    def send_alert(self, description: int) -> None:
        """Best effort: a fatal alert to the client, then both streams are closed."""
        if self.output is not None:
            try:
                if self.output.check_write() >= 7:
                    self.output.write(alert_record(ALERT_FATAL, description))
                    self.output.flush()
            except (StreamClosed, StreamFailed):
                pass
        self.close_streams()

    def close_streams(self) -> None:
        if self.input is not None and self.output is not None:
            self._input_ready.drop()
            self.input.drop()
            self.output.drop()
        self.input = self.output = None

    def waits(self, waits: Waits) -> None:
        self._input_ready.add_waits(waits)

    def require(self) -> ClientHello:
        self.poll()
        if self.error is not None:
            raise tls_error(*self.error)
        if self.hello is None:
            raise tls_error("would-block", "the ClientHello has not arrived yet: wait on subscribe()")
        return self.hello

    def drop(self) -> None:
        self.close_streams()


def _server_failure(failure: TlsFailure) -> TlsFailure:
    """Failures only a server meets, in the words of the interface."""
    if "peer did not return a certificate" in failure.message:
        # OpenSSL says handshake failure; for the guest this is a missing certificate.
        return TlsFailure(BAD_CERTIFICATE, "TLS handshake failed: the client sent no certificate, but this server requires one (mutual TLS)")
    return failure


class IncomingClientExchange(PendingHandshake):
    """The rest of the handshake, run by OpenSSL over the replayed hello."""

    def __init__(self, transport: TlsTransport, config: TlsConfig) -> None:
        super().__init__(transport, config.on_handshake)

    def explain(self, failure: TlsFailure) -> TlsFailure:
        return _server_failure(failure)


server_iface.resource("incoming-client-hello", IncomingClientHello)
server_iface.resource("outgoing-server-hello", OutgoingServerHello)
server_iface.resource("incoming-client-exchange", IncomingClientExchange)


@server_iface.func("accept")
def accept(cx: StoreState, input: InputStream, output: OutputStream) -> IncomingClientHello:
    hello = IncomingClientHello(input, output)
    hello.poll()
    return hello


@server_iface.func("[method]incoming-client-hello.subscribe")
def incoming_client_hello_subscribe(cx: StoreState, this: IncomingClientHello) -> Pollable:
    return CallbackPollable(this.poll, this.waits)


@server_iface.func("[method]incoming-client-hello.server-name")
def incoming_client_hello_server_name(cx: StoreState, this: IncomingClientHello) -> str | None:
    return this.require().server_name


@server_iface.func("[method]incoming-client-hello.alpn-ids")
def incoming_client_hello_alpn_ids(cx: StoreState, this: IncomingClientHello) -> list[bytes]:
    return list(this.require().alpn_protocols)


@server_iface.func("[method]incoming-client-hello.protocol-versions")
def incoming_client_hello_protocol_versions(cx: StoreState, this: IncomingClientHello) -> list[int]:
    hello = this.require()
    return list(hello.supported_versions) or [hello.legacy_version]


@server_iface.func("[method]incoming-client-hello.cipher-suites")
def incoming_client_hello_cipher_suites(cx: StoreState, this: IncomingClientHello) -> list[int]:
    return list(this.require().cipher_suites)


@server_iface.func("[method]incoming-client-hello.signature-schemes")
def incoming_client_hello_signature_schemes(cx: StoreState, this: IncomingClientHello) -> list[int]:
    return list(this.require().signature_algorithms)


@server_iface.func("[static]incoming-client-hello.accept")
def incoming_client_hello_accept(cx: StoreState, this: IncomingClientHello, response: OutgoingServerHello) -> IncomingClientExchange:
    hello = this.require()
    if response.alpn is not None and response.alpn not in hello.alpn_protocols:
        this.send_alert(120)  # no_application_protocol
        raise tls_error("invalid-argument", f"ALPN id {response.alpn!r} was not offered by the client (it offered {hello.alpn_protocols})")
    config = tls_config(cx)
    try:
        context = server_context(config, response)
    except (SSL.Error, ValueError) as e:
        this.send_alert(80)  # internal_error
        raise tls_error("invalid-argument", f"cannot use this answer: {e}") from None
    assert this.input is not None and this.output is not None
    engine = TlsEngine(context, server_side=True)
    engine.conn.set_app_data(response.alpn)
    engine.feed(this.reader.buffered())
    this._input_ready.drop()
    transport = TlsTransport(engine, this.input, this.output)
    this.input = this.output = None  # the transport owns the streams now
    exchange = IncomingClientExchange(transport, config)
    exchange.poll()
    return exchange


@server_iface.func("[static]incoming-client-hello.reject")
def incoming_client_hello_reject(cx: StoreState, this: IncomingClientHello, alert: int) -> None:
    this.send_alert(alert)


@server_iface.func("[constructor]outgoing-server-hello")
def outgoing_server_hello_new(cx: StoreState, identity: PrivateIdentityHandle) -> OutgoingServerHello:
    return OutgoingServerHello(identity.identity)


@server_iface.func("[method]outgoing-server-hello.set-alpn-id")
def outgoing_server_hello_set_alpn_id(cx: StoreState, this: OutgoingServerHello, id: bytes) -> None:
    if not 0 < len(id) < 256:
        raise tls_error("invalid-argument", "an ALPN id is 1 to 255 bytes")
    this.alpn = bytes(id)


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
    require_established(this)
    return peer_identity(this.transport)


@server_iface.func("[static]incoming-client-exchange.finish")
def incoming_client_exchange_finish(cx: StoreState, this: IncomingClientExchange) -> Any:
    return finish_established(this)


INTERFACES = (server_iface,)
