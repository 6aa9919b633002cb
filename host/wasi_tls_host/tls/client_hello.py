"""Read and parse a TLS ClientHello from raw ciphertext, without any I/O.

The TLS server side needs to see the client's first flight *before* OpenSSL does: the
guest picks an identity, ALPN protocol and version from it, and only then is the OpenSSL
connection built. ``ClientHelloReader`` is fed the bytes exactly as they come off the
socket, reassembles the handshake message from however many records (and however many
reads) it spans, parses it with strict limits, and keeps every byte it was given so the
caller can replay them verbatim into OpenSSL's memory BIO.

Wire formats (all integers big-endian, ``<a..b>`` = vector with a length prefix wide
enough for ``b``):

* Record layer, RFC 8446 §5.1: ``type u8 | legacy_record_version u16 | length u16 |
  fragment``; a plaintext fragment is at most 2^14 bytes, and handshake messages may be
  split across records but never interleaved with other record types.
* Handshake header, RFC 8446 §4: ``msg_type u8 | length u24 | body``; ClientHello is 1.
* ClientHello body, RFC 8446 §4.1.2 (same layout as RFC 5246 §7.4.1.2): ``legacy_version
  u16 | random[32] | session_id<0..32> | cipher_suites<2..2^16-2> |
  compression_methods<1..2^8-1> | extensions<8..2^16-1>`` (extensions may be absent
  entirely from pre-1.3 clients).
* server_name, RFC 6066 §3; ALPN, RFC 7301 §3.1; supported_versions, signature_algorithms,
  supported_groups, key_share and pre_shared_key, RFC 8446 §4.2; GREASE, RFC 8701.

All protocol numbers stay plain IANA integers so new versions, suites and groups pass
through untouched. Errors are ``ClientHelloError`` with a guest-visible code, the TLS
alert to send, and a sentence a person can act on.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from .names import DEFAULT_MAX_HELLO_SIZE
from .states import detached

# Error codes (the same strings the rest of the TLS host uses for guest-visible errors).
DECODE_ERROR = "decode-error"
UNEXPECTED_MESSAGE = "unexpected-message"
RECORD_OVERFLOW = "record-overflow"
PROTOCOL_VERSION = "protocol-version"
ILLEGAL_PARAMETER = "illegal-parameter"

# TLS AlertLevel / AlertDescription values (RFC 8446 §6).
ALERT_WARNING = 1
ALERT_FATAL = 2
ALERT_UNEXPECTED_MESSAGE = 10
ALERT_RECORD_OVERFLOW = 22
ALERT_ILLEGAL_PARAMETER = 47
ALERT_DECODE_ERROR = 50
ALERT_PROTOCOL_VERSION = 70

# AlertDescription names (IANA "TLS Alerts"), for logs.
ALERT_NAMES = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
    40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate",
    44: "certificate_revoked", 45: "certificate_expired", 46: "certificate_unknown",
    47: "illegal_parameter", 48: "unknown_ca", 49: "access_denied", 50: "decode_error",
    51: "decrypt_error", 70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
    86: "inappropriate_fallback", 90: "user_canceled", 109: "missing_extension",
    110: "unsupported_extension", 112: "unrecognized_name", 113: "bad_certificate_status_response",
    115: "unknown_psk_identity", 116: "certificate_required", 120: "no_application_protocol",
}


def alert_name(description: int) -> str:
    """``120`` -> ``no_application_protocol (120)``; unassigned numbers stay numbers."""
    name = ALERT_NAMES.get(description)
    return f"{name} ({description})" if name else f"alert {description}"


_ALERT_FOR_CODE = {
    DECODE_ERROR: ALERT_DECODE_ERROR,
    UNEXPECTED_MESSAGE: ALERT_UNEXPECTED_MESSAGE,
    RECORD_OVERFLOW: ALERT_RECORD_OVERFLOW,
    PROTOCOL_VERSION: ALERT_PROTOCOL_VERSION,
    ILLEGAL_PARAMETER: ALERT_ILLEGAL_PARAMETER,
}

# Record content types (RFC 8446 §5.1).
CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23
HANDSHAKE_CLIENT_HELLO = 1

RECORD_HEADER_SIZE = 5
HANDSHAKE_HEADER_SIZE = 4
MAX_RECORD_PAYLOAD = 1 << 14  # TLSPlaintext.length limit

# Extension types (IANA "TLS ExtensionType Values").
EXT_SERVER_NAME = 0
EXT_SUPPORTED_GROUPS = 10
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16
EXT_PRE_SHARED_KEY = 41
EXT_SUPPORTED_VERSIONS = 43
EXT_KEY_SHARE = 51

# Protocol versions.
SSL3_0 = 0x0300
TLS1_0 = 0x0301
TLS1_1 = 0x0302
TLS1_2 = 0x0303
TLS1_3 = 0x0304

# Smallest possible body: version, random, empty session id, one suite, one compression method.
_MIN_BODY = 2 + 32 + 1 + (2 + 2) + (1 + 1)
# Request methods whose first four bytes identify a plain-HTTP client (plus the h2c preface).
_HTTP_STARTS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC", b"PRI ")
_HOSTNAME_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
_HOSTNAME_CHARS = frozenset(_HOSTNAME_BYTES)


class ClientHelloError(Exception):
    """The client's first flight is not an acceptable ClientHello.

    ``code`` is for programs (and the guest), ``message`` for people, and ``alert`` is the
    TLS AlertDescription the server should send (``alert_record(ALERT_FATAL, e.alert)``)
    before closing, or None when the peer is not speaking TLS at all (``not_tls``): as
    OpenSSL and Go do, such a peer gets no alert, only the close.
    """

    def __init__(self, code: str, message: str, *, not_tls: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.not_tls = not_tls

    @property
    def alert(self) -> int | None:
        return None if self.not_tls else _ALERT_FOR_CODE.get(self.code, ALERT_DECODE_ERROR)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"ClientHelloError({self.code!r}, {self.message!r})"


def alert_record(level: int, description: int) -> bytes:
    """One plaintext alert record (RFC 8446 §6), e.g. ``alert_record(2, 50)`` = fatal decode_error.

    Sent before any keys exist, so it is always plaintext; the record version is 0x0303
    as RFC 8446 §5.1 asks of everything but the initial ClientHello.
    """
    if level not in (ALERT_WARNING, ALERT_FATAL):
        raise ValueError(f"alert level must be 1 (warning) or 2 (fatal), not {level}")
    if not 0 <= description <= 255:
        raise ValueError(f"alert description must be 0..255, not {description}")
    return bytes((CONTENT_ALERT, 0x03, 0x03, 0x00, 0x02, level, description))


def is_grease(value: int) -> bool:
    """True for the RFC 8701 GREASE values 0x0A0A, 0x1A1A, ... 0xFAFA (suites, groups, versions...)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def without_grease(values: list[int]) -> list[int]:
    return [v for v in values if not is_grease(v)]


