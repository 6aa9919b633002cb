"""The transport between a TLS engine and its ciphertext streams, without sockets.

The client is CPython's ssl on memory BIOs (an independent implementation); the server is
the host's ``TlsEngine`` in a ``WasiIoTransport``. The ciphertext input is scripted so that the
order in which bytes and the end of input arrive is exact: races a socket test can only hit
by luck happen here every time.
"""

from __future__ import annotations

import ssl
from typing import Iterator

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from wasi_tls_host.tls.connection import Connection
from wasi_tls_host.tls.engine import RecordWatch, TlsEngine, TlsFailure
from wasi_tls_host.tls.p2 import PendingHandshake, Role, TlsInputStream, TlsOutputStream, WasiIoPort, WasiIoTransport
from wasi_tls_host.wasi.io import CallbackPollable, InputStream, Pollable, SinkOutput, StreamClosed, StreamFailed, Waits

END = object()  # the peer closed: read raises StreamClosed from here on


class ScriptedInput(InputStream):
    """Each read takes the next step: bytes, b"" (nothing there now) or END."""

    def __init__(self) -> None:
        self.steps: list[object] = []
        self.dropped = False

    def read(self, n: int) -> bytes:
        if not self.steps:
            return b""
        step = self.steps[0]
        if step is END:
            raise StreamClosed()
        self.steps.pop(0)
        assert isinstance(step, bytes)
        return step

    def subscribe(self) -> Pollable:
        return CallbackPollable(lambda: bool(self.steps), lambda waits: None)

    def drop(self) -> None:
        self.dropped = True


class Sink(SinkOutput):
    def __init__(self) -> None:
        self.data = bytearray()
        self.dropped = False
        super().__init__(self.data.extend)

    def drop(self) -> None:
        self.dropped = True


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_engine(ca: trustme.CA) -> TlsEngine:
    """A host server engine for "server.test", before its handshake."""
    leaf = ca.issue_cert("server.test")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()))
    context.use_privatekey(serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None))  # type: ignore[arg-type]
    return TlsEngine(context, server_side=True)


def established(ca: trustme.CA) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, TlsEngine]:
    """A CPython client and a host server engine after a handshake through memory."""
    server = server_engine(ca)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, from_client, server_hostname="server.test")
    for _ in range(10):
        try:
            client.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        server.feed(from_client.read())
        server.advance_handshake()
        to_client.write(server.take_output())
        if done and server.handshake_done:
            break
    assert server.handshake_done
    return client, to_client, from_client, server


def connected(ca: trustme.CA) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, WasiIoTransport, ScriptedInput, Sink]:
    """``established``, with the server engine in a transport over scripted streams."""
    client, to_client, from_client, engine = established(ca)
    cin, cout = ScriptedInput(), Sink()
    transport = WasiIoTransport(engine, WasiIoPort(cin, cout))
    transport.hand_over()
    return client, to_client, from_client, transport, cin, cout


@pytest.fixture
def pair(ca: trustme.CA) -> Iterator[tuple[ssl.SSLObject, ssl.MemoryBIO, WasiIoTransport, ScriptedInput, Sink]]:
    client, _, from_client, transport, cin, cout = connected(ca)
    yield client, from_client, transport, cin, cout


def test_the_end_of_input_after_a_partial_record_is_reported_at_once(pair) -> None:
    """Regression: the EOF came in the last pump of a readiness check, was fed into the
    engine and never read back, and the pollable then waited for nothing (a guest in
    poll slept until its own timer)."""
    client, from_client, transport, cin, _ = pair
    client.write(b"GET / HTTP/1.0\r\n")
    record = from_client.read()
    cin.steps = [record[:10], b"", END]  # part of a record, then the peer is gone
    stream = TlsInputStream(transport)
    assert stream.subscribe().ready()
    with pytest.raises(StreamFailed) as failed:
        stream.read(100)
    assert failed.value.error.code == "truncated"


def test_an_ended_input_never_waits_for_nothing(pair) -> None:
    _, _, transport, cin, _ = pair
    cin.steps = [END]
    transport.pump()
    assert transport.engine.input_ended
    waits = Waits()
    transport.add_waits(waits, want_input=True)
    assert waits.deadline is not None  # re-checked at once, not left without a wake-up


