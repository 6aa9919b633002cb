"""wasi:sockets with real sockets on 127.0.0.1 / ::1: guests from guest_examples/sockets_probe
against CPython peers (or each other), plus the reusable socket streams on their own."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

import pytest

from conftest import free_port, open_fds
from sockets_util import (
    TIMEOUT,
    GuestThread,
    ServerThread,
    echo_until_eof,
    has_ipv6_loopback,
    loopback_policy,
)
from wasi_tls_host.runtime.values import Trap
from wasi_tls_host.wasi.io import StreamClosed, StreamFailed
from wasi_tls_host.wasi.socket_streams import SharedSocket, SocketInput, SocketOutput

GUEST = "sockets_probe"
needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")


@pytest.fixture
def wasm(host, guest_path):
    """The probe, compiled before the test starts: the session's first run of it compiles
    for up to minutes on a loaded machine, which must not happen inside a test holding a
    CPython server (with its 20 s timeouts) open."""
    path = guest_path(GUEST)
    host.load(path)
    return path


@pytest.fixture
def probe(run_guest, wasm):
    def run(*args: str, policy=None):
        return run_guest(GUEST, *args, network=policy if policy is not None else loopback_policy())

    return run


def lines(text: str) -> dict[str, str]:
    """'name rest...' lines as {name: rest}."""
    return {k: v for k, _, v in (line.partition(" ") for line in text.splitlines())}


# --- TCP client --------------------------------------------------------------------------


@pytest.mark.parametrize("family", [socket.AF_INET, pytest.param(socket.AF_INET6, marks=needs_ipv6)], ids=["ipv4", "ipv6"])
def test_tcp_echo_client_against_cpython_server(probe, family):
    server = ServerThread(echo_until_eof, family)
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    message = "hello over wasi:sockets " * 500  # 12 KB: several writes, several reads
    run = probe("echo-client", host, str(server.port), message)
    server.close()
    assert run.exit_code == 0, run.out + run.err
    out = run.out.splitlines()
    expected_remote = f"[{host}]:{server.port}" if family == socket.AF_INET6 else f"{host}:{server.port}"
    assert out[0] == f"local {'ipv6' if family == socket.AF_INET6 else 'ipv4'} remote {expected_remote}"
    assert out[1] == f"echo: {message}"


def test_download_reads_every_byte_until_eof(probe):
    payload = bytes(range(256)) * 4096 * 5  # 5 MiB

    def send(conn: socket.socket) -> None:
        conn.sendall(payload)

    server = ServerThread(send)
    run = probe("download", "127.0.0.1", str(server.port))
    server.close()
    assert run.out == f"bytes {len(payload)}\n", run.err


def test_connection_refused_is_reported(probe):
    port = free_port()
    run = probe("connect", "127.0.0.1", str(port))
    assert run.out == "connect error connection-refused\n"


# --- TCP server ----------------------------------------------------------------------------


def test_guest_echo_server_serves_concurrent_clients_through_poll(host, wasm):
    clients = 6
    port = free_port()
    with GuestThread(host, wasm, ["echo-server", "127.0.0.1", str(port), str(clients)], loopback_policy()) as guest:
        guest.wait_for(f"ready 127.0.0.1:{port}")
        # All clients are connected before any finishes, so the guest must juggle them at once.
        conns = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(clients)]
        try:
            for i, c in enumerate(reversed(conns)):  # the last accepted speaks first
                c.sendall(f"client {i} says hi".encode() * 100)
            for i, c in enumerate(reversed(conns)):
                expected = f"client {i} says hi".encode() * 100
                got = bytearray()
                while len(got) < len(expected):
                    chunk = c.recv(65536)
                    assert chunk, "guest closed early"
                    got += chunk
                assert got == expected
        finally:
            for c in conns:
                c.close()
        result = guest.join()
    assert result.exit_code == 0
    assert guest.out.splitlines()[-1] == f"served {clients} most-open {clients}"


def test_dropping_the_instance_closes_its_sockets(host, wasm, no_gc):
    """A guest stuck serving is interrupted; closing its store frees the listening port."""
    host.load(wasm)  # the host's cache maps the compiled files: descriptors that are not the guest's
    before = open_fds()
    port = free_port()
    with GuestThread(host, wasm, ["echo-server", "127.0.0.1", str(port), "5"], loopback_policy()) as guest:
        guest.wait_for("ready")
        conn = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)  # an accepted client too
        time.sleep(0.1)
        guest.stop()
        assert not guest.thread.is_alive()
    conn.settimeout(TIMEOUT)
    try:
        data = conn.recv(10)
    except ConnectionResetError:  # closed while still in the listener's backlog
        data = b""
    assert data == b"", "the connection must be closed with the store"
    conn.close()
    with socket.socket() as s:  # the port is free again: nothing of the guest is left bound
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    assert open_fds() <= before


# --- UDP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host_addr", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)], ids=["ipv4", "ipv6"])
def test_udp_echo_pair(host, wasm, probe, host_addr):
    port = free_port(socket.AF_INET6 if ":" in host_addr else socket.AF_INET)
    with GuestThread(host, wasm, ["udp-echo", host_addr, str(port), "3"], loopback_policy()) as server:
        server.wait_for("ready")
        run = probe("udp-client", host_addr, str(port), "one", "two", "three")
        result = server.join()
    assert result.exit_code == 0 and run.exit_code == 0, run.out + server.out
    shown = f"[{host_addr}]:{port}" if ":" in host_addr else f"{host_addr}:{port}"
    assert run.out.splitlines() == [
        f"remote {shown}",
        f"sent 1 reply: one from {shown}",
        f"sent 1 reply: two from {shown}",
        f"sent 1 reply: three from {shown}",
    ]
    assert server.out.splitlines()[-1] == "udp echoed 3"


def test_udp_guest_server_answers_cpython_client(host, wasm):
    port = free_port()
    with GuestThread(host, wasm, ["udp-echo", "127.0.0.1", str(port), "2"], loopback_policy()) as server:
        server.wait_for("ready")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(TIMEOUT)
            for msg in (b"ping", b"x" * 1200):
                c.sendto(msg, ("127.0.0.1", port))
                data, source = c.recvfrom(2048)
                assert (data, source) == (msg, ("127.0.0.1", port))
        assert server.join().exit_code == 0


# --- name lookup --------------------------------------------------------------------------


def test_lookup_localhost(probe):
    run = probe("lookup", "localhost")
    addresses = [line.split()[1] for line in run.out.splitlines()]
    assert "127.0.0.1" in addresses and all(a in ("127.0.0.1", "::1") for a in addresses), run.out


def test_lookup_of_an_address_literal_needs_no_dns_grant(probe):
    policy = loopback_policy()
    policy.dns = False
    assert probe("lookup", "::1", policy=policy).out == "address ::1\n"
    assert probe("lookup", "192.0.2.7", policy=policy).out == "address 192.0.2.7\n"
    assert probe("lookup", "localhost", policy=policy).out == "error access-denied\n"


def test_lookup_errors(probe):
    assert probe("lookup", "bad name").out == "error invalid-argument\n"
    assert probe("lookup", "no-such-host.invalid").out == "error name-unresolvable\n"


# --- state machine --------------------------------------------------------------------------

EXPECTED_STATES = {
    "unbound-pollable-ready": "True",
    "listen-unbound": "invalid-state",
    "finish-bind-not-started": "not-in-progress",
    "finish-connect-not-started": "not-in-progress",
    "finish-listen-not-started": "not-in-progress",
    "local-address-unbound": "invalid-state",
    "remote-address-unbound": "invalid-state",
    "shutdown-unconnected": "invalid-state",
    "bind-wrong-family": "invalid-argument",
    "connect-wrong-family": "invalid-argument",
    "connect-port-zero": "invalid-argument",
    "connect-unspecified": "invalid-argument",
    "backlog-zero": "invalid-argument",
    "backlog-set": "ok",
    "keepalive-set": "ok True",
    "keepidle-zero": "invalid-argument",
    "keepidle-set": "ok 30000000000",
    "keepidle-round": "ok 2000000000",  # rounded up to whole seconds, never an error
    "keepintvl-set": "ok 7000000000",
    "keepcnt-zero": "invalid-argument",
    "keepcnt-set": "ok 4",
    "hoplimit-zero": "invalid-argument",
    "hoplimit-set": "ok 42",
    "rcvbuf-zero": "invalid-argument",
    "sndbuf-zero": "invalid-argument",
    "rcvbuf-set": "ok True",
    "sndbuf-set": "ok True",
    "bind": "ok",
    "bind-concurrent": "concurrency-conflict",
    "connect-during-bind": "concurrency-conflict",
    "local-address-bind-in-progress": "invalid-state",
    "finish-bind": "ok",
    "finish-bind-again": "not-in-progress",
    "bind-twice": "invalid-state",
    "accept-before-listen": "invalid-state",
    "is-listening-bound": "False",
    "listen": "ok",
    "listen-concurrent": "concurrency-conflict",
    "accept-listen-in-progress": "invalid-state",
    "finish-listen": "ok",
    "is-listening": "True",
    "listen-twice": "invalid-state",
    "connect-listening": "invalid-state",
    "accept-nothing-pending": "would-block",
    "listener-pollable-ready-idle": "False",
    "backlog-listening": "ok",
    "listener-pollable-ready-pending": "True",
    "accepted-family-same": "True keepalive-inherited True",
    "accepted-remote-is-client": "True",
    "connect": "ok",
    "connect-concurrent": "concurrency-conflict",
    "listen-connecting": "invalid-state",
    "backlog-connecting": "invalid-state",
    "connect-pollable-ready": "True",
    "finish-connect-again": "not-in-progress",
    "connect-connected": "invalid-state",
    "bind-connected": "invalid-state",
    "listen-connected": "invalid-state",
    "accept-connected": "invalid-state",
    "shutdown-send": "ok",
    "shutdown-send-again": "ok",
    "write-after-shutdown": "closed",
    "blocking-write-after-shutdown": "closed",
    "shutdown-receive": "ok",
    "read-after-shutdown": "closed",
    "connect-refused-start": "ok",
    "connect-refused-finish": "connection-refused",
    "connect-after-failure": "invalid-state",
    "finish-after-failure": "not-in-progress",
    "udp-stream-unbound": "invalid-state",
    "udp-local-address-unbound": "invalid-state",
    "udp-bind-wrong-family": "invalid-argument",
    "udp-finish-bind-not-started": "not-in-progress",
    "udp-bind": "ok ok",
    "udp-bind-twice": "invalid-state",
    "udp-remote-address-unconnected": "invalid-state",
    "udp-hoplimit-zero": "invalid-argument",
    "udp-hoplimit-set": "ok 9",
    "udp-stream-port-zero": "invalid-argument",
    "udp-receive-empty": "0",
    "udp-check-send": "True",
    "udp-send-no-address": "invalid-argument",
    "udp-send-empty": "0",
    "done": "",
}


@pytest.mark.parametrize("family", [socket.AF_INET, pytest.param(socket.AF_INET6, marks=needs_ipv6)], ids=["ipv4", "ipv6"])
def test_wrong_state_calls_and_options_give_spec_results(probe, family):
    host_addr = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host_addr, 0))
        listener.listen(8)
        run = probe("states", host_addr, str(listener.getsockname()[1]), str(free_port(family)))
    assert run.exit_code == 0, run.out + run.err
    got = lines(run.out)
    mismatches = {k: (got.get(k), v) for k, v in EXPECTED_STATES.items() if got.get(k) != v}
    assert not mismatches, mismatches


# --- failures and resources ------------------------------------------------------------------


def test_peer_reset_mid_stream_is_a_stream_error(probe):
    def reset(conn: socket.socket) -> None:
        conn.sendall(b"a" * 1000)
        time.sleep(0.2)  # let the guest read the data first
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close -> RST

    server = ServerThread(reset)
    run = probe("reset", "127.0.0.1", str(server.port))
    server.close()
    assert run.exit_code == 0, run.out + run.err
    first, second = run.out.splitlines()
    assert first.startswith("read 1000 then last-operation-failed"), first
    assert "reset" in first.lower()
    assert second in ("write last-operation-failed", "write closed")
    # The host is fine: the next guest works as usual.
    server = ServerThread(echo_until_eof)
    assert probe("echo-client", "127.0.0.1", str(server.port), "still fine").out.endswith("echo: still fine\n")
    server.close()


def test_thousand_connections_leave_no_descriptor(probe, no_gc):
    count = 1000
    accepted = 0
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0), backlog=256)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]

    def accept_loop() -> None:
        nonlocal accepted
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.close()
            accepted += 1

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    # Warm-up: loading the component maps its compiled file (a descriptor held while the
    # host caches the component), which is not a per-connection leak.
    assert probe("churn", "127.0.0.1", str(port), "1").out == "churned 1\n"
    before = open_fds()
    try:
        run = probe("churn", "127.0.0.1", str(port), str(count))
        assert run.out == f"churned {count}\n", run.err
        deadline = time.monotonic() + TIMEOUT  # the accept thread closes its end after the guest's
        while accepted < count + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert open_fds() <= before  # a leak would add up to one descriptor per connection
    finally:
        stop.set()
        thread.join(TIMEOUT)
        listener.close()
    assert accepted == count + 1


# --- the reusable socket streams on their own ---------------------------------------------------


def test_a_socket_made_after_the_store_closed_is_closed_at_once():
    """A host task outliving its store (an accept, a new socket) cannot add a descriptor that
    nothing would close: it is closed at once, and a new socket is refused."""
    from wasi_tls_host.runtime.values import WitError
    from wasi_tls_host.wasi.sockets.registry import SocketRegistry

    registry = SocketRegistry()
    registry.close_all()
    with pytest.raises(WitError, match="invalid-state"):
        registry.new_socket("ipv4", socket.SOCK_STREAM)
    late = socket.socket()
    shared = SharedSocket(late, registry)
    assert shared.closed and late.fileno() == -1 and len(registry) == 0


def test_a_server_a_failed_test_left_open_is_closed_with_the_test():
    server = ServerThread(echo_until_eof)  # never closed, as when the guest run raised
    assert ServerThread.close_leftovers() == 1
    assert server.listener.fileno() == -1
    server.thread.join(TIMEOUT)


def test_socket_output_flush_completes_when_the_kernel_took_the_bytes():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    shared = SharedSocket(a).acquire()
    out = SocketOutput(shared)
    try:
        total = 0
        while True:  # fill the kernel buffers and ours
            permit = out.check_write()
            if permit == 0:
                break
            out.write(b"z" * permit)
            total += permit
        assert out.buffered > 0 and not out.subscribe().ready()
        out.flush()
        assert out.check_write() == 0  # no writes while a flush is pending
        pollable = out.subscribe()
        assert not pollable.ready()
        received = 0
        b.settimeout(TIMEOUT)
        while received < total:
            received += len(b.recv(1 << 20))
            pollable.ready()  # polling pushes the buffer on
        assert pollable.ready() and out.buffered == 0
        assert out.check_write() == SocketOutput.capacity
        with pytest.raises(Trap):
            out.write(b"x" * (SocketOutput.capacity + 1))
    finally:
        out.drop()
        shared.release()
        b.close()
    assert shared.closed


def test_socket_input_reports_data_then_end_then_closed():
    a, b = socket.socketpair()
    shared = SharedSocket(a)
    inp = SocketInput(shared)
    assert inp.read(10) == b"" and not inp.subscribe().ready()
    b.sendall(b"hello")
    b.shutdown(socket.SHUT_WR)
    assert inp.subscribe().ready()
    assert inp.read(100) == b"hello"
    with pytest.raises(StreamClosed):
        inp.read(100)
    with pytest.raises(StreamClosed):
        inp.read(100)
    inp.drop()
    b.close()
    assert shared.closed


def test_socket_input_reports_a_reset_once_as_failure():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
    server, _ = listener.accept()
    listener.close()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()
    inp = SocketInput(SharedSocket(client))
    select.select([client], [], [], TIMEOUT)
    with pytest.raises(StreamFailed) as failure:
        inp.read(100)
    assert failure.value.error.code == "connection-reset"
    with pytest.raises(StreamClosed):
        inp.read(100)
    inp.drop()


def test_name_lookups_are_bounded(monkeypatch) -> None:
    """Lookups share a small thread pool; past the cap a guest hears temporary-resolver-failure
    instead of the host starting ever more work."""
    from wasi_tls_host.runtime.values import WitError
    from wasi_tls_host.wasi import sockets

    threads = threading.active_count()
    streams = [sockets.ResolveAddressStream("localhost") for _ in range(50)]
    assert threading.active_count() <= threads + 8
    for stream in streams:
        stream.drop()
    monkeypatch.setattr(sockets.lookup, "MAX_PENDING", 0)
    with pytest.raises(WitError) as info:
        sockets.ResolveAddressStream("localhost")
    assert info.value.payload == "temporary-resolver-failure"
