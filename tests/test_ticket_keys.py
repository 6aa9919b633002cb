"""Session tickets under keys shared by a fleet (``--ticket-keys FILE``): a CPython ssl client
resumes on a second host process the session the first gave it; with other keys it does a
full handshake; a broken key file is refused at start and kept in use on SIGHUP. Real host
processes serving the ``tls_server`` example guest, real OpenSSL on both sides."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_server_operation import STARTUP, TIMEOUT, Server, certs  # noqa: F401 (certs: a fixture)
from wasi_tls_host.tls.ticket_keys import KEY_SIZE, TicketKeys


@pytest.fixture
def servers(guest_path, certs, tmp_path: Path) -> Iterator:  # noqa: F811
    from wasi_tls_host import Host

    started: list[Server] = []
    guest = guest_path("tls_server")
    with Host(runtime="core") as host:
        host.load(guest)  # compiled into the shared component cache once, not by each process

    def start(*options: str) -> Server:
        where = tmp_path / f"server-{len(started)}"
        where.mkdir()
        s = Server(guest, certs, where, *options)
        started.append(s)
        s.wait_for(r"listening on", where="out", timeout=STARTUP)
        return s

    yield start
    for s in started:
        if s.process.poll() is None:
            s.process.kill()
            s.process.wait(TIMEOUT)


@pytest.fixture
def client(certs) -> ssl.SSLContext:  # noqa: F811
    """One client context for every host (CPython resumes a session only in its own context)."""
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


def _session(client: ssl.SSLContext, server: Server, session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool]:
    """One TLS 1.3 connection (offering ``session``): the session to keep, and whether this
    one resumed. The echo makes the client read the tickets sent after the handshake."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    with client.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        assert server.echo(tls, b"ping") == b"ping"
        reused = tls.session_reused
        kept = tls.session
        tls.unwrap()
    assert kept is not None and kept.has_ticket
    return kept, reused


def test_a_session_from_one_host_resumes_on_another_with_the_same_keys_only(servers, client: ssl.SSLContext, tmp_path: Path) -> None:
    shared, other = tmp_path / "ticket.key", tmp_path / "other.key"
    shared.write_bytes(os.urandom(2 * KEY_SIZE))
    other.write_bytes(os.urandom(KEY_SIZE))
    first, second, third = servers("--ticket-keys", str(shared)), servers("--ticket-keys", str(shared)), servers("--ticket-keys", str(other))
    session, reused = _session(client, first)
    assert not reused
    session, reused = _session(client, second, session)
    assert reused, "the second host did not resume the session the first issued under the same keys"
    _, reused = _session(client, third, session)
    assert not reused, "a host with other keys resumed a ticket it cannot have decrypted"
    # A ticket under the file's second key still resumes (and a new one under the first comes back).
    rotated = tmp_path / "rotated.key"
    rotated.write_bytes(os.urandom(KEY_SIZE) + shared.read_bytes()[:KEY_SIZE])
    fourth = servers("--ticket-keys", str(rotated))
    session, _ = _session(client, first)
    session, reused = _session(client, fourth, session)
    assert reused, "a ticket under the file's second key did not resume"
    _, reused = _session(client, fourth, session)
    assert reused


@pytest.mark.parametrize("content, reason", [
    (b"", "is empty"),
    (bytes(KEY_SIZE + 1), f"is {KEY_SIZE + 1} bytes, not a multiple of {KEY_SIZE}"),
    (bytes(2 * KEY_SIZE), "two keys with the same name"),
])
def test_a_broken_key_file_is_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "ticket.key"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=reason):
        TicketKeys.from_file(path)


def test_a_broken_key_file_stops_the_host_at_start_and_is_kept_on_sighup(servers, client: ssl.SSLContext, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "ticket.key"
    path.write_bytes(bytes(KEY_SIZE - 1))
    for workers in ([], ["--workers", "2"]):
        cmd = [sys.executable, "-m", "wasi_tls_host.cli", "run", "--ticket-keys", str(path), *workers, "guest.wasm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=STARTUP)
        assert done.returncode == 2, done.stderr
        assert f"ticket keys: {path} is {KEY_SIZE - 1} bytes, not a multiple of {KEY_SIZE}" in done.stderr
    path.write_bytes(os.urandom(KEY_SIZE))
    first, second = servers("--ticket-keys", str(path)), servers("--ticket-keys", str(path))
    path.write_bytes(b"broken")
    first.process.send_signal(signal.SIGHUP)
    first.wait_for(rf"ticket keys: kept the 1 key\(s\) in use: {path} is 6 bytes")
    session, _ = _session(client, first)
    _, reused = _session(client, second, session)
    assert reused, "after a refused reload the host no longer encrypts under the keys in use"
    # A good file is taken: the other host's tickets no longer resume here.
    path.write_bytes(os.urandom(KEY_SIZE))
    first.process.send_signal(signal.SIGHUP)
    first.wait_for(rf"ticket keys: reloaded from {path}: 1 key\(s\)")
    session, _ = _session(client, second)
    _, reused = _session(client, first, session)
    assert not reused
