"""Streams and futures of the Component Model (CanonicalABI.md, "Stream State" and "Future
State"), and the host's ends of them.

``Stream`` and ``Future`` are the shared state of one stream or future: the spec's
``SharedStreamImpl``/``SharedFutureImpl`` rendezvous, where a read and a write meet and one
copies straight from the writer's buffer into the reader's. Guests reach them through
``stream.*``/``future.*`` built-ins (``runtime/core/concurrent.py``); the host through:

* ``StreamWriter`` (the host produces, e.g. ``tcp-socket.receive``): it waits for the
  reader's buffer and fills it in place, so bytes can go from ``recv_into`` straight into
  guest memory (``fill``), or writes Python values into it (``write``);
* ``StreamReader`` (the host consumes, e.g. ``tcp-socket.send``): it offers a buffer of its
  own, as the spec's host reader does, and gets what the writer copies into it;
* ``FutureWriter`` / ``FutureReader``: the same for one value.

A host task that serves several streams at once (a TLS connection moves ciphertext and
plaintext both ways) uses the ``*_nowait`` forms, which never wait: each end sets an
``Event`` the task shares (``wake``) when it can make progress, and the task waits on that
one event.

Every value a host writer hands to a reader is shown to the audit hooks
(``binding.OUTGOING_VALUE_HOOKS``, as host functions' results are), named by the writer's
``origin``: the key audit sees what crosses into guests through streams and futures too.

A host function returns a ``Stream``/``Future`` to hand the guest its readable end, and
receives one for each ``stream<T>``/``future<T>`` parameter (the readable end the guest
gave up). Element values use ``runtime.values`` shapes; ``stream<u8>`` moves ``bytes``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Callable

from .binding import OUTGOING_VALUE_HOOKS
from .scheduler import Cancelled, Event, _Wait, _Yield, any_of
from .values import Trap

MAX_BUFFER_LENGTH = 2**28 - 1


class _Unset:
    def __repr__(self) -> str:
        return "<element type not known yet>"


# A host-made stream or future learns its element type when it first crosses into a guest
# (``None`` is a real element type: ``stream`` and ``future`` without one).
UNSET: Any = _Unset()


class CopyResult(IntEnum):
    COMPLETED = 0
    DROPPED = 1
    CANCELLED = 2


class StreamClosed(Exception):
    """The other end of the stream or future is gone (the reader dropped it, for a writer)."""


# --- buffers -------------------------------------------------------------------------------------


class Buffer:
    """A region values are read from or written into (the spec's ``Buffer``): ``length``
    values in all, ``progress`` of them done. ``is_bytes`` buffers (``u8`` elements) also
    offer ``view(k)``/``advance(k)`` so a producer can fill them in place."""

    t: Any = None
    length: int = 0
    progress: int = 0
    is_bytes = False

    def remain(self) -> int:
        return self.length - self.progress

    def is_zero_length(self) -> bool:
        return self.length == 0


class ReadableBuffer(Buffer):
    def read(self, n: int) -> Any:
        raise NotImplementedError

    def view(self, k: int) -> memoryview:
        """The next ``k`` bytes to take (``is_bytes`` buffers only), until ``advance``."""
        raise NotImplementedError

    def advance(self, k: int) -> None:
        raise NotImplementedError


class WritableBuffer(Buffer):
    def write(self, values: Any) -> None:
        raise NotImplementedError

    def view(self, k: int) -> memoryview:
        """The next ``k`` bytes to fill (``is_bytes`` buffers only); valid until
        ``advance`` or any call into the guest."""
        raise NotImplementedError

    def drop_view(self) -> None:
        """The producer filled nothing into the last ``view``: what it held may go."""

    def advance(self, k: int) -> None:
        raise NotImplementedError


class HostReadableBuffer(ReadableBuffer):
    """Values a host writer offers (bytes for ``u8`` streams, else a list)."""

    def __init__(self, t: Any, values: Any) -> None:
        self.t = t
        self.values = values
        self.length = len(values)
        self.progress = 0
        self.is_bytes = isinstance(values, (bytes, bytearray, memoryview))

    def read(self, n: int) -> Any:
        start = self.progress
        self.progress += n
        return self.values[start:start + n]

    def view(self, k: int) -> memoryview:
        return memoryview(self.values)[self.progress:self.progress + k]

    def advance(self, k: int) -> None:
        self.progress += k


class HostWritableBuffer(WritableBuffer):
    """Room for up to ``length`` values a host reader takes. Bytes are kept as the chunks
    written (no copy); a producer filling in place (``view``) gets a bytearray."""

    def __init__(self, t: Any, length: int, is_bytes: bool) -> None:
        self.t = t
        self.length = length
        self.progress = 0
        self.is_bytes = is_bytes
        self.data: list[Any] = []
        self._filling = bytearray()

    def write(self, values: Any) -> None:
        if self.is_bytes:
            self.data.append(values)
        else:
            self.data.extend(values)
        self.progress += len(values)

    def view(self, k: int) -> memoryview:
        self._filling = bytearray(k)
        return memoryview(self._filling)

    def drop_view(self) -> None:
        # A filler waiting for data would otherwise hold a whole read's worth of room per
        # stream while idle (256 KiB per TLS connection).
        self._filling = bytearray()

    def advance(self, k: int) -> None:
        chunk, self._filling = self._filling, bytearray()
        self.data.append(chunk if k == len(chunk) else chunk[:k])
        self.progress += k

    def values(self) -> Any:
        if not self.is_bytes:
            return self.data
        if len(self.data) == 1 and isinstance(self.data[0], bytes):
            return self.data[0]
        return b"".join(self.data)


def copy(dst: WritableBuffer, src: ReadableBuffer, n: int) -> None:
    dst.write(src.read(n))


def _audit(origin: str, values: Any) -> None:
    for hook in OUTGOING_VALUE_HOOKS:
        hook(origin, values)


def _none_or_number(t: Any) -> bool:
    return t is None or getattr(t, "name", None) in ("u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64", "f32", "f64")


OnCopy = Callable[[Callable[[], None]], None]
OnCopyDone = Callable[[CopyResult], None]


# --- streams ---------------------------------------------------------------------------------------


class Stream:
    """One stream's shared state (the spec's ``SharedStreamImpl``), readable by a guest or
    the host, written by a guest (``stream.new``) or the host (``StreamWriter``)."""

    # One per stream a host call returns or takes (several per TLS connection): no __dict__.
    # Weak references: wasi:sockets keys what it knows of a stream by it (sockets/p3.py).
    __slots__ = ("t", "dropped", "writer", "reader", "pending_inst", "pending_buffer", "pending_on_copy",
                 "pending_on_copy_done", "__weakref__")

    def __init__(self, t: Any = UNSET) -> None:
        self.t = t  # the element type (UNSET until a host-made stream first crosses into a guest)
        self.dropped = False
        self.writer: StreamWriter | None = None  # the host's writer, told when a read is pending
        self.reader: StreamReader | None = None  # the host's draining reader, told when a write is
        self.pending_inst: Any = None  # (reset_pending, inline)
        self.pending_buffer: Buffer | None = None
        self.pending_on_copy: OnCopy | None = None
        self.pending_on_copy_done: OnCopyDone | None = None

    def reset_pending(self) -> None:
        self.set_pending(None, None, None, None)

    def set_pending(self, inst: Any, buffer: Buffer | None, on_copy: OnCopy | None, on_copy_done: OnCopyDone | None) -> None:
        self.pending_inst = inst
        self.pending_buffer = buffer
        self.pending_on_copy = on_copy
        self.pending_on_copy_done = on_copy_done

    def reset_and_notify_pending(self, result: CopyResult) -> None:
        on_copy_done = self.pending_on_copy_done
        self.reset_pending()
        if on_copy_done is not None:
            on_copy_done(result)

    def cancel(self) -> None:
        self.reset_and_notify_pending(CopyResult.CANCELLED)

    def drop(self) -> None:
        if not self.dropped:
            self.dropped = True
            if self.pending_buffer is not None:
                self.reset_and_notify_pending(CopyResult.DROPPED)
            for end in (self.writer, self.reader):
                if end is not None:
                    end.wake.set()

    def read(self, inst: Any, dst: WritableBuffer, on_copy: OnCopy, on_copy_done: OnCopyDone) -> None:
        if self.dropped:
            on_copy_done(CopyResult.DROPPED)
        elif self.pending_buffer is None:
            self.set_pending(inst, dst, on_copy, on_copy_done)
            if self.writer is not None:
                self.writer.wake.set()
        else:
            src = self.pending_buffer
            assert isinstance(src, ReadableBuffer)
            if inst is not None and inst is self.pending_inst and not _none_or_number(self.t):
                raise Trap("cannot read from and write to intra-component stream (of non-number values: the Canonical ABI does not allow it yet)")
            src_left = src.length - src.progress  # (src.remain(), inline: every guest copy)
            if src_left > 0:
                dst_left = dst.length - dst.progress
                if dst_left > 0:
                    copy(dst, src, min(dst_left, src_left))
                    assert self.pending_on_copy is not None
                    self.pending_on_copy(self.reset_pending)
                on_copy_done(CopyResult.COMPLETED)
            else:
                self.reset_and_notify_pending(CopyResult.COMPLETED)
                self.set_pending(inst, dst, on_copy, on_copy_done)

    def write(self, inst: Any, src: ReadableBuffer, on_copy: OnCopy, on_copy_done: OnCopyDone) -> None:
        if self.dropped:
            on_copy_done(CopyResult.DROPPED)
        elif self.pending_buffer is None:
            self.set_pending(inst, src, on_copy, on_copy_done)
            if self.reader is not None:
                self.reader.wake.set()
        else:
            dst = self.pending_buffer
            assert isinstance(dst, WritableBuffer)
            if inst is not None and inst is self.pending_inst and not _none_or_number(self.t):
                raise Trap("cannot read from and write to intra-component stream (of non-number values: the Canonical ABI does not allow it yet)")
            dst_left = dst.length - dst.progress  # (dst.remain(), inline: every guest copy)
            if dst_left > 0:
                src_left = src.length - src.progress
                if src_left > 0:
                    copy(dst, src, min(dst_left, src_left))
                    assert self.pending_on_copy is not None
                    self.pending_on_copy(self.reset_pending)
                on_copy_done(CopyResult.COMPLETED)
            elif src.is_zero_length() and dst.is_zero_length():
                on_copy_done(CopyResult.COMPLETED)
            else:
                self.reset_and_notify_pending(CopyResult.COMPLETED)
                self.set_pending(inst, src, on_copy, on_copy_done)


class StreamWriter:
    """The host's writable end of a ``Stream`` (``stream, writer = new_stream()``).

    It writes only when the reader has a read pending, straight into the reader's buffer
    (guest memory, for a guest reader): no copy is queued in between, so a slow reader
    holds the producer back (backpressure) instead of growing a buffer.
    """

    __slots__ = ("stream", "wake", "closed", "origin")

    def __init__(self, stream: Stream, wake: Event | None = None, origin: str = "stream") -> None:
        self.stream = stream
        # Set when the reader posts a read or drops its end (shared, with ``wake``, by a
        # task that waits for several things at once).
        self.wake = wake if wake is not None else Event()
        self.closed = False
        self.origin = origin  # what the audit hooks are told wrote the values
        stream.writer = self

    async def reader_buffer(self) -> WritableBuffer:
        """Wait until the reader has a read pending; its buffer. Raises ``StreamClosed``
        once the reader has dropped its end."""
        s = self.stream
        while True:
            if self.closed:
                raise StreamClosed("the host closed this stream")
            if s.dropped:
                raise StreamClosed("the reader dropped the stream")
            buf = s.pending_buffer
            if buf is not None and (buf.remain() > 0 or buf.is_zero_length()):
                return buf
            self.wake.clear()  # no read pending (or one filled, until its event is delivered)
            await self.wake

    def _copied(self) -> None:
        s = self.stream
        on_copy = s.pending_on_copy
        assert on_copy is not None
        on_copy(s.reset_pending)

    async def write(self, values: Any) -> None:
        """Write all of ``values`` (bytes for ``stream<u8>``, else a sequence), waiting
        for the reader as often as needed."""
        offset, n = 0, len(values)
        while offset < n:
            offset += await self.write_some(values[offset:] if offset else values)

    async def write_some(self, values: Any) -> int:
        """Write what the reader's pending buffer takes (at least one value); the count."""
        while True:
            await self.reader_buffer()
            k = self.write_nowait(values)
            if k:
                return k

    def reader_waiting(self) -> bool:
        """Whether the reader has a read pending with room (a write now would be taken)."""
        buf = self.stream.pending_buffer
        return (isinstance(buf, WritableBuffer) and buf.length - buf.progress > 0  # (buf.remain() > 0)
                and not self.closed and not self.stream.dropped)

    def _pending_room(self) -> WritableBuffer | None:
        """The reader's pending buffer if it has room; a zero-length read ("tell me when
        there is something") is answered now. Raises ``StreamClosed`` once either end is
        gone."""
        s = self.stream
        if self.closed:
            raise StreamClosed("the host closed this stream")
        if s.dropped:
            raise StreamClosed("the reader dropped the stream")
        buf = s.pending_buffer
        if not isinstance(buf, WritableBuffer):
            return None
        if buf.remain() == 0:
            if buf.is_zero_length():  # (a filled one waits for its event to be delivered)
                s.reset_and_notify_pending(CopyResult.COMPLETED)
            return None
        return buf

    def write_nowait(self, values: Any) -> int:
        """Copy as much of ``values`` as the reader's pending read takes now; 0 if no read
        is pending (``wake`` is set when one is). Raises ``StreamClosed`` once the reader
        has dropped its end. A host reader keeps what it takes as given (no copy): values
        handed over must not be changed afterwards."""
        buf = self._pending_room()
        if buf is None or not len(values):
            return 0
        k = min(buf.remain(), len(values))
        chunk = values[:k] if k < len(values) else values
        if OUTGOING_VALUE_HOOKS:
            _audit(self.origin, chunk)
        buf.write(chunk)
        self._copied()
        return k

    def fill_nowait(self, produce: Callable[[memoryview], int]) -> int:
        """``fill`` without waiting: ``produce(view)`` writes into the reader's pending
        buffer and returns how many bytes; 0 if no read is pending or the producer had
        nothing. Whatever ``produce`` raises propagates (nothing is copied)."""
        # self._pending_room(), inline for a pending read with room (a TLS transport's
        # every record); anything else goes through it.
        s = self.stream
        buf = s.pending_buffer
        room = buf.length - buf.progress if buf is not None and not self.closed and not s.dropped else 0
        if room <= 0 or not isinstance(buf, WritableBuffer):
            buf = self._pending_room()
            if buf is None:
                return 0
            room = buf.remain()
        if not buf.is_bytes:
            raise Trap("fill() needs a stream<u8> reader")
        view = buf.view(room)
        try:
            n = produce(view)
            if n > 0 and OUTGOING_VALUE_HOOKS:
                _audit(self.origin, bytes(view[:n]))
        finally:
            view.release()
        if n <= 0:
            buf.drop_view()
            return 0
        buf.advance(n)
        self._copied()
        return n

    async def fill(self, produce: Callable[[memoryview], int], ready: Callable[[], _Wait] | None = None) -> int:
        """Let ``produce(view)`` write bytes straight into the reader's buffer (e.g.
        ``sock.recv_into``) and return how many; 0 means the producer has reached its end
        (nothing is copied). ``produce`` may raise ``BlockingIOError``: then this waits for
        ``ready()`` (``readable(fd)``/``writable(fd)``) and tries again; a reader that drops
        the stream meanwhile ends the wait (``StreamClosed``), so a producer never holds its
        source for a reader that is gone. A zero-length read is answered once ``ready()``
        says data can come."""
        while True:
            buf = await self.reader_buffer()
            room = buf.remain()
            if room == 0:
                if ready is not None:
                    await self._until_ready(ready)
                if self.stream.pending_buffer is buf:
                    self.stream.reset_and_notify_pending(CopyResult.COMPLETED)
                continue
            if not buf.is_bytes:
                raise Trap("fill() needs a stream<u8> reader")
            view = buf.view(room)
            try:
                n = produce(view)
            except BlockingIOError:
                view.release()
                buf.drop_view()
                if ready is None:
                    raise
                await self._until_ready(ready)
                continue
            except BaseException:
                view.release()
                buf.drop_view()
                raise
            if n > 0 and OUTGOING_VALUE_HOOKS:
                _audit(self.origin, bytes(view[:n]))
            view.release()
            if n <= 0:
                buf.drop_view()
                return 0
            if self.stream.pending_buffer is not buf:
                raise Trap("the stream's reader changed while the host was filling its buffer")
            buf.advance(n)
            self._copied()
            return n

    async def _until_ready(self, ready: Callable[[], _Wait]) -> None:
        """Wait for ``ready()`` or for the reader to drop or renew its read (``wake``); a
        ``yield_now()`` (the source says it is ready already) is not raced."""
        self.wake.clear()
        wait = ready()
        await (wait if isinstance(wait, _Yield) else any_of(wait, self.wake))

    def close(self) -> None:
        """Drop the writable end: the reader sees the end of the stream (DROPPED) once it
        has read what was written."""
        if not self.closed:
            self.closed = True
            self.stream.writer = None
            self.stream.drop()


