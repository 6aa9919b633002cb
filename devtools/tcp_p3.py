"""A stand-in for WASI 0.3 TCP (``wasi:sockets@0.3.0``) until it lands: the interface
``wasi-tls-host:test/tcp`` that tests and benchmarks give WASI 0.3 TLS guests, shaped like
``tcp-socket``'s ``send``/``receive`` so that guests change little when they move on:

    resource socket {
        receive: func() -> stream<u8>;     what the peer sends (ends at its FIN or a reset)
        send: func(data: stream<u8>);      sent as written; the end of the stream shuts the
                                           sending side down (FIN)
    }
    dial: async func(port: u16) -> result<socket, string>;     connect to 127.0.0.1:port
    accept: async func(port: u16) -> result<socket, string>;   from the listener a test
                                                                registered (``listen``)
    sleep: async func(ms: u32);                                 (wasi:clocks 0.3's wait-for)

As with wasi:sockets, the streams outlive the socket's handle; the OS socket closes once
both directions have ended (a direction never started ends when the handle is dropped).
As wasi:sockets 0.3 does, it lets TLS read and write the socket itself when a guest hands
TLS its receive stream and gives ``send`` TLS's outgoing stream (``offer_direct_receive``,
``direct_sender``), so figures measured over it stay those of the real sockets.
``TcpSocket`` is the same for Python code that drives streams itself (tests of the TLS
transport without a guest).
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.runtime.resources import HostResource
from wasi_tls_host.runtime.scheduler import HostTask, Scheduler, readable, sleep_until, writable
from wasi_tls_host.runtime.store import StoreState
from wasi_tls_host.runtime.streams import Stream, StreamClosed, StreamReader, StreamWriter, new_stream
from wasi_tls_host.runtime.values import Trap, WitError
from wasi_tls_host.wasi.sockets.p3 import direct_sender, offer_direct_receive, withdraw_direct_receive

tcp = Interface("wasi-tls-host:test/tcp")

# Listening sockets by port, registered by the test that serves a guest's accept.
LISTENERS: dict[int, socket.socket] = {}


def listen(port: int = 0) -> socket.socket:
    """A listener on 127.0.0.1 (a free port if 0) that guests' ``accept`` take from."""
    listener = socket.create_server(("127.0.0.1", port), backlog=128)
    listener.setblocking(False)
    LISTENERS[listener.getsockname()[1]] = listener
    return listener


def unlisten(listener: socket.socket) -> None:
    LISTENERS.pop(listener.getsockname()[1], None)
    listener.close()


class TcpSocket(HostResource):
    """A connected socket whose directions are streams (see the module docstring)."""

    def __init__(self, sock: socket.socket, scheduler: Scheduler) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.scheduler = scheduler
        self.receiving: bool | None = None  # None: not started; True: running; False: ended
        self.sending: bool | None = None
        self.closed = False
        self._receiver: HostTask | None = None
        self._taken = False  # the receive stream's socket is read directly (_Source)

    def receive(self) -> Stream:
        if self.receiving is not None:
            raise Trap("receive was already called on this socket")
        self.receiving = True
        incoming, writer = new_stream(origin="wasi-tls-host:test/tcp (received)")
        self._receiver = self.scheduler.spawn(self._receive(writer), "tcp stand-in: receive")
        offer_direct_receive(incoming, lambda: self._take_receive(writer))
        return incoming

    def _take_receive(self, writer: StreamWriter) -> _Source | None:
        task = self._receiver
        if task is None or task.done:
            return None
        self._taken = True
        task.cancel()
        writer.close()
        return _Source(self)

    def send(self, data: Stream) -> None:
        if self.sending is not None:
            StreamReader(data, is_bytes=True).close()
            raise Trap("send was already called on this socket")
        self.sending = True
        attach = direct_sender(data)
        if attach is not None:
            attach(_Sink(self))
            return
        self.scheduler.spawn(self._send(StreamReader(data, is_bytes=True)), "tcp stand-in: send")

    async def _receive(self, writer: StreamWriter) -> None:
        try:
            while await writer.fill(self.sock.recv_into, lambda: readable(self.fd)):
                pass
        except (StreamClosed, OSError):
            pass  # the guest dropped the stream, or the peer reset: the stream ends
        finally:
            if not self._taken:
                withdraw_direct_receive(writer.stream)
                writer.close()
                self.end_receiving()

    def end_receiving(self) -> None:
        self.receiving = False
        self._maybe_close()

    def end_sending(self) -> None:
        self.sending = False
        self._maybe_close()

    async def _send(self, reader: StreamReader) -> None:
        try:
            while (data := await reader.read(1 << 16)) is not None:
                view = memoryview(data)
                while view:
                    try:
                        view = view[self.sock.send(view):]
                    except BlockingIOError:
                        await writable(self.fd)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is gone: what is left to send is dropped
        finally:
            reader.close()
            self.end_sending()

    def _maybe_close(self) -> None:
        if not self.receiving and not self.sending and self.closed:
            self.sock.close()

    def drop(self) -> None:
        """The handle is gone: directions never started end now; the socket closes once
        the started ones have."""
        self.closed = True
        if self.receiving is None:
            self.receiving = False
        if self.sending is None:
            self.sending = False
        self._maybe_close()


