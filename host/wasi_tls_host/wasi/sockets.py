"""wasi:sockets 0.2 (network, instance-network, ip-name-lookup, tcp, udp) over host sockets,
with a network policy that decides which addresses a guest may reach.

Every OS socket is non-blocking; the only place the host sleeps is ``io.block_until``.
The TCP state machine follows wasi-sockets' TcpSocketOperationalSemantics.md: OS ``bind``
and ``listen`` run inside ``start-*`` (so their errors are reported there) and the matching
``finish-*`` only completes the transition; ``connect`` is a real non-blocking connect.

Policy: ``WasiConfig.network`` is a ``NetworkPolicy`` (None denies everything). Connect
(TCP connect, UDP ``stream(remote)`` and ``send`` destinations) and bind (TCP and UDP bind,
hence listen) are checked against address patterns before any system call; a denied call
returns ``access-denied`` and is logged on the ``wasi_tls_host.sockets`` logger.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

from ..runtime.binding import Interface
from ..runtime.resources import HostResource
from ..runtime.store import StoreState
from ..runtime.values import Trap, Variant, WitError
from .io import (
    InputStream,
    IoError,
    Notifier,
    OutputStream,
    Pollable,
    ReadyPollable,
    Waits,
)
from .socket_streams import (
    ConnectionRecord,
    SharedSocket,
    SocketInput,
    SocketOutput,
    SocketPollable,
    SocketRegistry,
    error_code,
    poll_now,
)

log = logging.getLogger("wasi_tls_host.sockets")

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# ---------------------------------------------------------------------------------------
# Network policy


@dataclass(frozen=True)
class AddressPattern:
    """``HOST:PORTS``: HOST is ``*``, an address, a CIDR block, ``localhost`` or ``[v6]``;
    PORTS is ``*``, a port, or a range ``low-high``."""

    networks: tuple[IPNetwork, ...] | None  # None: any address
    low_port: int
    high_port: int
    text: str = ""

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


@dataclass
class NetworkPolicy:
    """What a guest may do on the network. The default (and ``WasiConfig.network=None``)
    denies everything; grant with ``allow_connect("127.0.0.1:*")`` etc. or ``inherit()``."""

    connect: list[AddressPattern] = field(default_factory=list)
    bind: list[AddressPattern] = field(default_factory=list)
    dns: bool = False
    # Binds set SO_REUSEPORT, so that several host processes (``--workers``) serve one
    # address and the kernel spreads connections among them.
    reuse_port: bool = False
    # Listening sockets handed down by a supervisor (``--workers``), by local address: the
    # guest's first TCP bind to one of these addresses adopts that socket (and removes it
    # from here) instead of binding its own, so every worker accepts from one queue and a
    # worker that stops or dies leaves the connections waiting there to the others.
    listeners: dict[tuple[IPAddress, int], int] = field(default_factory=dict)

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


def _policy(cx: StoreState) -> NetworkPolicy:
    policy = getattr(cx.wasi, "network", None)
    return policy if isinstance(policy, NetworkPolicy) else NetworkPolicy()


def _deny(what: str) -> WitError:
    log.warning("network policy denied %s", what)
    return WitError("access-denied")


def _check_connect(cx: StoreState, ip: IPAddress, port: int, what: str) -> None:
    if not _policy(cx).may_connect(ip, port):
        raise _deny(f"{what} to {format_address(ip, port)}")


def _check_bind(cx: StoreState, ip: IPAddress, port: int, what: str) -> None:
    if not _policy(cx).may_bind(ip, port):
        raise _deny(f"{what} on {format_address(ip, port)}")


def format_address(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _fmt_os(addr: tuple[Any, ...]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"


# ---------------------------------------------------------------------------------------
# Addresses


_FAMILY = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


@dataclass(frozen=True)
class SockAddr:
    ip: IPAddress
    port: int
    flow_info: int = 0
    scope_id: int = 0

    @property
    def family(self) -> str:
        return "ipv4" if self.ip.version == 4 else "ipv6"

    def os_tuple(self) -> tuple[Any, ...]:
        if self.ip.version == 4:
            return (str(self.ip), self.port)
        return (str(self.ip), self.port, self.flow_info, self.scope_id)

    def to_wit(self) -> Variant:
        if isinstance(self.ip, ipaddress.IPv4Address):
            return Variant("ipv4", {"port": self.port, "address": tuple(self.ip.packed)})
        return Variant("ipv6", {
            "port": self.port,
            "flow_info": self.flow_info,
            "address": struct.unpack("!8H", self.ip.packed),
            "scope_id": self.scope_id,
        })

    @classmethod
    def from_wit(cls, value: Variant) -> SockAddr:
        p = value.payload
        if value.tag == "ipv4":
            return cls(ipaddress.IPv4Address(bytes(p["address"])), p["port"])
        return cls(ipaddress.IPv6Address(struct.pack("!8H", *p["address"])), p["port"], p["flow_info"], p["scope_id"])

    @classmethod
    def from_os(cls, addr: tuple[Any, ...]) -> SockAddr:
        ip = ipaddress.ip_address(addr[0].split("%")[0])
        if len(addr) >= 4:
            return cls(ip, addr[1], addr[2], addr[3])
        return cls(ip, addr[1])


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


def _local_address_for_bind(family: str, value: Variant) -> SockAddr:
    """Validate a bind address as the spec asks (invalid-argument cases)."""
    addr = SockAddr.from_wit(value)
    if addr.family != family or _is_mapped(addr.ip) or not _is_unicast(addr.ip):
        raise WitError("invalid-argument")
    return addr


def _remote_address(family: str, value: Variant) -> SockAddr:
    """Validate a connect/send address as the spec asks (invalid-argument cases)."""
    addr = SockAddr.from_wit(value)
    if addr.family != family or _is_mapped(addr.ip) or not _is_unicast(addr.ip):
        raise WitError("invalid-argument")
    if addr.ip.is_unspecified or addr.port == 0:
        raise WitError("invalid-argument")
    return addr


# ---------------------------------------------------------------------------------------
# Per-store bookkeeping

_REGISTRIES: "weakref.WeakKeyDictionary[Any, SocketRegistry]" = weakref.WeakKeyDictionary()


def registry(cx: StoreState) -> SocketRegistry:
    """The store's socket registry; the store's close closes every socket still open."""
    ctx = cx.wasi
    reg = _REGISTRIES.get(ctx)
    if reg is None:
        reg = _REGISTRIES[ctx] = SocketRegistry()
        ctx.on_close(reg.close_all)
    return reg


def stop_accepting(ctx: Any) -> None:
    """Graceful stop of a store's servers (thread-safe): its listeners close at the guest's
    next look at them and accept nothing more; accepted connections go on."""
    reg = _REGISTRIES.get(ctx)
    if reg is not None:
        reg.stop_accepting()
    policy = getattr(ctx, "network", None)
    if isinstance(policy, NetworkPolicy):
        # Handed-down listeners the guest never took over: this process must not keep them
        # open, or the kernel would queue clients nobody accepts instead of refusing them.
        while policy.listeners:
            _, fd = policy.listeners.popitem()
            os.close(fd)
    ctx.interruptor.wake()


def cut_connections(ctx: Any) -> None:
    """Before the embedder ends a guest that still has connections: the access log says
    the host cut them."""
    reg = _REGISTRIES.get(ctx)
    if reg is not None:
        reg.cutting = True


def open_connections(ctx: Any) -> int:
    """Accepted connections of a store that are not closed yet."""
    reg = _REGISTRIES.get(ctx)
    return reg.open_connections() if reg is not None else 0


def is_listening(ctx: Any) -> bool:
    reg = _REGISTRIES.get(ctx)
    return reg is not None and reg.listening()


def _socket_limit(cx: StoreState) -> int | None:
    limits = getattr(getattr(cx.wasi, "config", None), "limits", None)
    return getattr(limits, "max_sockets", None)


def _check_socket_limit(cx: StoreState, what: str) -> None:
    """``new-socket-limit`` once the guest holds ``GuestLimits.max_sockets`` open sockets."""
    limit = _socket_limit(cx)
    if limit is not None and len(registry(cx)) >= limit:
        log.warning("%s refused: the guest already has %d open sockets (max_sockets, --max-sockets)", what, limit)
        raise WitError("new-socket-limit")


def _new_socket(cx: StoreState, family: str, kind: int) -> SharedSocket:
    _check_socket_limit(cx, "creating a socket")
    try:
        sock = socket.socket(_FAMILY[family], kind)
    except OSError as e:
        raise WitError(error_code(e, {errno.EAFNOSUPPORT: "not-supported"})) from None
    try:
        if family == "ipv6":
            # WASI: IPv6 sockets are always v6-only.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return SharedSocket(sock, registry(cx))
    except OSError as e:
        sock.close()
        raise WitError(error_code(e)) from None


# ---------------------------------------------------------------------------------------
# network, instance-network


class Network(HostResource):
    """A capability handle: the policy it stands for is the store's ``NetworkPolicy``."""


