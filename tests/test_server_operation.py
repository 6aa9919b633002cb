"""Operating a guest TLS server from the command line, as with uvicorn or gunicorn: workers
sharing a port (and restarted when one dies), certificate rotation on SIGHUP, graceful stop
on SIGTERM, one access-log line per connection. Real processes, real signals, CPython ssl
clients on 127.0.0.1, the ``tls_server`` example guest."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from conftest import free_port

TIMEOUT = 20.0
STARTUP = 120.0  # a process loading the guest on a busy 2-core machine


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two certificates for localhost (CN cert-one, cert-two) from one CA, and the files the
    server reads (``cur.pem``/``cur.key``, a copy of cert-one to begin with)."""
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    for name in ("one", "two"):
        leaf = ca.issue_cert("localhost", common_name=f"cert-{name}")
        (d / f"{name}.pem").write_bytes(b"".join(c.bytes() for c in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(d / f"{name}.key"))
    return {"dir": d, "ca": d / "ca.pem"}


class Server:
    """``wasi-tls-host run ... tls_server.wasm PORT --count 0 --concurrent`` as a process."""

    def __init__(self, guest: Path, certs: dict[str, Path], tmp: Path, *options: str, mode: str = "echo", count: int = 0,
                 key_pem: bytes | None = None, stdin: int = subprocess.DEVNULL) -> None:
        self.port = free_port()
        self.cert, self.key = tmp / "cur.pem", tmp / "cur.key"
        shutil.copyfile(certs["dir"] / "one.pem", self.cert)
        shutil.copyfile(certs["dir"] / "one.key", self.key)
        if key_pem is not None:
            self.key.write_bytes(key_pem)
        self.out_path, self.err_path = tmp / "stdout", tmp / "stderr"
        cmd = [sys.executable, "-m", "wasi_tls_host.cli", "run", "--allow-listen", f"127.0.0.1:{self.port}",
               "--identity", f"web={self.cert},{self.key}", "--access-log", *options,
               str(guest), str(self.port), "--count", str(count), "--concurrent", "--mode", mode]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=stdin)
        self.context = ssl.create_default_context(cafile=str(certs["ca"]))

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def wait_for(self, pattern: str, count: int = 1, where: str = "err", timeout: float = TIMEOUT) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        while True:
            found = list(re.finditer(pattern, self.err if where == "err" else self.out))
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"no {count} x {pattern!r}; exit {self.process.poll()}\nstdout:\n{self.out}\nstderr:\n{self.err}")
            time.sleep(0.05)

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        return self.context.wrap_socket(raw, server_hostname="localhost")

    def echo(self, tls: ssl.SSLSocket, data: bytes) -> bytes:
        tls.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = tls.recv(len(data) - len(got))
            if not chunk:
                break
            got += chunk
        return got

    def certificate_cn(self) -> str:
        with self.connect() as tls:
            cn = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
            self.echo(tls, b"x")
            tls.unwrap()
        return cn

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(TIMEOUT)


@pytest.fixture
def server(host, guest_path, certs, tmp_path: Path) -> Iterator:
    started: list[Server] = []
    guest = guest_path("tls_server")
    host.load(guest)  # compiled into the shared component cache once, not by every worker

    def start(*options: str, **fields: Any) -> Server:
        s = Server(guest, certs, tmp_path, *options, **fields)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.process.poll() is None:
            s.process.kill()
            s.process.wait(TIMEOUT)


def test_two_workers_share_the_port_and_both_serve(server) -> None:
    s = server("--workers", "2", "--graceful-timeout", "5", mode="http")
    s.wait_for(r"listening on", 2, where="out", timeout=STARTUP)
    for _ in range(40):
        with s.connect() as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 200")
    lines = s.wait_for(r"\[worker (\d) pid \d+\] access peer=127\.0\.0\.1:\d+ ", 40)
    by_worker = {m.group(1) for m in lines}
    assert by_worker == {"1", "2"}, s.err  # the kernel spread 40 connections over both
    assert s.stop() == 0


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            inodes.add(target)
    return inodes


def _wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.01)


