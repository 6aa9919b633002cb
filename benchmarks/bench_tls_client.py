"""wasi:tls client: figures for issue 5, all against one local server in one run.

- Handshake latency: TCP connect to 127.0.0.1 + TLS 1.3 handshake verifying the name
  "localhost" (no name lookup on either side), median of 50, timed inside a
  componentize-py guest on this host (tls_probe bench-handshake) versus a CPython ``ssl``
  client in this process. Target: at most 1.5x CPython's.
- Download throughput (one connection, body of DOWNLOAD_MIB MiB, best of 3): the guest versus
  a CPython ``ssl`` client, and versus the raw ``list<u8>`` crossing rate host -> guest in
  64 KiB lists (bench_core's crossing guest; the ceiling for any stream on this API).
  Target: at least 70% of the crossing rate.

The server is a CPython ``ssl`` server in a child process (so it does not share a GIL with
the host under test): it sends the body after a request line, or just waits for the client
to close when there is none.

Every guest figure is measured on each runtime backend (core: this host's own Canonical ABI
on wasmtime's core API; component: wasmtime-py's component API), alternating with the
reference in the same run. Issue 9's target: the core runtime's download at least 50% of
CPython ``ssl``'s.

Run: python benchmarks/bench_tls_client.py [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import trustme

from wasi_tls_host import Host, WasiConfig, guests
from wasi_tls_host.host import all_interfaces
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.wasi.sockets import NetworkPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import CHUNK, best_rate, crossing  # noqa: E402  (the same crossing measurement)

HANDSHAKES = 50
DOWNLOAD_MIB = 32
BODY = bytes(range(256)) * (DOWNLOAD_MIB << 12)


# --- the server (child process) ------------------------------------------------------------


def serve_tls(cert_chain: str, port_file: str, handle: Callable[[ssl.SSLSocket], None], version: ssl.TLSVersion | None = None) -> None:
    """Accept TLS connections one at a time, forever, passing each to ``handle``; the port
    goes to ``port_file``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_chain)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    Path(port_file).write_text(str(listener.getsockname()[1]))
    while True:
        raw, _ = listener.accept()
        raw.settimeout(30)
        try:
            with ctx.wrap_socket(raw, server_side=True) as conn:
                handle(conn)
        except (OSError, ssl.SSLError):
            pass