network_iface = Interface("wasi:sockets/network@0.2.8")
instance_network_iface = Interface("wasi:sockets/instance-network@0.2.8")
network_iface.resource("network", Network)


@network_iface.func("network-error-code")
def network_error_code(cx: StoreState, err: IoError) -> str | None:
    return err.code if err.domain == "sockets" and err.code in _ERROR_CODES else None


_ERROR_CODES = frozenset(
    "unknown access-denied not-supported invalid-argument out-of-memory timeout concurrency-conflict "
    "not-in-progress would-block invalid-state new-socket-limit address-not-bindable address-in-use "
    "remote-unreachable connection-refused connection-reset connection-aborted datagram-too-large "
    "name-unresolvable temporary-resolver-failure permanent-resolver-failure".split()
)


@instance_network_iface.func("instance-network")
def instance_network(cx: StoreState) -> Network:
    return Network()


# ---------------------------------------------------------------------------------------
# ip-name-lookup


# Lookups run on a small shared pool: a guest cannot make the host start a thread per name,
# and at most _MAX_PENDING_LOOKUPS wait for it (beyond that the guest hears
# temporary-resolver-failure and may retry).
_LOOKUP_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="wasi-dns")
_MAX_PENDING_LOOKUPS = 256
_pending_lookups = 0
_pending_lock = threading.Lock()