def test_workers_accept_from_one_listener_so_a_stalled_worker_loses_no_client(server) -> None:
    """The supervisor opens the --allow-listen address and hands the socket down: while one
    worker is stopped (SIGSTOP), every new client is served by the other. With a listener
    per worker (SO_REUSEPORT) the kernel would queue about half of them at the stopped one."""
    s = server("--workers", "2", "--graceful-timeout", "5")
    s.wait_for(r"listening on", 2, where="out", timeout=STARTUP)
    s.wait_for(rf"listening on 127\.0\.0\.1:{s.port} for 2 workers")
    pids = [int(m.group(1)) for m in s.wait_for(r"worker \d started \(pid (\d+)\)", 2)]
    shared = _socket_inodes(s.process.pid)
    assert len(shared) == 1, shared  # the supervisor holds the listener and nothing else
    assert all(shared <= _socket_inodes(pid) for pid in pids)  # the same socket in each worker
    os.kill(pids[0], signal.SIGSTOP)
    _wait_stopped(pids[0])  # the signal is asynchronous: a worker not yet stopped could still accept
    try:
        for i in range(12):
            raw = socket.create_connection(("127.0.0.1", s.port), timeout=5)
            with s.context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert s.echo(tls, f"client {i}".encode()) == f"client {i}".encode()
                tls.unwrap()
    finally:
        os.kill(pids[0], signal.SIGCONT)
    assert s.stop() == 0


def _refused_soon(port: int) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


def test_after_sigterm_handed_down_listeners_refuse_new_clients(server) -> None:
    """While workers drain their open connections, nothing keeps a listener open: neither
    the one the guests took over nor one handed down for an allowed address the guest never
    listened on. New clients are refused, not queued for nobody."""
    unused = free_port()
    s = server("--workers", "2", "--graceful-timeout", "15", "--allow-listen", f"127.0.0.1:{unused}")
    s.wait_for(r"listening on", 2, where="out", timeout=STARTUP)
    s.wait_for(rf"listening on 127\.0\.0\.1:{unused} for 2 workers")
    held = s.connect()  # keeps one worker draining
    assert s.echo(held, b"x") == b"x"
    s.process.send_signal(signal.SIGTERM)
    s.wait_for(r"stopped accepting", 2)
    assert _refused_soon(s.port) and _refused_soon(unused)
    assert s.process.poll() is None  # still draining the held connection
    assert s.echo(held, b"y") == b"y"
    held.unwrap()
    held.close()
    assert s.process.wait(TIMEOUT) == 0


def test_a_killed_worker_is_restarted(server) -> None:
    s = server("--workers", "2", "--graceful-timeout", "5")
    s.wait_for(r"listening on", 2, where="out", timeout=STARTUP)
    pid = int(s.wait_for(r"worker 1 started \(pid (\d+)\)")[0].group(1))
    os.kill(pid, signal.SIGKILL)
    s.wait_for(rf"worker 1 \(pid {pid}\) exited with status 137; restarting it")
    new_pid = int(s.wait_for(r"worker 1 started \(pid (\d+)\)", 2)[1].group(1))
    assert new_pid != pid
    s.wait_for(r"listening on", 3, where="out", timeout=STARTUP)
    # Both workers serve again: connections reach the restarted one too.
    for _ in range(40):
        with s.connect() as tls:
            assert s.echo(tls, b"ping") == b"ping"
            tls.unwrap()
        if f"pid {new_pid}] access" in s.err:
            break
    assert f"pid {new_pid}] access" in s.err
    assert s.stop() == 0


def test_sighup_rotates_the_certificate_and_open_connections_keep_theirs(server, certs) -> None:
    s = server()
    s.wait_for(r"listening on", where="out", timeout=STARTUP)
    assert s.certificate_cn() == "cert-one"
    before = s.connect()  # opened before the rotation, kept open across it
    assert s.echo(before, b"before") == b"before"
    shutil.copyfile(certs["dir"] / "two.pem", s.cert)
    shutil.copyfile(certs["dir"] / "two.key", s.key)
    s.process.send_signal(signal.SIGHUP)
    s.wait_for(r"identity 'web': reloaded from")
    assert s.certificate_cn() == "cert-two"
    assert s.echo(before, b"still here") == b"still here"
    assert dict(x[0] for x in before.getpeercert()["subject"])["commonName"] == "cert-one"
    before.unwrap()
    before.close()
    # A file that fails to load keeps the identity in use, and the log says why.
    s.key.write_text("not a key")
    s.process.send_signal(signal.SIGHUP)
    s.wait_for(r"identity 'web': kept the certificate in use: .*cannot load the private key")
    assert s.certificate_cn() == "cert-two"
    assert s.process.poll() is None
    assert s.stop() == 0


