"""wasi:io (error, poll, streams) and the host-side stream and pollable abstractions.

Everything that produces or consumes bytes for a guest (stdio, sockets, files, TLS) is an
``InputStream`` or ``OutputStream`` here; everything a guest can wait on is a ``Pollable``.
Waiting happens in one place, ``block_until``: it asks each pollable whether it is ready,
otherwise collects the file descriptors and deadlines it waits on and sleeps in the kernel
(``select.poll``), so a waiting guest costs no CPU. Every wait also watches the store's
interrupt descriptor, so an embedder can always stop a guest that waits forever.
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
import threading
import time
from typing import Any, Callable, Iterable

from ..runtime.binding import Interface
from ..runtime.resources import HostResource
from ..runtime.scheduler import MAX_POLL_MS
from ..runtime.store import StoreState
from ..runtime.values import Trap, Variant, WitError

# ---------------------------------------------------------------------------------------
# Pollables and waiting


class Waits:
    """What a set of not-yet-ready pollables needs to sleep on."""

    __slots__ = ("readers", "writers", "deadline")

    def __init__(self) -> None:
        self.readers: set[int] = set()
        self.writers: set[int] = set()
        self.deadline: int | None = None  # time.monotonic_ns() value

    def read_fd(self, fd: int) -> None:
        self.readers.add(fd)

    def write_fd(self, fd: int) -> None:
        self.writers.add(fd)

    def until(self, deadline_ns: int) -> None:
        if self.deadline is None or deadline_ns < self.deadline:
            self.deadline = deadline_ns

    def soon(self) -> None:
        """Ask to be re-checked promptly (state may change without any fd event)."""
        self.until(time.monotonic_ns())


class Pollable(HostResource):
    """Something a guest can wait on. Subclasses override ``ready`` and ``add_waits``."""

    def ready(self) -> bool:
        raise NotImplementedError

    def add_waits(self, waits: Waits) -> None:
        raise NotImplementedError


class ReadyPollable(Pollable):
    def ready(self) -> bool:
        return True

    def add_waits(self, waits: Waits) -> None:
        pass


class DeadlinePollable(Pollable):
    def __init__(self, deadline_ns: int) -> None:
        self.deadline_ns = deadline_ns

    def ready(self) -> bool:
        return time.monotonic_ns() >= self.deadline_ns

    def add_waits(self, waits: Waits) -> None:
        waits.until(self.deadline_ns)


class FdPollable(Pollable):
    """Ready when a descriptor is readable (or writable)."""

    def __init__(self, fd: int, writable: bool = False) -> None:
        self.fd, self.writable = fd, writable

    def ready(self) -> bool:
        p = select.poll()
        p.register(self.fd, select.POLLOUT if self.writable else select.POLLIN)
        return bool(p.poll(0))

    def add_waits(self, waits: Waits) -> None:
        (waits.write_fd if self.writable else waits.read_fd)(self.fd)


class CallbackPollable(Pollable):
    """A pollable defined by two functions, for streams whose readiness is computed."""

    def __init__(self, ready: Callable[[], bool], add_waits: Callable[[Waits], None]) -> None:
        self._ready, self._add_waits = ready, add_waits

    def ready(self) -> bool:
        return self._ready()

    def add_waits(self, waits: Waits) -> None:
        self._add_waits(waits)


class Notifier:
    """A wakeup descriptor another thread can signal (an eventfd)."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.closed = False

    def notify(self) -> None:
        if not self.closed:
            try:
                os.eventfd_write(self.fd, 1)
            except OSError:
                pass

    def clear(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class Interruptor:
    """Per-store: lets the embedder (another thread, a signal, asyncio) stop any wait."""

    def __init__(self) -> None:
        self.notifier = Notifier()
        self.reason: str | None = None

    def interrupt(self, reason: str = "interrupted by the embedder") -> None:
        self.reason = reason
        self.notifier.notify()

    def wake(self) -> None:
        """Make a waiting guest look at its pollables again (their state changed without
        an fd event, e.g. a graceful stop), without ending anything."""
        self.notifier.notify()

    def check(self) -> None:
        if self.reason is not None:
            raise Trap(self.reason)

    def close(self) -> None:
        self.notifier.close()


_POLL_IN = select.POLLIN | select.POLLPRI
_POLL_OUT = select.POLLOUT


def block_until(cx: StoreState | None, pollables: list[Pollable]) -> list[int]:
    """Indices of the ready pollables, sleeping in the kernel until at least one is."""
    interruptor: Interruptor | None = getattr(cx.wasi, "interruptor", None) if cx else None
    while True:
        if interruptor is not None:
            interruptor.check()
        ready = [i for i, p in enumerate(pollables) if p.ready()]
        if ready:
            return ready
        waits = Waits()
        for p in pollables:
            p.add_waits(waits)
        if not waits.readers and not waits.writers and waits.deadline is None:
            raise Trap(f"poll would block forever: none of the {len(pollables)} pollables can become ready")
        poller = select.poll()
        for fd in waits.readers:
            poller.register(fd, _POLL_IN | (_POLL_OUT if fd in waits.writers else 0))
        for fd in waits.writers - waits.readers:
            poller.register(fd, _POLL_OUT)
        if interruptor is not None:
            poller.register(interruptor.notifier.fd, _POLL_IN)
        if waits.deadline is None:
            timeout_ms = None
        else:
            timeout_ms = max(0.0, (waits.deadline - time.monotonic_ns()) / 1e6)
            # poll() rounds down; sleeping a little long is better than spinning early. It
            # takes a C int: a later deadline is slept towards in steps of about 24 days.
            timeout_ms = min(int(timeout_ms) + (1 if timeout_ms % 1 else 0), MAX_POLL_MS)
        events = poller.poll(timeout_ms)
        if interruptor is not None and interruptor.reason is None and any(fd == interruptor.notifier.fd for fd, _ in events):
            interruptor.notifier.clear()  # a wake(): consumed here, or every poll would spin


def wait_for(cx: StoreState | None, pollable: Pollable) -> None:
    block_until(cx, [pollable])


# ---------------------------------------------------------------------------------------
# Errors and streams


class IoError(HostResource):
    """``wasi:io/error#error``: a message for people; never parsed by programs."""

    def __init__(self, message: str, code: str | None = None, domain: str | None = None) -> None:
        self.message = message
        # A WIT error-code that the interface family named by ``domain`` ("filesystem",
        # "sockets", "tls") reports through its own error-code function; other families'
        # functions answer none for it, since the enums differ.
        self.code = code
        self.domain = domain

    def __repr__(self) -> str:
        return f"IoError({self.message!r})"


class StreamClosed(WitError):
    def __init__(self) -> None:
        super().__init__(Variant("closed"))


class StreamFailed(WitError):
    def __init__(self, message: str, code: str | None = None, domain: str | None = None) -> None:
        self.error = IoError(message, code, domain)
        super().__init__(Variant("last-operation-failed", self.error))

    def __str__(self) -> str:
        return self.error.message


class InputStream(HostResource):
    """A host byte source. ``read`` never blocks: it returns b"" when nothing is there yet.

    It raises ``StreamClosed`` at the end and ``StreamFailed`` on errors; ``subscribe``
    returns a pollable that is ready once ``read`` would return data or fail.
    """

    def read(self, n: int) -> bytes:
        raise NotImplementedError

    def subscribe(self) -> Pollable:
        raise NotImplementedError

    def skip(self, n: int) -> int:
        return len(self.read(n))

    def read_into(self, n: int, fill: Any) -> Any:
        """``read``, for runtimes that let the stream write into the guest's buffer:
        ``fill(k)`` gives a writable view of k guest bytes and ``fill.done(count)`` is
        returned in place of the bytes. Streams that can read into a buffer (a socket's
        ``recv_into``) override this; the default is ``read``."""
        return self.read(n)

    def blocking_read(self, cx: StoreState | None, n: int, fill: Any = None) -> Any:
        """``read`` (``read_into`` when given ``fill``), waiting until something arrives."""
        while True:
            data = self.read(n) if fill is None else self.read_into(n, fill)
            if len(data) or n == 0:
                return data
            wait_for(cx, self.subscribe())


class OutputStream(HostResource):
    """A host byte sink with the wasi:io permit protocol.

    Subclasses implement ``_check_write`` (bytes acceptable now), ``_write`` (never more
    than that), ``_flush`` (start flushing) and ``subscribe``. The permit bookkeeping and the
    traps for writing past a permit live here, once.
    """

    # True when ``_write`` copies what it is given before returning (a socket buffer, the
    # TLS engine): it may then be handed a memoryview of guest memory that is only valid
    # during the call. Otherwise ``write`` makes bytes of such a view first.
    takes_views = False

    def __init__(self) -> None:
        self._permit = 0

    def _check_write(self) -> int:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        pass

    def subscribe(self) -> Pollable:
        raise NotImplementedError

    # the guest-facing operations
    def check_write(self) -> int:
        self._permit = self._check_write()
        return self._permit

    def write(self, data: bytes) -> None:
        if len(data) > self._permit:
            raise Trap(
                f"write of {len(data)} bytes exceeds the permit of {self._permit} bytes "
                "(call check-write first and write at most what it returns)"
            )
        self._permit -= len(data)
        if data:
            if not self.takes_views and isinstance(data, memoryview):
                data = bytes(data)
            self._write(data)

    def write_zeroes(self, n: int) -> None:
        if n > self._permit:
            self.write(b"\0" * (self._permit + 1))  # traps with the permit message
        self.write(bytes(n))

    def flush(self) -> None:
        self._permit = 0
        self._flush()

    def blocking_flush(self, cx: StoreState | None) -> None:
        self.flush()
        # Ready again means the flush completed (or the stream failed, which check reports).
        wait_for(cx, self.subscribe())
        self.check_write()

    def blocking_write_and_flush(self, cx: StoreState | None, data: bytes) -> None:
        if len(data) > 4096:
            raise Trap(f"blocking-write-and-flush takes at most 4096 bytes, got {len(data)}")
        view = memoryview(data)
        while view:
            permit = self.check_write()
            if permit == 0:
                wait_for(cx, self.subscribe())
                continue
            chunk, view = view[:permit], view[permit:]
            self.write(chunk)  # write() makes bytes of it unless the stream takes views
        self.blocking_flush(cx)

    def splice(self, src: InputStream, n: int) -> int:
        permit = self.check_write()
        want = min(permit, n)
        if want == 0:
            # A zero-length splice still reports a closed source, like read(0) does.
            src.read(0)
            return 0
        data = src.read(want)
        self.write(data)
        return len(data)

    def blocking_splice(self, cx: StoreState | None, src: InputStream, n: int) -> int:
        if n == 0:
            return self.splice(src, 0)
        while self.check_write() == 0:
            wait_for(cx, self.subscribe())
        wait_for(cx, src.subscribe())
        return self.splice(src, n)


# --- simple streams used by stdio and tests ---------------------------------------------


class BytesInput(InputStream):
    """Reads from a fixed byte string, then reports closed."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(bytes(data))

    def read(self, n: int) -> bytes:
        if not self._data and n >= 0:
            raise StreamClosed()
        chunk, self._data = self._data[:n], self._data[n:]
        return bytes(chunk)

    def subscribe(self) -> Pollable:
        return ReadyPollable()


class ClosedInput(BytesInput):
    def __init__(self) -> None:
        super().__init__(b"")


class SinkOutput(OutputStream):
    """Accepts everything at once and hands it to a callback (or discards it)."""

    capacity = 1 << 20

    def __init__(self, sink: Callable[[bytes], object] | None = None, takes_views: bool = False) -> None:
        """``takes_views``: ``sink`` is done with what it is given when it returns (it copies
        or writes it), so it may be given a view of guest memory."""
        super().__init__()
        self._sink = sink
        self.takes_views = takes_views

    def _check_write(self) -> int:
        return self.capacity

    def _write(self, data: bytes) -> None:
        if self._sink is not None:
            try:
                self._sink(data)
            except OSError as e:
                raise StreamFailed(f"write failed: {e.strerror or e}") from e

    def subscribe(self) -> Pollable:
        return ReadyPollable()


class FdOutput(SinkOutput):
    """Writes to a host descriptor (stdout, stderr, a pipe), completing each write.

    ``whole_lines``: write a line at a time, holding a partial line (even across flushes)
    until its newline, ``LINE_HOLD`` bytes, or the stream's end. For processes sharing one
    pipe (``--workers``): a guest's print arrives in pieces (componentize-py writes and
    flushes each argument and the newline apart), and pieces of two processes' lines
    would interleave; one write of a whole line up to PIPE_BUF does not.
    """

    LINE_HOLD = select.PIPE_BUF
    # A pipe holds 64 KiB by default: a guest writing megabytes then blocks once per 64 KiB
    # until the reader is scheduled again (measured: 1,049 context switches and 4-14 ms per
    # 1 MiB write on a loaded machine). A pipe this size (Linux's unprivileged maximum by
    # default) takes a large write in one go.
    PIPE_SIZE = 1 << 20

    def __init__(self, fd: int, whole_lines: bool = False) -> None:
        # Written at once (a view of guest memory needs no copy), unless lines are held.
        super().__init__(self._write_lines if whole_lines else self._write_all, takes_views=not whole_lines)
        self.fd = fd
        self._partial = bytearray()
        self._pipe_checked = False

    def _grow_pipe(self) -> None:
        """Enlarge the pipe ``fd`` is (once, at the first large write; best effort: a pipe
        stays as it is where the system refuses)."""
        self._pipe_checked = True
        try:
            if stat.S_ISFIFO(os.fstat(self.fd).st_mode) and fcntl.fcntl(self.fd, fcntl.F_GETPIPE_SZ) < self.PIPE_SIZE:
                fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, self.PIPE_SIZE)
        except OSError:
            pass  # EPERM over the user's pipe quota, or not a pipe after all

    def _write_lines(self, data: bytes) -> None:
        end = data.rfind(b"\n") + 1
        if not end:
            self._partial += data
            if len(self._partial) >= self.LINE_HOLD:
                self._write_partial()
            return
        if self._partial:
            self._partial += data[:end]
            self._write_partial()
        else:
            self._write_all(data[:end])
        self._partial += data[end:]

    def _write_partial(self) -> None:
        held, self._partial = bytes(self._partial), bytearray()
        self._write_all(held)

    def drop(self) -> None:
        if self._partial:  # the guest's last line had no newline: it still goes out
            try:
                self._write_partial()
            except (OSError, StreamClosed):
                pass
        super().drop()

    def _write_all(self, data: bytes) -> None:
        if not self._pipe_checked and len(data) > select.PIPE_BUF:
            self._grow_pipe()
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)
                continue
            except BrokenPipeError as e:
                raise StreamClosed() from e
            view = view[n:]


class PipeInput(InputStream):
    """An input fed by another thread (the host's stdin reader, an embedder's queue)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._eof = False
        self._error: str | None = None
        self._notifier = Notifier()

    def feed(self, data: bytes) -> None:
        with self._lock:
            self._buffer += data
        self._notifier.notify()

    def close_writer(self, error: str | None = None) -> None:
        with self._lock:
            self._eof = True
            self._error = error
        self._notifier.notify()

    def read(self, n: int) -> bytes:
        with self._lock:
            if self._buffer:
                chunk = bytes(self._buffer[:n])
                del self._buffer[:n]
                return chunk
            if self._error is not None:
                raise StreamFailed(self._error)
            if self._eof:
                raise StreamClosed()
            self._notifier.clear()
            return b""

    def _ready(self) -> bool:
        with self._lock:
            if self._buffer or self._eof:
                return True
            # About to be waited on: a notification for bytes already read must not wake
            # the wait (it would spin). Cleared under the lock, so a feed() after this check
            # notifies again.
            self._notifier.clear()
            return False

    def _waits(self, waits: Waits) -> None:
        waits.read_fd(self._notifier.fd)

    def subscribe(self) -> Pollable:
        return CallbackPollable(self._ready, self._waits)

    def drop(self) -> None:
        self._notifier.close()


