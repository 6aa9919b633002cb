"""The Component Model's async ABI in the core runtime, against a hand-written WAT guest
(``guest_examples/wat/async_probe.wat``) and a host interface of async functions, streams
and futures written as ordinary ``async def`` Python, as WASI 0.3 is.

Each export drives one mechanism end to end: a subtask and its SUBTASK event, a stream the
host writes into guest memory, a stream the guest writes and the host reads, a future the
host writes later, and the callback event loop.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from wasmtime import WasmtimeError

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.runtime.limits import GuestLimits
from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.runtime.scheduler import readable, sleep_until, yield_now
from wasi_tls_host.runtime.streams import Stream, StreamReader, new_future, new_stream

probe = Interface("wasi-tls-host:test/async-probe")
PATTERN = bytes(range(256))
SPAWNED: list = []


@probe.func("sleep-ms")
async def sleep_ms(cx, ms: int) -> int:
    await sleep_until(time.monotonic_ns() + ms * 1_000_000)
    return ms


@probe.func("produce")
def produce(cx, n: int) -> Stream:
    stream, writer = new_stream()

    async def feed() -> None:
        try:
            sent = 0
            while sent < n:
                chunk = PATTERN * (min(n - sent, 50_000) // 256 + 1)
                sent += await writer.write_some(chunk[:min(n - sent, 50_000)])
        finally:
            writer.close()

    SPAWNED.append(cx.scheduler.spawn(feed(), "produce"))
    return stream


@probe.func("consume")
async def consume(cx, data: Stream) -> int:
    reader = StreamReader(data)
    total = 0
    try:
        while (chunk := await reader.read(10_000)) is not None:
            total += sum(chunk)
    finally:
        reader.close()
    return total


@probe.func("consume-direct")
async def consume_direct(cx, data: Stream) -> int:
    """The same as consume, taking the bytes straight from guest memory (drain)."""
    reader = StreamReader(data)
    total = 0

    def take(view: memoryview) -> int:
        nonlocal total
        n = min(len(view), 7_000)  # less than offered: the guest's write completes partly
        total += sum(view[:n])
        return n

    try:
        while await reader.drain(take) is not None:
            pass
    finally:
        reader.close()
    return total


@probe.func("future-later")
def future_later(cx, v: int):
    future, writer = new_future()

    async def later() -> None:
        await yield_now()
        await sleep_until(time.monotonic_ns() + 2_000_000)
        writer.write(v + 1)

    cx.scheduler.spawn(later(), "future-later")
    return future


@pytest.fixture(scope="module")
def async_host() -> Host:
    return Host(interfaces=[probe], runtime="core")


@pytest.fixture
def guest(async_host: Host, guest_path):
    with async_host.instantiate(guest_path("async_probe")) as g:
        yield g


def test_async_import_through_a_subtask_and_a_waitable_set(guest) -> None:
    started = time.monotonic()
    assert guest.call("sleep", 30) == 30
    assert time.monotonic() - started >= 0.03


def test_callback_event_loop_delivers_the_subtask_event(guest) -> None:
    assert guest.call("cb-sleep", 20) == 20


@pytest.mark.parametrize("n", [0, 1, 255, 32768, 32769, 1_000_000])
def test_host_written_stream_reaches_guest_memory_intact(guest, n: int) -> None:
    assert guest.call("read-all", n) == n
    expected = sum((PATTERN * (n // 256 + 1))[:n]) if n <= 50_000 else None
    if expected is not None:
        assert guest.call("checksum", n) == expected


@pytest.mark.parametrize("n", [0, 1, 32768, 100_000, 1_000_000])
def test_guest_written_stream_reaches_the_host(guest, n: int) -> None:
    assert guest.call("write-all", n) == n  # the guest writes 1s: the sum is the count


@pytest.mark.parametrize("n", [0, 1, 7000, 32768, 100_000])
def test_host_takes_guest_bytes_in_place(guest, n: int) -> None:
    assert guest.call("write-all-direct", n) == n


def test_future_written_by_the_host_later(guest) -> None:
    assert guest.call("future-get", 41) == 42


def test_many_calls_leave_no_handles_behind(guest) -> None:
    for _ in range(20):
        assert guest.call("read-all", 1000) == 1000
        assert guest.call("future-get", 1) == 2
    assert [h for h in guest.core.handles if h is not None] == []
    assert guest.state.scheduler.pending == 0


def test_a_waiting_guest_uses_no_cpu(guest, no_gc) -> None:
    guest.call("sleep", 0)  # warm up
    cpu = time.thread_time()
    started = time.monotonic()
    assert guest.call("cb-sleep", 400) == 400
    elapsed, used = time.monotonic() - started, time.thread_time() - cpu
    assert 0.4 <= elapsed < 0.8
    assert used < 0.1, used  # a host polling in a loop would burn ~0.4 s


def test_timeout_stops_a_guest_waiting_on_the_host(async_host: Host, guest_path) -> None:
    started = time.monotonic()
    with async_host.instantiate(guest_path("async_probe"), WasiConfig(limits=GuestLimits(timeout=0.3))) as g:
        with pytest.raises(WasmtimeError, match=r"ran out of time"):
            g.call("sleep", 60_000)
    assert time.monotonic() - started < 10  # not the minute it asked for


def test_interrupt_from_another_thread_stops_a_waiting_guest(async_host: Host, guest_path) -> None:
    with async_host.instantiate(guest_path("async_probe")) as g:
        timer = threading.Timer(0.2, g.interrupt, args=("stopped by the test",))
        timer.start()
        try:
            with pytest.raises(WasmtimeError, match="stopped by the test"):
                g.call("cb-sleep", 60_000)
        finally:
            timer.cancel()


def test_an_error_result_of_a_started_host_call_is_not_logged_as_a_failure(caplog) -> None:
    """A trampoline's ``start(..., observed=True)`` takes the outcome itself (it lowers a
    WitError as the function's error result); only failures nobody looks at are logged."""
    from wasi_tls_host.runtime.scheduler import Scheduler
    from wasi_tls_host.runtime.values import WitError

    async def refuse() -> None:
        raise WitError("no-entry")

    scheduler = Scheduler()
    with caplog.at_level("ERROR", logger="wasi_tls_host.runtime"):
        started = scheduler.start(refuse(), "refuse", observed=True)
        assert started.done and isinstance(started.error, WitError)
        assert not caplog.records
        scheduler.spawn(refuse(), "background")
        scheduler.run_ready()
    assert [r.getMessage() for r in caplog.records] == ["host task background failed: WitError: no-entry"]


