"""Guest-side binding for TLS clients: connect/read/write/close over wasi:sockets and the
upstream wasi:tls@0.2.0-draft handshake resources.

    from wasi_tls_client import connect
    with connect("example.com", 443, timeout=10) as conn:
        conn.write_all(b"GET / HTTP/1.0\\r\\n\\r\\n")
        body = conn.read_all()

Errors are ``TlsError`` (handshake or stream failures, with the host's explanation),
``ConnectionError`` (TCP) and ``TimeoutError``. A guest built for Wasmtime's ``-S tls`` uses
the same imports, so this module runs there too.
"""

from componentize_py_types import Err
from wit_world.imports import (
    instance_network,
    ip_name_lookup,
    monotonic_clock,
    network,
    poll,
    streams,
    tcp,
    tcp_create_socket,
)
from wit_world.imports import wasi_tls_types as tls


class TlsError(Exception):
    """The TLS handshake or connection failed; the message comes from the host."""


def _deadline(timeout):
    return None if timeout is None else monotonic_clock.now() + int(timeout * 1e9)


def _wait(pollable, deadline, what):
    """Block on ``pollable`` until it is ready or the deadline passes."""
    if deadline is None:
        pollable.block()
        return
    timer = monotonic_clock.subscribe_instant(deadline)
    try:
        if 0 not in poll.poll([pollable, timer]):
            raise TimeoutError(f"timed out waiting for {what}")
    finally:
        timer.__exit__(None, None, None)


def _stream_error(err):
    value = err.value
    if isinstance(value, streams.StreamError_LastOperationFailed):
        return value.value.to_debug_string()
    return "closed"


def _ipv4_literal(host):
    parts = host.split(".")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
        return network.IpAddress_Ipv4(tuple(int(p) for p in parts))
    return None


def resolve(host, deadline=None):
    """IP addresses for ``host`` (a name or a literal address)."""
    literal = _ipv4_literal(host)
    if literal is not None:
        return [literal]  # no lookup round trips for the common literal case
    stream = ip_name_lookup.resolve_addresses(instance_network.instance_network(), host)
    addresses = []
    while True:
        try:
            address = stream.resolve_next_address()
        except Err as e:
            if e.value == network.ErrorCode.WOULD_BLOCK:
                _wait(stream.subscribe(), deadline, f"name lookup of {host}")
                continue
            raise ConnectionError(f"cannot resolve {host!r}: {e.value.name.lower().replace('_', '-')}") from None
        if address is None:  # end of the results
            if not addresses:
                raise ConnectionError(f"cannot resolve {host!r}: no addresses")
            return addresses
        addresses.append(address)


_NETWORK = []


def _network():
    """The instance network handle, fetched once and reused by every connect."""
    if not _NETWORK:
        _NETWORK.append(instance_network.instance_network())
    return _NETWORK[0]


def _socket_address(address, port):
    if isinstance(address, network.IpAddress_Ipv4):
        return network.IpSocketAddress_Ipv4(network.Ipv4SocketAddress(port, address.value))
    return network.IpSocketAddress_Ipv6(network.Ipv6SocketAddress(port, 0, address.value, 0))


def tcp_connect(host, port, deadline=None):
    """(socket, input-stream, output-stream) of a TCP connection to host:port."""
    last_error = None
    for address in resolve(host, deadline):
        family = network.IpAddressFamily.IPV4 if isinstance(address, network.IpAddress_Ipv4) else network.IpAddressFamily.IPV6
        sock = tcp_create_socket.create_tcp_socket(family)
        try:
            sock.start_connect(_network(), _socket_address(address, port))
            # Every host call costs a guest-side round trip: wait first (a non-blocking
            # connect is practically never complete at once), then finish.
            ready = sock.subscribe()
            while True:
                _wait(ready, deadline, f"TCP connect to {host}:{port}")
                try:
                    rx, tx = sock.finish_connect()
                except Err as e:
                    if e.value != network.ErrorCode.WOULD_BLOCK:
                        raise
                    continue
                ready.__exit__(None, None, None)
                return sock, rx, tx
        except Err as e:
            last_error = f"{e.value.name.lower().replace('_', '-')}"
            sock.__exit__(None, None, None)
    raise ConnectionError(f"cannot connect to {host}:{port}: {last_error}")


class TlsConnection:
    def __init__(self, sock, connection, rx, tx, server_name):
        self.sock = sock
        self.connection = connection
        self.rx = rx
        self.tx = tx
        self.server_name = server_name
        self.eof = False

    def read(self, n=65536, timeout=None):
        """Up to n bytes; b"" after the peer's close_notify."""
        if self.eof:
            return b""
        deadline = _deadline(timeout)
        while True:
            try:
                data = self.rx.read(n)
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    self.eof = True
                    return b""
                raise TlsError(_stream_error(e)) from None
            if data:
                return data
            _wait(self.rx.subscribe(), deadline, "data from the TLS peer")

    def read_all(self, timeout=None):
        chunks = []
        while True:
            chunk = self.read(1 << 16, timeout)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def write_all(self, data, timeout=None):
        deadline = _deadline(timeout)
        view = memoryview(data)
        while view:
            try:
                permit = self.tx.check_write()
                if permit == 0:
                    _wait(self.tx.subscribe(), deadline, "the TLS peer to accept data")
                    continue
                chunk = view[:permit]
                self.tx.write(bytes(chunk))
                view = view[len(chunk):]
            except Err as e:
                raise TlsError(_stream_error(e)) from None
        self.flush(timeout)

    def flush(self, timeout=None):
        deadline = _deadline(timeout)
        try:
            self.tx.flush()
            while self.tx.check_write() == 0:
                _wait(self.tx.subscribe(), deadline, "the TLS peer to accept data")
        except Err as e:
            raise TlsError(_stream_error(e)) from None

    def close(self):
        """Send close_notify and release everything (children before parents)."""
        try:
            self.connection.close_output()
            self.flush(timeout=5)
        except (TlsError, TimeoutError):
            pass
        for resource in (self.rx, self.tx, self.connection, self.sock):
            resource.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def handshake(rx, tx, server_name, deadline=None):
    """Run the TLS handshake over any pair of wasi:io streams."""
    future = tls.ClientHandshake.finish(tls.ClientHandshake(server_name, rx, tx))
    try:
        ready = future.subscribe()
        while True:
            # The server must answer before anything can complete: wait, then get.
            _wait(ready, deadline, f"the TLS handshake with {server_name}")
            outcome = future.get()
            if outcome is not None:
                break
        ready.__exit__(None, None, None)
    finally:
        future.__exit__(None, None, None)
    if isinstance(outcome, Err):
        raise TlsError("handshake result was already taken")
    result = outcome.value
    if isinstance(result, Err):
        raise TlsError(result.value.to_debug_string())
    return result.value


def connect(host, port, server_name=None, timeout=30.0):
    deadline = _deadline(timeout)
    sock, rx, tx = tcp_connect(host, port, deadline)
    name = server_name or host
    try:
        connection, plain_rx, plain_tx = handshake(rx, tx, name, deadline)
    except BaseException:
        sock.__exit__(None, None, None)
        raise
    return TlsConnection(sock, connection, plain_rx, plain_tx, name)