class ResolveAddressStream(HostResource):
    """One lookup, run by getaddrinfo on the lookup pool so the guest never blocks."""

    def __init__(self, name: str | None = None, addresses: list[IPAddress] | None = None) -> None:
        self._lock = threading.Lock()
        self._notifier: Notifier | None = None
        self._addresses: list[IPAddress] | None = addresses
        self._error: str | None = None
        if addresses is None:
            assert name is not None
            global _pending_lookups
            with _pending_lock:
                if _pending_lookups >= _MAX_PENDING_LOOKUPS:
                    raise WitError("temporary-resolver-failure")
                _pending_lookups += 1
            self._notifier = Notifier()
            _LOOKUP_POOL.submit(self._lookup_counted, name)

    def _lookup_counted(self, name: str) -> None:
        global _pending_lookups
        try:
            self._lookup(name)
        finally:
            with _pending_lock:
                _pending_lookups -= 1

    def _lookup(self, name: str) -> None:
        addresses: list[IPAddress] = []
        error: str | None = None
        try:
            for _, _, _, _, sa in socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM):
                ip = ipaddress.ip_address(sa[0].split("%")[0])
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    continue  # the spec: never return IPv4-mapped IPv6 addresses
                if ip not in addresses:
                    addresses.append(ip)
            if not addresses:
                error = "name-unresolvable"
        except socket.gaierror as e:
            error = {
                socket.EAI_NONAME: "name-unresolvable",
                getattr(socket, "EAI_NODATA", -5): "name-unresolvable",
                getattr(socket, "EAI_ADDRFAMILY", -9): "name-unresolvable",
                socket.EAI_AGAIN: "temporary-resolver-failure",
                socket.EAI_FAIL: "permanent-resolver-failure",
                socket.EAI_MEMORY: "out-of-memory",
            }.get(e.errno, "unknown")
        except Exception:
            error = "unknown"
        with self._lock:
            self._addresses, self._error = addresses, error
            if self._notifier is not None:
                self._notifier.notify()

    def _done(self) -> bool:
        with self._lock:
            return self._addresses is not None

    def next_address(self) -> Variant | None:
        with self._lock:
            if self._addresses is None:
                raise WitError("would-block")
            if self._error is not None:
                error, self._error = self._error, None
                self._addresses = []
                raise WitError(error)
            return ip_to_wit(self._addresses.pop(0)) if self._addresses else None

    def subscribe(self) -> Pollable:
        stream = self

        class LookupPollable(Pollable):
            def ready(self) -> bool:
                return stream._done()

            def add_waits(self, waits: Waits) -> None:
                with stream._lock:
                    if stream._notifier is None or stream._notifier.closed:
                        waits.soon()
                    else:
                        waits.read_fd(stream._notifier.fd)

        return LookupPollable()

    def drop(self) -> None:
        # The lookup thread may still run; it checks `closed` under the same lock.
        with self._lock:
            if self._notifier is not None:
                self._notifier.close()


ip_name_lookup_iface = Interface("wasi:sockets/ip-name-lookup@0.2.8")
ip_name_lookup_iface.resource("resolve-address-stream", ResolveAddressStream)


@ip_name_lookup_iface.func("resolve-addresses")
def resolve_addresses(cx: StoreState, network: Network, name: str) -> ResolveAddressStream:
    text = name.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        # An address literal is returned as-is, without a lookup (so no DNS grant needed).
        return ResolveAddressStream(addresses=[ipaddress.ip_address(text)])
    except ValueError:
        pass
    try:
        ascii_name = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise WitError("invalid-argument") from None
    if not ascii_name or len(ascii_name) > 253 or any(c in ascii_name for c in " /\\\0:%") or ".." in ascii_name:
        raise WitError("invalid-argument")
    if not _policy(cx).dns:
        raise _deny(f"name lookup of {ascii_name!r}")
    return ResolveAddressStream(name=ascii_name)


@ip_name_lookup_iface.func("[method]resolve-address-stream.resolve-next-address")
def resolve_next_address(cx: StoreState, stream: ResolveAddressStream) -> Variant | None:
    return stream.next_address()


@ip_name_lookup_iface.func("[method]resolve-address-stream.subscribe")
def resolve_address_stream_subscribe(cx: StoreState, stream: ResolveAddressStream) -> Pollable:
    return stream.subscribe()


# ---------------------------------------------------------------------------------------
# TCP

UNBOUND = "unbound"
BIND_STARTED = "bind-in-progress"
BOUND = "bound"
LISTEN_STARTED = "listen-in-progress"
LISTENING = "listening"
CONNECTING = "connect-in-progress"
CONNECTED = "connected"
CLOSED = "closed"

_NS = 1_000_000_000
_MAX_KEEPIDLE = 32767  # Linux limits (seconds, seconds, probes)
_MAX_KEEPINTVL = 32767
_MAX_KEEPCNT = 127
_MAX_I32 = 0x7FFF_FFFF


