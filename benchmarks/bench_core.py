"""Host runtime and WASI core: figures for issues 2 and 9, each runtime backend side by side.

Measured in one run, on this machine, on the core runtime (this host's own Canonical ABI on
wasmtime's core API), on the component runtime (wasmtime-py's component API), and against a
reference: a bare wasmtime core module calling a Python import that copies 64 KiB into its
linear memory with ``ctypes.memmove`` (the core API's ceiling for bytes from Python):
- the raw ``list<u8>`` crossing rate (a WAT guest pulling/pushing 64 KiB lists through a bare
  host function: the ceiling of wasmtime-py's dynamic component API),
- the same bytes through ``wasi:io`` streams (``input-stream.read`` and
  ``output-stream.check-write`` + ``write``), and their ratio to the raw rate,
- the cost of one host call (``wasi:clocks/monotonic-clock.now`` in a guest loop),
- the time to start a cached 18 MB componentize-py guest, in process and as a CLI process.

Run: python benchmarks/bench_core.py
"""

from __future__ import annotations

import ctypes
import statistics
import subprocess
import sys
import time

import wasmtime

from wasi_tls_host import Host, WasiConfig, guests
from wasi_tls_host.host import all_interfaces
from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.wasi.io import InputStream, Pollable, ReadyPollable

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


RUNTIMES = ("core", "component")
REFERENCE_WAT = """
(module
  (import "h" "pull" (func $pull (param i32 i32)))
  (import "h" "nop" (func $nop))
  (memory (export "memory") 4)
  (func (export "pull") (param $n i32) (param $count i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $count)))
      (call $pull (i32.const 0) (local.get $n))
      (local.set $count (i32.sub (local.get $count) (i32.const 1)))
      (br $next))))
  (func (export "nops") (param $count i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $count)))
      (call $nop)
      (local.set $count (i32.sub (local.get $count) (i32.const 1)))
      (br $next)))))
"""


def core_api_reference() -> tuple[float, float]:
    """(MB/s, us per empty call) of a bare core module whose Python import memmoves 64 KiB
    into linear memory: the wasmtime core API's ceiling, measured as issue 9 describes."""
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module(engine, REFERENCE_WAT)
    linker = wasmtime.Linker(engine)
    payload = bytes(CHUNK)
    memory: list[wasmtime.Memory] = []

    def pull(ptr: int, n: int) -> None:
        mem = memory[0]
        if ptr + n > mem.data_len(store):
            raise wasmtime.WasmtimeError("out of bounds")
        ctypes.memmove(ctypes.addressof(mem.data_ptr(store).contents) + ptr, payload, n)

    i32 = wasmtime.ValType.i32()
    linker.define_func("h", "pull", wasmtime.FuncType([i32, i32], []), pull)
    linker.define_func("h", "nop", wasmtime.FuncType([], []), lambda: None)
    instance = linker.instantiate(store, module)
    exports = instance.exports(store)
    memory.append(exports["memory"])
    run_pull, run_nops = exports["pull"], exports["nops"]

    def pulls() -> int:
        run_pull(store, CHUNK, COUNT)
        return CHUNK * COUNT

    rate = best_rate(pulls, CHUNK * COUNT)
    calls = 50_000
    start = time.perf_counter()
    run_nops(store, calls)
    return rate, (time.perf_counter() - start) / calls * 1e6


def crossing_figures(runtime: str) -> dict[str, float]:
    host = Host(interfaces=[*all_interfaces(), crossing], runtime=runtime)
    config = WasiConfig(stdin=lambda: ZeroStream(), stdout=None)
    # The component runtime moves ~20 MB/s: fewer rounds keep the run short.
    count = COUNT if runtime == "core" else COUNT // 10
    total = CHUNK * count
    with host.instantiate(guests.build("crossing"), config) as g:
        g.call("raw-pull", CHUNK, 2)  # warm up converters
        figures = {
            "raw-pull": best_rate(lambda: g.call("raw-pull", CHUNK, count), total),
            "raw-push": best_rate(lambda: g.call("raw-push", CHUNK, count), total),
            "stream-read": best_rate(lambda: g.call("stream-read", CHUNK, count), total),
            "stream-write": best_rate(lambda: g.call("stream-write", CHUNK, count), total),
        }
        calls = 100_000 if runtime == "core" else 20_000
        start = time.perf_counter()
        g.call("clock-calls", calls)
        figures["call-us"] = (time.perf_counter() - start) / calls * 1e6
    return figures