@dataclass(frozen=True)
class ClientHello:
    """A parsed ClientHello. Lists keep the client's order and any GREASE values it sent."""

    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: list[int]
    compression_methods: bytes
    extensions: list[tuple[int, bytes]]
    # Decoded from the extensions; absent extensions give None / [] / False.
    server_name: str | None = None
    alpn_protocols: list[bytes] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)
    signature_algorithms: list[int] = field(default_factory=list)
    supported_groups: list[int] = field(default_factory=list)
    key_share_groups: list[int] = field(default_factory=list)
    psk_offered: bool = False
    # The whole handshake message (header included), e.g. for fingerprints or logs.
    raw: bytes = b""

    def max_version(self) -> int:
        """Highest protocol version the client offers, GREASE ignored."""
        real = without_grease(self.supported_versions)
        return max(real) if real else self.legacy_version

    def extension(self, ext_type: int) -> bytes | None:
        for t, data in self.extensions:
            if t == ext_type:
                return data
        return None

    def has_extension(self, ext_type: int) -> bool:
        return any(t == ext_type for t, _ in self.extensions)


class _Cursor:
    """Bounds-checked reads over one structure; every failure names the field being read.
    (A hello is read once per connection: the reads are written out rather than built on
    one another, and a field's name is only formatted when it fails.)"""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def _short(self, n: int, field_name: str) -> ClientHelloError:
        return _decode(f"{self.what}: {field_name} needs {n} bytes but only {self.remaining()} remain")

    def take(self, n: int, field_name: str) -> bytes:
        pos = self.pos
        end = pos + n
        if end > len(self.data):
            raise self._short(n, field_name)
        self.pos = end
        return self.data[pos:end]

    def uint(self, width: int, field_name: str) -> int:
        pos = self.pos
        end = pos + width
        if end > len(self.data):
            raise self._short(width, field_name)
        self.pos = end
        return int.from_bytes(self.data[pos:end], "big")

    def vector(self, width: int, lo: int, hi: int, field_name: str) -> bytes:
        """A length-prefixed opaque vector whose length must be within lo..hi."""
        data, pos = self.data, self.pos
        start = pos + width
        if start > len(data):
            raise self._short(width, f"{field_name} length")
        n = int.from_bytes(data[pos:start], "big")
        if not lo <= n <= hi:
            self.pos = start
            raise _decode(f"{self.what}: {field_name} length {n} is outside the allowed {lo}..{hi}")
        end = start + n
        if end > len(data):
            self.pos = start
            raise self._short(n, field_name)
        self.pos = end
        return data[start:end]

    def end(self) -> None:
        if self.remaining():
            raise _decode(f"{self.what}: {self.remaining()} unexpected bytes after the last field")


