"""The TCP engine both WASI versions sit on: OS sockets, one state machine, socket options.

The rules of this file (as ``tls/states.py``):

* A socket's state is a ``TcpState``; it changes only through ``TRANSITIONS`` (``advance``),
  and ``CALLS`` says which states answer which operation. ``TcpSocket.require`` is the one
  place a wrong-state call is rejected (``invalid-state``).
* Every OS socket is non-blocking. Nothing here waits: WASI 0.2 (``p2.py``) polls and
  retries, WASI 0.3 (``p3.py``) awaits readiness on the store's scheduler
  (``TcpConnection.readable``/``writable``).
* What is particular to one WASI version stays in its surface: 0.2's ``start-*``/``finish-*``
  pairs (``concurrency-conflict``, ``not-in-progress``) in ``p2.py``; 0.3's once-only
  ``send``/``receive`` in ``p3.py``.

A connected socket is used through ``TcpConnection`` handles: a byte source and sink with
readiness that counts bytes for the access log. 0.2's wasi:io streams, 0.3's receive and
send tasks and TLS each hold one; the OS socket closes when the last handle and the socket
resource are gone.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import logging
import os
import select
import socket
import struct
import sys
import termios
from typing import Any, Mapping

from ...runtime.scheduler import readable, writable
from ...runtime.values import WitError
from .addresses import SockAddr, local_address, os_address_text, remote_address, unspecified
from .policy import IPAddress, check_bind, check_connect, format_address, policy_of
from .base import EngineSocket
from .registry import ConnectionRecord, SharedSocket, error_code, os_error, poll_now, registry

log = logging.getLogger("wasi_tls_host.sockets")


class TcpState(enum.Enum):
    UNBOUND = "unbound"
    BOUND = "bound"
    LISTENING = "listening"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"        # a failed connect or listen; only dropping it is left


class TcpEvent(enum.Enum):
    BIND = "bind"
    LISTEN = "listen"        # from UNBOUND: WASI 0.3's implicit bind
    CONNECT = "connect"      # a connect started (from UNBOUND it binds implicitly)
    CONNECTED = "connected"
    FAIL = "fail"


_S, _E = TcpState, TcpEvent

TRANSITIONS: Mapping[TcpState, Mapping[TcpEvent, TcpState]] = {
    _S.UNBOUND: {_E.BIND: _S.BOUND, _E.LISTEN: _S.LISTENING, _E.CONNECT: _S.CONNECTING, _E.FAIL: _S.CLOSED},
    _S.BOUND: {_E.LISTEN: _S.LISTENING, _E.CONNECT: _S.CONNECTING, _E.FAIL: _S.CLOSED},
    _S.CONNECTING: {_E.CONNECTED: _S.CONNECTED, _E.FAIL: _S.CLOSED},
    _S.LISTENING: {},
    _S.CONNECTED: {},
    _S.CLOSED: {},
}

# Which states answer each operation (anything else is invalid-state).
_HAS_SOCKET = frozenset({_S.UNBOUND, _S.BOUND, _S.LISTENING, _S.CONNECTED})
CALLS: Mapping[str, frozenset[TcpState]] = {
    "bind": frozenset({_S.UNBOUND}),
    "listen": frozenset({_S.BOUND}),                       # 0.2: an explicit bind first
    "listen-or-bind": frozenset({_S.UNBOUND, _S.BOUND}),   # 0.3: binds if need be
    "connect": frozenset({_S.UNBOUND, _S.BOUND}),
    "accept": frozenset({_S.LISTENING}),
    "local-address": frozenset({_S.BOUND, _S.LISTENING, _S.CONNECTED}),
    "remote-address": frozenset({_S.CONNECTED}),
    "send": frozenset({_S.CONNECTED}),
    "receive": frozenset({_S.CONNECTED}),
    "shutdown": frozenset({_S.CONNECTED}),
    "set-listen-backlog-size": frozenset({_S.UNBOUND, _S.BOUND, _S.LISTENING}),
    "option": _HAS_SOCKET,                                 # keep-alive, hop limit, buffers
}
# The calls a socket whose WASI 0.3 connect failed answers with that failure (the others
# with invalid-state), as wasmtime does.
REPORTS_FAILURE = frozenset({"local-address", "remote-address", "send", "set-listen-backlog-size", "option"})

DEFAULT_BACKLOG = 128
_NS = 1_000_000_000
_MAX_KEEPIDLE = 32767  # Linux limits (seconds, seconds, probes)
_MAX_KEEPINTVL = 32767
_MAX_KEEPCNT = 127
_MAX_BACKLOG = 0x7FFF_FFFF
# connect: an implicit bind that found no ephemeral port (the spec's address-in-use).
_CONNECT_ERRORS = {errno.EADDRNOTAVAIL: "address-in-use"}
# Linux's TCP_INFO (its first byte is the connection's state), and the states of a connect
# that succeeded: TCP_ESTABLISHED, and TCP_CLOSE_WAIT (the peer has sent its FIN already).
# (Other systems number their states otherwise: they poll.)
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None
_CONNECTED_STATES = frozenset({b"\x01", b"\x08"})


class TcpSocket(EngineSocket):
    """One TCP socket of a guest, whichever WASI version made it."""

    def __init__(self, shared: SharedSocket, family: str, state: TcpState = TcpState.UNBOUND) -> None:
        super().__init__(shared, family)
        self.state = state
        self.failure: str | None = None  # why a WASI 0.3 connect failed (see REPORTS_FAILURE)
        self.backlog = DEFAULT_BACKLOG

    @classmethod
    def create(cls, wasi: Any, family: str) -> TcpSocket:
        return cls(registry(wasi).new_socket(family, socket.SOCK_STREAM), family)

    def __repr__(self) -> str:
        return f"<TcpSocket {self.family} {self.state.value}>"

    # --- the state machine --------------------------------------------------------------
    def require(self, call: str) -> None:
        """The one place a call in the wrong state is refused."""
        if self.state not in CALLS[call] or self.shared.closed:
            if self.failure is not None and call in REPORTS_FAILURE:
                raise WitError(self.failure)
            raise WitError("invalid-state")

    def advance(self, event: TcpEvent) -> None:
        following = TRANSITIONS[self.state].get(event)
        if following is None:
            raise RuntimeError(f"tcp-socket: no transition for {event.value} in state {self.state.value}")
        self.state = following

    # --- bind and listen ----------------------------------------------------------------
    def bind(self, wasi: Any, value: Any) -> None:
        """Bind to the WIT address ``value`` (checked as the spec asks, then against the
        policy), or take over the listening socket a supervisor handed down for it. A
        failed bind leaves the socket unbound."""
        self.require("bind")
        addr = local_address(self.family, value)
        check_bind(wasi, addr.ip, addr.port, "TCP bind")
        if not self._adopt_listener(wasi, addr.ip, addr.port):
            try:
                # The spec: a bind must not fail because of a connection in TIME_WAIT (Linux
                # wants SO_REUSEADDR on the earlier socket too, so on every bind).
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if addr.port != 0 and policy_of(wasi).reuse_port:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                self.sock.bind(addr.os_tuple())
            except OSError as e:
                raise os_error(e) from None
        self.advance(TcpEvent.BIND)

    def _adopt_listener(self, wasi: Any, ip: IPAddress, port: int) -> bool:
        """Take over the listening socket a supervisor handed down for this address: its
        descriptor replaces this socket's own (already bound and listening; the guest's
        listen then only sets the backlog). The handed-down descriptor is consumed, so that
        when the guest closes the listener (a graceful stop) this process holds no copy."""
        fd = policy_of(wasi).listeners.pop((ip, port), None)
        if fd is None:
            return False
        try:
            os.dup2(fd, self.sock.fileno(), inheritable=False)
            # O_NONBLOCK belongs to the open socket, which now is the handed-down one (shared
            # by every worker, which all use it non-blocking).
            self.sock.setblocking(False)
        except OSError as e:
            log.warning("cannot use the listening socket handed down for %s (%s): binding one of our own", format_address(ip, port), e)
            return False
        finally:
            os.close(fd)
        return True

    def listen(self, wasi: Any, *, implicit_bind: bool = False) -> None:
        """Start listening. With ``implicit_bind`` (WASI 0.3) an unbound socket is bound
        first to a free port of every address, which the policy must allow. A failed listen
        closes the socket (the spec: only dropping it is left)."""
        self.require("listen-or-bind" if implicit_bind else "listen")
        if self.state is TcpState.UNBOUND:
            check_bind(wasi, unspecified(self.family), 0, "TCP listen without a bind (it binds every address)")
        try:
            self.sock.listen(self.backlog)
        except OSError as e:
            self.advance(TcpEvent.FAIL)
            raise os_error(e) from None
        self.shared.listening = True
        self.advance(TcpEvent.LISTEN)

    def set_listen_backlog_size(self, value: int) -> None:
        if value == 0:
            raise WitError("invalid-argument")
        self.require("set-listen-backlog-size")
        self.backlog = min(value, _MAX_BACKLOG)
        if self.state is TcpState.LISTENING:
            try:
                self.sock.listen(self.backlog)  # Linux updates the backlog of a listener
            except OSError as e:
                raise os_error(e, {errno.EINVAL: "not-supported"}) from None

    def draining(self) -> bool:
        """Graceful stop: a draining store's listener closes (so the kernel refuses new
        clients, or hands them to another worker) and never has a client to accept."""
        reg = self.shared.registry
        if reg is None or not reg.draining or self.state is not TcpState.LISTENING:
            return False
        if not self.shared.closed:
            log.info("stopped accepting on %s", os_address_text(self.sock.getsockname()))
            self.shared.close()
        return True

    def accept(self, wasi: Any) -> TcpSocket | None:
        """A connection waiting on this listener (connected, counted for the access log),
        or None if there is none now. Over ``--max-sockets`` the connection is closed at
        once (rather than left to fill the backlog) and the guest hears new-socket-limit."""
        self.require("accept")
        if self.draining():
            return None
        try:
            conn, peer = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        reg = registry(wasi)
        try:
            reg.check_limit("accepting a connection")
        except WitError:
            conn.close()
            raise
        client = TcpSocket(SharedSocket(conn, reg, ConnectionRecord(os_address_text(peer))), self.family, TcpState.CONNECTED)
        client._tune_connected()
        return client

    # --- connect --------------------------------------------------------------------------
    def start_connect(self, wasi: Any, value: Any) -> None:
        """Begin a non-blocking connect to the WIT address ``value`` (checked as the spec
        asks, then against the policy). Fails at once (CLOSED) or goes CONNECTING."""
        self.require("connect")
        addr = remote_address(self.family, value)
        check_connect(wasi, addr.ip, addr.port, "TCP connect")
        try:
            result = self.sock.connect_ex(addr.os_tuple())
        except OSError as e:
            result = e.errno or errno.EINVAL
        self.advance(TcpEvent.CONNECT)
        if result in (0, errno.EINPROGRESS, errno.EAGAIN):
            return
        self.advance(TcpEvent.FAIL)
        raise os_error(OSError(result, ""), _CONNECT_ERRORS)

    def connect_done(self) -> bool:
        """Whether the connect in progress has resolved (success or failure)."""
        return bool(poll_now(self.sock, select.POLLOUT))

    def finish_connect(self) -> None:
        """Resolve a connect whose socket is writable: CONNECTED, or CLOSED and its error."""
        failure = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if failure:
            self.advance(TcpEvent.FAIL)
            raise os_error(OSError(failure, ""), _CONNECT_ERRORS)
        self.advance(TcpEvent.CONNECTED)
        self._tune_connected()

    async def connect(self, wasi: Any, value: Any) -> None:
        """``start_connect``, then wait on the store's scheduler until it resolves. A
        failure is kept: the socket's later calls report it (``REPORTS_FAILURE``)."""
        self.require("connect")
        try:
            self.start_connect(wasi, value)
            if self._established():
                self.advance(TcpEvent.CONNECTED)
                self._tune_connected()
                return
            while not self.connect_done():
                await writable(self.sock.fileno())
            self.finish_connect()
        except WitError as e:
            if self.state is TcpState.CLOSED:
                self.failure = e.payload  # this attempt failed (not: it was refused)
            raise
        except BaseException:
            self.advance(TcpEvent.FAIL)  # cancelled: the socket is of no further use
            raise

    def _established(self) -> bool:
        """Whether the connect just started has already succeeded, as one to a local peer
        usually has once ``connect`` returns (the kernel ran the whole TCP handshake in it):
        the kernel's TCP state, one system call instead of a poll and SO_ERROR. False when it
        cannot say (another system, an error), and for anything but established: the poll
        and SO_ERROR decide then."""
        if _TCP_INFO is None:
            return False
        try:
            state = self.sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)
        except OSError:
            return False
        return state[:1] in _CONNECTED_STATES

    def _tune_connected(self) -> None:
        # Nagle's algorithm off, as asyncio does: guests write whole messages (TLS flights,
        # replies), and holding a small write for the peer's delayed ACK cost a guest TLS
        # server about 40 ms per connection (session tickets, then the first reply).
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not fatal: only latency

    def connection(self, call: str) -> TcpConnection:
        """A new handle on this connected socket for ``call`` ("send" or "receive"),
        released by its user when done."""
        self.require(call)
        return TcpConnection(self.shared)

    # --- addresses ----------------------------------------------------------------------
    def local_address(self) -> SockAddr:
        self.require("local-address")
        try:
            return SockAddr.from_os(self.sock.getsockname())
        except OSError as e:
            raise os_error(e) from None

    def remote_address(self) -> SockAddr:
        self.require("remote-address")
        try:
            return SockAddr.from_os(self.sock.getpeername())
        except OSError as e:
            raise os_error(e, {errno.ENOTCONN: "invalid-state"}) from None

    def is_listening(self) -> bool:
        return self.state is TcpState.LISTENING

    # --- options (hop limit and buffer sizes: EngineSocket) -----------------------------
    def check_option(self) -> None:
        self.require("option")

    def keep_alive_enabled(self) -> bool:
        return bool(self._get(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    def set_keep_alive_enabled(self, value: bool) -> None:
        self._set(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(value))

    def keep_alive_idle_time(self) -> int:
        return self._get(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) * _NS

    def set_keep_alive_idle_time(self, ns: int) -> None:
        self._set(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _ns_to_seconds(ns, _MAX_KEEPIDLE))

    def keep_alive_interval(self) -> int:
        return self._get(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) * _NS

    def set_keep_alive_interval(self, ns: int) -> None:
        self._set(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _ns_to_seconds(ns, _MAX_KEEPINTVL))

    def keep_alive_count(self) -> int:
        return self._get(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)

    def set_keep_alive_count(self, value: int) -> None:
        if value == 0:
            raise WitError("invalid-argument")
        self._set(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, min(value, _MAX_KEEPCNT))


class TcpConnection:
    """One user's handle on a connected TCP socket: a byte source and sink with readiness.

    What WASI 0.2's streams, WASI 0.3's receive and send, and TLS move bytes through.
    Non-blocking: ``recv_into``/``send`` raise ``BlockingIOError`` when the kernel has
    nothing or takes nothing now, and ``readable()``/``writable()`` are what a host
    coroutine awaits on the store's scheduler until it does. Failures raise ``OSError``
    (``error_code(e)`` names it). Bytes moved and how the connection ended go to the access
    log record (accepted connections only). Holding a handle keeps the socket open;
    ``release`` lets go (the socket closes with its last user).
    """

    __slots__ = ("shared", "released")

    def __init__(self, shared: SharedSocket) -> None:
        self.shared = shared.acquire()
        self.released = False

    @property
    def sock(self) -> socket.socket:
        return self.shared.sock

    @property
    def record(self) -> ConnectionRecord | None:
        return self.shared.record

    @property
    def closed(self) -> bool:
        return self.shared.closed

    def fileno(self) -> int:
        return self.shared.sock.fileno()

    def readable(self) -> Any:
        """Await it: until the socket has bytes, the end of the stream or an error."""
        return readable(self.fileno())

    def writable(self) -> Any:
        return writable(self.fileno())

    def recv_into(self, view: Any) -> int:
        """Bytes straight into ``view`` (e.g. guest memory); 0 at the end of the stream."""
        return self._received(self._io(self.shared.sock.recv_into, view))

    def recv(self, n: int) -> bytes:
        data: bytes = self._io(self.shared.sock.recv, n)
        self._received(len(data))
        return data

    def send(self, data: Any) -> int:
        """What the kernel takes of ``data`` now (at least one byte)."""
        sent: int = self._io(self.shared.sock.send, data, socket.MSG_NOSIGNAL)
        record = self.shared.record
        if record is not None:
            record.bytes_out += sent
        return sent

    def _io(self, op: Any, *args: Any) -> Any:
        """One non-blocking socket call: BlockingIOError when it would wait; a failure is
        noted in the access-log record and raised."""
        try:
            return op(*args)
        except (BlockingIOError, InterruptedError):
            raise BlockingIOError() from None
        except OSError as e:
            self.note_failure(e)
            raise

    def _received(self, n: int) -> int:
        record = self.shared.record
        if record is not None:
            if n:
                record.bytes_in += n
            else:
                record.note_end("peer-closed")
        return n

    def queued(self) -> int:
        """Bytes the kernel holds for us to read (FIONREAD); 0 if it cannot say."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.shared.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    def note_failure(self, e: OSError) -> None:
        record = self.shared.record
        if record is not None:
            record.note_end(error_code(e))

    def shutdown_read(self) -> None:
        try:
            self.shared.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # already disconnected: nothing left to stop

    def shutdown_write(self) -> None:
        """Send FIN (after what the kernel already has)."""
        try:
            self.shared.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is gone already: nothing left to tell it

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.shared.release()


def _ns_to_seconds(value: int, limit: int) -> int:
    if value <= 0:
        raise WitError("invalid-argument")
    return max(1, min(limit, -(-value // _NS)))  # round up, then clamp: never an error
