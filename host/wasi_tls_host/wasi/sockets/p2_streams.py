"""WASI 0.2's wasi:io streams over a connected TCP socket (``TcpConnection``), also what the
0.2 TLS layer reads ciphertext from and writes it to.

* ``SocketInput``: each ``read`` is one non-blocking ``recv``; ready when the kernel has
  data, end-of-stream or an error for us.
* ``SocketOutput``: writes go to a bounded host buffer that is pushed to the kernel at once
  and again whenever the stream is touched or polled; a flush completes when the kernel
  has taken every byte written before it. ``shutdown_write`` sends FIN after the buffer.

Pollables hold the socket object, never a bare descriptor number: after a close the number
may be reused by an unrelated descriptor, so a closed socket reports "ready" instead.
"""

from __future__ import annotations

import select
from typing import Any, Callable

from ..io import InputStream, OutputStream, Pollable, StreamClosed, StreamFailed, Waits
from .registry import ConnectionRecord, SharedSocket, error_code, poll_now
from .tcp import TcpConnection


class SocketPollable(Pollable):
    """Ready when ``is_ready()`` says so; otherwise waits for ``events`` on the socket."""

    def __init__(self, shared: SharedSocket, writable: bool, is_ready: Callable[[], bool]) -> None:
        self.shared, self.writable, self._is_ready = shared, writable, is_ready

    def ready(self) -> bool:
        return self.shared.closed or self._is_ready()

    def add_waits(self, waits: Waits) -> None:
        fd = self.shared.sock.fileno()
        if fd < 0:
            waits.soon()
        elif self.writable:
            waits.write_fd(fd)
        else:
            waits.read_fd(fd)


class SocketInput(InputStream):
    """The receiving half of a connected stream socket, as a wasi:io input-stream."""

    # One read never asks the kernel for more than this (the guest may ask for 64 MiB).
    max_chunk = 256 * 1024

    def __init__(self, shared: SharedSocket) -> None:
        self.conn = TcpConnection(shared)
        self.shared = shared
        self._ended = False  # end of stream seen, or the error already reported
        self._error: StreamFailed | None = None

    @property
    def record(self) -> ConnectionRecord | None:
        return self.conn.record

    def shutdown_read(self) -> None:
        """The guest shut the receive side down: the stream ends here, unread data is dropped."""
        self._ended = True

    def read(self, n: int) -> bytes:
        if self._error is not None:
            # Report a failure once; afterwards the stream is closed (wasi:io semantics).
            error, self._error = self._error, None
            self._ended = True
            try:
                raise error
            finally:
                del error  # kept in this frame, which its traceback holds: a reference cycle
        if self._ended or self.shared.closed:
            raise StreamClosed()
        if n == 0:
            return b""
        try:
            data = self.conn.recv(min(n, self.max_chunk))
        except BlockingIOError:
            return b""
        except OSError as e:
            raise self._receive_failed(e) from None
        if not data:
            self._ended = True
            raise StreamClosed()
        return data

    def _receive_failed(self, e: OSError) -> StreamFailed:
        """End the stream on a receive error (``read`` and ``read_into``)."""
        self._ended = True
        return StreamFailed(f"receive failed: {e.strerror or e}", error_code(e), "sockets")

    def read_into(self, n: int, fill: Any) -> Any:
        """``read`` straight into the guest's buffer when the kernel has bytes queued (so the
        guest is never handed an allocation for nothing); otherwise ``read``."""
        if self._error is not None or self._ended or self.shared.closed or n == 0:
            return self.read(n)
        queued = self.conn.queued()
        if queued <= 0:
            return self.read(n)  # nothing yet, the end, or an error: read() tells which
        view = fill(min(n, queued, self.max_chunk))
        try:
            got = self.conn.recv_into(view)
        except BlockingIOError:
            got = 0
        except OSError as e:
            raise self._receive_failed(e) from None
        return fill.done(got)

    def _has_something(self) -> bool:
        if self._ended or self._error is not None:
            return True
        return bool(poll_now(self.shared.sock, select.POLLIN))

    def subscribe(self) -> Pollable:
        return SocketPollable(self.shared, False, self._has_something)

    def drop(self) -> None:
        self.conn.release()


class SocketOutput(OutputStream):
    """The sending half of a connected stream socket, as a wasi:io output-stream."""

    takes_views = True  # _write appends to its own buffer

    capacity = 256 * 1024

    def __init__(self, shared: SharedSocket) -> None:
        super().__init__()
        self.conn = TcpConnection(shared)
        self.shared = shared
        self._buffer = bytearray()
        self._flushing = False
        self._error: StreamFailed | None = None
        self._closed = False  # shut down by the guest, or failed and reported
        self._fin_pending = False

    # --- moving bytes to the kernel -------------------------------------------------
    def pump(self) -> None:
        """Give the kernel as much of the buffer as it takes now; never blocks."""
        while self._buffer and self._error is None:
            if self.shared.closed:
                self._fail("the socket is closed", "invalid-state")
                break
            try:
                sent = self.conn.send(self._buffer)
            except BlockingIOError:
                break
            except OSError as e:
                self._fail(f"send failed: {e.strerror or e}", error_code(e))
                break
            del self._buffer[:sent]
        if self._fin_pending and not self._buffer:
            self._fin_pending = False
            self.conn.shutdown_write()

    def _fail(self, message: str, code: str) -> None:
        self._error = StreamFailed(message, code, "sockets")
        self._buffer.clear()
        self._fin_pending = False

    def _raise_if_done(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._closed = True
            try:
                raise error
            finally:
                del error  # kept in this frame, which its traceback holds: a reference cycle
        if self._closed:
            raise StreamClosed()

    def shutdown_write(self) -> None:
        """Send FIN after the bytes already written; later writes see a closed stream."""
        if self._closed:
            return
        self._closed = True
        self._fin_pending = True
        self.pump()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # --- OutputStream ------------------------------------------------------------------
    def _check_write(self) -> int:
        self.pump()
        self._raise_if_done()
        if self._flushing:
            if self._buffer:
                return 0
            self._flushing = False
        return self.capacity - len(self._buffer)

    def _write(self, data: bytes) -> None:
        self._raise_if_done()
        self._buffer += data
        self.pump()

    def _flush(self) -> None:
        self.pump()
        self._raise_if_done()
        self._flushing = bool(self._buffer)

    def _ready(self) -> bool:
        self.pump()
        if self._error is not None or self._closed:
            return True
        if self._flushing:
            return not self._buffer
        return len(self._buffer) < self.capacity

    def subscribe(self) -> Pollable:
        return SocketPollable(self.shared, True, self._ready)

    def drop(self) -> None:
        if not self.conn.released:
            self.pump()  # best effort: what the kernel takes now still reaches the peer
        self.conn.release()
