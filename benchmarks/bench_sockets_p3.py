"""wasi:sockets@0.3.0 figures (issue 16): this host (core runtime) next to the wasmtime CLI in
the same run.

1. Plain TCP download and upload of 64 MiB over 127.0.0.1 by the componentize-py guest
   ``sockets_probe_p3`` (``download``: receive's stream read to its end; ``upload``: one
   stream written into send), on this host and on ``wasmtime run -Wcomponent-model-async
   -Sp3,inherit-network`` (same component, precompiled so compile time is not counted).
   Timed on the CPython peer (a process of its own) from accept until the transfer is
   complete (download: the guest closed after reading everything; upload: the peer read the
   guest's FIN).
2. Accepts per second under 50 concurrent CPython clients in a process of their own
   (connect, echo 4 bytes, close, in a loop): the 0.3 guest ``echo_server_p3`` (a task per connection) on this host and on the
   wasmtime CLI, beside the 0.2 guest ``sockets_probe echo-server`` (poll + accept + splice)
   on this host.

Run: python benchmarks/bench_sockets_p3.py   (a few minutes on a busy machine)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools/ (not installed)
sys.path.insert(0, str(Path(__file__).parent))
import bench_sockets  # noqa: E402
from bench_sockets import CLIENTS, POLICY, free_port, hammer  # noqa: E402
from devtools.conformance import wasmtime_binary  # noqa: E402
from wasi_tls_host import Host, WasiConfig, guests  # noqa: E402

NBYTES = 64 * 1024 * 1024
REPEAT = 5
CONNECTIONS = 1500
TIMEOUT = 300.0
P3_FLAGS = ["-Wcomponent-model-async", "-Sp3,inherit-network"]


def precompiled(wasm: Path) -> Path:
    cwasm = wasm.with_suffix(".p3.cwasm")
    if not cwasm.exists():
        tmp = cwasm.with_suffix(".tmp")
        subprocess.run([str(wasmtime_binary()), "compile", "-Wcomponent-model-async", str(wasm), "-o", str(tmp)], check=True, timeout=600)
        tmp.replace(cwasm)
    return cwasm


def wasmtime_cmd(cwasm: Path, *args: str) -> list[str]:
    return [str(wasmtime_binary()), "run", "--allow-precompiled", *P3_FLAGS, str(cwasm), *args]


def peer(direction: str, nbytes: int) -> None:
    """The CPython peer, in a process of its own (``--peer``) so that it never waits for the
    host's GIL: prints its port, then the seconds the transfer took."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    listener.close()
    with conn:
        start = time.perf_counter()
        if direction == "download":  # we send; done when the guest read it all and closed
            payload = memoryview(bytes(1 << 20))
            left = nbytes
            while left:
                left -= conn.send(payload[: min(left, len(payload))])
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(4096):
                pass
        else:  # we receive until the guest's FIN
            buf = bytearray(1 << 20)
            total = 0
            while n := conn.recv_into(buf):
                total += n
            assert total == nbytes, total
        print(time.perf_counter() - start, flush=True)


