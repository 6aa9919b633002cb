"""ClientHello reader/parser: real hellos from openssl, curl and CPython, split and
re-fragmented delivery, replay into OpenSSL, malformed and oversized input."""

from __future__ import annotations

import random
import shutil
import struct
from dataclasses import dataclass, field

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from hello_capture import CLIENTS, capture
from wasi_tls_host.tls import client_hello
from wasi_tls_host.tls.client_hello import (
    ALERT_DECODE_ERROR,
    ALERT_FATAL,
    ALERT_ILLEGAL_PARAMETER,
    ALERT_PROTOCOL_VERSION,
    DECODE_ERROR,
    ILLEGAL_PARAMETER,
    PROTOCOL_VERSION,
    RECORD_OVERFLOW,
    UNEXPECTED_MESSAGE,
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
    alert_record,
    is_grease,
    without_grease,
)

CODES = {DECODE_ERROR, UNEXPECTED_MESSAGE, RECORD_OVERFLOW, PROTOCOL_VERSION, ILLEGAL_PARAMETER}
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- captures

_captured: dict[str, bytes] = {}


def _tool_for(name: str) -> str | None:
    return {"openssl": "openssl", "curl": "curl"}.get(name.split("-")[0])


def captured(name: str) -> bytes:
    """The first flight of client ``name``, captured live once per test session."""
    if name not in _captured:
        tool = _tool_for(name)
        if tool and shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
        _captured[name] = capture(CLIENTS[name])
    return _captured[name]


@pytest.fixture(scope="session")
def openssl_hello() -> bytes:
    return captured("openssl")


@pytest.fixture(scope="session")
def all_hellos() -> list[bytes]:
    return [captured(name) for name in CLIENTS]


def parse(data: bytes, **kw) -> ClientHello:
    reader = ClientHelloReader(**kw)
    hello = reader.feed(data)
    assert hello is not None, "a complete hello was not recognised"
    return hello


# --------------------------------------------------------------------------- a test-side hello model
# Independent of the module under test: splits a single-record capture into its fields so
# tests can rebuild it with chosen damage and consistent (or deliberately wrong) outer lengths.


@dataclass
class Parts:
    version: bytes
    random: bytes
    session_id: bytes
    suites: bytes
    compression: bytes
    extensions: list[tuple[int, bytes]] = field(default_factory=list)

    def body(self) -> bytes:
        ext = b"".join(struct.pack(">HH", t, len(d)) + d for t, d in self.extensions)
        return (
            self.version + self.random + bytes([len(self.session_id)]) + self.session_id
            + struct.pack(">H", len(self.suites)) + self.suites
            + bytes([len(self.compression)]) + self.compression
            + struct.pack(">H", len(ext)) + ext
        )

    def message(self) -> bytes:
        body = self.body()
        return b"\x01" + len(body).to_bytes(3, "big") + body


def split_parts(data: bytes) -> Parts:
    assert data[0] == 22 and int.from_bytes(data[3:5], "big") == len(data) - 5, "expected one record"
    pos = 9
    def take(n: int) -> bytes:
        nonlocal pos
        pos += n
        return data[pos - n : pos]
    version, rnd = take(2), take(32)
    sid = take(take(1)[0])
    suites = take(int.from_bytes(take(2), "big"))
    comp = take(take(1)[0])
    end = pos + 2 + int.from_bytes(take(2), "big")
    exts = []
    while pos < end:
        t = int.from_bytes(take(2), "big")
        exts.append((t, take(int.from_bytes(take(2), "big"))))
    assert pos == len(data)
    return Parts(version, rnd, sid, suites, comp, exts)


def records(message: bytes, sizes: list[int] | None = None, version: int = 0x0301) -> bytes:
    """Pack a handshake message into records of the given fragment sizes (last takes the rest)."""
    out, pos = bytearray(), 0
    for size in sizes or []:
        if pos >= len(message):
            break
        frag = message[pos : pos + size]
        out += struct.pack(">BHH", 22, version, len(frag)) + frag
        pos += len(frag)
    while pos < len(message):
        frag = message[pos : pos + 16384]
        out += struct.pack(">BHH", 22, version, len(frag)) + frag
        pos += len(frag)
    return bytes(out)


def base_parts(**changes) -> Parts:
    """A small valid TLS 1.3-style hello built from scratch."""
    parts = Parts(
        version=b"\x03\x03",
        random=bytes(range(32)),
        session_id=b"",
        suites=b"\x13\x01\x13\x02",
        compression=b"\x00",
        extensions=[
            (0, b"\x00\x0f\x00\x00\x0cexample.test"),
            (16, b"\x00\x0c\x02h2\x08http/1.1"),
            (43, b"\x04\x03\x04\x03\x03"),
            (13, b"\x00\x04\x08\x04\x04\x03"),
            (10, b"\x00\x04\x00\x1d\x00\x17"),
            (51, b"\x00\x06\x00\x1d\x00\x02\xaa\xbb"),
        ],
    )
    for k, v in changes.items():
        setattr(parts, k, v)
    return parts