def test_the_transport_closes_when_the_last_of_its_users_lets_go(pair) -> None:
    _, _, transport, cin, cout = pair
    conn, rx, tx = Connection(transport), TlsInputStream(transport), TlsOutputStream(transport)
    for resource in (rx, conn):
        resource.drop()
        assert not cin.dropped and not cout.dropped
    tx.drop()
    assert cin.dropped and cout.dropped
    assert transport.closed


def test_a_handshake_that_never_finished_closes_its_transport_when_dropped(ca: trustme.CA) -> None:
    _, _, _, engine = established(ca)
    cin, cout = ScriptedInput(), Sink()
    handshake = PendingHandshake(WasiIoTransport(engine, WasiIoPort(cin, cout)))
    assert handshake.transport.users == {Role.HANDSHAKE}
    handshake.drop()
    assert cin.dropped and cout.dropped


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_record_watch_follows_framing_across_chunks(chunk: int) -> None:
    """Only a record header of a watched type counts, however the bytes are cut: a 23 inside
    a body (or a body longer than a chunk) is not a header."""
    def record(kind: int, body: bytes) -> bytes:
        return bytes([kind, 3, 3]) + len(body).to_bytes(2, "big") + body

    plaintext = record(22, bytes([23] * 300)) + record(21, b"\x02\x5a") + record(22, b"\x17\x17")
    watch = RecordWatch(frozenset({20, 23}))
    stream = plaintext + record(23, b"secret") + record(22, b"after")
    seen_at = None
    for i in range(0, len(stream), chunk):
        watch.scan(stream[i:i + chunk])
        if watch.seen and seen_at is None:
            seen_at = i + chunk
    assert seen_at is not None and seen_at > len(plaintext)  # not before the protected record's header
    assert seen_at <= len(plaintext) + 5 + chunk


def test_a_peer_that_half_closes_after_its_request_can_still_be_answered(ca: trustme.CA) -> None:
    """Regression: the end of input went into OpenSSL, which failed the whole connection at
    it; the answer then failed with ``internal: TLS connection failed: []``."""
    client, to_client, from_client, transport, cin, cout = connected(ca)
    rx, tx = TlsInputStream(transport), TlsOutputStream(transport)
    client.write(b"GET / HTTP/1.1\r\n\r\n")
    cin.steps = [from_client.read(), END]  # the request, then a TCP FIN without close_notify
    assert rx.read(100) == b"GET / HTTP/1.1\r\n\r\n"
    with pytest.raises(StreamFailed) as failed:
        rx.read(100)
    assert failed.value.error.code == "truncated"  # reading ends
    assert tx.check_write() > 0  # writing goes on
    tx.write(b"HTTP/1.1 200 OK\r\n\r\n")
    tx.flush()
    to_client.write(bytes(cout.data))
    assert client.read(100) == b"HTTP/1.1 200 OK\r\n\r\n"


def test_openssls_alert_for_a_bad_record_goes_out_before_the_failure_is_reported(ca: trustme.CA) -> None:
    """Regression: the failure was raised while reading, and the alert OpenSSL had queued
    never reached the peer (the guest then dropped the connection)."""
    client, to_client, from_client, transport, cin, cout = connected(ca)
    client.write(b"GET / HTTP/1.1\r\n\r\n")
    record = bytearray(from_client.read())
    record[-1] ^= 1  # the last byte of the AEAD tag
    cin.steps = [bytes(record)]
    with pytest.raises(StreamFailed) as failed:
        TlsInputStream(transport).read(100)
    assert failed.value.error.code == "decode-error"
    assert "the peer sent a record TLS does not allow" in str(failed.value)
    to_client.write(bytes(cout.data))  # what the client receives decrypts to the alert
    with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC"):
        client.read(100)