def _decode(message: str) -> ClientHelloError:
    return ClientHelloError(DECODE_ERROR, f"malformed ClientHello: {message}")


def _u16_list(data: bytes, what: str) -> list[int]:
    if len(data) % 2:
        raise _decode(f"{what}: a list of 16-bit values has odd length {len(data)}")
    return list(struct.unpack(f">{len(data) // 2}H", data))


def _illegal_name(message: str) -> ClientHelloError:
    # A server_name extension that decodes but names no DNS host: RFC 8446 section 6.2's
    # illegal_parameter ("a field ... was incorrect"), not decode_error (which is for
    # lengths and ranges); tlsfuzzer expects the same.
    return ClientHelloError(ILLEGAL_PARAMETER, f"malformed ClientHello: server_name: {message}")


def _hostname(raw: bytes) -> str:
    # RFC 6066 section 3: an ASCII host name (IDNA A-labels), no trailing dot, no IP
    # literals. A trailing dot is tolerated (some clients send one); NUL, control
    # characters, non-ASCII and empty labels are not, since a name that compares
    # differently in C and Python, or reaches a log, invites mix-ups.
    if b"\x00" in raw:
        raise _illegal_name("host name contains a NUL byte")
    if not raw.isascii():
        raise _illegal_name("host name is not ASCII (internationalised names must be sent as IDNA A-labels, xn--...)")
    name = raw[:-1] if raw.endswith(b".") else raw
    if not name or len(name) > 253:
        raise _illegal_name(f"host name length {len(name)} is outside 1..253")
    bad = set(name) - _HOSTNAME_CHARS if name.translate(None, _HOSTNAME_BYTES) else None
    if bad:
        shown = ", ".join(repr(chr(b)) for b in sorted(bad))
        raise _illegal_name(f"host name contains characters not allowed in DNS names ({shown})")
    for label in name.split(b"."):
        if not 1 <= len(label) <= 63:
            raise _illegal_name(f"host name {name.decode()!r} has a label of length {len(label)} (must be 1..63)")
    return canonical_server_name(name.decode("ascii"))


def canonical_server_name(name: str) -> str:
    """The one spelling of a DNS server name the host hands out and logs: lower-case ASCII
    without a trailing dot (DNS names compare without case, RFC 4343; nginx does the same
    to a Host header before it looks up a server)."""
    return name.rstrip(".").lower()


