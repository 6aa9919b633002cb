"""wasi:sockets 0.2 (network, instance-network, ip-name-lookup, tcp, udp) over the engine.

What is particular to 0.2 lives here: pollables, wasi:io streams (``p2_streams.py``), the
``network`` capability handle, and the ``start-*``/``finish-*`` pairs of TcpSocketOperational-
Semantics.md: the engine binds and listens inside ``start-*`` (so their errors are reported
there) and ``finish-*`` only completes the step; ``IN_PROGRESS`` says how the other calls are
answered meanwhile. ``connect`` is a real non-blocking connect polled by ``finish-connect``.
"""

from __future__ import annotations

import select
import time
from typing import Any, Iterable

from ...runtime.binding import Interface
from ...runtime.resources import HostResource
from ...runtime.store import StoreState
from ...runtime.values import Trap, Variant, WitError
from ..io import InputStream, IoError, OutputStream, Pollable, ReadyPollable, Waits
from . import lookup, tcp, udp
from .addresses import ip_to_wit
from .p2_streams import SocketInput, SocketOutput, SocketPollable
from .registry import poll_now

_NS = 1_000_000_000

# ---------------------------------------------------------------------------------------
# network, instance-network


class Network(HostResource):
    """A capability handle: the policy it stands for is the store's ``NetworkPolicy``."""


network_iface = Interface("wasi:sockets/network@0.2.8")
instance_network_iface = Interface("wasi:sockets/instance-network@0.2.8")
network_iface.resource("network", Network)

ERROR_CODES = frozenset(
    "unknown access-denied not-supported invalid-argument out-of-memory timeout concurrency-conflict "
    "not-in-progress would-block invalid-state new-socket-limit address-not-bindable address-in-use "
    "remote-unreachable connection-refused connection-reset connection-aborted datagram-too-large "
    "name-unresolvable temporary-resolver-failure permanent-resolver-failure".split()
)


@network_iface.func("network-error-code")
def network_error_code(cx: StoreState, err: IoError) -> str | None:
    return err.code if err.domain == "sockets" and err.code in ERROR_CODES else None


@instance_network_iface.func("instance-network")
def instance_network(cx: StoreState) -> Network:
    return Network()


# ---------------------------------------------------------------------------------------
# ip-name-lookup


class ResolveAddressStream(HostResource):
    """One lookup (``lookup.Lookup``), or the address literal that needed none."""

    def __init__(self, name: str | None = None, addresses: list[Any] | None = None) -> None:
        self._lookup = lookup.Lookup(name) if addresses is None and name is not None else None
        self._addresses = addresses
        self._error: str | None = None

    def next_address(self) -> Variant | None:
        if self._addresses is None:
            job = self._lookup
            if job is None or not job.done:
                raise WitError("would-block")
            self._addresses, self._error = list(job.addresses or ()), job.error
        if self._error is not None:
            error, self._error = self._error, None
            raise WitError(error)
        return ip_to_wit(self._addresses.pop(0)) if self._addresses else None

    def subscribe(self) -> Pollable:
        return _LookupPollable(self._lookup)

    def drop(self) -> None:
        if self._lookup is not None:
            self._lookup.close()


class _LookupPollable(Pollable):
    def __init__(self, job: lookup.Lookup | None) -> None:
        self.job = job

    def ready(self) -> bool:
        return self.job is None or self.job.done

    def add_waits(self, waits: Waits) -> None:
        fd = self.job.fd if self.job is not None else None
        if fd is None:
            waits.soon()
        else:
            waits.read_fd(fd)


ip_name_lookup_iface = Interface("wasi:sockets/ip-name-lookup@0.2.8")
ip_name_lookup_iface.resource("resolve-address-stream", ResolveAddressStream)


@ip_name_lookup_iface.func("resolve-addresses")
def resolve_addresses(cx: StoreState, network: Network, name: str) -> ResolveAddressStream:
    target = lookup.parse_name(cx.wasi, name)
    if isinstance(target, str):
        return ResolveAddressStream(name=target)
    return ResolveAddressStream(addresses=[target])


