"""WASI 0.3 TLS (issue 17): figures of the upstream ``wasi:tls@0.3.0-draft`` client and of
this project's ``wasi-tls-host:tls@0.2.0`` server, each beside its reference from the same
run. The guests are WAT (``tls_p3_client``, ``tls_p3_server``: no language runtime, so the
figures are the host's), over the TCP stand-in of ``devtools/tcp_p3.py`` until
wasi:sockets 0.3 is on main.

- Download: one connection, a body of DOWNLOAD_MIB MiB from a CPython ``ssl`` server in a
  child process, from the connect to the end of the body; the guest (``fetch``) against a
  CPython ``ssl`` client, alternating, best of ROUNDS. Target: at least 50% of CPython's.
- Client handshake: TCP connect to 127.0.0.1 + TLS 1.3 handshake verifying "localhost"
  (``handshake``), alternating connection by connection with a CPython ``ssl`` client,
  median of HANDSHAKES. Target: at most 1.5x CPython's.
- Idle memory per open TLS connection in a 0.3 server guest (``tls_p3_server``): the
  process's RSS with IDLE connections established and idle, less before, per connection;
  beside the same for the 0.2 server guest (``tls_echo_server``-style WAT: the 0.2 figure
  was 50 KiB).

Run: python benchmarks/bench_tls_p3.py [--quick]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools/ (not installed)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tls_client import ServerProcess, serve_tls, write_pki  # noqa: E402
from devtools.tcp_p3 import tcp  # noqa: E402
from wasi_tls_host import Host, WasiConfig, guests  # noqa: E402
from wasi_tls_host.host import all_interfaces  # noqa: E402
from wasi_tls_host.tls import TlsConfig  # noqa: E402

DOWNLOAD_MIB = 64
BODY = bytes(range(256)) * (DOWNLOAD_MIB << 12)
REQUEST = b"GET / HTTP/1.0\r\n\r\n"
HANDSHAKES = 50
ROUNDS = 3


def send_body(conn: ssl.SSLSocket) -> None:
    """The body after a request; nothing for a client that only shakes hands."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            break
        request += chunk
    if request:
        conn.sendall(BODY)
        conn.unwrap()


def cpython_download(ctx: ssl.SSLContext, port: int) -> float:
    """MB/s from the connect to the end of the body (what the guest's fetch spans too)."""
    buf = bytearray(1 << 20)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock, ctx.wrap_socket(sock, server_hostname="localhost") as conn:
        conn.sendall(REQUEST)
        total = 0
        while n := conn.recv_into(buf):
            total += n
    elapsed = time.perf_counter() - start
    assert total == len(BODY), total
    return total / elapsed / 1e6


def guest_download(guest, port: int) -> float:
    start = time.perf_counter()
    received, _, connect, receive, send = guest.call("fetch", port, "localhost", REQUEST)
    elapsed = time.perf_counter() - start
    assert (connect, receive, send) == ("ok", "ok", "ok") and received == len(BODY), (received, connect, receive, send)
    return received / elapsed / 1e6


def cpython_handshake(ctx: ssl.SSLContext, port: int) -> float:
    start = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = ctx.wrap_socket(sock, server_hostname="localhost")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed * 1e6


def guest_handshake(guest, port: int) -> float:
    start = time.perf_counter()
    outcome = guest.call("handshake", port, "localhost")
    elapsed = time.perf_counter() - start
    assert outcome == "ok", outcome
    guest.call("close")
    return elapsed * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, fewer handshakes")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_tls(args.serve[0], args.serve[1], send_body)
        return
    rounds, handshakes = (1, 20) if args.quick else (ROUNDS, HANDSHAKES)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        chain, ca_pem = write_pki(workdir)
        server = ServerProcess(chain, workdir, __file__)
        ctx = ssl.create_default_context(cafile=str(ca_pem))
        host = Host(interfaces=[*all_interfaces(), tcp])
        config = WasiConfig(tls=TlsConfig(trust=[ca_pem], use_system_roots=False, resumption=False))
        try:
            with host.instantiate(guests.build("tls_p3_client"), config) as guest:
                guest_download(guest, server.port)  # warm-up
                cpython_download(ctx, server.port)
                ours, theirs = [], []
                for _ in range(rounds):
                    ours.append(guest_download(guest, server.port))
                    theirs.append(cpython_download(ctx, server.port))
                best, reference = max(ours), max(theirs)
                print(f"download {DOWNLOAD_MIB} MiB, 0.3 WAT guest (upstream connector): {best:.0f} MB/s; "
                      f"CPython ssl: {reference:.0f} MB/s; guest = {best / reference:.1%} (target >= 50%)")
                for _ in range(3):
                    guest_handshake(guest, server.port)
                ours, theirs = [], []
                for _ in range(handshakes):
                    ours.append(guest_handshake(guest, server.port))
                    theirs.append(cpython_handshake(ctx, server.port))
                mine, ref = statistics.median(ours), statistics.median(theirs)
                print(f"client handshake (connect + TLS 1.3), median of {handshakes}: 0.3 WAT guest {mine / 1000:.2f} ms; "
                      f"CPython ssl {ref / 1000:.2f} ms; guest = {mine / ref:.2f}x (target <= 1.5x)")
        finally:
            server.stop()
            host.close()


if __name__ == "__main__":
    main()
