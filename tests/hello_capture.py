"""Capture real clients' first flights (ClientHello records) on 127.0.0.1.

A one-shot listener accepts a single connection, records bytes until the handshake message
announced by the first record header has fully arrived (framing done here independently of
the code under test), then closes; the client fails its handshake and exits. Everything is
bounded by timeouts and client processes are killed if they outlive them.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from typing import Callable

TIMEOUT = 10.0


def _framed_hello_complete(data: bytes) -> bool:
    """True once the records in ``data`` carry a whole handshake message."""
    handshake = bytearray()
    pos = 0
    while pos + 5 <= len(data):
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if data[pos] != 22 or pos + 5 + length > len(data):
            break
        handshake += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(handshake) >= 4 and len(handshake) >= 4 + int.from_bytes(handshake[1:4], "big"):
            return True
    return False


class _OneShotListener:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(TIMEOUT)
        self.port: int = self.sock.getsockname()[1]
        self.data = bytearray()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                deadline = time.monotonic() + TIMEOUT
                while not _framed_hello_complete(self.data) and time.monotonic() < deadline:
                    conn.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    self.data += chunk
        except BaseException as e:  # reported to the test by result()
            self.error = e
        finally:
            self.sock.close()

    def result(self) -> bytes:
        self.thread.join(TIMEOUT + 1)
        if self.error is not None:
            raise RuntimeError(f"capture listener failed: {self.error!r}")
        return bytes(self.data)


def capture(client: Callable[[int], None]) -> bytes:
    """Run ``client(port)`` against a one-shot listener and return the bytes it sent first."""
    listener = _OneShotListener()
    try:
        client(listener.port)
    finally:
        data = listener.result()
    if not data:
        raise RuntimeError("the client sent nothing")
    return data


def run_process(argv: list[str]) -> None:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def openssl_client(*extra: str) -> Callable[[int], None]:
    return lambda port: run_process(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "example.test",
         "-alpn", "h2,http/1.1", *extra]
    )


def curl_client(port: int) -> None:
    run_process(
        ["curl", "-s", "-k", "--http1.1", "--max-time", str(int(TIMEOUT)),
         "--resolve", f"example.test:{port}:127.0.0.1", f"https://example.test:{port}/"]
    )


def python_client(port: int) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        try:
            ctx.wrap_socket(sock, server_hostname="example.test").close()
        except (ssl.SSLError, OSError):
            pass  # expected: the listener hangs up after the ClientHello


CLIENTS: dict[str, Callable[[int], None]] = {
    "openssl": openssl_client(),
    "openssl-tls1_2": openssl_client("-tls1_2"),
    "openssl-tls1_3": openssl_client("-tls1_3"),
    "curl": curl_client,
    "cpython": python_client,
}
