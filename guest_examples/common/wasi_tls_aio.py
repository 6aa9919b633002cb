"""TLS for Python guests (componentize-py), shaped like the standard library's: asyncio
streams on WASI 0.3, a blocking connection on WASI 0.2. One module for both; the guest's
world decides which API it has.

WASI 0.3 (``async def run``), like ``asyncio.open_connection``/``start_server``::

    from wasi_tls_aio import open_connection
    reader, writer = await open_connection("example.com", 443, alpn=["http/1.1"])
    writer.write(b"GET / HTTP/1.0\\r\\nHost: example.com\\r\\n\\r\\n")
    await writer.drain()
    status = await reader.readline()
    writer.close()
    await writer.wait_closed()

The world imports wasi:sockets@0.3.0 and this project's ``wasi-tls-host:tls@0.2.0`` (world
``tls-host-p3``), or only upstream's ``wasi:tls@0.3.0-draft`` client (``tls-client-p3``,
as for wasmtime's ``-Sp3 -Stls``). The TCP socket's byte streams go straight to the host's
TLS (nothing is copied through the guest); the host verifies the server with its own trust
(``--trust``) and holds any key (``identity=`` names one the embedder preopened). Errors:
``TlsError`` (handshake or connection: ``.code`` is the WIT error code's name, the message
is the host's, e.g. what OpenSSL said about the certificate), ``ConnectionError`` and its
subclasses for TCP, ``asyncio.IncompleteReadError`` and ``asyncio.LimitOverrunError`` as
asyncio raises them.

WASI 0.2 (a plain ``def run``), over wasi:sockets 0.2 and upstream's
``wasi:tls@0.2.0-draft`` handshake resources (so it runs on wasmtime's ``-S tls`` too)::

    from wasi_tls_aio import connect
    with connect("example.com", 443, timeout=10) as conn:
        conn.write_all(b"GET / HTTP/1.0\\r\\n\\r\\n")
        body = conn.read_all()

Errors: ``TlsError`` (the host's explanation), ``ConnectionError`` (TCP), ``TimeoutError``.
(``wasi_tls_client``, this API's old module name, still imports it.)
"""

import sys

import wit_world
from componentize_py_types import Err

try:  # wasi:io/poll is in WASI 0.2 worlds only
    from wit_world.imports import poll
except ImportError:
    poll = None

if poll is None:  # WASI 0.3: the asyncio API (a 0.2 guest does not load asyncio)
    import asyncio
    import ipaddress

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

    try:  # this project's wasi-tls-host:tls (world tls-host-p3): clients and servers
        from wit_world.imports import server as tls_server
        from wit_world.imports.server import IncomingClientHello, OutgoingServerHello
        from wit_world.imports.wasi_tls_host_tls_client import IncomingServerHello, OutgoingClientHello
        Connector = None
    except ImportError:  # only the upstream wasi:tls@0.3.0-draft client (world tls-client-p3, wasmtime -Stls)
        from wit_world.imports.client import Connector
    __all__ = ["open_connection", "start_server", "Server", "ClientHello", "StreamReader", "StreamWriter", "TlsError",
               "CodeMismatchError", "decode_certificate"]
else:  # WASI 0.2: the blocking API
    from wit_world.imports import (
        instance_network,
        ip_name_lookup,
        monotonic_clock,
        network,
        streams,
        tcp_create_socket,
    )
    from wit_world.imports import wasi_tls_types as tls
    __all__ = ["connect", "TlsConnection", "TlsError", "handshake", "tcp_connect", "resolve", "decode_certificate"]

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
    (``unknown-issuer``, ``name-mismatch``, ``truncated``, ...; None if the host's message
    names none)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code


class CodeMismatchError(TlsError):
    """The peer's certificate does not show the code ``expect_peer_code=`` asked for: not
    attested, attested by a CA the embedder does not trust for code claims, or attested for
    other code (the message says which, with the digests). ``code`` is ``code-mismatch``."""


def _error_for_code(code, message):
    return (CodeMismatchError if code == "code-mismatch" else TlsError)(code, message)


