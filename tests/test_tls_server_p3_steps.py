"""The steps a 0.3 server connection's task takes (``tls/p3.py``, ``StreamTransport.run``),
counted in the binding's ``tls_echo_server_p3`` served in this process to CPython ``ssl``
clients: a step that moved everything there was (the socket read until the kernel had no
more, the engine waiting for its peer) is followed by a wait, not by another step that finds
nothing; and every byte still arrives."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port
from tls_server_util import TIMEOUT, GuestThread, ServerPki, p3_server_fixtures, ssl_client_context
from wasi_tls_host import Host, NetworkPolicy, TlsConfig, guests
from wasi_tls_host.runtime.streams import StreamWriter
from wasi_tls_host.tls import server_p3
from wasi_tls_host.tls.identities import PrivateIdentity
from wasi_tls_host.tls.p3 import StreamTransport
from wasi_tls_host.tls.states import HandshakeState
from wasi_tls_host.wasi.sockets.p3 import TcpSocket

pytestmark = pytest.mark.timeout(300)

CONNECTIONS = 30


pki, p3_host = p3_server_fixtures("server-steps")


def test_a_handshake_step_that_moved_all_there_was_is_followed_by_a_wait(p3_host: Host, pki: ServerPki,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: after the step that sent the server's flight (the socket drained, the engine
    waiting for the client's Finished), one more step ran and found nothing in about three
    handshakes of four in the benchmark (one in ten or so here); each connection took four or
    five such empty steps in all."""
    steps, empty = _count_steps(p3_host, pki, monkeypatch, "steps", handshaking=True)
    assert steps >= 2 * CONNECTIONS  # the server's flight, the client's Finished
    assert empty == 0


def _count_steps(p3_host: Host, pki: ServerPki, monkeypatch: pytest.MonkeyPatch, name: str, *, handshaking: bool) -> tuple[int, int]:
    """Serve CONNECTIONS echo clients one after another, counting the connection steps taken
    while the handshake runs (``handshaking``) or after it, and how many of them moved nothing."""
    steps = empty = 0
    step = StreamTransport.step

    def counted(self: StreamTransport) -> bool:
        nonlocal steps, empty
        counts = (self.state is HandshakeState.RUNNING) == handshaking
        moved = step(self)
        if counts:
            steps += 1
            empty += not moved
        return moved

    monkeypatch.setattr(StreamTransport, "step", counted)
    server, port = _serve(p3_host, pki, CONNECTIONS, name)
    try:
        ctx = ssl_client_context(pki)
        answers = [_echo(ctx, socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)) for _ in range(CONNECTIONS)]
    finally:
        _stop(server)
    assert answers == [b"TLSv1.3 echo\nX\n"] * CONNECTIONS or answers == [b"TLSv1.3 None\nX\n"] * CONNECTIONS, answers
    assert server.result is not None and server.result.exit_code == 0, server.out
    return steps, empty


def _serve(p3_host: Host, pki: ServerPki, connections: int, name: str) -> tuple[GuestThread, int]:
    component = p3_host.load(guests.build("tls_echo_server_p3"))
    port = free_port()
    identity = PrivateIdentity.from_pem("default", pki.a_chain.read_bytes(), pki.leaf_a.private_key_pem.bytes())
    server = GuestThread(p3_host, component, ["tls_echo_server_p3", "127.0.0.1", str(port), str(connections)],
                         network=NetworkPolicy().allow_listen(f"127.0.0.1:{port}"),
                         tls=TlsConfig(trust=[pki.ca_pem], use_system_roots=False, identities=[identity]), name=name)
    _wait_for_listening(server)
    return server, port


def _echo(ctx: ssl.SSLContext, raw: socket.socket) -> bytes:
    with ctx.wrap_socket(raw, server_hostname="a.test") as tls:
        tls.sendall(b"x\n")
        answer = b""
        while answer.count(b"\n") < 2:
            chunk = tls.recv(100)
            assert chunk, answer
            answer += chunk
        tls.unwrap()
    return answer


def _stop(server: GuestThread) -> None:
    server.thread.join(TIMEOUT)
    if server.thread.is_alive():
        server.guest.interrupt("test teardown")
        server.thread.join(TIMEOUT)


def test_an_established_connection_reads_and_watches_in_the_step_that_needs_it(p3_host: Host, pki: ServerPki,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a step that decrypted all OpenSSL had left the socket to one more step (which
    found it empty), and one that took the guest's write left posting the read for its next
    write to one more step (which found nothing else): 1.6-1.7 empty steps per connection once
    established here (three in the benchmark's load); now about none here (one there)."""
    steps, empty = _count_steps(p3_host, pki, monkeypatch, "established-steps", handshaking=False)
    assert steps >= 3 * CONNECTIONS
    assert empty <= CONNECTIONS // 2, (empty, steps)


def test_a_read_of_the_listen_stream_takes_every_connection_waiting(p3_host: Host, pki: ServerPki,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients that connect while the guest is busy are handed over together, in its next
    read of the listen stream (it asks for up to 16), not one per read; all are served."""

    batches: list[int] = []
    write_some = StreamWriter.write_some

    async def counted(self: StreamWriter, values: object) -> int:
        if isinstance(values, list) and values and isinstance(values[0], TcpSocket):
            batches.append(len(values))
        return await write_some(self, values)

    monkeypatch.setattr(StreamWriter, "write_some", counted)
    # The guest's thread holds in its first connection's accept-socket while the others
    # connect: they wait in the listener's backlog until it reads the listen stream again.
    others_connected = threading.Event()
    receive_directly = server_p3.receive_directly

    def held(sock: object) -> object:
        others_connected.wait(TIMEOUT)
        return receive_directly(sock)

    monkeypatch.setattr(server_p3, "receive_directly", held)
    waiting = 8
    server, port = _serve(p3_host, pki, waiting + 1, "listen-batches")
    try:
        ctx = ssl_client_context(pki)
        first = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        others = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(waiting)]
        others_connected.set()
        answers = [_echo(ctx, raw) for raw in [first, *others]]
    finally:
        others_connected.set()
        _stop(server)
    assert answers == [answers[0]] * (waiting + 1) and answers[0].endswith(b"\nX\n"), answers
    assert server.result is not None and server.result.exit_code == 0, server.out
    assert sum(batches) == waiting + 1
    assert max(batches) > 1, batches


def _wait_for_listening(server: GuestThread) -> None:
    deadline = time.monotonic() + TIMEOUT * 3
    while "listening" not in server.out:
        assert server.thread.is_alive() and time.monotonic() < deadline, f"the guest server did not start: {server.out}"
        time.sleep(0.02)