def send_body(conn: ssl.SSLSocket, body: bytes = BODY) -> None:
    """``body`` after a request; nothing for a client that only shakes hands."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)  # b"" or SSLZeroReturnError: handshake-only client
        if not chunk:
            break
        request += chunk
    if request:
        conn.sendall(body)
        conn.unwrap()


def write_pki(workdir: Path, key_type: trustme.KeyType = trustme.KeyType.ECDSA) -> tuple[Path, Path]:
    """A test CA and a "localhost" certificate from it: (server key and chain file, CA file)."""
    ca = trustme.CA(key_type=key_type)
    chain = workdir / "server.pem"
    ca.issue_cert("localhost", key_type=key_type).private_key_and_cert_chain_pem.write_to_path(str(chain))
    ca_pem = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    return chain, ca_pem


class ServerProcess:
    """``python SCRIPT --serve CHAIN PORT_FILE ARGS...`` (this script's server by default),
    started once it wrote the port it listens on."""

    def __init__(self, cert_chain: Path, workdir: Path, script: str = __file__, *args: str) -> None:
        port_file = workdir / "port"
        self.proc = subprocess.Popen([sys.executable, script, "--serve", str(cert_chain), str(port_file), *args])
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("benchmark server did not start")
            time.sleep(0.02)
        self.port = int(port_file.read_text())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


# --- the CPython reference client -----------------------------------------------------------


def cpython_handshakes(ctx: ssl.SSLContext, port: int, count: int) -> tuple[list[float], list[float]]:
    """(connect + handshake, handshake alone) in microseconds, per connection."""
    totals, handshakes = [], []
    for _ in range(count):
        start = time.perf_counter()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        connected = time.perf_counter()
        conn = ctx.wrap_socket(sock, server_hostname="localhost")
        done = time.perf_counter()
        totals.append((done - start) * 1e6)
        handshakes.append((done - connected) * 1e6)
        conn.close()
    return totals, handshakes


def cpython_download(ctx: ssl.SSLContext, port: int) -> float:
    """MB/s from the request to the end of the body (the guest measures the same span)."""
    buf = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, ctx.wrap_socket(sock, server_hostname="localhost") as conn:
        start = time.perf_counter()
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        total = 0
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            total += n
        elapsed = time.perf_counter() - start
    assert total == len(BODY), total
    return total / elapsed / 1e6


# --- the guest on this host ----------------------------------------------------------------


def run_probe(host: Host, config_args: list[str], tls: TlsConfig) -> dict[str, str]:
    out, err = bytearray(), bytearray()
    policy = NetworkPolicy().allow_connect("127.0.0.1:*").allow_dns()
    result = host.run(guests.build("tls_probe"), WasiConfig(args=["tls_probe", *config_args], stdout=out, stderr=err, network=policy, tls=tls))
    if result.exit_code != 0:
        raise RuntimeError(f"tls_probe {config_args} failed: {out.decode()} {err.decode()} {result.trap}")
    return dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)


def guest_download(host: Host, port: int, tls: TlsConfig) -> float:
    got = run_probe(host, ["bench-download", "127.0.0.1", str(port), "localhost"], tls)
    assert int(got["bytes"]) == len(BODY) and got["end"] == "closed", got
    return int(got["bytes"]) / (int(got["elapsed-ns"]) / 1e9) / 1e6


def interleaved_wat_and_cpython(host: Host, port: int, tls: TlsConfig, ctx: ssl.SSLContext, count: int) -> tuple[list[float], list[float]]:
    """Connect + handshake times (microseconds) of the WAT guest and of CPython, alternating
    connection by connection so that both see the same machine (2 shared cores are noisy).
    The WAT guest has no language runtime: this is the host's own cost. Closing is not timed
    on either side."""
    config = WasiConfig(network=NetworkPolicy().allow_connect("127.0.0.1:*"), tls=tls)
    wat, reference = [], []
    with host.instantiate(guests.build("tls_handshake"), config) as g:
        for _ in range(3):
            assert g.call("handshake", port) == 0
            g.call("close")
        for _ in range(count):
            start = time.perf_counter()
            status = g.call("handshake", port)
            wat.append((time.perf_counter() - start) * 1e6)
            assert status == 0, f"tls_handshake failed at step {status}"
            g.call("close")
            reference.append(cpython_handshakes(ctx, port, 1)[0][0])
    return wat, reference


RUNTIMES = ("core", "component")


def crossing_rate(runtime: str) -> float:
    """bench_core's raw host -> guest list<u8> rate, 64 KiB lists."""
    count = (DOWNLOAD_MIB << 20) // CHUNK
    host = Host(interfaces=[*all_interfaces(), crossing], runtime=runtime)
    with host.instantiate(guests.build("crossing"), WasiConfig(stdout=None)) as g:
        g.call("raw-pull", CHUNK, 2)
        return best_rate(lambda: g.call("raw-pull", CHUNK, count), CHUNK * count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", action="store_true", help="cProfile the guest's download and print the top entries")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        workdir = Path(tmp)
        chain, ca_pem = write_pki(workdir)
        tls = TlsConfig(trust=[ca_pem], use_system_roots=False)
        ref_ctx = ssl.create_default_context(cafile=str(ca_pem))

        hosts = {runtime: Host(runtime=runtime) for runtime in RUNTIMES}
        guests.build("tls_probe")
        server = ServerProcess(chain, workdir)
        hs: dict[str, list[int]] = {r: [] for r in RUNTIMES}
        tls_only: dict[str, list[int]] = {r: [] for r in RUNTIMES}
        wat: dict[str, tuple[list[float], list[float]]] = {}
        dl: dict[str, float] = {}
        try:
            for host in hosts.values():
                run_probe(host, ["bench-handshake", "127.0.0.1", str(server.port), "3", "localhost"], tls)  # warm up
            cpython_handshakes(ref_ctx, server.port, 3)
            # Rounds of 10 connections per runtime then 10 CPython ones, so all see the same
            # machine (the 2 shared cores make back-to-back batches of 50 swing by 2x).
            ref_hs, ref_tls = [], []
            for _ in range(HANDSHAKES // 10):
                for runtime, host in hosts.items():
                    got = run_probe(host, ["bench-handshake", "127.0.0.1", str(server.port), "10", "localhost"], tls)
                    hs[runtime] += [int(t) for t in got["handshake-us"].split(",")]
                    tls_only[runtime] += [int(t) for t in got["tls-only-us"].split(",")]
                totals, alone = cpython_handshakes(ref_ctx, server.port, 10)
                ref_hs += totals
                ref_tls += alone
            for runtime, host in hosts.items():
                wat[runtime] = interleaved_wat_and_cpython(host, server.port, tls, ref_ctx, 2 * HANDSHAKES)

            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                guest_download(hosts["core"], server.port, tls)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            for runtime, host in hosts.items():
                dl[runtime] = max(guest_download(host, server.port, tls) for _ in range(3))
            ref_dl = max(cpython_download(ref_ctx, server.port) for _ in range(3))
        finally:
            server.stop()
        raw = {runtime: crossing_rate(runtime) for runtime in RUNTIMES}

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) / 1e3:7.2f} ms (p10 {statistics.quantiles(values, n=10)[0] / 1e3:.2f}, p90 {statistics.quantiles(values, n=10)[-1] / 1e3:.2f})"

    r_med = statistics.median(ref_hs)
    print("== wasi:tls client vs CPython ssl, one local CPython ssl server (TLS 1.3, ECDSA P-256)")
    print(f"handshake (TCP connect + TLS), median of {HANDSHAKES}, in alternating rounds of 10:")
    for runtime in RUNTIMES:
        ratio = statistics.median(hs[runtime]) / r_med
        print(f"  guest, {runtime:9}      {ms(hs[runtime])}   {ratio:.2f}x CPython (target <= 1.5x: {'met' if ratio <= 1.5 else 'MISSED'})")
    print(f"  CPython ssl client:   {ms(ref_hs)}")
    print(f"WAT guest (no language runtime: the host's own cost), alternating with CPython, median of {2 * HANDSHAKES}:")
    for runtime in RUNTIMES:
        w, wr = statistics.median(wat[runtime][0]), statistics.median(wat[runtime][1])
        print(f"  WAT guest, {runtime:9}  {w / 1e3:7.2f} ms   CPython alongside {wr / 1e3:7.2f} ms   ratio {w / wr:.2f}x")
    print(f"TLS handshake alone (TCP already connected), median of {HANDSHAKES}:")
    for runtime in RUNTIMES:
        print(f"  guest, {runtime:9}      {statistics.median(tls_only[runtime]) / 1e3:7.2f} ms")
    print(f"  CPython ssl client:   {statistics.median(ref_tls) / 1e3:7.2f} ms")
    print(f"download of {DOWNLOAD_MIB} MiB, best of 3 (MB/s):")
    for runtime in RUNTIMES:
        print(f"  guest, {runtime:9}  {dl[runtime]:8.1f}   = {dl[runtime] / ref_dl:6.1%} of CPython;"
              f"  raw list<u8> crossing on this runtime {raw[runtime]:8.1f} (guest = {dl[runtime] / raw[runtime]:.1%} of it)")
    print(f"  CPython ssl client:  {ref_dl:8.1f}")
    print(f"  target: core runtime >= 50% of CPython: {'met' if dl['core'] >= 0.5 * ref_dl else 'MISSED'}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve_tls(sys.argv[2], sys.argv[3], send_body)
    else:
        main()
