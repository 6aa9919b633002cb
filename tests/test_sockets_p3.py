"""wasi:sockets@0.3.0 on the core runtime, with real sockets on 127.0.0.1 and CPython peers.

The hostile WAT guest (``sockets_p3_hostile.wat``) is in the hostile suite:
``tests/test_hostile_wasi_p3.py``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from conftest import GuestRun, free_port, open_fds
from sockets_util import (
    TIMEOUT,
    AcceptAndClose,
    GuestThread,
    ServerThread,
    echo_until_eof,
    eof_or_reset,
    has_ipv6_loopback,
    loopback_policy,
)
from wasi_tls_host import Host, NetworkPolicy, WasiConfig
from wasi_tls_host.runtime.limits import GuestLimits

@pytest.fixture(scope="module")
def core_host() -> Iterator[Host]:
    with Host(runtime="core") as host:
        yield host


# --- componentize-py guests: sockets_probe_p3, echo_server_p3 ---------------------------------

PROBE = "sockets_probe_p3"
needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")


@pytest.fixture(scope="module")
def probe_wasm(core_host: Host, guest_path):
    wasm = guest_path(PROBE)
    core_host.load(wasm)
    return wasm


@pytest.fixture
def probe(core_host: Host, probe_wasm):
    def run(*args: str, policy: NetworkPolicy | None = None, limits: GuestLimits | None = None) -> GuestRun:
        out, err = bytearray(), bytearray()
        config = WasiConfig(args=[PROBE, *args], stdout=out, stderr=err,
                            network=policy if policy is not None else loopback_policy())
        if limits is not None:
            config.limits = limits
        result = core_host.run(probe_wasm, config)
        return GuestRun(result.exit_code, bytes(out), bytes(err), result.trap)

    return run


@pytest.mark.parametrize("family", [socket.AF_INET, pytest.param(socket.AF_INET6, marks=needs_ipv6)], ids=["ipv4", "ipv6"])
def test_echo_client_against_a_cpython_server(probe, family) -> None:
    server = ServerThread(echo_until_eof, family)
    addr = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    message = "hello over wasi:sockets@0.3.0 " * 500
    run = probe("echo-client", addr, str(server.port), message)
    server.close()
    shown = f"[{addr}]:{server.port}" if family == socket.AF_INET6 else f"{addr}:{server.port}"
    assert run.out.splitlines() == [
        f"local {'ipv6' if family == socket.AF_INET6 else 'ipv4'} remote {shown}",
        f"echo: {message}",
        "send ok receive ok",
    ], run.err


def test_download_reads_every_byte_until_the_peers_fin(probe) -> None:
    payload = bytes(range(256)) * 4096 * 5  # 5 MiB
    server = ServerThread(lambda conn: conn.sendall(payload))
    run = probe("download", "127.0.0.1", str(server.port))
    server.close()
    assert run.out == f"bytes {len(payload)} end ok\n", run.err


def test_upload_arrives_whole_then_fin(probe) -> None:
    received: list[int] = []

    def count(conn: socket.socket) -> None:
        total = 0
        while chunk := conn.recv(1 << 20):
            total += len(chunk)
        received.append(total)

    server = ServerThread(count)
    run = probe("upload", "127.0.0.1", str(server.port), str(3 << 20 | 123))
    server.close()
    assert run.out == f"sent {3 << 20 | 123} end ok\n", run.err
    assert received == [3 << 20 | 123]


def test_connection_refused(probe) -> None:
    assert probe("connect", "127.0.0.1", str(free_port())).out == "connect error connection-refused\n"


def test_connect_and_listen_outside_the_policy_are_denied(probe) -> None:
    port = free_port()
    policy = NetworkPolicy().allow_connect("127.0.0.1:1-2")
    assert probe("connect", "127.0.0.1", str(port), policy=policy).out == "connect error access-denied\n"
    assert probe("bind", "127.0.0.1", str(port), policy=policy).out == "bind error access-denied\n"


def test_max_sockets_is_other_with_words(probe) -> None:
    run = probe("hoard", "10", limits=GuestLimits(max_sockets=3))
    assert run.out.splitlines() == ["holding 3 then other", "after closing: created one more"], run.err


@pytest.mark.parametrize("splice", [False, True], ids=["through-the-guest", "spliced-by-the-host"])
def test_guest_echo_server_serves_concurrent_clients(core_host: Host, guest_path, splice: bool) -> None:
    clients = 5
    port = free_port()
    args = [str(port), "--count", str(clients), *(["--splice"] if splice else [])]
    with GuestThread(core_host, guest_path("echo_server_p3"), args, loopback_policy()) as guest:
        guest.wait_for(f"listening on 127.0.0.1:{port}")
        conns = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(clients)]
        try:
            for i, c in enumerate(reversed(conns)):  # all connected before any finishes
                c.sendall(f"client {i} says hi ".encode() * 1000)
                c.shutdown(socket.SHUT_WR)
            for i, c in enumerate(reversed(conns)):
                got = bytearray()
                while chunk := c.recv(65536):
                    got += chunk
                assert got == f"client {i} says hi ".encode() * 1000
        finally:
            for c in conns:
                c.close()
        assert guest.join().exit_code == 0
    assert guest.out.splitlines()[-1] == f"served {clients}"


@pytest.mark.parametrize("addr", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)], ids=["ipv4", "ipv6"])
def test_udp_echo_pair(core_host: Host, probe_wasm, probe, addr: str) -> None:
    port = free_port(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    with GuestThread(core_host, probe_wasm, ["udp-echo", addr, str(port), "3"], loopback_policy()) as server:
        server.wait_for("ready")
        run = probe("udp-client", addr, str(port), "one", "two", "three")
        assert server.join().exit_code == 0
    shown = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    assert run.out.splitlines() == [f"remote {shown}", *(f"reply: {m} from {shown}" for m in ("one", "two", "three"))]
    assert server.out.splitlines()[-1] == "udp echoed 3"


def test_lookups(probe) -> None:
    addresses = [line.split()[1] for line in probe("lookup", "localhost").out.splitlines()]
    assert "127.0.0.1" in addresses and set(addresses) <= {"127.0.0.1", "::1"}
    no_dns = loopback_policy()
    no_dns.dns = False
    assert probe("lookup", "::1", policy=no_dns).out == "address ::1\n"
    assert probe("lookup", "localhost", policy=no_dns).out == "error access-denied\n"
    assert probe("lookup", "bad name").out == "error invalid-argument\n"
    assert probe("lookup", "no-such-host.invalid").out == "error name-unresolvable\n"


def test_wrong_state_calls_and_options(probe) -> None:
    """A few lines of ``states`` (test_runtime_differential.py compares all of them with the
    wasmtime CLI)."""
    run = probe("states", "127.0.0.1")
    got = {k: v for k, _, v in (line.partition(" ") for line in run.out.splitlines())}
    assert got["bind-twice"] == "invalid-state" and got["listen-twice"] == "invalid-state"
    assert got["send"] == "ok send-again invalid-state"
    assert got["receive-again"] == "b'' invalid-state"
    assert got["connect-refused"] == "connection-refused"
    assert got["options-after-failure"] == "connection-refused connection-refused"
    assert got["rcvbuf"] == "invalid-argument ok 65536"
    assert got["udp-send-too-large"] == "datagram-too-large"
    assert run.out.endswith("done\n"), run.err


def test_thousand_connections_leave_no_descriptor(probe, no_gc) -> None:
    with AcceptAndClose() as server:
        assert probe("churn", "127.0.0.1", str(server.port), "1").out == "churned 1\n"
        before = open_fds()
        assert probe("churn", "127.0.0.1", str(server.port), "1000").out == "churned 1000\n"
        assert open_fds() <= before


def test_dropping_the_instance_closes_everything(core_host: Host, guest_path, no_gc) -> None:
    wasm = guest_path("echo_server_p3")
    core_host.load(wasm)
    before = open_fds()
    port = free_port()
    with GuestThread(core_host, wasm, [str(port)], loopback_policy()) as guest:
        guest.wait_for("listening on")
        conn = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        conn.sendall(b"ping")
        assert conn.recv(4) == b"ping"  # an open connection, streams and tasks at work
        guest.stop()
    assert eof_or_reset(conn) == b""
    conn.close()
    assert open_fds() <= before


# --- the engine on its own ------------------------------------------------------------------------


def test_accepted_and_connected_engine_sockets_have_nagle_off() -> None:
    """Both WASI versions get sockets that send small writes at once (TCP_NODELAY)."""
    from wasi_tls_host.runtime.values import Variant
    from wasi_tls_host.wasi.context import WasiCtx
    from wasi_tls_host.wasi.sockets import tcp

    ctx = WasiCtx(WasiConfig(network=loopback_policy()))
    try:
        listener = tcp.TcpSocket.create(ctx, "ipv4")
        listener.bind(ctx, Variant("ipv4", {"port": 0, "address": (127, 0, 0, 1)}))
        listener.listen(ctx)
        port = listener.local_address().port
        client = tcp.TcpSocket.create(ctx, "ipv4")
        client.start_connect(ctx, Variant("ipv4", {"port": port, "address": (127, 0, 0, 1)}))
        accepted = None
        deadline = time.monotonic() + TIMEOUT
        while accepted is None and time.monotonic() < deadline:
            accepted = listener.accept(ctx)
        assert accepted is not None
        while not client.connect_done():
            assert time.monotonic() < deadline
        client.finish_connect()
        for sock in (accepted, client):
            assert sock.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            sock.release()
        listener.release()
    finally:
        ctx.close()


def test_a_receive_stream_names_its_tcp_connection_for_the_layers_above(core_host: Host, guest_path) -> None:
    """``p3.connection_of(stream)``: what TLS over 0.3 streams finds beneath a guest's
    ciphertext stream (the connection's access-log record, its readiness)."""
    from wasi_tls_host.runtime.binding import OUTGOING_VALUE_HOOKS
    from wasi_tls_host.wasi.sockets import p3

    seen: list[tuple[object, str | None]] = []

    def look(name: str, value: object) -> None:
        if name.endswith("[method]tcp-socket.receive"):
            conn = p3.connection_of(value[0])  # type: ignore[index]
            seen.append((conn, conn.record.peer if conn is not None and conn.record is not None else None))

    port = free_port()
    OUTGOING_VALUE_HOOKS.append(look)
    try:
        with GuestThread(core_host, guest_path("echo_server_p3"), [str(port), "--count", "1"], loopback_policy()) as guest:
            guest.wait_for("listening on")
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
                c.sendall(b"hi")
                c.shutdown(socket.SHUT_WR)
                assert c.recv(10) == b"hi"
                local = c.getsockname()
            assert guest.join().exit_code == 0
    finally:
        OUTGOING_VALUE_HOOKS.remove(look)
    assert len(seen) == 1 and isinstance(seen[0][0], p3.tcp.TcpConnection)
    assert seen[0][1] == f"{local[0]}:{local[1]}"


# --- a receive stream's task, at the host functions ---------------------------------------------


class _ConnectedSocket:
    """A store with a 0.3 TCP socket connected to a loopback listener (the peer), as a guest
    would hold it after ``tcp-socket.connect``; closing it closes the store."""

    def __init__(self) -> None:
        from wasi_tls_host.runtime.store import StoreState
        from wasi_tls_host.runtime.values import Variant
        from wasi_tls_host.wasi.context import WasiCtx
        from wasi_tls_host.wasi.sockets import p3

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.cx = StoreState(WasiCtx(WasiConfig(network=loopback_policy())))
        self.sock = p3.tcp_create(self.cx, "ipv4")
        address = Variant("ipv4", {"port": self.listener.getsockname()[1], "address": (127, 0, 0, 1)})
        self.run(p3.tcp_connect(self.cx, self.sock, address), "the connect")
        self.peer, _ = self.listener.accept()

    def run(self, coro, what: str):
        task = self.cx.scheduler.spawn(coro)
        deadline = time.monotonic() + TIMEOUT
        self.cx.scheduler.wait_until(lambda: task.done or time.monotonic() > deadline, what)
        assert task.done, f"timed out: {what}"
        assert task.error is None, task.error
        return task.result

    def close(self) -> None:
        self.sock.drop()
        self.cx.close()
        self.peer.close()
        self.listener.close()


@pytest.fixture
def connected() -> Iterator[_ConnectedSocket]:
    conn = _ConnectedSocket()
    yield conn
    conn.close()


def test_a_receive_stream_read_by_the_host_delivers_and_ends_at_the_fin(connected: _ConnectedSocket, no_gc) -> None:
    """The stream's task starts at its first read (not at receive): what the peer sent, then
    the end and an ok future."""
    from wasi_tls_host.runtime.streams import FutureReader, StreamReader
    from wasi_tls_host.wasi.sockets import p3

    stream, future = p3.tcp_receive(connected.cx, connected.sock)
    connected.peer.sendall(b"hello")
    connected.peer.shutdown(socket.SHUT_WR)
    assert connected.run(StreamReader(stream, is_bytes=True).read_all(), "the stream's end") == b"hello"
    assert connected.run(FutureReader(future).read(), "the future") is None


def test_a_receive_stream_dropped_unread_ends_ok_and_lets_the_socket_go(connected: _ConnectedSocket, no_gc) -> None:
    """Dropped before anything read it: its task starts then, ends at once (ok), and the
    socket closes with the socket resource (the peer sees the end)."""
    from wasi_tls_host.runtime.streams import FutureReader
    from wasi_tls_host.wasi.sockets import p3

    before = open_fds()
    stream, future = p3.tcp_receive(connected.cx, connected.sock)
    stream.drop()
    assert connected.run(FutureReader(future).read(), "the future") is None
    assert p3.connection_of(stream) is None  # its task ended: nothing refers to the connection
    connected.sock.drop()
    connected.peer.settimeout(TIMEOUT)
    assert connected.peer.recv(10) == b""
    assert open_fds() < before


def test_a_receive_stream_taken_over_by_the_host_never_ran_a_task(connected: _ConnectedSocket, no_gc) -> None:
    """A consumer taking the socket over (TLS) before anyone read the stream: the socket is
    read directly; the stream's task never ran, and its end is the consumer's to say."""
    from wasi_tls_host.runtime.streams import FutureReader
    from wasi_tls_host.wasi.sockets import p3

    stream, future = p3.tcp_receive(connected.cx, connected.sock)
    assert connected.cx.scheduler.pending == 0
    source = p3.take_receive(stream)
    assert source is not None and p3.take_receive(stream) is None
    connected.peer.sendall(b"direct")
    deadline = time.monotonic() + TIMEOUT
    got = b""
    while got != b"direct" and time.monotonic() < deadline:
        got += source.recv(100) or b""
    assert got == b"direct"
    stream.drop()  # the guest lets the stream go: nothing starts for it now
    assert connected.cx.scheduler.pending == 0
    source.stop()
    assert connected.run(FutureReader(future).read(), "the future") is None


def test_a_store_closing_with_a_receive_stream_never_read_closes_its_socket(no_gc) -> None:
    """A guest that asked for the stream, never read it and went away: nothing is left open."""
    from wasi_tls_host.wasi.sockets import p3

    before = open_fds()
    conn = _ConnectedSocket()
    stream, future = p3.tcp_receive(conn.cx, conn.sock)
    conn.cx.close()
    stream.drop()  # (the guest's table goes with its instance)
    conn.peer.settimeout(TIMEOUT)
    assert conn.peer.recv(10) == b""
    conn.peer.close()
    conn.listener.close()
    assert open_fds() <= before


def test_a_connect_to_a_local_listener_is_connected_with_nagle_off(connected: _ConnectedSocket) -> None:
    """0.3's connect, which sees a connect the kernel completed at once by its TCP state:
    connected, its remote address the listener's, Nagle off (as after a connect that waited)."""
    from wasi_tls_host.wasi.sockets.tcp import TcpState

    engine = connected.sock.socket
    assert engine.state is TcpState.CONNECTED
    assert engine.remote_address().port == connected.listener.getsockname()[1]
    assert engine.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