@ip_name_lookup_iface.func("[method]resolve-address-stream.resolve-next-address")
def resolve_next_address(cx: StoreState, stream: ResolveAddressStream) -> Variant | None:
    return stream.next_address()


@ip_name_lookup_iface.func("[method]resolve-address-stream.subscribe")
def resolve_address_stream_subscribe(cx: StoreState, stream: ResolveAddressStream) -> Pollable:
    return stream.subscribe()


# ---------------------------------------------------------------------------------------
# TCP

# 0.2 only: how calls are answered while a start-bind or start-listen awaits its finish
# (the engine has already bound or is listening). Calls not named go to the engine.
IN_PROGRESS: dict[str, dict[str, str]] = {
    "bind": {"start-bind": "concurrency-conflict", "start-connect": "concurrency-conflict",
             "start-listen": "invalid-state", "local-address": "invalid-state"},
    "listen": {"start-listen": "concurrency-conflict", "start-connect": "concurrency-conflict",
               "accept": "invalid-state"},
}


class TcpSocket(HostResource):
    """wasi:sockets/tcp@0.2 ``tcp-socket``: an engine socket and the step in progress."""

    def __init__(self, socket: tcp.TcpSocket) -> None:
        self.socket = socket
        self.in_progress: str | None = None  # "bind" or "listen" between start and finish
        self.input: SocketInput | None = None
        self.output: SocketOutput | None = None

    def check(self, call: str) -> None:
        """Refuse ``call`` if a start-bind or start-listen is waiting for its finish."""
        if self.in_progress is not None:
            code = IN_PROGRESS[self.in_progress].get(call)
            if code is not None:
                raise WitError(code)

    def start_bind(self, cx: StoreState, local: Variant) -> None:
        self.check("start-bind")
        self.socket.bind(cx.wasi, local)
        self.in_progress = "bind"

    def finish(self, step: str) -> None:
        if self.in_progress != step:
            raise WitError("not-in-progress")
        self.in_progress = None

    def start_listen(self, cx: StoreState) -> None:
        self.check("start-listen")
        self.socket.listen(cx.wasi)
        self.in_progress = "listen"

    def start_connect(self, cx: StoreState, remote: Variant) -> None:
        if self.socket.state is tcp.TcpState.CONNECTING:
            raise WitError("concurrency-conflict")
        self.check("start-connect")
        self.socket.start_connect(cx.wasi, remote)

    def finish_connect(self) -> tuple[InputStream, OutputStream]:
        if self.socket.state is not tcp.TcpState.CONNECTING:
            raise WitError("not-in-progress")
        if not self.socket.connect_done():
            raise WitError("would-block")
        self.socket.finish_connect()
        return self._open_streams()

    def accept(self, cx: StoreState) -> tuple[TcpSocket, InputStream, OutputStream]:
        self.check("accept")
        accepted = self.socket.accept(cx.wasi)
        if accepted is None:
            raise WitError("would-block")
        client = TcpSocket(accepted)
        return (client, *client._open_streams())

    def _open_streams(self) -> tuple[SocketInput, SocketOutput]:
        self.input = SocketInput(self.socket.shared)
        self.output = SocketOutput(self.socket.shared)
        return self.input, self.output

    def local_address(self) -> Variant:
        self.check("local-address")
        return self.socket.local_address().to_wit()

    def is_listening(self) -> bool:
        return self.socket.is_listening() and self.in_progress != "listen"

    def shutdown(self, how: str) -> None:
        self.socket.require("shutdown")
        if how in ("receive", "both") and self.input is not None:
            self.input.shutdown_read()
            self.input.conn.shutdown_read()
        if how in ("send", "both") and self.output is not None:
            self.output.shutdown_write()

    def pollable(self) -> Pollable:
        return TcpSocketPollable(self)

    def drop(self) -> None:
        self.socket.release()


