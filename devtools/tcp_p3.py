"""A stand-in for WASI 0.3 TCP (``wasi:sockets@0.3.0``) until it lands: the interface
``wasi-tls-host:test/tcp`` that tests and benchmarks give WASI 0.3 TLS guests, shaped like
``tcp-socket``'s ``send``/``receive`` so guests change little when they move to wasi:sockets:

    dial:   async func(port: u16, outgoing: stream<u8>) -> result<stream<u8>, string>
    accept: async func(port: u16, outgoing: stream<u8>) -> result<stream<u8>, string>

``dial`` connects to 127.0.0.1:port; ``accept`` takes the next connection from the listener
a test registered for that port (``listen``). Either way the host sends what the guest
writes into ``outgoing`` (then shuts its sending side down, as ``tcp-socket.send`` does at
the end of its stream) and returns a stream of what the peer sends (ended at the peer's
FIN or a reset). The socket closes once both directions have ended.

``TcpPipe`` is the same thing for Python code that drives streams itself (tests of the TLS
transport without a guest).
"""

from __future__ import annotations

import errno
import socket

from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.runtime.scheduler import Scheduler, readable, writable
from wasi_tls_host.runtime.store import StoreState
from wasi_tls_host.runtime.streams import Stream, StreamClosed, StreamReader, new_stream
from wasi_tls_host.runtime.values import WitError

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


class TcpPipe:
    """A connected socket between two streams: ``outgoing`` (read by the host, sent) and
    ``incoming`` (what the peer sent, written by the host)."""

    def __init__(self, sock: socket.socket, outgoing: Stream, scheduler: Scheduler) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.incoming, self.writer = new_stream(origin="wasi-tls-host:test/tcp (received)")
        self.reader = StreamReader(outgoing, is_bytes=True)
        self.open = 2
        scheduler.spawn(self._receive(), "tcp stand-in: receive")
        scheduler.spawn(self._send(), "tcp stand-in: send")

    async def _receive(self) -> None:
        try:
            while await self.writer.fill(self.sock.recv_into, lambda: readable(self.fd)):
                pass
        except (StreamClosed, OSError):
            pass  # the guest dropped the stream, or the peer reset: the stream ends
        finally:
            self.writer.close()
            self._ended()

    async def _send(self) -> None:
        try:
            while (data := await self.reader.read(1 << 16)) is not None:
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
            self.reader.close()
            self._ended()

    def _ended(self) -> None:
        self.open -= 1
        if self.open == 0:
            self.sock.close()


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
async def dial(cx: StoreState, port: int, outgoing: Stream) -> Stream:
    try:
        sock = await connect_socket(port)
    except OSError as e:
        StreamReader(outgoing, is_bytes=True).close()
        raise WitError(f"connect to 127.0.0.1:{port} failed: {e.strerror or e}") from None
    return TcpPipe(sock, outgoing, cx.scheduler).incoming


@tcp.func("accept")
async def accept(cx: StoreState, port: int, outgoing: Stream) -> Stream:
    try:
        sock = await accept_socket(port)
    except OSError as e:
        StreamReader(outgoing, is_bytes=True).close()
        raise WitError(f"accept on port {port} failed: {e.strerror or e}") from None
    return TcpPipe(sock, outgoing, cx.scheduler).incoming
