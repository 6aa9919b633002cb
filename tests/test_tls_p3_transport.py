"""The WASI 0.3 TLS transport (tls/p3.py) without a guest: its streams are driven
from Python through the same rendezvous a guest's stream ends use, so each way a guest can
treat them (read slowly, drop one mid-handshake, never write) happens here exactly.

Peers are real: CPython ``ssl`` servers on loopback threads (tests/tls_peers.py), reached
through the TCP stand-in ``devtools.tcp_p3.TcpSocket``.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import trustme

from conftest import open_fds, without_gc
from devtools.tcp_p3 import TcpSocket
from tls_peers import PeerServer, Pki, echo, send_body, stall
from wasi_tls_host.runtime.scheduler import Event, Scheduler
from wasi_tls_host.runtime.streams import FutureReader, Stream, StreamReader, StreamWriter, new_stream
from wasi_tls_host.runtime.values import Err, Ok
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.tls.engine import TlsEngine, TlsFailure
from wasi_tls_host.tls.limits import TlsLimits
from wasi_tls_host.tls.states import CONNECT, HandshakeState
from wasi_tls_host.tls.transport import HandshakeDeadline
from wasi_tls_host.tls.p3 import PlaintextIn, PlaintextOut, StreamPort, StreamTransport

WAIT = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def config(pki: Pki) -> TlsConfig:
    return TlsConfig(trust=[pki.ca_pem], use_system_roots=False)


_OPEN: list[Scheduler] = []


@pytest.fixture(autouse=True)
def close_schedulers() -> Iterator[None]:
    """Whatever a test left running is cancelled (its sockets close) when it ends."""
    yield
    while _OPEN:
        _OPEN.pop().close()


@dataclass
class Client:
    """A client connection as a guest would hold it: the plaintext it writes and reads."""

    scheduler: Scheduler
    transport: StreamTransport
    plaintext: StreamWriter  # what the "guest" sends
    received: StreamReader  # what it reads
    receive_outcome: FutureReader
    send_outcome: FutureReader

    def run_until(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + WAIT
        self.scheduler.wait_until(lambda: done() or time.monotonic() > deadline, what)
        assert done(), f"timed out: {what}"

    def outcome(self, reader: FutureReader) -> Any:
        task = self.scheduler.spawn(reader.read())
        self.run_until(lambda: task.done, "a future's value")
        return task.result

    def read_all(self) -> bytes:
        task = self.scheduler.spawn(self.received.read_all())
        self.run_until(lambda: task.done, "the plaintext's end")
        assert task.error is None, task.error
        return task.result  # type: ignore[no-any-return]

    def finish(self) -> None:
        """Run until every task (the connection's, the socket's) has ended, then close."""
        self.run_until(lambda: self.scheduler.pending == 0, "every task's end")
        self.scheduler.close()

    def send(self, data: bytes, *, end: bool = False) -> None:
        async def write() -> None:
            await self.plaintext.write(data)
            if end:
                self.plaintext.close()

        task = self.scheduler.spawn(write())
        self.run_until(lambda: task.done, "the plaintext written")


def connect(config: TlsConfig, port: int, name: str = "localhost", *, outgoing: Any = None,
            deadline: HandshakeDeadline | None = None) -> Client:
    """A client connection to 127.0.0.1:port whose ciphertext goes through a real socket
    (or, with ``outgoing``, to whatever that function does with the outgoing stream)."""
    scheduler = Scheduler()
    _OPEN.append(scheduler)
    wake = Event()
    port_ = StreamPort(wake, "test ciphertext")
    tcp = TcpSocket(socket.create_connection(("127.0.0.1", port), timeout=WAIT), scheduler)
    tcp.send(port_.outgoing if outgoing is None else outgoing(port_.outgoing, scheduler))
    port_.attach_incoming(tcp.receive())
    tcp.drop()  # the streams go on
    receiver = PlaintextOut(wake, "test plaintext")
    stream, writer = new_stream()
    sender = PlaintextIn(stream, "test plaintext")
    engine = TlsEngine(config.client_context(), server_side=False, server_name=name)
    transport = StreamTransport(engine, port_, error_value=lambda f: f, receiver=receiver, sender=sender)
    transport.begin_handshake(CONNECT, deadline=deadline)
    transport.start(scheduler)
    return Client(scheduler, transport, writer, StreamReader(receiver.stream, is_bytes=True),
                  FutureReader(receiver.future), FutureReader(sender.future))


def test_echo_and_close_notify_both_ways(config, peers, pki) -> None:
    server = PeerServer(echo, pki.leaf("localhost").server_context())
    peers.append(server)
    client = connect(config, server.port)
    client.run_until(lambda: client.transport.settled.is_set, "the handshake")
    assert client.transport.state is HandshakeState.ESTABLISHED
    client.send(b"hello over streams" * 1000, end=True)  # then close_notify
    assert client.read_all() == b"hello over streams" * 1000  # the echo, up to the server's close_notify
    assert client.outcome(client.receive_outcome) == Ok(None)
    assert client.outcome(client.send_outcome) == Ok(None)
    client.run_until(lambda: client.transport.finished, "the connection's end")
    assert server.errors == []


def test_the_send_future_resolves_only_after_the_socket_sent_everything_and_its_fin(config, peers, pki) -> None:
    """On a socket written directly (accept-socket's connections), the sender's future says
    ok only after the socket's last byte and FIN went out: the binding drops the socket's own
    send future unread when it closes a server connection, trusting this order."""
    server = PeerServer(echo, pki.leaf("localhost").server_context())
    peers.append(server)
    client = connect(config, server.port)
    client.run_until(lambda: client.transport.settled.is_set, "the handshake")
    port, sender = client.transport.port, client.transport.sender
    assert port.sink is not None and sender is not None
    order: list[str] = []

    class Recorded:
        """The end as it was, saying when it is finished."""

        def __init__(self, end: Any, what: str, method: str) -> None:
            self.end, self.what, self.method = end, what, method

        def __getattr__(self, name: str) -> Any:
            attr = getattr(self.end, name)
            if name != self.method:
                return attr

            def record(*args: Any) -> Any:
                order.append(f"{self.what}{args}")
                return attr(*args)
            return record

    port.sink = Recorded(port.sink, "socket: FIN", "close")
    sender.outcome = Recorded(sender.outcome, "connection's send future: ", "write")  # type: ignore[assignment]
    client.send(b"last words" * 3000, end=True)
    assert client.read_all() == b"last words" * 3000
    assert client.outcome(client.send_outcome) == Ok(None)
    assert order[:2] == ["socket: FIN()", f"connection's send future: {(Ok(None),)}"]  # (a second close does nothing)
    client.run_until(lambda: client.transport.finished, "the connection's end")
    assert server.errors == []


def test_the_handshake_s_waiter_runs_before_the_next_step_and_loses_nothing(config, peers, pki, monkeypatch) -> None:
    """Once the handshake is established, the call waiting for it (connect, establish) runs
    before the connection's next step (that step then carries what the guest did next,
    instead of running once for nothing before it); what the peer sent right after its
    handshake is still all delivered."""
    server = PeerServer(send_body(b"early" * 20_000, close_notify=True), pki.leaf("localhost").server_context())
    peers.append(server)
    steps_established: list[int] = [0]  # steps begun with the handshake established
    step = StreamTransport.step

    def counted(self: StreamTransport) -> bool:
        if self.state is HandshakeState.ESTABLISHED:
            steps_established[0] += 1
        return step(self)

    monkeypatch.setattr(StreamTransport, "step", counted)
    client = connect(config, server.port)  # (on a fast loopback the handshake may end in here)
    transport = client.transport
    seen: list[int] = []

    async def waiter() -> None:
        await transport.settled
        seen.append(steps_established[0])

    client.scheduler.spawn(waiter())
    client.run_until(lambda: bool(seen), "the handshake's waiter")
    assert transport.state is HandshakeState.ESTABLISHED
    assert seen == [0]
    assert client.read_all() == b"early" * 20_000
    assert client.outcome(client.receive_outcome) == Ok(None)
    client.send(b"", end=True)
    assert client.outcome(client.send_outcome) == Ok(None)
    client.run_until(lambda: transport.finished, "the connection's end")
    assert server.errors == []


def test_an_untrusted_server_fails_the_handshake_and_both_futures(peers, pki) -> None:
    server = PeerServer(echo, pki.leaf("localhost", ca=trustme.CA()).server_context())
    peers.append(server)
    client = connect(TlsConfig(trust=[pki.ca_pem], use_system_roots=False), server.port)
    client.run_until(lambda: client.transport.settled.is_set, "the handshake")
    assert client.transport.state is HandshakeState.FAILED
    failure = client.transport.failure
    assert failure is not None and failure.code == "unknown-issuer", failure
    assert "unable to get local issuer certificate" in failure.message
    for reader in (client.receive_outcome, client.send_outcome):
        outcome = client.outcome(reader)
        assert isinstance(outcome, Err) and outcome.value.code == "unknown-issuer"
    assert client.read_all() == b""
    client.run_until(lambda: client.transport.finished, "the connection's end")
    server.wait_idle()
    assert any("unknown ca" in e.lower() for e in server.errors), server.errors  # the server got the alert


def test_data_ending_without_close_notify_is_truncation_not_an_end(config, peers, pki) -> None:
    server = PeerServer(send_body(b"x" * 100_000, close_notify=False), pki.leaf("localhost").server_context())
    peers.append(server)
    client = connect(config, server.port)
    assert client.read_all() == b"x" * 100_000  # what came is delivered...
    outcome = client.outcome(client.receive_outcome)
    assert isinstance(outcome, Err) and outcome.value.code == "truncated", outcome  # ...and the end is an error
    assert "without close_notify" in outcome.value.message


def test_dropping_the_outgoing_ciphertext_mid_handshake_fails_it(config, peers, pki) -> None:
    """The guest reads the ClientHello, forwards it, then drops the stream: the handshake
    cannot go on and says why."""
    server = PeerServer(echo, pki.leaf("localhost").server_context())
    peers.append(server)
    held: list[StreamReader] = []

    def forward_first_flight(outgoing: Stream, scheduler: Scheduler) -> Stream:
        reader = StreamReader(outgoing, is_bytes=True)
        held.append(reader)
        relay, writer = new_stream()

        async def once() -> None:
            await writer.write(await reader.read(1 << 16))  # the ClientHello
            reader.close()  # then the guest lets go of the stream the host writes into
            writer.close()  # and of the socket's

        scheduler.spawn(once())
        return relay

    client = connect(config, server.port, outgoing=forward_first_flight)
    client.run_until(lambda: client.transport.settled.is_set, "the handshake")
    failure = client.transport.failure
    assert client.transport.state is HandshakeState.FAILED and failure is not None
    assert failure.code == "closed" and "dropped the stream of ciphertext to send" in failure.message, failure


def test_the_deadline_ends_a_stalled_handshake(config, peers) -> None:
    server = PeerServer(stall)
    peers.append(server)
    started = time.monotonic()
    client = connect(config, server.port, deadline=HandshakeDeadline(time.monotonic_ns() + 300_000_000, 0.3))
    client.run_until(lambda: client.transport.settled.is_set, "the handshake")
    assert 0.25 < time.monotonic() - started < WAIT
    failure = client.transport.failure
    assert failure is not None and failure.code == "closed" and "timed out" in failure.message


def test_nothing_leaks_without_the_garbage_collector(config, peers, pki) -> None:
    good = PeerServer(echo, pki.leaf("localhost").server_context())
    bad = PeerServer(echo, pki.leaf("localhost", ca=trustme.CA()).server_context())
    peers.extend([good, bad])
    with without_gc():
        before = -1
        for round in range(6):
            if round == 1:
                before = open_fds()  # after a warm-up round
            client = connect(config, good.port)
            client.send(b"ping", end=True)
            assert client.read_all() == b"ping"
            client.finish()
            failed = connect(config, bad.port)
            failed.finish()
            assert failed.transport.failure is not None
        good.wait_idle()
        bad.wait_idle()
        assert open_fds() <= before


class ScriptedSource:
    """A socket read directly (``DirectSource``): hands out ``chunks`` in turn (b"": the
    kernel has nothing now), counting the reads."""

    fd = -1

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.reads = 0

    def recv(self, limit: int) -> bytes | None:
        self.reads += 1
        chunk = self.chunks.pop(0) if self.chunks else b""
        assert len(chunk) <= limit
        return chunk

    def stop(self) -> None:
        self.chunks.clear()


def test_a_short_direct_read_is_the_last_of_its_step() -> None:
    """A read of the socket that got less than it asked for took all the kernel had: the
    next read in the same step finds nothing without a system call, and the connection
    waits for the socket to be readable (``want_read``); the next step reads again. A send
    that failed has the next read ask the kernel (the peer's last words before it left)."""
    port = StreamPort(Event(), "test")
    try:
        port.source = source = ScriptedSource(b"abc", b"def", b"x" * 10, b"yz", b"late alert")
        assert port.receive(100) == b"abc" and port.want_read
        assert port.receive(100) == b"" and port.want_read
        assert source.reads == 1
        port.begin_step()
        assert not port.want_read
        assert port.receive(100) == b"def" and source.reads == 2
        port.begin_step()
        assert port.receive(10) == b"x" * 10 and not port.want_read  # as much as asked: maybe more
        assert port.receive(10) == b"yz" and source.reads == 4 and port.want_read

        class Refusing:
            fd = -1

            def send(self, data: Any) -> int:
                raise ConnectionResetError(104, "Connection reset by peer")

            def close(self) -> None:
                pass

        port.sink = Refusing()
        with pytest.raises(Exception, match="sending failed"):
            port.send(bytearray(b"flight"))
        assert port.receive(100) == b"late alert" and source.reads == 5
    finally:
        port.sink = None
        port.close()


def test_a_client_hello_summary_says_what_its_three_calls_say() -> None:
    """incoming-client-hello.summary (wasi-tls-host:tls@0.2.0) answers in one call what
    server-name, alpn-ids and protocol-versions do, for a real ClientHello."""
    from wasi_tls_host.tls.server_p3 import IncomingClientHelloP3, server_iface_p3

    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="a.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    scheduler = Scheduler()
    _OPEN.append(scheduler)
    stream, writer = new_stream()
    hello = IncomingClientHelloP3(StreamPort(Event(), "test ciphertext", stream), max_size=None, deadline=None)
    hello.start(scheduler)

    def ask(call: str) -> Any:
        task = scheduler.spawn(server_iface_p3.funcs[f"[method]incoming-client-hello.{call}"].impl(None, hello))
        deadline = time.monotonic() + WAIT
        scheduler.wait_until(lambda: task.done or time.monotonic() > deadline, call)
        assert task.done and task.error is None, (call, task.error)
        return task.result

    scheduler.spawn(writer.write(outgoing.read()))
    summary = ask("summary")
    assert summary == {"server_name": "a.test", "alpn_ids": [b"h2", b"http/1.1"], "protocol_versions": [0x0304, 0x0303]}
    assert summary == {"server_name": ask("server-name"), "alpn_ids": ask("alpn-ids"), "protocol_versions": ask("protocol-versions")}
    hello.drop()
    writer.close()