class _PostedRead:
    """A read a host reader keeps posted on a stream: the writer's copies land in ``buf``."""

    __slots__ = ("buf", "result", "wake")

    def __init__(self, buf: HostWritableBuffer, wake: Event | None) -> None:
        self.buf = buf
        self.result: CopyResult | None = None  # set when the read completed
        self.wake = wake

    def on_copy(self, reclaim: Callable[[], None]) -> None:
        if self.wake is not None:
            self.wake.set()

    def on_copy_done(self, result: CopyResult) -> None:
        self.result = result
        if self.wake is not None:
            self.wake.set()


class StreamReader:
    """The host's readable end of a ``Stream`` a guest (or the host) writes."""

    def __init__(self, stream: Stream, is_bytes: bool | None = None) -> None:
        self.stream = stream
        t = stream.t
        self.is_bytes = is_bytes if is_bytes is not None else getattr(t, "name", None) == "u8"
        self.closed = False
        self.ended = False
        self.wake = Event()  # set when a write is pending (drain)
        self._posted: _PostedRead | None = None  # the read read_nowait keeps posted

    async def drain(self, consume: Callable[[memoryview], int], ready: Callable[[], _Wait] | None = None) -> int | None:
        """Let ``consume(view)`` take bytes straight from the writer's pending buffer (guest
        memory, for a guest writer: e.g. ``sock.send``) and return how many it took; None at
        the end of the stream. ``consume`` may raise ``BlockingIOError``: then this waits for
        ``ready()`` (e.g. ``writable(fd)``) and tries again. The guest's write completes with
        what was taken, so a slow consumer holds the writer back. Use either ``drain`` or
        ``read`` on one reader, not both."""
        s = self.stream
        s.reader = self
        while True:
            if self.closed:
                raise StreamClosed("this stream reader is closed")
            buf = s.pending_buffer
            if buf is not None and (buf.remain() > 0 or buf.is_zero_length()):
                room = buf.remain()
                if room == 0:  # a zero-length write asks "may I write?": yes, once ready
                    if ready is not None:
                        await ready()
                    if s.pending_buffer is buf:
                        s.reset_and_notify_pending(CopyResult.COMPLETED)
                    continue
                if not buf.is_bytes:
                    raise Trap("drain() needs a stream<u8> writer")
                view = buf.view(room)
                try:
                    n = consume(view)
                except BlockingIOError:
                    view.release()
                    if ready is None:
                        raise
                    await ready()
                    continue
                except BaseException:
                    view.release()
                    raise
                view.release()
                if s.pending_buffer is not buf:
                    raise Trap("the stream's writer changed while the host was taking its bytes")
                buf.advance(n)
                on_copy = s.pending_on_copy
                assert on_copy is not None
                on_copy(s.reset_pending)
                return n
            if s.dropped and buf is None:
                self.ended = True
                return None
            self.wake.clear()  # no write pending (or one taken whole, until its event is delivered)
            await self.wake

    def _empty(self) -> Any:
        return b"" if self.is_bytes else []

    def read_nowait(self, max_count: int = 65536, wake: Event | None = None) -> Any:
        """What the writer has copied so far (bytes for ``stream<u8>``, else a list), an
        empty one if nothing yet, None at the end of the stream. Never waits: a read of up
        to ``max_count`` stays posted until something arrives, so the writer copies
        straight into it, and ``wake`` is set when it does (or the writer drops its end)."""
        if self.closed:
            raise StreamClosed("this stream reader is closed")
        while True:
            posted = self._posted
            if posted is None:
                if self.ended:
                    return None
                if not 0 < max_count <= MAX_BUFFER_LENGTH:
                    raise ValueError(f"max_count must be in 1..{MAX_BUFFER_LENGTH}")
                posted = self._posted = _PostedRead(HostWritableBuffer(self.stream.t, max_count, self.is_bytes), wake)
                self.stream.read(None, posted.buf, posted.on_copy, posted.on_copy_done)
            else:
                posted.wake = wake
            buf = posted.buf
            if buf.progress == 0 and posted.result is None:
                return self._empty()
            if posted.result is None and self.stream.pending_buffer is buf:
                self.stream.reset_pending()  # take the buffer back: nothing more lands in it
            self._posted = None
            if posted.result == CopyResult.DROPPED:
                self.ended = True
            if buf.progress:
                return buf.values()
            if self.ended:
                return None

    def _take_back(self) -> None:
        """Withdraw the posted read (what was copied into it is dropped)."""
        posted, self._posted = self._posted, None
        if posted is not None and posted.result is None and self.stream.pending_buffer is posted.buf:
            self.stream.reset_pending()

    async def read(self, max_count: int = 65536) -> Any:
        """Up to ``max_count`` values (bytes for ``stream<u8>``, else a list), waiting for
        the writer; None at the end of the stream (the writer dropped its end)."""
        if self.closed:
            raise StreamClosed("this stream reader is closed")
        if self.ended and self._posted is None:
            return None
        if not 0 < max_count <= MAX_BUFFER_LENGTH:
            raise ValueError(f"max_count must be in 1..{MAX_BUFFER_LENGTH}")
        arrived = Event()
        try:
            while True:
                arrived.clear()
                got = self.read_nowait(max_count, arrived)
                if got is None or len(got):
                    return got
                await arrived
        except Cancelled:
            self._take_back()
            raise

    async def read_all(self, limit: int | None = None) -> Any:
        """Everything until the end of the stream (at most ``limit`` values)."""
        parts: list[Any] = []
        total = 0
        while True:
            chunk = await self.read(65536 if limit is None else max(1, min(65536, limit - total + 1)))
            if chunk is None:
                break
            parts.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                raise ValueError(f"more than {limit} values")
        if self.is_bytes:
            return b"".join(parts)
        return [v for part in parts for v in part]

    def close(self) -> None:
        """Drop the readable end: the writer's next write sees DROPPED."""
        if not self.closed:
            self.closed = True
            if self.stream.reader is self:
                self.stream.reader = None
            self._take_back()
            self.stream.drop()