def test_a_write_after_a_failed_read_reports_that_failure(pair) -> None:
    """A read that failed after returning data keeps its failure for the next read; a write in
    between used to meet OpenSSL's reasonless error: ``internal: TLS connection failed: []``."""
    client, from_client, transport, cin, _ = pair
    client.write(b"first")
    good = from_client.read()
    client.write(b"second")
    bad = bytearray(from_client.read())
    bad[-1] ^= 1
    cin.steps = [good + bytes(bad)]
    rx, tx = TlsInputStream(transport), TlsOutputStream(transport)
    assert rx.read(100) == b"first"  # the bad record's failure is kept for the next read
    assert tx.check_write() > 0
    with pytest.raises(StreamFailed) as failed:
        tx.write(b"answer")
    assert failed.value.error.code == "decode-error", str(failed.value)
    assert "bad record mac" in str(failed.value) or "decryption failed" in str(failed.value)


def test_a_client_engine_names_and_checks_the_server_it_was_given_each_time() -> None:
    # The parsed and encoded name is kept per name (engine._verify_target): each engine
    # still sends its own, and a name that is no name is refused every time, not once.
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    for name in ("a.test", "b.test", "a.test", "127.0.0.1"):
        engine = TlsEngine(context, server_side=False, server_name=name)
        engine.advance_handshake()
        hello = engine.take_output()
        assert (name.encode() in hello) is (name != "127.0.0.1"), name  # no SNI for an address
    for _ in range(2):
        with pytest.raises(TlsFailure, match="is not a valid server name"):
            TlsEngine(context, server_side=False, server_name="a..test")


class CountingConnection:
    """An engine's OpenSSL connection, counting the calls that read ciphertext."""

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn
        self.reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    def recv_into(self, *args: object) -> int:
        self.reads += 1
        return self._conn.recv_into(*args)  # type: ignore[arg-type]


def test_an_engine_waiting_for_ciphertext_asks_openssl_again_only_once_more_came(ca: trustme.CA) -> None:
    """OpenSSL said "want read" and nothing came since: asking again costs an SSL error raised
    in pyOpenSSL for the same answer, so the engine does not; what comes next is still read
    whole, and the end of the peer's data is still a truncation."""
    client, to_client, from_client, engine = established(ca)
    counting = CountingConnection(engine.conn)
    engine.conn = counting  # type: ignore[assignment]
    buffer = memoryview(bytearray(100))
    assert engine.read_into(buffer) is None
    assert engine.read_into(buffer) is None and engine.read_into(buffer) is None
    assert counting.reads == 1
    client.write(b"hello")
    record = from_client.read()
    engine.feed(record[:3])  # a part of a record: OpenSSL is asked, and wants more
    assert engine.read_into(buffer) is None and engine.read_into(buffer) is None
    assert counting.reads == 2
    engine.feed(record[3:])
    assert engine.read_into(buffer) == 5 and bytes(buffer[:5]) == b"hello"
    assert engine.read_into(buffer) is None and engine.read_into(buffer) is None
    assert counting.reads == 4
    engine.feed_eof()
    with pytest.raises(TlsFailure) as truncated:
        engine.read_into(buffer)
    assert truncated.value.code == "truncated"


def test_a_handshake_waiting_for_ciphertext_asks_openssl_again_only_once_more_came(ca: trustme.CA) -> None:
    server = server_engine(ca)
    calls = []
    do_handshake = server.conn.do_handshake
    server.conn.do_handshake = lambda: calls.append(1) or do_handshake()  # type: ignore[method-assign]
    assert not server.advance_handshake() and not server.advance_handshake()
    assert len(calls) == 1
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    to_client, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, from_client, server_hostname="server.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    server.feed(from_client.read())
    assert not server.advance_handshake() and not server.advance_handshake()  # flight sent, Finished awaited
    assert len(calls) == 2
    to_client.write(server.take_output())
    client.do_handshake()
    server.feed(from_client.read())
    assert server.advance_handshake()
    assert len(calls) == 3
    server.feed_eof()
    assert server.advance_handshake()  # done is done, whatever comes after


def test_a_handshake_waiting_for_ciphertext_that_will_never_come_fails_as_closed(ca: trustme.CA) -> None:
    server = server_engine(ca)
    assert not server.advance_handshake()
    server.feed_eof()
    with pytest.raises(TlsFailure) as closed:
        server.advance_handshake()
    assert closed.value.code == "closed"
