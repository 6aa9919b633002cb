"""wasi:sockets@0.3.0 on the core runtime, with real sockets on 127.0.0.1 and CPython peers.

``guest_examples/wat/sockets_p3_hostile.wat`` mistreats the interface on purpose: binds
outside the policy, a huge backlog, reads and writes on connections the peer reset, streams
left undropped, a listen stream dropped with a client waiting. Each must end in the error
code WASI specifies, and the host must close everything the guest held (descriptors are
counted with the garbage collector off).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from conftest import free_port, open_fds
from sockets_util import TIMEOUT, loopback_policy
from wasi_tls_host import Host, NetworkPolicy, WasiConfig

ACCESS_DENIED, INVALID_STATE, ADDRESS_IN_USE, CONNECTION_BROKEN, CONNECTION_RESET, OK = 0, 5, 7, 10, 11, 100


@pytest.fixture(scope="module")
def core_host() -> Iterator[Host]:
    with Host(runtime="core") as host:
        yield host


@pytest.fixture
def hostile(core_host: Host, guest_path):
    """hostile(policy) -> a new instance of the hostile guest (closed after the test)."""
    wasm = guest_path("sockets_p3_hostile")
    core_host.load(wasm)  # its compiled files are mapped for good: not the guest's descriptors
    made = []

    def make(policy: NetworkPolicy | None = None):
        guest = core_host.instantiate(wasm, WasiConfig(network=policy if policy is not None else loopback_policy()))
        made.append(guest)
        return guest

    yield make
    for guest in made:
        guest.close()


class Peer:
    """A CPython TCP server on 127.0.0.1 running ``handle(conn)`` for one connection."""

    def __init__(self, handle) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.result: list[object] = []
        self.thread = threading.Thread(target=self._serve, args=(handle,), daemon=True)
        self.thread.start()

    def _serve(self, handle) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(TIMEOUT)
        try:
            self.result.append(handle(conn))
        finally:
            conn.close()

    def close(self) -> object:
        self.thread.join(TIMEOUT)
        self.listener.close()
        assert not self.thread.is_alive()
        return self.result[0] if self.result else None


def reset(conn: socket.socket) -> None:
    """Close with RST instead of FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_bind_outside_the_policy_is_access_denied_and_logged(hostile, caplog) -> None:
    allowed, other = free_port(), free_port()
    guest = hostile(NetworkPolicy().allow_listen(f"127.0.0.1:{allowed}"))
    with caplog.at_level(logging.WARNING, logger="wasi_tls_host.sockets"):
        assert guest.call("bind", other) == ACCESS_DENIED
    assert f"network policy denied TCP bind on 127.0.0.1:{other}" in caplog.text
    assert guest.call("bind", allowed) == OK


def test_no_policy_denies_every_bind(hostile) -> None:
    assert hostile(NetworkPolicy()).call("bind", free_port()) == ACCESS_DENIED


def test_a_huge_backlog_is_clamped_not_refused(hostile) -> None:
    assert hostile().call("huge-backlog", free_port()) == (OK << 8) | OK


def test_dropping_the_listen_stream_and_socket_frees_the_port_before_the_next_call(hostile) -> None:
    assert hostile().call("rebind", free_port()) == OK


def test_the_listen_stream_keeps_the_listener_open_after_the_socket_is_dropped(hostile) -> None:
    assert hostile().call("accept-after-drop", free_port()) == 1


def test_receive_after_a_peer_reset_ends_the_stream_with_connection_reset(hostile) -> None:
    def send_then_reset(conn: socket.socket) -> None:
        assert conn.recv(1) == b"!"  # the guest is connected
        conn.sendall(b"x" * 1000)
        reset(conn)

    peer = Peer(send_then_reset)
    result = hostile().call("receive-reset", peer.port)
    peer.close()
    assert result & 0xFF == CONNECTION_RESET
    assert result >> 8 <= 1000  # what arrived before the reset (the kernel may drop it)


def test_send_to_a_peer_that_reset_ends_with_an_error_not_a_hang(hostile) -> None:
    def reset_on_data(conn: socket.socket) -> None:
        assert conn.recv(1)
        reset(conn)

    peer = Peer(reset_on_data)
    result = hostile().call("send-reset", peer.port)
    peer.close()
    assert result in (CONNECTION_RESET, CONNECTION_BROKEN)


def test_streams_left_undropped_are_closed_with_the_guest(hostile, core_host, no_gc) -> None:
    def read_until_eof(conn: socket.socket) -> int:
        total = 0
        while chunk := conn.recv(65536):
            total += len(chunk)
        return total

    before = open_fds()
    peer = Peer(read_until_eof)
    guest = hostile()
    assert guest.call("leave-streams", peer.port) == OK
    assert guest.state.scheduler.pending > 0  # its receiver and sender are still at work
    guest.close()
    assert peer.close() == 1000  # the peer got what was written, then the end
    assert open_fds() == before


def test_a_listen_stream_dropped_with_a_client_waiting_refuses_the_client(hostile, no_gc) -> None:
    """The host accepts a connection only for a guest that reads: the client waiting in the
    backlog when the stream and socket are dropped is refused, never held by the host."""
    before = open_fds()
    port = free_port()
    guest = hostile()
    assert guest.call("listen-and-read", port) == OK
    client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)  # waits in the backlog
    assert guest.call("cancel-and-drop") == 0  # the cancelled read had delivered no socket
    try:
        data = client.recv(10)
    except ConnectionResetError:
        data = b""
    assert data == b""
    client.close()
    assert guest.state.scheduler.pending == 0
    with socket.create_server(("127.0.0.1", port)):
        pass  # the port is free
    guest.close()
    assert open_fds() == before