def start_reader_thread(fileobj_fd: int) -> PipeInput:
    """Feed a PipeInput from a host descriptor on a daemon thread (stdin must not be made
    non-blocking: that would change it for the whole process and its parent shell)."""
    pipe = PipeInput()

    def pump() -> None:
        try:
            while True:
                data = os.read(fileobj_fd, 65536)
                if not data:
                    break
                pipe.feed(data)
            pipe.close_writer()
        except OSError as e:
            pipe.close_writer(f"stdin read failed: {e.strerror or e}")

    threading.Thread(target=pump, name="wasi-stdin", daemon=True).start()
    return pipe


# ---------------------------------------------------------------------------------------
# Interfaces

error_iface = Interface("wasi:io/error@0.2.8")
poll_iface = Interface("wasi:io/poll@0.2.8")
streams_iface = Interface("wasi:io/streams@0.2.8")

error_iface.resource("error", IoError)
poll_iface.resource("pollable", Pollable)
streams_iface.resource("input-stream", InputStream)
streams_iface.resource("output-stream", OutputStream)


@error_iface.func("[method]error.to-debug-string")
def error_to_debug_string(cx: StoreState, error: IoError) -> str:
    return error.message


@poll_iface.func("[method]pollable.ready")
def pollable_ready(cx: StoreState, pollable: Pollable) -> bool:
    return pollable.ready()