def _tls_error_from_message(message):
    """This host's messages start with the error code: ``unknown-issuer: ...``."""
    code, sep, rest = message.partition(": ")
    if sep and code.replace("-", "").isalpha() and code.islower():
        return _error_for_code(code, rest)
    return TlsError(None, message)


def _wit_name(value):
    """A variant case as its WIT name: ErrorCode_ConnectionRefused -> connection-refused."""
    name = type(value).__name__.partition("_")[2]
    return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-") or repr(value)


def _tls_error(err):
    e = err.value if isinstance(err, Err) else err
    if hasattr(e, "to_debug_string"):  # upstream's error resource: a message, no code field
        with e:
            return _tls_error_from_message(e.to_debug_string())
    return _error_for_code(e.code.name.lower().replace("_", "-"), e.message)


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


def _ipv4_quad(host):
    """The four numbers of a dotted-quad address literal as ``ipaddress`` accepts it (no
    leading zeros), else None: the common case of a literal without the module's parsing,
    which costs tens of microseconds a connection in a guest."""
    parts = host.split(".")
    if len(parts) != 4:
        return None
    quad = []
    for part in parts:
        if not (part.isascii() and part.isdigit()) or len(part) > 3 or (len(part) > 1 and part[0] == "0"):
            return None
        number = int(part)
        if number > 255:
            return None
        quad.append(number)
    return tuple(quad)


# (host, port) of an address literal -> its [(family, socket address)]: the records are
# plain values, so one connection's serve the next (building them costs tens of microseconds
# in a guest). Names are looked up each time.
_LITERAL_TARGETS = {}
_LITERAL_TARGETS_KEPT = 64


def _literal_targets(host, port):
    """[(family, socket address)] of ``host`` if it is an address literal, else None."""
    targets = _LITERAL_TARGETS.get((host, port))
    if targets is None:
        quad = _ipv4_quad(host)
        if quad is not None:
            targets = [(IpAddressFamily.IPV4, IpSocketAddress_Ipv4(Ipv4SocketAddress(port, quad)))]
        else:
            try:
                targets = [_socket_address(ipaddress.ip_address(host), port)]
            except ValueError:
                return None
        if len(_LITERAL_TARGETS) >= _LITERAL_TARGETS_KEPT:
            _LITERAL_TARGETS.clear()
        _LITERAL_TARGETS[(host, port)] = targets
    return targets


