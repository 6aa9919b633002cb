"""Component Model streams over the host's byte engines: what WASI 0.3's
``read-via-stream``/``write-via-stream`` are made of.

Stdio (and anything else that is an ``io.InputStream``/``io.OutputStream``, the engines WASI
0.2's streams use) is moved by one host coroutine per stream on the store's scheduler:

* ``read_via_stream``: bytes from an ``InputStream`` go straight into the guest's read
  buffer, only when the guest reads (nothing is read ahead of it);
* ``write_via_stream``: what the guest writes is handed to an ``OutputStream`` with its
  permit protocol, straight from the guest's buffer, so a slow sink holds the guest's
  writes back.

A pump waits on the engine's pollable through the scheduler (its descriptors and deadline),
never by spinning or on a thread of its own. Each reports how it ended through a
``future<result<_, E>>``. What a guest wrote before it returned or exited still reaches the
sink: ``finish_output`` lets the output pumps write what they hold before the store closes.
"""

from __future__ import annotations

from typing import Any, Callable

from ...runtime.scheduler import _Wait, any_of, readable, sleep_until, writable, yield_now
from ...runtime.store import StoreState
from ...runtime.streams import Future, Stream, StreamClosed, StreamReader, new_future, new_stream
from ...runtime.values import Err
from ..io import InputStream, OutputStream, Pollable, StreamFailed, Waits
from ..io import StreamClosed as EndOfStream

# The most bytes one read of a stream the host itself writes takes.
HOST_TO_HOST_CHUNK = 1 << 16

# Maps how an engine failed (EndOfStream: the sink is closed, e.g. a broken pipe;
# StreamFailed: anything else) to the interface's error-code value.
ErrorCodeOf = Callable[[Exception], Any]


class WaitsOnNothing(Exception):
    """A pollable that is not ready names nothing to wait for: it could never become ready."""


def pollable_wait(pollable: Pollable) -> _Wait:
    """One scheduler wait for what ``pollable`` (a WASI 0.2 engine's readiness) waits on:
    its descriptors and its deadline, whichever comes first."""
    if pollable.ready():
        return yield_now()
    waits = Waits()
    pollable.add_waits(waits)
    events: list[_Wait] = [readable(fd) for fd in waits.readers] + [writable(fd) for fd in waits.writers]
    if waits.deadline is not None:
        events.append(sleep_until(waits.deadline))
    if not events:
        raise WaitsOnNothing(f"{type(pollable).__name__} is not ready and names nothing to wait for")
    return events[0] if len(events) == 1 else any_of(*events)


async def wait_ready(pollable: Pollable) -> None:
    """Suspend until ``pollable`` is ready."""
    while not pollable.ready():
        await pollable_wait(pollable)


# --- guest writes, host consumes ------------------------------------------------------------


class OutputPump:
    """One ``write-via-stream``: busy while the guest has a write pending that the sink has
    not taken yet, or while a chunk read from a stream the host writes is being written."""

    __slots__ = ("stream", "task", "writing")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.task: Any = None
        self.writing = False

    @property
    def busy(self) -> bool:
        if self.writing:
            return True
        if self.stream.writer is not None:
            # The host writes this stream (stdin's, handed back): the pending buffer is this
            # pump's own read, which waits for input that may never come.
            return False
        # A draining reader posts no buffer: a pending one is the guest's write.
        pending = self.stream.pending_buffer
        return pending is not None and pending.remain() > 0


def write_via_stream(cx: StoreState, data: Stream, sink: OutputStream, error_code: ErrorCodeOf) -> Future:
    """Copy the guest's ``data`` stream into ``sink``; the future says how it ended: ok once
    the guest dropped its end and everything was written, else the error (the stream's
    readable end is then dropped, so the guest's next write sees DROPPED).

    The sink takes the bytes straight from the guest's buffer, within its write permits, and
    the guest's write completes with what it took: a full sink holds the guest's writes
    back, and bytes a failing sink did not take are not reported written."""
    future, result = new_future()
    reader = StreamReader(data, is_bytes=True)
    pump = OutputPump(data)
    pumps: set[OutputPump] = cx.wasi.output_pumps
    scheduler = cx.scheduler

    def consume(view: memoryview) -> int:
        permit = sink.check_write()
        if permit == 0:
            raise BlockingIOError
        k = min(permit, len(view))
        sink.write(view if k == len(view) else view[:k])
        sink.flush()
        return k

    async def write_all(chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            try:
                view = view[consume(view):]
            except BlockingIOError:
                await wait_ready(sink.subscribe())

    async def run() -> None:
        outcome: Any = None
        try:
            if data.writer is not None:
                # The host writes this stream too (e.g. stdin's, handed back): a host writer
                # waits for a reader's buffer, so this end offers one instead of draining.
                while (chunk := await reader.read(HOST_TO_HOST_CHUNK)) is not None:
                    pump.writing = True
                    try:
                        await write_all(chunk)
                    finally:
                        pump.writing = False
            else:
                while await reader.drain(consume, lambda: wait_ready(sink.subscribe())) is not None:
                    pass
        except (EndOfStream, StreamFailed, WaitsOnNothing) as e:
            outcome = Err(error_code(e))
        finally:
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

    async def run() -> None:
        outcome: Any = None
        try:
            # fill() also ends the wait when the reader drops the stream (or reads anew after a
            # cancelled read): a dropped stream must not wait for input nobody wants.
            while await writer.fill(produce, lambda: pollable_wait(source.subscribe())):
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


__all__ = ["OutputPump", "finish_output", "pollable_wait", "read_via_stream", "wait_ready", "write_via_stream"]