class TcpSocketPollable(Pollable):
    """Ready per TcpSocketOperationalSemantics.md: when the operation in progress has
    resolved (connect), when a connection waits to be accepted (listening), else at once."""

    def __init__(self, resource: TcpSocket) -> None:
        self.resource = resource

    def ready(self) -> bool:
        sock = self.resource.socket
        if sock.draining():
            return False
        if sock.shared.closed or self.resource.in_progress is not None:
            return True
        if sock.state is tcp.TcpState.CONNECTING:
            return sock.connect_done()
        if sock.state is tcp.TcpState.LISTENING:
            return bool(poll_now(sock.sock, select.POLLIN))
        return True

    def add_waits(self, waits: Waits) -> None:
        sock = self.resource.socket
        if sock.draining():
            # Never ready again; a deadline rather than nothing, so that a guest waiting on
            # its listener alone sleeps instead of being told its poll can never end.
            waits.until(time.monotonic_ns() + 1_000_000_000)
            return
        fd = sock.sock.fileno()
        if fd < 0:
            waits.soon()
        elif sock.state is tcp.TcpState.CONNECTING:
            waits.write_fd(fd)
        else:
            waits.read_fd(fd)


tcp_iface = Interface("wasi:sockets/tcp@0.2.8")
tcp_create_iface = Interface("wasi:sockets/tcp-create-socket@0.2.8")
tcp_iface.resource("tcp-socket", TcpSocket)


@tcp_create_iface.func("create-tcp-socket")
def create_tcp_socket(cx: StoreState, address_family: str) -> TcpSocket:
    return TcpSocket(tcp.TcpSocket.create(cx.wasi, address_family))


@tcp_iface.func("[method]tcp-socket.start-bind")
def tcp_start_bind(cx: StoreState, sock: TcpSocket, network: Network, local_address: Variant) -> None:
    sock.start_bind(cx, local_address)


@tcp_iface.func("[method]tcp-socket.finish-bind")
def tcp_finish_bind(cx: StoreState, sock: TcpSocket) -> None:
    sock.finish("bind")


@tcp_iface.func("[method]tcp-socket.start-connect")
def tcp_start_connect(cx: StoreState, sock: TcpSocket, network: Network, remote_address: Variant) -> None:
    sock.start_connect(cx, remote_address)


@tcp_iface.func("[method]tcp-socket.finish-connect")
def tcp_finish_connect(cx: StoreState, sock: TcpSocket) -> tuple[InputStream, OutputStream]:
    return sock.finish_connect()


@tcp_iface.func("[method]tcp-socket.start-listen")
def tcp_start_listen(cx: StoreState, sock: TcpSocket) -> None:
    sock.start_listen(cx)


@tcp_iface.func("[method]tcp-socket.finish-listen")
def tcp_finish_listen(cx: StoreState, sock: TcpSocket) -> None:
    sock.finish("listen")


@tcp_iface.func("[method]tcp-socket.accept")
def tcp_accept(cx: StoreState, sock: TcpSocket) -> tuple[TcpSocket, InputStream, OutputStream]:
    return sock.accept(cx)


@tcp_iface.func("[method]tcp-socket.local-address")
def tcp_local_address(cx: StoreState, sock: TcpSocket) -> Variant:
    return sock.local_address()


@tcp_iface.func("[method]tcp-socket.remote-address")
def tcp_remote_address(cx: StoreState, sock: TcpSocket) -> Variant:
    return sock.socket.remote_address().to_wit()


@tcp_iface.func("[method]tcp-socket.is-listening")
def tcp_is_listening(cx: StoreState, sock: TcpSocket) -> bool:
    return sock.is_listening()


@tcp_iface.func("[method]tcp-socket.address-family")
def tcp_address_family(cx: StoreState, sock: TcpSocket) -> str:
    return sock.socket.family


