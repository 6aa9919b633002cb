"""TLS profiles against real peers: the default (Mozilla "intermediate") refuses TLS 1.2 CBC
suites and the groups X448 and P-521 that `compat` accepts; `modern` is TLS 1.3 only; a guest
can narrow the embedder's profile, never widen it; TLS 1.3 servers resume sessions unless told
not to, and never accept 0-RTT.

Peers: ``openssl s_client`` and ``openssl s_server`` (with -cipher, -groups, -tls1_2...),
CPython ``ssl``. Guests: ``tls_server`` and ``tls_client``.
"""

from __future__ import annotations

import dataclasses
import re
import ssl
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import free_port
from tls_server_util import TIMEOUT, GuestServer, ServerPki, connection_line, fields, s_client, ssl_client_context
from wasi_tls_host import Host
from wasi_tls_host.cli import main as cli_main
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.tls.profiles import PROFILES
from wasi_tls_host.wasi.sockets import NetworkPolicy

pytestmark = pytest.mark.timeout(120)

CBC_SUITES = ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
    return ServerPki(tmp_path_factory.mktemp("profile-pki"))


@pytest.fixture(scope="module")
def server_component(host: Host, guest_path) -> Any:
    return host.load(guest_path("tls_server"))


@pytest.fixture
def start_server(host: Host, server_component: Any, pki: ServerPki) -> Iterator[Callable[..., GuestServer]]:
    started: list[GuestServer] = []

    def start(*args: str, profile: str | None = None, **tls_fields: Any) -> GuestServer:
        tls = pki.server_config()
        if profile is not None:
            tls_fields["profile"] = profile
        if tls_fields:
            tls = dataclasses.replace(tls, **tls_fields)
        server = GuestServer(host, server_component, free_port(), "--mode", "alpn", *args, tls=tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(timeout=2.0)


def negotiated(r: subprocess.CompletedProcess[str]) -> str | None:
    """The suite s_client negotiated, None if the handshake failed."""
    if "Verify return code: 0 (ok)" not in r.stdout or "alpn=" not in r.stdout:
        return None
    m = re.search(r"Cipher is (\S+)", r.stdout)
    return m.group(1) if m else None


# --- the server side ------------------------------------------------------------------------


def test_default_server_refuses_cbc_suites_and_weak_groups(start_server, pki: ServerPki) -> None:
    # Groups are tried against b.test (an RSA certificate): in TLS 1.2 an ECDSA P-256
    # certificate would itself need P-256 among the client's groups.
    attempts = [["-servername", "a.test", "-tls1_2", "-cipher", suite] for suite in CBC_SUITES]
    attempts += [["-servername", "b.test", version, "-groups", group] for group in ("X448", "P-521") for version in ("-tls1_2", "-tls1_3")]
    accepted = [["-servername", "a.test", "-tls1_2", "-cipher", suite] for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305")]
    accepted += [["-servername", "b.test", version, "-groups", group] for group in ("X25519", "P-256", "P-384") for version in ("-tls1_2", "-tls1_3")]
    server = start_server("--count", str(len(attempts) + len(accepted)))
    for args in attempts:
        r = s_client(server.port, *args, pki=pki)
        assert negotiated(r) is None, (args, r.stdout)
        assert "handshake failure" in r.stdout + r.stderr or "no shared" in r.stdout + r.stderr, (args, r.stdout + r.stderr)
    for args in accepted:
        r = s_client(server.port, *args, pki=pki)
        assert negotiated(r) is not None, (args, r.stdout + r.stderr)


def test_compat_server_accepts_what_the_default_refuses(start_server, pki: ServerPki) -> None:
    attempts = [["-servername", "a.test", "-tls1_2", "-cipher", suite] for suite in CBC_SUITES]
    attempts += [["-servername", "b.test", "-tls1_3", "-groups", "X448"], ["-servername", "b.test", "-tls1_2", "-groups", "P-521"]]
    server = start_server("--count", str(len(attempts)), profile="compat")
    for args in attempts:
        r = s_client(server.port, *args, pki=pki)
        suite = negotiated(r)
        assert suite is not None, (args, r.stdout + r.stderr)
        if "-cipher" in args:
            assert suite == args[-1]
        else:
            assert re.search(rf"(Negotiated TLS1.3 group|Server Temp Key): {'X448' if 'X448' in args else 'ECDH, (P-521|secp521r1)'}", r.stdout), r.stdout


def test_modern_server_is_tls13_only(start_server, pki: ServerPki) -> None:
    server = start_server("--count", "2", profile="modern")
    r = s_client(server.port, "-servername", "a.test", "-tls1_2", pki=pki)
    assert negotiated(r) is None
    assert "alert protocol version" in r.stdout + r.stderr, r.stdout + r.stderr
    assert connection_line(server, 1)["line"].startswith("#1 handshake failed: protocol-version:")
    assert cpython_version(server.port, ssl_client_context(pki)) == "TLSv1.3"


def cpython_version(port: int, ctx: ssl.SSLContext) -> str | None:
    """Handshake with CPython's ssl, read the guest's one line (alpn mode), return the version."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="a.test") as tls:
            assert tls.recv(100).startswith(b"alpn=")
            return tls.version()


def test_guest_can_narrow_the_profile_but_not_widen_it(start_server, pki: ServerPki) -> None:
    # TLS 1.2 under `modern`: the guest's answer is refused with a reason naming the profile.
    server = start_server("--count", "1", "--tls", "1.2", profile="modern")
    r = s_client(server.port, "-servername", "a.test", pki=pki)
    assert negotiated(r) is None
    line = server.wait_for("#1 ")
    assert line.startswith("#1 answer refused: protocol-version:") and "profile 'modern' (TLS 1.3 only)" in line, line

    # A CBC suite under the default: refused, by number and name.
    server = start_server("--count", "1", "--suites", "0xc02b,0xc009")
    r = s_client(server.port, "-servername", "a.test", "-tls1_2", pki=pki)
    assert negotiated(r) is None
    line = server.wait_for("#1 ")
    assert line.startswith("#1 answer refused: invalid-argument:"), line
    assert "0xc009 (ECDHE-ECDSA-AES128-SHA)" in line and "'intermediate'" in line and "0xc02b" not in line, line

    # Narrowing to one AEAD suite works, and a client that offers only others is refused.
    server = start_server("--count", "2", "--suites", "0xc02c,0x1302")
    r = s_client(server.port, "-servername", "a.test", "-tls1_2", pki=pki)
    assert negotiated(r) == "ECDHE-ECDSA-AES256-GCM-SHA384", r.stdout + r.stderr
    r = s_client(server.port, "-servername", "a.test", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256", pki=pki)
    assert negotiated(r) is None

    # The same CBC suite under `compat` is the guest's to choose.
    server = start_server("--count", "1", "--suites", "0xc009", profile="compat")
    r = s_client(server.port, "-servername", "a.test", "-tls1_2", pki=pki)
    assert negotiated(r) == "ECDHE-ECDSA-AES128-SHA", r.stdout + r.stderr


def test_embedder_versions_are_intersected_with_the_profile() -> None:
    assert TlsConfig(profile="modern").version_bounds() == (ssl.TLSVersion.TLSv1_3.value, ssl.TLSVersion.TLSv1_3.value)
    assert TlsConfig(max_version="1.2").version_bounds()[1] == ssl.TLSVersion.TLSv1_2.value
    with pytest.raises(ValueError, match="outside the host's TLS profile 'modern'"):
        TlsConfig(profile="modern", max_version="1.2")
    with pytest.raises(ValueError, match="must be one of"):
        TlsConfig(profile="legacy")
    assert sorted(PROFILES) == ["compat", "intermediate", "modern"]


@pytest.mark.parametrize("resumption", [True, False])
def test_tls13_resumption_by_default_off_by_option_and_no_early_data(start_server, pki: ServerPki, tmp_path: Path, resumption: bool) -> None:
    session = tmp_path / "session.pem"
    early = tmp_path / "early.txt"
    early.write_text("GET / HTTP/1.0\r\n\r\n")
    server = start_server("--count", "3", resumption=resumption)
    first = s_client(server.port, "-servername", "a.test", "-tls1_3", "-sess_out", str(session), pki=pki)
    assert negotiated(first) is not None and "New," in first.stdout, first.stdout
    # Without resumption OpenSSL still sends a TLS 1.3 ticket (SSL_CTX_set_num_tickets is not
    # reachable from pyOpenSSL), a stateful one that no cache can resolve: it never resumes.
    second = s_client(server.port, "-servername", "a.test", "-tls1_3", *(["-sess_in", str(session)] if session.exists() else []), pki=pki)
    assert negotiated(second) is not None
    assert ("Reused," in second.stdout) == resumption, second.stdout
    third = s_client(server.port, "-servername", "a.test", "-tls1_3", *(["-sess_in", str(session), "-early_data", str(early)] if session.exists() else []), pki=pki)
    assert negotiated(third) is not None
    assert "Early data was accepted" not in third.stdout
    if resumption:
        # The server's tickets allow no early data, so the client does not even try it.
        assert "Max Early Data: 0" in first.stdout and "Early data was not sent" in third.stdout, third.stdout


def ticket_key_names(s_client_output: str) -> set[str]:
    """The key names of the session tickets s_client printed: the first 16 bytes of an
    OpenSSL ticket name the key that encrypted it."""
    return {m.group(1) for m in re.finditer(r"TLS session ticket:\n\s*0000 - ([0-9a-f -]{47})", s_client_output)}


def test_session_ticket_keys_are_rotated_by_the_host(start_server, pki: ServerPki, tmp_path: Path) -> None:
    """A ticket resumes within its key's lifetime; after it the host encrypts under a new
    key (another key name) and the old ticket no longer resumes."""
    import time

    lifetime = 2.0
    session = tmp_path / "session.pem"
    server = start_server("--count", "12", ticket_key_lifetime=lifetime)
    for _ in range(3):
        # The host makes a key period's keys at its first handshake, so the keys in use are
        # no older than this moment.
        began = time.monotonic()
        first = s_client(server.port, "-servername", "a.test", "-tls1_3", "-sess_out", str(session), pki=pki)
        soon = s_client(server.port, "-servername", "a.test", "-tls1_3", "-sess_in", str(session), pki=pki)
        # OpenSSL keeps a session's start time in whole seconds, so a session can expire up
        # to a second before its lifetime: the two handshakes must fit in the rest.
        if time.monotonic() - began < lifetime - 1.0:
            break
        # A slow machine took too long for two handshakes: nothing was shown; let this key
        # period end so the next try starts a new one at its first handshake.
        time.sleep(lifetime)
    else:
        pytest.skip("two handshakes never fit in one ticket key lifetime on this machine")
    assert "Reused," in soon.stdout, soon.stdout
    before = ticket_key_names(first.stdout)
    assert len(before) == 1, first.stdout
    time.sleep(lifetime + 0.2)  # from after both handshakes: the keys are older than a lifetime then
    later = s_client(server.port, "-servername", "a.test", "-tls1_3", "-sess_in", str(session), pki=pki)
    assert negotiated(later) is not None and "New," in later.stdout, later.stdout
    after = ticket_key_names(later.stdout)
    assert len(after) == 1 and after != before, (before, after)


def test_a_ticket_key_period_starts_at_its_first_handshake(pki: ServerPki) -> None:
    """A host idle for most of a key lifetime before its first handshake still keeps that
    handshake's keys for a whole lifetime (they were replaced at the next handshake)."""
    import time

    config = dataclasses.replace(pki.server_config(), ticket_key_lifetime=3.0)
    time.sleep(2.0)
    config.server_context_cache()["answer"] = context = object()
    time.sleep(1.2)  # 3.2 s after the config was made, 1.2 s after the first handshake
    assert config.server_context_cache().get("answer") is context


# --- the client side ------------------------------------------------------------------------


def run_client(run_guest, pki: ServerPki, port: int, *args: str, profile: str = "intermediate"):
    tls = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, profile=profile)
    return run_guest("tls_client", "127.0.0.1", str(port), "--server-name", "a.test", *args,
                     network=NetworkPolicy().allow_connect("127.0.0.1:*"), tls=tls)


@pytest.mark.parametrize("server_args", [
    ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"),
    ("-tls1_3", "-groups", "X448"),
    ("-tls1_2", "-groups", "P-521"),
], ids=["cbc", "x448", "p521"])
def test_guest_client_refuses_by_default_and_accepts_under_compat(run_guest, s_server, pki: ServerPki, server_args: tuple[str, ...]) -> None:
    server = s_server(*server_args, "-rev")
    refused = run_client(run_guest, pki, server.port, "--send", "hello")
    assert refused.exit_code == 1 and "reply" not in fields(refused.out), refused.out + refused.err
    assert fields(refused.out)["error"].startswith(("handshake-failure:", "peer-alert:", "protocol-version:")), refused.out
    accepted = run_client(run_guest, pki, server.port, "--send", "hello", profile="compat")
    assert accepted.exit_code == 0, accepted.out + accepted.err
    assert fields(accepted.out)["reply"] == "olleh"


def test_cli_tls_profile_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["run", "--tls-profile", "ancient", "x.wasm"])
    assert "invalid choice: 'ancient'" in capsys.readouterr().err
    assert cli_main(["run", "--tls-profile", "modern", "--tls-max", "1.2", "x.wasm"]) == 2
    assert "outside the host's TLS profile 'modern'" in capsys.readouterr().err
