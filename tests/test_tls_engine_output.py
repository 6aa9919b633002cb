"""``TlsEngine.take_output`` asks OpenSSL for queued ciphertext only after a call that could
have queued some (handshake, read, write, shutdown): a connection's transport asks after every
step, most of them with nothing new. What those calls queue still goes out, an alert that a
read raises included. The client is CPython's ssl on memory BIOs."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trustme
from test_tls_transport import established

from wasi_tls_host.tls import engine as engine_module
from wasi_tls_host.tls.engine import TlsFailure

RECORD_ALERT = 21


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


class CountingLib:
    """OpenSSL's bindings as the engine module sees them, counting BIO_get_mem_data calls."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.asked = 0

    def BIO_get_mem_data(self, *args: Any) -> Any:  # noqa: N802 (OpenSSL's name)
        self.asked += 1
        return self._lib.BIO_get_mem_data(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)


def test_take_output_asks_openssl_only_after_a_call_that_could_queue_some(ca: trustme.CA, monkeypatch: pytest.MonkeyPatch) -> None:
    client, to_client, from_client, server = established(ca)
    lib = CountingLib(engine_module._lib)
    monkeypatch.setattr(engine_module, "_lib", lib)
    assert server.take_output() == b""  # everything the handshake queued went above
    for _ in range(5):
        assert server.take_output() == b""
        server.feed(b"")  # nothing to decrypt is nothing to answer either
    assert lib.asked == 0
    server.write(b"hello")
    to_client.write(server.take_output())
    assert client.read(5) == b"hello"
    assert server.take_output() == b"" and lib.asked == 1
    client.write(b"ping")
    server.feed(from_client.read())
    view = memoryview(bytearray(16))
    assert server.read_into(view) == 4 and bytes(view[:4]) == b"ping"
    assert server.take_output() == b""
    server.close_notify()
    to_client.write(server.take_output())
    assert client.read(1) == b""  # the server's close_notify (SSLObject reads it as the end)
    assert lib.asked == 3


def test_the_alert_a_read_raises_still_goes_out(ca: trustme.CA) -> None:
    """OpenSSL answers a record that fails its integrity check with a fatal alert, queued while
    reading: the next take_output has it."""
    client, to_client, from_client, server = established(ca)
    client.write(b"ping")
    record = bytearray(from_client.read())
    record[-1] ^= 0x01  # the tag no longer matches
    server.feed(bytes(record))
    with pytest.raises(TlsFailure):
        server.read_into(memoryview(bytearray(16)))
    alert = server.take_output()
    assert alert[:1] == bytes([RECORD_ALERT]) or alert[:1] == b"\x17", alert  # TLS 1.3 wraps it in application_data
    to_client.write(alert)
    with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC|bad record mac"):
        client.read(1)