def new_stream(t: Any = UNSET, wake: Event | None = None, origin: str = "stream") -> tuple[Stream, StreamWriter]:
    """A stream the host writes: return the ``Stream`` to the guest, keep the writer
    (``wake`` and ``origin``: see ``StreamWriter``)."""
    stream = Stream(t)
    return stream, StreamWriter(stream, wake, origin)


# --- futures ----------------------------------------------------------------------------------------


class Future:
    """One future's shared state (the spec's ``SharedFutureImpl``)."""

    __slots__ = ("t", "dropped", "pending_inst", "pending_buffer", "pending_on_copy_done", "__weakref__")

    def __init__(self, t: Any = UNSET) -> None:
        self.t = t
        self.dropped = False
        self.pending_inst: Any = None  # (reset_pending, inline)
        self.pending_buffer: Buffer | None = None
        self.pending_on_copy_done: OnCopyDone | None = None

    def reset_pending(self) -> None:
        self.set_pending(None, None, None)

    def set_pending(self, inst: Any, buffer: Buffer | None, on_copy_done: OnCopyDone | None) -> None:
        self.pending_inst = inst
        self.pending_buffer = buffer
        self.pending_on_copy_done = on_copy_done

    def reset_and_notify_pending(self, result: CopyResult) -> None:
        on_copy_done = self.pending_on_copy_done
        self.reset_pending()
        if on_copy_done is not None:
            on_copy_done(result)

    def cancel(self) -> None:
        self.reset_and_notify_pending(CopyResult.CANCELLED)

    def drop(self) -> None:
        if not self.dropped:
            self.dropped = True
            if self.pending_buffer is not None:
                self.reset_and_notify_pending(CopyResult.DROPPED)

    def read(self, inst: Any, dst: WritableBuffer, on_copy_done: OnCopyDone) -> None:
        if self.dropped and self.pending_buffer is None:
            # The writer went away without a value (only the host can: a guest traps first).
            on_copy_done(CopyResult.DROPPED)
        elif self.pending_buffer is None:
            self.set_pending(inst, dst, on_copy_done)
        else:
            if inst is not None and inst is self.pending_inst and not _none_or_number(self.t):
                raise Trap("cannot read from and write to intra-component future (of non-number values: the Canonical ABI does not allow it yet)")
            src = self.pending_buffer
            assert isinstance(src, ReadableBuffer)
            copy(dst, src, 1)
            self.reset_and_notify_pending(CopyResult.COMPLETED)
            on_copy_done(CopyResult.COMPLETED)

    def write(self, inst: Any, src: ReadableBuffer, on_copy_done: OnCopyDone) -> None:
        if self.dropped:
            on_copy_done(CopyResult.DROPPED)
        elif self.pending_buffer is None:
            self.set_pending(inst, src, on_copy_done)
        else:
            if inst is not None and inst is self.pending_inst and not _none_or_number(self.t):
                raise Trap("cannot read from and write to intra-component future (of non-number values: the Canonical ABI does not allow it yet)")
            dst = self.pending_buffer
            assert isinstance(dst, WritableBuffer)
            copy(dst, src, 1)
            self.reset_and_notify_pending(CopyResult.COMPLETED)
            on_copy_done(CopyResult.COMPLETED)

    def reader(self) -> FutureReader:
        return FutureReader(self)