def replace_ext(parts: Parts, ext_type: int, data: bytes) -> Parts:
    parts.extensions = [(t, data if t == ext_type else d) for t, d in parts.extensions]
    return parts


def expect_error(data: bytes, code: str, *words: str, **kw) -> ClientHelloError:
    reader = ClientHelloReader(**kw)
    with pytest.raises(ClientHelloError) as info:
        reader.feed(data)
    err = info.value
    assert err.code == code, err
    for word in words:
        assert word.lower() in err.message.lower(), err.message
    return err


# --------------------------------------------------------------------------- real clients

TLS13_SUITES = {0x1301, 0x1302, 0x1303}


@pytest.mark.parametrize("name", list(CLIENTS))
def test_real_client_hello(name: str) -> None:
    data = captured(name)
    reader = ClientHelloReader()
    hello = reader.feed(data)
    assert hello is not None
    assert reader.buffered() == data
    assert hello.server_name == "example.test"
    assert hello.alpn_protocols == ([b"http/1.1"] if name == "curl" else [b"h2", b"http/1.1"])
    assert len(hello.random) == 32 and hello.random != bytes(32)
    assert 0 in hello.compression_methods
    assert hello.cipher_suites and all(0 <= s <= 0xFFFF for s in hello.cipher_suites)
    assert 0x0804 in hello.signature_algorithms  # rsa_pss_rsae_sha256
    assert 29 in hello.supported_groups  # x25519
    assert set(hello.key_share_groups) <= set(hello.supported_groups)
    assert not hello.psk_offered
    assert hello.raw == data[5:]
    if name == "openssl-tls1_2":
        assert 0x0304 not in hello.supported_versions
        assert hello.supported_versions == [0x0303] and not hello.has_extension(43)
        assert hello.max_version() == 0x0303
        assert not TLS13_SUITES & set(hello.cipher_suites)
        assert 0xC02F in hello.cipher_suites  # ECDHE-RSA-AES128-GCM-SHA256
        assert hello.key_share_groups == []
    else:
        assert 0x0304 in hello.supported_versions
        assert hello.max_version() == 0x0304
        assert {0x1301, 0x1302} <= set(hello.cipher_suites)
        assert hello.key_share_groups
        assert hello.legacy_version == 0x0303
        assert len(hello.session_id) == 32  # middlebox-compatibility session id
    if name == "openssl-tls1_3":
        assert hello.supported_versions == [0x0304]
        assert set(without_grease(hello.cipher_suites)) - {0x00FF} <= TLS13_SUITES
    if name == "cpython":
        assert 0x0302 not in hello.supported_versions  # CPython's default minimum is TLS 1.2


def test_one_byte_at_a_time(all_hellos: list[bytes]) -> None:
    for data in all_hellos:
        reader = ClientHelloReader()
        results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
        assert all(r is None for r in results[:-1])
        assert results[-1] == parse(data)
        assert reader.buffered() == data


@HYPOTHESIS
@given(st.data())
def test_random_chunking(openssl_hello: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(openssl_hello)), max_size=20)))
    pieces = [openssl_hello[a:b] for a, b in zip([0, *cuts], [*cuts, len(openssl_hello)])]
    reader = ClientHelloReader()
    results = [reader.feed(p) for p in pieces]
    assert results[-1] == parse(openssl_hello)
    assert all(r is None for r, end in zip(results, [*cuts, len(openssl_hello)]) if end < len(openssl_hello))
    assert reader.buffered() == openssl_hello


@HYPOTHESIS
@given(st.lists(st.integers(1, 300), min_size=1, max_size=12), st.sampled_from(list(CLIENTS)))
def test_hello_spanning_records(sizes: list[int], name: str) -> None:
    original = captured(name)
    fragmented = records(original[5:], sizes, version=0x0303)
    reader = ClientHelloReader()
    hello = None
    for i in range(0, len(fragmented), 37):  # and split across reads, not on record edges
        hello = reader.feed(fragmented[i : i + 37])
    assert hello == parse(original)
    assert reader.buffered() == fragmented


# --------------------------------------------------------------------------- replay into OpenSSL


@pytest.fixture(scope="module")
def server_context() -> SSL.Context:
    ca = trustme.CA()
    cert = ca.issue_cert("example.test")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_privatekey(serialization.load_pem_private_key(cert.private_key_pem.bytes(), None))
    ctx.use_certificate(x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()))
    return ctx


