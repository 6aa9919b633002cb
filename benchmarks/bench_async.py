"""The async ABI on the core runtime (issue 15): host calls and stream<u8> copies, each
beside a reference measured in the same run.

- a synchronous host call, an async call that finishes before returning (RETURNED), and
  an async call that finishes later (subtask, SUBTASK event, waitable-set.wait, drop): the
  round trip per call; the callback round trip again while the store also waits on an
  idle socket and a far timer (as a WASI 0.3 guest with sockets always does);
- the built-ins of a stream end's life without a copy: ``stream.new`` and the drops of its two
  ends (``stream.drop-readable``/``-writable``), per iteration;
- ``stream<u8>`` host->guest (the host fills the guest's read buffer in place, as
  ``tcp-socket.receive`` does with ``recv_into``) and guest->host (the host takes the
  bytes from the guest's write buffer in place, as ``send`` does), 64 KiB per copy,
  against ``ctypes.memmove`` of the same 64 KiB in this process (the copy's ceiling).

- real WASI 0.3 calls that finish at once, by a WAT guest (guest_examples/wat/fs_bench_p3.wat):
  ``descriptor.advise`` (borrow, u64, u64, enum -> result<_, error-code>) and
  ``descriptor.get-flags`` (borrow -> result<flags, error-code>), per call;
- a real WASI 0.3 call that suspends, by a WAT guest (``CLOCK_WAITS_WAT``): the round trip
  of ``monotonic-clock.wait-for(1 ns)``, whose timer the scheduler polls before the SUBTASK
  event reaches the guest's callback;
- a host coroutine's wait on a socket that becomes readable, with 0 and with 256 other
  sockets waited on that stay idle (a WASI 0.3 server's connections): the scheduler's
  poll per wait;
- with ``--lowers``: how the async lowers of the WASI 0.3 example guests are built (each
  parameter lifted by a mask, inline or by its converter; the result stored directly or by
  its converter), which builds those guests if they are not cached.

Run: python benchmarks/bench_async.py [--lowers]
"""

from __future__ import annotations

import collections
import ctypes
import socket
import sys
import tempfile
import time
from pathlib import Path

from wasi_tls_host import Host, WasiConfig, guests
from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.runtime.scheduler import Scheduler, readable, sleep_until, yield_now
from wasi_tls_host.runtime.streams import Stream, StreamReader, new_future, new_stream
from wasi_tls_host.wasi.filesystem import Preopen

CHUNK = 64 * 1024
TOTAL = 256 * 1024 * 1024
CALLS = 20_000
_PAYLOAD = bytes(range(256)) * (CHUNK // 256)

bench = Interface("wasi-tls-host:bench/async")


@bench.func("nop")
def nop(cx: object, x: int) -> int:
    return x


@bench.func("nop-async")
async def nop_async(cx: object, x: int) -> int:
    return x


@bench.func("later")
async def later(cx: object, x: int) -> int:
    await yield_now()
    return x


@bench.func("later-wide")
async def later_wide(cx: object, x: int) -> int:
    await yield_now()
    return x


def _fill(view: memoryview) -> int:
    n = len(view)
    view[:n] = _PAYLOAD[:n]
    return n


_STORES: list = []  # the store state of the first call of ``source`` (``waiting_idle``)


@bench.func("source")
def source(cx, total: int) -> Stream:
    if not _STORES:
        _STORES.append(cx)
    stream, writer = new_stream()

    async def feed() -> None:
        sent = 0
        try:
            while sent < total:
                sent += await writer.fill(_fill)
        finally:
            writer.close()

    cx.scheduler.spawn(feed(), "bench source")
    return stream


_SINK = bytearray(CHUNK)


@bench.func("sink")
async def sink(cx, data: Stream) -> int:
    """Takes the guest's bytes in place (``drain``) with one copy each, as ``send`` into a
    socket would make (here into a host buffer)."""
    reader = StreamReader(data)
    total = 0

    def take(view: memoryview) -> int:
        n = min(len(view), CHUNK)
        _SINK[:n] = view[:n]
        return n

    try:
        while (n := await reader.drain(take)) is not None:
            total += n
    finally:
        reader.close()
    return total


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_cpu(fn, repeat: int = 3) -> tuple[float, float]:
    """(wall, CPU) seconds, the best of each: on a machine shared with other work the
    process's CPU time varies far less than the wall clock."""
    walls, cpus = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - start)
    return min(walls), min(cpus)


