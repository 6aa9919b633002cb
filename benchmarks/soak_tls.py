"""Soak: many TLS connections of several kinds against one guest server, watching the host
process's open descriptors and RSS (issue 12, item 5; issue 19, item 6). Not a test: it
prints figures.

The ``tls_server`` guest (``--concurrent --count 0``, echo mode), or with ``--guest
tls_echo_server_p3`` the WASI 0.3 guest written with the asyncio-style binding (it sends a
line first, then echoes lines upper-cased), runs in a child process of its own, so the
figures are the host's alone; nothing forces a garbage collection there.
This process drives connections of each kind in turn, ``--connections`` of each:

- ``normal``: TLS 1.3 handshake, 32 bytes echoed, close_notify, close;
- ``aborted``: the ClientHello, then the TCP connection closed mid-handshake;
- ``abandoned``: ``--burst`` clients at once send their ClientHello, read the start of the
  server's flight and all close: many handshakes abandoned while in progress together (the
  pattern that made RSS grow by tens of MB while failed handshakes waited for the garbage
  collector);
- ``no-close-notify``: handshake, 32 bytes echoed, TCP closed without close_notify;
- ``hostile``: a first flight that is not TLS (HTTP, random bytes, an SSL 2 hello...).

Before the first kind, ``--warmup`` connections (default 1,000) of the whole mix page in
compiled code and let the allocator reach its working size (measured with /proc/PID/smaps:
the first connections' growth is in file-backed and anonymous mappings, none in Python
objects, and it flattens out); the figures before the warm-up are printed too.

Each kind is a phase: the server's descriptors (/proc/PID/fd) and RSS (VmRSS) once it has
settled (idle for a moment) before and after it, every ``--every`` connections, and the
largest RSS seen; the table at the end gives the growth of each kind and the verdict (the
issue asks for each within 5%). Run: python benchmarks/soak_tls.py [--connections 5000]
[--every 1000] [--kinds normal,abandoned]
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
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
NAME = "a.test"
KINDS = ("normal", "aborted", "abandoned", "no-close-notify", "hostile")
BURST = 64  # connections per "abandoned" burst (the default of --burst)
LINES = False  # the guest echoes lines upper-cased after a line of its own (--guest tls_echo_server_p3)
HOSTILE = [
    b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + bytes(37),  # SSL 2.0 hello
    b"\x16\x03\x01\xff\xff" + bytes(64),  # a record longer than allowed
    b"\x17\x03\x03\x00\x05hello",  # application data first
]


GUESTS = ("tls_server", "tls_echo_server_p3")


def serve(port: int, cert: str, key: str, max_sockets: int | None, guest: str = "tls_server") -> None:
    from wasi_tls_host import Host, WasiConfig, guests
    from wasi_tls_host.runtime.limits import GuestLimits
    from wasi_tls_host.tls import TlsConfig
    from wasi_tls_host.tls.identities import PrivateIdentity
    from wasi_tls_host.wasi.sockets import NetworkPolicy

    if guest == "tls_server":
        identity = PrivateIdentity.from_files("a", cert, key)
        args = ["tls_server", str(port), "--concurrent", "--count", "0", "--mode", "echo"]
    else:  # without an SNI it knows, the 0.3 guest presents "default"
        identity = PrivateIdentity.from_files("default", cert, key)
        args = [guest, HOST, str(port), str(10**9)]
    # The 0.3 guest's binding writes a line per failed connection (hundreds here): not shown.
    config = WasiConfig(args=args,
                        stdout=None, stderr="inherit" if guest == "tls_server" else None, network=NetworkPolicy().allow_listen(f"{HOST}:{port}"),
                        tls=TlsConfig(use_system_roots=False, identities=[identity]))
    if max_sockets != -1:
        config.limits = GuestLimits(max_sockets=max_sockets)
    result = Host(runtime=os.environ.get("SOAK_RUNTIME", "core")).run(guests.build(guest), config)
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


def abandon_together(port: int, ctx: ssl.SSLContext, burst: int) -> bool:
    """``burst`` handshakes under way at once, all abandoned: True if each got the start of
    the server's flight."""
    hello = client_hello(ctx)
    clients = [socket.create_connection((HOST, port), timeout=10) for _ in range(burst)]
    try:
        for raw in clients:
            raw.sendall(hello)
        return all(raw.recv(100) for raw in clients)
    finally:
        for raw in clients:
            raw.close()


def one(kind: str, port: int, ctx: ssl.SSLContext, rnd: random.Random, burst: int = BURST) -> bool:
    """One connection of this kind (``abandoned``: one burst); True if it behaved as expected."""
    if kind == "abandoned":
        return abandon_together(port, ctx, burst)
    payload = bytes(rnd.getrandbits(8) for _ in range(32))
    if LINES:  # the 0.3 guest echoes lines, upper-cased, after a line of its own
        payload = payload.hex().encode()[:31] + b"\n"
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
        got, expected = b"", payload.upper() if LINES else payload
        while not got.endswith(expected):
            chunk = tls.recv(4096)
            if not chunk:
                break
            got += chunk
        # wrap_socket took `raw`'s descriptor: the TLS socket is what must be closed.
        if kind == "normal":
            tls.unwrap().close()
        else:
            tls.close()  # CPython's close sends no close_notify: the TCP connection just ends
        return got.endswith(expected)


@dataclass
class Phase:
    """One kind's run: the server's (fds, rss) when it had settled before and after it."""

    kind: str
    before: tuple[int, int]
    after: tuple[int, int] = (0, 0)
    peak_rss: int = 0
    connections: int = 0
    failures: int = 0
    seconds: float = 0.0


