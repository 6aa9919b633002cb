"""wasi:sockets 0.3 (types, ip-name-lookup) over the engine.

The async functions (TCP ``connect``, UDP ``send``/``receive``, ``resolve-addresses``) are
coroutines on the store's scheduler. TCP data moves through host tasks, one per direction:

* ``receive``: ``StreamWriter.fill(recv_into, readable)`` puts bytes straight from the
  kernel into the guest's read buffer; nothing is read before the guest asks. The stream
  ends at the peer's FIN (future: ok) or a failure (future: the error); a guest dropping
  the stream shuts the receive side down (``SHUT_RD``).
* ``send``: ``StreamReader.drain(send, writable)`` gives each guest write to the kernel
  straight from guest memory; the write completes with what the kernel took, so a slow
  peer holds the guest back and the host buffers nothing. The guest dropping its end sends
  FIN; the future says how it went.
* ``listen``: a stream of accepted ``tcp-socket``s. A connection is accepted only once the
  guest reads from the stream (until then it waits in the kernel's backlog, where another
  ``--workers`` process may take it); a graceful stop ends the stream. The stream keeps
  the listener (as wasmtime's does); dropping the socket completes a read pending on it
  with no sockets, so a guest whose runtime has no ``stream.cancel-read`` (componentize-py)
  can stop its accept loop and drop the stream, which closes the listener.

A host consumer that owns both ends can skip the streams: when a guest hands TLS a socket's
``receive`` stream, TLS reads the socket itself (``take_receive``: the stream's task stops,
the future still says how receiving ended), and when it hands ``send`` a stream whose host
writer offered to (``offer_direct_send``: TLS's outgoing ciphertext), that writer writes the
socket itself (``SocketSink``). Each flight then costs a system call instead of a stream
copy and two task steps.

Engine errors carry WASI 0.2's code names; ``error_code`` renames the few that differ in 0.3
(``concurrency-conflict`` and ``not-in-progress`` are ``invalid-state``; what 0.3 lacks is
``other``). ``connection_of(stream)`` finds the TCP connection beneath a receive stream (for
TLS and the access log).
"""

from __future__ import annotations

import errno
import functools
import logging
import weakref
from typing import Any, Callable, Iterable, Protocol

from ...runtime.binding import Interface, is_async_function
from ...runtime.resources import HostResource
from ...runtime.scheduler import Cancelled, HostTask, Scheduler, any_of, readable, writable
from ...runtime.store import StoreState
from ...runtime.streams import (
    CopyResult,
    Future,
    FutureWriter,
    Stream,
    StreamClosed,
    StreamReader,
    StreamWriter,
    WritableBuffer,
    new_future,
    new_stream,
)
from ...runtime.values import Err, Variant, WitError
from . import lookup, tcp, udp
from .addresses import ip_to_wit
from .registry import error_code as os_error_code
from .registry import SharedSocket, SocketRegistry, registry

log = logging.getLogger("wasi_tls_host.sockets")

SPLICE_CHUNK = 256 * 1024  # what send holds at a time of a stream the host itself writes

# --- error codes ---------------------------------------------------------------------------

ERROR_CASES = frozenset(
    "access-denied not-supported invalid-argument out-of-memory timeout invalid-state address-not-bindable "
    "address-in-use remote-unreachable connection-refused connection-broken connection-reset connection-aborted "
    "datagram-too-large".split()
)
LOOKUP_ERROR_CASES = frozenset(
    "access-denied invalid-argument name-unresolvable temporary-resolver-failure permanent-resolver-failure".split()
)
_RENAMED = {"concurrency-conflict": "invalid-state", "not-in-progress": "invalid-state"}
# Codes 0.3 has no case for, said in words in ``other``.
_IN_WORDS = {
    "new-socket-limit": "new-socket-limit: the guest holds as many sockets as the host allows (--max-sockets)",
    "would-block": "would-block",
}


