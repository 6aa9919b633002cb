"""The TLS resources' state tables (tls/states.py) against what guests observe, and peers
that vanish at every stage while a guest waits.

The state cases are generated from the tables: for each resource, each state a guest can
reach, and each call, the ``tls_states`` guest drives the resource there with a real peer
(CPython ``ssl`` clients and servers, or raw sockets that stop mid-way) and makes the call;
the answer must be what ``Machine.answer`` says. Consuming calls end a run, so each case
makes the state's non-consuming calls and then one consuming call.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trustme

from conftest import free_port, open_fds, without_gc
from tls_server_util import TIMEOUT, GuestThread, ServerPki
from wasi_tls_host import Host
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.tls.limits import TlsLimits, TlsUsage
from wasi_tls_host.tls.states import (
    CLIENT_EXCHANGE,
    CLIENT_HELLO,
    CONNECTION,
    SERVER_HELLO,
    ClientHelloState,
    ConnectionState,
    HandshakeState,
    Machine,
)
from wasi_tls_host.wasi.sockets import NetworkPolicy

pytestmark = pytest.mark.timeout(120)

CONSUMING = {"accept", "reject", "finish"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    return ServerPki(tmp_path_factory.mktemp("states-pki"))


@pytest.fixture(scope="module")
def component(host: Host, guest_path) -> Any:
    return host.load(guest_path("tls_states"))


class Guest(GuestThread):
    """``tls_states ARGS...`` on a thread of this process; ``lines`` are its printed lines."""

    def __init__(self, host: Host, component: Any, port: int, args: list[str], tls: TlsConfig) -> None:
        self.outcome_at: float | None = None  # when the guest printed its outcome
        policy = NetworkPolicy().allow_listen(f"127.0.0.1:{port}").allow_connect(f"127.0.0.1:{port}")
        super().__init__(host, component, ["tls_states", *args], network=policy, tls=tls)

    def _printed(self) -> None:
        if self.outcome_at is None and b"outcome=" in self._out:
            self.outcome_at = time.monotonic()

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while not any(text in line for line in self.lines):
                if time.monotonic() > deadline or not self.thread.is_alive():
                    raise AssertionError(f"the guest never printed {text!r}: {self.lines} {self._err.decode(errors='replace')} {self.result}")
                self._changed.wait(0.1)

    def finish(self) -> dict[str, str]:
        """Wait for the guest to end (bounded: a guest stuck waiting fails the test)."""
        self.thread.join(TIMEOUT)
        if self.thread.is_alive():
            self.guest.interrupt("test: the guest did not finish")
            self.thread.join(TIMEOUT)
            raise AssertionError(f"the guest was still waiting after {TIMEOUT} s: {self.lines}")
        assert self.result is not None and self.result.exit_code == 0, (self.result, self.lines, self._err.decode(errors="replace"))
        return dict(line.split("=", 1) for line in self.lines if "=" in line)


@pytest.fixture
def start(host: Host, component: Any, pki: ServerPki) -> Iterator[Callable[..., Guest]]:
    guests: list[Guest] = []

    def run(port: int, *args: str, tls: TlsConfig | None = None, listening: bool = True) -> Guest:
        guest = Guest(host, component, port, [*args[:1], str(port), *args[1:]], tls or pki.server_config(client_ca=False))
        guests.append(guest)
        if listening:
            guest.wait_for("listening on")
        return guest

    yield run
    for guest in guests:
        if guest.thread.is_alive():
            guest.guest.interrupt("test teardown")
            guest.thread.join(TIMEOUT)


# --- peers -------------------------------------------------------------------------------


def client_hello(version: ssl.TLSVersion | None = None) -> bytes:
    """A real first flight from CPython's ssl (OpenSSL), produced without a socket;
    ``version``: the only one it offers."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="a.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def read_some(sock: socket.socket) -> bytes:
    return sock.recv(65536)


