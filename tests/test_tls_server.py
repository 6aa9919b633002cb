"""Guest TLS servers and the guest TLS client (this project's wasi-tls-host:tls API) against
real peers on loopback: ``openssl s_client``, ``curl --cacert``, CPython ``ssl`` clients, and
``openssl s_server -Verify``.

Guests: ``guest_examples/tls_server`` (runs on a thread of this process; its printed lines are
what we assert on) and ``guest_examples/tls_client``. Certificates come from trustme
(tests/tls_server_util.py). A module-wide audit hook sees every value any host function
returns to any guest in this module and searches it for the private keys in every encoding.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import SHARED, free_port, open_fds, without_gc
from tls_server_util import (PASSPHRASE, TIMEOUT, AccessLog, GuestServer, KeyAudit, ServerPki, alert_after, connection_line,
                             cpython_hello, fields, read_to_end, s_client, server_hello_after, ssl_client_context, ssl_echo,
                             with_record_version)
from wasi_tls_host import Host
from wasi_tls_host.runtime.binding import OUTGOING_VALUE_HOOKS
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.cli.options_identities import parse_identity_option
from wasi_tls_host.tls.identities import PrivateIdentity
from wasi_tls_host.tls.limits import TlsLimits
from wasi_tls_host.wasi.sockets import NetworkPolicy

pytestmark = pytest.mark.timeout(120)

ALERT_DECODE_ERROR = 50
ALERT_RECORD_OVERFLOW = 22
ALERT_ILLEGAL_PARAMETER = 47


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    return ServerPki(tmp_path_factory.mktemp("server-pki"))


@pytest.fixture(scope="module", autouse=True)
def key_audit(pki: ServerPki) -> Iterator[KeyAudit]:
    """Watch every host-to-guest value of this module for private key material."""
    audit = KeyAudit()
    for identity in (pki.identity_a, pki.identity_b, pki.identity_alice, pki.identity_mallory):
        audit.add_key(identity.name, identity.key)
    audit.add_file("b encrypted key file", pki.b_key_encrypted.read_bytes())
    OUTGOING_VALUE_HOOKS.append(audit.hook)
    yield audit
    OUTGOING_VALUE_HOOKS.remove(audit.hook)
    assert audit.findings == [], audit.findings


@pytest.fixture(scope="module")
def server_component(host: Host, guest_path) -> Any:
    return host.load(guest_path("tls_server"))


@pytest.fixture
def start_server(host: Host, server_component: Any, pki: ServerPki) -> Iterator[Callable[..., GuestServer]]:
    started: list[GuestServer] = []

    def start(*args: str, tls: TlsConfig | None = None) -> GuestServer:
        server = GuestServer(host, server_component, free_port(), *args, tls=tls or pki.server_config())
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(timeout=2.0)


@pytest.fixture
def run_client(run_guest, pki: ServerPki):
    """run_client(port, args..., tls=...) -> GuestRun of the tls_client guest."""

    def run(port: int, *args: str, tls: TlsConfig | None = None):
        config = tls or TlsConfig(trust=[pki.ca_pem], use_system_roots=False, identities=[pki.identity_alice, pki.identity_mallory])
        r = run_guest("tls_client", "127.0.0.1", str(port), *args, network=NetworkPolicy().allow_connect("127.0.0.1:*"), tls=config)
        assert r.trap is None, r.trap
        return r

    return run


def subject_cn(cert: dict[str, Any]) -> str:
    return next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName")


# --- SNI, versions, ALPN: openssl s_client and curl ----------------------------------------


@pytest.mark.parametrize(("name", "identity", "flag", "version"), [
    ("a.test", "a", "-tls1_3", "0x0304"),
    ("b.test", "b", "-tls1_2", "0x0303"),
    ("b.test", "b", "-tls1_3", "0x0304"),
])
def test_openssl_sni_selects_identity_and_version(start_server, pki: ServerPki, name: str, identity: str, flag: str, version: str) -> None:
    server = start_server("--mode", "alpn")
    r = s_client(server.port, "-servername", name, flag, "-alpn", "h2,http/1.1", pki=pki)
    assert "Verify return code: 0 (ok)" in r.stdout, r.stdout + r.stderr
    assert re.search(rf"^subject=.*CN = {re.escape(name)}$", r.stdout, re.M), r.stdout  # the certificate the client got
    assert "ALPN protocol: h2" in r.stdout
    assert f"Protocol  : TLSv1.{3 if version == '0x0304' else 2}" in r.stdout or f"TLSv1.{3 if version == '0x0304' else 2}" in r.stdout
    assert "alpn=h2" in r.stdout  # the line the guest wrote after the handshake
    facts = connection_line(server)
    assert (facts["sni"], facts["identity"], facts["version"], facts["alpn"]) == (name, identity, version, "h2")
    result = server.stop()
    assert result is not None and result.exit_code == 0, server.out


def test_alpn_choice_is_what_both_sides_see(start_server, pki: ServerPki) -> None:
    offers = ["http/1.1", "h2,http/1.1", "http/1.1,h2", None, "spdy/3"]
    server = start_server("--mode", "alpn", "--count", str(len(offers)))
    seen = []
    for offer in offers:
        args = ["-servername", "a.test"] + (["-alpn", offer] if offer else [])
        r = s_client(server.port, *args, pki=pki)
        agreed = re.search(r"ALPN protocol: (\S+)", r.stdout)
        told = re.search(r"^alpn=(\S+)$", r.stdout, re.M)
        seen.append((agreed.group(1) if agreed else None, told.group(1) if told else None, r.stdout + r.stderr))
    assert [s[:2] for s in seen[:4]] == [("http/1.1", "http/1.1"), ("h2", "h2"), ("h2", "h2"), (None, "-")]
    # No protocol in common: refused with the no_application_protocol alert.
    assert seen[4][:2] == (None, None)
    assert "no application protocol" in seen[4][2], seen[4][2]
    assert "rejected: no common ALPN protocol (client offered spdy/3)" in server.wait_for("#5 ")
    assert [connection_line(server, n)["alpn"] for n in range(1, 5)] == ["http/1.1", "h2", "h2", "-"]


def test_curl_gets_the_certificate_for_its_name(start_server, pki: ServerPki) -> None:
    server = start_server("--mode", "http", "--count", "2")
    for name in ("a.test", "b.test"):
        r = subprocess.run(
            ["curl", "-sS", "-v", "--max-time", str(TIMEOUT), "--cacert", str(pki.ca_pem),
             "--resolve", f"{name}:{server.port}:127.0.0.1", f"https://{name}:{server.port}/hello"],
            capture_output=True, text=True, timeout=TIMEOUT + 5)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"identity={name[0]} sni={name} alpn=http/1.1\n"
        assert re.search(rf"^\*\s+subject: .*CN={re.escape(name)}$", r.stderr, re.M), r.stderr
        assert "ALPN: server accepted http/1.1" in r.stderr or "ALPN, server accepted to use http/1.1" in r.stderr
    assert "request GET /hello HTTP/1.1" in server.wait_for("#2 request")
    assert server.stop().exit_code == 0  # type: ignore[union-attr]


# --- CPython ssl clients, mutual TLS ------------------------------------------------------


def test_cpython_echo_with_and_without_client_certificate(start_server, pki: ServerPki) -> None:
    server = start_server("--client-auth", "optional", "--count", "3")
    payload = os.urandom(100_000)
    got, cert, version = ssl_echo(server.port, ssl_client_context(pki), "b.test", payload)
    assert got == payload and subject_cn(cert) == "b.test" and version == "TLSv1.3"
    got, cert, version = ssl_echo(server.port, ssl_client_context(pki, pki.client.pem, version=ssl.TLSVersion.TLSv1_2), "a.test", b"hello\n")
    assert got == b"hello\n" and subject_cn(cert) == "a.test" and version == "TLSv1.2"
    # Optional means optional, but a certificate from an untrusted CA is still refused.
    with pytest.raises(ssl.SSLError, match="UNKNOWN_CA|unknown ca"):
        ssl_echo(server.port, ssl_client_context(pki, pki.rogue_client.pem), "a.test", b"x")
    first, second = connection_line(server, 1), connection_line(server, 2)
    assert first["client"] == "-" and first["identity"] == "b"
    assert second["client"].startswith("CN=alice") and second["version"] == "0x0303"
    assert server.wait_for("#1 closed") == "#1 closed echoed=100000"
    third = server.wait_for("#3 ")
    assert third.startswith("#3 handshake failed: unknown-issuer:"), third
    assert server.stop().exit_code == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_required_client_certificate_missing_or_untrusted_is_refused(start_server, pki: ServerPki, version: ssl.TLSVersion) -> None:
    server = start_server("--client-auth", "required", "--count", "3")
    # Missing: TLS 1.3 clients finish their side first and see the alert on the first read.
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|certificate required|HANDSHAKE_FAILURE|handshake failure"):
        ssl_echo(server.port, ssl_client_context(pki, version=version), "a.test", b"x")
    missing = server.wait_for("#1 ")
    with pytest.raises(ssl.SSLError, match="UNKNOWN_CA|unknown ca"):
        ssl_echo(server.port, ssl_client_context(pki, pki.rogue_client.pem, version=version), "a.test", b"x")
    untrusted = server.wait_for("#2 ")
    got, _, _ = ssl_echo(server.port, ssl_client_context(pki, pki.client.pem, version=version), "a.test", b"trusted\n")
    assert got == b"trusted\n"
    assert missing.startswith("#1 handshake failed: bad-certificate:") and "certificate" in missing, missing
    assert untrusted.startswith("#2 handshake failed: unknown-issuer:") and "verif" in untrusted, untrusted
    assert connection_line(server, 3)["client"].startswith("CN=alice")
    assert server.stop().exit_code == 0  # type: ignore[union-attr]


def test_openssl_client_certificate(start_server, pki: ServerPki) -> None:
    server = start_server("--client-auth", "required", "--mode", "alpn")
    r = s_client(server.port, "-servername", "a.test", "-cert", str(pki.client.pem), "-key", str(pki.client.pem), "-alpn", "http/1.1", pki=pki)
    assert "alpn=http/1.1" in r.stdout, r.stdout + r.stderr
    facts = connection_line(server)
    assert facts["client"].startswith("CN=alice") and facts["alpn"] == "http/1.1"


# --- the guest client: openssl s_server -Verify, and the guest server --------------------


def test_guest_client_mutual_tls_against_openssl_verify(run_client, s_server, pki: ServerPki) -> None:
    server = s_server("-Verify", "1", "-verify_return_error", "-CAfile", str(pki.client_ca_pem), "-rev", "-alpn", "h2")
    r = run_client(server.port, "--server-name", "a.test", "--identity", "alice", "--alpn", "h2,http/1.1", "--send", "hello")
    out = fields(r.out)
    assert r.exit_code == 0, r.out + r.err
    assert out["verification"] == "ok"
    assert out["chain"].startswith("CN=a.test")
    assert out["version"] == "0x0304" and out["alpn"] == "h2"
    assert out["reply"] == "olleh"  # s_server -rev reverses each line
    assert out["client-identity"].startswith("CN=alice")


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
@pytest.mark.parametrize("identity", [None, "mallory"])
def test_guest_client_without_a_trusted_certificate_is_refused(run_client, s_server, pki: ServerPki, identity: str | None, tls: str) -> None:
    server = s_server("-Verify", "1", "-verify_return_error", "-CAfile", str(pki.client_ca_pem), "-rev")
    args = ["--server-name", "a.test", "--tls", tls, "--send", "hello"] + (["--identity", identity] if identity else [])
    r = run_client(server.port, *args)
    out = fields(r.out)
    assert r.exit_code == 1, r.out + r.err
    assert "reply" not in out
    # The server's alert reaches the guest with a code: certificate_required (TLS 1.3) or
    # handshake_failure (TLS 1.2) for a missing one, unknown_ca for an untrusted one.
    expected = "unknown-issuer" if identity else ("bad-certificate" if tls == "1.3" else "handshake-failure")
    assert out["error"].startswith(expected + ":") and "alert" in out["error"], out


def test_guest_client_reports_verification_verdict_and_chain(run_client, s_server, pki: ServerPki) -> None:
    server = s_server("-rev")
    other_ca_only = TlsConfig(trust=[pki.client_ca_pem], use_system_roots=False)
    r = run_client(server.port, "--server-name", "a.test", tls=other_ca_only)
    out = fields(r.out)
    assert r.exit_code == 1
    assert out["chain"].startswith("CN=a.test")
    assert out["verification"].startswith("unknown-issuer:")
    r = run_client(server.port, "--server-name", "wrong.test")
    assert fields(r.out)["verification"].startswith("name-mismatch:"), r.out


def test_guest_client_and_guest_server_mutual_tls(start_server, run_client, pki: ServerPki) -> None:
    server = start_server("--client-auth", "required", "--count", "2")
    r = run_client(server.port, "--server-name", "b.test", "--identity", "alice", "--alpn", "http/1.1", "--send", "ping")
    out = fields(r.out)
    assert r.exit_code == 0, r.out + r.err
    assert out["reply"] == "ping" and out["alpn"] == "http/1.1" and out["chain"].startswith("CN=b.test")
    facts = connection_line(server, 1)
    assert facts["client"].startswith("CN=alice") and facts["identity"] == "b"
    r = run_client(server.port, "--server-name", "b.test", "--send", "ping")
    assert r.exit_code == 1 and "reply" not in fields(r.out)
    assert server.wait_for("#2 ").startswith("#2 handshake failed: bad-certificate:")


# --- what a guest can reach ----------------------------------------------------------------


def test_guest_sees_only_preopened_identities(run_guest, pki: ServerPki) -> None:
    def inspect(identities: list[PrivateIdentity], *args: str) -> str:
        r = run_guest("tls_server", "identities", *args, tls=TlsConfig(use_system_roots=False, identities=identities))
        assert r.exit_code == 0 and r.trap is None, r.out + r.err
        return r.out

    assert inspect([], "a", "b", "--host", "a.test") == "all=-\nname a=none\nname b=none\nhost a.test=-\n"
    assert inspect([pki.identity_a], "a", "b", "--host", "b.test", "--host", "a.test") == "all=a\nname a=a\nname b=none\nhost b.test=-\nhost a.test=a\n"
    # No TLS config at all: also an empty store.
    r = run_guest("tls_server", "identities", "a")
    assert r.out == "all=-\nname a=none\n"


def test_guest_cannot_name_an_identity_it_was_not_given(start_server, run_guest, run_client, pki: ServerPki) -> None:
    port = free_port()
    r = run_guest("tls_server", str(port), "--identity", "b", network=NetworkPolicy().allow_listen(f"127.0.0.1:{port}"),
                  tls=pki.server_config(identities=[pki.identity_a]))
    assert r.exit_code == 1 and r.out == "identity b was not preopened\n"
    r = run_client(port, "--identity", "bob", tls=TlsConfig(trust=[pki.ca_pem], use_system_roots=False))
    assert r.exit_code == 1 and r.out == "error=access-denied: identity bob was not preopened\n"


def test_server_without_identities_refuses_with_an_alert(start_server, pki: ServerPki) -> None:
    server = start_server(tls=pki.server_config(identities=[]))
    assert "identities=-" in server.wait_for("listening")
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE|handshake failure"):
        ssl_echo(server.port, ssl_client_context(pki), "a.test", b"x")
    assert server.wait_for("#1 ") == "#1 rejected: no identity preopened (sni=a.test)"


def test_client_certificate_requested_without_a_client_ca_ends_with_an_alert(start_server, pki: ServerPki) -> None:
    """The embedder configured no client CA: the guest's request cannot be honoured, and the
    client is told so by an alert (it used to see a bare end of data)."""
    server = start_server("--client-auth", "required", tls=pki.server_config(client_ca=False))
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE|handshake failure"):
        ssl_echo(server.port, ssl_client_context(pki), "a.test", b"x")
    line = server.wait_for("#1 ")
    assert line.startswith("#1 handshake failed: invalid-state: client certificates were requested") and "--client-ca" in line


def test_identity_from_encrypted_key_and_cli_option(pki: ServerPki, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="encrypted"):
        PrivateIdentity.from_files("b", pki.b_chain, pki.b_key_encrypted)
    with pytest.raises(ValueError, match="cannot load the private key"):
        PrivateIdentity.from_files("b", pki.b_chain, pki.b_key_encrypted, passphrase=b"wrong")
    monkeypatch.setenv("WASI_TLS_HOST_PASSPHRASE_B_KEY", PASSPHRASE.decode())
    identity = parse_identity_option(f"b-key={pki.b_chain},{pki.b_key_encrypted}")
    assert identity.name == "b-key" and identity.public.valid_for("b.test")
    with pytest.raises(ValueError, match="does not match"):
        PrivateIdentity.from_pem("mixed", pki.a_chain.read_bytes(), pki.leaf_b.private_key_pem.bytes())


# --- first flights: record versions, malformed and refused hellos ------------------------


@pytest.mark.parametrize("version", [0x0300, 0x0304])
def test_a_hello_in_a_record_of_any_0x03xx_version_is_answered(start_server, version: int) -> None:
    """RFC 5246 Appendix E.1: any 0x03XX record version carries a first ClientHello (tlsfuzzer
    sends 0x0300); it was refused with protocol_version."""
    server = start_server()
    reply = server_hello_after(server.port, with_record_version(cpython_hello(), version))
    assert reply[:1] == b"\x16" and reply[5:6] == b"\x02", reply[:16]  # a ServerHello
    assert server.wait_for("#1 ").startswith("#1 handshake failed: closed:")  # we left after it


def test_tlsfuzzer_tls13_conversation(start_server, tmp_path) -> None:
    """tlsfuzzer's own script, unmodified: its first ClientHello is in a 0x0300 record."""
    suite = Path(os.environ.get("TLSFUZZER", SHARED / "testsuites" / "tlsfuzzer"))
    if not (suite / "tlsfuzzer" / "_apps" / "test_tls13_conversation.py").is_file():
        pytest.skip(f"tlsfuzzer is not at {suite} (set TLSFUZZER)")
    server = start_server("--mode", "http", "--count", "3")
    # The scripts in scripts/ are symbolic links to one stub; run the module it would run.
    r = subprocess.run([sys.executable, "-m", "tlsfuzzer._apps.test_tls13_conversation", "-h", "127.0.0.1", "-p", str(server.port)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(suite)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert re.search(r"^PASS: 3$", r.stdout, re.M) and re.search(r"^FAIL: 0$", r.stdout, re.M), r.stdout[-1500:]
    assert server.stop().exit_code == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(("label", "data", "reason", "alert"), [
    # A peer that does not speak TLS gets no alert, only the close (as OpenSSL and Go).
    ("plain HTTP", b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", "plain HTTP", None),
    ("garbage", bytes(range(256)) * 4, "not speaking TLS", None),
    ("record version 0x0200", with_record_version(b"\x16\x03\x01\x00\x04\x01\x00\x00\x30", 0x0200), "not speaking TLS", None),
    # A record over 2^14 bytes gets record_overflow, as RFC 8446 section 5.1 demands; the
    # guest still sees decode-error.
    ("oversized record", b"\x16\x03\x01\x50\x00" + b"\x01" + b"\x00" * 200, "record", ALERT_RECORD_OVERFLOW),
    ("oversized hello", b"\x16\x03\x01\x40\x00\x01\x10\x00\x00" + b"\x03\x03" + os.urandom(16378), "limit", ALERT_DECODE_ERROR),
    # A server name that decodes but is no DNS name (RFC 8446 section 6.2, as tlsfuzzer's
    # test-invalid-server-name-extension expects).
    ("SNI with BEL", cpython_hello("a.test").replace(b"a.test", b"a.tes\x07"), "'\\x07'", ALERT_ILLEGAL_PARAMETER),
    ("SNI with an ANSI escape", cpython_hello("abcdefg.test").replace(b"abcdefg", b"a\x1b[31mb"), "'\\x1b'", ALERT_ILLEGAL_PARAMETER),
])
def test_malformed_first_flights_are_refused(start_server, label: str, data: bytes, reason: str, alert: int | None) -> None:
    server = start_server()
    reply = alert_after(server.port, data)
    if alert is None:
        assert reply == b""
    else:
        assert reply[:1] == b"\x15" and reply[-2:] == bytes([2, alert]), reply  # a fatal alert, then the close
    line = server.wait_for("#1 ")
    assert line.startswith("#1 rejected: decode-error: "), line
    assert reason.lower() in line.lower(), line
    assert server.stop().exit_code == 0  # type: ignore[union-attr]


def inflated_hello(suites: int, padding: int) -> bytes:
    """CPython's first flight with ``suites`` unassigned cipher suites added and an extension
    of unassigned type 80 (as tlsfuzzer uses) holding ``padding`` bytes, in records of at most
    2^14 bytes."""
    body = cpython_hello()[9:]
    at = 2 + 32 + 1 + body[34]  # after version, random and session id
    count = int.from_bytes(body[at:at + 2], "big")
    extra = b"".join((0x0100 + i).to_bytes(2, "big") for i in range(suites))
    body = body[:at] + (count + len(extra)).to_bytes(2, "big") + body[at + 2:at + 2 + count] + extra + body[at + 2 + count:]
    at += 2 + count + len(extra)
    at += 1 + body[at]  # compression methods; the extensions block follows
    extensions = body[at + 2:] + (80).to_bytes(2, "big") + padding.to_bytes(2, "big") + bytes(padding)
    body = body[:at] + len(extensions).to_bytes(2, "big") + extensions
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"".join(b"\x16\x03\x01" + len(message[i:i + 16384]).to_bytes(2, "big") + message[i:i + 16384]
                    for i in range(0, len(message), 16384))


def test_without_a_client_hello_limit_a_hello_over_64_kib_is_answered(start_server, pki: ServerPki) -> None:
    """TlsLimits(max_client_hello=None) (``--max-client-hello none``) leaves only OpenSSL's own
    bound; the default refuses the same flight with decode_error."""
    flight = inflated_hello(32_000, 4_000)
    assert len(flight) > 65_536
    unlimited = pki.server_config()
    unlimited.limits = TlsLimits(max_client_hello=None)
    reply = server_hello_after(start_server(tls=unlimited).port, flight)
    assert reply[:1] == b"\x16" and reply[5:6] == b"\x02", reply[:16]
    reply = alert_after(start_server().port, flight)
    assert reply == bytes([21, 3, 3, 0, 2, 2, ALERT_DECODE_ERROR])


def test_tls10_client_is_refused_with_protocol_version(start_server, pki: ServerPki) -> None:
    """A TLS 1.0-only client offers nothing the server accepts: an alert, not a hang."""
    server = start_server("--count", "1")
    r = s_client(server.port, "-servername", "a.test", "-tls1", pki=pki)
    assert r.returncode != 0
    assert "alert protocol version" in r.stdout + r.stderr, r.stdout + r.stderr
    line = server.wait_for("#1 ")
    assert line.startswith("#1 handshake failed: protocol-version:"), line


# --- the access log: why a connection failed, and the one spelling of its server name -----


def _hold(port: int, data: bytes = b"") -> socket.socket:
    """A client that sends ``data`` (e.g. half a ClientHello) and then waits."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(data)
    return sock


def _client_port(sock: socket.socket) -> int:
    return sock.getsockname()[1]  # type: ignore[no-any-return]


def _send_and_read_to_end(port: int, data: bytes) -> int:
    """Send ``data``, read until the server closes; the client's port."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        read_to_end(sock)
        return _client_port(sock)


def _ssl_attempt(port: int, ctx: ssl.SSLContext, name: str) -> int:
    """A CPython handshake the server refuses; the client's port."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        client_port = _client_port(raw)
        with pytest.raises(ssl.SSLError):
            with ctx.wrap_socket(raw, server_hostname=name):
                pass
        return client_port


def _limited(pki: ServerPki, **limits: Any) -> TlsConfig:
    config = pki.server_config()
    config.limits = TlsLimits(**limits)
    return config


def scenario_garbage(start_server, pki: ServerPki) -> tuple[int, str | None]:
    return _send_and_read_to_end(start_server().port, bytes(range(256))), None


def scenario_plain_http(start_server, pki: ServerPki) -> tuple[int, str | None]:
    return _send_and_read_to_end(start_server().port, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), None


def scenario_no_common_alpn(start_server, pki: ServerPki) -> tuple[int, str | None]:
    ctx = ssl_client_context(pki)
    ctx.set_alpn_protocols(["spdy/3"])
    return _ssl_attempt(start_server().port, ctx, "a.test"), "a.test"


def scenario_version_refused_after_the_hello(start_server, pki: ServerPki) -> tuple[int, str | None]:
    return _ssl_attempt(start_server("--tls", "1.3").port, ssl_client_context(pki, version=ssl.TLSVersion.TLSv1_2), "b.test"), "b.test"


def scenario_handshake_cap(start_server, pki: ServerPki) -> tuple[int, str | None]:
    server = start_server("--concurrent", "--count", "2", tls=_limited(pki, max_handshakes=1))
    with _hold(server.port):  # a handshake in progress: the guest's one
        return _send_and_read_to_end(server.port, cpython_hello()), None


def scenario_connection_cap(start_server, pki: ServerPki) -> tuple[int, str | None]:
    server = start_server("--concurrent", "--count", "2", tls=_limited(pki, max_connections=1))
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
        with ssl_client_context(pki).wrap_socket(raw, server_hostname="a.test") as first:
            first.sendall(b"x")
            assert first.recv(1) == b"x"  # established, and held open
            return _send_and_read_to_end(server.port, cpython_hello()), None


def scenario_timeout_before_the_hello(start_server, pki: ServerPki) -> tuple[int, str | None]:
    server = start_server(tls=_limited(pki, handshake_timeout=0.3))
    return _send_and_read_to_end(server.port, cpython_hello()[:100]), None


ACCESS_SCENARIOS = {
    "garbage": (scenario_garbage, "failed: the client is not speaking TLS"),
    "plain HTTP": (scenario_plain_http, "failed: the client sent plain HTTP ('GET / HTTP/1.1'...)"),
    "no common ALPN": (scenario_no_common_alpn, "failed: the guest refused the ClientHello with no_application_protocol (120)"),
    "version refused after the hello": (scenario_version_refused_after_the_hello, "failed: TLS handshake failed: "),
    "handshake cap": (scenario_handshake_cap, "failed: TLS connection refused by the host: this guest already has 1 TLS handshakes in progress"),
    "connection cap": (scenario_connection_cap, "failed: TLS connection refused by the host: this guest already has 1 TLS connections open"),
    "timeout before the hello": (scenario_timeout_before_the_hello, "failed: TLS handshake timed out: not established within 0.3 s"),
}


@pytest.mark.parametrize("case", list(ACCESS_SCENARIOS))
def test_access_log_says_why_a_handshake_failed_and_for_which_name(start_server, pki: ServerPki, case: str) -> None:
    """``tls=failed: REASON`` whenever the handshake did not happen, with the reason the guest
    was given; ``sni=`` whenever the ClientHello was read."""
    scenario, reason = ACCESS_SCENARIOS[case]
    with AccessLog() as log:
        port, sni = scenario(start_server, pki)
        line = log.of(port)
    assert line["tls"].startswith(reason), line
    assert line["sni"] == (sni or "-"), line
    assert line["version"] == "-" and line["handshake_ms"] == "-", line


def test_one_spelling_of_a_server_name(start_server, pki: ServerPki) -> None:
    """SNI ``B.TEST``: the guest's hello and connection, and the access log, all say ``b.test``
    (DNS names compare without case); the connection and the log said ``B.TEST``."""
    server = start_server("--mode", "alpn")
    with AccessLog() as log:
        r = s_client(server.port, "-servername", "B.TEST", "-alpn", "h2", pki=pki)
        assert "alpn=h2" in r.stdout, r.stdout + r.stderr
        facts = connection_line(server)  # the guest chose by hello.server-name, printed connection.server-name
        assert (facts["sni"], facts["identity"]) == ("b.test", "b"), facts["line"]
        assert server.stop().exit_code == 0  # type: ignore[union-attr]
        [line] = log.lines
    assert " sni=b.test " in line and " tls=ok " in line, line


# --- many clients at once, and no leaks ----------------------------------------------------


def test_200_concurrent_tls_connections(start_server, pki: ServerPki) -> None:
    count = 200
    server = start_server("--concurrent", "--count", str(count))
    ctx = ssl_client_context(pki)

    async def one(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx, server_hostname="a.test" if i % 2 else "b.test")
        try:
            line = f"client {i}\n".encode() * 10
            writer.write(line)
            await writer.drain()
            return await reader.readexactly(len(line))
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ssl.SSLError, ConnectionError):
                pass

    async def all_clients() -> list[Any]:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True), 60)

    started = time.monotonic()
    results = asyncio.run(all_clients())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [], errors[:5]
    assert all(r == f"client {i}\n".encode() * 10 for i, r in enumerate(results))
    result = server.stop(timeout=30)
    assert result is not None and result.exit_code == 0, server.out[-2000:]
    lines = server.lines
    assert sum(" connection " in line for line in lines) == count
    assert [line for line in lines if "failed" in line or "error" in line or "rejected" in line] == []
    assert lines[-1] == f"served {count}"
    print(f"200 concurrent connections served in {time.monotonic() - started:.2f} s")


def test_descriptors_return_to_baseline(start_server, pki: ServerPki) -> None:
    warm = start_server("--count", "1")
    ssl_echo(warm.port, ssl_client_context(pki), "a.test", b"warm")
    warm.stop()
    with without_gc():
        baseline = open_fds()
        threads = threading.active_count()
        server = start_server("--count", "3", "--client-auth", "optional")
        ssl_echo(server.port, ssl_client_context(pki), "a.test", b"x" * 1000)
        alert_after(server.port, b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises(ssl.SSLError):
            ssl_echo(server.port, ssl_client_context(pki, pki.rogue_client.pem), "a.test", b"x")
        assert server.stop().exit_code == 0  # type: ignore[union-attr]
        # The guest has returned and its store is closed: nothing is left to close later.
        assert open_fds() <= baseline
        assert threading.active_count() <= threads


def test_zz_no_private_key_reached_a_guest(key_audit: KeyAudit, pki: ServerPki, start_server, run_client) -> None:
    """Runs last in this module: every value returned to a guest so far was searched."""
    # One mutual-TLS exchange of guest client and guest server, so the audit covers both
    # sides even when this test runs alone.
    server = start_server("--client-auth", "required")
    assert fields(run_client(server.port, "--server-name", "a.test", "--identity", "alice", "--send", "x").out)["reply"] == "x"
    # The audit really looks: a planted key in any shape is found.
    from cryptography.hazmat.primitives import serialization as ser

    planted = pki.identity_b.key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    assert key_audit.search([("x", {"k": b"prefix" + planted})])
    assert key_audit.search(pki.identity_a.key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()).decode())
    assert key_audit.search(pki.b_key_encrypted.read_bytes())
    # And it saw identities, handshakes and streams on both sides.
    assert key_audit.values_seen > 100, key_audit.values_seen
    # Function names carry their interface's version family (wasi:io/streams@0.2#...): compare without it.
    seen_unversioned = {re.sub(r"@[^#]*#", "#", seen) for seen in key_audit.functions_seen}
    for fn in ("identities#[method]identity-store.find-by-name", "identities#[method]private-identity.public-identity",
               "server#[static]incoming-client-exchange.finish", "client#[method]incoming-server-hello.server-chain",
               "identities#[method]public-identity.subject", "streams#[method]input-stream.read"):
        assert any(seen.endswith(fn) for seen in seen_unversioned), (fn, sorted(key_audit.functions_seen))
    assert key_audit.findings == []