async def _tcp_connect(host, port):
    """A connected TcpSocket: each address of ``host`` in turn, the last error if none."""
    targets = _literal_targets(host, port)
    if targets is None:
        targets = [_socket_address(ip, port) for ip in await _addresses(host)]
    error = None
    for family, address in targets:
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
        self._reading = False  # a read of the host's stream is in flight

    async def _next_chunk(self):
        """The next plaintext the host hands over (b"" if a read ended with none), or None
        at the end of the peer's data."""
        if self._eof:
            return None
        self._reading = True
        try:
            chunk = await self._data.read(CHUNK)
        finally:
            self._reading = False
        if chunk or not self._data.writer_dropped:
            return chunk
        self._eof = True
        self._data.__exit__(None, None, None)
        ended = await self._done.read()
        self._done.__exit__(None, None, None)
        if isinstance(ended, Err):
            raise _tls_error(ended)
        return None

    def _release(self):
        """The connection was closed (``writer.close()``): what is buffered stays readable,
        then the end; the host's stream and future go now, as the transport's do in asyncio,
        not whenever the garbage collector finds them (the host's work for them would land
        in whatever the guest does next, such as its next connection's handshake). A read
        in flight keeps them until it returns."""
        if self._eof or self._reading:
            return
        self._eof = True
        self._data.__exit__(None, None, None)
        self._done.__exit__(None, None, None)

    async def _fill(self):
        """Read more plaintext into the buffer; False at the end of the peer's data."""
        chunk = await self._next_chunk()
        if chunk is None:
            return False
        self._buffer += chunk
        return True

    def at_eof(self):
        return self._eof and not self._buffer

    async def read(self, n=-1):
        if n == 0:
            return b""
        if n < 0:
            # Chunks kept as they came and joined once, as asyncio does: a bytearray grown to
            # the whole body would be copied again each time it moves.
            blocks = [bytes(self._buffer)]
            self._buffer = bytearray()
            while (chunk := await self._next_chunk()) is not None:
                blocks.append(chunk)
            return b"".join(blocks)
        while not self._buffer:
            chunk = await self._next_chunk()
            if chunk is None:
                return b""
            if len(chunk) <= n:
                if chunk:  # the host's chunk as it came: no copy through the buffer
                    return chunk
            else:
                self._buffer += chunk
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

    def __init__(self, sock, connection, data, done, sent, extra, received=None, sent_in_done=False):
        self._sock = sock
        self._received = received  # future: how the socket's receiving ended (unread)
        self._connection = connection
        self._data = data  # ByteStreamWriter of plaintext
        self._done = done  # future: every byte encrypted and handed to the socket
        self._sent = sent  # future: the socket's send finished
        # ``done`` resolves ok only once the socket's send finished (accept-socket's
        # connections): ``sent`` then says nothing more and is dropped unread.
        self._sent_in_done = sent_in_done
        self._extra = extra
        self._buffer = bytearray()
        self._flushing = None  # the task handing the buffer to the host
        self._error = None
        self._closing = None
        self._reader = None  # a client's StreamReader: its host ends go at close

    def write(self, data):
        """Queue ``data``; it is sent in the background at once (as asyncio's transports
        do), and ``drain()`` waits until the queue is handed to the host."""
        if self._closing is not None:
            raise RuntimeError("write() after close()")
        if self._error is not None:
            raise self._error
        self._buffer += data
        if self._flushing is None and self._buffer:
            self._flushing = asyncio.get_event_loop().create_task(self._flush())

    async def _flush(self):
        try:
            while self._buffer:
                data, self._buffer = bytes(self._buffer), bytearray()
                written = await self._data.write_all(data)
                if written < len(data):
                    self._error = ConnectionResetError("the TLS connection no longer takes data")
                    self._buffer.clear()
        finally:
            self._flushing = None

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
        flushing = self._flushing
        if flushing is not None:
            await flushing
        if self._error is not None:
            raise self._error

    def close(self):
        if self._closing is None:
            self._closing = asyncio.get_event_loop().create_task(self._finish())

    async def _finish(self):
        """Flush, end the plaintext (close_notify), and wait until the socket sent it all."""
        try:
            if self._flushing is not None:
                await self._flushing
            if self._buffer:
                await self._flush()
        finally:
            self._data.__exit__(None, None, None)
        ended = await self._done.read()
        self._done.__exit__(None, None, None)
        sent = None if self._sent_in_done else await self._sent.read()
        self._sent.__exit__(None, None, None)
        if self._connection is not None:
            self._connection.__exit__(None, None, None)
        if self._received is not None:
            self._received.__exit__(None, None, None)
        self._sock.__exit__(None, None, None)
        if self._reader is not None:  # last, as the garbage collector would have: after close_notify and FIN
            self._reader._release()
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


# X.509 attribute OIDs by the long names OpenSSL (and so ssl.getpeercert()) gives them.
NAME_ATTRIBUTES = {
    "2.5.4.3": "commonName", "2.5.4.4": "surname", "2.5.4.5": "serialNumber", "2.5.4.6": "countryName",
    "2.5.4.7": "localityName", "2.5.4.8": "stateOrProvinceName", "2.5.4.9": "streetAddress",
    "2.5.4.10": "organizationName", "2.5.4.11": "organizationalUnitName", "2.5.4.12": "title",
    "2.5.4.17": "postalCode", "2.5.4.42": "givenName", "2.5.4.46": "dnQualifier", "2.5.4.97": "organizationIdentifier",
    "1.2.840.113549.1.9.1": "emailAddress", "0.9.2342.19200300.100.1.25": "domainComponent",
    "0.9.2342.19200300.100.1.1": "userId",
}
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
OID_SUBJECT_ALT_NAME = "2.5.29.17"


