"""How TLS connections end, against real peers (issues 19 and 20).

* OpenSSL's fatal alert for a record it rejects after the handshake reaches the client before
  the connection closes. The records are crafted with tlsfuzzer (tlslite-ng) conversations.
* A client that half-closes TCP right after its request still gets the answer.
* A guest client that a GnuTLS server refuses (TLS 1.3, no client certificate) sees the
  server's alert, not the broken pipe the closed connection causes when it writes.
* The ``tls_server`` example survives a client that resets after its request, and answers
  HTTP requests whose lines end in a bare LF; ``tls_echo_server`` survives a connection the
  host refuses at accept.

Guests: ``tls_server`` and ``tls_echo_server`` (on threads of this process, their printed
lines asserted on) and ``tls_client``.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import SHARED, free_port, without_gc
from tls_server_util import TIMEOUT, GuestServer, GuestThread, ServerPki, ssl_client_context
from wasi_tls_host import Host
from wasi_tls_host.runtime.limits import GuestLimits
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.wasi.sockets import NetworkPolicy

pytestmark = [
    pytest.mark.timeout(120),
    # tlslite-ng imports asyncore for an integration this module does not use.
    pytest.mark.filterwarnings("ignore:The asyncore module is deprecated:DeprecationWarning"),
]

# Not part of the repository: $TLSFUZZER names its folder, else the shared one beside the checkout.
TLSFUZZER = Path(os.environ.get("TLSFUZZER") or SHARED / "testsuites" / "tlsfuzzer")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    return ServerPki(tmp_path_factory.mktemp("endings-pki"))


@pytest.fixture(scope="module")
def http_server(host: Host, guest_path: Any, pki: ServerPki) -> Iterator[GuestServer]:
    """One ``tls_server`` in HTTP mode for the module, presenting the RSA identity ``b``
    (tlsfuzzer's conversations offer RSA signature schemes). Each test checks that it is
    still serving when the test ends."""
    server = GuestServer(host, host.load(guest_path("tls_server")), free_port(),
                         "--count", "0", "--concurrent", "--mode", "http", "--identity", "b", tls=pki.server_config())
    yield server
    server.guest.interrupt("test teardown")
    server.stop()


def answered(server: GuestServer, pki: ServerPki, request: bytes = b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n") -> bytes:
    """The response to ``request`` from an ordinary client (the server still serves)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
        with ssl_client_context(pki).wrap_socket(raw, server_hostname="b.test") as tls:
            tls.sendall(request)
            response = b""
            while True:
                try:
                    chunk = tls.recv(4096)
                except ssl.SSLZeroReturnError:
                    break
                if not chunk:
                    break
                response += chunk
    return response


# --- OpenSSL's alerts after the handshake (issue 20, defect 2) -------------------------------


def _tlsfuzzer() -> Any:
    if not TLSFUZZER.is_dir():
        pytest.skip(f"tlsfuzzer is not in {TLSFUZZER}")
    if str(TLSFUZZER) not in sys.path:
        sys.path.insert(0, str(TLSFUZZER))
    import tlsfuzzer.expect
    import tlsfuzzer.messages
    import tlsfuzzer.runner

    return tlsfuzzer


def conversation_after_handshake(port: int, *steps: Any, alert: str) -> Any:
    """A TLS 1.3 conversation (TLS_AES_128_GCM_SHA256, P-256, RSA-PSS; any signature on
    certificates: the test CA is ECDSA): handshake, then
    ``steps`` (tlsfuzzer commands and generators), then the fatal
    ``alert`` and the close are expected (NewSessionTickets may come before the alert)."""
    fuzzer = _tlsfuzzer()
    from tlslite import extensions as ext_
    from tlslite.constants import (AlertDescription, AlertLevel, CipherSuite, ExtensionType, GroupName,
                                   SignatureScheme)
    from tlsfuzzer.helpers import SIG_ALL, key_share_gen

    m, e = fuzzer.messages, fuzzer.expect
    root = m.Connect("127.0.0.1", port, timeout=TIMEOUT)
    extensions = {
        ExtensionType.key_share: ext_.ClientKeyShareExtension().create([key_share_gen(GroupName.secp256r1)]),
        ExtensionType.supported_versions: ext_.SupportedVersionsExtension().create([(3, 4), (3, 3)]),
        ExtensionType.supported_groups: ext_.SupportedGroupsExtension().create([GroupName.secp256r1]),
        ExtensionType.signature_algorithms: ext_.SignatureAlgorithmsExtension().create(
            [SignatureScheme.rsa_pss_rsae_sha256, SignatureScheme.rsa_pss_pss_sha256]),
        ExtensionType.signature_algorithms_cert: ext_.SignatureAlgorithmsCertExtension().create(SIG_ALL),
    }
    node = root.add_child(m.ClientHelloGenerator([CipherSuite.TLS_AES_128_GCM_SHA256], extensions=extensions))
    for expected in (e.ExpectServerHello(), e.ExpectChangeCipherSpec(), e.ExpectEncryptedExtensions(),
                     e.ExpectCertificate(), e.ExpectCertificateVerify(), e.ExpectFinished()):
        node = node.add_child(expected)
    node = node.add_child(m.FinishedGenerator())
    for step in steps:
        node = node.add_child(step)
    tickets = e.ExpectNewSessionTicket()  # optional, any number of them
    node = node.add_child(tickets)
    node.add_child(tickets)
    node.next_sibling = e.ExpectAlert(AlertLevel.fatal, getattr(AlertDescription, alert))
    node.next_sibling.add_child(e.ExpectClose())
    return root


def _crafted(name: str, port: int) -> Any:
    fuzzer = _tlsfuzzer()
    from tlslite.constants import ContentType, KeyUpdateMessageType

    m = fuzzer.messages
    get = bytearray(b"GET / HTTP/1.0\r\n\r\n")
    if name == "key-update-of-an-unknown-type":
        return conversation_after_handshake(port, m.KeyUpdateGenerator(message_type=7), m.ApplicationDataGenerator(get),
                                            alert="illegal_parameter")
    if name == "two-key-updates-in-one-record":
        return conversation_after_handshake(
            port, m.queue_message(m.skip_post_send(m.KeyUpdateGenerator(KeyUpdateMessageType.update_not_requested))),
            m.KeyUpdateGenerator(message_type=KeyUpdateMessageType.update_requested), m.ApplicationDataGenerator(get),
            alert="unexpected_message")
    if name == "empty-alert-under-application-keys":
        return conversation_after_handshake(port, m.RawMessageGenerator(ContentType.alert, bytearray(0)),
                                            alert="unexpected_message")
    if name == "flipped-ciphertext-bit":
        return conversation_after_handshake(port, m.fuzz_encrypted_message(m.ApplicationDataGenerator(get), xors={3: 0x01}),
                                            alert="bad_record_mac")
    if name == "application-data-of-2**14+1-bytes":
        return conversation_after_handshake(port, m.SetMaxRecordSize(2**16 - 1),
                                            m.ApplicationDataGenerator(bytearray(b"A" * (2**14 + 1))),
                                            alert="record_overflow")
    raise AssertionError(name)


@pytest.mark.parametrize("case", ["key-update-of-an-unknown-type", "two-key-updates-in-one-record",
                                  "empty-alert-under-application-keys", "flipped-ciphertext-bit",
                                  "application-data-of-2**14+1-bytes"])
def test_openssls_alert_for_a_bad_record_after_the_handshake_reaches_the_client(http_server: GuestServer, pki: ServerPki, case: str) -> None:
    """Regression: the host closed TCP without sending the alert OpenSSL had queued (the
    failure was raised while reading, before OpenSSL's output was flushed)."""
    fuzzer = _tlsfuzzer()
    fuzzer.runner.Runner(_crafted(case, http_server.port)).run()  # AssertionError unless the alert came
    assert b"200 OK" in answered(http_server, pki)


# --- a client that half-closes after its request (issue 19, item 2) --------------------------


class MemoryTlsClient:
    """CPython ``ssl`` over memory BIOs on a plain socket, so that the test decides what
    happens to TCP (a half-close) independently of TLS."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self._flush()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def read_all(self) -> tuple[bytes, str]:
        """Plaintext until the server's close_notify or EOF, and how it ended."""
        received = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive()
                continue
            except ssl.SSLEOFError:
                return received, "eof"  # without close_notify
            except ssl.SSLError as e:
                return received, f"error: {e}"
            if not chunk:
                return received, "close_notify"  # an SSLObject reads b"" after close_notify
            received += chunk

    def close(self) -> None:
        self.sock.close()


def test_a_client_that_half_closes_after_its_request_gets_the_answer(http_server: GuestServer, pki: ServerPki) -> None:
    """Regression: the FIN right after the request was handed to OpenSSL, which then failed
    the whole connection; the guest's answer failed with ``internal: TLS connection failed: []``."""
    before = len(http_server.lines)
    for attempt in range(3):  # the FIN follows the request at once each time
        client = MemoryTlsClient(http_server.port, ssl_client_context(pki), "b.test")
        try:
            client.send(b"GET /half-closed HTTP/1.1\r\nHost: b.test\r\n\r\n")
            client.sock.shutdown(socket.SHUT_WR)  # no close_notify: TCP only
            response, end = client.read_all()
        finally:
            client.close()
        assert response.startswith(b"HTTP/1.1 200 OK"), (response, end, http_server.out)
        assert end == "close_notify"
    mine = http_server.lines[before:]
    assert sum("request GET /half-closed HTTP/1.1" in line for line in mine) == 3, mine
    assert not [line for line in mine if "internal" in line or "write error" in line], mine


# --- a server's fatal alert, seen by a guest client (issue 19, item 5) ----------------------


@pytest.fixture
def gnutls_requiring_a_certificate(pki: ServerPki, tmp_path: Path) -> Iterator[int]:
    if shutil.which("gnutls-serv") is None:
        pytest.skip("gnutls-serv is not installed (Debian: gnutls-bin)")
    port = free_port()
    key = tmp_path / "a.key"
    key.write_bytes(pki.leaf_a.private_key_pem.bytes())
    log = tmp_path / "gnutls-serv.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["gnutls-serv", "-p", str(port), "--echo", "--require-client-cert", "--verify-client-cert",
                                 "--x509cafile", str(pki.client_ca_pem), "--x509certfile", str(pki.a_chain),
                                 "--x509keyfile", str(key)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait(TIMEOUT)


def test_a_guest_client_sees_the_alert_of_a_gnutls_server_that_requires_a_certificate(run_guest, pki: ServerPki, gnutls_requiring_a_certificate: int) -> None:
    """TLS 1.3: the client's handshake ends before the server checks its (empty) certificate;
    the server's certificate_required alert and its close arrive while the guest writes.
    Regression: the write reported ``closed: ... send failed: Broken pipe``."""
    r = run_guest("tls_client", "127.0.0.1", str(gnutls_requiring_a_certificate), "--server-name", "a.test",
                  "--tls", "1.3", "--send", "hello", network=NetworkPolicy().allow_connect("127.0.0.1:*"),
                  tls=TlsConfig(trust=[pki.ca_pem], use_system_roots=False))
    assert r.trap is None, r.trap
    assert "version=0x0304" in r.out
    assert "error=bad-certificate: TLS connection failed: the peer sent alert 'certificate required'" in r.out, r.out


# --- the example server against peers that misbehave (issue 20, defect 3) -------------------


def test_the_example_server_survives_a_client_that_resets_after_its_request(http_server: GuestServer, pki: ServerPki) -> None:
    """Regression: the answer's flush() was not guarded, so the reset ended the guest's run."""
    for _ in range(4):
        raw = socket.create_connection(("127.0.0.1", http_server.port), timeout=TIMEOUT)
        tls = ssl_client_context(pki).wrap_socket(raw, server_hostname="b.test")
        tls.sendall(b"GET /reset HTTP/1.1\r\nHost: b.test\r\n\r\n")
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tls.close()  # RST at once, before the answer
    assert b"200 OK" in answered(http_server, pki)
    assert http_server.thread.is_alive(), http_server.out


def test_the_example_server_answers_requests_with_bare_lf_line_endings(http_server: GuestServer, pki: ServerPki) -> None:
    response = answered(http_server, pki, b"GET /lf HTTP/1.0\n\n")
    assert response.startswith(b"HTTP/1.1 200 OK"), response
    http_server.wait_for("request GET /lf HTTP/1.0")


def test_the_echo_example_keeps_serving_when_a_connection_cannot_be_accepted(host: Host, guest_path: Any, pki: ServerPki) -> None:
    """A connection the host refuses at accept (here: over the guest's socket limit, which
    its listener already fills) is reported and the server waits for the next; it used to
    end the guest's run."""
    port = free_port()
    guest = GuestThread(host, host.load(guest_path("tls_echo_server")), ["tls_echo_server", str(port), "1"],
                        network=NetworkPolicy().allow_listen(f"127.0.0.1:{port}"), tls=pki.server_config(),
                        limits=GuestLimits(max_sockets=1))
    try:
        deadline = time.monotonic() + TIMEOUT
        while "listening on" not in guest.out and time.monotonic() < deadline:
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as refused:
            assert refused.recv(1) == b""  # closed by the host at once
        while "accept failed" not in guest.out and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "accept failed: new-socket-limit; still serving" in guest.out, guest.out
        assert guest.thread.is_alive() and guest.result is None
    finally:
        guest.guest.interrupt("test teardown")
        guest.thread.join(TIMEOUT)
    assert not guest.thread.is_alive()


# --- what an ended connection leaves behind (issue 19, item 6) -------------------------------


def _client_hello(context: ssl.SSLContext, server_name: str) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        context.wrap_bio(incoming, outgoing, server_hostname=server_name).do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_every_way_a_connection_ends_frees_its_tls_objects_without_the_garbage_collector(http_server: GuestServer, pki: ServerPki) -> None:
    """Regression: a failure was kept as the exception that had been raised, whose traceback
    held the frames it passed through and so the handshake or stream keeping it: every
    failed handshake's OpenSSL connection (about 70 KiB) waited for a garbage collection,
    and RSS grew by tens of MB under clients that abandon handshakes."""
    from wasi_tls_host.tls.client_hello import ClientHelloReader
    from wasi_tls_host.tls.engine import TlsEngine
    from wasi_tls_host.tls.server import IncomingClientHello
    from wasi_tls_host.tls.p2 import PendingHandshake, TlsInputStream
    from wasi_tls_host.tls.transport import TlsTransport

    kept = (TlsEngine, TlsTransport, PendingHandshake, TlsInputStream, IncomingClientHello, ClientHelloReader)
    context = ssl_client_context(pki)
    hello = _client_hello(context, "b.test")

    def abandoned(read_first: bool) -> None:
        with socket.create_connection(("127.0.0.1", http_server.port), timeout=TIMEOUT) as raw:
            raw.sendall(hello)
            if read_first:
                raw.recv(100)

    def garbage() -> None:
        with socket.create_connection(("127.0.0.1", http_server.port), timeout=TIMEOUT) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
            raw.recv(100)

    def after_the_handshake(data: bytes, close_notify: bool) -> None:
        client = MemoryTlsClient(http_server.port, context, "b.test")
        try:
            if data:
                client.sock.sendall(data)  # raw bytes, not through TLS
            else:
                client.send(b"GET /partial")
            if close_notify:
                client.tls.unwrap()
                client._flush()
        except ssl.SSLError:
            pass
        finally:
            client.close()

    gc.collect()
    with without_gc():
        for _ in range(3):
            abandoned(read_first=True)
            abandoned(read_first=False)
            garbage()
            after_the_handshake(b"", close_notify=False)  # truncated
            after_the_handshake(b"\x17\x03\x03\x00\x20" + bytes(32), close_notify=False)  # bad_record_mac
        deadline = time.monotonic() + TIMEOUT
        while http_server.guest.open_connections() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert http_server.guest.open_connections() == 0
        left = [type(o).__name__ for o in gc.get_objects() if isinstance(o, kept)]
    assert left == [], left
