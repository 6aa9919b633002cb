"""Every OS socket a store opened, shared by both WASI versions and TLS.

* ``SharedSocket``: one OS socket used by several host objects (a socket resource, its
  streams, a host task moving bytes); the descriptor is closed when the last user lets go,
  or when the store closes, so no descriptor outlives its guest.
* ``SocketRegistry``: a store's open sockets: ``--max-sockets``, graceful stop
  (``stop_accepting``, ``open_connections``, ``is_listening``), and closing what is left
  when the store closes.
* ``ConnectionRecord``: what an accepted connection did (peer, bytes each way, how it
  ended, and what layers above such as TLS add); one access-log line when it closes, on the
  ``wasi_tls_host.access`` logger.
* ``error_code``: errno -> wasi:sockets error code (the 0.2 names; ``p3.py`` renames the
  few that differ in 0.3).
"""

from __future__ import annotations

import errno
import json
import logging
import select
import socket
import threading
import time
from typing import Any

from ...runtime.records import ValueFields
from ...runtime.values import WitError
from ..io import Notifier
from .addresses import FAMILIES

log = logging.getLogger("wasi_tls_host.sockets")
access_log = logging.getLogger("wasi_tls_host.access")

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


# Sockets are made with this flag where the system has it (Linux): created non-blocking.
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)


def error_code(e: OSError, overrides: dict[int, str] | None = None) -> str:
    code = e.errno or 0
    if overrides and code in overrides:
        return overrides[code]
    return ERRNO_CODES.get(code, "unknown")


def os_error(e: OSError, overrides: dict[int, str] | None = None) -> WitError:
    return WitError(error_code(e, overrides))


class ConnectionRecord(ValueFields):
    """One accepted connection, logged as one grep-able ``key=value`` line when it closes."""

    _fields = ("peer", "accepted_ns", "bytes_in", "bytes_out", "end", "fields")

    def __init__(self, peer: str, accepted_ns: int | None = None, bytes_in: int = 0, bytes_out: int = 0,
                 end: str | None = None, fields: dict[str, str] | None = None) -> None:
        self.peer = peer
        self.accepted_ns = time.monotonic_ns() if accepted_ns is None else accepted_ns
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.end = end  # the first thing that ended it (peer-closed, connection-reset, ...)
        # Added by the layers above (TLS: sni, alpn, version, suite, client, handshake_ms, tls).
        self.fields: dict[str, str] = {} if fields is None else fields

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

    def __init__(self, max_sockets: int | None = None) -> None:
        self.max_sockets = max_sockets
        # Open sockets only (each leaves at its close): counted on every new socket, read
        # from the embedder's thread (serve.py) while the guest's thread adds to it.
        self._live: set[SharedSocket] = set()
        self._lock = threading.Lock()
        # Graceful stop: listeners stop accepting (and close) at the guest's next look at
        # them; connections already accepted go on.
        self.draining = False
        # Set when the embedder ends the guest with connections open: they are logged as
        # cut by the host, whatever closes them next.
        self.cutting = False
        # Signalled by stop_accepting (from any thread), so that host tasks waiting on a
        # listener (WASI 0.3 listen streams) hear of the stop on the guest's thread.
        self._drain_notifier: Notifier | None = None
        self.closed = False

    def add(self, shared: SharedSocket) -> None:
        shared.registry = self
        with self._lock:
            if not self.closed:
                self._live.add(shared)
                return
        # The store has closed (a host task outlived it): nothing may keep a descriptor now.
        shared.close()

    def forget(self, shared: SharedSocket) -> None:
        with self._lock:
            self._live.discard(shared)

    def _snapshot(self) -> list[SharedSocket]:
        with self._lock:
            return list(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def check_limit(self, what: str) -> None:
        """``new-socket-limit`` once the guest holds ``GuestLimits.max_sockets`` open sockets."""
        limit = self.max_sockets
        if limit is not None and len(self._live) >= limit:
            log.warning("%s refused: the guest already has %d open sockets (max_sockets, --max-sockets)", what, limit)
            raise WitError("new-socket-limit")

    def new_socket(self, family: str, kind: int) -> SharedSocket:
        """A new non-blocking OS socket of ``family`` ("ipv4"/"ipv6"); IPv6 ones v6-only."""
        self.check_limit("creating a socket")
        if self.closed:
            raise WitError("invalid-state")
        try:
            # Non-blocking from the start (one system call fewer than setblocking after).
            sock = socket.socket(FAMILIES[family], kind | _NONBLOCK)
        except OSError as e:
            raise os_error(e, {errno.EAFNOSUPPORT: "not-supported"}) from None
        try:
            if family == "ipv6":
                # WASI: IPv6 sockets are always v6-only.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            return SharedSocket(sock, self)
        except OSError as e:
            sock.close()
            raise os_error(e) from None

    # --- graceful stop (stop_accepting runs on the embedder's thread) -----------------------
    def drain_fd(self) -> int:
        """A descriptor that becomes readable at ``stop_accepting`` (made on first use)."""
        with self._lock:
            if self._drain_notifier is None:
                self._drain_notifier = Notifier()
                if self.draining:
                    self._drain_notifier.notify()
            return self._drain_notifier.fd

    def stop_accepting(self) -> None:
        with self._lock:
            self.draining = True
            if self._drain_notifier is not None:
                self._drain_notifier.notify()

    def open_connections(self) -> int:
        """Accepted connections not closed yet."""
        return sum(1 for s in self._snapshot() if s.record is not None and not s.closed)

    def listening(self) -> bool:
        return any(s.listening and not s.closed for s in self._snapshot())

    def close_all(self) -> None:
        with self._lock:
            self.closed = True
        for shared in self._snapshot():
            if shared.record is not None:
                shared.record.note_end("host-stopped")
            shared.close()
        with self._lock:
            if self._drain_notifier is not None:
                self._drain_notifier.close()
                self._drain_notifier = None


class SharedSocket:
    """An OS socket with a count of host objects using it; closed when the count is 0."""

    def __init__(self, sock: socket.socket, registry: SocketRegistry | None = None, record: ConnectionRecord | None = None) -> None:
        if sock.gettimeout() != 0.0:  # (not made non-blocking already)
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


def registry(wasi: Any) -> SocketRegistry:
    """The socket registry of a store's WASI context."""
    return wasi.sockets  # type: ignore[no-any-return]
