"""Upstream ``wasi:tls@0.3.0-draft`` (the client connector a guest built for Wasmtime's
``-Sp3 -Stls`` uses) against real peers on loopback: CPython ``ssl``, ``openssl s_server``,
GnuTLS and Go's ``crypto/tls``, plus servers that misbehave on purpose.

The guest is ``guest_examples/wat/tls_p3_client.wat``: it plumbs the connector's ciphertext
streams to a TCP socket of the stand-in ``wasi-tls-host:test/tcp`` (devtools/tcp_p3.py) and
reports, as strings, how connect and both futures ended (``error.to-debug-string``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import trustme

from conftest import open_fds, without_gc
from devtools.tcp_p3 import tcp
from tls_peers import (GnutlsServer, OpensslServer, PeerServer, Pki, close_mid_handshake, echo, http_response, send_body,
                       send_garbage)
from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.host import all_interfaces
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.tls.limits import TlsLimits

pytestmark = pytest.mark.timeout(120)

REQUEST = b"GET /blob.bin HTTP/1.0\r\n\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def leaf(pki: Pki):
    return pki.leaf("localhost", "127.0.0.1")


@pytest.fixture(scope="module")
def p3_host() -> Iterator[Host]:
    with Host(interfaces=[*all_interfaces(), tcp], runtime="core") as host:
        yield host


@pytest.fixture(scope="module")
def component(p3_host: Host, guest_path) -> Any:
    return p3_host.load(guest_path("tls_p3_client"))


class Fetch:
    """What one ``fetch`` reported."""

    def __init__(self, result: tuple[int, bytes, str, str, str]) -> None:
        self.received, self.head, self.connect, self.receive, self.send = result

    def __repr__(self) -> str:
        return f"Fetch(received={self.received}, connect={self.connect!r}, receive={self.receive!r}, send={self.send!r})"


@pytest.fixture
def fetch(p3_host: Host, component: Any, pki: Pki):
    """fetch(port, name="localhost", request=REQUEST, tls=...) in a fresh guest instance."""

    def run(port: int, name: str = "localhost", request: bytes = REQUEST, *, tls: TlsConfig | None = None) -> Fetch:
        config = WasiConfig(tls=tls or TlsConfig(trust=[pki.ca_pem], use_system_roots=False))
        with p3_host.instantiate(component, config) as guest:
            return Fetch(guest.call("fetch", port, name, request))

    return run


@pytest.fixture
def misuse(p3_host: Host, component: Any, pki: Pki):
    def run(kind: int, port: int = 0, name: str = "localhost") -> list[str]:
        config = WasiConfig(tls=TlsConfig(trust=[pki.ca_pem], use_system_roots=False))
        with p3_host.instantiate(component, config) as guest:
            return list(guest.call("misuse", kind, port, name))

    return run


# --- real peers -----------------------------------------------------------------------------


def test_cpython_ssl_server(fetch, peers, leaf) -> None:
    body = os.urandom(200_000)
    server = PeerServer(http_response(body), leaf.server_context())
    peers.append(server)
    r = fetch(server.port)
    assert (r.connect, r.receive, r.send) == ("ok", "ok", "ok"), r
    head = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert r.received == len(head) + len(body)
    assert r.head == (head + body)[:65536]
    server.wait_idle()
    assert server.errors == []  # the request arrived whole, and close_notify ended it


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_openssl_s_server_serves_a_file(fetch, peers, leaf, tmp_path: Path, flag: str) -> None:
    body = os.urandom(300_000)
    (tmp_path / "blob.bin").write_bytes(body)
    server = OpensslServer(leaf, flag, "-WWW", cwd=tmp_path)
    peers.append(server)
    r = fetch(server.port)
    assert (r.connect, r.receive, r.send) == ("ok", "ok", "ok"), r
    assert r.head.startswith(b"HTTP/1.0 200 ok")
    assert r.received == r.head.index(b"\r\n\r\n") + 4 + len(body)


@pytest.mark.skipif(shutil.which("gnutls-serv") is None, reason="GnuTLS (gnutls-bin) is not installed")
def test_gnutls_server_echoes(fetch, peers, leaf, pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    leaf.leaf.private_key_pem.write_to_path(str(key))
    cert = tmp_path / "cert.pem"
    leaf.leaf.cert_chain_pems[0].write_to_path(str(cert))
    server = GnutlsServer("--x509certfile", str(cert), "--x509keyfile", str(key), cwd=tmp_path)
    peers.append(server)
    r = fetch(server.port, request=b"hello gnutls\n")
    assert r.connect == "ok", r
    assert r.head == b"hello gnutls\n", r  # echoed, then the server ended the connection
    assert r.send == "ok"


def test_go_server_echoes(fetch, gotls, leaf, pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    leaf.leaf.private_key_pem.write_to_path(str(key))
    cert = tmp_path / "cert.pem"
    leaf.leaf.cert_chain_pems[0].write_to_path(str(cert))
    server = gotls.server("-cert", str(cert), "-key", str(key), "-count", "1")
    r = fetch(server.port, request=b"hello go\n")
    assert r.connect == "ok" and r.send == "ok", r
    assert r.head == b"hello go\n"
    [seen] = server.connections(1)
    assert seen["ok"] and seen["version"] == "TLSv1.3" and seen["server_name"] == "localhost", seen


# --- what OpenSSL said, in error.to-debug-string ------------------------------------------


@pytest.mark.parametrize(("case", "expected"), [
    ("unknown-ca", "unknown-issuer: TLS handshake failed: certificate verification failed: unable to get local issuer certificate"),
    ("expired", "expired: TLS handshake failed: certificate verification failed: certificate has expired"),
    ("wrong-host", "name-mismatch: TLS handshake failed: certificate verification failed: hostname mismatch: the certificate is not valid for 'wrong.test'"),
])
def test_certificate_errors_say_what_openssl_said(fetch, peers, pki: Pki, case: str, expected: str) -> None:
    leaves = {"unknown-ca": pki.leaf("localhost", ca=trustme.CA()), "expired": pki.leaf("localhost", expired=True),
              "wrong-host": pki.leaf("localhost")}
    server = PeerServer(echo, leaves[case].server_context())
    peers.append(server)
    r = fetch(server.port, "wrong.test" if case == "wrong-host" else "localhost")
    assert r.connect == expected, r
    assert r.receive == r.send == expected  # both futures answer the same failure
    assert r.received == 0
    server.wait_idle()
    assert any("alert" in e for e in server.errors), server.errors  # the server was told


def test_a_peer_alert_is_named(fetch, peers, leaf) -> None:
    """A TLS 1.2 server that demands a client certificate the guest has none of."""
    ctx = leaf.server_context(max_version=ssl.TLSVersion.TLSv1_2)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=trustme.CA().cert_pem.bytes().decode())
    server = PeerServer(echo, ctx)
    peers.append(server)
    assert fetch(server.port).connect == "handshake-failure: TLS handshake failed: the peer sent alert 'handshake failure'"


def test_the_profile_bounds_the_versions(fetch, peers, leaf, pki: Pki) -> None:
    server = PeerServer(echo, leaf.server_context(max_version=ssl.TLSVersion.TLSv1_2))
    peers.append(server)
    r = fetch(server.port, tls=TlsConfig(trust=[pki.ca_pem], use_system_roots=False, profile="modern"))
    assert r.connect.startswith("protocol-version: "), r


def test_data_ending_without_close_notify_is_an_error_not_an_end(fetch, peers, leaf) -> None:
    server = PeerServer(send_body(b"x" * 50_000, close_notify=False), leaf.server_context())
    peers.append(server)
    r = fetch(server.port)
    assert r.connect == "ok" and r.received == 50_000
    assert r.receive == "truncated: TLS connection failed: the peer closed the connection without close_notify (truncated data)", r


# --- hostile servers -------------------------------------------------------------------------


def test_a_server_that_closes_mid_handshake(fetch, peers) -> None:
    server = PeerServer(close_mid_handshake)
    peers.append(server)
    r = fetch(server.port)
    assert r.connect == "closed: TLS handshake failed: the peer closed the connection during the handshake", r


def test_a_server_that_sends_garbage(fetch, peers) -> None:
    server = PeerServer(send_garbage)
    peers.append(server)
    r = fetch(server.port)
    assert r.connect.startswith("decode-error: TLS handshake failed: the peer did not speak TLS"), r


def test_the_handshake_deadline_ends_a_stalled_server_with_an_alert(fetch, peers, pki: Pki) -> None:
    after_hello: list[bytes] = []

    def stall_and_listen(conn: socket.socket, server: PeerServer) -> None:
        conn.recv(65536)  # the ClientHello; never answered
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        after_hello.append(data)

    server = PeerServer(stall_and_listen)
    peers.append(server)
    config = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, limits=TlsLimits(handshake_timeout=0.3))
    r = fetch(server.port, tls=config)
    assert r.connect.startswith("closed: TLS handshake timed out: not established within 0.3 s"), r
    server.wait_idle()
    assert after_hello == [bytes.fromhex("1503030002025a")]  # fatal user_canceled, then the end


def test_a_refused_dial_is_reported(fetch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    r = fetch(port)
    assert r.connect.startswith(f"connect to 127.0.0.1:{port} failed"), r
    assert r.send.startswith("closed: "), r  # the connector went without connecting


# --- a guest using the connector wrongly ------------------------------------------------------


SEND_TWICE = "invalid-state: connector.send: send was already called on this connector (each connector sends one stream) (the connector is sending)"
RECEIVE_TWICE = ("invalid-state: connector.receive: receive was already called on this connector (each connector receives one "
                 "stream) (the connector is receiving)")
DROPPED = "closed: TLS connection failed: the connector was dropped before it connected"
EARLY = "invalid-state: connector.connect: connect needs send and receive to be set up first (the connector is sending)"


def test_send_twice(misuse) -> None:
    # the second send's future and its (ended) stream; the stream it took was closed; the
    # first send's future once the connector is dropped
    assert misuse(1) == [SEND_TWICE, "end", "end", DROPPED]


def test_receive_twice(misuse) -> None:
    assert misuse(2) == [RECEIVE_TWICE, "end", DROPPED, "end"]


def test_connect_before_receive_is_set_up(misuse) -> None:
    # connect's error, then the send future: the connector ended with that refusal
    assert misuse(3) == [EARLY, f"invalid-state: TLS connection failed: connect was refused: {EARLY.split(': ', 1)[1]}", "end"]


def test_a_connector_dropped_after_setting_up(misuse) -> None:
    assert misuse(4) == [DROPPED, DROPPED, "end", "end"]


def test_the_incoming_ciphertext_dropped_mid_handshake(misuse) -> None:
    failure = "closed: TLS handshake failed: the peer closed the connection during the handshake"
    assert misuse(5) == [failure] * 3


def test_the_outgoing_ciphertext_dropped_mid_handshake(misuse, peers, leaf) -> None:
    server = PeerServer(echo, leaf.server_context())
    peers.append(server)
    failure = "closed: TLS handshake failed: the guest dropped the stream of ciphertext to send"
    assert misuse(6, server.port) == [failure] * 3


def test_the_outgoing_ciphertext_dropped_while_the_host_writes(misuse, peers, leaf) -> None:
    server = PeerServer(echo, leaf.server_context())
    peers.append(server)
    failure = "closed: TLS connection failed: the guest dropped the stream of ciphertext to send"
    # connect; the guest's 2 MiB write, taken only in part (the host holds at most about 1 MiB
    # of ciphertext nobody reads); both futures: the connection failed as a whole (before,
    # the receive future waited forever for a peer with nothing to say)
    assert misuse(7, server.port) == ["ok", "end", failure, failure]
    server.wait_idle()  # the peer saw the connection end
    with without_gc():  # and nothing of it is left (the first run opened the host's lazy descriptors)
        before = open_fds()
        assert misuse(7, server.port) == ["ok", "end", failure, failure]
        server.wait_idle()
        assert open_fds() <= before


def test_a_refused_call_is_an_error_result_not_a_logged_failure(misuse, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        misuse(3)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- the host's sessions, limits and descriptors ---------------------------------------------


def test_a_second_connection_resumes_the_session(p3_host: Host, component: Any, peers, leaf, pki: Pki) -> None:
    server = PeerServer(http_response(b"x"), leaf.server_context())
    peers.append(server)
    seen: list[Any] = []
    config = WasiConfig(tls=TlsConfig(trust=[pki.ca_pem], use_system_roots=False, on_handshake=seen.append))
    with p3_host.instantiate(component, config) as guest:
        for _ in range(2):
            assert guest.call("fetch", server.port, "localhost", REQUEST)[2:] == ("ok", "ok", "ok")
    assert [info.resumed for info in seen] == [False, True]
    # Upstream offers the guest no certificate, so the host decodes the chain only for
    # such a hook: it still gets the server's.
    assert seen[0].peer_chain_der[:1] == [ssl.PEM_cert_to_DER_cert(leaf.leaf.cert_chain_pems[0].bytes().decode())]


def test_sessions_are_kept_per_server_port(p3_host: Host, component: Any, peers, leaf, pki: Pki) -> None:
    """Two servers of one name on two ports (each with its own ticket keys): a connection to
    the first, one to the second, then the first again resumes the first's session. The
    sessions' key had no port for a 0.3 connection (its stream was read directly), so the
    second server's session replaced the first's and the third connection offered it in vain."""
    first = PeerServer(http_response(b"x"), leaf.server_context())
    second = PeerServer(http_response(b"x"), leaf.server_context())
    peers.extend([first, second])
    seen: list[Any] = []
    config = WasiConfig(tls=TlsConfig(trust=[pki.ca_pem], use_system_roots=False, on_handshake=seen.append))
    with p3_host.instantiate(component, config) as guest:
        for server in (first, second, first):
            assert guest.call("fetch", server.port, "localhost", REQUEST)[2:] == ("ok", "ok", "ok")
    assert [info.resumed for info in seen] == [False, False, True]


def test_no_descriptor_leaks_and_the_host_keeps_serving(fetch, peers, leaf) -> None:
    good = PeerServer(http_response(b"y" * 1000), leaf.server_context())
    garbage = PeerServer(send_garbage)
    peers.extend([good, garbage])
    fetch(good.port)  # warm-up: lazily opened host descriptors
    with without_gc():
        before = open_fds()
        threads = threading.active_count()
        for _ in range(5):
            assert fetch(good.port).received == len(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n") + 1000
            assert fetch(garbage.port).connect.startswith("decode-error")
        good.wait_idle()
        garbage.wait_idle()
        assert open_fds() <= before
        assert threading.active_count() <= threads
