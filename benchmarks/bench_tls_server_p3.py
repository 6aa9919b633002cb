"""A WASI 0.3 guest TLS server written with the asyncio-style binding (issue 17): handshakes
per second beside a CPython asyncio ``ssl`` server, and the host's share beside both.

Servers, each in its own process, with the same certificate and key:
- ``tls_echo_server_p3`` (componentize-py, ``wasi_tls_aio.start_server``) under
  ``wasi-tls-host run``: after the handshake it writes a line (version, ALPN), then echoes
  lines upper-cased; it serves its one identity, as the reference serves its one certificate
  (``--sni`` also measures it choosing the identity per connection from the ClientHello's
  server name, ALPN ids and versions, which costs it three calls into the host);
- a CPython asyncio ``ssl`` server doing the same (the reference, target: the guest >= 0.8x);
- the WAT 0.3 server guest ``tls_p3_server`` (no language runtime: the host's work alone; it
  takes its handshakes one after another, over the TCP stand-in of devtools/tcp_p3.py), which
  echoes bytes.
The load (bench_tls_server.py's design): CLIENTS concurrent loopback asyncio ``ssl`` clients
in one more process, each looping connect -> TLS 1.3 handshake verifying a.test -> send
"x\\n" -> read until the echo -> close, for DURATION seconds after a one-second warm-up.
The servers are measured alternately, ROUNDS times; the best of each is printed, and beside
it each server process's CPU time per handshake (least of the rounds), which the other
tenants of a shared machine disturb less than the rate.

``--baseline CHECKOUT`` also runs the guest and host of another checkout (its ``host/`` on the
path, its guest built from its own sources), alternated with this one, to show a change's size.

Idle memory: each server afresh, its RSS with ``--idle`` N connections held open after each
echoed a line, less before them, per connection (the binding guest and the reference).

Run: python benchmarks/bench_tls_server_p3.py [--clients N] [--duration S] [--rounds R] [--idle N] [--baseline CHECKOUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
from bench_tls_server import HOST, NAME, free_port, stop  # noqa: E402

WAT_CONNECTIONS = 16000  # the WAT guest's record table holds this many


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], text=True)


def serve_cpython(port: int, cert: str, key: str) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["echo", "http/1.1"])

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = writer.get_extra_info("ssl_object")
        writer.write(f"{tls.version()} {tls.selected_alpn_protocol()}\n".encode())
        try:
            async for line in reader:
                writer.write(line.upper())
                await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass

    async def main() -> None:
        server = await asyncio.start_server(echo, HOST, port, ssl=ctx, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def serve_wat(port_file: str, cert: str, key: str) -> None:
    import bench_tls_p3

    bench_tls_p3.serve_p3(cert, key, port_file, WAT_CONNECTIONS)


async def echoed_line(port: int, ctx: ssl.SSLContext) -> asyncio.StreamWriter:
    """A new connection that has sent a line and read its echo (after the guest's greeting)."""
    reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname=NAME)
    writer.write(b"x\n")
    await writer.drain()
    while (line := await reader.readline()) not in (b"x\n", b"X\n"):
        if not line:
            raise EOFError("the server closed before echoing")
    return writer


def load(port: int, ca: str, clients: int, duration: float) -> None:
    ctx = bench_tls_server.client_context(ca)

    async def one() -> None:
        await bench_tls_server._close(await echoed_line(port, ctx))

    bench_tls_server.run_load(one, clients, duration)