ROUNDS = 7


def interleaved(g, exports: tuple[str, ...]) -> list[tuple[str, float, float]]:
    """(export, wall us, CPU us) per call of each export, the best of ``ROUNDS`` rounds that
    each run every export once in turn: this machine's speed drifts over seconds, and rows
    measured one after the other (best of 3 each) differed by up to 40% on unchanged code,
    where rows taken in turn meet the same slow and fast spells."""
    walls: dict[str, list[float]] = {e: [] for e in exports}
    cpus: dict[str, list[float]] = {e: [] for e in exports}
    for _ in range(ROUNDS):
        for export in exports:
            start, cpu = time.perf_counter(), time.process_time()
            g.call(export, CALLS)
            cpus[export].append(time.process_time() - cpu)
            walls[export].append(time.perf_counter() - start)
    return [(e, min(walls[e]) / CALLS * 1e6, min(cpus[e]) / CALLS * 1e6) for e in exports]


def waiting_idle(g, sock: socket.socket) -> None:
    """Make the guest's store wait on a socket that stays idle and a timer an hour away,
    as a WASI 0.3 guest with a listener or a connection open does."""
    g.call("read", 0)  # ``source`` keeps the store state
    scheduler = _STORES[0].scheduler

    async def idle_socket() -> None:
        await readable(sock.fileno())

    async def idle_timer() -> None:
        await sleep_until(time.monotonic_ns() + 3600 * 10**9)

    scheduler.spawn(idle_socket(), "idle socket")
    scheduler.spawn(idle_timer(), "idle timer")
    scheduler.run_ready()


def memmove_rate() -> float:
    src = ctypes.create_string_buffer(_PAYLOAD, CHUNK)
    dst = ctypes.create_string_buffer(CHUNK)
    n = TOTAL // CHUNK

    def copy() -> None:
        for _ in range(n):
            ctypes.memmove(dst, src, CHUNK)

    return TOTAL / best(copy) / 1e6


def wasi_calls(sync_cpu: float) -> None:
    """Real WASI 0.3 calls on a file, per call, beside the sync host call of the same run."""
    calls = CALLS // 2
    with tempfile.TemporaryDirectory(prefix="bench-async-") as tmp:
        Path(tmp, "data.bin").write_bytes(b"x" * 4096)
        with Host(runtime="core") as host, host.instantiate(guests.build("fs_bench_p3"), WasiConfig(preopens=[Preopen(tmp, "/")])) as g:
            print(f"WASI 0.3 async calls that finish at once, {calls} each (per call, best of 3):")
            for kind, label in ((0, "descriptor.advise(borrow, u64, u64, enum)"), (1, "descriptor.get-flags(borrow)")):
                label = label.ljust(41)
                wall, cpu = (t / calls * 1e6 for t in best_cpu(lambda k=kind: g.call("calls", k, calls)))
                print(f"  {label} {wall:7.2f} us wall {cpu:7.2f} us CPU  ({cpu / sync_cpu:.1f}x the sync host call's CPU)")