def error_code(payload: Any, cases: frozenset[str] = ERROR_CASES) -> Variant:
    """An engine error (a 0.2 code name) as a 0.3 ``error-code`` value."""
    if isinstance(payload, Variant):
        return payload
    code = _RENAMED.get(payload, payload)
    if code in cases:
        return Variant(code)
    return Variant("other", _IN_WORDS.get(code))


def failure_code(e: OSError) -> Variant:
    """What a failed send or receive is in 0.3 (EPIPE is connection-broken here)."""
    if e.errno == errno.EPIPE:
        return Variant("connection-broken")
    return error_code(os_error_code(e))


def _func(iface: Interface, name: str, cases: frozenset[str] = ERROR_CASES) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``iface.func(name)`` for an impl that raises engine errors: they reach the guest as
    0.3 error codes."""

    def register(impl: Callable[..., Any]) -> Callable[..., Any]:
        wrapper: Callable[..., Any]
        if is_async_function(impl):
            @functools.wraps(impl)
            async def wrapper(cx: StoreState, *args: Any) -> Any:
                try:
                    return await impl(cx, *args)
                except WitError as e:
                    raise WitError(error_code(e.payload, cases)) from None
        else:
            @functools.wraps(impl)
            def wrapper(cx: StoreState, *args: Any) -> Any:
                try:
                    return impl(cx, *args)
                except WitError as e:
                    raise WitError(error_code(e.payload, cases)) from None
        iface.func(name)(wrapper)
        return impl

    return register


# --- TCP -------------------------------------------------------------------------------------


class TcpSocket(HostResource):
    """wasi:sockets/types@0.3.0 ``tcp-socket``: an engine socket; ``send`` and ``receive``
    may each be called once."""

    def __init__(self, socket: tcp.TcpSocket) -> None:
        self.socket = socket
        self.sending = False
        self.receiving = False
        self.accepts: StreamWriter | None = None  # the listen stream, once listening

    def drop(self) -> None:
        self.socket.release()
        if self.accepts is not None and self.accepts.reader_waiting():
            # The guest's pending accept ends empty; the stream (and listener) lives on.
            self.accepts.stream.reset_and_notify_pending(CopyResult.COMPLETED)
        self.accepts = None


class _Receive:
    """A ``receive`` stream's socket, its future and the task moving bytes between them
    (until ``take_receive`` stops it)."""

    __slots__ = ("conn", "writer", "result", "task", "taken", "__weakref__")

    def __init__(self, conn: tcp.TcpConnection, writer: StreamWriter, result: FutureWriter) -> None:
        self.conn = conn
        self.writer = writer
        self.result = result
        self.task: HostTask | None = None
        self.taken = False


class DirectSource(Protocol):
    """A socket's receiving side read directly (``SocketSource``; a test stand-in may have
    its own): ``recv`` gives b"" when nothing is there (wait for ``readable(fd)``), None
    once receiving ended; ``stop`` ends it early."""

    fd: int

    def recv(self, limit: int) -> bytes | None: ...

    def stop(self) -> None: ...

    @property
    def remote_port(self) -> int | None:
        """The peer's port (None once stopped, or if the system cannot say)."""
        ...


class DirectSink(Protocol):
    """A socket's sending side written directly (``SocketSink``): ``send`` returns what the
    kernel took (0: wait for ``writable(fd)``) or raises ``OSError``; ``close`` after the
    last byte (FIN)."""

    fd: int

    def send(self, data: Any) -> int: ...

    def close(self) -> None: ...


# The TCP connection beneath each receive stream while its task runs (weak: the stream's
# life is the guest's; the entry refers to the stream, so it goes when the task ends).
_RECEIVES: weakref.WeakKeyDictionary[Stream, _Receive] = weakref.WeakKeyDictionary()
# Receive streams whose socket a host consumer may read itself: how to take it over.
_RECEIVE_TAKERS: weakref.WeakKeyDictionary[Stream, Callable[[], DirectSource | None]] = weakref.WeakKeyDictionary()
# Host writers that write a socket themselves when the guest hands their stream to ``send``.
_DIRECT_SENDERS: weakref.WeakKeyDictionary[Stream, Callable[[DirectSink], None]] = weakref.WeakKeyDictionary()