@poll_iface.func("[method]pollable.block")
def pollable_block(cx: StoreState, pollable: Pollable) -> None:
    wait_for(cx, pollable)


@poll_iface.func("poll")
def poll(cx: StoreState, pollables: list[Pollable]) -> list[int]:
    if not pollables:
        raise Trap("poll was given an empty list")
    if len(pollables) > 0xFFFF_FFFF:
        raise Trap("poll was given more than 2**32 pollables")
    return block_until(cx, pollables)


def _len(n: int) -> int:
    # Larger reads are answered with less (the WIT allows it): each byte of a list crosses
    # as a 32-byte value, and 256 KiB (8 MiB of values) keeps that in cache-friendly sizes.
    return min(n, 1 << 18)


@streams_iface.func("[method]input-stream.read", fills=True)
def input_stream_read(cx: StoreState, stream: InputStream, len: int, fill: Any = None) -> Any:
    if fill is not None:  # the core runtime: the stream may write straight into the guest
        return stream.read_into(_len(len), fill)
    return stream.read(_len(len))


@streams_iface.func("[method]input-stream.blocking-read", fills=True)
def input_stream_blocking_read(cx: StoreState, stream: InputStream, len: int, fill: Any = None) -> Any:
    # fill is given by the core runtime: the stream may write straight into the guest.
    return stream.blocking_read(cx, _len(len), fill)


