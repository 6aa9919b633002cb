"""Guest TLS servers: figures for issues 6 and 9, next to a CPython asyncio ``ssl`` server in one run.

- Handshakes per second: N concurrent loopback clients loop connect -> TLS 1.3 handshake
  (verifying the name a.test) -> one byte echoed -> close, for DURATION seconds, against
  (a) the ``tls_server`` guest in ``--concurrent`` echo mode on this host, on each runtime
  backend (core: this host's own Canonical ABI on wasmtime's core API; component:
  wasmtime-py's component API), and
  (b) a CPython asyncio ``ssl`` echo server with the same certificate and key.
- Memory per idle connection: RSS of the server process with K established, idle TLS
  connections (each has echoed one byte, so the server finished its handshake) minus its RSS
  before them, divided by K; same two servers.

- Workers (issue 11): handshakes per second with 1 and 2 server processes sharing the port
  (SO_REUSEPORT): the guest through ``wasi-tls-host run --workers N``, next to N CPython
  asyncio ``ssl`` processes with ``reuse_port``. Same load as above.

Each server runs in its own process (so RSS is the server's alone and no GIL is shared with
the load); the load generator is one more process running asyncio ``ssl`` clients. The
machine has 2 cores, shared by the server, the load and anyone else: with 2 workers the
load generator competes with them for the same cores, so the gain from a second worker is
bounded here by what the load leaves over.

Run: python benchmarks/bench_tls_server.py [--clients N] [--duration S] [--idle K] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Awaitable, Callable

HOST = "127.0.0.1"
NAME = "a.test"


# --- the servers (child processes) ---------------------------------------------------------


def serve_guest(port: int, cert: str, key: str, runtime: str = "core") -> None:
    from wasi_tls_host import Host, WasiConfig, guests
    from wasi_tls_host.tls import TlsConfig
    from wasi_tls_host.tls.identities import PrivateIdentity
    from wasi_tls_host.wasi.sockets import NetworkPolicy

    identity = PrivateIdentity.from_files("a", cert, key)
    config = WasiConfig(
        args=["tls_server", str(port), "--concurrent", "--count", "0"],
        stdout=None, stderr="inherit",
        network=NetworkPolicy().allow_listen(f"{HOST}:{port}"),
        tls=TlsConfig(use_system_roots=False, identities=[identity]),
    )
    result = Host(runtime=runtime).run(guests.build("tls_server"), config)
    print(f"guest server ended: {result}", file=sys.stderr)


def serve_cpython(port: int, cert: str, key: str, reuse_port: bool = False) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(echo, HOST, port, ssl=ctx, backlog=1024, reuse_port=reuse_port or None)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- the load (a child process) --------------------------------------------------------------


def client_context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


async def _one_handshake(port: int, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname=NAME)
    writer.write(b"x")
    await writer.drain()
    assert await reader.readexactly(1) == b"x"
    return reader, writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (ConnectionError, ssl.SSLError, asyncio.TimeoutError):
        pass


def load(port: int, ca: str, clients: int, duration: float) -> None:
    ctx = client_context(ca)

    async def one() -> None:
        _, writer = await _one_handshake(port, ctx)
        await _close(writer)

    run_load(one, clients, duration)


def run_load(one: Callable[[], Awaitable[None]], clients: int, duration: float) -> None:
    """``clients`` concurrent loops of ``one()`` (a connection, bounded at 10 s each): a
    second of warm-up, then ``duration`` seconds counted; prints the counts as JSON (the
    warm-up's too, for figures taken over the whole run, such as the server's CPU time)."""

    async def worker(stop_at: float, counts: list[int], errors: list[str]) -> None:
        while time.monotonic() < stop_at:
            try:
                await asyncio.wait_for(one(), 10)
                counts[0] += 1
            except Exception as e:  # noqa: BLE001 - reported, never hidden
                errors.append(f"{type(e).__name__}: {e}")

    async def main() -> dict[str, object]:
        warmup: list[int] = [0]
        await asyncio.gather(*(worker(time.monotonic() + 1.0, warmup, []) for _ in range(clients)))
        counts: list[int] = [0]
        errors: list[str] = []
        started = time.monotonic()
        await asyncio.gather(*(worker(started + duration, counts, errors) for _ in range(clients)))
        elapsed = time.monotonic() - started
        return {"handshakes": counts[0], "seconds": elapsed, "warmup_handshakes": warmup[0], "errors": len(errors),
                "first_errors": errors[:3]}

    print(json.dumps(asyncio.run(main())), flush=True)


def hold(port: int, ca: str, count: int) -> None:
    """Open ``count`` connections, report, hold them until stdin closes, then close them."""
    ctx = client_context(ca)

    async def main() -> None:
        writers = []
        for start in range(0, count, 50):  # in batches: a full backlog would only add noise
            pairs = await asyncio.gather(*(asyncio.wait_for(_one_handshake(port, ctx), 20) for _ in range(start, min(count, start + 50))))
            writers += [w for _, w in pairs]
        print(json.dumps({"open": len(writers)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await asyncio.gather(*(_close(w) for w in writers))

    asyncio.run(main())


# --- orchestration ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def child(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], text=True, **kwargs)  # type: ignore[call-overload]


def start_server(kind: str, cert: str, key: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    # kind: "cpython", or "guest-RUNTIME"
    if kind.startswith("guest-"):
        proc = child("serve-guest", str(port), cert, key, kind.removeprefix("guest-"))
    else:
        proc = child(f"serve-{kind}", str(port), cert, key)
    deadline = time.monotonic() + 60  # the guest may have to be built first
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.05)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def rss_with_idle_connections(pid: int, port: int, ca: str, count: int, script: str = __file__) -> tuple[int, int, int]:
    """(RSS KiB of process ``pid`` before, RSS with ``count`` idle connections open, how many
    opened): the connections are held by a child process (``script hold ...``: this one's
    ``hold``, or another protocol's), closed before this returns."""
    time.sleep(0.5)
    before = rss_kib(pid)
    holder = subprocess.Popen([sys.executable, script, "hold", str(port), ca, str(count)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        opened = json.loads(holder.stdout.readline() or "{}").get("open", 0)
        time.sleep(0.5)
        after = rss_kib(pid)
        holder.stdin.close()
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
    return before, after, opened


def measure(kind: str, cert: str, key: str, ca: str, clients: int, duration: float, idle: int) -> dict[str, float]:
    server, port = start_server(kind, cert, key)
    try:
        out = subprocess.run([sys.executable, __file__, "load", str(port), ca, str(clients), str(duration)],
                             capture_output=True, text=True, timeout=duration + 60)
        rate = json.loads(out.stdout)
        if rate["errors"]:
            print(f"  {kind}: {rate['errors']} client errors, e.g. {rate['first_errors']}", file=sys.stderr)
        before, after, opened = rss_with_idle_connections(server.pid, port, ca, idle)
        return {
            "handshakes_per_s": rate["handshakes"] / rate["seconds"],
            "handshakes": rate["handshakes"],
            "errors": rate["errors"],
            "idle_open": opened,
            "rss_before_mib": before / 1024,
            "kib_per_idle_conn": (after - before) / max(opened, 1),
        }
    finally:
        stop(server)


def start_workers(kind: str, count: int, cert: str, key: str) -> tuple[list[subprocess.Popen[str]], int]:
    """``count`` server processes on one port: the CLI's ``--workers`` for the guest,
    ``count`` asyncio processes with SO_REUSEPORT for CPython. Returns once all listen."""
    from wasi_tls_host import guests

    port = free_port()
    if kind == "guest":
        cmd = [sys.executable, "-m", "wasi_tls_host.cli", "run", "--allow-listen", f"{HOST}:{port}", "--identity", f"a={cert},{key}",
               "--workers", str(count), "--graceful-timeout", "5", str(guests.build("tls_server")), str(port), "--concurrent", "--count", "0"]
        procs = [subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)]
        assert procs[0].stdout is not None
        # Each worker's guest prints a line once it listens; two workers writing at the same
        # moment can interleave their lines, so count the phrase, not lines.
        seen = ""
        while seen.count("listening on") < count:
            line = procs[0].stdout.readline()
            if not line:
                raise RuntimeError("guest workers did not start")
            seen += line
        # The guest prints a line per connection: keep reading, or a full pipe stalls it.
        threading.Thread(target=procs[0].stdout.read, daemon=True).start()
        return procs, port
    procs = [child("serve-cpython", str(port), cert, key, "reuse") for _ in range(count)]
    time.sleep(1.0)  # asyncio binds in well under a second; no output to wait for
    socket.create_connection((HOST, port), timeout=5).close()
    return procs, port


def measure_workers(kind: str, count: int, cert: str, key: str, ca: str, clients: int, duration: float) -> dict[str, float]:
    procs, port = start_workers(kind, count, cert, key)
    try:
        out = subprocess.run([sys.executable, __file__, "load", str(port), ca, str(clients), str(duration)],
                             capture_output=True, text=True, timeout=duration + 60)
        rate = json.loads(out.stdout)
        return {"handshakes_per_s": rate["handshakes"] / rate["seconds"], "errors": rate["errors"]}
    finally:
        for proc in procs:
            stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (comma-separated)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--idle", type=int, default=500)
    args = parser.parse_args()

    import trustme

    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        leaf = ca.issue_cert(NAME)
        cert, key, ca_pem = f"{tmp}/cert.pem", f"{tmp}/key.pem", f"{tmp}/ca.pem"
        Path(cert).write_bytes(b"".join(c.bytes() for c in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(ca_pem)
        from wasi_tls_host import guests

        guests.build("tls_server", quiet=False)
        print(f"TLS 1.3, ECDSA P-256 certificate, {args.clients} concurrent clients for {args.duration:.0f} s, "
              f"{args.idle} idle connections; {os.cpu_count()} cores shared by server and load")
        kinds = ("guest-core", "cpython", "guest-component")
        results = {kind: measure(kind, cert, key, ca_pem, args.clients, args.duration, args.idle) for kind in kinds}
        g, c, k = results["guest-core"], results["cpython"], results["guest-component"]
        print(f"{'':34}{'guest (core)':>14}{'guest (component)':>19}{'CPython asyncio':>17}")
        print(f"{'handshakes/s':34}{g['handshakes_per_s']:14.0f}{k['handshakes_per_s']:19.0f}{c['handshakes_per_s']:17.0f}"
              f"   (core/CPython {g['handshakes_per_s'] / c['handshakes_per_s']:.2f}; target >= 1: "
              f"{'met' if g['handshakes_per_s'] >= c['handshakes_per_s'] else 'MISSED'})")
        print(f"{'client errors':34}{g['errors']:14.0f}{k['errors']:19.0f}{c['errors']:17.0f}")
        print(f"{'server RSS before idle conns MiB':34}{g['rss_before_mib']:14.1f}{k['rss_before_mib']:19.1f}{c['rss_before_mib']:17.1f}")
        print(f"{'KiB per idle connection':34}{g['kib_per_idle_conn']:14.1f}{k['kib_per_idle_conn']:19.1f}{c['kib_per_idle_conn']:17.1f}"
              f"   ({g['idle_open']:.0f} / {k['idle_open']:.0f} / {c['idle_open']:.0f} open)")
        counts = [int(n) for n in args.workers.split(",") if n]
        if counts:
            print(f"\nworkers sharing one port (SO_REUSEPORT), {args.clients} clients for {args.duration:.0f} s")
            print(f"{'handshakes/s':34}{'guest --workers':>16}{'CPython asyncio':>18}")
            for n in counts:
                gw = measure_workers("guest", n, cert, key, ca_pem, args.clients, args.duration)
                cw = measure_workers("cpython", n, cert, key, ca_pem, args.clients, args.duration)
                errors = f"   (client errors {gw['errors']:.0f} / {cw['errors']:.0f})" if gw["errors"] or cw["errors"] else ""
                print(f"{f'{n} worker(s)':34}{gw['handshakes_per_s']:16.0f}{cw['handshakes_per_s']:18.0f}{errors}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve-guest":
        serve_guest(int(sys.argv[2]), sys.argv[3], sys.argv[4], *sys.argv[5:6])
    elif len(sys.argv) > 1 and sys.argv[1] == "serve-cpython":
        serve_cpython(int(sys.argv[2]), sys.argv[3], sys.argv[4], reuse_port=sys.argv[5:6] == ["reuse"])
    elif len(sys.argv) > 1 and sys.argv[1] == "load":
        load(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "hold":
        hold(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        main()