def connection_of(stream: Stream) -> tcp.TcpConnection | None:
    """The TCP connection a ``receive`` stream reads from (None for any other stream): TLS
    annotates its access-log record, and may read the socket itself."""
    rx = _RECEIVES.get(stream)
    return rx.conn if rx is not None else None


class SocketSource:
    """A socket's receiving side read directly by a host consumer instead of through its
    ``receive`` stream (``take_receive``). Ends as the stream would have: the future says
    ok at the peer's FIN or when the consumer stops, else the error."""

    __slots__ = ("conn", "result", "fd")

    def __init__(self, conn: tcp.TcpConnection, result: FutureWriter | None) -> None:
        self.conn: tcp.TcpConnection | None = conn
        self.result = result  # None: nobody asked how receiving ended (``receive_directly``)
        self.fd = conn.fileno()

    def recv(self, limit: int) -> bytes | None:
        """What the kernel has now, up to ``limit`` bytes (b"" if nothing: wait for
        ``readable(fd)``); None once receiving ended (FIN, error, ``stop``)."""
        conn = self.conn
        if conn is None:
            return None
        try:
            data = conn.recv(limit)
        except BlockingIOError:
            return b""
        except OSError as e:
            self._end(Err(failure_code(e)))
            return None
        if not data:
            self._end(None)
        return data or None

    def stop(self) -> None:
        """The consumer reads no more (as a guest dropping the stream: unread data is
        discarded)."""
        if self.conn is not None:
            self.conn.shutdown_read()
            self._end(None)

    def _end(self, outcome: Any) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.release()
            if self.result is not None:
                self.result.write(outcome)

    @property
    def remote_port(self) -> int | None:
        conn = self.conn
        if conn is None:
            return None
        try:
            return int(conn.sock.getpeername()[1])
        except (OSError, IndexError):
            return None


def take_receive(stream: Stream) -> DirectSource | None:
    """Read the socket beneath ``stream`` (a ``receive`` stream given to the host, e.g. to
    TLS) directly: its task stops and nothing more goes through the stream. None if the
    stream is no socket's or has ended."""
    take = _RECEIVE_TAKERS.pop(stream, None)
    return take() if take is not None and not stream.dropped else None


def receive_directly(sock: TcpSocket) -> SocketSource:
    """``receive`` for a host consumer that reads the socket itself from the start and
    reports how the data ended on its own (TLS's ``accept-socket``): the socket's checks and
    state as ``receive``, without the stream, future and task that ``take_receive`` would
    stop at once. Raises ``WitError`` where ``receive`` would answer an error."""
    if sock.receiving:
        raise WitError("invalid-state")
    conn = sock.socket.connection("receive")
    sock.receiving = True
    return SocketSource(conn, None)


def offer_direct_receive(stream: Stream, take: Callable[[], DirectSource | None]) -> None:
    """``stream`` (a socket's receive stream) may be read from its socket directly:
    ``take`` stops what moves bytes into the stream and returns the socket's source (None
    if it cannot any more). Withdrawn with ``withdraw_direct_receive`` when the stream's
    task ends (``take`` refers to the stream: the entry would keep it alive)."""
    _RECEIVE_TAKERS[stream] = take


def withdraw_direct_receive(stream: Stream) -> None:
    _RECEIVE_TAKERS.pop(stream, None)


