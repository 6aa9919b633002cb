"""Operating a WASI 0.3 server guest (``echo_server_p3``, plain TCP) from the command line as
a 0.2 one is (test_server_operation.py): workers sharing the handed-down listener, SIGHUP,
graceful stop on SIGTERM with its deadline and exit statuses, the access log. Real
processes, real signals, CPython clients on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port
from test_server_operation import STARTUP, TIMEOUT, _refused_soon, _wait_stopped, check_deadline_and_second_signal
from test_server_operation import Server as TlsServer


class Server(TlsServer):
    """``wasi-tls-host run ... echo_server_p3.wasm PORT`` as a process: the TLS server's
    operations (output, waiting for lines, echo, stop) over plain TCP."""

    def __init__(self, guest: Path, tmp: Path, *options: str, guest_args: tuple[str, ...] = ()) -> None:  # no certificates here
        self.port = free_port()
        self.out_path, self.err_path = tmp / f"stdout-{self.port}", tmp / f"stderr-{self.port}"
        cmd = [sys.executable, "-m", "wasi_tls_host.cli", "run", "--allow-listen", f"127.0.0.1:{self.port}",
               "--access-log", *options, str(guest), str(self.port), *guest_args]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def connect(self, timeout: float = TIMEOUT) -> socket.socket:  # type: ignore[override]
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


@pytest.fixture
def server(guest_path, tmp_path: Path) -> Iterator:
    from wasi_tls_host import Host

    started: list[Server] = []
    guest = guest_path("echo_server_p3")
    with Host(runtime="core") as host:
        host.load(guest)  # compiled into the shared component cache once, not by every worker

    def start(*options: str, guest_args: tuple[str, ...] = ()) -> Server:
        s = Server(guest, tmp_path, *options, guest_args=guest_args)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.process.poll() is None:
            s.process.kill()
            s.process.wait(TIMEOUT)


def test_two_workers_share_the_handed_down_listener_and_a_stalled_one_loses_no_client(server) -> None:
    s = server("--workers", "2", "--graceful-timeout", "5")
    s.wait_for(r"listening on", 2, where="out", timeout=STARTUP)
    s.wait_for(rf"listening on 127\.0\.0\.1:{s.port} for 2 workers")
    for i in range(40):
        with s.connect() as conn:
            assert s.echo(conn, f"client {i}".encode()) == f"client {i}".encode()
    lines = s.wait_for(r"\[worker (\d) pid \d+\] access peer=127\.0\.0\.1:\d+ ", 40)
    assert {m.group(1) for m in lines} == {"1", "2"}, s.err  # one queue, both workers accept
    pids = [int(m.group(1)) for m in s.wait_for(r"worker \d started \(pid (\d+)\)", 2)]
    os.kill(pids[0], signal.SIGSTOP)
    _wait_stopped(pids[0])
    try:
        for i in range(12):  # every one is served by the other worker
            with s.connect(timeout=5) as conn:
                assert s.echo(conn, f"late {i}".encode()) == f"late {i}".encode()
    finally:
        os.kill(pids[0], signal.SIGCONT)
    assert s.stop() == 0


def test_sigterm_ends_the_listen_stream_and_lets_an_open_connection_finish(server) -> None:
    s = server("--graceful-timeout", "15")
    s.wait_for(r"listening on", where="out", timeout=STARTUP)
    slow = s.connect()
    assert s.echo(slow, b"one") == b"one"
    s.process.send_signal(signal.SIGHUP)  # nothing to rotate here: the guest serves on
    s.wait_for(r"SIGHUP: reloading identities")
    assert s.echo(slow, b"after sighup") == b"after sighup"
    s.process.send_signal(signal.SIGTERM)
    s.wait_for(r"SIGTERM: stopped accepting; waiting up to 15\.0 s for 1 open connection")
    assert _refused_soon(s.port)  # the listener closed at once
    assert s.process.poll() is None  # still serving the slow client
    assert s.echo(slow, b"two") == b"two"
    slow.shutdown(socket.SHUT_WR)
    assert slow.recv(10) == b""
    slow.close()
    assert s.process.wait(TIMEOUT) == 0  # every connection finished
    assert s.out.splitlines()[-1] == "served 1"  # the stream ended; the guest finished its connection
    line = s.wait_for(r"access peer=127\.0\.0\.1:\d+ .*")[0].group(0)
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    assert fields["in"] == fields["out"] == str(len(b"one" + b"after sighup" + b"two"))
    assert fields["end"] in {"peer-closed", "closed"} and fields["tls"] == "-"


def test_a_drained_server_may_end_by_itself_after_its_last_connection(server) -> None:
    """The guest's listen stream ended and its last connection finished: it is given a moment
    (DRAIN_SETTLE_S) to finish on its own rather than being cut off at once (this one waits
    300 ms before its last line, as a server saving its state would)."""
    s = server("--graceful-timeout", "15", guest_args=("--linger", "300"))
    s.wait_for(r"listening on", where="out", timeout=STARTUP)
    conn = s.connect()
    assert s.echo(conn, b"one") == b"one"
    s.process.send_signal(signal.SIGTERM)
    s.wait_for(r"SIGTERM: stopped accepting")
    conn.shutdown(socket.SHUT_WR)
    assert conn.recv(10) == b""
    conn.close()
    assert s.process.wait(TIMEOUT) == 0
    s.wait_for(r"graceful stop: every connection finished")
    assert s.out.splitlines()[-1] == "served 1"  # not interrupted while lingering


def test_deadline_and_second_signal_exit_statuses(server) -> None:
    check_deadline_and_second_signal(server)
