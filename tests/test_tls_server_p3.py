"""The ``tls_server_p3`` example: the 0.2 ``tls_server``'s counterpart on WASI 0.3, written
with the asyncio binding (``wasi_tls_aio.start_server``), served to CPython ``ssl`` clients:
identities chosen by SNI from the ClientHello (an unknown name refused), the HTTP and echo
modes, connections served concurrently, and a failing connection ending only itself.

One build of the guest and one HTTP server for the module (tlsfuzzer's list runs against it
too, in test_tlsfuzzer.py).
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import free_port, open_fds, without_gc
from tls_server_util import TIMEOUT, AccessLog, GuestServer, ServerPki, p3_server_fixtures, ssl_client_context
from wasi_tls_host import Host

pytestmark = pytest.mark.timeout(300)


pki, p3_host = p3_server_fixtures("tls-server-p3")


@pytest.fixture(scope="module")
def component(p3_host: Host, guest_path) -> Any:
    return p3_host.load(guest_path("tls_server_p3"))


def start(host: Host, component: Any, pki: ServerPki, *args: str) -> GuestServer:
    """``tls_server_p3 PORT ARGS...`` with the identities ``a`` (a.test) and ``b`` (b.test)."""
    return GuestServer(host, component, free_port(), *args, tls=pki.server_config(client_ca=False))


@pytest.fixture(scope="module")
def http_server(p3_host: Host, component: Any, pki: ServerPki) -> Iterator[GuestServer]:
    server = start(p3_host, component, pki, "--count", "0", "--mode", "http")
    yield server
    server.guest.interrupt("the tests are done")
    server.stop()


def tls_client(port: int, pki: ServerPki, name: str | None, alpn: list[str] | None = None) -> ssl.SSLSocket:
    ctx = ssl_client_context(pki)
    if name is None:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        # No ragged EOFs: the end of the answer must be the guest's close_notify.
        return ctx.wrap_socket(raw, server_hostname=name, suppress_ragged_eofs=False)
    except BaseException:
        raw.close()
        raise


def read_answer(tls: ssl.SSLSocket) -> bytes:
    """Everything until the guest's close_notify (an SSLEOFError if it never comes)."""
    answer = b""
    while chunk := tls.recv(65536):
        answer += chunk
    return answer


