"""asyncio-style TLS streams for WASI 0.3 Python guests (componentize-py), like the stdlib's.

    from wasi_tls_aio import open_connection
    reader, writer = await open_connection("example.com", 443, alpn=["http/1.1"])
    writer.write(b"GET / HTTP/1.0\\r\\nHost: example.com\\r\\n\\r\\n")
    await writer.drain()
    status = await reader.readline()
    writer.close()
    await writer.wait_closed()

The guest's world must import wasi:sockets@0.3.0 and this project's
``wasi-tls-host:tls@0.2.0`` (world ``tls-host-p3``). The TCP socket's byte streams go straight
to the host's TLS (nothing is copied through the guest); the host verifies the server with
its own trust (``--trust``) and holds any client key (``identity=`` names one the embedder
preopened). Errors: ``TlsError`` (handshake or connection: ``.code`` is the WIT error code's
name, the message is the host's, e.g. what OpenSSL said about the certificate),
``ConnectionError`` and its subclasses for TCP, ``asyncio.IncompleteReadError`` and
``asyncio.LimitOverrunError`` as asyncio raises them.
"""

import asyncio
import ipaddress

import wit_world
from componentize_py_types import Err
from wit_world.imports import ip_name_lookup
from wit_world.imports.wasi_sockets_types import (
    IpAddressFamily,
    IpAddress_Ipv4,
    IpSocketAddress_Ipv4,
    IpSocketAddress_Ipv6,
    Ipv4SocketAddress,
    Ipv6SocketAddress,
    TcpSocket,
)
from wit_world.imports.wasi_tls_host_tls_client import IncomingServerHello, OutgoingClientHello

__all__ = ["open_connection", "StreamReader", "StreamWriter", "TlsError"]

CHUNK = 1 << 16
DEFAULT_LIMIT = 1 << 16  # asyncio's default line limit

