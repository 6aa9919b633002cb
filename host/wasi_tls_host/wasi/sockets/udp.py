"""The UDP engine both WASI versions sit on: bind, connect (a default peer), datagrams.

Non-blocking like the TCP engine: ``send``/``receive`` raise ``BlockingIOError`` when the
kernel cannot take or has no datagram now. WASI 0.2's bind-in-progress and its datagram
streams are in ``p2.py``; WASI 0.3's async send and receive in ``p3.py``.
"""

from __future__ import annotations

import ctypes
import functools
import errno
import socket
import struct
from typing import Any

from ...runtime.values import WitError
from .addresses import SockAddr, local_address, remote_address
from .policy import check_bind, check_connect
from .base import EngineSocket
from .registry import SharedSocket, os_error, registry



@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, found when first needed: ``find_library`` runs ``ldconfig`` (start-up time)."""
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


MAX_DATAGRAM = 65535
# Datagram errors: a previous datagram's ICMP unreachable comes back as ECONNRESET.
DATAGRAM_ERRORS = {errno.ECONNRESET: "remote-unreachable"}


def _disconnect(sock: socket.socket) -> None:
    """``connect(fd, AF_UNSPEC)``: forget a UDP socket's peer (Python has no spelling for it)."""
    unspec = struct.pack("=H14x", socket.AF_UNSPEC)
    if _libc().connect(sock.fileno(), ctypes.c_char_p(unspec), len(unspec)) != 0:
        code = ctypes.get_errno()
        if code not in (0, errno.EAFNOSUPPORT):  # Linux reports success; some kernels EAFNOSUPPORT
            raise OSError(code, "disconnect failed")


class UdpSocket(EngineSocket):
    """One UDP socket of a guest, whichever WASI version made it."""

    def __init__(self, shared: SharedSocket, family: str) -> None:
        super().__init__(shared, family)
        self.bound = False
        self.remote: SockAddr | None = None  # the peer of a "connected" socket

    @classmethod
    def create(cls, wasi: Any, family: str) -> UdpSocket:
        return cls(registry(wasi).new_socket(family, socket.SOCK_DGRAM), family)

    def bind(self, wasi: Any, value: Any) -> None:
        """Bind to the WIT address ``value`` (checked as the spec asks, then against the policy)."""
        if self.bound:
            raise WitError("invalid-state")
        addr = local_address(self.family, value)
        check_bind(wasi, addr.ip, addr.port, "UDP bind")
        try:
            self.sock.bind(addr.os_tuple())
        except OSError as e:
            raise os_error(e) from None
        self.bound = True

    def connect(self, wasi: Any, value: Any, what: str = "UDP connect") -> None:
        """Make the WIT address ``value`` the default peer (binding implicitly if need be);
        the previous peer is forgotten first, so a failed connect leaves it unconnected."""
        addr = remote_address(self.family, value)
        check_connect(wasi, addr.ip, addr.port, what)
        self.disconnect_if_connected()
        try:
            self.sock.connect(addr.os_tuple())
        except OSError as e:
            raise os_error(e, {**DATAGRAM_ERRORS, errno.EADDRNOTAVAIL: "address-in-use"}) from None
        self.remote = addr
        self.bound = True

    def disconnect_if_connected(self) -> None:
        if self.remote is not None:
            try:
                _disconnect(self.sock)
            except OSError as e:
                raise os_error(e) from None
            self.remote = None

    def destination(self, wasi: Any, target: Any) -> SockAddr | None:
        """Where a datagram with WIT address ``target`` (or None) goes; None: the peer of a
        connected socket. invalid-argument when there is no peer to send to or ``target``
        is not it; the policy decides for unconnected sockets."""
        addr = remote_address(self.family, target) if target is not None else None
        if self.remote is not None:
            if addr is not None and addr != self.remote:
                raise WitError("invalid-argument")
            return None
        if addr is None:
            raise WitError("invalid-argument")
        check_connect(wasi, addr.ip, addr.port, "UDP send")
        return addr

    def send(self, data: Any, addr: SockAddr | None) -> None:
        """One datagram, to ``addr`` or the peer (see ``destination``)."""
        try:
            if addr is None:
                self.sock.send(data)
            else:
                self.sock.sendto(data, addr.os_tuple())
        except (BlockingIOError, InterruptedError):
            raise BlockingIOError() from None
        except OSError as e:
            raise os_error(e, DATAGRAM_ERRORS) from None
        self.bound = True  # an unbound socket is bound by its first send

    def receive(self) -> tuple[bytes, SockAddr]:
        try:
            data, source = self.sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            raise BlockingIOError() from None
        except OSError as e:
            raise os_error(e, DATAGRAM_ERRORS) from None
        return data, SockAddr.from_os(source)

    def local_address(self) -> SockAddr:
        if not self.bound:
            raise WitError("invalid-state")
        return SockAddr.from_os(self.sock.getsockname())

    def remote_address(self) -> SockAddr:
        if self.remote is None:
            raise WitError("invalid-state")
        return SockAddr.from_os(self.sock.getpeername())