def transfer(direction: str, run_guest) -> float:
    """MB/s of one download or upload of NBYTES, ``run_guest(args) -> stdout`` running the guest."""
    proc = subprocess.Popen([sys.executable, __file__, "--peer", direction, str(NBYTES)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        if direction == "download":
            args, expected = ["download", "127.0.0.1", port], f"bytes {NBYTES} end ok\n"
        else:
            args, expected = ["upload", "127.0.0.1", port, str(NBYTES)], f"sent {NBYTES} end ok\n"
        out = run_guest(args)
        assert out == expected, out
        elapsed = float(proc.stdout.readline())
    finally:
        proc.wait(TIMEOUT)
    return NBYTES / elapsed / 1e6


def on_host(host: Host, wasm: Path):
    def run(args: list[str]) -> str:
        out = bytearray()
        result = host.run(wasm, WasiConfig(args=["sockets_probe_p3", *args], stdout=out, network=POLICY))
        assert result.exit_code == 0, result
        return out.decode()

    return run


def on_wasmtime(cwasm: Path):
    def run(args: list[str]) -> str:
        proc = subprocess.run(wasmtime_cmd(cwasm, *args), capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc
        return proc.stdout

    return run


def hammer_elsewhere(port: int, total: int) -> float:
    """``hammer`` in a process of its own, so that the clients never wait for the host's GIL."""
    proc = subprocess.run([sys.executable, __file__, "--hammer", str(port), str(total)], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout)


def accepts_p3(start_server) -> float:
    """``start_server(port) -> (stdout lines iterator, finish())`` runs echo_server_p3 with
    --count CONNECTIONS; accepts per second under CLIENTS concurrent clients."""
    port = free_port()
    lines, finish = start_server(port)
    first = next(lines)
    assert first.startswith("listening on"), first
    rate = hammer_elsewhere(port, CONNECTIONS)
    rest = finish()
    assert f"served {CONNECTIONS}" in rest, rest
    return rate


def echo_server_on_host(host: Host, wasm: Path):
    def start(port: int):
        ready = threading.Event()
        out = bytearray()

        def stdout(data: bytes) -> None:
            out.extend(data)
            if b"\n" in out:
                ready.set()

        config = WasiConfig(args=["echo_server_p3", str(port), "--count", str(CONNECTIONS)], stdout=stdout, network=POLICY)
        runner = threading.Thread(target=host.run, args=(wasm, config), daemon=True)
        runner.start()
        assert ready.wait(TIMEOUT), out

        def finish() -> str:
            runner.join(TIMEOUT)
            return out.decode()

        return iter(out.decode().splitlines()), finish

    return start


def echo_server_on_wasmtime(cwasm: Path):
    def start(port: int):
        proc = subprocess.Popen(wasmtime_cmd(cwasm, str(port), "--count", str(CONNECTIONS)), stdout=subprocess.PIPE,
                                text=True, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        first = proc.stdout.readline()

        def finish() -> str:
            try:
                rest, _ = proc.communicate(timeout=TIMEOUT)
                return rest
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

        return iter([first]), finish

    return start


def main() -> None:
    probe, server = guests.build("sockets_probe_p3"), guests.build("echo_server_p3")
    probe_cwasm, server_cwasm = precompiled(probe), precompiled(server)
    host = Host(runtime="core")
    ours, theirs = on_host(host, probe), on_wasmtime(probe_cwasm)
    ours(["connect", "127.0.0.1", str(free_port())])  # warm up: the compiled-component cache
    print(f"== plain TCP over 127.0.0.1 through wasi:sockets@0.3.0, sockets_probe_p3 (componentize-py), "
          f"{NBYTES >> 20} MiB, best of {REPEAT} (MB/s)")
    print(f"{'':9} {'this host':>10} {'wasmtime CLI':>13} {'of CLI':>7}")
    met = True
    for direction in ("download", "upload"):
        a = b = 0.0
        for _ in range(REPEAT):  # interleaved, so that a busy moment of the machine hits both
            a = max(a, transfer(direction, ours))
            b = max(b, transfer(direction, theirs))
        met = met and a >= 0.5 * b
        print(f"{direction:9} {a:10.1f} {b:13.1f} {a / b:7.1%}")
    print(f"target: >= 50% of the CLI both ways: {'met' if met else 'MISSED'}")

    print(f"\n== accepts per second, {CLIENTS} concurrent CPython clients, {CONNECTIONS} connections (connect, echo 4 bytes, close)")
    p3_ours = accepts_p3(echo_server_on_host(host, server))
    p3_theirs = accepts_p3(echo_server_on_wasmtime(server_cwasm))
    bench_sockets.hammer = hammer_elsewhere  # the 0.2 guest under the same clients
    p2_ours = bench_sockets.accepts_on_host(host, guests.build("sockets_probe"))
    print(f"0.3 echo_server_p3, this host:   {p3_ours:8.0f} accepts/s ({p3_ours / p3_theirs:.0%} of the CLI)")
    print(f"0.3 echo_server_p3, wasmtime CLI: {p3_theirs:8.0f} accepts/s")
    print(f"0.2 sockets_probe echo-server, this host: {p2_ours:8.0f} accepts/s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--peer"]:
        peer(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["--hammer"]:
        print(hammer(int(sys.argv[2]), int(sys.argv[3])))
    else:
        main()