# Each extension is read directly while it has the usual, well-formed shape (a hello is
# read per connection); anything else goes through the cursors (``_read_*``), which refuse
# it in the words of the field that is wrong. A direct read accepts nothing the cursors
# refuse and reads the same values (tests/test_client_hello.py compares the two).
def _parse_server_name(data: bytes) -> str | None:
    size = len(data)
    if size > 5 and data[2] == 0 and (data[0] << 8) | data[1] == size - 2 and (data[3] << 8) | data[4] == size - 5:
        return _hostname(data[5:])  # the usual list: one host_name (the cursors read anything else)
    return _read_server_name(data)


def _read_server_name(data: bytes) -> str | None:
    """``_parse_server_name`` through the cursors, which word what is wrong."""
    cur = _Cursor(data, "server_name extension")
    names = _Cursor(cur.vector(2, 1, 0xFFFF, "server_name_list"), "server_name_list")
    cur.end()
    host: str | None = None
    seen: set[int] = set()
    while names.remaining():
        name_type = names.uint(1, "name_type")
        value = names.vector(2, 1, 0xFFFF, "name")
        if name_type in seen:
            # RFC 6066 section 3: "MUST NOT contain more than one name of the same name_type".
            raise _illegal_name(f"more than one name of type {name_type}")
        seen.add(name_type)
        if name_type == 0:  # host_name; other types are unassigned and ignored
            host = _hostname(value)
    return host


def _parse_alpn(data: bytes) -> list[bytes]:
    size = len(data)
    if size >= 4 and (data[0] << 8) | data[1] == size - 2:
        # Read directly while every name fits (the cursors say what is wrong otherwise).
        found, pos = [], 2
        while pos < size:
            end = pos + 1 + data[pos]
            if end == pos + 1 or end > size:
                break
            found.append(data[pos + 1:end])
            pos = end
        else:
            return found
    return _read_alpn(data)


def _read_alpn(data: bytes) -> list[bytes]:
    """``_parse_alpn`` through the cursors, which word what is wrong."""
    cur = _Cursor(data, "ALPN extension")
    names = _Cursor(cur.vector(2, 2, 0xFFFF, "protocol_name_list"), "ALPN protocol_name_list")
    cur.end()
    protocols = []
    while names.remaining():
        protocols.append(names.vector(1, 1, 0xFF, "protocol name"))
    return protocols


def _parse_supported_versions(data: bytes) -> list[int]:
    size = len(data)
    if 3 <= size <= 255 and data[0] == size - 1 and not data[0] % 2:
        return list(struct.unpack_from(f">{data[0] // 2}H", data, 1))
    return _read_supported_versions(data)


def _read_supported_versions(data: bytes) -> list[int]:
    """``_parse_supported_versions`` through the cursors, which word what is wrong."""
    cur = _Cursor(data, "supported_versions extension")
    versions = _u16_list(cur.vector(1, 2, 254, "versions"), "supported_versions")
    cur.end()
    return versions


def _parse_u16_vector(data: bytes, what: str, lo: int) -> list[int]:
    size = len(data)
    if size >= 2 + lo and not size % 2 and (data[0] << 8) | data[1] == size - 2:
        return list(struct.unpack_from(f">{size // 2 - 1}H", data, 2))
    return _read_u16_vector(data, what, lo)


def _read_u16_vector(data: bytes, what: str, lo: int) -> list[int]:
    """``_parse_u16_vector`` through the cursors, which word what is wrong."""
    cur = _Cursor(data, f"{what} extension")
    values = _u16_list(cur.vector(2, lo, 0xFFFF, what), what)
    cur.end()
    return values


def _parse_key_share(data: bytes) -> list[int]:
    size = len(data)
    if size >= 2 and (data[0] << 8) | data[1] == size - 2:
        # Read directly while every share fits (the cursors say what is wrong otherwise).
        groups, pos = [], 2
        while pos < size:
            end = pos + 4 + ((data[pos + 2] << 8) | data[pos + 3]) if pos + 4 <= size else pos
            if end <= pos + 4 or end > size:
                break
            groups.append((data[pos] << 8) | data[pos + 1])
            pos = end
        else:
            return groups
    return _read_key_share(data)


