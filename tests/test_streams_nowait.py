"""The host's non-waiting stream operations (``read_nowait``, ``write_nowait``,
``fill_nowait``) and the audit of values host writers hand to readers, on streams whose
both ends are the host's (the rendezvous is the same one a guest end meets)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from wasi_tls_host.runtime.binding import OUTGOING_VALUE_HOOKS
from wasi_tls_host.runtime.scheduler import Event, Scheduler
from wasi_tls_host.runtime.streams import StreamClosed, StreamReader, new_future, new_stream


def test_a_write_waits_for_a_posted_read_then_lands_in_it() -> None:
    wake = Event()
    stream, writer = new_stream(wake=wake)
    reader = StreamReader(stream, is_bytes=True)
    assert writer.write_nowait(b"early") == 0  # nobody reads yet: nothing is taken
    assert not writer.reader_waiting()
    arrived = Event()
    assert reader.read_nowait(8, arrived) == b""  # posts a read of up to 8 bytes
    assert wake.is_set and writer.reader_waiting()  # the writer's wake says so
    assert writer.write_nowait(b"0123456789") == 8  # what the posted read takes
    assert arrived.is_set
    assert reader.read_nowait(8, arrived) == b"01234567"
    assert writer.write_nowait(b"89") == 0  # taken: no read is posted until the next call
    assert reader.read_nowait(8, arrived) == b""
    assert writer.write_nowait(b"89") == 2
    writer.close()
    assert reader.read_nowait(8, arrived) == b"89"  # what came before the end...
    assert reader.read_nowait(8, arrived) is None  # ...then the end


def test_writes_accumulate_in_the_posted_read_until_taken() -> None:
    stream, writer = new_stream()
    reader = StreamReader(stream, is_bytes=True)
    assert reader.read_nowait(10) == b""
    assert writer.write_nowait(b"abc") == 3
    assert writer.write_nowait(b"defghijkl") == 7  # the same buffer, its room left
    assert writer.write_nowait(b"z") == 0  # full: the reader has not taken it yet
    assert reader.read_nowait(10) == b"abcdefghij"


def test_fill_nowait_produces_into_the_pending_read() -> None:
    stream, writer = new_stream()
    reader = StreamReader(stream, is_bytes=True)

    def produce(view: memoryview) -> int:
        view[:4] = b"tls!"
        return 4

    assert writer.fill_nowait(produce) == 0  # no read pending: produce is not called
    reader.read_nowait(100)
    assert writer.fill_nowait(lambda view: 0) == 0  # the producer had nothing
    assert writer.fill_nowait(produce) == 4
    assert reader.read_nowait(100) == b"tls!"


def test_a_dropped_reader_is_reported_to_the_writer() -> None:
    wake = Event()
    stream, writer = new_stream(wake=wake)
    reader = StreamReader(stream, is_bytes=True)
    reader.read_nowait(4)
    wake.clear()
    reader.close()
    assert wake.is_set
    with pytest.raises(StreamClosed, match="reader dropped"):
        writer.write_nowait(b"x")
    with pytest.raises(StreamClosed):
        writer.fill_nowait(lambda view: 1)


def test_the_async_read_is_the_same_read() -> None:
    scheduler = Scheduler()
    stream, writer = new_stream()
    reader = StreamReader(stream, is_bytes=True)
    got: list[Any] = []

    async def consume() -> None:
        while (chunk := await reader.read(3)) is not None:
            got.append(chunk)

    async def produce() -> None:
        await writer.write(b"abcdefg")
        writer.close()

    tasks = [scheduler.spawn(consume()), scheduler.spawn(produce())]
    scheduler.wait_until(lambda: all(t.done for t in tasks), "the test's tasks")
    assert [t.error for t in tasks] == [None, None]
    assert b"".join(got) == b"abcdefg" and max(map(len, got)) <= 3


def test_a_filler_that_found_nothing_holds_no_room_while_it_waits() -> None:
    """A socket's filler with no data waits for it without the room it made for a read
    (each idle TLS connection held 256 KiB that way)."""
    scheduler = Scheduler()
    stream, writer = new_stream()
    reader = StreamReader(stream, is_bytes=True)
    reader.read_nowait(1 << 20)  # a big read posted, as a connection's receive posts one
    data_ready = Event()
    offered: list[int] = []

    def produce(view: memoryview) -> int:
        offered.append(len(view))
        if not data_ready.is_set:
            raise BlockingIOError
        view[:2] = b"ok"
        return 2

    tracemalloc.start()
    try:
        assert writer.fill_nowait(lambda view: 0) == 0  # nothing now, without waiting
        task = scheduler.spawn(writer.fill(produce, lambda: data_ready))
        scheduler.run_ready()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert offered == [1 << 20] and not task.done
    assert held < 64 << 10, held
    data_ready.set()
    scheduler.wait_until(lambda: task.done, "the filler")
    assert task.error is None and task.result == 2
    assert reader.read_nowait(1 << 20) == b"ok"


def test_values_host_writers_hand_over_are_audited() -> None:
    seen: list[tuple[str, Any]] = []

    def hook(origin: str, value: Any) -> None:
        seen.append((origin, value))

    OUTGOING_VALUE_HOOKS.append(hook)
    try:
        stream, writer = new_stream(origin="test#bytes")
        reader = StreamReader(stream, is_bytes=True)
        reader.read_nowait(16)
        writer.write_nowait(b"written")
        assert reader.read_nowait(16) == b"written"
        reader.read_nowait(16)

        def produce(view: memoryview) -> int:
            view[:6] = b"filled"
            return 6

        writer.fill_nowait(produce)
        future, future_writer = new_future(origin="test#future")
        future_writer.write({"secret": b"value"})
    finally:
        OUTGOING_VALUE_HOOKS.remove(hook)
    assert seen == [("test#bytes", b"written"), ("test#bytes", b"filled"), ("test#future", {"secret": b"value"})]