def run_phase(kind: str, count: int, every: int, burst: int, port: int, ctx: ssl.SSLContext, rnd: random.Random,
              server: subprocess.Popen[bytes]) -> Phase:
    """``count`` connections of ``kind`` (bursts of ``burst`` for ``abandoned``), printing
    the server's figures every ``every`` connections."""
    phase = Phase(kind, settle(server.pid))
    phase.peak_rss = phase.before[1]
    step = burst if kind == "abandoned" else 1
    t0 = time.monotonic()
    next_report = every
    while phase.connections < count:
        try:
            ok = one(kind, port, ctx, rnd, burst)
        except (OSError, ssl.SSLError) as e:
            ok = False
            if phase.failures < 3:
                print(f"soak: {kind} connection {phase.connections + 1}: {type(e).__name__}: {e}", file=sys.stderr)
        phase.connections += step
        if not ok:
            phase.failures += 1
        if server.poll() is not None or phase.failures > 100:
            time.sleep(0.5)
            status = server.poll()
            state = "is still running, but" if status is None else f"exited (status {status}), and"
            raise SystemExit(f"soak: the guest server {state} {phase.failures} {kind} connections failed, after {phase.connections}")
        phase.peak_rss = max(phase.peak_rss, server_figures(server.pid)[1])
        if phase.connections >= next_report:
            next_report += every
            fds, rss = settle(server.pid)
            phase.peak_rss = max(phase.peak_rss, rss)
            print(f"{kind:>16} {phase.connections:>11} {fds:>5} {rss / 2**20:>8.1f} {phase.failures:>8} {time.monotonic() - t0:>8.1f}")
    phase.after = settle(server.pid)
    phase.seconds = time.monotonic() - t0
    return phase


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=5_000, help="connections of each kind")
    parser.add_argument("--every", type=int, default=1_000)
    parser.add_argument("--warmup", type=int, default=1_000, help="connections of the mix before the first kind")
    parser.add_argument("--burst", type=int, default=BURST, help="handshakes abandoned together by the 'abandoned' kind")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--kinds", default=",".join(KINDS), help="which kinds of connection to run, in this order")
    parser.add_argument("--max-sockets", type=int, default=-1, help="the guest's socket limit (default: the host's default; 0: none)")
    parser.add_argument("--guest", choices=GUESTS, default="tls_server", help="the guest server (tls_echo_server_p3: WASI 0.3)")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.serve[2], None if args.max_sockets == 0 else args.max_sockets, args.guest)
        return 0
    global LINES
    LINES = args.guest == "tls_echo_server_p3"
    kinds = [k for k in args.kinds.split(",") if k]
    if any(k not in KINDS for k in kinds):
        raise SystemExit(f"--kinds: choose from {', '.join(KINDS)}")

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
                                   "--max-sockets", str(args.max_sockets), "--guest", args.guest])
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
            # The probe connection above was one "aborted" connection; let it settle.
            cold = settle(server.pid)
            warmed, turn = 0, 0
            while warmed < args.warmup:
                kind = kinds[turn % len(kinds)]
                turn += 1
                warmed += args.burst if kind == "abandoned" else 1
                try:
                    one(kind, port, ctx, rnd, args.burst)
                except (OSError, ssl.SSLError):
                    pass  # counted in the measured phases, not here
            start = settle(server.pid)
            print(f"soak: before the warm-up: fds {cold[0]}, rss {cold[1] / 2**20:.1f} MiB; "
                  f"after {args.warmup} warm-up connections: fds {start[0]}, rss {start[1] / 2**20:.1f} MiB")
            print(f"soak: guest {args.guest} pid {server.pid}, {args.connections} connections of each of {', '.join(kinds)}")
            print(f"{'kind':>16} {'connections':>11} {'fds':>5} {'rss MiB':>8} {'failures':>8} {'seconds':>8}")
            phases = [run_phase(kind, args.connections, args.every, args.burst, port, ctx, rnd, server) for kind in kinds]
            print(f"\n{'kind':>16} {'connections':>11} {'fds before':>10} {'fds after':>9} {'rss before':>10} "
                  f"{'rss after':>9} {'growth':>8} {'peak':>7} {'failures':>8}  verdict")
            for ph in phases:
                growth = (ph.after[1] - ph.before[1]) / ph.before[1] * 100 if ph.before[1] else 0.0
                verdict = "within 5%" if abs(growth) <= 5 and ph.after[0] <= ph.before[0] else "NOT within 5%"
                print(f"{ph.kind:>16} {ph.connections:>11} {ph.before[0]:>10} {ph.after[0]:>9} {ph.before[1] / 2**20:>10.1f} "
                      f"{ph.after[1] / 2**20:>9.1f} {growth:>+7.1f}% {ph.peak_rss / 2**20:>7.1f} {ph.failures:>8}  {verdict}")
            end = phases[-1].after if phases else start
            print(f"soak: all kinds: fds {start[0]} -> {end[0]}, rss {start[1] / 2**20:.1f} -> {end[1] / 2**20:.1f} MiB "
                  f"({(end[1] - start[1]) / start[1] * 100:+.1f}%; before the warm-up {cold[1] / 2**20:.1f} MiB); "
                  f"{sum(ph.seconds for ph in phases):.0f} s ({datetime.datetime.now(datetime.timezone.utc):%H:%M UTC}; "
                  "figures are noisy on a shared machine)")
        finally:
            server.kill()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