class TcpSocket(HostResource):
    def __init__(self, shared: SharedSocket, family: str, state: str = UNBOUND) -> None:
        self.shared = shared.acquire()
        self.family = family
        self.state = state
        self.backlog = 128
        self._connect_error: str | None = None  # from a start-connect that failed at once
        self.input: SocketInput | None = None
        self.output: SocketOutput | None = None
        self._released = False

    @property
    def sock(self) -> socket.socket:
        return self.shared.sock

    def _require(self, *states: str) -> None:
        if self.state not in states:
            raise WitError("invalid-state")

    def _os(self, e: OSError, overrides: dict[int, str] | None = None) -> WitError:
        return WitError(error_code(e, overrides))

    # --- bind / listen ---------------------------------------------------------------
    def start_bind(self, cx: StoreState, local: Variant) -> None:
        if self.state == BIND_STARTED:
            raise WitError("concurrency-conflict")
        self._require(UNBOUND)
        addr = _local_address_for_bind(self.family, local)
        _check_bind(cx, addr.ip, addr.port, "TCP bind")
        if self._adopt_listener(cx, addr.ip, addr.port):
            self.state = BIND_STARTED
            return
        try:
            if addr.port != 0:
                # The spec: a bind to a fixed port must not fail because of TIME_WAIT.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if _policy(cx).reuse_port:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.sock.bind(addr.os_tuple())
        except OSError as e:
            raise self._os(e) from None  # the socket stays unbound; bind may be retried
        self.state = BIND_STARTED

    def _adopt_listener(self, cx: StoreState, ip: IPAddress, port: int) -> bool:
        """Take over the listening socket a supervisor handed down for this address: its
        descriptor replaces this socket's own (already bound and listening; the guest's
        listen then only sets the backlog). The handed-down descriptor is consumed, so that
        when the guest closes the listener (a graceful stop) this process holds no copy."""
        fd = _policy(cx).listeners.pop((ip, port), None)
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

    def finish_bind(self) -> None:
        if self.state != BIND_STARTED:
            raise WitError("not-in-progress")
        self.state = BOUND

    def start_listen(self) -> None:
        if self.state == LISTEN_STARTED:
            raise WitError("concurrency-conflict")
        self._require(BOUND)
        try:
            self.sock.listen(self.backlog)
        except OSError as e:
            self.state = CLOSED
            raise self._os(e) from None
        self.shared.listening = True
        self.state = LISTEN_STARTED

    def finish_listen(self) -> None:
        if self.state != LISTEN_STARTED:
            raise WitError("not-in-progress")
        self.state = LISTENING

    def draining(self) -> bool:
        """Graceful stop: a draining store's listener closes (so the kernel refuses new
        clients, or hands them to another worker) and never has a client to accept; the
        guest sees would-block and goes on serving the connections it has."""
        registry = self.shared.registry
        if registry is None or not registry.draining or self.state != LISTENING:
            return False
        if not self.shared.closed:
            log.info("stopped accepting on %s", _fmt_os(self.sock.getsockname()))
            self.shared.close()
        return True

    def accept(self, cx: StoreState) -> tuple[TcpSocket, InputStream, OutputStream]:
        self._require(LISTENING)
        if self.draining():
            raise WitError("would-block")
        try:
            conn, peer = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            raise WitError("would-block") from None
        except OSError as e:
            raise self._os(e) from None
        try:
            _check_socket_limit(cx, "accepting a connection")
        except WitError:
            conn.close()  # refused at once, rather than left to fill the listen backlog
            raise
        client = TcpSocket(SharedSocket(conn, registry(cx), ConnectionRecord(_fmt_os(peer))), self.family, CONNECTED)
        return (client, *client._open_streams())

    # --- connect -----------------------------------------------------------------------
    def start_connect(self, cx: StoreState, remote: Variant) -> None:
        if self.state in (CONNECTING, BIND_STARTED, LISTEN_STARTED):
            raise WitError("concurrency-conflict")
        self._require(UNBOUND, BOUND)
        addr = _remote_address(self.family, remote)
        _check_connect(cx, addr.ip, addr.port, "TCP connect")
        try:
            result = self.sock.connect_ex(addr.os_tuple())
        except OSError as e:
            result = e.errno or errno.EINVAL
        if result in (0, errno.EINPROGRESS, errno.EAGAIN):
            self.state = CONNECTING
            return
        self.state = CLOSED
        raise WitError(error_code(OSError(result, ""), {errno.EADDRNOTAVAIL: "address-in-use"}))

    def finish_connect(self) -> tuple[InputStream, OutputStream]:
        if self.state != CONNECTING:
            raise WitError("not-in-progress")
        events = poll_now(self.sock, select.POLLOUT)
        if not events:
            raise WitError("would-block")
        failure = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if failure:
            self.state = CLOSED
            raise WitError(error_code(OSError(failure, ""), {errno.EADDRNOTAVAIL: "address-in-use"}))
        self.state = CONNECTED
        return self._open_streams()

    def _open_streams(self) -> tuple[SocketInput, SocketOutput]:
        # Nagle's algorithm off, as asyncio does: guests write whole messages (TLS flights,
        # replies), and holding a small write for the peer's delayed ACK cost a guest TLS
        # server about 40 ms per connection (session tickets, then the first reply).
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not fatal: only latency
        self.input = SocketInput(self.shared)
        self.output = SocketOutput(self.shared)
        return self.input, self.output

    # --- addresses & state --------------------------------------------------------------
    def local_address(self) -> Variant:
        self._require(BOUND, LISTEN_STARTED, LISTENING, CONNECTING, CONNECTED)
        try:
            return SockAddr.from_os(self.sock.getsockname()).to_wit()
        except OSError as e:
            raise self._os(e) from None

    def remote_address(self) -> Variant:
        self._require(CONNECTED)
        try:
            return SockAddr.from_os(self.sock.getpeername()).to_wit()
        except OSError as e:
            raise self._os(e, {errno.ENOTCONN: "invalid-state"}) from None

    def shutdown(self, how: str) -> None:
        self._require(CONNECTED)
        if how in ("receive", "both") and self.input is not None:
            self.input.shutdown_read()
            try:
                self.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass  # already disconnected: the stream reports that
        if how in ("send", "both") and self.output is not None:
            self.output.shutdown_write()

    # --- options ------------------------------------------------------------------------
    def _get(self, level: int, option: int) -> int:
        if self.shared.closed:
            raise WitError("invalid-state")
        try:
            return self.sock.getsockopt(level, option)
        except OSError as e:
            raise self._os(e) from None

    def _set(self, level: int, option: int, value: int) -> None:
        if self.shared.closed:
            raise WitError("invalid-state")
        try:
            self.sock.setsockopt(level, option, value)
        except OSError as e:
            raise self._os(e) from None

    def set_listen_backlog_size(self, value: int) -> None:
        if value == 0:
            raise WitError("invalid-argument")
        if self.state in (CONNECTING, CONNECTED, CLOSED):
            raise WitError("invalid-state")
        self.backlog = min(value, _MAX_I32)
        if self.state in (LISTEN_STARTED, LISTENING):
            try:
                self.sock.listen(self.backlog)  # Linux updates the backlog of a listener
            except OSError as e:
                raise self._os(e, {errno.EINVAL: "not-supported"}) from None

    def hop_limit_option(self) -> tuple[int, int]:
        if self.family == "ipv4":
            return socket.IPPROTO_IP, socket.IP_TTL
        return socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS

    def pollable(self) -> Pollable:
        return TcpSocketPollable(self)

    def drop(self) -> None:
        if not self._released:
            self._released = True
            self.shared.release()