# A WASI 0.3 call that suspends: monotonic-clock.wait-for(1 ns) puts a timer on the store's
# scheduler; the guest's task waits (callback ABI), the scheduler polls, the timer's task
# finishes, and the SUBTASK event goes to the callback, which makes the next call. The path
# of every WASI 0.3 call that has to wait (a socket's receive waits on its descriptor the
# same way, with one poll of the kernel more).
CLOCK_WAITS_WAT = """
(component
  (import "wasi:clocks/monotonic-clock@0.3.0" (instance $clock
    (export "wait-for" (func async (param "how-long" u64)))))
  (core module $Libc (memory (export "memory") 1))
  (core instance $libc (instantiate $Libc))
  (alias core export $libc "memory" (core memory $mem))
  (core func $wait-for (canon lower (func $clock "wait-for") async (memory $mem)))
  (core func $ws-new (canon waitable-set.new))
  (core func $join (canon waitable.join))
  (core func $subtask-drop (canon subtask.drop))
  (core func $ret32 (canon task.return (result u32)))
  (core module $Main
    (import "h" "wait-for" (func $wait-for (param i64) (result i32)))
    (import "h" "ws-new" (func $ws-new (result i32)))
    (import "h" "join" (func $join (param i32 i32)))
    (import "h" "subtask-drop" (func $subtask-drop (param i32)))
    (import "h" "ret32" (func $ret32 (param i32)))
    (global $ws (mut i32) (i32.const 0))
    (global $left (mut i32) (i32.const 0))
    (global $calls (mut i32) (i32.const 0))
    (func $next (result i32)
      (local $status i32)
      (block $exit (loop $again
        (br_if $exit (i32.eqz (global.get $left)))
        (local.set $status (call $wait-for (i64.const 1)))
        (if (i32.ne (i32.and (local.get $status) (i32.const 0xf)) (i32.const 2))
          (then
            (call $join (i32.shr_u (local.get $status) (i32.const 4)) (global.get $ws))
            (return (i32.or (i32.const 2) (i32.shl (global.get $ws) (i32.const 4))))))
        (global.set $left (i32.sub (global.get $left) (i32.const 1)))
        (br $again)))
      (call $ret32 (global.get $calls))
      (i32.const 0))
    (func (export "waits") (param $n i32) (result i32)
      (if (i32.eqz (global.get $ws)) (then (global.set $ws (call $ws-new))))
      (global.set $left (local.get $n))
      (global.set $calls (local.get $n))
      (call $next))
    (func (export "waits-callback") (param $event i32) (param $p1 i32) (param $p2 i32) (result i32)
      (if (i32.ne (local.get $event) (i32.const 1)) (then unreachable))
      (if (i32.ne (local.get $p2) (i32.const 2)) (then unreachable))
      (call $subtask-drop (local.get $p1))
      (global.set $left (i32.sub (global.get $left) (i32.const 1)))
      (call $next)))
  (core instance $main (instantiate $Main (with "h" (instance
    (export "wait-for" (func $wait-for)) (export "ws-new" (func $ws-new)) (export "join" (func $join))
    (export "subtask-drop" (func $subtask-drop)) (export "ret32" (func $ret32))))))
  (func (export "waits") async (param "n" u32) (result u32)
    (canon lift (core func $main "waits") async (callback (core func $main "waits-callback")))))
"""


def suspending_calls(sync_cpu: float) -> None:
    """A real WASI 0.3 call that suspends (``CLOCK_WAITS_WAT``), per call, beside the sync host call."""
    from wasmtime import wat2wasm

    calls = CALLS // 2
    with Host(runtime="core") as host, host.instantiate(bytes(wat2wasm(CLOCK_WAITS_WAT)), WasiConfig()) as g:
        assert g.call("waits", 100) == 100
        wall, cpu = (t / calls * 1e6 for t in best_cpu(lambda: g.call("waits", calls)))
        print("WASI 0.3 async call that suspends, callback ABI, {calls} (per call, best of 3):".format(calls=calls))
        print(f"  monotonic-clock.wait-for(1 ns)          {wall:7.2f} us wall {cpu:7.2f} us CPU  ({cpu / sync_cpu:.1f}x the sync host call's CPU)")