@streams_iface.func("[method]input-stream.skip")
def input_stream_skip(cx: StoreState, stream: InputStream, len: int) -> int:
    return stream.skip(_len(len))


@streams_iface.func("[method]input-stream.blocking-skip")
def input_stream_blocking_skip(cx: StoreState, stream: InputStream, len: int) -> int:
    n = stream.skip(_len(len))
    while n == 0 and len:
        wait_for(cx, stream.subscribe())
        n = stream.skip(_len(len))
    return n


@streams_iface.func("[method]input-stream.subscribe")
def input_stream_subscribe(cx: StoreState, stream: InputStream) -> Pollable:
    return stream.subscribe()


@streams_iface.func("[method]output-stream.check-write")
def output_stream_check_write(cx: StoreState, stream: OutputStream) -> int:
    return stream.check_write()


@streams_iface.func("[method]output-stream.write", bytes_views=True)
def output_stream_write(cx: StoreState, stream: OutputStream, contents: bytes) -> None:
    stream.write(contents)


@streams_iface.func("[method]output-stream.blocking-write-and-flush", bytes_views=True)
def output_stream_blocking_write_and_flush(cx: StoreState, stream: OutputStream, contents: bytes) -> None:
    stream.blocking_write_and_flush(cx, contents)


@streams_iface.func("[method]output-stream.flush")
def output_stream_flush(cx: StoreState, stream: OutputStream) -> None:
    stream.flush()