def start_figures(runtime: str, hello: object) -> tuple[float, float]:
    Host(runtime=runtime).load(hello)  # type: ignore[arg-type]  # the artifacts are on disk now
    starts = []
    for _ in range(7):
        start = time.perf_counter()
        fresh = Host(runtime=runtime)  # new engine: nothing in memory, artifacts come from the disk cache
        out = bytearray()
        result = fresh.run(hello, WasiConfig(args=["hello"], stdout=out))  # type: ignore[arg-type]
        starts.append((time.perf_counter() - start) * 1e3)
        assert result.exit_code == 0 and out.startswith(b"hello")
    host = Host(runtime=runtime)
    host.load(hello)  # type: ignore[arg-type]
    warm = []
    for _ in range(7):
        start = time.perf_counter()
        host.run(hello, WasiConfig(args=["hello"], stdout=bytearray()))  # type: ignore[arg-type]
        warm.append((time.perf_counter() - start) * 1e3)
    return statistics.median(starts), statistics.median(warm)


def main() -> None:
    figures = {runtime: crossing_figures(runtime) for runtime in RUNTIMES}
    ref_rate, ref_call = core_api_reference()
    core, comp = figures["core"], figures["component"]

    print("== list<u8> across the host boundary, 64 KiB chunks, best of 3 (MB/s)")
    print(f"{'':42} {'core':>9} {'component':>10}   reference (core API + memmove)")
    rows = [("raw crossing, host -> guest (pull)", "raw-pull"), ("stream read (input-stream.read)", "stream-read"),
            ("raw crossing, guest -> host (push)", "raw-push"), ("stream write (check-write + write)", "stream-write")]
    for label, key in rows:
        ref = f"{ref_rate:9.1f}" if key == "raw-pull" else ""
        print(f"{label:42} {core[key]:9.1f} {comp[key]:10.1f}   {ref}")
    print(f"{'host call overhead (monotonic-clock.now), us':42} {core['call-us']:9.2f} {comp['call-us']:10.2f}   "
          f"{ref_call:9.2f} (empty import through wasmtime-py's Func)")
    print(f"targets (core): crossing >= 2000 MB/s: {'met' if min(core['raw-pull'], core['raw-push']) >= 2000 else 'MISSED'}; "
          f"streams >= 1000 MB/s: {'met' if min(core['stream-read'], core['stream-write']) >= 1000 else 'MISSED'}; "
          f"call <= 3 us: {'met' if core['call-us'] <= 3 else 'MISSED'}")

    # Start-up of a cached 18 MB guest.
    hello = guests.build("hello")
    size_mb = hello.stat().st_size / 1e6
    starts = {runtime: start_figures(runtime, hello) for runtime in RUNTIMES}
    print(f"\n== start of a cached {size_mb:.1f} MB componentize-py guest (median of 7, ms)")
    print(f"{'':52} {'core':>7} {'component':>10}")
    print(f"{'new Host + load from disk cache + instantiate + run':52} {starts['core'][0]:7.1f} {starts['component'][0]:10.1f}"
          f"   (target < 100 ms: {'met' if starts['core'][0] < 100 else 'MISSED'})")
    print(f"{'same Host (component in memory) + instantiate + run':52} {starts['core'][1]:7.1f} {starts['component'][1]:10.1f}")
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
    print(f"whole CLI process (core runtime) `wasi-tls-host run hello.wasm`:    {statistics.median(cli):6.1f} ms "
          f"(of which `python -c 'import wasmtime'`: {statistics.median(python_floor):.1f} ms)")


if __name__ == "__main__":
    main()