@pytest.mark.parametrize("name", list(CLIENTS))
@pytest.mark.parametrize("fragment", [False, True])
def test_replay_into_openssl(server_context: SSL.Context, name: str, fragment: bool) -> None:
    data = captured(name)
    if fragment:
        data = records(data[5:], [40, 1, 100])
    reader = ClientHelloReader()
    for i in range(0, len(data), 50):
        reader.feed(data[i : i + 50])
    assert reader.hello is not None
    conn = SSL.Connection(server_context, None)
    conn.set_accept_state()
    conn.bio_write(reader.buffered())
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()  # waits for the client's next flight
    reply = conn.bio_read(65536)
    # A ServerHello: handshake record, handshake type 2.
    assert reply[0] == 22 and reply[5] == 2
    expected = "TLSv1.2" if name == "openssl-tls1_2" else "TLSv1.3"
    assert conn.get_protocol_version_name() == expected


# --------------------------------------------------------------------------- decoded fields


def test_built_hello_fields() -> None:
    hello = parse(records(base_parts().message()))
    assert hello.server_name == "example.test"
    assert hello.alpn_protocols == [b"h2", b"http/1.1"]
    assert hello.supported_versions == [0x0304, 0x0303]
    assert hello.signature_algorithms == [0x0804, 0x0403]
    assert hello.supported_groups == [0x001D, 0x0017]
    assert hello.key_share_groups == [0x001D]
    assert hello.cipher_suites == [0x1301, 0x1302]
    assert hello.extension(16) == b"\x00\x0c\x02h2\x08http/1.1" and hello.extension(99) is None


def test_legacy_hello_without_extensions() -> None:
    body = b"\x03\x01" + bytes(32) + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00"
    hello = parse(records(b"\x01" + len(body).to_bytes(3, "big") + body))
    assert hello.extensions == [] and hello.server_name is None and hello.alpn_protocols == []
    assert hello.supported_versions == [0x0301] and hello.max_version() == 0x0301


def test_grease_is_kept_and_filterable() -> None:
    parts = base_parts(suites=b"\x3a\x3a\x13\x01")
    replace_ext(parts, 43, b"\x06\x7a\x7a\x03\x04\x03\x03")
    parts.extensions.insert(0, (0x0A0A, b""))
    hello = parse(records(parts.message()))
    assert hello.cipher_suites == [0x3A3A, 0x1301]
    assert without_grease(hello.cipher_suites) == [0x1301]
    assert hello.supported_versions == [0x7A7A, 0x0304, 0x0303] and hello.max_version() == 0x0304
    assert hello.extensions[0] == (0x0A0A, b"")
    assert all(is_grease(0x0A0A + 0x1010 * i) for i in range(16))
    assert not is_grease(0x0A1A) and not is_grease(0x1301)


def test_server_name_is_lowercased_and_trailing_dot_dropped() -> None:
    name = b"Example.TEST."
    ext = struct.pack(">HBH", len(name) + 3, 0, len(name)) + name
    assert parse(records(replace_ext(base_parts(), 0, ext).message())).server_name == "example.test"


def test_psk_offered_when_last() -> None:
    parts = base_parts()
    parts.extensions.append((41, b"\x00\x01"))  # content is not parsed, only its position
    assert parse(records(parts.message())).psk_offered


# --------------------------------------------------------------------------- malformed structures


def _sni(name: bytes) -> bytes:
    return struct.pack(">HBH", len(name) + 3, 0, len(name)) + name