def descriptor_waits(idle_count: int, cycles: int = CALLS // 2) -> tuple[float, float]:
    """(wall, CPU) per wait of a host coroutine on a socket made readable just before,
    while ``idle_count`` other sockets are waited on and stay idle: each wait is one
    blocking poll of the store's scheduler (Scheduler.wait_until), as a server's is."""
    scheduler = Scheduler()
    pairs = [socket.socketpair() for _ in range(idle_count + 1)]
    a, b = pairs[-1]

    async def idle(sock: socket.socket) -> None:
        await readable(sock.fileno())

    async def ping_pong(n: int) -> None:
        for _ in range(n):
            b.send(b"x")
            await readable(a.fileno())
            a.recv(1)

    try:
        for sock, _ in pairs[:-1]:
            scheduler.start(idle(sock))

        def run() -> None:
            task = scheduler.start(ping_pong(cycles))
            scheduler.wait_until(lambda: task.done, "the benchmark's ping-pong")

        wall, cpu = best_cpu(run)
        return wall / cycles * 1e6, cpu / cycles * 1e6
    finally:
        scheduler.close()
        for x, y in pairs:
            x.close()
            y.close()


def descriptor_report() -> None:
    print("a host coroutine's wait on a socket made readable (one blocking poll a wait; best of 3):")
    rows = [(n, *descriptor_waits(n)) for n in (0, 256)]
    ref_cpu = rows[0][2]
    for n, wall, cpu in rows:
        ratio = "" if n == 0 else f"  ({cpu / ref_cpu:.1f}x the CPU with none)"
        label = f"with {n} idle sockets waited on{' (reference)' if n == 0 else ''}".ljust(40)
        print(f"  {label} {wall:7.2f} us wall {cpu:7.2f} us CPU{ratio}")


P3_GUESTS = ("wasi_probe_p3", "sockets_probe_p3", "tls_server_p3", "fs_probe_p3")


def lowers_report() -> None:
    """How each async lower of the WASI 0.3 example guests is built (lower.make_async_trampoline
    marks its trampolines with ``lifting`` and ``storing``)."""
    from wasi_tls_host.runtime.core import instance as core_instance

    built: collections.Counter[tuple[str, str]] = collections.Counter()
    make = core_instance.make_async_trampoline

    def counting(inst, spec, m):  # type: ignore[no-untyped-def]
        tramp = make(inst, spec, m)
        if spec.fn.qualname.startswith("wasi:"):
            built[(tramp.lifting, tramp.storing)] += 1
        return tramp

    core_instance.make_async_trampoline = counting
    try:
        with Host(runtime="core") as host:
            for name in P3_GUESTS:
                with host.instantiate(guests.build(name), WasiConfig()):
                    pass
    finally:
        core_instance.make_async_trampoline = make
    print(f"async lowers of WASI imports in {', '.join(P3_GUESTS)}: {sum(built.values())}")
    print("  (arguments: masks = unsigned integers only; inline = integers, borrows of host resources and enums;\n"
          "   converter = at least one through its type's converter; spilled = loaded from memory by the converter)")
    for (lifting, storing), n in built.most_common():
        print(f"  {n:3d}  arguments: {lifting:9s}  result: {storing}")


def main() -> None:
    host = Host(interfaces=[bench], runtime="core")
    with host.instantiate(guests.build("async_bench")) as g:
        print(f"async host calls, {CALLS} each (per call, best of {ROUNDS} rounds taking the rows in turn; "
              "wall clock, and the process's CPU time):")
        rows = interleaved(g, ("sync-calls", "ready-calls", "cb-calls", "event-calls", "cb-calls-wide"))
        idle, other_end = socket.socketpair()
        waiting_idle(g, idle)
        rows.append(("cb-calls-idle", *(t / CALLS * 1e6 for t in best_cpu(lambda: g.call("cb-calls", CALLS)))))
        _STORES[0].scheduler.forget_fd(idle.fileno())
        _STORES[0].scheduler.run_ready()
        idle.close()
        other_end.close()
        _, sync, sync_cpu = rows[0]
        labels = {
            "sync-calls": "sync host call (reference)             ",
            "ready-calls": "async call, finished at once (RETURNED)",
            "cb-calls": "async call round trip, callback ABI    ",
            "event-calls": "the same, stackful (join, wait, drop)  ",
            "cb-calls-wide": "round trip, callback, u64 -> u64       ",
            "cb-calls-idle": "callback round trip, an idle socket and\n"
                             "  a timer waiting (a guest with sockets) ",
        }
        for export, wall, cpu in rows:
            ratio = "" if export == "sync-calls" else f"  ({wall / sync:.1f}x sync wall, {cpu / sync_cpu:.1f}x CPU)"
            print(f"  {labels[export]} {wall:7.2f} us wall {cpu:7.2f} us CPU{ratio}")
        print("  (the round trip: lower, subtask, join, SUBTASK event to the callback, drop; one async lowering for all\n"
              "   signatures, built per signature: u32 -> u32 and u64 -> u64 take the same path)")
        wall, cpu = (t / CALLS * 1e6 for t in best_cpu(lambda: g.call("drops", CALLS)))
        print(f"  stream.new, drop-readable, drop-writable  {wall:7.2f} us wall {cpu:7.2f} us CPU  "
              f"({cpu / sync_cpu:.1f}x the sync host call's CPU; three built-in calls)")
        ref = memmove_rate()
        down = TOTAL / best(lambda: g.call("read", TOTAL)) / 1e6
        up = TOTAL / best(lambda: g.call("write", TOTAL)) / 1e6
        print(f"stream<u8>, {TOTAL >> 20} MiB in 64 KiB copies (best of 3):")
        print(f"  ctypes.memmove, 64 KiB (reference)      {ref:8.0f} MB/s")
        print(f"  host -> guest (fill in place)           {down:8.0f} MB/s  ({down / ref:.0%} of memmove)")
        print(f"  guest -> host (taken in place)          {up:8.0f} MB/s  ({up / ref:.0%} of memmove)")
    host.close()
    wasi_calls(sync_cpu)
    suspending_calls(sync_cpu)
    stream_handle_calls(sync_cpu)
    descriptor_report()
    if "--lowers" in sys.argv[1:]:
        lowers_report()


# Host calls that return or take stream and future ends (guest_examples/wat/stream_handles.wat),
# in the shapes of wasi:sockets 0.3's and upstream wasi:tls's: open() as receive() ->
# tuple<stream<u8>, future<result<_, E>>>, sink(stream<u8>) as send -> future<result<_, E>>,
# each with what the guest does around it (drop the ends it got; stream.new before sink),
# the host functions as small as they can be.
stream_handles = Interface("wasi-tls-host:test/stream-handles")


@stream_handles.func("open")
def handles_open(cx: object) -> tuple[Stream, object]:
    stream, writer = new_stream(origin="bench")
    writer.close()
    future, _ = new_future(origin="bench")
    return stream, future


@stream_handles.func("sink")
def handles_sink(cx: object, data: Stream) -> object:
    StreamReader(data).close()
    return new_future(origin="bench")[0]


def stream_handle_calls(sync_cpu: float) -> None:
    """Host calls that return or take stream/future ends (stream_handles.wat), per call with
    the guest's built-ins around it, beside the sync host call of the same run."""
    calls = CALLS // 2
    with Host(interfaces=[stream_handles], runtime="core") as host, host.instantiate(guests.build("stream_handles")) as g:
        print(f"host calls returning or taking stream/future ends, {calls} each (per call with the guest's built-ins, best of 3):")
        for export, label in (("opens", "receive-like () -> tuple<stream, future>, 2 drops"),
                              ("sinks", "stream.new, send-like (stream) -> future, 2 drops")):
            assert g.call(export, 100) == 100
            wall, cpu = (t / calls * 1e6 for t in best_cpu(lambda e=export: g.call(e, calls)))
            print(f"  {label:44s} {wall:7.2f} us wall {cpu:7.2f} us CPU  ({cpu / sync_cpu:.1f}x the sync host call's CPU)")


if __name__ == "__main__":
    main()
