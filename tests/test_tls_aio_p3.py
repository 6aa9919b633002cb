"""The asyncio-style guest binding (``guest_examples/common/wasi_tls_aio.py``) in a real WASI
0.3 componentize-py guest, ``https_get_p3``, run by the CLI against a CPython ``ssl`` server
on loopback whose certificate comes from a trustme CA given with ``--trust``.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Iterator

import pytest
import trustme

from wasi_tls_host.cli import main as cli_main
from wasi_tls_host.guests import build

pytestmark = pytest.mark.timeout(180)

BODY = bytes(range(256)) * 400  # 100 KiB: several TLS records and stream reads


class HttpsServer:
    """CPython ssl serving one fixed response per connection; records how each ended."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # accept() wakes to see `stopping`
        self.stopping = threading.Event()
        self.port = self.listener.getsockname()[1]
        self.endings: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(30)
                try:
                    with self.ctx.wrap_socket(conn, server_side=True) as tls:
                        request = b""
                        while b"\r\n\r\n" not in request:
                            request += tls.recv(4096)
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
                        tls.unwrap()  # our close_notify, then the guest's
                        self.endings.append("close_notify " + request.split(b"\r\n")[0].decode())
                except (OSError, ssl.SSLError) as e:
                    self.endings.append(f"error {e}")

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("aio") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


@pytest.fixture(scope="module")
def server(ca_file: tuple[trustme.CA, Path]) -> Iterator[HttpsServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca_file[0].issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    srv = HttpsServer(ctx)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def https_get_p3() -> Path:
    return build("https_get_p3")


def run_guest(guest: Path, ca: Path, port: int, *args: str) -> int:
    return cli_main(["run", "--trust", str(ca), "--allow-connect", f"127.0.0.1:{port}", "--allow-dns",
                     str(guest), *args])


def test_open_connection_gets_a_page_and_closes_with_close_notify(
        https_get_p3: Path, ca_file: tuple[trustme.CA, Path], server: HttpsServer,
        capfd: pytest.CaptureFixture[str]) -> None:
    server.endings.clear()
    assert run_guest(https_get_p3, ca_file[1], server.port, "localhost", str(server.port), "/page") == 0
    out = capfd.readouterr().out.splitlines()
    assert out == ["version TLSv1.3 alpn http/1.1", "status HTTP/1.1 200 OK", f"body {len(BODY)} bytes"]
    # writer.close() + wait_closed() sent close_notify after the request: unwrap() saw it.
    assert server.endings == ["close_notify GET /page HTTP/1.1"]


def test_wrong_hostname_is_a_clear_tls_error(
        https_get_p3: Path, ca_file: tuple[trustme.CA, Path], server: HttpsServer,
        capfd: pytest.CaptureFixture[str]) -> None:
    assert run_guest(https_get_p3, ca_file[1], server.port, "127.0.0.1", str(server.port), "/", "wrong.example") == 1
    out = capfd.readouterr().out
    assert out.startswith("tls error: name-mismatch: ")
    assert "not valid for 'wrong.example'" in out


def test_untrusted_server_is_unknown_issuer(
        https_get_p3: Path, server: HttpsServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    assert run_guest(https_get_p3, other, server.port, "localhost", str(server.port)) == 1
    assert capfd.readouterr().out.startswith("tls error: unknown-issuer: ")
