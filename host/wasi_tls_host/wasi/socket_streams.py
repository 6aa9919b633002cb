"""wasi:io streams over non-blocking OS sockets, shared by wasi:sockets and the TLS layer.

* ``SocketInput``: each ``read`` is one non-blocking ``recv``; ready when the kernel has
  data, end-of-stream or an error for us.
* ``SocketOutput``: writes go to a bounded host buffer that is pushed to the kernel at once
  and again whenever the stream is touched or polled; a flush completes when the kernel
  has taken every byte written before it. ``shutdown_write`` sends FIN after the buffer.
* ``SharedSocket``: one OS socket used by several host objects (a tcp-socket resource and
  its two streams); the descriptor is closed when the last user lets go, or when the store
  closes (``SocketRegistry``), so no descriptor outlives its guest.
* ``ConnectionRecord``: what an accepted connection did (peer, bytes each way, how it
  ended, and what layers above such as TLS add); one access-log line when it closes, on the
  ``wasi_tls_host.access`` logger.

Pollables hold the socket object, never a bare descriptor number: after a close the number
may be reused by an unrelated descriptor, so a closed socket reports "ready" instead.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import select
import socket
import struct
import termios
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .io import InputStream, OutputStream, Pollable, StreamClosed, StreamFailed, Waits

# errno -> wasi:sockets error-code, for the common cases; callers override where the spec
# maps an errno differently for one operation (e.g. EADDRNOTAVAIL in connect).
ERRNO_CODES: dict[int, str] = {
    errno.EACCES: "access-denied",
    errno.EPERM: "access-denied",
    errno.EADDRINUSE: "address-in-use",
    errno.EADDRNOTAVAIL: "address-not-bindable",
    errno.ECONNREFUSED: "connection-refused",
    errno.ECONNRESET: "connection-reset",
    errno.EPIPE: "connection-reset",
    errno.ECONNABORTED: "connection-aborted",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTUNREACH: "remote-unreachable",
    errno.EHOSTDOWN: "remote-unreachable",
    errno.ENETUNREACH: "remote-unreachable",
    errno.ENETDOWN: "remote-unreachable",
    errno.ENONET: "remote-unreachable",
    errno.ENETRESET: "remote-unreachable",
    errno.EINVAL: "invalid-argument",
    errno.EAFNOSUPPORT: "invalid-argument",
    errno.EMFILE: "new-socket-limit",
    errno.ENFILE: "new-socket-limit",
    errno.ENOMEM: "out-of-memory",
    errno.ENOBUFS: "out-of-memory",
    errno.EMSGSIZE: "datagram-too-large",
    errno.EOPNOTSUPP: "not-supported",
    errno.EAGAIN: "would-block",
    errno.EALREADY: "concurrency-conflict",
    errno.EISCONN: "invalid-state",
    errno.ENOTCONN: "invalid-state",
}


def error_code(e: OSError, overrides: dict[int, str] | None = None) -> str:
    code = e.errno or 0
    if overrides and code in overrides:
        return overrides[code]
    return ERRNO_CODES.get(code, "unknown")


access_log = logging.getLogger("wasi_tls_host.access")


@dataclass
class ConnectionRecord:
    """One accepted connection, logged as one grep-able ``key=value`` line when it closes."""

    peer: str
    accepted_ns: int = field(default_factory=time.monotonic_ns)
    bytes_in: int = 0
    bytes_out: int = 0
    end: str | None = None  # the first thing that ended it (peer-closed, connection-reset, ...)
    # Added by the layers above (TLS: sni, alpn, version, suite, client, handshake_ms, tls).
    fields: dict[str, str] = field(default_factory=dict)

    def note_end(self, how: str) -> None:
        if self.end is None:
            self.end = how

    def annotate(self, **fields: str) -> None:
        self.fields.update(fields)

    def handshake_done(self) -> None:
        self.fields["handshake_ms"] = f"{(time.monotonic_ns() - self.accepted_ns) / 1e6:.1f}"

    def line(self) -> str:
        def value(v: str) -> str:
            return json.dumps(v) if not v or any(c in v for c in ' "=') else v

        order = ("sni", "alpn", "version", "suite", "client", "handshake_ms", "tls")
        parts = [f"peer={self.peer}", *(f"{k}={value(self.fields.get(k, '-'))}" for k in order)]
        parts += [f"in={self.bytes_in}", f"out={self.bytes_out}",
                  f"ms={(time.monotonic_ns() - self.accepted_ns) / 1e6:.1f}", f"end={self.end or 'closed'}"]
        return " ".join(parts)


def poll_now(sock: socket.socket, events: int) -> int:
    """The socket's current poll events (0 if none), without waiting."""
    fd = sock.fileno()
    if fd < 0:
        return select.POLLNVAL
    poller = select.poll()
    poller.register(fd, events)
    ready = poller.poll(0)
    return ready[0][1] if ready else 0