def _serves_from(s: Server, pid: int, expected_cn: str) -> None:
    """Connect until worker ``pid`` has served one; every connection presents ``expected_cn``."""
    for _ in range(60):
        assert s.certificate_cn() == expected_cn
        if f"pid {pid}] access" in s.err:
            return
    raise AssertionError(f"worker pid {pid} served no connection\n{s.err}")


def test_a_worker_restarted_after_a_refused_reload_starts_with_the_certificate_in_use(server) -> None:
    """The fleet keeps serving: a SIGHUP that refused a broken certificate file keeps the
    identity in use, and a worker restarted afterwards starts with it too (it used to read
    the broken file, exit 2, and the supervisor stopped every worker)."""
    s = server("--workers", "2", "--graceful-timeout", "5")
    s.wait_for(r"listening on", 2, where="out", timeout=STARTUP)
    pid = int(s.wait_for(r"worker 1 started \(pid (\d+)\)")[0].group(1))
    s.cert.write_text("garbage")
    s.process.send_signal(signal.SIGHUP)
    s.wait_for(r"worker \d pid \d+\]: identity 'web': kept the certificate in use", 2)
    os.kill(pid, signal.SIGKILL)
    new_pid = int(s.wait_for(r"worker 1 started \(pid (\d+)\)", 2)[1].group(1))
    s.wait_for(r"listening on", 3, where="out", timeout=STARTUP)
    _serves_from(s, new_pid, "cert-one")
    assert "could not start" not in s.err and s.process.poll() is None
    assert s.stop() == 0


def test_an_encrypted_key_asked_for_once_serves_workers_restarted_later(server, certs) -> None:
    """The passphrase typed at start (one prompt, from the supervisor) is what every worker
    uses, a restarted one included; no worker asks again (two workers used to prompt on the
    same terminal at once, and a restarted one waited for a passphrase nobody typed)."""
    import pty

    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((certs["dir"] / "one.key").read_bytes(), None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"open sesame"))
    controller, terminal = pty.openpty()
    try:
        s = server("--workers", "2", "--graceful-timeout", "5", key_pem=encrypted, stdin=terminal)
        s.wait_for(r"passphrase for identity 'web': ", timeout=STARTUP)  # getpass on a terminal it cannot control: stderr
        os.write(controller, b"open sesame\n")
        s.wait_for(r"listening on", 2, where="out", timeout=STARTUP)
        pid = int(s.wait_for(r"worker 1 started \(pid (\d+)\)")[0].group(1))
        os.kill(pid, signal.SIGKILL)
        new_pid = int(s.wait_for(r"worker 1 started \(pid (\d+)\)", 2)[1].group(1))
        s.wait_for(r"listening on", 3, where="out", timeout=STARTUP)
        _serves_from(s, new_pid, "cert-one")
        assert s.stop() == 0
    finally:
        os.close(controller)
        os.close(terminal)


def test_a_reload_logs_one_line_per_identity_and_process_naming_the_file(server) -> None:
    s = server("--workers", "2", "--graceful-timeout", "5")
    s.wait_for(r"listening on", 2, where="out", timeout=STARTUP)
    s.cert.write_text("garbage")
    s.process.send_signal(signal.SIGHUP)
    s.wait_for(r"kept the certificate in use", 3)  # the supervisor (for workers started later) and each worker
    assert s.stop() == 0
    lines = [line for line in s.err.splitlines() if "identity 'web'" in line]
    assert len(lines) == 3, lines  # each process once (each used to log it twice)
    assert len({line.split(": ", 1)[0] for line in lines}) == 3, lines
    for line in lines:
        assert line.endswith(f"identity 'web': kept the certificate in use: the certificate ({s.cert}): certificates must be PEM or DER X.509 certificates"), line


