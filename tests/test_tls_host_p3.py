"""This project's ``wasi-tls-host:tls@0.2.0`` (TLS on WASI 0.3 streams) as a server guest
uses it, against real clients on loopback: ``openssl s_client``, CPython ``ssl``, GnuTLS,
Go, and clients that misbehave on purpose.

The guest is ``guest_examples/wat/tls_p3_server.wat``: it takes TCP connections from the
stand-in ``wasi-tls-host:test/tcp`` (devtools/tcp_p3.py), chooses each identity by the
name the ClientHello asked for (or ``default``), and echoes through the host alone; it
reports per connection how the handshake and both directions ended. A module-wide audit
hook sees every value any host function returns, and every value written into a stream or
future, and searches them for the private keys in every encoding.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import attestation_ca_files, open_fds, without_gc
from devtools.tcp_p3 import listen, tcp, unlisten
from tls_server_util import TIMEOUT, KeyAudit, ServerPki, alert_after, cpython_hello, read_to_end, ssl_echo
from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.host import all_interfaces
from wasi_tls_host.runtime.binding import OUTGOING_VALUE_HOOKS
from wasi_tls_host.tls import PrivateIdentity, TlsConfig
from wasi_tls_host.tls.limits import TlsLimits

pytestmark = pytest.mark.timeout(120)

# The error-code enum of wasi-tls-host:tls@0.2.0, in its order (the guest reports indices).
ERROR_CODES = ["unknown-issuer", "expired", "not-yet-valid", "name-mismatch", "bad-certificate", "handshake-failure",
               "protocol-version", "peer-alert", "decode-error", "closed", "truncated", "access-denied", "invalid-state",
               "would-block", "invalid-argument", "internal", "code-mismatch"]
REQUIRE_CLIENT = 1
ALERT_USER_CANCELED = 90
ALERT_INTERNAL_ERROR = 80


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    return ServerPki(tmp_path_factory.mktemp("server-pki"))


def named(identity: PrivateIdentity, name: str) -> PrivateIdentity:
    return PrivateIdentity(name, identity.chain, identity.key, openssl_key=identity.openssl_key)


@pytest.fixture(scope="module")
def identities(pki: ServerPki) -> list[PrivateIdentity]:
    """Identities named by the host names they serve, and the one for clients without SNI."""
    return [named(pki.identity_a, "a.test"), named(pki.identity_b, "b.test"), named(pki.identity_a, "default")]


@pytest.fixture(scope="module", autouse=True)
def key_audit(pki: ServerPki) -> Iterator[KeyAudit]:
    audit = KeyAudit()
    for identity in (pki.identity_a, pki.identity_b, pki.identity_alice, pki.identity_mallory):
        audit.add_key(identity.name, identity.key)
    OUTGOING_VALUE_HOOKS.append(audit.hook)
    yield audit
    OUTGOING_VALUE_HOOKS.remove(audit.hook)
    assert audit.findings == [], audit.findings
    # It saw what crossed into guests through streams and futures, not only results.
    assert any(f.endswith("connection.receive (plaintext)") for f in audit.functions_seen), audit.functions_seen
    assert any(f.endswith("#accept (ciphertext)") for f in audit.functions_seen), audit.functions_seen


@pytest.fixture(scope="module")
def p3_host() -> Iterator[Host]:
    with Host(interfaces=[*all_interfaces(), tcp], runtime="core") as host:
        yield host


@dataclass
class Record:
    """How one connection went, as the guest saw it."""

    error: str | None  # the handshake's error code (None: established)
    message: str
    sni: str
    version: int
    suite: int
    peer: str
    receive: str | None  # how the receive direction ended (None: ok)
    receive_message: str
    send: str | None
    send_message: str

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> Record:
        code, message, sni, version, suite, peer, rcode, rmessage, scode, smessage = row
        name = lambda c: None if c == -1 else ERROR_CODES[c]  # noqa: E731
        return cls(name(code), message, sni, version, suite, peer, name(rcode), rmessage, name(scode), smessage)


class ServerGuest:
    """``serve`` on a thread, on a listener of the stand-in."""

    def __init__(self, host: Host, component: Any, config: TlsConfig, count: int, flags: int = 0, stall_ms: int = 0) -> None:
        self.listener = listen()
        self.port = self.listener.getsockname()[1]
        self.guest = host.instantiate(component, WasiConfig(tls=config))
        self.records: list[Record] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(count, flags, stall_ms), daemon=True)
        self.thread.start()

    def _run(self, count: int, flags: int, stall_ms: int) -> None:
        try:
            self.records = [Record.of(row) for row in self.guest.call("serve", self.port, count, flags, stall_ms)]
        except BaseException as e:  # reported by result()
            self.error = e

    def result(self, timeout: float = TIMEOUT) -> list[Record]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the guest server did not finish"
        if self.error is not None:
            raise self.error
        assert self.records is not None
        return self.records

    def close(self) -> None:
        if self.thread.is_alive():
            self.guest.interrupt("the test is over")
            self.thread.join(TIMEOUT)
        self.guest.close()
        if self.listener.fileno() != -1:
            unlisten(self.listener)


@pytest.fixture
def serve(p3_host: Host, guest_path, pki: ServerPki, identities) -> Iterator[Any]:
    component = p3_host.load(guest_path("tls_p3_server"))
    started: list[ServerGuest] = []

    def start(count: int = 1, flags: int = 0, stall_ms: int = 0, tls: TlsConfig | None = None) -> ServerGuest:
        config = tls or TlsConfig(use_system_roots=False, identities=identities, client_ca=[pki.client_ca_pem])
        server = ServerGuest(p3_host, component, config, count, flags, stall_ms)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def client_context(pki: ServerPki, cert: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    if cert is not None:
        ctx.load_cert_chain(str(cert))
    return ctx


def subject_cn(cert: dict[str, Any]) -> str:
    return next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName")


# --- identities by name, real clients ----------------------------------------------------------


def test_the_name_in_the_client_hello_chooses_the_identity(serve, pki: ServerPki) -> None:
    server = serve(count=3)
    ctx = client_context(pki)
    for name in ("a.test", "b.test"):
        got, cert, _ = ssl_echo(server.port, ctx, name, b"hello " + name.encode())
        assert got == b"hello " + name.encode() and subject_cn(cert) == name
    no_sni = ssl.create_default_context(cafile=str(pki.ca_pem))
    no_sni.check_hostname = False
    got, cert, _ = ssl_echo(server.port, no_sni, None)
    assert subject_cn(cert) == "a.test"  # "default"
    records = server.result()
    assert [r.sni for r in records] == ["a.test", "b.test", ""]
    assert all(r.error is None and r.receive is None and r.send is None for r in records), records
    assert {r.version for r in records} == {0x0304} and records[0].suite in (0x1301, 0x1302, 0x1303)


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client(serve, pki: ServerPki, flag: str) -> None:
    server = serve()
    # s_client ends the connection at the end of its input: keep it open until the echo came.
    with subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-CAfile", str(pki.ca_pem),
                           "-verify_return_error", "-servername", "b.test", flag], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("echo me\n")
        proc.stdin.flush()
        lines = []
        deadline = time.monotonic() + TIMEOUT
        while "echo me\n" not in lines and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        proc.stdin.close()
        out = "".join(lines) + proc.stdout.read()
        proc.wait(TIMEOUT)
    assert "Verify return code: 0 (ok)" in out and "CN = b.test" in out and "echo me\n" in lines, out
    [record] = server.result()
    assert record.error is None and record.version == (0x0303 if flag == "-tls1_2" else 0x0304), record


@pytest.mark.skipif(shutil.which("gnutls-cli") is None, reason="GnuTLS (gnutls-bin) is not installed")
def test_gnutls_client(serve, pki: ServerPki) -> None:
    server = serve()
    r = subprocess.run(["gnutls-cli", "--x509cafile", str(pki.ca_pem), "--sni-hostname", "a.test", "--verify-hostname", "a.test",
                        "-p", str(server.port), "127.0.0.1"], input=b"gnutls here\n", capture_output=True, timeout=30)
    assert b"gnutls here" in r.stdout, r.stdout + r.stderr
    [record] = server.result()
    assert record.error is None and record.sni == "a.test", record


def test_go_client(serve, gotls, pki: ServerPki) -> None:
    server = serve()
    run = gotls.client("-connect", f"127.0.0.1:{server.port}", "-server-name", "b.test", "-ca", str(pki.ca_pem), "-send", "go here")
    assert run.exit_code == 0, run.stderr
    assert run.connections[0]["reply"] == "go here" and "b.test" in run.connections[0]["peer_subject"], run.connections
    [record] = server.result()
    assert record.error is None and record.sni == "b.test", record


def test_a_name_with_no_identity_is_refused_with_an_alert(serve, pki: ServerPki) -> None:
    server = serve()
    with pytest.raises(ssl.SSLError, match="INTERNAL_ERROR"):
        ssl_echo(server.port, client_context(pki), "c.test")
    [record] = server.result()
    assert record.error == "access-denied", record
    assert record.message.startswith("no identity named 'c.test' was preopened for this guest (it has: 'a.test', 'b.test', 'default'")


# --- mutual TLS ---------------------------------------------------------------------------------


def test_mutual_tls_shows_the_client_and_refuses_one_without_a_certificate(serve, pki: ServerPki) -> None:
    server = serve(count=2, flags=REQUIRE_CLIENT)
    got, _, _ = ssl_echo(server.port, client_context(pki, pki.client.pem), "a.test")
    assert got == b"ping"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        ssl_echo(server.port, client_context(pki), "a.test")
    established, refused = server.result()
    assert established.error is None and established.peer.startswith("CN=alice,"), established
    assert refused.error == "bad-certificate" and "sent no certificate" in refused.message, refused


# --- bad clients --------------------------------------------------------------------------------


# Named by label only: the data holds random bytes, and parallel workers (pytest-xdist) must
# collect the same test names.
@pytest.mark.parametrize(("label", "data", "code", "alert"), [
    pytest.param("plain HTTP", b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", "decode-error", None, id="plain HTTP"),
    pytest.param("oversized hello", b"\x16\x03\x01\x40\x00\x01\x10\x00\x00" + b"\x03\x03" + os.urandom(16378),
                 "decode-error", 50, id="oversized hello"),
    pytest.param("half a hello, then the end", cpython_hello("a.test")[:40], "closed", None, id="half a hello"),
])
def test_malformed_first_flights_are_refused(serve, label: str, data: bytes, code: str, alert: int | None) -> None:
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(data)
        if code == "closed":
            s.shutdown(socket.SHUT_WR)
        reply = read_to_end(s)
    assert reply == (b"" if alert is None else bytes([21, 3, 3, 0, 2, 2, alert]))
    [record] = server.result()
    assert record.error == code, record


def _warm_up(serve: Any, ctx: ssl.SSLContext) -> None:
    """One connection served, so that what the host opens lazily is open before fds are counted."""
    warm = serve(count=1)
    ssl_echo(warm.port, ctx, "a.test")
    warm.result()


def _broken_then_served(serve: Any, pki: ServerPki, monkeypatch: pytest.MonkeyPatch, target: Any, name: str,
                        broken: Any) -> tuple[bytes, Record, Record]:
    """One client served while ``target.name`` is ``broken``, then one served normally, with
    no descriptor kept (the GC off): what the first client read, and how the guest saw each."""
    ctx = client_context(pki)
    _warm_up(serve, ctx)
    with without_gc():
        before = open_fds()
        server = serve(count=2)
        with monkeypatch.context() as patch:
            patch.setattr(target, name, broken)
            reply = alert_after(server.port, cpython_hello("a.test"))
        assert ssl_echo(server.port, ctx, "a.test")[0] == b"ping"  # and the host goes on serving
        failed, served = server.result()
        server.close()
        assert open_fds() <= before
    assert served.error is None, served
    return reply, failed, served


def test_a_host_error_reading_the_hello_ends_that_connection_with_an_alert(serve, pki: ServerPki,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the host while it reads a ClientHello (here the parser raising): that client
    gets internal_error and its connection closes, the guest an error saying so; before, the
    task ended and the connection stayed open, silent, its descriptor kept."""
    from wasi_tls_host.tls import client_hello

    def broken(message: bytes) -> Any:
        raise IndexError("index out of range")

    reply, failed, _ = _broken_then_served(serve, pki, monkeypatch, client_hello, "parse_client_hello", broken)
    assert reply == bytes([21, 3, 3, 0, 2, 2, 80])  # internal_error
    assert failed.error == "internal" and "host error: IndexError" in failed.message, failed


