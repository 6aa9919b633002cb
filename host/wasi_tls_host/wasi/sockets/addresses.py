"""Socket addresses between their WIT shape (the same in WASI 0.2 and 0.3), Python's
``ipaddress`` and the OS tuples of the ``socket`` module, and the address checks the spec
asks for (each failing one is ``invalid-argument``)."""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from typing import Any

from ...runtime.records import FrozenFields
from ...runtime.values import Variant, WitError
from .policy import IPAddress

FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


class SockAddr(FrozenFields):
    ip: IPAddress
    port: int
    flow_info: int
    scope_id: int
    _fields = ("ip", "port", "flow_info", "scope_id")

    def __init__(self, ip: IPAddress, port: int, flow_info: int = 0, scope_id: int = 0) -> None:
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "flow_info", flow_info)
        object.__setattr__(self, "scope_id", scope_id)

    @property
    def family(self) -> str:
        return "ipv4" if self.ip.version == 4 else "ipv6"

    def os_tuple(self) -> tuple[Any, ...]:
        if self.ip.version == 4:
            return (str(self.ip), self.port)
        return (str(self.ip), self.port, self.flow_info, self.scope_id)

    def to_wit(self) -> Variant:
        if isinstance(self.ip, ipaddress.IPv4Address):
            return Variant("ipv4", {"port": self.port, "address": _wit_words(self.ip)})
        return Variant("ipv6", {
            "port": self.port,
            "flow_info": self.flow_info,
            "address": _wit_words(self.ip),
            "scope_id": self.scope_id,
        })

    @classmethod
    def from_os(cls, addr: tuple[Any, ...]) -> SockAddr:
        ip = _os_ip(addr[0])
        if len(addr) >= 4:
            return cls(ip, addr[1], addr[2], addr[3])
        return cls(ip, addr[1])

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


# Kept per address: a server asks for each client's address (a peer's, accept-socket's),
# and parsing the text and packing it again took ~4 us of every connection; clients come
# from few addresses. (Both are immutable; a text that is no address is not kept.)
@functools.lru_cache(maxsize=1024)
def _os_ip(text: str) -> IPAddress:
    """The address of an OS address tuple's host text (a scope suffix dropped)."""
    return ipaddress.ip_address(text.split("%")[0])


@functools.lru_cache(maxsize=1024)
def _wit_words(ip: IPAddress) -> tuple[int, ...]:
    """An address as WIT has it: 4 octets, or 8 16-bit words for IPv6."""
    if isinstance(ip, ipaddress.IPv4Address):
        return tuple(ip.packed)
    return struct.unpack("!8H", ip.packed)  # type: ignore[no-any-return]


def unspecified(family: str) -> IPAddress:
    """``0.0.0.0`` or ``::``: where an implicit bind binds."""
    return ipaddress.IPv4Address(0) if family == "ipv4" else ipaddress.IPv6Address(0)


def os_address_text(addr: tuple[Any, ...]) -> str:
    """``host:port`` (``[v6]:port``) of an address tuple from the socket module."""
    return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"


def ip_to_wit(ip: IPAddress) -> Variant:
    if isinstance(ip, ipaddress.IPv4Address):
        return Variant("ipv4", tuple(ip.packed))
    return Variant("ipv6", struct.unpack("!8H", ip.packed))


def _is_mapped(ip: IPAddress) -> bool:
    return isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None


def _is_unicast(ip: IPAddress) -> bool:
    if ip.is_multicast:
        return False
    return not (isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"))


def local_address(family: str, value: Variant) -> SockAddr:
    """A bind address, checked as the spec asks: the socket's family, unicast, not an
    IPv4-mapped IPv6 address."""
    return _checked(family, *_key(value), False)


def remote_address(family: str, value: Variant) -> SockAddr:
    """A connect or send address: as ``local_address``, and neither the unspecified
    address nor port 0."""
    return _checked(family, *_key(value), True)


def _key(value: Variant) -> tuple[Any, ...]:
    p = value.payload
    if value.tag == "ipv4":
        return "ipv4", tuple(p["address"]), p["port"], 0, 0
    return value.tag, tuple(p["address"]), p["port"], p["flow_info"], p["scope_id"]


@functools.lru_cache(maxsize=256)
def _checked(family: str, tag: str, address: tuple[int, ...], port: int, flow_info: int, scope_id: int, remote: bool) -> SockAddr:
    """An address checked once (``SockAddr`` is immutable): a guest connects or sends to few
    addresses, and building and checking the ``ipaddress`` object each time took ~10 us of
    every connect. A refused one is not kept (each use raises again)."""
    if tag == "ipv4":
        addr = SockAddr(ipaddress.IPv4Address(bytes(address)), port)
    else:
        addr = SockAddr(ipaddress.IPv6Address(struct.pack("!8H", *address)), port, flow_info, scope_id)
    if addr.family != family or _is_mapped(addr.ip) or not _is_unicast(addr.ip):
        raise WitError("invalid-argument")
    if remote and (addr.ip.is_unspecified or addr.port == 0):
        raise WitError("invalid-argument")
    return addr
