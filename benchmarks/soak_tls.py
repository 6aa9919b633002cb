"""Soak: many TLS connections of four kinds against one guest server, watching the host
process's open descriptors and RSS (issue 12, item 5). Not a test: it prints a curve.

The ``tls_server`` guest (``--concurrent --count 0``, echo mode) runs in a child process of
its own, so the figures are the host's alone; nothing forces a garbage collection there.
This process drives connections one after another, cycling through:

- ``normal``: TLS 1.3 handshake, 32 bytes echoed, close_notify, close;
- ``aborted``: the ClientHello, then the TCP connection closed mid-handshake;
- ``no-close-notify``: handshake, 32 bytes echoed, TCP closed without close_notify;
- ``hostile``: a first flight that is not TLS (HTTP, random bytes, an SSL 2 hello...).

Every ``--every`` connections (and before the first) it waits until the server has settled
(idle for a moment) and records the server's descriptor count (/proc/PID/fd) and RSS
(VmRSS). The verdict compares the end with the start (the issue asks for both within 5%).

The start is taken after ``--warmup`` connections (default 1,000) of the same mix: the first
connections page in compiled code and make the guest's allocator touch heap pages it keeps
(measured with /proc/PID/smaps: the growth is in file-backed and anonymous mappings, none in
Python objects, and it flattens out). The figures before the warm-up are printed too, with
the change from them.

Run: python benchmarks/soak_tls.py [--connections 10000] [--every 1000]
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
NAME = "a.test"
KINDS = ("normal", "aborted", "no-close-notify", "hostile")
HOSTILE = [
    b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + bytes(37),  # SSL 2.0 hello
    b"\x16\x03\x01\xff\xff" + bytes(64),  # a record longer than allowed
    b"\x17\x03\x03\x00\x05hello",  # application data first
]


def serve(port: int, cert: str, key: str, max_sockets: int | None) -> None:
    from wasi_tls_host import Host, WasiConfig, guests
    from wasi_tls_host.runtime.limits import GuestLimits
    from wasi_tls_host.tls import TlsConfig
    from wasi_tls_host.tls.identities import PrivateIdentity
    from wasi_tls_host.wasi.sockets import NetworkPolicy

    identity = PrivateIdentity.from_files("a", cert, key)
    config = WasiConfig(args=["tls_server", str(port), "--concurrent", "--count", "0", "--mode", "echo"],
                        stdout=None, stderr="inherit", network=NetworkPolicy().allow_listen(f"{HOST}:{port}"),
                        tls=TlsConfig(use_system_roots=False, identities=[identity]))
    if max_sockets != -1:
        config.limits = GuestLimits(max_sockets=max_sockets)
    result = Host(runtime=os.environ.get("SOAK_RUNTIME", "core")).run(guests.build("tls_server"), config)
    print(f"soak: the guest server ended: {result}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def server_figures(pid: int) -> tuple[int, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return fds, rss


def settle(pid: int, quiet: float = 0.3, limit: float = 10.0) -> tuple[int, int]:
    """The server's figures once its descriptor count has not changed for ``quiet`` s."""
    deadline = time.monotonic() + limit
    last = server_figures(pid)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = server_figures(pid)
        if now[0] != last[0]:
            stable_since = time.monotonic()
        last = now
        if time.monotonic() - stable_since >= quiet:
            break
    return last


