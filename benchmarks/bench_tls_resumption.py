"""wasi:tls client session resumption (issue 19 item 14): handshake time with and without
resumption, beside CPython's ``ssl`` with and without a session, in one run.

Each connection: TCP connect (not timed), TLS handshake (timed, verifying "localhost"), one
echoed line (which brings TLS 1.3 tickets), close. The guest is ``tls_probe resume`` on this
host, with ``TlsConfig(resumption=True)`` and ``resumption=False``; its first connection
of each run is a full handshake and is left out of the resumed figures. CPython offers the
previous connection's ``SSLSocket.session``. Rounds of ROUND connections alternate guest
and CPython (2 shared cores are noisy); the server is a CPython ``ssl`` server in a child
process, so it shares no GIL with the host under test. The embedder's ``on_handshake``
hook and CPython's ``session_reused`` confirm that what is labelled resumed was.

Run: python benchmarks/bench_tls_resumption.py [--rounds 5] [--runtime core] [--tls 1.3] [--key ecdsa|rsa]
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

import trustme

from wasi_tls_host import Host, WasiConfig, guests
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.tls.engine import HandshakeInfo
from wasi_tls_host.wasi.sockets import NetworkPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tls_client import ServerProcess, serve_tls, write_pki  # noqa: E402  (the same server and certificates)

ROUND = 10


def echo_line(conn: ssl.SSLSocket) -> None:
    line = b""
    while not line.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            return
        line += chunk
    conn.sendall(line)
    conn.recv(64)  # the client's close_notify (or EOF)


def cpython_round(ctx: ssl.SSLContext, port: int, count: int, resume: bool) -> tuple[list[float], int]:
    """Handshake times (microseconds) of ``count`` connections, and how many resumed; with
    ``resume`` each offers the previous connection's session (the first one's comes from a
    connection made before, not timed)."""
    times, resumed = [], 0
    session = cpython_connection(ctx, port, None)[1] if resume else None
    for _ in range(count):
        elapsed, new_session, reused = cpython_connection(ctx, port, session)
        times.append(elapsed)
        resumed += reused
        if resume:
            session = new_session
    return times, resumed


def cpython_connection(ctx: ssl.SSLContext, port: int, session: ssl.SSLSession | None) -> tuple[float, ssl.SSLSession | None, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        start = time.perf_counter()
        with ctx.wrap_socket(sock, server_hostname="localhost", session=session) as conn:
            elapsed = (time.perf_counter() - start) * 1e6
            conn.sendall(b"ping\n")
            assert conn.recv(64) == b"ping\n"
            return elapsed, conn.session, conn.session_reused


def guest_round(host: Host, port: int, tls_args: dict[str, object], count: int, resume: bool) -> tuple[list[float], int]:
    """Handshake times (microseconds) of ``count`` guest connections and how many resumed
    (with ``resume``, one more connection first: it makes the session, and is not counted)."""
    seen: list[HandshakeInfo] = []
    tls = TlsConfig(**tls_args, resumption=resume, on_handshake=seen.append)  # type: ignore[arg-type]
    total = count + 1 if resume else count
    out = bytearray()
    config = WasiConfig(args=["tls_probe", "resume", "127.0.0.1", str(port), str(total), "localhost"], stdout=out,
                        network=NetworkPolicy().allow_connect("127.0.0.1:*"), tls=tls)
    result = host.run(guests.build("tls_probe"), config)
    fields = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    if result.exit_code != 0 or "handshake-us" not in fields:
        raise RuntimeError(f"tls_probe resume failed: {out.decode()} {result.trap}")
    times = [float(t) for t in fields["handshake-us"].split(",")]
    infos = seen[1:] if resume else seen
    return (times[1:] if resume else times), sum(info.resumed for info in infos)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5, help=f"rounds of {ROUND} connections for each of the four")
    parser.add_argument("--runtime", default="core", choices=["core", "component"])
    parser.add_argument("--tls", default="1.3", choices=["1.2", "1.3"])
    parser.add_argument("--key", default="ecdsa", choices=["ecdsa", "rsa"], help="the server certificate's key (P-256 or RSA 2048)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        chain, ca_pem = write_pki(Path(tmp), trustme.KeyType[args.key.upper()])
        tls_args: dict[str, object] = {"trust": [ca_pem], "use_system_roots": False, "min_version": args.tls, "max_version": args.tls}
        ref_ctx = ssl.create_default_context(cafile=str(ca_pem))

        host = Host(runtime=args.runtime)
        guests.build("tls_probe")
        server = ServerProcess(chain, Path(tmp), __file__, args.tls)
        figures: dict[str, list[float]] = {k: [] for k in ("guest full", "guest resumed", "cpython full", "cpython resumed")}
        resumed: dict[str, int] = dict.fromkeys(figures, 0)
        try:
            guest_round(host, server.port, tls_args, 3, True)  # warm up: compile, caches
            cpython_round(ref_ctx, server.port, 3, True)
            for _ in range(args.rounds):
                for name, run in (("guest full", lambda: guest_round(host, server.port, tls_args, ROUND, False)),
                                  ("cpython full", lambda: cpython_round(ref_ctx, server.port, ROUND, False)),
                                  ("guest resumed", lambda: guest_round(host, server.port, tls_args, ROUND, True)),
                                  ("cpython resumed", lambda: cpython_round(ref_ctx, server.port, ROUND, True))):
                    times, reused = run()
                    figures[name] += times
                    resumed[name] += reused
        finally:
            server.stop()
            host.close()

    def ms(values: list[float]) -> str:
        deciles = statistics.quantiles(values, n=10)
        return f"{statistics.median(values) / 1e3:6.2f} ms (p10 {deciles[0] / 1e3:.2f}, p90 {deciles[-1] / 1e3:.2f})"

    n = args.rounds * ROUND
    print(f"== TLS {args.tls} client handshake (TCP already connected), median of {n} each, "
          f"rounds of {ROUND} alternating; runtime {args.runtime}; one local CPython ssl server ({'ECDSA P-256' if args.key == 'ecdsa' else 'RSA 2048'})")
    for name, values in figures.items():
        print(f"  {name:16} {ms(values)}   resumed {resumed[name]}/{len(values)}")
    med = {name: statistics.median(values) for name, values in figures.items()}
    print(f"  resumption saves: guest {1 - med['guest resumed'] / med['guest full']:.0%}, CPython {1 - med['cpython resumed'] / med['cpython full']:.0%}")
    print(f"  guest / CPython: full {med['guest full'] / med['cpython full']:.2f}x, resumed {med['guest resumed'] / med['cpython resumed']:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve_tls(sys.argv[2], sys.argv[3], echo_line, ssl.TLSVersion.TLSv1_3 if sys.argv[4] == "1.3" else ssl.TLSVersion.TLSv1_2)
    else:
        main()
