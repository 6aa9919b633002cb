"""What the engine's TCP and UDP sockets share: the OS socket (held through a
``SharedSocket``), the address family, the options both kinds have, and letting go."""

from __future__ import annotations

import socket

from ...runtime.values import WitError
from .registry import SharedSocket, os_error

_MAX_I32 = 0x7FFF_FFFF


class EngineSocket:
    def __init__(self, shared: SharedSocket, family: str) -> None:
        self.shared = shared.acquire()
        self.family = family
        self._released = False

    @property
    def sock(self) -> socket.socket:
        return self.shared.sock

    def check_option(self) -> None:
        """Refuse an option call the socket's state does not answer (TCP: see ``CALLS``)."""

    def _get(self, level: int, option: int) -> int:
        self.check_option()
        try:
            return self.sock.getsockopt(level, option)
        except OSError as e:
            raise os_error(e) from None

    def _set(self, level: int, option: int, value: int) -> None:
        self.check_option()
        try:
            self.sock.setsockopt(level, option, value)
        except OSError as e:
            raise os_error(e) from None

    def hop_limit(self) -> int:
        """IP_TTL or IPV6_UNICAST_HOPS (0.2's UDP calls it the unicast hop limit)."""
        return min(255, self._get(*_hop_limit_option(self.family)))

    def set_hop_limit(self, value: int) -> None:
        if value == 0:
            raise WitError("invalid-argument")
        self._set(*_hop_limit_option(self.family), value)

    def receive_buffer_size(self) -> int:
        return self._get(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def set_receive_buffer_size(self, value: int) -> None:
        self._set(socket.SOL_SOCKET, socket.SO_RCVBUF, _buffer_size(value))

    def send_buffer_size(self) -> int:
        return self._get(socket.SOL_SOCKET, socket.SO_SNDBUF)

    def set_send_buffer_size(self, value: int) -> None:
        self._set(socket.SOL_SOCKET, socket.SO_SNDBUF, _buffer_size(value))

    def release(self) -> None:
        """The socket resource is gone (its streams and tasks may still hold the OS socket)."""
        if not self._released:
            self._released = True
            self.shared.release()


def _hop_limit_option(family: str) -> tuple[int, int]:
    if family == "ipv4":
        return socket.IPPROTO_IP, socket.IP_TTL
    return socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS


def _buffer_size(value: int) -> int:
    """A buffer size to set: 0 is invalid-argument, anything larger is clamped."""
    if value == 0:
        raise WitError("invalid-argument")
    return min(value, _MAX_I32)