def ssl_client(pki: ServerPki, port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    raw = connect(port)
    try:
        return ctx.wrap_socket(raw, server_hostname="a.test")
    except BaseException:
        raw.close()
        raise


class Peers:
    """Peers of one test; everything is closed at teardown."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []

    def keep(self, sock: socket.socket) -> socket.socket:
        self.sockets.append(sock)
        return sock

    def background(self, fn: Callable[[], None]) -> None:
        thread = threading.Thread(target=fn, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        for sock in list(self.sockets):
            sock.close()  # unblocks the threads
        for thread in self.threads:
            thread.join(TIMEOUT)
        for sock in self.sockets:
            sock.close()  # and what they kept while finishing


@pytest.fixture
def peers() -> Iterator[Peers]:
    p = Peers()
    yield p
    p.close()


def ssl_server(pki: ServerPki, leaf: trustme.LeafCert, peers: Peers) -> int:
    """A CPython ssl server for one connection: handshake, then hold it until teardown."""
    listener = peers.keep(socket.create_server(("127.0.0.1", 0)))
    listener.settimeout(TIMEOUT)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        peers.keep(conn)
        try:
            peers.keep(ctx.wrap_socket(conn, server_side=True))
        except (ssl.SSLError, OSError):
            pass

    peers.background(serve)
    return listener.getsockname()[1]


def silent_server(peers: Peers) -> int:
    """Accepts the TCP connection and never says anything."""
    listener = peers.keep(socket.create_server(("127.0.0.1", 0)))
    listener.settimeout(TIMEOUT)

    def hold() -> None:
        try:
            peers.keep(listener.accept()[0])
        except OSError:
            pass

    peers.background(hold)
    return listener.getsockname()[1]


# --- the state tables, generated cases -----------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """How to bring a resource into ``state`` with a real peer, and what its failure is."""

    machine: Machine  # type: ignore[type-arg]
    state: Any
    command: str
    wait: str
    failure: str | None = None  # the error code a failed state answers with

    @property
    def id(self) -> str:
        return f"{self.machine.resource}-{self.state.value}"


SCENARIOS = [
    Scenario(CLIENT_HELLO, ClientHelloState.READING, "hello", "now"),
    Scenario(CLIENT_HELLO, ClientHelloState.RECEIVED, "hello", "wait"),
    Scenario(CLIENT_HELLO, ClientHelloState.FAILED, "hello", "wait", failure="decode-error"),
    Scenario(CLIENT_EXCHANGE, HandshakeState.RUNNING, "exchange", "now"),
    Scenario(CLIENT_EXCHANGE, HandshakeState.ESTABLISHED, "exchange", "wait"),
    Scenario(CLIENT_EXCHANGE, HandshakeState.FAILED, "exchange", "wait", failure="closed"),
    Scenario(SERVER_HELLO, HandshakeState.RUNNING, "server-hello", "now"),
    Scenario(SERVER_HELLO, HandshakeState.ESTABLISHED, "server-hello", "wait"),
    Scenario(SERVER_HELLO, HandshakeState.FAILED, "server-hello", "wait", failure="unknown-issuer"),
]
# States a guest cannot reach: after a consuming call its handle is gone.
UNREACHABLE = {ClientHelloState.ANSWERED, HandshakeState.FINISHED}


def test_every_reachable_state_has_a_scenario() -> None:
    for machine in (CLIENT_HELLO, CLIENT_EXCHANGE, SERVER_HELLO):
        covered = {s.state for s in SCENARIOS if s.machine is machine}
        assert covered == set(type(machine.initial)) - UNREACHABLE, machine.resource


def _cases() -> Iterator[Any]:
    for scenario in SCENARIOS:
        calls = list(scenario.machine.calls)
        plain = [c for c in calls if c not in CONSUMING]
        for last in [c for c in calls if c in CONSUMING]:
            yield pytest.param(scenario, [*plain, last], id=f"{scenario.id}-then-{last}")


def _setup_peer(scenario: Scenario, port: int, pki: ServerPki, peers: Peers) -> None:
    """The peer side of a server-role scenario (the guest listens on ``port``)."""
    resource, state = scenario.machine.resource, scenario.state
    if resource == "incoming-client-hello":
        sock = peers.keep(connect(port))
        if state is ClientHelloState.RECEIVED:
            sock.sendall(client_hello())
        elif state is ClientHelloState.FAILED:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    elif state is HandshakeState.ESTABLISHED:
        peers.background(lambda: peers.keep(ssl_client(pki, port)) and None)
    else:
        sock = peers.keep(connect(port))
        sock.sendall(client_hello())
        if state is HandshakeState.FAILED:
            read_some(sock)  # the server's flight: the exchange is under way
            sock.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize(("scenario", "calls"), list(_cases()))
def test_every_call_in_every_state_answers_as_the_table_says(start, pki: ServerPki, peers: Peers, tmp_path: Path, scenario: Scenario, calls: list[str]) -> None:
    machine = scenario.machine
    if machine is SERVER_HELLO:
        if scenario.state is HandshakeState.RUNNING:
            port = silent_server(peers)
        else:
            ca = pki.ca if scenario.state is HandshakeState.ESTABLISHED else trustme.CA(organization_name="untrusted")
            port = ssl_server(pki, ca.issue_cert("localhost"), peers)
        guest = start(port, scenario.command, scenario.wait, *calls, listening=False)
    else:
        port = free_port()
        guest = start(port, scenario.command, scenario.wait, *calls)
        _setup_peer(scenario, port, pki, peers)
    answers = guest.finish()
    expected = {}
    for call in calls:
        answer = machine.answer(scenario.state, call)
        expected[call] = scenario.failure if answer == "failure" else answer
    assert {call: answers.get(call) for call in calls} == expected


@pytest.mark.parametrize("calls", [
    list(CONNECTION.calls),
    ["close-output", *CONNECTION.calls],  # OUTPUT_CLOSED: close-output again, and the rest
])
def test_connection_calls_in_both_states(start, pki: ServerPki, peers: Peers, calls: list[str]) -> None:
    port = free_port()
    guest = start(port, "connection", *calls)
    peers.background(lambda: peers.keep(ssl_client(pki, port)) and None)
    answers = guest.finish()
    state = ConnectionState.OPEN
    for call in calls:
        assert answers[call] == CONNECTION.answer(state, call), call
    assert set(CONNECTION.calls) <= set(answers)


# --- peers that vanish -------------------------------------------------------------------


def _vanishing_peer(stage: str, port: int, pki: ServerPki, peers: Peers) -> float:
    """Play the peer until ``stage``, then vanish; returns when it vanished."""
    sock = connect(port) if stage in ("before-hello", "mid-handshake") else ssl_client(pki, port)
    try:
        if stage == "mid-handshake":
            sock.sendall(client_hello())
            read_some(sock)  # the server's answer: it is mid-handshake now
        elif stage == "after-data":
            sock.sendall(b"hello")  # then no close_notify: a truncation
        elif stage == "while-writing":
            received = 0
            while received < 100_000:
                chunk = sock.recv(65536)
                assert chunk, "the guest stopped writing before the peer vanished"
                received += len(chunk)
            # closed with unread data: the kernel resets the connection
        return time.monotonic()
    finally:
        sock.close()


@pytest.mark.parametrize(("stage", "mode", "outcome"), [
    ("before-hello", "poll", "closed"),
    ("before-hello", "block", "closed"),
    ("mid-handshake", "poll", "closed"),
    ("mid-handshake", "block", "closed"),
    ("after-data", "poll", "truncated"),
    ("after-data", "blocking-read", "truncated"),
    ("while-writing", "poll", "closed"),
    ("while-writing", "blocking-flush", "closed"),
])
def test_a_vanished_peer_is_noticed_while_the_guest_waits(start, pki: ServerPki, peers: Peers, stage: str, mode: str, outcome: str) -> None:
    """The guest learns of it from its wait, with the specific error, not from its own 5 s
    timer (poll) and without waiting forever (blocking calls)."""
    port = free_port()
    guest = start(port, "vanish", stage, mode)
    vanished = _vanishing_peer(stage, port, pki, peers)
    result = guest.finish()
    assert result["outcome"] == outcome, guest.lines
    assert guest.outcome_at is not None
    # Reported, not asserted (no speed assertions in tests): from the peer's close to the
    # guest's printed outcome, guest-side printing included.
    print(f"{stage}/{mode}: the guest learned {1000 * (guest.outcome_at - vanished):.1f} ms after the peer vanished")


def test_vanishing_peers_leave_no_descriptor(start, pki: ServerPki, peers: Peers) -> None:
    port = free_port()
    warm_up = start(port, "vanish", "after-data", "poll")  # lazily opened host descriptors
    _vanishing_peer("after-data", port, pki, peers)
    warm_up.finish()
    with without_gc():
        before = open_fds()
        for stage, mode in [("before-hello", "poll"), ("mid-handshake", "block"), ("after-data", "blocking-read"), ("while-writing", "blocking-flush")]:
            port = free_port()
            guest = start(port, "vanish", stage, mode)
            _vanishing_peer(stage, port, pki, peers)
            guest.finish()
        assert open_fds() <= before


# --- limits ------------------------------------------------------------------------------


def _records(sock: socket.socket) -> list[tuple[int, bytes]]:
    """(content type, payload) of the records the server sends until it closes."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    records = []
    while len(data) >= 5:
        length = int.from_bytes(data[3:5], "big")
        records.append((data[0], data[5:5 + length]))
        data = data[5 + length:]
    return records


USER_CANCELED_ALERT = (21, bytes([2, 90]))  # a fatal user_canceled alert record, plaintext


@pytest.mark.parametrize(("stage", "version"), [
    ("before-hello", None),
    ("mid-handshake", ssl.TLSVersion.TLSv1_2),
    ("mid-handshake", ssl.TLSVersion.TLSv1_3),
], ids=["before-hello", "mid-handshake-tls1.2", "mid-handshake-tls1.3"])
def test_handshake_deadline_alerts_the_peer_and_closes_for_the_guest(start, pki: ServerPki, stage: str,
                                                                    version: ssl.TLSVersion | None) -> None:
    tls = pki.server_config(client_ca=False)
    tls.limits = TlsLimits(handshake_timeout=0.5)
    port = free_port()
    guest = start(port, "vanish", stage, "poll", tls=tls)
    with connect(port) as sock:
        if stage == "mid-handshake":
            sock.sendall(client_hello(version))
        records = _records(sock)
    result = guest.finish()
    assert result["outcome"] == "closed"
    if version == ssl.TLSVersion.TLSv1_3:
        # The server's flight went out protected, so a plaintext alert would read as a bad
        # record to the client: the connection ends without one.
        assert any(kind == 23 for kind, _ in records), records
        assert all(kind != 21 for kind, _ in records), records
    else:
        assert records[-1] == USER_CANCELED_ALERT, records


def test_a_tls13_client_sees_an_early_end_not_a_bad_record(start, pki: ServerPki) -> None:
    """What a real TLS 1.3 client makes of a handshake the host ends after the server's
    protected flight (it withholds its Finished until the deadline)."""
    tls = pki.server_config(client_ca=False)
    tls.limits = TlsLimits(handshake_timeout=0.5)
    port = free_port()
    guest = start(port, "vanish", "mid-handshake", "poll", tls=tls)
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="a.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    with connect(port) as sock:
        sock.sendall(outgoing.read())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    incoming.write(data)
    incoming.write_eof()
    with pytest.raises(ssl.SSLError) as failure:
        while True:  # the server's whole flight, then the end of the connection
            client.do_handshake()
            client.read(1)
    assert "EOF" in str(failure.value) and "BAD_RECORD_TYPE" not in str(failure.value), failure.value
    assert guest.finish()["outcome"] == "closed"


@pytest.mark.parametrize("limits", [TlsLimits(max_handshakes=1), TlsLimits(max_connections=1)], ids=["handshakes", "connections"])
def test_too_many_handshakes_are_refused_with_an_alert(start, pki: ServerPki, peers: Peers, limits: TlsLimits) -> None:
    tls = pki.server_config(client_ca=False)
    tls.limits = limits
    port = free_port()
    guest = start(port, "two", tls=tls)
    peers.keep(connect(port))  # the first handshake: allowed, and silent
    with connect(port) as second:
        records = _records(second)
    answers = guest.finish()
    assert answers == {"first": "would-block", "second": "access-denied"}
    assert USER_CANCELED_ALERT in records, records


# --- the CLI: the echo example survives a truncated peer; failures say why -------------------

CLI = [sys.executable, "-m", "wasi_tls_host.cli"]


def test_a_run_that_fails_says_why_on_stderr(guest_path) -> None:
    r = subprocess.run([*CLI, "run", str(guest_path("run_returns_err"))], capture_output=True, timeout=120)
    assert r.returncode == 1
    assert b"error: the guest's wasi:cli/run returned an error" in r.stderr


def test_echo_example_serves_the_next_client_after_a_truncated_one(guest_path, pki: ServerPki, tmp_path: Path) -> None:
    key = tmp_path / "a.key"
    key.write_bytes(pki.leaf_a.private_key_pem.bytes())
    port = free_port()
    cmd = [*CLI, "run", "--allow-listen", f"127.0.0.1:{port}", "--identity", f"a={pki.a_chain},{key}",
           str(guest_path("tls_echo_server")), str(port), "2"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as server:
        try:
            assert server.stdout is not None
            assert b"listening on" in server.stdout.readline()
            truncating = ssl_client(pki, port)
            truncating.sendall(b"part of a request")
            truncating.recv(100)  # the echo: the server is reading again
            truncating.close()  # no close_notify
            with ssl_client(pki, port) as tls:
                tls.sendall(b"ping")
                assert tls.recv(100) == b"ping"
                tls.unwrap()  # close_notify: a clean end
            out, err = server.communicate(timeout=TIMEOUT)
        finally:
            if server.poll() is None:
                server.kill()
    lines = out.decode().splitlines()
    assert server.returncode == 0, (lines, err)
    assert any(line.startswith("connection error:") and "truncated" in line for line in lines), lines
    assert lines[-1] == "echoed 4 bytes", lines


@pytest.mark.parametrize(("command", "call", "hello"), [
    ("hello", "accept", False),     # accept before the hello arrived: would-block, consumed
    ("exchange", "finish", True),   # finish before the handshake completed: the same
])
def test_a_handshake_the_guest_ends_early_alerts_the_peer(start, command: str, call: str, hello: bool) -> None:
    port = free_port()
    guest = start(port, command, "now", call)
    with connect(port) as sock:
        if hello:  # TLS 1.2: the server's first flight is plaintext, so an alert may follow it
            sock.sendall(client_hello(ssl.TLSVersion.TLSv1_2))
        records = _records(sock)
    assert guest.finish()[call] == "would-block"
    assert records[-1] == USER_CANCELED_ALERT, records  # user_canceled, then the end


def test_cli_handshake_deadline_flag(guest_path, pki: ServerPki, tmp_path: Path) -> None:
    key = tmp_path / "a.key"
    key.write_bytes(pki.leaf_a.private_key_pem.bytes())
    port = free_port()
    cmd = [*CLI, "run", "--allow-listen", f"127.0.0.1:{port}", "--identity", f"a={pki.a_chain},{key}",
           "--tls-handshake-timeout", "0.3", str(guest_path("tls_states")), "hello", str(port), "wait", "server-name"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as guest:
        try:
            assert guest.stdout is not None
            assert b"listening on" in guest.stdout.readline()
            with connect(port) as silent:
                records = _records(silent)
            out, err = guest.communicate(timeout=TIMEOUT)
        finally:
            if guest.poll() is None:
                guest.kill()
    assert guest.returncode == 0, err
    assert out.decode().splitlines() == ["server-name=closed"]
    assert records == [USER_CANCELED_ALERT]


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--max-tls-handshakes", "0", "want a number >= 1 (or none)"),
    ("--tls-handshake-timeout", "-1", "must be positive"),
    ("--max-client-hello", "10", "at least 512 bytes"),
])
def test_cli_limit_flags_refuse_bad_values(guest_path, flag: str, value: str, message: str) -> None:
    r = subprocess.run([*CLI, "run", flag, value, str(guest_path("run_returns_err"))], capture_output=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr.decode(), r.stderr


def test_cli_tls_limit_flags_take_none_for_no_limit() -> None:
    import argparse

    from wasi_tls_host import WasiConfig
    from wasi_tls_host.cli import options_tls_limits

    parser = argparse.ArgumentParser()
    options_tls_limits.add_arguments(parser)

    def limits(*argv: str) -> TlsLimits:
        config = WasiConfig()
        options_tls_limits.apply(parser.parse_args(list(argv)), config)
        # No flag: no TLS configuration at all, so the library's defaults apply and OpenSSL
        # is loaded only if the guest uses TLS (start-up).
        return TlsLimits() if config.tls is None else config.tls.limits

    untouched = WasiConfig()
    options_tls_limits.apply(parser.parse_args([]), untouched)
    assert untouched.tls is None
    assert limits() == TlsLimits()  # the library's defaults when no flag is given
    lifted = limits("--max-tls-connections", "none", "--max-tls-handshakes", "None", "--tls-handshake-timeout", "none")
    assert (lifted.max_connections, lifted.max_handshakes, lifted.handshake_timeout) == (None, None, None)
    assert limits("--tls-handshake-timeout", "0").handshake_timeout is None  # 0 keeps meaning no deadline
    assert limits("--tls-handshake-timeout", "500ms", "--max-tls-handshakes", "7") == TlsLimits(handshake_timeout=0.5, max_handshakes=7)
    assert limits("--max-client-hello", "none").max_client_hello is None  # it was refused ("invalid int value")
    assert limits("--max-client-hello", "128K").max_client_hello == 128 << 10
    usage = TlsUsage()
    for key in range(1200):  # past the default of 1,000 handshakes: no limit means none
        usage.start(key, lifted)


def test_client_hello_size_limit_is_the_embedders(start) -> None:
    hello = client_hello()
    assert len(hello) > 512  # OpenSSL's first flight, with its key shares
    tls_config = TlsConfig(limits=TlsLimits(max_client_hello=512))
    port = free_port()
    guest = start(port, "hello", "wait", "server-name", tls=tls_config)
    with connect(port) as sock:
        sock.sendall(hello)
        records = _records(sock)
    assert guest.finish()["server-name"] == "decode-error"
    assert records == [(21, bytes([2, 50]))]  # decode_error