def test_start_up_errors_name_the_identity_and_file_and_the_worker(host, guest_path, certs, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("garbage")
    base = [sys.executable, "-m", "wasi_tls_host.cli", "run", "--allow-listen", f"127.0.0.1:{free_port()}"]
    guest = str(guest_path("tls_server"))
    one = subprocess.run([*base, "--identity", f"web={bad},{certs['dir'] / 'one.key'}", guest, "1"],
                         capture_output=True, text=True, timeout=STARTUP, stdin=subprocess.DEVNULL)
    assert one.returncode == 2
    assert one.stderr == f"error: identity 'web': the certificate ({bad}): certificates must be PEM or DER X.509 certificates\n"
    # With --workers the supervisor reads the identities first: one line, no worker started.
    fleet = subprocess.run([*base, "--workers", "2", "--identity", f"web={bad},{certs['dir'] / 'one.key'}", guest, "1"],
                           capture_output=True, text=True, timeout=STARTUP, stdin=subprocess.DEVNULL)
    assert fleet.returncode == 2 and fleet.stderr == one.stderr
    # What only a worker finds wrong (here the guest is missing) says which worker found it.
    missing = tmp_path / "missing.wasm"  # (no --allow-listen: a port taken meanwhile would be another status 2)
    fleet = subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", "run", "--workers", "2", str(missing), "1"],
                           capture_output=True, text=True, timeout=STARTUP, stdin=subprocess.DEVNULL)
    assert fleet.returncode == 2
    assert re.search(rf"^wasi-tls-host\[worker [12] pid \d+\]: error: {re.escape(str(missing))}: no such file$", fleet.stderr, re.M), fleet.stderr