def _read_key_share(data: bytes) -> list[int]:
    """``_parse_key_share`` through the cursors, which word what is wrong."""
    cur = _Cursor(data, "key_share extension")
    shares = _Cursor(cur.vector(2, 0, 0xFFFF, "client_shares"), "key_share client_shares")
    cur.end()
    groups = []
    while shares.remaining():
        groups.append(shares.uint(2, "group"))
        shares.vector(2, 1, 0xFFFF, "key_exchange")
    return groups


def _truncated_extension(block: bytes, pos: int) -> ClientHelloError:
    """The error for the extension at ``pos`` of the extensions ``block``, which does not fit."""
    cursor = _Cursor(block, "extensions")
    cursor.pos = pos
    try:
        ext_type = cursor.uint(2, "extension type")
        cursor.vector(2, 0, 0xFFFF, f"extension {ext_type} data")
    except ClientHelloError as e:
        return e
    raise AssertionError(f"extension at {pos} of {len(block)} fits")


_Body = tuple[int, bytes, bytes, list[int], bytes, list[tuple[int, bytes]]]


def _read_body_fast(message: bytes) -> _Body | None:
    """The fields and extensions of a well-formed ClientHello message, read without the
    cursor's bookkeeping (a hello is read once per connection, and most are well-formed);
    None at anything ``_read_body`` could refuse, which then reads it again and says what
    is wrong. Accepts nothing that ``_read_body`` refuses, and reads the same values."""
    size = len(message)
    if size < 4 + _MIN_BODY or message[0] != HANDSHAKE_CLIENT_HELLO or int.from_bytes(message[1:4], "big") != size - 4:
        return None
    legacy_version = (message[4] << 8) | message[5]
    session_end = 39 + message[38]
    if legacy_version < SSL3_0 or message[38] > 32 or session_end + 2 > size:
        return None
    suites_end = session_end + 2 + ((message[session_end] << 8) | message[session_end + 1])
    suites_size = suites_end - session_end - 2
    if suites_size < 2 or suites_size % 2 or suites_end + 1 > size:  # (at most 0xFFFE: the length is even)
        return None
    compression_end = suites_end + 1 + message[suites_end]
    if compression_end == suites_end + 1 or compression_end > size:
        return None
    compression = message[suites_end + 1:compression_end]
    if 0 not in compression:
        return None
    extensions: list[tuple[int, bytes]] = []
    if compression_end < size:
        if compression_end + 2 > size or compression_end + 2 + ((message[compression_end] << 8) | message[compression_end + 1]) != size:
            return None  # (one byte after the compression methods: a cut length, the cursors' to word)
        pos = compression_end + 2
        seen: set[int] = set()
        while pos < size:
            start = pos + 4
            stop = start + ((message[pos + 2] << 8) | message[pos + 3]) if start <= size else size + 1
            if stop > size:
                return None
            ext_type = (message[pos] << 8) | message[pos + 1]
            if ext_type in seen:
                return None
            seen.add(ext_type)
            extensions.append((ext_type, message[start:stop]))
            pos = stop
    cipher_suites = list(struct.unpack_from(f">{suites_size // 2}H", message, session_end + 2))
    return legacy_version, message[6:38], message[39:session_end], cipher_suites, compression, extensions


def parse_client_hello(message: bytes) -> ClientHello:
    """Parse one complete handshake message (4-byte header included) as a ClientHello."""
    message = bytes(message)
    body = _read_body_fast(message) or _read_body(message)
    return _with_extensions(message, *body)


