"""Host runtime and WASI core: figures for issue 2.

Measured in one run, on this machine:
- the raw ``list<u8>`` crossing rate (a WAT guest pulling/pushing 64 KiB lists through a bare
  host function: the ceiling of wasmtime-py's dynamic component API),
- the same bytes through ``wasi:io`` streams (``input-stream.read`` and
  ``output-stream.check-write`` + ``write``), and their ratio to the raw rate,
- the cost of one host call (``wasi:clocks/monotonic-clock.now`` in a guest loop),
- the time to start a cached 18 MB componentize-py guest, in process and as a CLI process.

Run: python benchmarks/bench_core.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from wasi_tls_host import Host, WasiConfig, guests
from wasi_tls_host.host import all_interfaces
from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.wasi.io import InputStream, Pollable, ReadyPollable, SinkOutput

CHUNK = 64 * 1024
COUNT = 400  # 26 MB per measurement

crossing = Interface("wasi-tls-host:bench/crossing")
_PAYLOAD = bytes(CHUNK)


@crossing.func("pull")
def pull(cx: object, n: int) -> bytes:
    return _PAYLOAD if n == CHUNK else bytes(n)


@crossing.func("push")
def push(cx: object, data: bytes) -> None:
    pass


class ZeroStream(InputStream):
    """An endless source that is always ready (the stream path's own overhead only)."""

    def read(self, n: int) -> bytes:
        return _PAYLOAD if n == CHUNK else bytes(n)

    def subscribe(self) -> Pollable:
        return ReadyPollable()


def best_rate(call, nbytes: int, repeat: int = 3) -> float:
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        moved = call()
        elapsed = time.perf_counter() - start
        assert moved == nbytes, (moved, nbytes)
        rates.append(nbytes / elapsed / 1e6)
    return max(rates)


def main() -> None:
    host = Host(interfaces=[*all_interfaces(), crossing])
    config = WasiConfig(stdin=lambda: ZeroStream(), stdout=None)
    total = CHUNK * COUNT
    with host.instantiate(guests.build("crossing"), config) as g:
        g.call("raw-pull", CHUNK, 2)  # warm up converters
        raw_pull = best_rate(lambda: g.call("raw-pull", CHUNK, COUNT), total)
        raw_push = best_rate(lambda: g.call("raw-push", CHUNK, COUNT), total)
        stream_read = best_rate(lambda: g.call("stream-read", CHUNK, COUNT), total)
        stream_write = best_rate(lambda: g.call("stream-write", CHUNK, COUNT), total)
        calls = 100_000
        start = time.perf_counter()
        g.call("clock-calls", calls)
        per_call_us = (time.perf_counter() - start) / calls * 1e6

    print("== wasi:io streams vs raw list<u8> crossing (64 KiB chunks, best of 3)")
    print(f"raw crossing, host -> guest (pull):     {raw_pull:7.1f} MB/s")
    print(f"stream read,  host -> guest:            {stream_read:7.1f} MB/s  ({stream_read / raw_pull:5.1%} of raw)")
    print(f"raw crossing, guest -> host (push):     {raw_push:7.1f} MB/s")
    print(f"stream write, guest -> host:            {stream_write:7.1f} MB/s  ({stream_write / raw_push:5.1%} of raw)")
    print(f"host call overhead (monotonic-clock.now): {per_call_us:5.2f} us per call")

    # Start-up of a cached 18 MB guest.
    hello = guests.build("hello")
    size_mb = hello.stat().st_size / 1e6
    Host().load(hello)  # make sure the compiled artifact is cached on disk
    starts = []
    for _ in range(7):
        start = time.perf_counter()
        fresh = Host()  # new engine: nothing in memory, artifact comes from the disk cache
        out = bytearray()
        result = fresh.run(hello, WasiConfig(args=["hello"], stdout=out))
        starts.append((time.perf_counter() - start) * 1e3)
        assert result.exit_code == 0 and out.startswith(b"hello")
    warm = []
    for _ in range(7):
        start = time.perf_counter()
        host.run(hello, WasiConfig(args=["hello"], stdout=bytearray()))
        warm.append((time.perf_counter() - start) * 1e3)
    cli = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", "run", str(hello)], check=True, capture_output=True)
        cli.append((time.perf_counter() - start) * 1e3)
    python_floor = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import wasmtime"], check=True)
        python_floor.append((time.perf_counter() - start) * 1e3)
    print(f"\n== start of a cached {size_mb:.1f} MB componentize-py guest (median)")
    print(f"new Host + load from disk cache + instantiate + run: {statistics.median(starts):6.1f} ms")
    print(f"same Host (component in memory) + instantiate + run: {statistics.median(warm):6.1f} ms")
    print(f"whole CLI process `wasi-tls-host run hello.wasm`:    {statistics.median(cli):6.1f} ms "
          f"(of which `python -c 'import wasmtime'`: {statistics.median(python_floor):.1f} ms)")


if __name__ == "__main__":
    main()