def _take(rx: _Receive) -> SocketSource | None:
    # Nothing is lost: the task only ever put bytes straight into a read posted on the
    # stream, so none are held between the two (and one not started yet read nothing).
    task = rx.task
    if rx.taken or (task is not None and task.done):
        return None
    rx.taken = True
    if task is not None:
        task.cancel()
    _RECEIVES.pop(rx.writer.stream, None)
    rx.writer.close()
    return SocketSource(rx.conn, rx.result)


class SocketSink:
    """A socket's sending side written directly by the host writer of the stream a guest
    gave ``send`` (``offer_direct_send``). ``close`` once everything was sent: FIN, and the
    future says ok; a failure ends it with the error."""

    __slots__ = ("conn", "result", "fd")

    def __init__(self, conn: tcp.TcpConnection, result: FutureWriter) -> None:
        self.conn: tcp.TcpConnection | None = conn
        self.result = result
        self.fd = conn.fileno()

    def send(self, data: Any) -> int:
        """What the kernel takes now (0: wait for ``writable(fd)``). Raises ``OSError`` if
        the connection failed (the future has the error then)."""
        conn = self.conn
        if conn is None:
            raise BrokenPipeError("sending has ended")
        try:
            return conn.send(data)
        except BlockingIOError:
            return 0
        except OSError as e:
            self._end(Err(failure_code(e)))
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.shutdown_write()
            self._end(None)

    def abandon(self) -> None:
        """The store is closing: let the socket go, write no future."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.release()
            self.result.close()

    def _end(self, outcome: Any) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.release()
            self.result.write(outcome)


def offer_direct_send(stream: Stream, attach: Callable[[DirectSink], None]) -> None:
    """If the guest hands ``stream`` (written by the host) to a socket's ``send``, call
    ``attach`` with that socket's sink instead of moving the bytes through the stream.
    The offer ends with ``withdraw_direct_send`` (the writer closed its end)."""
    _DIRECT_SENDERS[stream] = attach


def withdraw_direct_send(stream: Stream) -> None:
    _DIRECT_SENDERS.pop(stream, None)


def direct_sender(stream: Stream) -> Callable[[DirectSink], None] | None:
    """What ``send`` hands its socket's sink to instead of reading ``stream`` (offered
    by the stream's host writer), taken once; None if nothing was offered."""
    attach = _DIRECT_SENDERS.pop(stream, None)
    return attach if attach is not None and not stream.dropped else None


types_iface = Interface("wasi:sockets/types@0.3.0")
types_iface.resource("tcp-socket", TcpSocket)


@_func(types_iface, "[static]tcp-socket.create")
def tcp_create(cx: StoreState, address_family: str) -> TcpSocket:
    return TcpSocket(tcp.TcpSocket.create(cx.wasi, address_family))


@_func(types_iface, "[method]tcp-socket.bind")
def tcp_bind(cx: StoreState, sock: TcpSocket, local_address: Variant) -> None:
    sock.socket.bind(cx.wasi, local_address)


@_func(types_iface, "[method]tcp-socket.connect")
async def tcp_connect(cx: StoreState, sock: TcpSocket, remote_address: Variant) -> None:
    await sock.socket.connect(cx.wasi, remote_address)


@_func(types_iface, "[method]tcp-socket.listen")
def tcp_listen(cx: StoreState, sock: TcpSocket) -> Stream:
    sock.socket.listen(cx.wasi, implicit_bind=True)
    stream, writer = new_stream()
    # The stream keeps the listener open (the guest may drop the socket and go on accepting).
    sock.accepts = writer
    shared = sock.socket.shared.acquire()
    cx.scheduler.spawn(_accept(cx.wasi, sock.socket, shared, writer), "tcp-socket.listen")
    return stream