def _read_body(message: bytes) -> _Body:
    """The fields and extensions of a ClientHello message, or the error that says what is
    wrong with it."""
    head = _Cursor(message, "handshake message")
    msg_type = head.uint(1, "msg_type")
    if msg_type != HANDSHAKE_CLIENT_HELLO:
        raise ClientHelloError(
            UNEXPECTED_MESSAGE,
            f"the client's first handshake message has type {msg_type}, not ClientHello (1)",
        )
    body = _Cursor(head.vector(3, _MIN_BODY, 0xFFFFFF, "ClientHello body"), "ClientHello")
    head.end()

    legacy_version = body.uint(2, "legacy_version")
    if legacy_version < SSL3_0:
        # Anything higher is a future version, answered with the highest one the server has
        # (RFC 5246 Appendix E.1), as OpenSSL does; SSL 3.0 itself is OpenSSL's to refuse.
        raise ClientHelloError(
            PROTOCOL_VERSION,
            f"the ClientHello offers protocol version 0x{legacy_version:04x}, older than SSL 3 and TLS",
        )
    random = body.take(32, "random")
    session_id = body.vector(1, 0, 32, "legacy_session_id")
    suites_raw = body.vector(2, 2, 0xFFFE, "cipher_suites")
    cipher_suites = _u16_list(suites_raw, "cipher_suites")
    compression = body.vector(1, 1, 0xFF, "legacy_compression_methods")
    if 0 not in compression:
        # A field that decodes but holds a wrong value: illegal_parameter (RFC 8446 section
        # 4.1.2 for TLS 1.3), as OpenSSL answers for TLS 1.2 too.
        raise ClientHelloError(ILLEGAL_PARAMETER, "malformed ClientHello: legacy_compression_methods does not include "
                                                  "null compression (0), which every client must offer")

    extensions: list[tuple[int, bytes]] = []
    if body.remaining():  # pre-1.3 clients may omit the extensions block entirely
        block = body.vector(2, 0, 0xFFFF, "extensions")
        size, pos = len(block), 0
        seen: set[int] = set()
        while pos < size:
            # type u16 | length u16 | data, read inline (a dozen per hello); the cursor
            # words what is wrong when one does not fit.
            start = pos + 4
            stop = start + int.from_bytes(block[pos + 2:start], "big") if start <= size else start
            if stop > size:
                raise _truncated_extension(block, pos)
            ext_type = int.from_bytes(block[pos:pos + 2], "big")
            ext_data = block[start:stop]
            pos = stop
            if ext_type in seen:
                raise _decode(f"extension {ext_type} appears more than once")
            seen.add(ext_type)
            extensions.append((ext_type, ext_data))
    body.end()
    return legacy_version, random, session_id, cipher_suites, compression, extensions


def _with_extensions(message: bytes, legacy_version: int, random: bytes, session_id: bytes, cipher_suites: list[int],
                     compression: bytes, extensions: list[tuple[int, bytes]]) -> ClientHello:
    """The hello, its extensions decoded."""
    server_name: str | None = None
    alpn: list[bytes] = []
    versions: list[int] | None = None
    sig_algs: list[int] = []
    groups: list[int] = []
    key_share_groups: list[int] = []
    psk_offered = False
    for index, (ext_type, ext_data) in enumerate(extensions):
        if ext_type == EXT_SERVER_NAME:
            server_name = _parse_server_name(ext_data)
        elif ext_type == EXT_ALPN:
            alpn = _parse_alpn(ext_data)
        elif ext_type == EXT_SUPPORTED_VERSIONS:
            versions = _parse_supported_versions(ext_data)
        elif ext_type == EXT_SIGNATURE_ALGORITHMS:
            sig_algs = _parse_u16_vector(ext_data, "signature_algorithms", 2)
        elif ext_type == EXT_SUPPORTED_GROUPS:
            groups = _parse_u16_vector(ext_data, "supported_groups", 2)
        elif ext_type == EXT_KEY_SHARE:
            key_share_groups = _parse_key_share(ext_data)
        elif ext_type == EXT_PRE_SHARED_KEY:
            # RFC 8446 §4.2.11: the binders cover everything before it, so it must come last.
            if index != len(extensions) - 1:
                raise _decode("pre_shared_key is not the last extension")
            psk_offered = True

    return ClientHello(
        legacy_version=legacy_version,
        random=random,
        session_id=session_id,
        cipher_suites=cipher_suites,
        compression_methods=compression,
        extensions=extensions,
        server_name=server_name,
        alpn_protocols=alpn,
        # Without supported_versions, the client's offer is legacy_version (RFC 8446 §4.2.1).
        supported_versions=versions if versions is not None else [legacy_version],
        signature_algorithms=sig_algs,
        supported_groups=groups,
        key_share_groups=key_share_groups,
        psk_offered=psk_offered,
        raw=message,
    )