class FutureWriter:
    """The host's writable end of a ``Future``: ``write(value)`` once, now or later."""

    __slots__ = ("future", "written", "reader_gone", "origin")

    def __init__(self, future: Future, origin: str = "future") -> None:
        self.future = future
        self.written = False
        self.reader_gone = False
        self.origin = origin  # what the audit hooks are told wrote the value

    def write(self, value: Any) -> bool:
        """Deliver ``value`` (at once if the reader is waiting, else when it reads). False
        if the reader has dropped its end (the value is discarded)."""
        if self.written:
            raise Trap("a future is written once")
        self.written = True
        if OUTGOING_VALUE_HOOKS:
            _audit(self.origin, value)
        self.future.write(None, HostReadableBuffer(self.future.t, [value]), self._on_copy_done)
        return not self.reader_gone

    def _on_copy_done(self, result: CopyResult) -> None:
        if result == CopyResult.DROPPED:
            self.reader_gone = True

    def close(self) -> None:
        """Give up without a value (only when the guest is going away: a guest reader would
        see its read end DROPPED)."""
        if not self.written:
            self.written = True
            self.future.drop()


class FutureReader:
    """The host's readable end of a ``Future`` a guest (or the host) writes."""

    def __init__(self, future: Future) -> None:
        self.future = future
        self.closed = False

    async def read(self) -> Any:
        """The value; raises ``StreamClosed`` if the writer went away without one."""
        buf = HostWritableBuffer(self.future.t, 1, False)
        done = Event()
        result: list[CopyResult] = []

        def on_copy_done(r: CopyResult) -> None:
            result.append(r)
            done.set()

        self.future.read(None, buf, on_copy_done)
        try:
            await done
        except Cancelled:
            if not done.is_set and self.future.pending_buffer is buf:
                self.future.reset_pending()
            raise
        if result[0] != CopyResult.COMPLETED:
            raise StreamClosed("the future's writer went away without a value")
        return buf.values()[0]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.future.drop()


def new_future(t: Any = UNSET, origin: str = "future") -> tuple[Future, FutureWriter]:
    """A future the host writes: return the ``Future`` to the guest, keep the writer."""
    future = Future(t)
    return future, FutureWriter(future, origin)


__all__ = [
    "Buffer", "CopyResult", "Future", "FutureReader", "FutureWriter", "HostReadableBuffer", "HostWritableBuffer",
    "ReadableBuffer", "Stream", "StreamClosed", "StreamReader", "StreamWriter", "UNSET", "WritableBuffer",
    "new_future", "new_stream",
]