def hold(port: int, ca: str, count: int) -> None:
    """Open ``count`` connections, each echoed one line, report, hold them until stdin
    closes, then close them (bench_tls_server.hold for this line protocol)."""
    ctx = bench_tls_server.client_context(ca)

    async def main() -> None:
        writers: list[asyncio.StreamWriter] = []
        for start in range(0, count, 50):  # in batches, as bench_tls_server.hold
            writers += await asyncio.gather(*(asyncio.wait_for(echoed_line(port, ctx), 20) for _ in range(start, min(count, start + 50))))
        print(json.dumps({"open": len(writers)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await asyncio.gather(*(bench_tls_server._close(w) for w in writers))

    asyncio.run(main())


def idle_kib_per_connection(kind: str, guest: Path, cert: str, key: str, ca: str, count: int, workdir: Path) -> float:
    """A fresh server's RSS with ``count`` idle connections held (each echoed a line), less
    before them, per connection."""
    server, port = start(kind, guest, cert, key, workdir)
    try:
        before, after, opened = bench_tls_server.rss_with_idle_connections(server.pid, port, ca, count, script=__file__)
        if opened != count:
            raise RuntimeError(f"{kind}: only {opened} of {count} idle connections opened")
        return (after - before) / opened
    finally:
        stop(server)


def baseline_env(checkout: str) -> dict[str, str]:
    """The environment that runs another checkout's host (``--baseline``): its ``host/`` first
    on the path, so its guests are built from its own ``guest_examples/`` and ``wit/``."""
    return {**os.environ, "PYTHONPATH": str(Path(checkout).resolve() / "host")}


def build_baseline_guest(checkout: str) -> Path:
    out = subprocess.run([sys.executable, "-c", "from wasi_tls_host import guests; print(guests.build('tls_echo_server_p3'))"],
                         env=baseline_env(checkout), capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def start(kind: str, guest: Path, cert: str, key: str, workdir: Path, baseline: str | None = None,
          baseline_guest: Path | None = None) -> tuple[subprocess.Popen[str], int]:
    if kind == "cpython":
        port = free_port()
        proc = child("serve-cpython", str(port), cert, key)
        _wait(proc, port)
        return proc, port
    if kind in ("guest", "guest-sni", "baseline"):
        port = free_port()
        names = ["default"] if kind == "guest-sni" else []  # a NAME: select_identity per connection
        env = None
        if kind == "baseline":
            assert baseline is not None and baseline_guest is not None
            env, guest = baseline_env(baseline), baseline_guest
        proc = subprocess.Popen([sys.executable, "-m", "wasi_tls_host.cli", "run", "--allow-listen", f"{HOST}:{port}",
                                 "--identity", f"default={cert},{key}", str(guest), HOST, str(port), "1000000000", *names],
                                stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if line[:1] != ["listening"]:
            proc.kill()
            raise RuntimeError(f"the guest server did not start: {line}")
        return proc, port
    port_file = workdir / f"wat-port-{time.monotonic_ns()}"
    proc = child("serve-wat", str(port_file), cert, key)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the WAT server guest did not start")
        time.sleep(0.02)
    return proc, int(port_file.read_text())


def _wait(proc: subprocess.Popen[str], port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the CPython server did not start") from None
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, guest: Path, cert: str, key: str, ca: str, clients: int, duration: float, workdir: Path,
            baseline: str | None = None, baseline_guest: Path | None = None) -> tuple[float, float]:
    """Handshakes per second, and the server process's CPU milliseconds per handshake (over
    the whole load, warm-up included: a figure the other tenants of a shared machine
    disturb less than the rate)."""
    server, port = start(kind, guest, cert, key, workdir, baseline, baseline_guest)
    try:
        cpu_before = cpu_seconds(server.pid)
        out = subprocess.run([sys.executable, __file__, "load", str(port), ca, str(clients), str(duration)],
                             capture_output=True, text=True, timeout=duration + 60)
        cpu = cpu_seconds(server.pid) - cpu_before
        rate = json.loads(out.stdout)
        if rate["errors"]:
            print(f"  {kind}: {rate['errors']} client errors, e.g. {rate['first_errors']}", file=sys.stderr)
        return rate["handshakes"] / rate["seconds"], cpu * 1000 / max(1, rate["handshakes"] + rate["warmup_handshakes"])
    finally:
        stop(server)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("serve-cpython", "serve-wat", "load", "hold"):
        command, *rest = sys.argv[1:]
        if command == "serve-cpython":
            serve_cpython(int(rest[0]), rest[1], rest[2])
        elif command == "serve-wat":
            serve_wat(*rest)
        elif command == "hold":
            hold(int(rest[0]), rest[1], int(rest[2]))
        else:
            load(int(rest[0]), rest[1], int(rest[2]), float(rest[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-wat", action="store_true", help="skip the WAT guest (the host's share)")
    parser.add_argument("--idle", type=int, default=200, metavar="N",
                        help="idle memory per connection of the binding guest and CPython's server with N held (0: not measured)")
    parser.add_argument("--sni", action="store_true", help="also the guest choosing its identity per connection (select_identity)")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="also the same guest and host from another checkout (e.g. a `git worktree add --detach` of main), "
                             "alternated with this one in the same run")
    args = parser.parse_args()
    from wasi_tls_host import Host, guests

    guest = guests.build("tls_echo_server_p3")
    with Host(runtime="core") as host:
        host.load(guest)  # compiled into the shared cache before anything is timed
        guests.build("tls_p3_server")
    baseline_guest = build_baseline_guest(args.baseline) if args.baseline else None
    kinds = ["guest", "cpython"] + (["baseline"] if args.baseline else []) + (["guest-sni"] if args.sni else []) + ([] if args.no_wat else ["wat"])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ca = trustme.CA()
        leaf = ca.issue_cert(NAME)
        cert, key, ca_pem = (str(workdir / n) for n in ("cert.pem", "key.pem", "ca.pem"))
        Path(cert).write_bytes(b"".join(c.bytes() for c in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(ca_pem)
        best = {kind: 0.0 for kind in kinds}
        cpu_ms = {kind: float("inf") for kind in kinds}
        rounds: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                rate, ms = measure(kind, guest, cert, key, ca_pem, args.clients, args.duration, workdir, args.baseline, baseline_guest)
                best[kind], cpu_ms[kind] = max(best[kind], rate), min(cpu_ms[kind], ms)
                rounds[kind].append((rate, ms))
        idle = {kind: idle_kib_per_connection(kind, guest, cert, key, ca_pem, args.idle, workdir)
                for kind in ("guest", "cpython")} if args.idle else {}
    print(f"load: {os.getloadavg()[0]:.1f} (1-minute average), {os.cpu_count()} cores; {args.clients} clients, "
          f"{args.duration:.0f} s x {args.rounds} rounds, best of each")
    # One process's figures differ from the next's by 10-30% on the same code: the medians of
    # the alternating rounds say more about a change than the best of each.
    for kind in kinds:
        rates, costs = [r for r, _ in rounds[kind]], [m for _, m in rounds[kind]]
        print(f"median of {len(rates)}: {kind}: {statistics.median(rates):.0f} handshakes/s, "
              f"{statistics.median(costs):.2f} ms CPU per handshake")
    g, c = best["guest"], best["cpython"]
    print(f"handshakes/s: 0.3 binding guest (tls_echo_server_p3) {g:.0f}; CPython asyncio ssl {c:.0f}; "
          f"guest = {g / c:.2f}x (target >= 0.8x)")
    if "guest-sni" in best:
        print(f"handshakes/s: the same guest choosing its identity per connection (select_identity) {best['guest-sni']:.0f} "
              f"= {best['guest-sni'] / c:.2f}x CPython")
    if "baseline" in best:
        print(f"handshakes/s: the same guest and host from {args.baseline} {best['baseline']:.0f} = {best['baseline'] / c:.2f}x CPython")
    if "wat" in best:
        print(f"handshakes/s: 0.3 WAT server guest (tls_p3_server, one handshake at a time) {best['wat']:.0f} "
              f"= {best['wat'] / c:.2f}x CPython (the host's share)")
    if idle:
        print(f"idle memory per open TLS connection, {args.idle} held (each echoed a line): 0.3 binding guest "
              f"{idle['guest']:.1f} KiB; CPython asyncio ssl {idle['cpython']:.1f} KiB")
    print("server process CPU per handshake (least of the rounds): " + "; ".join(
        f"{kind} {cpu_ms[kind]:.2f} ms = {cpu_ms[kind] / cpu_ms['cpython']:.2f}x CPython's" for kind in kinds))


if __name__ == "__main__":
    main()