async def _accept(wasi: Any, listener: tcp.TcpSocket, shared: SharedSocket, writer: StreamWriter) -> None:
    """The listen stream: a connection for each read of the guest, until it drops the
    stream or a graceful stop ends it. ``shared`` is the listener, acquired for this task.

    A read is answered with every connection already waiting, as many as it has room for:
    one read of the guest (a round trip through both runtimes) for several connections
    when they come faster than it reads."""
    reg = registry(wasi)
    none_waiting = False  # the last accept found no connection: wait before the next one
    try:
        drain_fd = reg.drain_fd()
        while await _reader_waits(writer, reg, drain_fd) and not listener.draining():
            if none_waiting:
                none_waiting = False
                writer.wake.clear()  # the guest dropping the stream ends this wait too
                await any_of(readable(shared.sock.fileno()), readable(drain_fd), writer.wake)
                continue
            try:
                accepted = listener.accept(wasi)
            except WitError as e:
                if e.payload == "new-socket-limit":
                    continue  # that client was refused at once (logged); the next may fit
                return  # the listener is gone
            except OSError as e:
                _skipped(e)
                continue
            if accepted is None:
                none_waiting = True
                continue
            clients = [TcpSocket(accepted)]
            room = _read_room(writer)
            while len(clients) < room:
                try:
                    accepted = listener.accept(wasi)
                except WitError:
                    break  # the loop above meets it again (a refused client was closed, logged)
                except OSError as e:
                    _skipped(e)
                    continue
                if accepted is None:
                    none_waiting = True
                    break
                clients.append(TcpSocket(accepted))
            written = 0
            try:
                while written < len(clients):
                    written += await writer.write_some(clients[written:] if written else clients)
            except StreamClosed:
                for client in clients[written:]:
                    client.drop()  # the guest dropped the stream: these clients are closed at once
                raise
    except StreamClosed:
        pass
    finally:
        writer.close()
        shared.release()


def _skipped(e: OSError) -> None:
    # Linux passes a connection's pending network error on from accept(): the spec lets
    # hosts skip such a connection; the listener goes on.
    log.info("skipped a connection that failed before it was accepted: %s", e)


def _read_room(writer: StreamWriter) -> int:
    """How many values the guest's pending read still takes (0 if none is pending)."""
    buf = writer.stream.pending_buffer
    return buf.remain() if isinstance(buf, WritableBuffer) else 0


async def _reader_waits(writer: StreamWriter, reg: SocketRegistry, drain_fd: int) -> bool:
    """Wait until the guest reads from the stream (True) or a graceful stop (False): a
    connection is accepted for a guest that asks, not ahead of it. StreamClosed if the
    guest dropped the stream."""
    stream = writer.stream
    while not isinstance(stream.pending_buffer, WritableBuffer):
        if stream.dropped:
            raise StreamClosed("the guest dropped the listen stream")
        if reg.draining:
            return False
        writer.wake.clear()
        await any_of(writer.wake, readable(drain_fd))
    return True


@types_iface.func("[method]tcp-socket.send")
def tcp_send(cx: StoreState, sock: TcpSocket, data: Stream) -> Future:
    future, result = new_future()
    try:
        if sock.sending:
            raise WitError("invalid-state")
        conn = sock.socket.connection("send")
    except WitError as e:
        StreamReader(data, is_bytes=True).close()
        result.write(Err(error_code(e.payload)))
        return future
    sock.sending = True
    attach = direct_sender(data)
    if attach is not None:
        attach(SocketSink(conn, result))
        return future
    cx.scheduler.spawn(_send(conn, StreamReader(data, is_bytes=True), result), "tcp-socket.send")
    return future


async def _send(conn: tcp.TcpConnection, reader: StreamReader, result: FutureWriter) -> None:
    outcome: Any = None
    try:
        if reader.stream.writer is None:
            # Each guest write is given to the kernel in place; it completes with what the
            # kernel took, so the host holds none of it.
            while await reader.drain(conn.send, conn.writable) is not None:
                pass
        else:
            # The host writes this stream itself (the guest passed another socket's receive
            # stream): there is no guest buffer to take, so move it through one of ours.
            while (chunk := await reader.read(SPLICE_CHUNK)) is not None:
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[conn.send(view):]
                    except BlockingIOError:
                        await conn.writable()
        conn.shutdown_write()  # the writer dropped its end: FIN
    except OSError as e:
        outcome = Err(failure_code(e))
    except Cancelled:
        result.close()  # the store is closing: nobody will read it
        raise
    except Exception as e:  # a host bug: the guest hears of it rather than waiting forever
        log.exception("tcp-socket.send failed")
        outcome = Err(Variant("other", f"host error: {e}"))
    finally:
        reader.close()
        conn.release()
    result.write(outcome)