def test_any_host_error_in_the_hello_task_closes_that_connection(serve, pki: ServerPki, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host error in the hello's task outside reading the hello (here its step raising):
    the connection closes and the guest's call says why; before, the task ended silently
    with the connection open and its descriptor kept."""
    from wasi_tls_host.tls.server_p3 import IncomingClientHelloP3

    def broken(self: IncomingClientHelloP3) -> bool:
        raise RuntimeError("a host bug")

    reply, failed, _ = _broken_then_served(serve, pki, monkeypatch, IncomingClientHelloP3, "step", broken)
    assert reply == b""  # closed, no alert (nothing was read to answer)
    assert failed.error == "internal" and "host error: RuntimeError: a host bug" in failed.message, failed


def test_a_guest_that_never_answers_is_ended_by_the_deadline_with_an_alert(serve, pki: ServerPki, identities) -> None:
    config = TlsConfig(use_system_roots=False, identities=identities, limits=TlsLimits(handshake_timeout=0.3))
    server = serve(stall_ms=1500, tls=config)
    started = time.monotonic()
    reply = alert_after(server.port, cpython_hello("a.test"))
    assert reply == bytes([21, 3, 3, 0, 2, 2, ALERT_USER_CANCELED])  # at the deadline, not when the guest woke
    assert time.monotonic() - started < 1.4
    [record] = server.result()
    assert record.error == "closed" and "timed out" in record.message, record


def test_a_client_that_stops_mid_handshake_is_ended_by_the_deadline(serve, pki: ServerPki, identities) -> None:
    config = TlsConfig(use_system_roots=False, identities=identities, limits=TlsLimits(handshake_timeout=0.3))
    server = serve(tls=config)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(cpython_hello("a.test"))  # and nothing more: the server's flight is never answered
        read_to_end(s)
    [record] = server.result()
    assert record.error == "closed" and "timed out" in record.message, record


def test_a_handshake_the_client_abandons_leaves_no_task_behind(serve, pki: ServerPki) -> None:
    # The ClientHello's task used to miss its wake-up at the hand-over (the connection's task
    # cleared the shared event first) and wait forever with the port and socket: 60 KiB per
    # aborted connection in the 0.3 soak. (One task now runs the hello and the handshake.)
    server = serve(count=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(cpython_hello("a.test"))
        s.recv(100)  # the server's flight has started: the guest answered the hello
    [record] = server.result()
    assert record.error == "closed", record
    from wasi_tls_host.runtime.store import state_of

    pending = [t.name for t in state_of(server.guest.store).scheduler._tasks if not t.done]
    assert "TLS server connection" not in pending, pending


def test_abandoned_handshakes_free_their_connections_without_the_garbage_collector(serve, pki: ServerPki) -> None:
    # A failed handshake's host call ends with a WIT error; its traceback (and the TLS
    # failure it replaced, kept as its context) held the coroutine's frames and the
    # scheduler's (a cycle through the task): each abandoned connection's transport, OpenSSL
    # connection and streams waited for a GC pass (RSS +30% over 1,024 such connections in
    # the 0.3 soak).
    import gc

    from wasi_tls_host.tls.p3 import StreamTransport

    def live_transports() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, StreamTransport))

    abandoned = 8
    gc.collect()
    with without_gc():
        before = live_transports()
        server = serve(count=abandoned)
        for _ in range(abandoned):
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
                s.sendall(cpython_hello("a.test"))
                s.recv(100)  # the server's flight has started; the client goes away
        records = server.result()
        assert [r.error for r in records] == ["closed"] * abandoned, records
        assert live_transports() - before == 0


def test_a_client_that_resets_is_an_error_and_the_host_keeps_serving(serve, pki: ServerPki) -> None:
    server = serve(count=2)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, bytes(8).replace(b"\x00", b"\x01", 1))  # RST on close
    raw.sendall(cpython_hello("a.test"))
    raw.close()
    assert ssl_echo(server.port, client_context(pki), "a.test")[0] == b"ping"
    reset, served = server.result()
    assert reset.error == "closed", reset
    assert served.error is None and served.receive is None, served


def test_truncation_is_reported_on_the_receive_future(serve, pki: ServerPki) -> None:
    server = serve()
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    with client_context(pki).wrap_socket(raw, server_hostname="a.test") as tls:
        tls.sendall(b"then nothing")
        assert tls.recv(100) == b"then nothing"
        tls.shutdown(socket.SHUT_WR)  # TCP's end of data, without close_notify
        read_to_end(tls)  # the server's close_notify (its echo ended), then its end
    [record] = server.result()
    assert record.error is None and record.receive == "truncated", record


def test_no_descriptor_leaks_with_the_gc_off(serve, pki: ServerPki) -> None:
    ctx = client_context(pki)
    _warm_up(serve, ctx)
    with without_gc():
        before = open_fds()
        server = serve(count=6)
        for _ in range(3):
            ssl_echo(server.port, ctx, "a.test")
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                read_to_end(s)
        server.result()
        server.close()
        assert open_fds() <= before


# --- the client side, and both sides as guests ---------------------------------------------------


@dataclass
class ClientResult:
    error: str | None
    message: str
    version: int
    suite: int
    server: str
    reply: bytes
    receive: str | None
    receive_message: str


@pytest.fixture
def request_(p3_host: Host, guest_path, pki: ServerPki):
    """request(port, name, identity="", expect="", data=b"ping", tls=...) by the 0.3 client guest."""
    component = p3_host.load(guest_path("tls_p3_host_client"))

    def run(port: int, name: str, identity: str = "", expect: str = "", data: bytes = b"ping", *, tls: TlsConfig | None = None) -> ClientResult:
        config = tls or TlsConfig(trust=[pki.ca_pem], use_system_roots=False, identities=[pki.identity_alice, pki.identity_mallory])
        with p3_host.instantiate(component, WasiConfig(tls=config)) as guest:
            code, message, version, suite, server, reply, rcode, rmessage = guest.call("request", port, name, identity, expect, data)
        return ClientResult(None if code == -1 else ERROR_CODES[code], message, version, suite, server, reply,
                            None if rcode == -1 else ERROR_CODES[rcode], rmessage)

    return run


def test_guest_client_and_guest_server_with_mutual_tls(serve, request_, pki: ServerPki) -> None:
    server = serve(count=2, flags=REQUIRE_CLIENT)
    r = request_(server.port, "b.test", identity="alice", data=b"both guests")
    assert (r.error, r.reply, r.receive) == (None, b"both guests", None), r
    assert r.server.startswith("CN=b.test,") and r.version == 0x0304
    r = request_(server.port, "a.test")  # no identity: the server refuses it
    # TLS 1.3: the client's handshake is done before the server checks its (missing)
    # certificate, so the refusal arrives as the server's alert, on the receive future.
    assert (r.error, r.reply, r.receive) == (None, b"", "bad-certificate"), r
    assert r.receive_message == "TLS connection failed: the peer sent alert 'certificate required'"
    client_seen, refused = server.result()
    assert client_seen.peer.startswith("CN=alice,") and client_seen.error is None, client_seen
    assert refused.error == "bad-certificate", refused


def test_guest_client_against_openssl_requiring_a_client_certificate(request_, s_server, pki: ServerPki) -> None:
    server = s_server("-Verify", "1", "-verify_return_error", "-CAfile", str(pki.client_ca_pem), "-rev")
    r = request_(server.port, "a.test", identity="alice", data=b"olleh\n")
    assert r.error is None and r.reply == b"hello\n", r  # s_server -rev answers each line reversed
    assert "CN = alice" in server.log or "CN=alice" in server.log


def test_a_client_identity_must_be_preopened(request_, pki: ServerPki) -> None:
    r = request_(1, "a.test", identity="carol")
    assert r.error == "access-denied" and "no identity named 'carol'" in r.message, r


def test_the_guest_client_says_why_verification_failed(serve, request_, pki: ServerPki) -> None:
    server = serve()
    r = request_(server.port, "b.test", tls=TlsConfig(use_system_roots=False))  # trusts nothing
    assert r.error == "unknown-issuer" and "unable to get local issuer certificate" in r.message, r
    [refused] = server.result()
    assert refused.error is not None  # the server saw the client's alert


def test_sessions_are_kept_per_server_port(p3_host: Host, guest_path, pki: ServerPki) -> None:
    """One guest's connections to two servers of one name on two ports (each with its own
    ticket keys): first, second, first again: the third resumes the first's session (the
    sessions' key had no port for a 0.3 connection, so the second's replaced it)."""
    from tls_peers import PeerServer, echo

    def context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        pki.leaf_a.configure_cert(ctx)
        return ctx

    first, second = PeerServer(echo, context()), PeerServer(echo, context())
    seen: list[Any] = []
    config = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, on_handshake=seen.append)
    try:
        with p3_host.instantiate(p3_host.load(guest_path("tls_p3_host_client")), WasiConfig(tls=config)) as guest:
            for server in (first, second, first):
                code, message, *_, reply, _, _ = guest.call("request", server.port, "a.test", "", "", b"ping")
                assert (code, reply) == (-1, b"ping"), message
    finally:
        first.stop()
        second.stop()
    assert [info.resumed for info in seen] == [False, False, True]


# --- code-bound identities ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def attest_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca_pem, ca_key = attestation_ca_files(tmp_path_factory.mktemp("attest"))
    return {"ca": ca_pem, "key": ca_key}


def attested_config(attest_pki: dict[str, Path], **options: Any) -> TlsConfig:
    from wasi_tls_host.attestation import AttestationCA

    ca = AttestationCA.from_files(attest_pki["ca"], attest_pki["key"], names=["svc.test"], identity_name="svc.test")
    return TlsConfig(use_system_roots=False, attest_ca=ca, **options)


def test_expect_peer_code_accepts_the_attested_server_and_refuses_other_code(serve, request_, attest_pki, guest_path) -> None:
    from wasi_tls_host.provenance import digest

    server_digest = digest(guest_path("tls_p3_server").read_bytes())
    other = "sha256:" + "00" * 32
    server = serve(count=2, tls=attested_config(attest_pki))
    established: list[Any] = []
    trusting = TlsConfig(trust=[attest_pki["ca"]], attest_trust=[attest_pki["ca"]], use_system_roots=False,
                         on_handshake=established.append)
    r = request_(server.port, "svc.test", expect=server_digest, data=b"attested", tls=trusting)
    assert (r.error, r.reply) == (None, b"attested"), r  # its identity "svc.test" is its attested one
    r = request_(server.port, "svc.test", expect=other, tls=trusting)
    assert r.error == "code-mismatch" and "code identity was refused" in r.message, r
    # Refused before the handshake counted as established: nothing answered for it, and
    # the embedder's hook saw only the first connection.
    assert r.version == 0 and r.reply == b"" and len(established) == 1


def test_an_attested_client_identity_by_name(serve, request_, attest_pki, pki: ServerPki, identities) -> None:
    server = serve(flags=REQUIRE_CLIENT, tls=TlsConfig(use_system_roots=False, identities=identities, client_ca=[attest_pki["ca"]]))
    client = attested_config(attest_pki, trust=[pki.ca_pem])
    r = request_(server.port, "a.test", identity="svc.test", data=b"me", tls=client)
    assert (r.error, r.reply) == (None, b"me"), r
    [seen] = server.result()
    assert seen.error is None and seen.peer == "CN=svc.test", seen  # the attested certificate