class SocketRegistry:
    """Every OS socket a store opened; closing the store closes what is still open."""

    def __init__(self) -> None:
        # Open sockets only (each leaves at its close): counted on every new socket, read
        # from the embedder's thread (serve.py) while the guest's thread adds to it.
        self._live: set[SharedSocket] = set()
        self._lock = threading.Lock()
        # Graceful stop: listeners stop accepting (and close) at the guest's next look at
        # them; connections already accepted go on (see TcpSocket).
        self.draining = False
        # Set when the embedder ends the guest with connections open: they are logged as
        # cut by the host, whatever closes them next.
        self.cutting = False

    def add(self, shared: SharedSocket) -> None:
        shared.registry = self
        with self._lock:
            self._live.add(shared)

    def forget(self, shared: SharedSocket) -> None:
        with self._lock:
            self._live.discard(shared)

    def _snapshot(self) -> list[SharedSocket]:
        with self._lock:
            return list(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def stop_accepting(self) -> None:
        self.draining = True

    def open_connections(self) -> int:
        """Accepted connections not closed yet."""
        return sum(1 for s in self._snapshot() if s.record is not None and not s.closed)

    def listening(self) -> bool:
        return any(s.listening and not s.closed for s in self._snapshot())

    def close_all(self) -> None:
        for shared in self._snapshot():
            if shared.record is not None:
                shared.record.note_end("host-stopped")
            shared.close()


class SharedSocket:
    """An OS socket with a count of host objects using it; closed when the count is 0."""

    def __init__(self, sock: socket.socket, registry: SocketRegistry | None = None, record: ConnectionRecord | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._users = 0
        self.closed = False
        self.listening = False
        self.record = record  # accepted connections only
        self.registry: SocketRegistry | None = None
        if registry is not None:
            registry.add(self)

    def acquire(self) -> SharedSocket:
        self._users += 1
        return self

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()
            if self.registry is not None:
                self.registry.forget(self)
            if self.record is not None and self.registry is not None and self.registry.cutting:
                self.record.note_end("host-stopped")
            if self.record is not None and access_log.isEnabledFor(logging.INFO):
                access_log.info(self.record.line())


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
        self.shared = shared.acquire()
        self._ended = False  # end of stream seen, or the error already reported
        self._error: StreamFailed | None = None
        self._released = False

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
            data = self.shared.sock.recv(min(n, self.max_chunk))
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as e:
            raise self._receive_failed(e) from None
        if not data:
            self._ended = True
            if self.record is not None:
                self.record.note_end("peer-closed")
            raise StreamClosed()
        if self.record is not None:
            self.record.bytes_in += len(data)
        return data

    def _receive_failed(self, e: OSError) -> StreamFailed:
        """End the stream on a receive error (``read`` and ``read_into``), noting it in the record."""
        self._ended = True
        if self.record is not None:
            self.record.note_end(error_code(e))
        return StreamFailed(f"receive failed: {e.strerror or e}", error_code(e), "sockets")

    @property
    def record(self) -> ConnectionRecord | None:
        return self.shared.record

    def read_into(self, n: int, fill: Any) -> Any:
        """``read`` straight into the guest's buffer when the kernel has bytes queued (so the
        guest is never handed an allocation for nothing); otherwise ``read``."""
        if self._error is not None or self._ended or self.shared.closed or n == 0:
            return self.read(n)
        try:
            queued = struct.unpack("i", fcntl.ioctl(self.shared.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            queued = 0
        if queued <= 0:
            return self.read(n)  # nothing yet, the end, or an error: read() tells which
        view = fill(min(n, queued, self.max_chunk))
        try:
            got = self.shared.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            got = 0
        except OSError as e:
            raise self._receive_failed(e) from None
        if self.record is not None:
            self.record.bytes_in += got
        return fill.done(got)

    def _has_something(self) -> bool:
        if self._ended or self._error is not None:
            return True
        return bool(poll_now(self.shared.sock, select.POLLIN))

    def subscribe(self) -> Pollable:
        return SocketPollable(self.shared, False, self._has_something)

    def drop(self) -> None:
        if not self._released:
            self._released = True
            self.shared.release()


class SocketOutput(OutputStream):
    """The sending half of a connected stream socket, as a wasi:io output-stream."""

    takes_views = True  # _write appends to its own buffer

    capacity = 256 * 1024

    def __init__(self, shared: SharedSocket) -> None:
        super().__init__()
        self.shared = shared.acquire()
        self._buffer = bytearray()
        self._flushing = False
        self._error: StreamFailed | None = None
        self._closed = False  # shut down by the guest, or failed and reported
        self._fin_pending = False
        self._released = False

    # --- moving bytes to the kernel -------------------------------------------------
    def pump(self) -> None:
        """Give the kernel as much of the buffer as it takes now; never blocks."""
        sock = self.shared.sock
        while self._buffer and self._error is None:
            if self.shared.closed:
                self._fail("the socket is closed", "invalid-state")
                break
            try:
                sent = sock.send(self._buffer, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._fail(f"send failed: {e.strerror or e}", error_code(e))
                if self.shared.record is not None:
                    self.shared.record.note_end(error_code(e))
                break
            del self._buffer[:sent]
            if self.shared.record is not None:
                self.shared.record.bytes_out += sent
        if self._fin_pending and not self._buffer:
            self._fin_pending = False
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the peer is gone already: nothing left to tell it

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
        if not self._released:
            self._released = True
            self.pump()  # best effort: what the kernel takes now still reaches the peer
            self.shared.release()