def _not_tls(first: bytes) -> ClientHelloError:
    """Explain a first record that is not a TLS handshake record, naming the likely cause.

    A peer that is not speaking TLS at all gets no alert (``not_tls``), as OpenSSL and Go
    do; one that sends a TLS record of another type, or an SSL 2.0 hello, gets the alert
    OpenSSL sends for it.
    """
    if first[:4] in _HTTP_STARTS:
        line = first.split(b"\r\n", 1)[0][:40].decode("ascii", "replace")
        return ClientHelloError(
            DECODE_ERROR,
            f"the client sent plain HTTP ({line!r}...) to a TLS port; it should connect with https://",
            not_tls=True,
        )
    if first[0] & 0x80 and len(first) >= 3 and first[2] == 1:
        return ClientHelloError(
            PROTOCOL_VERSION,
            "the client sent an SSL 2.0-format ClientHello, used only by obsolete clients; "
            "it must be upgraded to speak TLS 1.2 or later",
        )
    if first[0] != CONTENT_HANDSHAKE and first[1:2] == b"\x03":
        return ClientHelloError(
            UNEXPECTED_MESSAGE,
            f"the client's first TLS record has content type {first[0]}, but a connection must start with a handshake (22)",
        )
    return ClientHelloError(
        DECODE_ERROR,
        f"the client is not speaking TLS: its first bytes are {first[:8].hex(' ')}, not a handshake record (16 03 xx)",
        not_tls=True,
    )