@streams_iface.func("[method]output-stream.blocking-flush")
def output_stream_blocking_flush(cx: StoreState, stream: OutputStream) -> None:
    stream.blocking_flush(cx)


@streams_iface.func("[method]output-stream.subscribe")
def output_stream_subscribe(cx: StoreState, stream: OutputStream) -> Pollable:
    return stream.subscribe()


@streams_iface.func("[method]output-stream.write-zeroes")
def output_stream_write_zeroes(cx: StoreState, stream: OutputStream, len: int) -> None:
    stream.write_zeroes(len)


@streams_iface.func("[method]output-stream.blocking-write-zeroes-and-flush")
def output_stream_blocking_write_zeroes_and_flush(cx: StoreState, stream: OutputStream, len: int) -> None:
    if len > 4096:
        raise Trap(f"blocking-write-zeroes-and-flush takes at most 4096 bytes, got {len}")
    stream.blocking_write_and_flush(cx, bytes(len))


@streams_iface.func("[method]output-stream.splice")
def output_stream_splice(cx: StoreState, stream: OutputStream, src: InputStream, len: int) -> int:
    return stream.splice(src, _len(len))


@streams_iface.func("[method]output-stream.blocking-splice")
def output_stream_blocking_splice(cx: StoreState, stream: OutputStream, src: InputStream, len: int) -> int:
    return stream.blocking_splice(cx, src, _len(len))


INTERFACES: Iterable[Interface] = (error_iface, poll_iface, streams_iface)