@tcp_iface.func("[method]tcp-socket.set-listen-backlog-size")
def tcp_set_listen_backlog_size(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_listen_backlog_size(value)


@tcp_iface.func("[method]tcp-socket.keep-alive-enabled")
def tcp_keep_alive_enabled(cx: StoreState, sock: TcpSocket) -> bool:
    return sock.socket.keep_alive_enabled()


@tcp_iface.func("[method]tcp-socket.set-keep-alive-enabled")
def tcp_set_keep_alive_enabled(cx: StoreState, sock: TcpSocket, value: bool) -> None:
    sock.socket.set_keep_alive_enabled(value)


@tcp_iface.func("[method]tcp-socket.keep-alive-idle-time")
def tcp_keep_alive_idle_time(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.keep_alive_idle_time()


@tcp_iface.func("[method]tcp-socket.set-keep-alive-idle-time")
def tcp_set_keep_alive_idle_time(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_keep_alive_idle_time(value)


@tcp_iface.func("[method]tcp-socket.keep-alive-interval")
def tcp_keep_alive_interval(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.keep_alive_interval()


@tcp_iface.func("[method]tcp-socket.set-keep-alive-interval")
def tcp_set_keep_alive_interval(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_keep_alive_interval(value)


@tcp_iface.func("[method]tcp-socket.keep-alive-count")
def tcp_keep_alive_count(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.keep_alive_count()


@tcp_iface.func("[method]tcp-socket.set-keep-alive-count")
def tcp_set_keep_alive_count(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_keep_alive_count(value)


@tcp_iface.func("[method]tcp-socket.hop-limit")
def tcp_hop_limit(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.hop_limit()


@tcp_iface.func("[method]tcp-socket.set-hop-limit")
def tcp_set_hop_limit(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_hop_limit(value)


@tcp_iface.func("[method]tcp-socket.receive-buffer-size")
def tcp_receive_buffer_size(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.receive_buffer_size()


@tcp_iface.func("[method]tcp-socket.set-receive-buffer-size")
def tcp_set_receive_buffer_size(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_receive_buffer_size(value)


@tcp_iface.func("[method]tcp-socket.send-buffer-size")
def tcp_send_buffer_size(cx: StoreState, sock: TcpSocket) -> int:
    return sock.socket.send_buffer_size()


@tcp_iface.func("[method]tcp-socket.set-send-buffer-size")
def tcp_set_send_buffer_size(cx: StoreState, sock: TcpSocket, value: int) -> None:
    sock.socket.set_send_buffer_size(value)


@tcp_iface.func("[method]tcp-socket.subscribe")
def tcp_subscribe(cx: StoreState, sock: TcpSocket) -> Pollable:
    return sock.pollable()


@tcp_iface.func("[method]tcp-socket.shutdown")
def tcp_shutdown(cx: StoreState, sock: TcpSocket, shutdown_type: str) -> None:
    sock.shutdown(shutdown_type)


# ---------------------------------------------------------------------------------------
# UDP

_UDP_PERMIT = 64  # datagrams allowed per send when the socket is writable


class UdpSocket(HostResource):
    """wasi:sockets/udp@0.2 ``udp-socket``: an engine socket, 0.2's bind step, and the
    generation of its streams (only the latest pair works)."""

    def __init__(self, socket: udp.UdpSocket) -> None:
        self.socket = socket
        self.bind_in_progress = False
        self.bind_finished = False
        self.generation = 0

    def start_bind(self, cx: StoreState, local: Variant) -> None:
        if self.bind_in_progress:
            raise WitError("concurrency-conflict")
        self.socket.bind(cx.wasi, local)
        self.bind_in_progress = True

    def finish_bind(self) -> None:
        if not self.bind_in_progress:
            raise WitError("not-in-progress")
        self.bind_in_progress = False
        self.bind_finished = True

    def stream(self, cx: StoreState, remote: Variant | None) -> tuple[IncomingDatagramStream, OutgoingDatagramStream]:
        if not self.bind_finished:
            raise WitError("invalid-state")
        if remote is not None:
            self.socket.connect(cx.wasi, remote, "UDP stream")
        else:
            self.socket.disconnect_if_connected()
        self.generation += 1
        return IncomingDatagramStream(self), OutgoingDatagramStream(self)

    def local_address(self) -> Variant:
        if not self.bind_finished:
            raise WitError("invalid-state")
        return self.socket.local_address().to_wit()

    def drop(self) -> None:
        self.socket.release()


class _DatagramStream(HostResource):
    def __init__(self, owner: UdpSocket) -> None:
        self.owner = owner
        self.socket = owner.socket
        self.shared = owner.socket.shared.acquire()
        self.generation = owner.generation
        self._released = False

    def _check_current(self) -> None:
        if self.generation != self.owner.generation or self.shared.closed:
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
        while len(received) < min(max_results, 1024):
            try:
                data, source = self.socket.receive()
            except BlockingIOError:
                break
            except WitError:
                if received:
                    break  # report what we have; the error comes back on the next call
                raise
            received.append({"data": data, "remote_address": source.to_wit()})
        return received

    def subscribe(self) -> Pollable:
        return SocketPollable(self.shared, False, lambda: bool(poll_now(self.shared.sock, select.POLLIN)))


class OutgoingDatagramStream(_DatagramStream):
    def __init__(self, owner: UdpSocket) -> None:
        super().__init__(owner)
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
                self.socket.send(datagram["data"], self.socket.destination(cx.wasi, datagram["remote_address"]))
            except WitError:
                if sent:
                    break
                raise
            except BlockingIOError:
                break
            sent += 1
        return sent

    def subscribe(self) -> Pollable:
        return SocketPollable(self.shared, True, lambda: bool(poll_now(self.shared.sock, select.POLLOUT)))


udp_iface = Interface("wasi:sockets/udp@0.2.8")
udp_create_iface = Interface("wasi:sockets/udp-create-socket@0.2.8")
udp_iface.resource("udp-socket", UdpSocket)
udp_iface.resource("incoming-datagram-stream", IncomingDatagramStream)
udp_iface.resource("outgoing-datagram-stream", OutgoingDatagramStream)


@udp_create_iface.func("create-udp-socket")
def create_udp_socket(cx: StoreState, address_family: str) -> UdpSocket:
    return UdpSocket(udp.UdpSocket.create(cx.wasi, address_family))


@udp_iface.func("[method]udp-socket.start-bind")
def udp_start_bind(cx: StoreState, sock: UdpSocket, network: Network, local_address: Variant) -> None:
    sock.start_bind(cx, local_address)


@udp_iface.func("[method]udp-socket.finish-bind")
def udp_finish_bind(cx: StoreState, sock: UdpSocket) -> None:
    sock.finish_bind()


@udp_iface.func("[method]udp-socket.stream")
def udp_stream(cx: StoreState, sock: UdpSocket, remote_address: Variant | None) -> tuple[IncomingDatagramStream, OutgoingDatagramStream]:
    return sock.stream(cx, remote_address)


@udp_iface.func("[method]udp-socket.local-address")
def udp_local_address(cx: StoreState, sock: UdpSocket) -> Variant:
    return sock.local_address()


@udp_iface.func("[method]udp-socket.remote-address")
def udp_remote_address(cx: StoreState, sock: UdpSocket) -> Variant:
    return sock.socket.remote_address().to_wit()


@udp_iface.func("[method]udp-socket.address-family")
def udp_address_family(cx: StoreState, sock: UdpSocket) -> str:
    return sock.socket.family


@udp_iface.func("[method]udp-socket.unicast-hop-limit")
def udp_unicast_hop_limit(cx: StoreState, sock: UdpSocket) -> int:
    return sock.socket.hop_limit()


@udp_iface.func("[method]udp-socket.set-unicast-hop-limit")
def udp_set_unicast_hop_limit(cx: StoreState, sock: UdpSocket, value: int) -> None:
    sock.socket.set_hop_limit(value)


@udp_iface.func("[method]udp-socket.receive-buffer-size")
def udp_receive_buffer_size(cx: StoreState, sock: UdpSocket) -> int:
    return sock.socket.receive_buffer_size()


@udp_iface.func("[method]udp-socket.set-receive-buffer-size")
def udp_set_receive_buffer_size(cx: StoreState, sock: UdpSocket, value: int) -> None:
    sock.socket.set_receive_buffer_size(value)


@udp_iface.func("[method]udp-socket.send-buffer-size")
def udp_send_buffer_size(cx: StoreState, sock: UdpSocket) -> int:
    return sock.socket.send_buffer_size()


@udp_iface.func("[method]udp-socket.set-send-buffer-size")
def udp_set_send_buffer_size(cx: StoreState, sock: UdpSocket, value: int) -> None:
    sock.socket.set_send_buffer_size(value)


@udp_iface.func("[method]udp-socket.subscribe")
def udp_subscribe(cx: StoreState, sock: UdpSocket) -> Pollable:
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