class _Source:
    """The receiving side read directly (``wasi.sockets.p3.DirectSource``)."""

    def __init__(self, owner: TcpSocket) -> None:
        self.owner: TcpSocket | None = owner
        self.fd = owner.fd

    def recv(self, limit: int) -> bytes | None:
        owner = self.owner
        if owner is None:
            return None
        try:
            data = owner.sock.recv(limit)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""  # the peer reset: the data ends, as the stream would
        if not data:
            self.stop()
            return None
        return data

    def stop(self) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.end_receiving()

    @property
    def remote_port(self) -> int | None:
        owner = self.owner
        try:
            return int(owner.sock.getpeername()[1]) if owner is not None else None
        except OSError:
            return None


class _Sink:
    """The sending side written directly (``wasi.sockets.p3.DirectSink``)."""

    def __init__(self, owner: TcpSocket) -> None:
        self.owner: TcpSocket | None = owner
        self.fd = owner.fd

    def send(self, data: Any) -> int:
        owner = self.owner
        if owner is None:
            raise BrokenPipeError("sending has ended")
        try:
            return owner.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self._end()
            raise

    def close(self) -> None:
        owner = self.owner
        if owner is not None:
            try:
                owner.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the peer is gone already
            self._end()

    def _end(self) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.end_sending()


tcp.resource("socket", TcpSocket)


async def connect_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, errno.errorcode.get(code, str(code)))
        await writable(sock.fileno())
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, errno.errorcode.get(code, str(code)))
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def accept_socket(port: int) -> socket.socket:
    listener = LISTENERS.get(port)
    if listener is None:
        raise OSError(errno.EINVAL, f"no listener was registered for port {port}")
    while True:
        try:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except BlockingIOError:
            await readable(listener.fileno())


@tcp.func("dial")
async def dial(cx: StoreState, port: int) -> TcpSocket:
    try:
        sock = await connect_socket(port)
    except OSError as e:
        raise WitError(f"connect to 127.0.0.1:{port} failed: {e.strerror or e}") from None
    return TcpSocket(sock, cx.scheduler)


@tcp.func("accept")
async def accept(cx: StoreState, port: int) -> TcpSocket:
    try:
        sock = await accept_socket(port)
    except OSError as e:
        raise WitError(f"accept on port {port} failed: {e.strerror or e}") from None
    return TcpSocket(sock, cx.scheduler)


@tcp.func("[method]socket.receive")
def socket_receive(cx: StoreState, this: TcpSocket) -> Stream:
    return this.receive()


@tcp.func("[method]socket.send")
def socket_send(cx: StoreState, this: TcpSocket, data: Stream) -> None:
    this.send(data)


@tcp.func("sleep")
async def sleep(cx: StoreState, ms: int) -> None:
    await sleep_until(time.monotonic_ns() + ms * 1_000_000)
