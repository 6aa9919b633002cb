"""Component Model streams over the host's byte engines: what WASI 0.3's
``read-via-stream``/``write-via-stream`` are made of.

Stdio (and anything else that is an ``io.InputStream``/``io.OutputStream``, the engines WASI
0.2's streams use) is moved by one host coroutine per stream on the store's scheduler:

* ``read_via_stream``: bytes from an ``InputStream`` go straight into the guest's read
  buffer, only when the guest reads (nothing is read ahead of it);
* ``write_via_stream``: what the guest writes is handed to an ``OutputStream`` with its
  permit protocol, one chunk at a time, so a slow sink holds the guest's writes back.

A pump waits on the engine's pollable through the scheduler (its descriptors and deadline),
never by spinning or on a thread of its own. Each reports how it ended through a
``future<result<_, E>>``. What a guest wrote before it returned or exited still reaches the
sink: ``finish_output`` lets the output pumps write what they hold before the store closes.
"""

from __future__ import annotations

from typing import Any, Callable

from ...runtime.scheduler import Event, Scheduler, readable, sleep_until, writable
from ...runtime.store import StoreState
from ...runtime.streams import Future, Stream, StreamClosed, StreamReader, new_future, new_stream
from ...runtime.values import Err
from ..io import InputStream, OutputStream, Pollable, StreamFailed, Waits
from ..io import StreamClosed as EndOfStream

# The most bytes one read of a guest's stream takes (a bigger write arrives in pieces).
CHUNK = 1 << 20

# Maps how an engine failed (EndOfStream: the sink is closed, e.g. a broken pipe;
# StreamFailed: anything else) to the interface's error-code value.
ErrorCodeOf = Callable[[Exception], Any]


class WaitsOnNothing(Exception):
    """A pollable that is not ready names nothing to wait for: it could never become ready."""


async def wait_ready(scheduler: Scheduler, pollable: Pollable, unless: Event | None = None) -> None:
    """Suspend until ``pollable`` (a WASI 0.2 engine's readiness) is ready, or ``unless`` is
    set."""
    while not pollable.ready():
        if unless is not None and unless.is_set:
            return
        waits = Waits()
        pollable.add_waits(waits)
        events: list[Any] = [readable(fd) for fd in waits.readers] + [writable(fd) for fd in waits.writers]
        if waits.deadline is not None:
            events.append(sleep_until(waits.deadline))
        if not events:
            raise WaitsOnNothing(f"{type(pollable).__name__} is not ready and names nothing to wait for")
        if unless is not None:
            events.append(unless)
        if len(events) == 1:
            await events[0]
            continue
        # Several things: one helper each, the first to fire wakes this one.
        fired = Event()

        async def on(event: Any) -> None:
            await event
            fired.set()

        helpers = [scheduler.spawn(on(e), "wait for a pollable") for e in events]
        try:
            await fired
        finally:
            for helper in helpers:
                helper.cancel()


# --- guest writes, host consumes ------------------------------------------------------------


class OutputPump:
    """One ``write-via-stream``: ``busy`` while it holds bytes the sink has not taken."""

    __slots__ = ("busy", "task")

    def __init__(self) -> None:
        self.busy = False
        self.task: Any = None


async def write_all(scheduler: Scheduler, sink: OutputStream, data: bytes) -> None:
    """Hand ``data`` to ``sink`` within its permits, waiting for room as needed."""
    offset, n = 0, len(data)
    while offset < n:
        permit = sink.check_write()
        if permit == 0:
            await wait_ready(scheduler, sink.subscribe())
            continue
        k = min(permit, n - offset)
        sink.write(data if k == n else data[offset:offset + k])
        offset += k
    sink.flush()


def write_via_stream(cx: StoreState, data: Stream, sink: OutputStream, error_code: ErrorCodeOf) -> Future:
    """Copy the guest's ``data`` stream into ``sink``; the future says how it ended: ok once
    the guest dropped its end and everything was written, else the error (the stream's
    readable end is then dropped, so the guest's next write sees DROPPED)."""
    future, result = new_future()
    reader = StreamReader(data, is_bytes=True)
    pump = OutputPump()
    pumps: set[OutputPump] = cx.wasi.output_pumps
    scheduler = cx.scheduler

    async def run() -> None:
        outcome: Any = None
        try:
            while (chunk := await reader.read(CHUNK)) is not None:
                pump.busy = True
                await write_all(scheduler, sink, chunk)
                pump.busy = False
        except (EndOfStream, StreamFailed, WaitsOnNothing) as e:
            outcome = Err(error_code(e))
        finally:
            pump.busy = False
            pumps.discard(pump)
            reader.close()
        result.write(outcome)

    pumps.add(pump)
    pump.task = scheduler.spawn(run(), "write-via-stream")
    return future


def finish_output(cx: StoreState) -> None:
    """Let every output pump hand the sink what the guest already wrote (the guest returned
    or exited; its streams may still be open). Waits through the scheduler, so the store's
    interrupt and timeout still end it; traps with the reason if they do."""
    pumps: set[OutputPump] = getattr(cx.wasi, "output_pumps", set())
    if not pumps:
        return
    cx.scheduler.wait_until(lambda: not any(p.busy for p in pumps),
                            "writing what the guest gave its output streams")


# --- host produces, guest reads -------------------------------------------------------------


def read_via_stream(cx: StoreState, source: InputStream, error_code: ErrorCodeOf) -> tuple[Stream, Future]:
    """A stream the guest reads ``source`` through, and a future that says how it ended:
    ok at the end of the input or when the guest dropped the stream, else the error."""
    stream, writer = new_stream()
    future, result = new_future()
    scheduler = cx.scheduler

    def produce(view: memoryview) -> int:
        try:
            data = source.read(len(view))
        except EndOfStream:
            return 0
        if not data:
            raise BlockingIOError
        view[:len(data)] = data
        return len(data)

    async def data_or_reader() -> None:
        # Waits for input, or for the reader to drop the stream (or read anew after a
        # cancelled read): a dropped stream must not wait for input nobody wants.
        writer.wake.clear()
        if not stream.dropped:
            await wait_ready(scheduler, source.subscribe(), unless=writer.wake)

    async def run() -> None:
        outcome: Any = None
        try:
            while await writer.fill(produce, data_or_reader):
                pass
        except StreamClosed:
            pass  # the guest dropped its end: nothing more is wanted
        except (StreamFailed, WaitsOnNothing) as e:
            outcome = Err(error_code(e))
        finally:
            writer.close()
        result.write(outcome)

    scheduler.spawn(run(), "read-via-stream")
    return stream, future


__all__ = ["CHUNK", "OutputPump", "finish_output", "read_via_stream", "wait_ready", "write_all", "write_via_stream"]