# The same guest against a producer that fills the reader's buffer in place (``fill``) from
# a source whose readiness is a descriptor that never becomes ready: after a buffer is
# filled exactly, the producer must wait for the reader's next read, not for its source.
filling = Interface("wasi-tls-host:test/async-probe")
for _name, _fn in probe.funcs.items():
    if _name != "produce":
        filling.func(_name)(_fn.impl)


@filling.func("produce")
def produce_by_filling(cx, n: int) -> Stream:
    stream, writer = new_stream()
    never_read, never_written = os.pipe()
    left = [n]

    def produce(view: memoryview) -> int:
        k = min(len(view), left[0])
        view[:k] = bytes(k)
        left[0] -= k
        return k

    async def feed() -> None:
        try:
            while await writer.fill(produce, lambda: readable(never_read)):
                pass
        finally:
            writer.close()
            os.close(never_read)
            os.close(never_written)

    cx.scheduler.spawn(feed(), "produce by filling")
    return stream


@pytest.mark.parametrize("n", [32768, 65536])
def test_a_filled_buffer_is_no_zero_length_read(guest_path, n: int) -> None:
    with Host(interfaces=[filling], runtime="core") as host, host.instantiate(guest_path("async_probe")) as g:
        timer = threading.Timer(30, g.interrupt, args=("the producer waited on its source instead of the reader",))
        timer.start()
        try:
            assert g.call("read-all", n) == n  # the guest reads 32 KiB at a time
        finally:
            timer.cancel()


# Host calls as the benchmark guest (``async_bench.wat``) makes them: async calls that finish
# at once, and ones whose coroutine finishes on its first resume, whose SUBTASK event the
# guest's callback takes (the callback's task then waits with only host work ready, which
# the event loop runs itself and goes on without suspending: the round trip's fast path).
calls = Interface("wasi-tls-host:bench/async")
LATER: list[int] = []
ON_CALL: list = []  # what the next host call does first (test_a_host_call_after_its_guest_closed_traps)


def _on_call() -> None:
    if ON_CALL:
        ON_CALL.pop()()


@calls.func("nop")
def call_nop(cx, x: int) -> int:
    _on_call()
    return x


@calls.func("nop-async")
async def call_nop_async(cx, x: int) -> int:
    _on_call()
    return x


@calls.func("later")
async def call_later(cx, x: int) -> int:
    _on_call()
    await yield_now()
    LATER.append(x)
    return x


@calls.func("later-wide")
async def call_later_wide(cx, x: int) -> int:
    await yield_now()
    LATER.append(x)
    return x


