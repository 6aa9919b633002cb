"""WASI 0.3 TLS (issue 17): figures of the upstream ``wasi:tls@0.3.0-draft`` client, each
beside its reference from the same run.

- Download by a componentize-py guest: ``tls_probe_p3 bench-download`` (``wasi_tls_aio``
  over wasi:sockets 0.3 and upstream's connector, as it would run on ``wasmtime -Sp3
  -Stls``) reading a body of DOWNLOAD_MIB MiB from a CPython ``ssl`` server in a child
  process, timed inside the guest from the connect to the end of the body; beside a CPython
  ``ssl`` client timed over the same span, alternating, best of ROUNDS. Target: at least 50%
  of CPython's.
- Client handshake: TCP connect to 127.0.0.1 + TLS 1.3 handshake verifying "localhost", by
  the same guest (``bench-handshake``, timed inside it, in rounds of 10 alternating with 10
  CPython ``ssl`` connections), median of HANDSHAKES. Target: at most 1.5x CPython's.
- The host's share of both: a WAT guest (``tls_p3_client``: no language runtime) doing the
  same, connection by connection against CPython. The WAT guests take their TCP streams from
  ``devtools/tcp_p3.py``'s one-call stand-in rather than wasi:sockets 0.3 (written before
  it; the TLS path is the same).
- Idle memory per open TLS connection in a 0.3 server guest (``tls_p3_server``, in a
  process of its own): its RSS with IDLE established connections (each has echoed one byte),
  less its RSS before them, per connection; beside a CPython asyncio ``ssl`` echo server
  held the same way (bench_tls_server.py's ``hold``, which measures the 0.2 server guest).

The 0.3 server's handshakes/s are bench_tls_server_p3.py's.

Run: python benchmarks/bench_tls_p3.py [--quick] [--only download|handshake|idle]
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools/ (not installed)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_tls_server  # noqa: E402
import trustme  # noqa: E402
from bench_tls_client import ServerProcess, send_body, serve_tls, write_pki  # noqa: E402
from devtools.tcp_p3 import tcp  # noqa: E402
from wasi_tls_host import Host, WasiConfig, guests  # noqa: E402
from wasi_tls_host.host import all_interfaces  # noqa: E402
from wasi_tls_host.tls import TlsConfig  # noqa: E402
from wasi_tls_host.wasi.sockets import NetworkPolicy  # noqa: E402

DOWNLOAD_MIB = 64
BODY = bytes(range(256)) * (DOWNLOAD_MIB << 12)
REQUEST = b"GET / HTTP/1.0\r\n\r\n"
HANDSHAKES = 50
ROUNDS = 3
IDLE = 200


def run_probe(host: Host, component: object, port: int, ca_pem: Path, *args: str) -> dict[str, str]:
    """``tls_probe_p3 MODE 127.0.0.1 PORT ARGS... localhost``: its ``key=value`` lines."""
    out = bytearray()
    config = WasiConfig(args=["tls_probe_p3", args[0], "127.0.0.1", str(port), *args[1:], "localhost"], stdout=out, stderr=out,
                        network=NetworkPolicy().allow_connect(f"127.0.0.1:{port}"),
                        tls=TlsConfig(trust=[ca_pem], use_system_roots=False, resumption=False))
    result = host.run(component, config)  # type: ignore[arg-type]
    assert result.exit_code == 0, (result, bytes(out[-500:]))
    return dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)


def measure_probe(host: Host, ctx: ssl.SSLContext, port: int, ca_pem: Path, rounds: int, handshakes: int, only: str | None) -> None:
    """The componentize-py guest's figures (timed inside it) beside CPython's, alternating."""
    component = host.load(guests.build("tls_probe_p3"))
    if only in (None, "download"):
        run_probe(host, component, port, ca_pem, "bench-download")  # warm-up
        ours, theirs = [], []
        for _ in range(rounds):
            got = run_probe(host, component, port, ca_pem, "bench-download")
            assert int(got["bytes"]) == len(BODY), got
            ours.append(len(BODY) / int(got["download-us"]))
            theirs.append(cpython_download(ctx, port))
        best, reference = max(ours), max(theirs)
        print(f"download {DOWNLOAD_MIB} MiB, 0.3 componentize-py guest (tls_probe_p3: wasi_tls_aio over wasi:sockets 0.3 and "
              f"the upstream connector, timed in the guest from the connect), best of {rounds}: {best:.0f} MB/s; "
              f"CPython ssl: {reference:.0f} MB/s; guest = {best / reference:.1%} (target >= 50%)")
    if only in (None, "handshake"):
        run_probe(host, component, port, ca_pem, "bench-handshake", "3")  # warm-up
        ours, theirs = [], []
        cpu_ours = cpu_theirs = 0.0
        for _ in range(max(1, handshakes // 10)):
            cpu = time.process_time()
            got = run_probe(host, component, port, ca_pem, "bench-handshake", "10")
            cpu_ours += time.process_time() - cpu
            ours += [int(t) for t in got["handshake-us"].split(",")]
            cpu = time.process_time()
            theirs += [cpython_handshake(ctx, port) for _ in range(10)]
            cpu_theirs += time.process_time() - cpu
        mine, ref = statistics.median(ours), statistics.median(theirs)
        print(f"client handshake (connect + TLS 1.3), 0.3 componentize-py guest (tls_probe_p3, timed in the guest), "
              f"median of {len(ours)} in alternating rounds of 10: {mine / 1000:.2f} ms; CPython ssl {ref / 1000:.2f} ms; "
              f"guest = {mine / ref:.2f}x (target <= 1.5x); host CPU per connection {cpu_ours / len(ours) * 1e3:.2f} ms "
              f"(the guest's start and closes included) vs CPython {cpu_theirs / len(theirs) * 1e3:.2f} ms")


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


def serve_p3(cert: str, key: str, port_file: str, count: int) -> None:
    """The 0.3 WAT server guest on a listener of the stand-in, for ``count`` connections
    (its identity named by the name it serves); writes its port once it listens."""
    from devtools.tcp_p3 import listen
    from wasi_tls_host.tls.identities import PrivateIdentity

    port = listen().getsockname()[1]
    identity = PrivateIdentity.from_files(bench_tls_server.NAME, cert, key)
    with Host(interfaces=[*all_interfaces(), tcp]) as host:
        config = WasiConfig(tls=TlsConfig(use_system_roots=False, identities=[identity]))
        with host.instantiate(guests.build("tls_p3_server"), config) as guest:
            Path(port_file).write_text(str(port))
            guest.call("serve", port, count, 0, 0)


def idle_kib_per_connection(proc: subprocess.Popen[bytes], port: int, ca: str, count: int) -> float:
    """RSS of ``proc`` with ``count`` idle connections held open, less before, per connection."""
    before, after, opened = bench_tls_server.rss_with_idle_connections(proc.pid, port, ca, count)
    assert opened == count, opened
    return (after - before) / opened


def measure_idle(workdir: Path, count: int) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert(bench_tls_server.NAME)
    cert, key, ca_pem, port_file = (str(workdir / n) for n in ("idle-cert.pem", "idle-key.pem", "idle-ca.pem", "idle-port"))
    Path(cert).write_bytes(b"".join(c.bytes() for c in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_pem)
    proc = subprocess.Popen([sys.executable, __file__, "--serve-p3", cert, key, port_file, str(count)])
    try:
        deadline = time.monotonic() + 60
        while not Path(port_file).exists() or not Path(port_file).read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the 0.3 server guest did not start")
            time.sleep(0.02)
        ours = idle_kib_per_connection(proc, int(Path(port_file).read_text()), ca_pem, count)
    finally:
        proc.kill()
        proc.wait(10)
    reference, port = bench_tls_server.start_server("cpython", cert, key)
    try:
        theirs = idle_kib_per_connection(reference, port, ca_pem, count)
    finally:
        bench_tls_server.stop(reference)
    print(f"idle memory per open TLS connection, {count} held: 0.3 WAT server guest {ours:.1f} KiB; "
          f"CPython asyncio ssl server {theirs:.1f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, fewer handshakes")
    parser.add_argument("--only", choices=("download", "handshake", "idle"), help="measure one figure only")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--serve-p3", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_tls(args.serve[0], args.serve[1], functools.partial(send_body, body=BODY))
        return
    if args.serve_p3:
        serve_p3(*args.serve_p3[:3], int(args.serve_p3[3]))
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
                if args.only in (None, "download"):
                    guest_download(guest, server.port)  # warm-up
                    cpython_download(ctx, server.port)
                    ours, theirs = [], []
                    for _ in range(rounds):
                        ours.append(guest_download(guest, server.port))
                        theirs.append(cpython_download(ctx, server.port))
                    best, reference = max(ours), max(theirs)
                    print(f"download {DOWNLOAD_MIB} MiB, 0.3 WAT guest (upstream connector): {best:.0f} MB/s; "
                          f"CPython ssl: {reference:.0f} MB/s; guest = {best / reference:.1%} (the host's share)")
                for _ in range(3 if args.only in (None, "handshake") else 0):
                    guest_handshake(guest, server.port)
                if args.only in (None, "handshake"):
                    ours, theirs = [], []
                    cpu_ours = cpu_theirs = 0.0
                    for _ in range(handshakes):
                        cpu = time.process_time()
                        ours.append(guest_handshake(guest, server.port))
                        cpu_ours += time.process_time() - cpu
                        cpu = time.process_time()
                        theirs.append(cpython_handshake(ctx, server.port))
                        cpu_theirs += time.process_time() - cpu
                    mine, ref = statistics.median(ours), statistics.median(theirs)
                    print(f"client handshake (connect + TLS 1.3), median of {handshakes}: 0.3 WAT guest {mine / 1000:.2f} ms; "
                          f"CPython ssl {ref / 1000:.2f} ms; guest = {mine / ref:.2f}x (the host's share); host CPU per "
                          f"handshake {cpu_ours / handshakes * 1e3:.2f} ms (close included) vs CPython {cpu_theirs / handshakes * 1e3:.2f} ms")
            if args.only in (None, "download", "handshake"):
                measure_probe(host, ctx, server.port, ca_pem, rounds, handshakes, args.only)
        finally:
            server.stop()
            host.close()
        if args.only in (None, "idle"):
            measure_idle(workdir, IDLE // 4 if args.quick else IDLE)
    print(f"load: {os.getloadavg()[0]:.1f} (1-minute average), {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