class ClientHelloReader:
    """Incrementally reassemble and parse the client's first flight.

    ``feed()`` takes bytes exactly as read from the network (any split) and returns the
    ``ClientHello`` once the whole message has arrived, None until then, or raises
    ``ClientHelloError``. ``buffered()`` is every byte ever fed, for replay into OpenSSL.

    Limits: every record is a handshake record of at most 2^14 bytes, and the records
    carrying the hello, headers included, fit in ``max_hello_size`` bytes. While feed()
    returns None, ``len(buffered())`` never exceeds ``max_hello_size``. None lifts that
    limit: what bounds the flight then is the hello's own 24-bit length.
    """

    def __init__(self, max_hello_size: int | None = DEFAULT_MAX_HELLO_SIZE) -> None:
        if max_hello_size is not None and max_hello_size < RECORD_HEADER_SIZE + HANDSHAKE_HEADER_SIZE + _MIN_BODY:
            raise ValueError(f"max_hello_size {max_hello_size} is too small for any ClientHello")
        self.max_hello_size = max_hello_size
        self._limit: float = math.inf if max_hello_size is None else max_hello_size
        self._raw = bytearray()
        self._pos = 0  # start of the first record not yet consumed
        self._handshake = bytearray()  # reassembled handshake fragments
        self._hello: ClientHello | None = None
        self._error: ClientHelloError | None = None

    @property
    def hello(self) -> ClientHello | None:
        return self._hello

    def buffered(self) -> bytes:
        return bytes(self._raw)

    def feed(self, data: bytes) -> ClientHello | None:
        if self._error is not None:
            raise detached(self._error)
        self._raw += data
        if self._hello is not None:
            # Bytes after the hello (a CCS, 0-RTT data) are only kept for the replay.
            return self._hello
        try:
            self._hello = self._advance()
        except ClientHelloError as e:
            self._error = detached(e)  # not e: its traceback holds this reader (a cycle)
            raise
        return self._hello

    def _advance(self) -> ClientHello | None:
        raw = self._raw
        if self._pos == 0 and raw and (raw[0] != CONTENT_HANDSHAKE or raw[1:2] not in (b"", b"\x03")):
            # Wait for a few bytes before judging, to say what the client spoke instead.
            wanted = 4 if 0x41 <= raw[0] <= 0x5A else 3 if raw[0] & 0x80 else 2
            if len(raw) < wanted:
                return None
            raise _not_tls(bytes(raw[:64]))

        while True:
            available = len(raw) - self._pos
            if self._pos + RECORD_HEADER_SIZE > self._limit:
                raise self._too_big()
            if available < RECORD_HEADER_SIZE:
                self._check_partial_header()
                return None
            header = raw[self._pos : self._pos + RECORD_HEADER_SIZE]
            content_type, version, length = header[0], int.from_bytes(header[1:3], "big"), int.from_bytes(header[3:5], "big")
            self._check_record_header(content_type, version, length)
            end = self._pos + RECORD_HEADER_SIZE + length
            if end > self._limit:
                raise self._too_big()
            if len(raw) < end:
                return None
            self._handshake += raw[self._pos + RECORD_HEADER_SIZE : end]
            self._pos = end
            hello = self._try_parse()
            if hello is not None:
                return hello

    def _check_partial_header(self) -> None:
        # Judge a record header as soon as its first bytes are here, so a wrong type fails fast.
        partial = self._raw[self._pos :]
        if partial and partial[0] != CONTENT_HANDSHAKE:
            self._check_record_header(partial[0], TLS1_2, 1)
        if len(partial) >= 2 and partial[1] != 3:
            self._check_record_header(CONTENT_HANDSHAKE, partial[1] << 8, 1)

    def _check_record_header(self, content_type: int, version: int, length: int) -> None:
        if content_type != CONTENT_HANDSHAKE:
            # RFC 8446 section 5.1: handshake messages must not be interleaved with other records.
            raise ClientHelloError(
                UNEXPECTED_MESSAGE,
                f"the client sent a record of content type {content_type} before its ClientHello was complete",
            )
        # The record version is otherwise ignored: RFC 5246 Appendix E.1 has servers accept
        # any 0x03XX here (clients send 0x0300 to 0x0303), RFC 8446 section 5.1 ignores it.
        # (A first record with another major version never gets here: it is not TLS.)
        if version >> 8 != 3:
            raise ClientHelloError(
                PROTOCOL_VERSION,
                f"a record in the client's first flight has version 0x{version:04x}, not 0x03xx as TLS records do",
            )
        if length > MAX_RECORD_PAYLOAD:
            raise ClientHelloError(
                RECORD_OVERFLOW,
                f"the client sent a {length}-byte record; TLS records hold at most {MAX_RECORD_PAYLOAD} bytes",
            )
        if length == 0:
            # RFC 8446 §5.1: zero-length handshake fragments are forbidden.
            raise ClientHelloError(DECODE_ERROR, "the client sent an empty handshake record")

    def _try_parse(self) -> ClientHello | None:
        hs = self._handshake
        if hs[0] != HANDSHAKE_CLIENT_HELLO:
            raise ClientHelloError(
                UNEXPECTED_MESSAGE,
                f"the client's first handshake message has type {hs[0]}, not ClientHello (1)",
            )
        if len(hs) < HANDSHAKE_HEADER_SIZE:
            return None
        length = int.from_bytes(hs[1:4], "big")
        if length < _MIN_BODY:
            # Judge an impossible length now rather than wait for bytes that cannot help.
            raise _decode(f"ClientHello body length {length} is below the minimum of {_MIN_BODY}")
        total = HANDSHAKE_HEADER_SIZE + length
        if total > self._limit:
            raise self._too_big(total)
        if len(hs) < total:
            return None
        if len(hs) > total:
            # Anything after ClientHello in the same flight would be another plaintext
            # handshake message, which a client never sends before the server answers.
            raise ClientHelloError(
                UNEXPECTED_MESSAGE,
                f"the client sent {len(hs) - total} bytes of further handshake data after its ClientHello",
            )
        return parse_client_hello(bytes(hs))

    def _too_big(self, declared: int | None = None) -> ClientHelloError:
        if declared is not None:
            what = f"declares a {declared}-byte ClientHello, over"
        else:
            what = "sent ClientHello records exceeding"
        return ClientHelloError(DECODE_ERROR, f"the client {what} the {self.max_hello_size}-byte limit for a first flight "
                                              "(the embedder's --max-client-hello, TlsLimits.max_client_hello)")
