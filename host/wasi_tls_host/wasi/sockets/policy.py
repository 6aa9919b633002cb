"""The network policy: which addresses a guest may connect to, bind (and so listen on), and
whether it may look names up. Both WASI versions call the same checks before any system
call; a denied call is ``access-denied`` for the guest and a warning on the
``wasi_tls_host.sockets`` logger.

``WasiConfig.network`` is a ``NetworkPolicy``; None denies everything.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Union

from ...runtime.records import FrozenFields, ValueFields
from ...runtime.values import WitError

log = logging.getLogger("wasi_tls_host.sockets")

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class AddressPattern(FrozenFields):
    """``HOST:PORTS``: HOST is ``*``, an address, a CIDR block, ``localhost`` or ``[v6]``;
    PORTS is ``*``, a port, or a range ``low-high``."""

    networks: tuple[IPNetwork, ...] | None  # None: any address
    low_port: int
    high_port: int
    text: str
    _fields = ("networks", "low_port", "high_port", "text")

    def __init__(self, networks: tuple[IPNetwork, ...] | None, low_port: int, high_port: int, text: str = "") -> None:
        object.__setattr__(self, "networks", networks)
        object.__setattr__(self, "low_port", low_port)
        object.__setattr__(self, "high_port", high_port)
        object.__setattr__(self, "text", text)

    @classmethod
    def parse(cls, text: str) -> AddressPattern:
        raw = text.strip()
        if raw.startswith("["):
            host, sep, rest = raw[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [IPV6]:PORT")
            ports = rest[1:]
        else:
            host, sep, ports = raw.rpartition(":")
            if not sep or not host:
                raise ValueError(f"{text!r}: expected HOST:PORT (e.g. 127.0.0.1:8443, *:443, [::1]:*)")
            if ":" in host:
                raise ValueError(f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:443")
        networks: tuple[IPNetwork, ...] | None
        if host == "*":
            networks = None
        elif host == "localhost":
            networks = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
        else:
            try:
                networks = (ipaddress.ip_network(host, strict=False),)
            except ValueError:
                raise ValueError(f"{text!r}: {host!r} is not an address or CIDR block (names are not allowed: policy applies to addresses)") from None
        if ports == "*":
            low, high = 0, 65535
        else:
            first, dash, last = ports.partition("-")
            try:
                low = int(first)
                high = int(last) if dash else low
            except ValueError:
                raise ValueError(f"{text!r}: port must be *, N or N-M") from None
            if not (0 <= low <= high <= 65535):
                raise ValueError(f"{text!r}: port range out of 0-65535")
        return cls(networks, low, high, raw)

    def matches(self, ip: IPAddress, port: int) -> bool:
        if not (self.low_port <= port <= self.high_port):
            return False
        return self.networks is None or any(ip.version == n.version and ip in n for n in self.networks)


class NetworkPolicy(ValueFields):
    """What a guest may do on the network. The default (and ``WasiConfig.network=None``)
    denies everything; grant with ``allow_connect("127.0.0.1:*")`` etc. or ``inherit()``."""

    _fields = ("connect", "bind", "dns", "reuse_port", "listeners")

    def __init__(self, connect: list[AddressPattern] | None = None, bind: list[AddressPattern] | None = None, dns: bool = False,
                 reuse_port: bool = False, listeners: dict[tuple[IPAddress, int], int] | None = None) -> None:
        self.connect: list[AddressPattern] = [] if connect is None else connect
        self.bind: list[AddressPattern] = [] if bind is None else bind
        self.dns = dns
        # Binds set SO_REUSEPORT, so that several host processes (``--workers``) serve one
        # address and the kernel spreads connections among them.
        self.reuse_port = reuse_port
        # Listening sockets handed down by a supervisor (``--workers``), by local address: the
        # guest's first TCP bind to one of these addresses adopts that socket (and removes it
        # from here) instead of binding its own, so every worker accepts from one queue and a
        # worker that stops or dies leaves the connections waiting there to the others.
        self.listeners: dict[tuple[IPAddress, int], int] = {} if listeners is None else listeners

    @classmethod
    def inherit(cls) -> NetworkPolicy:
        """Everything the host process itself may do."""
        anything = AddressPattern.parse("*:*")
        return cls([anything], [anything], True)

    def allow_connect(self, pattern: str) -> NetworkPolicy:
        self.connect.append(AddressPattern.parse(pattern))
        return self

    def allow_listen(self, pattern: str) -> NetworkPolicy:
        """Allow binding (TCP and UDP) and so listening on matching local addresses."""
        self.bind.append(AddressPattern.parse(pattern))
        return self

    def allow_dns(self) -> NetworkPolicy:
        self.dns = True
        return self

    def may_connect(self, ip: IPAddress, port: int) -> bool:
        return any(p.matches(ip, port) for p in self.connect)

    def may_bind(self, ip: IPAddress, port: int) -> bool:
        return any(p.matches(ip, port) for p in self.bind)


def format_address(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def policy_of(wasi: Any) -> NetworkPolicy:
    """The policy of a store's WASI context (deny-all when there is none)."""
    policy = getattr(wasi, "network", None)
    return policy if isinstance(policy, NetworkPolicy) else NetworkPolicy()


def deny(what: str) -> WitError:
    log.warning("network policy denied %s", what)
    return WitError("access-denied")


def check_connect(wasi: Any, ip: IPAddress, port: int, what: str) -> None:
    """``access-denied`` unless the policy lets the guest reach ``ip:port`` (TCP connect,
    UDP connect and send destinations)."""
    if not policy_of(wasi).may_connect(ip, port):
        raise deny(f"{what} to {format_address(ip, port)}")


def check_bind(wasi: Any, ip: IPAddress, port: int, what: str) -> None:
    """``access-denied`` unless the policy lets the guest bind ``ip:port`` (TCP and UDP
    binds, explicit or implicit, hence listening)."""
    if not policy_of(wasi).may_bind(ip, port):
        raise deny(f"{what} on {format_address(ip, port)}")


def check_dns(wasi: Any, name: str) -> None:
    if not policy_of(wasi).dns:
        raise deny(f"name lookup of {name!r}")