def get(port: int, pki: ServerPki, name: str | None, request: bytes = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") -> tuple[bytes, Any]:
    with tls_client(port, pki, name, ["http/1.1"]) as tls:
        tls.sendall(request)
        return read_answer(tls), tls.getpeercert()


def body(answer: bytes) -> bytes:
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert f"Content-Length: {len(rest)}".encode() in head
    return rest


def test_each_server_name_gets_its_identity_and_an_http_answer(http_server: GuestServer, pki: ServerPki) -> None:
    answer, cert = get(http_server.port, pki, "a.test")
    assert body(answer) == b"identity=a sni=a.test alpn=http/1.1\n"
    assert cert["subjectAltName"] == (("DNS", "a.test"),)
    # A request head ending in bare LFs is answered too.
    answer, cert = get(http_server.port, pki, "b.test", b"GET /lf HTTP/1.0\n\n")
    assert body(answer) == b"identity=b sni=b.test alpn=http/1.1\n"
    assert cert["subjectAltName"] == (("DNS", "b.test"),)
    line = http_server.wait_for("request GET /lf HTTP/1.0")
    number = line.split()[0]
    assert f"{number} connection sni=b.test identity=b version=TLSv1.3" in http_server.out


def test_the_access_log_says_what_each_handshake_negotiated(http_server: GuestServer, pki: ServerPki) -> None:
    """The 0.3 TLS server annotates the access-log line of the connection beneath it (the
    socket's receive stream) as the 0.2 one does: SNI, ALPN, version, handshake time."""
    with AccessLog() as log:
        with tls_client(http_server.port, pki, "b.test", ["http/1.1"]) as tls:
            client_port = tls.getsockname()[1]
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            read_answer(tls)
        line = log.of(client_port)
    assert (line["sni"], line["alpn"], line["version"], line["tls"]) == ("b.test", "http/1.1", "TLSv1.3", "ok"), line
    assert float(line["handshake_ms"]) > 0, line


def test_no_server_name_gets_the_first_identity(http_server: GuestServer, pki: ServerPki) -> None:
    answer, _ = get(http_server.port, pki, None)
    assert body(answer) == b"identity=a sni=- alpn=http/1.1\n"


def test_an_unknown_server_name_is_refused_with_unrecognized_name(http_server: GuestServer, pki: ServerPki) -> None:
    with pytest.raises(ssl.SSLError, match="unrecognized name"):
        tls_client(http_server.port, pki, "c.test").close()
    http_server.wait_for("rejected: no identity for sni=c.test (unrecognized_name)")


def test_a_client_offering_no_protocols_gets_none(http_server: GuestServer, pki: ServerPki) -> None:
    """The binding knows the ALPN id from its own answer (it does not ask the host): none
    when the client offered none, though the server has protocols."""
    with tls_client(http_server.port, pki, "a.test") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert tls.selected_alpn_protocol() is None
        assert body(read_answer(tls)) == b"identity=a sni=a.test alpn=-\n"


def test_a_client_offering_only_other_protocols_gets_no_application_protocol(http_server: GuestServer, pki: ServerPki) -> None:
    with pytest.raises(ssl.SSLError, match="no application protocol"):
        tls_client(http_server.port, pki, "a.test", ["h2"]).close()


def test_a_malformed_client_hello_gets_one_alert_and_the_end(http_server: GuestServer) -> None:
    """A hello already in the socket when the guest accepts fails while the guest is still
    setting the connection up; the guest's reject of the failed hello lets it go without a
    second alert (internal_error, which reached the client too, after decode_error, as
    tlsfuzzer saw). The client is another process, so its hello is sent before this
    process's guest can take the connection."""
    client = (
        "import socket, struct, sys\n"
        f"raw = socket.create_connection(('127.0.0.1', {http_server.port}), timeout={TIMEOUT})\n"
        "hello = bytes.fromhex('0100000403030000')\n"  # a ClientHello body far too short
        "raw.sendall(bytes.fromhex('160301') + struct.pack('!H', len(hello)) + hello)\n"
        "received = b''\n"
        "while chunk := raw.recv(4096):\n"
        "    received += chunk\n"
        "sys.stdout.write(received.hex())\n"
    )
    out = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, timeout=TIMEOUT * 2, check=True).stdout
    assert out == "15030300020232", out  # one fatal decode_error alert, then the end


def test_ended_connections_leave_no_entries_of_their_streams(http_server: GuestServer, pki: ServerPki) -> None:
    """TLS reads and writes an accepted socket directly (the guest hands it the socket's
    receive stream and gives its ciphertext stream to the socket's send); the tables that
    offer that keep nothing of an ended connection (an entry refers to its stream, so a
    weak-keyed table that kept one kept the stream alive: 2.3 KiB per connection)."""
    from wasi_tls_host.wasi.sockets import p3 as sockets_p3

    def entries() -> int:
        return len(sockets_p3._RECEIVES) + len(sockets_p3._RECEIVE_TAKERS) + len(sockets_p3._DIRECT_SENDERS)

    with without_gc():
        before = entries()
        for _ in range(6):
            assert body(get(http_server.port, pki, "a.test")[0]) == b"identity=a sni=a.test alpn=http/1.1\n"
        deadline = time.monotonic() + TIMEOUT
        while entries() > before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert entries() <= before, (before, entries())


def test_connections_are_served_concurrently(http_server: GuestServer, pki: ServerPki) -> None:
    """A client holding half a request does not hold up the others."""
    with tls_client(http_server.port, pki, "a.test", ["http/1.1"]) as slow:
        slow.sendall(b"GET /slow HTTP/1.1\r\n")
        others = [tls_client(http_server.port, pki, name, ["http/1.1"]) for name in ("a.test", "b.test", "a.test")]
        try:
            for i, tls in enumerate(others):
                tls.sendall(f"GET /other{i} HTTP/1.1\r\n\r\n".encode())
            assert [body(read_answer(tls)) for tls in others] == [
                b"identity=a sni=a.test alpn=http/1.1\n", b"identity=b sni=b.test alpn=http/1.1\n",
                b"identity=a sni=a.test alpn=http/1.1\n"]
        finally:
            for tls in others:
                tls.close()
        slow.sendall(b"\r\n")
        assert body(read_answer(slow)) == b"identity=a sni=a.test alpn=http/1.1\n"