def _der(data, at=0):
    """The DER element at ``at``: (tag, content start, content end)."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[at:at + n], "big")
        at += n
    return tag, at, at + length


def _der_items(data, start, end):
    """The elements between ``start`` and ``end``, as (tag, content start, content end)."""
    while start < end:
        item = _der(data, start)
        yield item
        start = item[2]


def _oid(raw):
    first = raw[0]
    parts, value = [min(first // 40, 2), first - 40 * min(first // 40, 2)], 0
    for b in raw[1:]:
        value = value << 7 | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _der_name(data, start, end):
    """A Name as getpeercert() shapes it: a tuple of RDNs, each a tuple of (attribute, value)."""
    rdns = []
    for _, s, e in _der_items(data, start, end):  # SET per RDN
        rdn = []
        for _, a, b in _der_items(data, s, e):  # SEQUENCE { OID, value }
            (_, os_, oe), (vtag, vs, ve) = _der_items(data, a, b)
            oid = _oid(data[os_:oe])
            raw = bytes(data[vs:ve])
            text = raw.decode("utf-16-be") if vtag == 0x1E else raw.decode("utf-8", "replace")
            rdn.append((NAME_ATTRIBUTES.get(oid, oid), text))
        rdns.append(tuple(rdn))
    return tuple(rdns)


def _der_time(data, tag, start, end):
    """UTCTime or GeneralizedTime as getpeercert() writes it: 'Jan  5 09:34:43 2018 GMT'."""
    text = bytes(data[start:end]).decode("ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 1950-2049
        year = int(text[:2])
        text = str(year + (1900 if year >= 50 else 2000)) + text[2:]
    year, month, day = text[:4], int(text[4:6]), int(text[6:8])
    return f"{MONTHS[month - 1]} {day:2d} {text[8:10]}:{text[10:12]}:{text[12:14]} {year} GMT"


def _der_alt_names(data, start, end):
    names = []
    for tag, s, e in _der_items(data, start, end):
        raw = bytes(data[s:e])
        if tag == 0x82:
            names.append(("DNS", raw.decode("ascii", "replace")))
        elif tag == 0x87:
            if len(raw) == 4:
                names.append(("IP Address", ".".join(map(str, raw))))
            else:
                names.append(("IP Address", ":".join("%X" % int.from_bytes(raw[i:i + 2], "big") for i in range(0, 16, 2))))
        elif tag == 0x81:
            names.append(("email", raw.decode("ascii", "replace")))
        elif tag == 0x86:
            names.append(("URI", raw.decode("ascii", "replace")))
    return tuple(names)


def decode_certificate(der):
    """A DER certificate as ssl.SSLSocket.getpeercert() shapes it: ``subject``, ``issuer``,
    ``version``, ``serialNumber``, ``notBefore``, ``notAfter``, ``subjectAltName``."""
    data = memoryview(der)
    _, cs, ce = _der(data)  # Certificate
    _, ts, te = _der(data, cs)  # TBSCertificate
    fields = list(_der_items(data, ts, te))
    version = 1
    if fields[0][0] == 0xA0:  # [0] EXPLICIT version
        _, vs, ve = _der(data, fields[0][1])
        version = int.from_bytes(data[vs:ve], "big") + 1
        fields = fields[1:]
    serial, _, issuer, validity, subject = fields[:5]
    (bt, bs, be), (at, as_, ae) = _der_items(data, validity[1], validity[2])
    cert = {
        "subject": _der_name(data, subject[1], subject[2]),
        "issuer": _der_name(data, issuer[1], issuer[2]),
        "version": version,
        "serialNumber": (bytes(data[serial[1]:serial[2]]).lstrip(b"\0").hex().upper() or "00"),
        "notBefore": _der_time(data, bt, bs, be),
        "notAfter": _der_time(data, at, as_, ae),
    }
    for tag, s, e in fields[5:]:
        if tag != 0xA3:  # [3] EXPLICIT extensions
            continue
        _, xs, xe = _der(data, s)
        for _, es, ee in _der_items(data, xs, xe):
            parts = list(_der_items(data, es, ee))
            if _oid(data[parts[0][1]:parts[0][2]]) == OID_SUBJECT_ALT_NAME:
                _, ns, ne = _der(data, parts[-1][1])  # OCTET STRING holding GeneralNames
                cert["subjectAltName"] = _der_alt_names(data, ns, ne)
    return cert


def _peer(identity):
    """(peercert, peer code): the peer's certificate as ssl.SSLSocket.getpeercert() shapes
    it (decoded here from the DER the host gives), plus ``der``: the leaf's DER; and the
    ``sha256:<hex>`` code digest its certificate claims (None if it is not attested; a
    claim is checked only by ``expect_peer_code=``)."""
    if identity is None:
        return None, None
    with identity:
        der = identity.export_der()[0]
        code = identity.code_identity()
    cert = decode_certificate(der)
    cert["der"] = der
    return cert, code.digest if code is not None else None


async def open_connection(host, port, *, server_hostname=None, alpn=None, identity=None, expect_peer_code=None,
                          limit=DEFAULT_LIMIT):
    """Connect over TCP and TLS; the server is verified as ``server_hostname`` (default:
    ``host``). ``alpn`` is a list of protocol names; ``identity`` names a client identity the
    embedder preopened (mutual TLS). ``expect_peer_code="sha256:<hex>"`` also requires the
    server's certificate to be attested, by a CA the embedder trusts for code claims
    (``--attest-trust``), for exactly that component: otherwise ``CodeMismatchError``, and
    the connection never counts as established. Returns ``(StreamReader, StreamWriter)``."""
    if poll is not None:
        raise RuntimeError("open_connection() needs a WASI 0.3 world (async def run); in WASI 0.2 use connect()")
    if Connector is not None and (alpn or identity is not None or expect_peer_code is not None):
        raise ValueError("alpn=, identity= and expect_peer_code= need wasi-tls-host:tls (world tls-host-p3); "
                         "this guest has only the upstream wasi:tls client")
    sock = await _tcp_connect(host, port)
    if Connector is not None:
        return await _open_upstream(sock, host, port, server_hostname or host, limit)
    try:
        ciphertext_in, received = sock.receive()
        received.__exit__(None, None, None)  # the TLS future reports how the data ended
        hello = OutgoingClientHello(server_hostname or host)
        try:
            if alpn:
                hello.set_alpn_ids([p.encode() if isinstance(p, str) else p for p in alpn])
            if identity is not None:
                hello.set_client_identity(identity)
            if expect_peer_code is not None:
                hello.expect_peer_code(expect_peer_code)
        except Err as e:
            hello.__exit__(None, None, None)
            ciphertext_in.__exit__(None, None, None)
            raise _tls_error(e) from None
        try:
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
    extra = {"peername": (host, port), "server_hostname": server_hostname or host}
    reader, writer = _streams(sock, connection, sent, extra, limit)
    writer._reader = reader
    return reader, writer


async def _open_upstream(sock, host, port, server_name, limit):
    """open_connection through upstream's connector: no ALPN, client identities, peer code
    or connection details there (``get_extra_info`` gives None for them)."""
    connector = Connector()
    try:
        tx, cleartext_out = wit_world.byte_stream()
        ciphertext_out, send_done = connector.send(cleartext_out)
        # The TLS future reports how the data ended; the socket's own is dropped with the
        # socket (not now: each call into the host costs tens of microseconds of handshake).
        ciphertext_in, received = sock.receive()
        plaintext_in, receive_done = connector.receive(ciphertext_in)
        sent = sock.send(ciphertext_out)
        try:
            await Connector.connect(connector, server_name)
        except Err as e:
            for end in (tx, plaintext_in, receive_done, send_done, sent, received):
                end.__exit__(None, None, None)
            raise _tls_error(e) from None
    except BaseException:
        sock.__exit__(None, None, None)
        raise
    extra = {"peername": (host, port), "server_hostname": server_name,
             "peercert": None, "peer_code": None, "cipher": None, "version": None, "alpn": None}
    reader = StreamReader(plaintext_in, receive_done, limit)
    writer = StreamWriter(sock, None, tx, send_done, sent, extra, received)
    writer._reader = reader
    return reader, writer


def _streams(sock, connection, sent, extra, limit):
    """The reader and writer of a client's established connection (a server's come from
    ``establish``, see ``_established_streams``)."""
    plaintext_in, receive_done = connection.receive()
    tx, rx = wit_world.byte_stream()
    send_done = connection.send(rx)
    alpn_id = connection.alpn_id()
    suite = connection.cipher_suite()
    # A TLS 1.3 suite (0x13XX) is negotiated in TLS 1.3 only (RFC 8446 B.4): the host is asked
    # for the version only when the suite does not say it.
    number = 0x0304 if suite >> 8 == 0x13 else connection.protocol_version()
    _negotiated(extra, connection, number, suite, alpn_id, True)
    return StreamReader(plaintext_in, receive_done, limit), StreamWriter(sock, connection, tx, send_done, sent, extra)


def _negotiated(extra, connection, number, suite, alpn_id, peer_asked):
    """What get_extra_info says of an established connection, into ``extra``."""
    version = VERSIONS.get(number, "0x%04x" % number)
    name, bits = CIPHERS.get(suite, ("0x%04x" % suite, None))
    peercert, peer_code = _peer(connection.peer_identity()) if peer_asked else (None, None)
    extra.update({
        "peercert": peercert,
        "peer_code": peer_code,
        "cipher": (name, version, bits),
        "version": version,
        "alpn": alpn_id.decode() if alpn_id is not None else None,
    })


def _established_streams(sock, established, tx, sent, extra, limit, peer_asked):
    """The reader and writer of a connection ``IncomingClientHello.establish`` handed over
    (``tx``: the writable end of the plaintext it sends), as ``_streams`` makes them."""
    connection = established.connection
    _negotiated(extra, connection, established.protocol_version, established.cipher_suite, established.alpn_id, peer_asked)
    return (StreamReader(established.plaintext, established.received, limit),
            StreamWriter(sock, connection, tx, established.sent, sent, extra, sent_in_done=True))


class ClientHello:
    """What a client asked for, as ``select_identity`` sees it: ``server_name`` (SNI or
    None), ``alpn`` (protocol names), ``versions`` (e.g. ``["TLSv1.3", "TLSv1.2"]``)."""

    def __init__(self, server_name, alpn, versions):
        self.server_name = server_name
        self.alpn = alpn
        self.versions = versions

    def __repr__(self):
        return f"ClientHello(server_name={self.server_name!r}, alpn={self.alpn!r}, versions={self.versions!r})"


ALERT_UNRECOGNIZED_NAME = 112
ALERT_INTERNAL_ERROR = 80


class Server:
    """A listening TLS server, as asyncio.Server: ``serve_forever()``, ``close()``,
    ``wait_closed()``, ``sockets`` (here: the bound ``(host, port)`` pairs)."""

    def __init__(self, sock, incoming, handle, address):
        self._sock = sock  # the listening TcpSocket
        self._incoming = incoming  # StreamReader of accepted TcpSockets
        self._handle = handle
        self._tasks = set()
        self._closed = False
        self._accepting = False  # a read of ``_incoming`` is pending
        self.sockets = [address]

    def is_serving(self):
        return not self._closed

    async def serve_forever(self):
        """Accept connections until close() (or the host's graceful stop), each handled in
        a task of its own; returns once the listener is closed. Connections being served go
        on: ``wait_closed()`` waits for them."""
        loop = asyncio.get_event_loop()
        try:
            while not self._closed:
                self._accepting = True
                try:
                    accepted = await self._incoming.read(16)
                finally:
                    self._accepting = False
                if not accepted and self._incoming.writer_dropped:
                    break  # the host stopped accepting (graceful stop)
                for sock in accepted:
                    if self._closed:
                        sock.__exit__(None, None, None)
                        continue
                    task = loop.create_task(self._handle(sock))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            self._closed = True
            self._drop_listener()

    def close(self):
        """Stop accepting at once: a serve_forever() waiting for a connection returns and
        the listener is closed (clients still in its backlog are refused); connections
        being served go on."""
        if self._closed:
            return
        self._closed = True
        # componentize-py cannot cancel the pending accept read (stream.cancel-read); this
        # host ends it empty when the socket is dropped, then the stream's drop closes the
        # listener.
        if self._sock is not None:
            self._sock.__exit__(None, None, None)
            self._sock = None
        if not self._accepting:
            self._drop_listener()

    def _drop_listener(self):
        if self._incoming is not None:
            self._incoming.__exit__(None, None, None)
            self._incoming = None
        if self._sock is not None:
            self._sock.__exit__(None, None, None)
            self._sock = None

    async def wait_closed(self):
        """Wait until every connection handler has returned."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()
        await self.wait_closed()


async def start_server(client_connected_cb, host, port, *, identity=None, select_identity=None, alpn=None,
                       client_ca=None, require_client_cert=None, expect_peer_code=None, limit=DEFAULT_LIMIT):
    """Listen on ``host:port`` (port 0: any) and call ``client_connected_cb(reader, writer)``
    (a coroutine function or a plain one) for each TLS connection, concurrently.

    The server's certificate is an identity the embedder preopened (``--identity NAME=...``):
    ``identity="NAME"``, or ``select_identity(client_hello) -> NAME or None`` (may be async)
    chooses one per connection from the ClientHello (None refuses it with an
    unrecognized_name alert). ``alpn`` lists the server's protocols in preference order; a
    client offering only others is refused with no_application_protocol (RFC 7301).
    Mutual TLS: ``client_ca="NAME"`` asks each client for a certificate and verifies it
    against the CA set the embedder preopened as ``--client-ca NAME=CA.pem`` (trust is named,
    as identities are); a client without one is refused unless ``require_client_cert=False``.
    ``require_client_cert=True`` alone uses the host's default ``--client-ca``. The
    client's certificate is ``writer.get_extra_info("peercert")``.
    ``expect_peer_code="sha256:<hex>"`` serves only clients whose certificate is attested
    for that component (it implies a required client certificate; ``client_ca`` must then
    name a set holding the attestation CA); others are refused with ``code-mismatch``.
    Returns a ``Server``; handshake failures are printed to stderr."""
    if poll is not None or Connector is not None:
        raise RuntimeError("start_server() needs a WASI 0.3 world with wasi-tls-host:tls (tls-host-p3)")
    if (identity is None) == (select_identity is None):
        raise ValueError("give exactly one of identity= and select_identity=")
    ip = (await _addresses(host))[0]
    family, address = _socket_address(ip, port)
    sock = TcpSocket.create(family)
    try:
        sock.bind(address)
        incoming = sock.listen()
        bound = sock.get_local_address()
    except Err as e:
        sock.__exit__(None, None, None)
        raise _socket_error(e, f"cannot listen on {host}:{port}") from None
    protocols = [p.encode() if isinstance(p, str) else p for p in alpn or []]
    shared_answer = [None]  # identity=: the answer every connection's establish borrows

    def _answer(name):
        """The server's answer for identity ``name`` (dropped again if it cannot be made)."""
        response = OutgoingServerHello(name)
        try:
            if protocols:
                # The host takes the first of these the client offered, and refuses a client
                # offering only others with no_application_protocol (RFC 7301 section 3.2);
                # the binding need not ask it for the client's ids first.
                response.set_alpn_preferences(protocols)
            if client_ca is not None:
                response.set_client_ca(client_ca)
                response.request_client_identity(require_client_cert is not False)
            elif require_client_cert:
                response.request_client_identity(True)
            if expect_peer_code is not None:
                response.expect_peer_code(expect_peer_code)
        except BaseException:
            response.__exit__(None, None, None)
            raise
        return response

    async def handle(conn_sock):
        peername = None
        try:
            # The socket's receive, accept, the socket's send of what TLS sends and its
            # remote address, in one call into the host (each a round trip through both runtimes).
            try:
                hello, sent, peer = tls_server.accept_socket(conn_sock)
            except Err as e:
                raise _tls_error(e) from None
            peername = (_ip_text(peer), peer.value.port) if peer is not None else None
            answered = False  # the hello handed back to the host (accepted or rejected)
            try:
                name = identity
                if select_identity is not None:
                    asked = await hello.summary()  # the name, ALPN ids and versions in one call
                    info = ClientHello(asked.server_name, [p.decode(errors="replace") for p in asked.alpn_ids],
                                       [VERSIONS.get(v, "0x%04x" % v) for v in asked.protocol_versions])
                    name = select_identity(info)
                    if hasattr(name, "__await__"):
                        name = await name
                    if name is None:
                        answered = True
                        IncomingClientHello.reject(hello, ALERT_UNRECOGNIZED_NAME)
                        await sent.read()
                        return
                # establish borrows the answer: with identity= one answer, made at the first
                # connection (and again while making it fails), serves them all.
                response = shared_answer[0] if select_identity is None else None
                own_response = None
                if response is None:
                    response = own_response = _answer(name)
                    if select_identity is None:
                        shared_answer[0], own_response = response, None
                answered = True
                # accept, finish, receive and send in one call into the host (each call a
                # round trip through both runtimes).
                tx, rx = wit_world.byte_stream()
                try:
                    established = await IncomingClientHello.establish(hello, response, rx)
                except BaseException:
                    tx.__exit__(None, None, None)
                    raise
                finally:
                    if own_response is not None:
                        own_response.__exit__(None, None, None)
            except Err as e:
                if not answered:
                    # The answer could not be made (e.g. set_client_ca of a set the embedder
                    # did not name): refuse now, not when the host's handshake deadline fires.
                    try:
                        IncomingClientHello.reject(hello, ALERT_INTERNAL_ERROR)
                    except Err:
                        pass  # the hello had failed already (the peer left): its alert is the host's
                # The host queued its alert and ends the ciphertext stream after it: wait until
                # the socket sent it, or closing the socket could drop the alert (under load).
                try:
                    await sent.read()
                except Exception:
                    pass
                raise _tls_error(e) from None
            reader, writer = _established_streams(
                conn_sock, established, tx, sent, {"peername": peername, "sockname": (host, bound.value.port)}, limit,
                peer_asked=client_ca is not None or bool(require_client_cert) or expect_peer_code is not None)
            conn_sock = None  # the writer owns it now
            try:
                result = client_connected_cb(reader, writer)
                if hasattr(result, "__await__"):
                    await result
            except Exception:
                # As asyncio's start_server does when its callback fails: the connection is
                # closed now (close_notify), not whenever the garbage collector gets to it.
                writer.close()
                try:
                    await writer.wait_closed()
                except Exception:
                    pass  # the callback's failure is the one to report
                raise
        except Exception as e:
            print(f"wasi_tls_aio: connection from {peername}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        finally:
            if conn_sock is not None:
                conn_sock.__exit__(None, None, None)

    return Server(sock, incoming, handle, (str(ip), bound.value.port))


def _ip_text(address):
    """A socket address's IP as text (IPv4 formatted directly: it is asked per connection)."""
    if isinstance(address, IpSocketAddress_Ipv4):
        return "%d.%d.%d.%d" % tuple(address.value.address)
    return str(ipaddress.IPv6Address(b"".join(w.to_bytes(2, "big") for w in address.value.address)))


# --- WASI 0.2: the blocking API ---------------------------------------------------


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
    quad = _ipv4_quad(host)
    return network.IpAddress_Ipv4(quad) if quad is not None else None


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


def _socket_address_p2(address, port):
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
            sock.start_connect(_network(), _socket_address_p2(address, port))
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
                raise _tls_error_from_message(_stream_error(e)) from None
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
                raise _tls_error_from_message(_stream_error(e)) from None
        self.flush(timeout)

    def flush(self, timeout=None):
        deadline = _deadline(timeout)
        try:
            self.tx.flush()
            while self.tx.check_write() == 0:
                _wait(self.tx.subscribe(), deadline, "the TLS peer to accept data")
        except Err as e:
            raise _tls_error_from_message(_stream_error(e)) from None

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
        raise TlsError(None, "handshake result was already taken")
    result = outcome.value
    if isinstance(result, Err):
        raise _tls_error_from_message(result.value.to_debug_string())
    return result.value


def connect(host, port, server_name=None, timeout=30.0):
    """A TLS connection to ``host:port`` (verified as ``server_name``, default ``host``),
    blocking; a ``TlsConnection`` (``read``, ``read_all``, ``write_all``, ``close``)."""
    if poll is None:
        raise RuntimeError("connect() is the WASI 0.2 API; in WASI 0.3 use await open_connection()")
    deadline = _deadline(timeout)
    sock, rx, tx = tcp_connect(host, port, deadline)
    name = server_name or host
    try:
        connection, plain_rx, plain_tx = handshake(rx, tx, name, deadline)
    except BaseException:
        sock.__exit__(None, None, None)
        raise
    return TlsConnection(sock, connection, plain_rx, plain_tx, name)