@types_iface.func("[method]tcp-socket.receive")
def tcp_receive(cx: StoreState, sock: TcpSocket) -> tuple[Stream, Future]:
    stream, writer = new_stream()
    future, result = new_future()
    try:
        if sock.receiving:
            raise WitError("invalid-state")
        conn = sock.socket.connection("receive")
    except WitError as e:
        writer.close()
        result.write(Err(error_code(e.payload)))
        return stream, future
    sock.receiving = True
    rx = _RECEIVES[stream] = _Receive(conn, writer, result)
    # The task that moves the bytes starts when the stream first has a reader (or is
    # dropped): until then it would only wait for one, and a TLS client hands the stream to
    # the host (take_receive) before anyone reads it, so that its task was made only to be
    # cancelled, on the way to the ClientHello. (The stream's entries above hold ``rx``; the
    # event's callback only refers to it, so a socket taken over leaves no cycle behind.)
    writer.wake.on_set(functools.partial(_start_receive, cx.scheduler, weakref.ref(rx)))
    offer_direct_receive(stream, functools.partial(_take, rx))
    return stream, future


def _start_receive(scheduler: Scheduler, receive: weakref.ref[_Receive]) -> None:
    """The receive stream has a reader, or was dropped: its task starts (unless the host
    took the socket over first)."""
    rx = receive()
    if rx is None or rx.taken or rx.task is not None:
        return
    if scheduler.closed:  # the store is closing (its streams are being dropped): let go now
        rx.taken = True
        _RECEIVES.pop(rx.writer.stream, None)
        withdraw_direct_receive(rx.writer.stream)
        rx.writer.close()
        rx.conn.release()
        rx.result.close()
        return
    rx.task = scheduler.spawn(_receive(rx), "tcp-socket.receive")


async def _receive(rx: _Receive) -> None:
    conn, writer, result = rx.conn, rx.writer, rx.result
    outcome: Any = None
    try:
        while await writer.fill(conn.recv_into, conn.readable):
            pass  # each fill put bytes into one read of the guest; 0 is the peer's FIN
    except StreamClosed:
        conn.shutdown_read()  # the guest dropped the stream: unread data is discarded
    except OSError as e:
        outcome = Err(failure_code(e))
    except Cancelled:
        if not rx.taken:
            result.close()
        raise
    except Exception as e:  # a host bug: the guest hears of it rather than waiting forever
        log.exception("tcp-socket.receive failed")
        outcome = Err(Variant("other", f"host error: {e}"))
    finally:
        if not rx.taken:  # (taken: the socket, the stream and the future are take_receive's)
            # The entries refer to the stream (through the writer): they go with the task.
            _RECEIVES.pop(writer.stream, None)
            withdraw_direct_receive(writer.stream)
            writer.close()
            conn.release()
    result.write(outcome)


@_func(types_iface, "[method]tcp-socket.get-local-address")
def tcp_get_local_address(cx: StoreState, sock: TcpSocket) -> Variant:
    return sock.socket.local_address().to_wit()


@_func(types_iface, "[method]tcp-socket.get-remote-address")
def tcp_get_remote_address(cx: StoreState, sock: TcpSocket) -> Variant:
    return sock.socket.remote_address().to_wit()


@types_iface.func("[method]tcp-socket.get-is-listening")
def tcp_get_is_listening(cx: StoreState, sock: TcpSocket) -> bool:
    return sock.socket.is_listening()