def _wait_catches(pid: int, signum: int) -> None:
    """Until process ``pid`` has a handler for ``signum`` (from /proc: SigCgt)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
        if int(fields["SigCgt"], 16) >> (signum - 1) & 1:
            return
        assert time.monotonic() < deadline, f"process {pid} never handled {signal.Signals(signum).name}"
        time.sleep(0.001)


def test_signals_during_start_up_are_acted_on_not_fatal(server) -> None:
    """The first half second (imports) and the guest's loading used to be covered by no
    handler: SIGTERM killed the process by the default action, without a word (143), and
    SIGHUP likewise (129). A stop before the guest runs is a graceful stop with nothing open."""
    s = server("--graceful-timeout", "5")
    _wait_catches(s.process.pid, signal.SIGTERM)
    s.process.send_signal(signal.SIGTERM)
    assert s.process.wait(STARTUP) == 0, s.err
    assert s.err == "wasi-tls-host: SIGTERM during start-up: stopping\n"
    assert s.out == ""  # the guest never ran

    s = server("--graceful-timeout", "5")
    _wait_catches(s.process.pid, signal.SIGHUP)
    s.process.send_signal(signal.SIGHUP)  # delivered once the guest runs: the files are read again
    s.wait_for(r"listening on", where="out", timeout=STARTUP)
    s.wait_for(r"identity 'web': reloaded from")
    assert s.stop() == 0

    s = server("--graceful-timeout", "5")
    _wait_catches(s.process.pid, signal.SIGTERM)
    s.process.send_signal(signal.SIGTERM)
    s.wait_for(r"SIGTERM during start-up: stopping")
    s.process.send_signal(signal.SIGINT)  # a second one: at once
    assert s.process.wait(STARTUP) == 130, s.err
    assert "SIGINT: stopping now (during start-up)" in s.err


def test_a_supervisor_stopped_while_it_restarts_a_worker_exits_0(server) -> None:
    """A ``--count`` guest that ended is started again; a graceful stop while that worker
    imports used to kill it by the default action (143), and the supervisor exited 143."""
    s = server("--workers", "2", "--graceful-timeout", "5", count=1)
    s.wait_for(r"listening on", 2, where="out", timeout=STARTUP)
    assert s.certificate_cn() == "cert-one"  # one guest serves its one connection and ends
    s.wait_for(r"worker \d \(pid \d+\) exited with status 0; restarting it")
    pid = int(s.wait_for(r"worker \d started \(pid (\d+)\)", 3)[2].group(1))
    s.process.send_signal(signal.SIGTERM)
    assert s.process.wait(STARTUP) == 0, s.err
    assert re.search(rf"\[worker \d pid {pid}\]: SIGTERM during start-up: stopping", s.err), s.err


def test_a_stop_during_a_restart_backoff_starts_no_worker(server) -> None:
    """A worker that dies within a second of starting is restarted after a pause; a stop
    in that pause used to start it anyway, never told to stop (the supervisor waited for it
    forever)."""
    s = server("--workers", "2", "--graceful-timeout", "5")
    pid = int(s.wait_for(r"worker 1 started \(pid (\d+)\)")[0].group(1))
    os.kill(pid, signal.SIGKILL)
    s.wait_for(rf"worker 1 \(pid {pid}\) exited with status 137; restarting it")
    s.process.send_signal(signal.SIGTERM)
    assert s.process.wait(STARTUP) == 0, s.err
    assert len(re.findall(r"worker 1 started", s.err)) == 1, s.err


def test_sigterm_lets_a_slow_client_finish_and_refuses_new_ones(server) -> None:
    s = server("--graceful-timeout", "15")
    s.wait_for(r"listening on", where="out", timeout=STARTUP)
    slow = s.connect()
    assert s.echo(slow, b"one") == b"one"
    s.process.send_signal(signal.SIGTERM)
    s.wait_for(r"SIGTERM: stopped accepting; waiting up to 15\.0 s for 1 open connection")
    # The listener closes at the guest's next look at it.
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "still accepting after SIGTERM"
        time.sleep(0.05)
    assert s.process.poll() is None  # still serving the slow client
    assert s.echo(slow, b"two") == b"two"
    slow.unwrap()
    slow.close()
    assert s.process.wait(TIMEOUT) == 0  # 0, not 3: the connection finished before the deadline
    assert "graceful stop: every connection finished" in s.err
    line = s.wait_for(r"access peer=127\.0\.0\.1:\d+ .*")[0].group(0)
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    assert fields["sni"] == "localhost" and fields["version"] == "TLSv1.3" and fields["suite"].startswith("TLS_")
    assert fields["client"] == "-" and fields["tls"] == "ok" and float(fields["handshake_ms"]) > 0
    assert int(fields["in"]) > 0 and int(fields["out"]) > 0 and fields["end"] in {"peer-closed", "closed"}


def check_deadline_and_second_signal(server: Any) -> None:
    """The exit statuses of a graceful stop: 3 when the deadline cuts a connection short,
    130 when a second signal ends it at once (shared with the WASI 0.3 server tests)."""
    s = server("--graceful-timeout", "0.5")
    s.wait_for(r"listening on", where="out", timeout=STARTUP)
    held = s.connect()
    assert s.echo(held, b"x") == b"x"
    s.process.send_signal(signal.SIGTERM)
    assert s.process.wait(TIMEOUT) == 3  # the deadline cut a connection short
    assert "1 connection(s) still open after 0.5 s" in s.err
    assert "end=host-stopped" in s.err
    held.close()

    s2 = server("--graceful-timeout", "60")
    s2.wait_for(r"listening on", where="out", timeout=STARTUP)
    held = s2.connect()
    assert s2.echo(held, b"x") == b"x"
    s2.process.send_signal(signal.SIGTERM)
    s2.wait_for(r"stopped accepting")
    s2.process.send_signal(signal.SIGINT)  # a second signal: at once
    assert s2.process.wait(TIMEOUT) == 130
    held.close()


def test_deadline_and_second_signal_exit_statuses(server) -> None:
    check_deadline_and_second_signal(server)


def test_a_signal_handler_never_waits_for_the_guests_locks(host, guest_path, certs) -> None:
    """A handler runs wherever the main thread is, maybe holding the guest's socket registry
    lock (to count connections while draining). The handler used to act there (ask whether
    the guest listens: that lock again), and a worker that got two SIGTERMs in a row hung for
    good. It only notes the signal now; the main loop acts on it."""
    import threading

    from tls_server_util import GuestServer

    from wasi_tls_host import PrivateIdentity, TlsConfig
    from wasi_tls_host.cli.serve import Operator

    tls = TlsConfig(identities=[PrivateIdentity.from_files("web", certs["dir"] / "one.pem", certs["dir"] / "one.key")], use_system_roots=False)
    server = GuestServer(host, host.load(guest_path("tls_server")), free_port(), "--count", "0", "--concurrent", tls=tls)
    try:
        operator = Operator(host, server.guest, graceful_timeout=5.0)
        registry = server.guest.ctx.sockets
        with registry._lock:  # as if the signal came while the main thread counted connections
            handler = threading.Thread(target=operator.on_signal, args=(signal.SIGTERM, None))
            handler.start()
            handler.join(2.0)
            returned = not handler.is_alive()
        handler.join(TIMEOUT)
        assert returned, "the handler waited for the socket registry's lock"
        assert server.guest.is_listening()  # nothing acted yet...
        operator.tick()  # ...until the loop's next tick
        assert operator.deadline is not None  # a graceful stop began
    finally:
        server.guest.interrupt("test teardown")
        server.stop()


def test_host_reload_identities_in_the_api(host, guest_path, certs, tmp_path: Path) -> None:
    """The embedder's way to rotate: ``Host.reload_identities()`` for every live guest."""
    from tls_server_util import GuestServer

    from wasi_tls_host import PrivateIdentity, TlsConfig

    cert, key = tmp_path / "cur.pem", tmp_path / "cur.key"
    shutil.copyfile(certs["dir"] / "one.pem", cert)
    shutil.copyfile(certs["dir"] / "one.key", key)
    tls = TlsConfig(identities=[PrivateIdentity.from_files("web", cert, key)], use_system_roots=False)
    port = free_port()
    server = GuestServer(host, host.load(guest_path("tls_server")), port, "--count", "3", "--mode", "alpn", tls=tls)
    context = ssl.create_default_context(cafile=str(certs["ca"]))

    def cn() -> str:
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT), server_hostname="localhost") as s:
            name = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
            s.recv(100)
        return name

    try:
        assert cn() == "cert-one"
        shutil.copyfile(certs["dir"] / "two.pem", cert)
        shutil.copyfile(certs["dir"] / "two.key", key)
        assert host.reload_identities() == [f"identity 'web': reloaded from {cert} (sha256 {tls.identities[0].public.fingerprint.hex()[:16]}...)"]
        assert cn() == "cert-two"
        cert.write_text("garbage")
        assert "kept the certificate in use" in host.reload_identities()[0]
        assert cn() == "cert-two"
    finally:
        result = server.stop()
    assert result is not None and result.exit_code == 0
    # A guest that has ended is not reloaded for (even while its object is still around).
    assert host.reload_identities() == []
    assert server.guest is not None