class TcpSocketPollable(Pollable):
    """Ready per TcpSocketOperationalSemantics.md: when the operation in progress has
    resolved (connect), when a connection waits to be accepted (listening), else at once."""

    def __init__(self, tcp: TcpSocket) -> None:
        self.tcp = tcp

    def ready(self) -> bool:
        state = self.tcp.state
        if self.tcp.draining():
            return False
        if self.tcp.shared.closed:
            return True
        if state == CONNECTING:
            return bool(poll_now(self.tcp.sock, select.POLLOUT))
        if state == LISTENING:
            return bool(poll_now(self.tcp.sock, select.POLLIN))
        return True

    def add_waits(self, waits: Waits) -> None:
        if self.tcp.draining():
            # Never ready again; a deadline rather than nothing, so that a guest waiting on
            # its listener alone sleeps instead of being told its poll can never end.
            waits.until(time.monotonic_ns() + 1_000_000_000)
            return
        fd = self.tcp.sock.fileno()
        if fd < 0:
            waits.soon()
        elif self.tcp.state == CONNECTING:
            waits.write_fd(fd)
        else:
            waits.read_fd(fd)


def _ns_to_seconds(value: int, limit: int) -> int:
    if value <= 0:
        raise WitError("invalid-argument")
    return max(1, min(limit, -(-value // _NS)))  # round up, then clamp: never an error


tcp_iface = Interface("wasi:sockets/tcp@0.2.8")
tcp_create_iface = Interface("wasi:sockets/tcp-create-socket@0.2.8")
tcp_iface.resource("tcp-socket", TcpSocket)


@tcp_create_iface.func("create-tcp-socket")
def create_tcp_socket(cx: StoreState, address_family: str) -> TcpSocket:
    shared = _new_socket(cx, address_family, socket.SOCK_STREAM)
    tcp = TcpSocket(shared, address_family)
    return tcp


@tcp_iface.func("[method]tcp-socket.start-bind")
def tcp_start_bind(cx: StoreState, tcp: TcpSocket, network: Network, local_address: Variant) -> None:
    tcp.start_bind(cx, local_address)


@tcp_iface.func("[method]tcp-socket.finish-bind")
def tcp_finish_bind(cx: StoreState, tcp: TcpSocket) -> None:
    tcp.finish_bind()


@tcp_iface.func("[method]tcp-socket.start-connect")
def tcp_start_connect(cx: StoreState, tcp: TcpSocket, network: Network, remote_address: Variant) -> None:
    tcp.start_connect(cx, remote_address)


@tcp_iface.func("[method]tcp-socket.finish-connect")
def tcp_finish_connect(cx: StoreState, tcp: TcpSocket) -> tuple[InputStream, OutputStream]:
    return tcp.finish_connect()


@tcp_iface.func("[method]tcp-socket.start-listen")
def tcp_start_listen(cx: StoreState, tcp: TcpSocket) -> None:
    tcp.start_listen()


@tcp_iface.func("[method]tcp-socket.finish-listen")
def tcp_finish_listen(cx: StoreState, tcp: TcpSocket) -> None:
    tcp.finish_listen()


@tcp_iface.func("[method]tcp-socket.accept")
def tcp_accept(cx: StoreState, tcp: TcpSocket) -> tuple[TcpSocket, InputStream, OutputStream]:
    return tcp.accept(cx)


@tcp_iface.func("[method]tcp-socket.local-address")
def tcp_local_address(cx: StoreState, tcp: TcpSocket) -> Variant:
    return tcp.local_address()


@tcp_iface.func("[method]tcp-socket.remote-address")
def tcp_remote_address(cx: StoreState, tcp: TcpSocket) -> Variant:
    return tcp.remote_address()


@tcp_iface.func("[method]tcp-socket.is-listening")
def tcp_is_listening(cx: StoreState, tcp: TcpSocket) -> bool:
    return tcp.state == LISTENING


@tcp_iface.func("[method]tcp-socket.address-family")
def tcp_address_family(cx: StoreState, tcp: TcpSocket) -> str:
    return tcp.family


@tcp_iface.func("[method]tcp-socket.set-listen-backlog-size")
def tcp_set_listen_backlog_size(cx: StoreState, tcp: TcpSocket, value: int) -> None:
    tcp.set_listen_backlog_size(value)


@tcp_iface.func("[method]tcp-socket.keep-alive-enabled")
def tcp_keep_alive_enabled(cx: StoreState, tcp: TcpSocket) -> bool:
    return bool(tcp._get(socket.SOL_SOCKET, socket.SO_KEEPALIVE))


@tcp_iface.func("[method]tcp-socket.set-keep-alive-enabled")
def tcp_set_keep_alive_enabled(cx: StoreState, tcp: TcpSocket, value: bool) -> None:
    tcp._set(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(value))


@tcp_iface.func("[method]tcp-socket.keep-alive-idle-time")
def tcp_keep_alive_idle_time(cx: StoreState, tcp: TcpSocket) -> int:
    return tcp._get(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) * _NS


@tcp_iface.func("[method]tcp-socket.set-keep-alive-idle-time")
def tcp_set_keep_alive_idle_time(cx: StoreState, tcp: TcpSocket, value: int) -> None:
    tcp._set(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _ns_to_seconds(value, _MAX_KEEPIDLE))


@tcp_iface.func("[method]tcp-socket.keep-alive-interval")
def tcp_keep_alive_interval(cx: StoreState, tcp: TcpSocket) -> int:
    return tcp._get(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) * _NS


@tcp_iface.func("[method]tcp-socket.set-keep-alive-interval")
def tcp_set_keep_alive_interval(cx: StoreState, tcp: TcpSocket, value: int) -> None:
    tcp._set(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _ns_to_seconds(value, _MAX_KEEPINTVL))


@tcp_iface.func("[method]tcp-socket.keep-alive-count")
def tcp_keep_alive_count(cx: StoreState, tcp: TcpSocket) -> int:
    return tcp._get(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)


@tcp_iface.func("[method]tcp-socket.set-keep-alive-count")
def tcp_set_keep_alive_count(cx: StoreState, tcp: TcpSocket, value: int) -> None:
    if value == 0:
        raise WitError("invalid-argument")
    tcp._set(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, min(value, _MAX_KEEPCNT))


@tcp_iface.func("[method]tcp-socket.hop-limit")
def tcp_hop_limit(cx: StoreState, tcp: TcpSocket) -> int:
    return min(255, tcp._get(*tcp.hop_limit_option()))


@tcp_iface.func("[method]tcp-socket.set-hop-limit")
def tcp_set_hop_limit(cx: StoreState, tcp: TcpSocket, value: int) -> None:
    if value == 0:
        raise WitError("invalid-argument")
    tcp._set(*tcp.hop_limit_option(), value)


def _buffer_size(value: int) -> int:
    if value == 0:
        raise WitError("invalid-argument")
    return min(value, _MAX_I32)  # clamped, never an error


@tcp_iface.func("[method]tcp-socket.receive-buffer-size")
def tcp_receive_buffer_size(cx: StoreState, tcp: TcpSocket) -> int:
    return tcp._get(socket.SOL_SOCKET, socket.SO_RCVBUF)


@tcp_iface.func("[method]tcp-socket.set-receive-buffer-size")
def tcp_set_receive_buffer_size(cx: StoreState, tcp: TcpSocket, value: int) -> None:
    tcp._set(socket.SOL_SOCKET, socket.SO_RCVBUF, _buffer_size(value))


@tcp_iface.func("[method]tcp-socket.send-buffer-size")
def tcp_send_buffer_size(cx: StoreState, tcp: TcpSocket) -> int:
    return tcp._get(socket.SOL_SOCKET, socket.SO_SNDBUF)


@tcp_iface.func("[method]tcp-socket.set-send-buffer-size")
def tcp_set_send_buffer_size(cx: StoreState, tcp: TcpSocket, value: int) -> None:
    tcp._set(socket.SOL_SOCKET, socket.SO_SNDBUF, _buffer_size(value))


@tcp_iface.func("[method]tcp-socket.subscribe")
def tcp_subscribe(cx: StoreState, tcp: TcpSocket) -> Pollable:
    return tcp.pollable()


@tcp_iface.func("[method]tcp-socket.shutdown")
def tcp_shutdown(cx: StoreState, tcp: TcpSocket, shutdown_type: str) -> None:
    tcp.shutdown(shutdown_type)


# ---------------------------------------------------------------------------------------
# UDP

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_UDP_PERMIT = 64  # datagrams allowed per send when the socket is writable
_MAX_DATAGRAM = 65535


def _disconnect(sock: socket.socket) -> None:
    """``connect(fd, AF_UNSPEC)``: forget a UDP socket's peer (Python has no spelling for it)."""
    unspec = struct.pack("=H14x", socket.AF_UNSPEC)
    if _libc.connect(sock.fileno(), ctypes.c_char_p(unspec), len(unspec)) != 0:
        code = ctypes.get_errno()
        if code not in (0, errno.EAFNOSUPPORT):  # Linux reports success; some kernels EAFNOSUPPORT
            raise OSError(code, "disconnect failed")


class UdpSocket(HostResource):
    def __init__(self, shared: SharedSocket, family: str) -> None:
        self.shared = shared.acquire()
        self.family = family
        self.state = UNBOUND
        self.remote: SockAddr | None = None
        self.generation = 0  # streams from an earlier stream() call stop working
        self._released = False

    @property
    def sock(self) -> socket.socket:
        return self.shared.sock

    def start_bind(self, cx: StoreState, local: Variant) -> None:
        if self.state == BIND_STARTED:
            raise WitError("concurrency-conflict")
        if self.state != UNBOUND:
            raise WitError("invalid-state")
        addr = _local_address_for_bind(self.family, local)
        _check_bind(cx, addr.ip, addr.port, "UDP bind")
        try:
            self.sock.bind(addr.os_tuple())
        except OSError as e:
            raise WitError(error_code(e)) from None
        self.state = BIND_STARTED

    def finish_bind(self) -> None:
        if self.state != BIND_STARTED:
            raise WitError("not-in-progress")
        self.state = BOUND

    def stream(self, cx: StoreState, remote: Variant | None) -> tuple[IncomingDatagramStream, OutgoingDatagramStream]:
        if self.state != BOUND:
            raise WitError("invalid-state")
        addr = _remote_address(self.family, remote) if remote is not None else None
        if addr is not None:
            _check_connect(cx, addr.ip, addr.port, "UDP stream")
        try:
            if self.remote is not None:
                _disconnect(self.sock)
                self.remote = None
            if addr is not None:
                self.sock.connect(addr.os_tuple())
                self.remote = addr
        except OSError as e:
            raise WitError(error_code(e, {errno.ECONNRESET: "remote-unreachable", errno.EADDRNOTAVAIL: "address-in-use"})) from None
        self.generation += 1
        return IncomingDatagramStream(self), OutgoingDatagramStream(self)

    def local_address(self) -> Variant:
        if self.state != BOUND:
            raise WitError("invalid-state")
        return SockAddr.from_os(self.sock.getsockname()).to_wit()

    def remote_address(self) -> Variant:
        if self.remote is None:
            raise WitError("invalid-state")
        return SockAddr.from_os(self.sock.getpeername()).to_wit()

    def _get(self, level: int, option: int) -> int:
        try:
            return self.sock.getsockopt(level, option)
        except OSError as e:
            raise WitError(error_code(e)) from None

    def _set(self, level: int, option: int, value: int) -> None:
        try:
            self.sock.setsockopt(level, option, value)
        except OSError as e:
            raise WitError(error_code(e)) from None

    def hop_limit_option(self) -> tuple[int, int]:
        if self.family == "ipv4":
            return socket.IPPROTO_IP, socket.IP_TTL
        return socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS

    def drop(self) -> None:
        if not self._released:
            self._released = True
            self.shared.release()


class _DatagramStream(HostResource):
    def __init__(self, udp: UdpSocket) -> None:
        self.udp = udp
        self.shared = udp.shared.acquire()
        self.generation = udp.generation
        self._released = False

    def _check_current(self) -> None:
        if self.generation != self.udp.generation or self.shared.closed:
            # The spec: only the most recently returned pair of streams is operational.
            raise WitError("invalid-state")

    def drop(self) -> None:
        if not self._released:
            self._released = True
            self.shared.release()


class IncomingDatagramStream(_DatagramStream):
    def receive(self, max_results: int) -> list[dict[str, Any]]:
        self._check_current()
        received: list[dict[str, Any]] = []
        sock = self.shared.sock
        while len(received) < min(max_results, 1024):
            try:
                data, source = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if received:
                    break  # report what we have; the error comes back on the next call
                raise WitError(error_code(e, {errno.ECONNRESET: "remote-unreachable"})) from None
            received.append({"data": data, "remote_address": SockAddr.from_os(source).to_wit()})
        return received

    def subscribe(self) -> Pollable:
        return SocketPollable(self.shared, False, lambda: bool(poll_now(self.shared.sock, select.POLLIN)))


class OutgoingDatagramStream(_DatagramStream):
    def __init__(self, udp: UdpSocket) -> None:
        super().__init__(udp)
        self.permit: int | None = None  # None: check-send not called since the last send

    def check_send(self) -> int:
        self._check_current()
        self.permit = _UDP_PERMIT if poll_now(self.shared.sock, select.POLLOUT) else 0
        return self.permit

    def send(self, cx: StoreState, datagrams: list[dict[str, Any]]) -> int:
        if self.permit is None:
            raise Trap("outgoing-datagram-stream.send called without a preceding check-send")
        if len(datagrams) > self.permit:
            raise Trap(f"send of {len(datagrams)} datagrams exceeds the check-send permit of {self.permit}")
        self.permit -= len(datagrams)
        self._check_current()
        sent = 0
        for datagram in datagrams:
            try:
                self._send_one(cx, datagram)
            except WitError:
                if sent:
                    break
                raise
            except _WouldBlock:
                break
            sent += 1
        return sent

    def _send_one(self, cx: StoreState, datagram: dict[str, Any]) -> None:
        remote = self.udp.remote
        target = datagram["remote_address"]
        addr = _remote_address(self.udp.family, target) if target is not None else None
        if remote is not None:
            if addr is not None and addr != remote:
                raise WitError("invalid-argument")
        elif addr is None:
            raise WitError("invalid-argument")
        if addr is not None and remote is None:
            _check_connect(cx, addr.ip, addr.port, "UDP send")
        try:
            if remote is not None:
                self.shared.sock.send(datagram["data"])
            else:
                assert addr is not None
                self.shared.sock.sendto(datagram["data"], addr.os_tuple())
        except (BlockingIOError, InterruptedError):
            raise _WouldBlock() from None
        except OSError as e:
            raise WitError(error_code(e, {errno.ECONNRESET: "remote-unreachable"})) from None

    def subscribe(self) -> Pollable:
        return SocketPollable(self.shared, True, lambda: bool(poll_now(self.shared.sock, select.POLLOUT)))


class _WouldBlock(Exception):
    pass


udp_iface = Interface("wasi:sockets/udp@0.2.8")
udp_create_iface = Interface("wasi:sockets/udp-create-socket@0.2.8")
udp_iface.resource("udp-socket", UdpSocket)
udp_iface.resource("incoming-datagram-stream", IncomingDatagramStream)
udp_iface.resource("outgoing-datagram-stream", OutgoingDatagramStream)


@udp_create_iface.func("create-udp-socket")
def create_udp_socket(cx: StoreState, address_family: str) -> UdpSocket:
    return UdpSocket(_new_socket(cx, address_family, socket.SOCK_DGRAM), address_family)


@udp_iface.func("[method]udp-socket.start-bind")
def udp_start_bind(cx: StoreState, udp: UdpSocket, network: Network, local_address: Variant) -> None:
    udp.start_bind(cx, local_address)


@udp_iface.func("[method]udp-socket.finish-bind")
def udp_finish_bind(cx: StoreState, udp: UdpSocket) -> None:
    udp.finish_bind()


@udp_iface.func("[method]udp-socket.stream")
def udp_stream(cx: StoreState, udp: UdpSocket, remote_address: Variant | None) -> tuple[IncomingDatagramStream, OutgoingDatagramStream]:
    return udp.stream(cx, remote_address)


@udp_iface.func("[method]udp-socket.local-address")
def udp_local_address(cx: StoreState, udp: UdpSocket) -> Variant:
    return udp.local_address()


@udp_iface.func("[method]udp-socket.remote-address")
def udp_remote_address(cx: StoreState, udp: UdpSocket) -> Variant:
    return udp.remote_address()


@udp_iface.func("[method]udp-socket.address-family")
def udp_address_family(cx: StoreState, udp: UdpSocket) -> str:
    return udp.family


@udp_iface.func("[method]udp-socket.unicast-hop-limit")
def udp_unicast_hop_limit(cx: StoreState, udp: UdpSocket) -> int:
    return min(255, udp._get(*udp.hop_limit_option()))


@udp_iface.func("[method]udp-socket.set-unicast-hop-limit")
def udp_set_unicast_hop_limit(cx: StoreState, udp: UdpSocket, value: int) -> None:
    if value == 0:
        raise WitError("invalid-argument")
    udp._set(*udp.hop_limit_option(), value)


@udp_iface.func("[method]udp-socket.receive-buffer-size")
def udp_receive_buffer_size(cx: StoreState, udp: UdpSocket) -> int:
    return udp._get(socket.SOL_SOCKET, socket.SO_RCVBUF)


@udp_iface.func("[method]udp-socket.set-receive-buffer-size")
def udp_set_receive_buffer_size(cx: StoreState, udp: UdpSocket, value: int) -> None:
    udp._set(socket.SOL_SOCKET, socket.SO_RCVBUF, _buffer_size(value))


@udp_iface.func("[method]udp-socket.send-buffer-size")
def udp_send_buffer_size(cx: StoreState, udp: UdpSocket) -> int:
    return udp._get(socket.SOL_SOCKET, socket.SO_SNDBUF)


@udp_iface.func("[method]udp-socket.set-send-buffer-size")
def udp_set_send_buffer_size(cx: StoreState, udp: UdpSocket, value: int) -> None:
    udp._set(socket.SOL_SOCKET, socket.SO_SNDBUF, _buffer_size(value))


@udp_iface.func("[method]udp-socket.subscribe")
def udp_subscribe(cx: StoreState, udp: UdpSocket) -> Pollable:
    return ReadyPollable()  # bind completes synchronously: nothing to wait for


@udp_iface.func("[method]incoming-datagram-stream.receive")
def udp_receive(cx: StoreState, stream: IncomingDatagramStream, max_results: int) -> list[dict[str, Any]]:
    return stream.receive(max_results)


@udp_iface.func("[method]incoming-datagram-stream.subscribe")
def udp_incoming_subscribe(cx: StoreState, stream: IncomingDatagramStream) -> Pollable:
    return stream.subscribe()


@udp_iface.func("[method]outgoing-datagram-stream.check-send")
def udp_check_send(cx: StoreState, stream: OutgoingDatagramStream) -> int:
    return stream.check_send()


@udp_iface.func("[method]outgoing-datagram-stream.send")
def udp_send(cx: StoreState, stream: OutgoingDatagramStream, datagrams: list[dict[str, Any]]) -> int:
    return stream.send(cx, datagrams)


@udp_iface.func("[method]outgoing-datagram-stream.subscribe")
def udp_outgoing_subscribe(cx: StoreState, stream: OutgoingDatagramStream) -> Pollable:
    return stream.subscribe()


INTERFACES: Iterable[Interface] = (
    network_iface,
    instance_network_iface,
    ip_name_lookup_iface,
    tcp_iface,
    tcp_create_iface,
    udp_iface,
    udp_create_iface,
)