@types_iface.func("[method]tcp-socket.get-address-family")
def tcp_get_address_family(cx: StoreState, sock: TcpSocket) -> str:
    return sock.socket.family


@_func(types_iface, "[method]tcp-socket.set-listen-backlog-size")
def tcp_set_listen_backlog_size(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_listen_backlog_size(value)


@_func(types_iface, "[method]tcp-socket.get-keep-alive-enabled")
def tcp_get_keep_alive_enabled(cx: StoreState, sock: TcpSocket) -> bool:
    return sock.socket.keep_alive_enabled()


@_func(types_iface, "[method]tcp-socket.set-keep-alive-enabled")
def tcp_set_keep_alive_enabled(cx: StoreState, sock: TcpSocket, value: bool) -> None:
    sock.socket.set_keep_alive_enabled(value)


@_func(types_iface, "[method]tcp-socket.get-keep-alive-idle-time")
def tcp_get_keep_alive_idle_time(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.keep_alive_idle_time()


@_func(types_iface, "[method]tcp-socket.set-keep-alive-idle-time")
def tcp_set_keep_alive_idle_time(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_keep_alive_idle_time(value)


@_func(types_iface, "[method]tcp-socket.get-keep-alive-interval")
def tcp_get_keep_alive_interval(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.keep_alive_interval()


@_func(types_iface, "[method]tcp-socket.set-keep-alive-interval")
def tcp_set_keep_alive_interval(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_keep_alive_interval(value)


@_func(types_iface, "[method]tcp-socket.get-keep-alive-count")
def tcp_get_keep_alive_count(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.keep_alive_count()


@_func(types_iface, "[method]tcp-socket.set-keep-alive-count")
def tcp_set_keep_alive_count(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_keep_alive_count(value)


@_func(types_iface, "[method]tcp-socket.get-hop-limit")
def tcp_get_hop_limit(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.hop_limit()


@_func(types_iface, "[method]tcp-socket.set-hop-limit")
def tcp_set_hop_limit(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_hop_limit(value)


# Linux reports twice the buffer size it was given (bookkeeping included); 0.3 hosts report
# it halved, as wasmtime does, so that what a guest sets is what it reads back.
@_func(types_iface, "[method]tcp-socket.get-receive-buffer-size")
def tcp_get_receive_buffer_size(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.receive_buffer_size() // 2


@_func(types_iface, "[method]tcp-socket.set-receive-buffer-size")
def tcp_set_receive_buffer_size(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_receive_buffer_size(value)


@_func(types_iface, "[method]tcp-socket.get-send-buffer-size")
def tcp_get_send_buffer_size(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.send_buffer_size() // 2


@_func(types_iface, "[method]tcp-socket.set-send-buffer-size")
def tcp_set_send_buffer_size(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_send_buffer_size(value)


# --- UDP -------------------------------------------------------------------------------------


class UdpSocket(HostResource):
    """wasi:sockets/types@0.3.0 ``udp-socket``."""

    def __init__(self, socket: udp.UdpSocket) -> None:
        self.socket = socket

    def drop(self) -> None:
        self.socket.release()


types_iface.resource("udp-socket", UdpSocket)


@_func(types_iface, "[static]udp-socket.create")
def udp_create(cx: StoreState, address_family: str) -> UdpSocket:
    return UdpSocket(udp.UdpSocket.create(cx.wasi, address_family))


@_func(types_iface, "[method]udp-socket.bind")
def udp_bind(cx: StoreState, sock: UdpSocket, local_address: Variant) -> None:
    sock.socket.bind(cx.wasi, local_address)


@_func(types_iface, "[method]udp-socket.connect")
def udp_connect(cx: StoreState, sock: UdpSocket, remote_address: Variant) -> None:
    sock.socket.connect(cx.wasi, remote_address)


@_func(types_iface, "[method]udp-socket.disconnect")
def udp_disconnect(cx: StoreState, sock: UdpSocket) -> None:
    if sock.socket.remote is None:
        raise WitError("invalid-state")
    sock.socket.disconnect_if_connected()


@_func(types_iface, "[method]udp-socket.send")
async def udp_send(cx: StoreState, sock: UdpSocket, data: bytes, remote_address: Variant | None) -> None:
    if len(data) > udp.MAX_DATAGRAM:
        raise WitError("datagram-too-large")
    engine = sock.socket
    destination = engine.destination(cx.wasi, remote_address)
    while True:
        try:
            engine.send(data, destination)
            return
        except BlockingIOError:
            await writable(engine.sock.fileno())


@_func(types_iface, "[method]udp-socket.receive")
async def udp_receive(cx: StoreState, sock: UdpSocket) -> tuple[bytes, Variant]:
    engine = sock.socket
    if not engine.bound:
        raise WitError("invalid-state")
    while True:
        try:
            data, source = engine.receive()
            return data, source.to_wit()
        except BlockingIOError:
            await readable(engine.sock.fileno())


@_func(types_iface, "[method]udp-socket.get-local-address")
def udp_get_local_address(cx: StoreState, sock: UdpSocket) -> Variant:
    return sock.socket.local_address().to_wit()


@_func(types_iface, "[method]udp-socket.get-remote-address")
def udp_get_remote_address(cx: StoreState, sock: UdpSocket) -> Variant:
    return sock.socket.remote_address().to_wit()


@types_iface.func("[method]udp-socket.get-address-family")
def udp_get_address_family(cx: StoreState, sock: UdpSocket) -> str:
    return sock.socket.family


@_func(types_iface, "[method]udp-socket.get-unicast-hop-limit")
def udp_get_unicast_hop_limit(cx: StoreState, sock: UdpSocket) -> int:
    return sock.socket.hop_limit()


@_func(types_iface, "[method]udp-socket.set-unicast-hop-limit")
def udp_set_unicast_hop_limit(cx: StoreState, sock: UdpSocket, value: int) -> None:
    sock.socket.set_hop_limit(value)


@_func(types_iface, "[method]udp-socket.get-receive-buffer-size")
def udp_get_receive_buffer_size(cx: StoreState, sock: UdpSocket) -> int:
    return sock.socket.receive_buffer_size() // 2


@_func(types_iface, "[method]udp-socket.set-receive-buffer-size")
def udp_set_receive_buffer_size(cx: StoreState, sock: UdpSocket, value: int) -> None:
    sock.socket.set_receive_buffer_size(value)


@_func(types_iface, "[method]udp-socket.get-send-buffer-size")
def udp_get_send_buffer_size(cx: StoreState, sock: UdpSocket) -> int:
    return sock.socket.send_buffer_size() // 2


@_func(types_iface, "[method]udp-socket.set-send-buffer-size")
def udp_set_send_buffer_size(cx: StoreState, sock: UdpSocket, value: int) -> None:
    sock.socket.set_send_buffer_size(value)


# --- ip-name-lookup ---------------------------------------------------------------------------

lookup_iface = Interface("wasi:sockets/ip-name-lookup@0.3.0")


@_func(lookup_iface, "resolve-addresses", LOOKUP_ERROR_CASES)
async def resolve_addresses(cx: StoreState, name: str) -> list[Variant]:
    target = lookup.parse_name(cx.wasi, name)
    if not isinstance(target, str):
        return [ip_to_wit(target)]  # an address literal: no lookup
    job = lookup.Lookup(target)
    try:
        while not job.done:
            await readable(job.notifier.fd)
    finally:
        job.close()
    if job.error is not None:
        raise WitError(job.error)
    return [ip_to_wit(ip) for ip in job.addresses or ()]


INTERFACES: Iterable[Interface] = (types_iface, lookup_iface)