MALFORMED = {
    "sni list cut": (replace_ext(base_parts(), 0, b"\x00\x0f\x00\x00\x0cexample.tes"), "server_name"),
    "alpn empty name": (replace_ext(base_parts(), 16, b"\x00\x04\x02h2\x00"), "protocol name"),
    "alpn list cut": (replace_ext(base_parts(), 16, b"\x00\x0c\x02h2\x08http/1."), "ALPN"),
    "alpn trailing byte": (replace_ext(base_parts(), 16, b"\x00\x03\x02h2\x00"), "ALPN"),
    "versions odd": (replace_ext(base_parts(), 43, b"\x03\x03\x04\x03"), "odd"),
    "versions empty": (replace_ext(base_parts(), 43, b"\x00"), "versions"),
    "groups cut": (replace_ext(base_parts(), 10, b"\x00\x04\x00\x1d"), "supported_groups"),
    "key share cut": (replace_ext(base_parts(), 51, b"\x00\x06\x00\x1d\x00\x03\xaa\xbb"), "key_exchange"),
    "suites odd": (base_parts(suites=b"\x13\x01\x13"), "odd"),
    "session id too long": (base_parts(session_id=bytes(33)), "legacy_session_id"),
    "duplicate extension": (base_parts(extensions=[(10, b"\x00\x02\x00\x1d"), (10, b"\x00\x02\x00\x1d")]), "more than once"),
    "psk not last": (base_parts(extensions=[(41, b"\x00"), (10, b"\x00\x02\x00\x1d")]), "last extension"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_structures(case: str) -> None:
    parts, words = MALFORMED[case]
    err = expect_error(records(parts.message()), DECODE_ERROR, words)
    assert err.alert == ALERT_DECODE_ERROR
    assert err.message.startswith("malformed ClientHello")


# A server_name extension that decodes but names no DNS host gets illegal_parameter (RFC 8446
# section 6.2, as tlsfuzzer's test-invalid-server-name-extension expects), not decode_error.
ILLEGAL_NAMES = {
    "NUL": (_sni(b"good.test\x00.evil"), "NUL"),
    "BEL": (_sni(b"localhos\x07"), "'\\x07'"),
    "ANSI colour escape": (_sni(b"localhost\x1b[31m"), "'\\x1b'"),
    "not ascii": (_sni("bücher.test".encode()), "IDNA"),
    "space": (_sni(b"a b.test"), "characters"),
    "empty label": (_sni(b"a..test"), "label"),
    "two host_names": (b"\x00\x0a\x00\x00\x03a.b\x00\x00\x01c", "more than one"),
}


@pytest.mark.parametrize("compression", [b"\x01", b"\x01\x40"])
def test_no_null_compression_gets_illegal_parameter(compression: bytes) -> None:
    # The list decodes; its value is wrong (RFC 8446 section 4.1.2; OpenSSL and tlsfuzzer's
    # test-invalid-compression-methods agree, for TLS 1.2 too).
    err = expect_error(records(base_parts(compression=compression).message()), ILLEGAL_PARAMETER, "null compression")
    assert err.alert == ALERT_ILLEGAL_PARAMETER


@pytest.mark.parametrize("case", list(ILLEGAL_NAMES))
def test_illegal_server_names_get_illegal_parameter(case: str) -> None:
    ext, words = ILLEGAL_NAMES[case]
    err = expect_error(records(replace_ext(base_parts(), 0, ext).message()), ILLEGAL_PARAMETER, words)
    assert err.alert == ALERT_ILLEGAL_PARAMETER
    assert err.message.startswith("malformed ClientHello: server_name: ")


def test_trailing_garbage_after_extensions() -> None:
    message = base_parts().message() + b"\x00"
    message = message[:1] + (len(message) - 4).to_bytes(3, "big") + message[4:]
    expect_error(records(message), DECODE_ERROR, "unexpected bytes")


def test_further_handshake_data_in_flight() -> None:
    expect_error(records(base_parts().message() + b"\x02\x00\x00\x00"), UNEXPECTED_MESSAGE, "after its ClientHello")


def test_bytes_after_the_hello_are_kept_for_replay() -> None:
    hello_records = records(base_parts().message())
    ccs = b"\x14\x03\x03\x00\x01\x01"
    reader = ClientHelloReader()
    hello = reader.feed(hello_records + ccs)
    assert hello is not None and reader.feed(b"\x17\x03\x03") is hello
    assert reader.buffered() == hello_records + ccs + b"\x17\x03\x03"


# --------------------------------------------------------------------------- not TLS at all / wrong records


def test_plain_http() -> None:
    err = expect_error(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", DECODE_ERROR, "plain HTTP", "GET / HTTP/1.1", "https://")
    assert err.alert is None  # no TLS alert to a peer that does not speak TLS (as OpenSSL and Go)
    reader = ClientHelloReader()
    assert [reader.feed(b) for b in (b"P", b"O", b"S")] == [None, None, None]
    with pytest.raises(ClientHelloError, match="plain HTTP"):
        reader.feed(b"T")


def test_sslv2_hello() -> None:
    # SSLv2-format CLIENT-HELLO: 2-byte length with the top bit set, msg type 1, version.
    sslv2 = b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + bytes(21) + bytes(16)
    err = expect_error(sslv2, PROTOCOL_VERSION, "SSL 2.0")
    assert err.alert == 70


@pytest.mark.parametrize(
    "data, code, words",
    [
        (b"\x15\x03\x03\x00\x02\x02\x28", UNEXPECTED_MESSAGE, ["content type 21"]),
        (b"\x18\x03\x03\x00\x03\x01\x00\x00", UNEXPECTED_MESSAGE, ["content type 24"]),
        (b"\x00\x00\x00\x00\x00", DECODE_ERROR, ["not speaking TLS"]),
        (b"\x16\x02\x00", DECODE_ERROR, ["not speaking TLS", "16 02 00"]),
        (b"\x16\x03\x01\x40\x01", RECORD_OVERFLOW, ["16385"]),
        (b"\x16\x03\x01\x00\x00", DECODE_ERROR, ["empty handshake record"]),
        (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", UNEXPECTED_MESSAGE, ["type 2"]),
        (b"\x16\x03\x01\x00\x01\x01\x17", UNEXPECTED_MESSAGE, ["content type 23"]),
        (b"\x16\x03\x01\x00\x04\x01\x00\x00\x05", DECODE_ERROR, ["ClientHello body length 5"]),
    ],
)
def test_bad_records(data: bytes, code: str, words: list[str]) -> None:
    expect_error(data, code, *words)


@pytest.mark.parametrize("version", [0x0300, 0x0301, 0x0302, 0x0303, 0x0304, 0x03FF])
def test_any_0x03xx_record_version_carries_the_hello(openssl_hello: bytes, version: int) -> None:
    # RFC 5246 Appendix E.1: a server accepts any 0x03XX record version (tlsfuzzer and some
    # clients send 0x0300); RFC 8446 section 5.1: the field is ignored. OpenSSL agrees.
    whole = records(openssl_hello[5:], version=version)
    assert parse(whole) == parse(openssl_hello)
    mixed = records(openssl_hello[5:], [40, 40], version=version)
    mixed = mixed[:1] + b"\x03\x01" + mixed[3:]  # first record 0x0301, the rest `version`
    assert parse(mixed) == parse(openssl_hello)


@pytest.mark.parametrize("version", [0x0000, 0x0200, 0x0400, 0xFFFF])
def test_a_record_version_of_another_major_number(openssl_hello: bytes, version: int) -> None:
    # As OpenSSL: a first record of another major version is not TLS (the peer gets no
    # alert); a later one, within a TLS flight, gets protocol_version.
    first = expect_error(records(openssl_hello[5:], version=version), DECODE_ERROR, "not speaking TLS")
    assert first.not_tls and first.alert is None
    later = records(openssl_hello[5:], [40])
    later = later[:45 + 1] + version.to_bytes(2, "big") + later[45 + 3:]
    err = expect_error(later, PROTOCOL_VERSION, f"0x{version:04x}")
    assert err.alert == ALERT_PROTOCOL_VERSION


@pytest.mark.parametrize("legacy_version", [0x0400, 0x0401, 0x7F7F, 0xFEFE])
def test_a_future_legacy_version_is_answered(legacy_version: int) -> None:
    # RFC 5246 Appendix E.1: a server answers a higher version with its highest (tlsfuzzer's
    # test-version-numbers sends (4, 1) and (254, 254)); only below SSL 3 is refused here.
    hello = parse(records(base_parts(version=legacy_version.to_bytes(2, "big")).message()))
    assert hello.legacy_version == legacy_version
    err = expect_error(records(base_parts(version=b"\x02\x00").message()), PROTOCOL_VERSION, "0x0200")
    assert err.alert == ALERT_PROTOCOL_VERSION


def test_error_is_sticky() -> None:
    reader = ClientHelloReader()
    with pytest.raises(ClientHelloError) as first:
        reader.feed(b"\x16\x03\x01\x40\x01")
    with pytest.raises(ClientHelloError) as again:
        reader.feed(records(base_parts().message()))
    assert (again.value.code, again.value.message, again.value.alert) == (first.value.code, first.value.message, first.value.alert)
    # A copy, not the raised error: that one's traceback holds the reader (a reference cycle).
    assert again.value is not first.value


# --------------------------------------------------------------------------- size limits


def test_oversized_hello_is_rejected_before_it_is_all_read() -> None:
    # 30 KB of cipher suites plus 40 KB of padding: a 70 KB hello over five records.
    parts = base_parts(suites=b"\x13\x01" * 15_000)
    parts.extensions.append((21, bytes(40_000)))
    data = records(parts.message())
    reader = ClientHelloReader()
    with pytest.raises(ClientHelloError) as info:
        for i in range(0, len(data), 1000):
            reader.feed(data[i : i + 1000])
            assert len(reader.buffered()) <= reader.max_hello_size
    assert info.value.code == DECODE_ERROR and "65536-byte limit" in info.value.message
    assert len(reader.buffered()) < len(data)


def test_declared_length_over_limit_fails_at_once() -> None:
    expect_error(b"\x16\x03\x01\x00\x04\x01\x10\x00\x00", DECODE_ERROR, "1048580-byte ClientHello")


def test_large_hello_within_limit_parses() -> None:
    parts = base_parts()
    parts.extensions.insert(0, (21, bytes(40_000)))
    assert parse(records(parts.message())).server_name == "example.test"


def test_no_limit_reads_a_hello_over_the_default() -> None:
    # 70 KB over five records: over the default 64 KiB, within the protocol's 24-bit length.
    parts = base_parts(suites=b"\x13\x01" * 15_000)
    parts.extensions.append((21, bytes(40_000)))
    data = records(parts.message())
    assert len(data) > 65536
    reader = ClientHelloReader(max_hello_size=None)
    hello = None
    for i in range(0, len(data), 1000):
        hello = reader.feed(data[i : i + 1000])
    assert hello is not None and len(hello.cipher_suites) == 15_000
    expect_error(data, DECODE_ERROR, "65536-byte limit", "--max-client-hello")


@HYPOTHESIS
@given(st.integers(200, 1200), st.sampled_from(list(CLIENTS)))
def test_configurable_limit(limit: int, name: str) -> None:
    data = captured(name)
    reader = ClientHelloReader(max_hello_size=limit)
    if len(data) <= limit:
        assert reader.feed(data) is not None
    else:
        with pytest.raises(ClientHelloError) as info:
            for i in range(0, len(data), 64):
                assert reader.feed(data[i : i + 64]) is None
                assert len(reader.buffered()) <= limit
        assert info.value.code == DECODE_ERROR


# --------------------------------------------------------------------------- property tests


def feed_all(reader: ClientHelloReader, chunks: list[bytes]) -> ClientHello | None:
    """Feed chunks; only ClientHelloError may escape, and limits must hold meanwhile."""
    hello = None
    for chunk in chunks:
        try:
            hello = reader.feed(chunk)
        except ClientHelloError as e:
            assert e.code in CODES and e.message
            raise
        if hello is None:
            assert len(reader.buffered()) <= reader.max_hello_size
    return hello


def chunked(data: bytes, rnd: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = rnd.randint(1, 200)
        out.append(data[pos : pos + n])
        pos += n
    return out


@HYPOTHESIS
@given(st.binary(max_size=2000), st.integers(0, 2**32), st.integers(64, 70_000))
def test_random_bytes(data: bytes, seed: int, limit: int) -> None:
    try:
        feed_all(ClientHelloReader(max_hello_size=limit), chunked(data, random.Random(seed)))
    except ClientHelloError:
        pass


@HYPOTHESIS
@given(st.binary(min_size=1, max_size=200))
def test_random_bytes_after_a_valid_record_header(tail: bytes) -> None:
    try:
        feed_all(ClientHelloReader(), [b"\x16\x03\x01" + len(tail).to_bytes(2, "big") + tail])
    except ClientHelloError:
        pass


def test_every_truncation_is_incomplete(all_hellos: list[bytes]) -> None:
    for data in all_hellos:
        for n in range(len(data)):
            assert ClientHelloReader().feed(data[:n]) is None


@HYPOTHESIS
@given(st.sampled_from(list(CLIENTS)), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6), st.integers(0, 2**32))
def test_mutations(name: str, edits: list[tuple[int, int]], seed: int) -> None:
    data = bytearray(captured(name))
    for pos, value in edits:
        data[pos % len(data)] = value
    try:
        hello = feed_all(ClientHelloReader(), chunked(bytes(data), random.Random(seed)))
    except ClientHelloError:
        return
    if hello is not None:  # the damage hit a field with no structure (random, key bytes...)
        assert hello.raw == bytes(data[5:])


@HYPOTHESIS
@given(st.sampled_from(list(CLIENTS)), st.integers(0, 10_000), st.integers(-300, 300).filter(bool))
def test_sixteen_bit_bumps_anywhere(name: str, pos: int, delta: int) -> None:
    data = bytearray(captured(name))
    pos = pos % (len(data) - 1)
    value = (int.from_bytes(data[pos : pos + 2], "big") + delta) % 65536
    data[pos : pos + 2] = value.to_bytes(2, "big")
    try:
        feed_all(ClientHelloReader(), [bytes(data)])
    except ClientHelloError:
        pass


def _length_fields(data: bytes) -> dict[str, tuple[int, int]]:
    """Offsets and widths of length fields whose ±1 must always be caught."""
    parts = split_parts(data)
    fields = {"record": (3, 2), "handshake": (6, 3)}
    pos = 9 + 2 + 32 + 1 + len(parts.session_id) + 2 + len(parts.suites) + 1 + len(parts.compression)
    fields["extensions"] = (pos, 2)
    pos += 2
    for i, (t, d) in enumerate(parts.extensions):
        if i == len(parts.extensions) - 1:
            fields[f"last extension {t}"] = (pos + 2, 2)
        inner = {0: 2, 16: 2, 43: 1, 13: 2, 10: 2, 51: 2}  # list length prefix width
        if t in inner:
            fields[f"list in extension {t}"] = (pos + 4, inner[t])
        pos += 4 + len(d)
    return fields


@pytest.mark.parametrize("name", list(CLIENTS))
@pytest.mark.parametrize("delta", [-1, 1, 7])
def test_length_field_bumps_are_caught(name: str, delta: int) -> None:
    original = captured(name)
    fields = _length_fields(original)
    assert len(fields) >= 8
    for what, (pos, width) in fields.items():
        data = bytearray(original)
        value = int.from_bytes(data[pos : pos + width], "big") + delta
        data[pos : pos + width] = value.to_bytes(width, "big")
        reader = ClientHelloReader()
        with pytest.raises(ClientHelloError, match=".") as info:
            # Longer-than-sent lengths leave the reader waiting; more bytes must not help.
            feed_all(reader, [bytes(data), bytes(64)])
        assert info.value.code in CODES, what


@HYPOTHESIS
@given(st.sampled_from(list(CLIENTS)), st.sampled_from([0, 16, 43, 13, 10, 51]), st.integers(1, 40))
def test_cut_lists_with_consistent_outer_lengths(name: str, ext_type: int, cut: int) -> None:
    parts = split_parts(captured(name))
    present = dict(parts.extensions)
    if ext_type not in present:
        return
    cut = min(cut, len(present[ext_type]))
    replace_ext(parts, ext_type, present[ext_type][:-cut])
    with pytest.raises(ClientHelloError) as info:
        feed_all(ClientHelloReader(), [records(parts.message())])
    assert info.value.code == DECODE_ERROR


# --------------------------------------------------------------------------- alert record


def test_alert_record_bytes() -> None:
    assert alert_record(ALERT_FATAL, ALERT_DECODE_ERROR) == b"\x15\x03\x03\x00\x02\x02\x32"
    with pytest.raises(ValueError):
        alert_record(3, 50)
    with pytest.raises(ValueError):
        alert_record(2, 256)
    assert ClientHelloError(RECORD_OVERFLOW, "x").alert == 22
    assert ClientHelloError(UNEXPECTED_MESSAGE, "x").alert == 10


def test_openssl_client_understands_the_alert() -> None:
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        client.do_handshake()
    client.bio_write(alert_record(ALERT_FATAL, ALERT_DECODE_ERROR))
    with pytest.raises(SSL.Error, match="decode error"):
        client.do_handshake()


# --------------------------------------------------------------------------- direct reads


def _outcome(read, *args) -> object:  # type: ignore[no-untyped-def]
    """What a read gives: its value, or the code and words of its refusal."""
    try:
        return read(*args)
    except ClientHelloError as e:
        return (e.code, e.message)


def _mutated(data: bytes, edits: list[tuple[int, int]], cut: int, extra: bytes) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out[:len(out) - cut] + extra) if cut <= len(out) else extra


_EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4)
# (direct read, the cursors' read, the arguments after the data)
_EXTENSION_READS = {
    0: (client_hello._parse_server_name, client_hello._read_server_name, ()),
    16: (client_hello._parse_alpn, client_hello._read_alpn, ()),
    43: (client_hello._parse_supported_versions, client_hello._read_supported_versions, ()),
    13: (client_hello._parse_u16_vector, client_hello._read_u16_vector, ("signature_algorithms", 2)),
    10: (client_hello._parse_u16_vector, client_hello._read_u16_vector, ("supported_groups", 2)),
    51: (client_hello._parse_key_share, client_hello._read_key_share, ()),
}


@HYPOTHESIS
@given(st.sampled_from(list(CLIENTS)), _EDITS, st.integers(0, 3), st.binary(max_size=3))
def test_the_direct_read_of_a_hello_is_the_cursors_read(name: str, edits: list[tuple[int, int]], cut: int, extra: bytes) -> None:
    # The direct read of the fields and extensions block gives up (None) wherever the
    # cursors would refuse the message, and otherwise reads exactly what they read.
    message = _mutated(captured(name)[5:], edits, cut, extra)
    direct = client_hello._read_body_fast(message)
    expected = _outcome(client_hello._read_body, message)
    assert direct is None or direct == expected
    if not edits and not cut and not extra:
        assert direct is not None  # a real client's hello is read directly


@HYPOTHESIS
@given(st.sampled_from(list(CLIENTS)), st.sampled_from(list(_EXTENSION_READS)), _EDITS, st.integers(0, 3),
       st.binary(max_size=3))
def test_the_direct_read_of_an_extension_is_the_cursors_read(name: str, ext_type: int, edits: list[tuple[int, int]],
                                                             cut: int, extra: bytes) -> None:
    present = dict(split_parts(captured(name)).extensions)
    direct, cursors, args = _EXTENSION_READS[ext_type]
    data = _mutated(present.get(ext_type, b""), edits, cut, extra)
    assert _outcome(direct, data, *args) == _outcome(cursors, data, *args)


@HYPOTHESIS
@given(st.sampled_from(list(_EXTENSION_READS)), st.binary(max_size=40))
def test_the_direct_read_of_random_extension_bytes_is_the_cursors_read(ext_type: int, data: bytes) -> None:
    direct, cursors, args = _EXTENSION_READS[ext_type]
    assert _outcome(direct, data, *args) == _outcome(cursors, data, *args)


@HYPOTHESIS
@given(st.sampled_from([b"\x03\x03", b"\x03\x01", b"\x02\xff", b"\x7f\x00"]), st.binary(max_size=34), st.binary(max_size=7),
       st.sampled_from([b"\x00", b"", b"\x01", b"\x01\x00"]),
       st.lists(st.tuples(st.sampled_from([0, 10, 41, 0xFFFF]), st.binary(max_size=4)), max_size=4), st.booleans(), _EDITS)
def test_the_direct_read_of_built_hellos_is_the_cursors_read(version: bytes, session_id: bytes, suites: bytes, compression: bytes,
                                                            extensions: list[tuple[int, bytes]], no_block: bool,
                                                            edits: list[tuple[int, int]]) -> None:
    # Fields of any size with consistent lengths (odd suite lists, long session ids, no null
    # compression, repeated extensions, no extensions block), some then damaged.
    parts = Parts(version, bytes(32), session_id, suites, compression, extensions)
    body = parts.body()[:-2 - sum(4 + len(d) for _, d in extensions)] if no_block else parts.body()
    message = _mutated(b"\x01" + len(body).to_bytes(3, "big") + body, edits if edits and edits[0][1] % 2 else [], 0, b"")
    direct = client_hello._read_body_fast(message)
    assert direct is None or direct == _outcome(client_hello._read_body, message)


@HYPOTHESIS
@given(st.sampled_from(list(_EXTENSION_READS)), st.binary(max_size=24), st.integers(1, 2), st.integers(-1, 1))
def test_the_direct_read_of_a_wrapped_extension_is_the_cursors_read(ext_type: int, inner: bytes, width: int, off: int) -> None:
    # Random lists behind a (nearly) consistent outer length: the inner entries decide.
    data = max(0, len(inner) + off).to_bytes(width, "big") + inner
    direct, cursors, args = _EXTENSION_READS[ext_type]
    assert _outcome(direct, data, *args) == _outcome(cursors, data, *args)


@pytest.mark.parametrize(("ext_type", "data"), [
    (16, b"\x00\x04\x00\x02h2"), (16, b"\x00\x03\x02h2"), (16, b"\x00\x04\x02h2\x00"),  # an empty name, consistent lengths
    (51, b"\x00\x04\x00\x1d\x00\x00"), (51, b"\x00\x03\x00\x1d\x00"),  # an empty key_exchange; a cut share header
    (43, b"\x03\x03\x04\x03"), (13, b"\x00\x03\x08\x04\x04"), (10, b"\x00\x00"),  # odd and empty lists
    (0, b"\x00\x05\x01\x00\x02ab"), (0, b"\x00\x03\x00\x00\x00"), (0, b"\x00\x0a\x00\x00\x02ab\x00\x00\x02cd"),
])
def test_the_direct_read_of_irregular_extensions_is_the_cursors_read(ext_type: int, data: bytes) -> None:
    direct, cursors, args = _EXTENSION_READS[ext_type]
    assert _outcome(direct, data, *args) == _outcome(cursors, data, *args)


@pytest.mark.parametrize("name", list(CLIENTS))
def test_a_hello_cut_anywhere_with_its_length_fixed_is_read_or_refused(name: str) -> None:
    """The hello's tail cut by 1 byte up to all of its extensions and more, its handshake
    length set to what is left (tlsfuzzer's "small truncate"): each is the cursors' read or
    their refusal, never another exception. The direct read took the one byte left after
    the compression methods for a two-byte length (an IndexError: the connection got no
    alert and stayed open)."""
    message = captured(name)[5:]
    for cut in range(1, len(message) - 4):
        body = message[4:len(message) - cut]
        cut_message = message[:1] + len(body).to_bytes(3, "big") + body
        expected = _outcome(client_hello._read_body, cut_message)
        assert client_hello._read_body_fast(cut_message) in (None, expected), cut
        _outcome(client_hello.parse_client_hello, cut_message)  # parsed, or a ClientHelloError