# IANA protocol versions and the names Python's ssl gives them.
VERSIONS = {0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
# IANA cipher suites: (OpenSSL name, secret bits), as ssl's SSLSocket.cipher() reports them.
CIPHERS = {
    0x1301: ("TLS_AES_128_GCM_SHA256", 128),
    0x1302: ("TLS_AES_256_GCM_SHA384", 256),
    0x1303: ("TLS_CHACHA20_POLY1305_SHA256", 256),
    0xC02B: ("ECDHE-ECDSA-AES128-GCM-SHA256", 128),
    0xC02C: ("ECDHE-ECDSA-AES256-GCM-SHA384", 256),
    0xC02F: ("ECDHE-RSA-AES128-GCM-SHA256", 128),
    0xC030: ("ECDHE-RSA-AES256-GCM-SHA384", 256),
    0xCCA8: ("ECDHE-RSA-CHACHA20-POLY1305", 256),
    0xCCA9: ("ECDHE-ECDSA-CHACHA20-POLY1305", 256),
}
# wasi:sockets error codes with a more specific builtin exception than ConnectionError.
SOCKET_ERRORS = {
    "connection-refused": ConnectionRefusedError,
    "connection-reset": ConnectionResetError,
    "connection-aborted": ConnectionAbortedError,
    "timeout": TimeoutError,
}


class TlsError(ConnectionError):
    """The TLS handshake or connection failed; ``code`` names the WIT error code
    (``unknown-issuer``, ``name-mismatch``, ``truncated``, ...)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


def _wit_name(value):
    """A variant case as its WIT name: ErrorCode_ConnectionRefused -> connection-refused."""
    name = type(value).__name__.partition("_")[2]
    return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-") or repr(value)


def _tls_error(err):
    e = err.value if isinstance(err, Err) else err
    return TlsError(e.code.name.lower().replace("_", "-"), e.message)


def _socket_error(err, what):
    code = _wit_name(err.value if isinstance(err, Err) else err)
    return SOCKET_ERRORS.get(code, ConnectionError)(f"{what}: {code}")


async def _addresses(host):
    """The IP addresses of ``host`` (a literal, or a name the host resolves)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = await ip_name_lookup.resolve_addresses(host)
    except Err as e:
        raise _socket_error(e, f"cannot resolve {host!r}") from None
    out = []
    for a in found:
        if isinstance(a, IpAddress_Ipv4):
            out.append(ipaddress.IPv4Address(bytes(a.value)))
        else:
            out.append(ipaddress.IPv6Address(b"".join(w.to_bytes(2, "big") for w in a.value)))
    return out


def _socket_address(ip, port):
    if ip.version == 4:
        return IpAddressFamily.IPV4, IpSocketAddress_Ipv4(Ipv4SocketAddress(port, tuple(ip.packed)))
    words = tuple(int.from_bytes(ip.packed[i:i + 2], "big") for i in range(0, 16, 2))
    return IpAddressFamily.IPV6, IpSocketAddress_Ipv6(Ipv6SocketAddress(port, 0, words, 0))


async def _tcp_connect(host, port):
    """A connected TcpSocket: each address of ``host`` in turn, the last error if none."""
    error = None
    for ip in await _addresses(host):
        family, address = _socket_address(ip, port)
        sock = TcpSocket.create(family)
        try:
            await sock.connect(address)
            return sock
        except Err as e:
            sock.__exit__(None, None, None)
            error = _socket_error(e, f"cannot connect to {host}:{port}")
    raise error or ConnectionError(f"cannot resolve {host!r}: no addresses")


class StreamReader:
    """The plaintext the server sends, read as with asyncio.StreamReader."""

    def __init__(self, data, done, limit=DEFAULT_LIMIT):
        self._data = data  # ByteStreamReader of plaintext
        self._done = done  # future: how the peer's data ended
        self._buffer = bytearray()
        self._eof = False
        self._limit = limit

    async def _fill(self):
        """Read more plaintext into the buffer; False at the end of the peer's data."""
        if self._eof:
            return False
        chunk = await self._data.read(CHUNK)
        if chunk:
            self._buffer += chunk
            return True
        if not self._data.writer_dropped:
            return True
        self._eof = True
        self._data.__exit__(None, None, None)
        ended = await self._done.read()
        self._done.__exit__(None, None, None)
        if isinstance(ended, Err):
            raise _tls_error(ended)
        return False

    def at_eof(self):
        return self._eof and not self._buffer

    async def read(self, n=-1):
        if n == 0:
            return b""
        if n < 0:
            while await self._fill():
                pass
            data, self._buffer = bytes(self._buffer), bytearray()
            return data
        if not self._buffer:
            await self._fill()
            while not self._buffer and not self._eof:
                await self._fill()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readexactly(self, n):
        while len(self._buffer) < n:
            if not await self._fill():
                partial, self._buffer = bytes(self._buffer), bytearray()
                raise asyncio.IncompleteReadError(partial, n)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readuntil(self, separator=b"\n"):
        start = 0
        while True:
            i = self._buffer.find(separator, start)
            if i >= 0:
                end = i + len(separator)
                if end > self._limit:
                    raise asyncio.LimitOverrunError("separator found, but chunk is longer than limit", i)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > self._limit:
                raise asyncio.LimitOverrunError("separator not found, and chunk exceeds the limit", len(self._buffer))
            start = max(0, len(self._buffer) - len(separator) + 1)
            if not await self._fill():
                partial, self._buffer = bytes(self._buffer), bytearray()
                raise asyncio.IncompleteReadError(partial, None)

    async def readline(self):
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            return e.partial

    def __aiter__(self):
        return self

    async def __anext__(self):
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class StreamWriter:
    """Plaintext to the server, written as with asyncio.StreamWriter: ``write`` buffers,
    ``drain`` hands the buffer to the host, ``close`` sends close_notify after it."""

    def __init__(self, sock, connection, data, done, sent, extra):
        self._sock = sock
        self._connection = connection
        self._data = data  # ByteStreamWriter of plaintext
        self._done = done  # future: every byte encrypted and handed to the socket
        self._sent = sent  # future: the socket's send finished
        self._extra = extra
        self._buffer = bytearray()
        self._closing = None

    def write(self, data):
        if self._closing is not None:
            raise RuntimeError("write() after close()")
        self._buffer += data

    def writelines(self, data):
        for chunk in data:
            self.write(chunk)

    def can_write_eof(self):
        return False

    def is_closing(self):
        return self._closing is not None

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

    async def drain(self):
        while self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            written = await self._data.write_all(data)
            if written < len(data):
                await self._finish()
                raise ConnectionResetError("the TLS connection no longer takes data")

    def close(self):
        if self._closing is None:
            self._closing = asyncio.get_event_loop().create_task(self._finish())

    async def _finish(self):
        """Flush, end the plaintext (close_notify), and wait until the socket sent it all."""
        try:
            if self._buffer:
                data, self._buffer = bytes(self._buffer), bytearray()
                await self._data.write_all(data)
        finally:
            self._data.__exit__(None, None, None)
        ended = await self._done.read()
        self._done.__exit__(None, None, None)
        sent = await self._sent.read()
        self._sent.__exit__(None, None, None)
        self._connection.__exit__(None, None, None)
        self._sock.__exit__(None, None, None)
        if isinstance(ended, Err):
            raise _tls_error(ended)
        if isinstance(sent, Err):
            raise _socket_error(sent, "sending to the server")

    async def wait_closed(self):
        self.close()
        await self._closing

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.wait_closed()


def _peercert(identity):
    """The server's certificate as ssl.SSLSocket.getpeercert() shapes it (plus ``der``)."""
    if identity is None:
        return None
    with identity:
        return {
            "subject": identity.subject(),
            "issuer": identity.issuer(),
            "subjectAltName": tuple(("DNS", n) for n in identity.subject_alt_names()),
            "der": identity.export_der(),
        }


async def open_connection(host, port, *, server_hostname=None, alpn=None, identity=None, limit=DEFAULT_LIMIT):
    """Connect over TCP and TLS; the server is verified as ``server_hostname`` (default:
    ``host``). ``alpn`` is a list of protocol names; ``identity`` names a client identity the
    embedder preopened (mutual TLS). Returns ``(StreamReader, StreamWriter)``."""
    sock = await _tcp_connect(host, port)
    try:
        ciphertext_in, received = sock.receive()
        received.__exit__(None, None, None)  # the TLS future reports how the data ended
        hello = OutgoingClientHello(server_hostname or host)
        try:
            if alpn:
                hello.set_alpn_ids([p.encode() if isinstance(p, str) else p for p in alpn])
            if identity is not None:
                hello.set_client_identity(identity)
            server_hello, ciphertext_out = OutgoingClientHello.connect(hello, ciphertext_in)
        except Err as e:
            raise _tls_error(e) from None
        sent = sock.send(ciphertext_out)
        try:
            connection = await IncomingServerHello.finish(server_hello)
        except Err as e:
            sent.__exit__(None, None, None)
            raise _tls_error(e) from None
    except BaseException:
        sock.__exit__(None, None, None)
        raise
    plaintext_in, receive_done = connection.receive()
    tx, rx = wit_world.byte_stream()
    send_done = connection.send(rx)
    alpn_id = connection.alpn_id()
    version = VERSIONS.get(connection.protocol_version(), "0x%04x" % connection.protocol_version())
    suite = connection.cipher_suite()
    name, bits = CIPHERS.get(suite, ("0x%04x" % suite, None))
    extra = {
        "peername": (host, port),
        "server_hostname": server_hostname or host,
        "peercert": _peercert(connection.peer_identity()),
        "cipher": (name, version, bits),
        "version": version,
        "alpn": alpn_id.decode() if alpn_id is not None else None,
    }
    return StreamReader(plaintext_in, receive_done, limit), StreamWriter(sock, connection, tx, send_done, sent, extra)