def read_until_closed(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    return data


def client_hello(ctx: ssl.SSLContext) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=NAME)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def one(kind: str, port: int, ctx: ssl.SSLContext, rnd: random.Random) -> bool:
    """One connection of this kind; True if it behaved as expected."""
    payload = bytes(rnd.getrandbits(8) for _ in range(32))
    with socket.create_connection((HOST, port), timeout=10) as raw:
        if kind == "aborted":
            raw.sendall(client_hello(ctx))
            raw.recv(100)  # the start of the server's flight: the handshake is under way
            return True
        if kind == "hostile":
            raw.sendall(rnd.choice(HOSTILE + [bytes(rnd.getrandbits(8) for _ in range(40))]))
            read_until_closed(raw)  # an alert, then EOF
            return True
        tls = ctx.wrap_socket(raw, server_hostname=NAME)
        tls.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = tls.recv(4096)
            if not chunk:
                break
            got += chunk
        # wrap_socket took `raw`'s descriptor: the TLS socket is what must be closed.
        if kind == "normal":
            tls.unwrap().close()
        else:
            tls.close()  # CPython's close sends no close_notify: the TCP connection just ends
        return got == payload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1_000)
    parser.add_argument("--warmup", type=int, default=1_000, help="connections before the start is measured")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--kinds", default=",".join(KINDS), help="which kinds of connection to cycle through")
    parser.add_argument("--max-sockets", type=int, default=-1, help="the guest's socket limit (default: the host's default; 0: none)")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.serve[2], None if args.max_sockets == 0 else args.max_sockets)
        return 0

    import trustme

    rnd = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        leaf = ca.issue_cert(NAME)
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.write_bytes(b"".join(c.bytes() for c in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(cert), str(key),
                                   "--max-sockets", str(args.max_sockets)])
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the guest server did not start")
                    time.sleep(0.1)
            kinds = [k for k in args.kinds.split(",") if k]
            if any(k not in KINDS for k in kinds):
                raise SystemExit(f"--kinds: choose from {', '.join(KINDS)}")
            # The probe connection above was one "aborted" connection; let it settle.
            cold = settle(server.pid)
            for i in range(args.warmup):
                try:
                    one(kinds[i % len(kinds)], port, ctx, rnd)
                except (OSError, ssl.SSLError):
                    pass  # counted in the measured run, not here
            start = settle(server.pid)
            print(f"soak: before the warm-up: fds {cold[0]}, rss {cold[1] / 2**20:.1f} MiB; "
                  f"after {args.warmup} warm-up connections: fds {start[0]}, rss {start[1] / 2**20:.1f} MiB")
            print(f"soak: guest tls_server pid {server.pid}, {args.connections} connections cycling {', '.join(kinds)}")
            print(f"{'connections':>11} {'fds':>5} {'rss MiB':>8} {'failures':>8} {'seconds':>8}")
            print(f"{0:>11} {start[0]:>5} {start[1] / 2**20:>8.1f} {0:>8} {0:>8.1f}")
            failures: dict[str, int] = {k: 0 for k in KINDS}
            t0 = time.monotonic()
            curve = [(0, *start)]
            for i in range(1, args.connections + 1):
                kind = kinds[i % len(kinds)]
                try:
                    ok = one(kind, port, ctx, rnd)
                except (OSError, ssl.SSLError) as e:
                    ok = False
                    if failures[kind] < 3:
                        print(f"soak: connection {i} ({kind}): {type(e).__name__}: {e}", file=sys.stderr)
                if not ok:
                    failures[kind] += 1
                if server.poll() is not None or failures[kind] > 100:
                    time.sleep(0.5)
                    status = server.poll()
                    state = "is still running, but" if status is None else f"exited (status {status}), and"
                    print(f"soak: the guest server {state} {sum(failures.values())} connections failed, after {i} connections")
                    break
                if i % args.every == 0:
                    fds, rss = settle(server.pid)
                    curve.append((i, fds, rss))
                    print(f"{i:>11} {fds:>5} {rss / 2**20:>8.1f} {sum(failures.values()):>8} {time.monotonic() - t0:>8.1f}")
            end = curve[-1]
            print(f"soak: failures by kind: {failures}")
            for what, c, a, b in (("descriptors", cold[0], start[0], end[1]), ("RSS", cold[1], start[1], end[2])):
                change = (b - a) / a * 100 if a else 0.0
                from_cold = (b - c) / c * 100 if c else 0.0
                verdict = "within 5%" if abs(change) <= 5 else "NOT within 5%"
                print(f"soak: {what}: start {a}, end {b} ({change:+.1f}%): {verdict} "
                      f"(before the warm-up {c}: {from_cold:+.1f}%)")
            peak = max(curve, key=lambda c: c[2])
            print(f"soak: RSS peak {peak[2] / 2**20:.1f} MiB at {peak[0]} connections; run took {time.monotonic() - t0:.1f} s "
                  f"({datetime.datetime.now(datetime.timezone.utc):%H:%M UTC}; figures are noisy on a shared machine)")
        finally:
            server.kill()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