def settled_fds() -> int:
    """This process's descriptor count once it stopped changing (the in-process server may
    still be closing a connection its client already closed): the same for 0.3 s running."""
    deadline = time.monotonic() + TIMEOUT
    count, stable_since = open_fds(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - stable_since < 0.3:
        time.sleep(0.05)
        now = open_fds()
        if now != count:
            count, stable_since = now, time.monotonic()
    return count


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_failing_client_ends_only_its_own_connection(http_server: GuestServer, pki: ServerPki) -> None:
    """Issue 20's lesson: resets, truncation and garbage end one connection; the server goes
    on serving and keeps no descriptor of them (counted with the GC off)."""
    port = http_server.port
    get(port, pki, "a.test")  # anything the first connection of a test opens once, opened
    with without_gc():
        before = settled_fds()  # once the server closed its side of that first connection
        # A reset right after the request, before the answer is written.
        tls = tls_client(port, pki, "a.test", ["http/1.1"])
        tls.sendall(b"GET /reset HTTP/1.1\r\n\r\n")
        reset(tls)
        # A TCP end without close_notify halfway through a request (ssl's close() sends none).
        tls = tls_client(port, pki, "b.test", ["http/1.1"])
        tls.sendall(b"GET /trunc")
        tls.close()
        # Not TLS at all; and a connection closed before a ClientHello.
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            raw.settimeout(TIMEOUT)
            try:
                assert raw.recv(4096)[:1] in (b"\x15", b"")  # an alert, or the close
            except ConnectionResetError:
                pass
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        answer, _ = get(port, pki, "a.test", b"GET /after HTTP/1.1\r\n\r\n")
        assert body(answer) == b"identity=a sni=a.test alpn=http/1.1\n"
        http_server.wait_for("request GET /after HTTP/1.1")
        deadline = time.monotonic() + TIMEOUT
        while open_fds() > before and time.monotonic() < deadline:
            time.sleep(0.05)  # the guest may still be closing what the clients just closed
        assert open_fds() == before
    assert http_server.thread.is_alive()
    assert "connection error" in http_server.out  # the truncated request was seen as one


def echo_line(tls: ssl.SSLSocket, line: bytes) -> bytes:
    tls.sendall(line)
    got = b""
    while len(got) < len(line):
        got += tls.recv(65536)
    return got


def test_echo_mode_serves_concurrent_clients_and_count_ends_the_run(p3_host: Host, component: Any, pki: ServerPki) -> None:
    server = start(p3_host, component, pki, "--count", "2", "--mode", "echo")
    try:
        with tls_client(server.port, pki, "a.test", ["h2", "http/1.1"]) as one, tls_client(server.port, pki, "b.test") as two:
            assert one.selected_alpn_protocol() == "h2"
            assert echo_line(one, b"first\n") == b"first\n"
            assert echo_line(two, b"second " * 5000) == b"second " * 5000
            assert echo_line(one, b"third\n") == b"third\n"
            one.unwrap()  # close_notify both ways: the guest echoes until the client's
            two.unwrap()
        server.wait_for("closed echoed=35000")
        server.wait_for("closed echoed=12")
        # Closing the server stops serve_forever at the next connection attempt (the binding
        # cannot cancel its pending accept): make attempts until the run has ended.
        deadline = time.monotonic() + TIMEOUT
        while server.thread.is_alive() and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT).close()
            except OSError:
                pass
            server.thread.join(0.2)
    finally:
        result = server.stop()
    assert result is not None and result.exit_code == 0, server.out
    assert server.lines[-1] == "served 2"
