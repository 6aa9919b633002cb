"""Real TLS peers on loopback for the wasi:tls tests and benchmark.

* ``Pki``: a trustme CA and the certificates the tests need (good, expired, other names,
  IP SANs, an unknown CA), written to files for ``openssl s_server``.
* ``OpensslServer``: an ``openssl s_server`` subprocess, started and killed with bounded waits.
* ``PeerServer``: a loopback listener on a thread that hands each accepted connection (wrapped
  in CPython ``ssl`` or raw) to a behaviour function; ``stop()`` ends it within seconds.

Every blocking call here has a timeout, so a misbehaving guest or host fails a test instead
of hanging it.
"""

from __future__ import annotations

import datetime
import select
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trustme

TIMEOUT = 10.0


@dataclass
class LeafFiles:
    chain_pem: Path  # certificate chain and key in one file (s_server -cert)
    leaf: trustme.LeafCert

    def server_context(self, *, min_version: ssl.TLSVersion | None = None, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.leaf.configure_cert(ctx)
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
        return ctx


class Pki:
    """The test CA (``ca_pem``, trusted by the host under test) and leaf certificates."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = trustme.CA()
        self.ca_pem = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        self._count = 0

    def leaf(self, *names: str, expired: bool = False, ca: trustme.CA | None = None) -> LeafFiles:
        if expired:
            now = datetime.datetime.now(datetime.timezone.utc)
            leaf = (ca or self.ca).issue_cert(*names, not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1))
        else:
            leaf = (ca or self.ca).issue_cert(*names)
        self._count += 1
        path = self.dir / f"leaf{self._count}.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
        return LeafFiles(path, leaf)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeerProcess:
    """A peer server subprocess whose output goes to ``log_path``; started once ``ready``
    appears in it (bounded), killed by ``stop``."""

    def __init__(self, cmd: list[str], ready: bytes, *, log_path: Path, cwd: Path, stdin: int = subprocess.DEVNULL) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdin=stdin, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT
        while ready not in log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{cmd[0]} did not start: {self.log}")
            time.sleep(0.02)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._log.close()


class OpensslServer(PeerProcess):
    """``openssl s_server`` on 127.0.0.1; ``args`` picks the mode (``-WWW``, ``-tls1_3``...)."""

    def __init__(self, leaf: LeafFiles, *args: str, cwd: Path) -> None:
        self.port = free_port()
        cmd = ["openssl", "s_server", "-accept", f"127.0.0.1:{self.port}", "-cert", str(leaf.chain_pem), *args]
        # stdin stays an open pipe: s_server treats EOF on stdin as "quit" in some modes.
        super().__init__(cmd, b"ACCEPT", log_path=cwd / f"s_server-{self.port}.log", cwd=cwd, stdin=subprocess.PIPE)


Behaviour = Callable[[socket.socket, "PeerServer"], None]


class PeerServer:
    """Accepts loopback connections on a thread, one at a time.

    With ``context`` each connection is TLS-wrapped (the server side of the handshake runs
    before ``behaviour``); handshake failures are recorded in ``errors``. ``versions`` lists
    the negotiated protocol of each TLS connection.
    """

    def __init__(self, behaviour: Behaviour, context: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.errors: list[str] = []
        self.versions: list[str | None] = []
        self.accepted = 0
        self.handled = 0  # connections whose behaviour has finished
        self.thread = threading.Thread(target=self._serve, name=f"peer-{self.port}", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.accepted += 1
            conn.settimeout(TIMEOUT)
            try:
                if self.context is not None:
                    conn = self.context.wrap_socket(conn, server_side=True)
                    self.versions.append(conn.version())  # type: ignore[attr-defined]
                self.behaviour(conn, self)
            except (OSError, ssl.SSLError) as e:
                self.errors.append(f"{type(e).__name__}: {e}")
            finally:
                conn.close()
                self.handled += 1

    @property
    def idle(self) -> bool:
        """Every accepted connection has been closed on this side."""
        return self.handled == self.accepted

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until this side has closed every finished connection, so a descriptor
        count measures the host, not the test's own server thread."""
        deadline = time.monotonic() + timeout
        while not self.idle and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(TIMEOUT)
        self.listener.close()
        assert not self.thread.is_alive(), "peer thread did not stop"


# --- behaviours ---------------------------------------------------------------------------


def recv_until(conn: socket.socket, marker: bytes, limit: int = 1 << 16) -> bytes:
    data = b""
    while marker not in data and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def clean_close(conn: socket.socket) -> None:
    """Send close_notify (and give the peer a moment to answer with its own)."""
    assert isinstance(conn, ssl.SSLSocket)
    conn.settimeout(2.0)
    try:
        conn.unwrap()
    except (OSError, ssl.SSLError):
        pass  # the client closed without answering: our close_notify went out anyway


def send_body(body: bytes, *, close_notify: bool) -> Behaviour:
    """Send ``body`` right after the handshake; end with close_notify or a bare TCP close."""

    def behaviour(conn: socket.socket, server: PeerServer) -> None:
        conn.sendall(body)
        if close_notify:
            clean_close(conn)
            return
        # A FIN without close_notify, then whatever the client still sends is read until it
        # closes: closing with unread bytes would make the kernel send a reset, which can
        # discard the body's last segment in the client's kernel before the host reads it.
        conn.shutdown(socket.SHUT_WR)  # drops the TLS layer without close_notify
        conn.settimeout(5)
        try:
            while conn.recv(1 << 16):
                pass
        except OSError:
            pass

    return behaviour


def http_response(body: bytes) -> Behaviour:
    def behaviour(conn: socket.socket, server: PeerServer) -> None:
        recv_until(conn, b"\r\n\r\n")
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        clean_close(conn)

    return behaviour


def echo(conn: socket.socket, server: PeerServer) -> None:
    """Echo everything until the client's close_notify (or EOF)."""
    while True:
        try:
            data = conn.recv(1 << 16)
        except ssl.SSLZeroReturnError:
            break
        if not data:
            break
        conn.sendall(data)
    clean_close(conn)


def handshake_only(conn: socket.socket, server: PeerServer) -> None:
    """Wait for the client's close_notify or EOF after the handshake (bench, connect tests)."""
    try:
        while conn.recv(4096):
            pass
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        pass


def close_mid_handshake(conn: socket.socket, server: PeerServer) -> None:
    """Read the ClientHello, then close the TCP connection without a word."""
    conn.recv(4096)


def send_garbage(conn: socket.socket, server: PeerServer) -> None:
    """Answer the ClientHello with bytes that are not TLS records, then hold the line."""
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
    server.stopping.wait(2.0)


def stall(conn: socket.socket, server: PeerServer) -> None:
    """Read the ClientHello and never answer; hang up once the client has (or on stop)."""
    conn.recv(4096)
    deadline = time.monotonic() + TIMEOUT
    while not server.stopping.is_set() and time.monotonic() < deadline:
        readable, _, _ = select.select([conn], [], [], 0.05)
        if readable and not conn.recv(4096):
            return


class GnutlsServer(PeerProcess):
    """``gnutls-serv --echo`` (GnuTLS) on a free port with ``args`` (certificate, key,
    ``--require-client-cert``...); ``resumed`` counts its connections that resumed a session."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.port = free_port()  # gnutls-serv cannot pick one itself and say which
        super().__init__(["gnutls-serv", "--echo", "-p", str(self.port), *args], b"listening on IPv4",
                         log_path=cwd / f"gnutls-serv-{self.port}.log", cwd=cwd)

    @property
    def resumed(self) -> int:
        return self.log.count("This is a resumed session")


def rsa_pss_files(directory: Path) -> dict[str, Path]:
    """RSA-PSS keys (``id-RSASSA-PSS``, as ``openssl genpkey -algorithm RSA-PSS`` makes them)
    and certificates made by the openssl command: ``ca``, a server ``server`` (localhost,
    127.0.0.1) and a client ``client`` (CN pss-client), each ``NAME.pem`` and ``NAME.key``."""
    def run(*cmd: str) -> None:
        subprocess.run(["openssl", *cmd], cwd=directory, check=True, capture_output=True, timeout=60)

    for name in ("ca", "server", "client"):
        run("genpkey", "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048", "-out", f"{name}.key")
    run("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=pss-ca", "-days", "30", "-out", "ca.pem")
    extensions = {"server": "subjectAltName=DNS:localhost,IP:127.0.0.1", "client": "extendedKeyUsage=clientAuth"}
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=pss-client")):
        run("req", "-new", "-key", f"{name}.key", "-subj", subject, "-addext", extensions[name], "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "30",
            "-copy_extensions", "copy", "-out", f"{name}.pem")
    return {f"{name}.{ext}": directory / f"{name}.{ext}" for name in ("ca", "server", "client") for ext in ("pem", "key")}