async def test_graceful_stop_from_an_asyncio_application(host, guest_path, certs) -> None:
    """The README's recipe for embedders: the guest on a thread, the loop keeps the controls."""
    import asyncio

    from wasi_tls_host import NetworkPolicy, PrivateIdentity, TlsConfig, WasiConfig

    port = free_port()
    out = bytearray()
    config = WasiConfig(
        args=["tls_server", str(port), "--count", "0", "--concurrent"], stdout=out,
        network=NetworkPolicy().allow_listen(f"127.0.0.1:{port}"),
        tls=TlsConfig(identities=[PrivateIdentity.from_files("web", certs["dir"] / "one.pem", certs["dir"] / "one.key")], use_system_roots=False),
    )
    guest = await asyncio.to_thread(host.instantiate, guest_path("tls_server"), config)
    running = asyncio.ensure_future(asyncio.to_thread(guest.run))
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    try:
        while b"listening on" not in out:
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        assert guest.is_listening() and guest.open_connections() == 1
        guest.stop_accepting()
        while guest.is_listening():
            await asyncio.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"again")  # the open connection goes on
        assert await reader.readexactly(5) == b"again"
        writer.close()
        while guest.open_connections():
            await asyncio.sleep(0.05)
        guest.interrupt("stopped")
        result = await asyncio.wait_for(running, TIMEOUT)
        assert result.trap_cause is not None and result.trap_cause.endswith(": stopped")
    finally:
        if not running.done():
            guest.interrupt("test teardown")
            await running
        guest.close()