@calls.func("source")
def call_source(cx, total: int) -> Stream:
    raise AssertionError("not called by these tests")


@calls.func("sink")
async def call_sink(cx, data: Stream) -> int:
    raise AssertionError("not called by these tests")


@pytest.mark.parametrize("export", ["cb-calls", "cb-calls-wide", "event-calls", "ready-calls"])
def test_async_calls_that_finish_at_once_or_on_their_first_resume(guest_path, export: str) -> None:
    """The guest checks each call's status, event (SUBTASK, of that subtask) and result in
    memory, and traps on any other, and drops every subtask."""
    LATER.clear()
    with Host(interfaces=[calls], runtime="core") as host, host.instantiate(guest_path("async_bench")) as g:
        assert g.call(export, 200) == 200
        assert g.call(export, 3) == 3
    assert LATER == ([] if export == "ready-calls" else [*range(200, 0, -1), 3, 2, 1])


@pytest.mark.parametrize("export", ["sync-calls", "ready-calls", "cb-calls"])
def test_a_host_call_after_its_guest_closed_traps(guest_path, export: str) -> None:
    """A host function closes its own guest's component instance; the guest then calls the
    host again (a sync lower through the shared native entry; an async lower, or
    waitable.join, each with a native callback of its own): the call is refused with a trap
    that says why, never a call into freed code."""
    with Host(interfaces=[calls], runtime="core") as host, host.instantiate(guest_path("async_bench")) as g:
        g.call(export, 2)  # warm: every import used once
        assert g.core is not None
        ON_CALL.append(g.core.close)
        with pytest.raises(WasmtimeError, match="host function called after its instance was closed"):
            g.call(export, 3)
        assert not ON_CALL


def test_a_guest_closed_by_the_embedder_during_its_own_call_reports_the_trap(guest_path) -> None:
    """``GuestInstance.close`` from inside a host call (not only the core instance's): the
    call still ends with the trap that says why, not a lookup of the closed store's state."""
    with Host(interfaces=[calls], runtime="core") as host, host.instantiate(guest_path("async_bench")) as g:
        g.call("cb-calls", 2)
        ON_CALL.append(g.close)
        with pytest.raises(WasmtimeError, match="host function called after its instance was closed"):
            g.call("cb-calls", 3)
        assert not ON_CALL and g.closed


def test_a_closed_guest_goes_at_once_with_the_native_callbacks_it_left(guest_path, no_gc) -> None:
    """Closing keeps the native callbacks of the direct trampolines until wasmtime frees
    their functions (a call may still come while the store lives); they must not keep the
    store, nor the instance, alive: both go with the guest's last reference, no GC pass."""
    import weakref

    from wasi_tls_host.runtime.core import native

    with Host(interfaces=[calls], runtime="core") as host:
        g = host.instantiate(guest_path("async_bench"))
        assert g.call("cb-calls", 3) == 3 and g.call("ready-calls", 3) == 3
        assert g.core is not None
        envs = set(g.core._direct)
        assert envs  # the async lowers and i32 built-ins of this guest
        g.close()
        assert envs <= native.RETIRED.keys()
        store, instance = weakref.ref(g.store), weakref.ref(g.core)
        del g
        assert store() is None and instance() is None
        assert not envs & native.RETIRED.keys()


def test_a_guest_with_native_callbacks_of_its_own_never_closed_is_still_collected(guest_path) -> None:
    """The direct trampolines' callbacks are held by their instance alone while it is open:
    one its embedder forgot goes at a GC pass, store included, like any other."""
    import gc
    import weakref

    with Host(interfaces=[calls], runtime="core") as host:
        g = host.instantiate(guest_path("async_bench"))
        assert g.call("cb-calls", 3) == 3
        store = weakref.ref(g.store)
        del g
        gc.collect()
        assert store() is None


@pytest.mark.parametrize("value", [0, 3, 2**32 + 5, 2**47 - 8, 2**63 - 1])
def test_a_premade_word_argument_passes_its_whole_64_bit_value(value: int) -> None:
    """The callback loop's native calls take their addresses and counts as arguments made
    once (native.word_arg), to a function without argtypes: each must arrive as the full
    machine word (an address above 4 GiB included), as a plain int would not."""
    import ctypes

    from wasi_tls_host.runtime.core import native

    echo = ctypes.pythonapi["PyLong_FromVoidPtr"]  # a fresh function object: no argtypes
    echo.restype = ctypes.py_object
    assert echo(native.word_arg(value)) == value
    assert echo(native.word_arg(value)) == value  # the same argument object, used again
