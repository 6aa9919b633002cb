"""Guest TLS clients and servers against GnuTLS, Go's crypto/tls and OpenSSL (issue 19):
RSA-PSS identities both ways, a client identity's intermediates, client-side session
resumption.

Peers: ``gnutls-serv``/``gnutls-cli`` (GnuTLS), the Go TLS peer (``tests/peers/gotls``, the
``gotls`` fixture), ``openssl s_server``/``s_client``. Guests: ``tls_client``, ``tls_server``
(this project's API) and ``tls_probe`` (upstream wasi:tls). Tests needing a peer that is
not installed are skipped, saying which.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from conftest import free_port
from gotls_peer import GoTls
from tls_peers import GnutlsServer, LeafFiles, OpensslServer, rsa_pss_files
from tls_server_util import GuestServer, connection_line
from wasi_tls_host import Host
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.tls.engine import HandshakeInfo
from wasi_tls_host.tls.identities import PrivateIdentity
from wasi_tls_host.tls.sessions import ClientSessions, SessionKey, session_lifetime
from wasi_tls_host.wasi.sockets import NetworkPolicy

pytestmark = pytest.mark.timeout(180)
TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[1]

needs_gnutls = pytest.mark.skipif(shutil.which("gnutls-serv") is None, reason="GnuTLS (gnutls-bin) is not installed")


class ChainPki:
    """A root, an intermediate under it, a server certificate from the root (localhost,
    127.0.0.1) and a client certificate from the intermediate: servers trust only the root."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.root = trustme.CA(organization_name="chain root")
        self.intermediate = self.root.create_child_ca()
        self.server = self.root.issue_cert("localhost", "127.0.0.1", common_name="localhost")
        self.client = self.intermediate.issue_cert("client@example.org", common_name="chain-client")
        self.root_pem = self._write("root.pem", self.root.cert_pem.bytes())
        self.server_pem = self._write("server.pem", self.server.cert_chain_pems[0].bytes())
        self.server_key = self._write("server.key", self.server.private_key_pem.bytes())
        self.server_with_key = self._write("server-with-key.pem", self.server.private_key_and_cert_chain_pem.bytes())
        # The client's file holds the leaf and the intermediate, as a CA hands them out.
        self.client_chain = self._write("client.pem", b"".join(c.bytes() for c in self.client.cert_chain_pems))
        self.client_key = self._write("client.key", self.client.private_key_pem.bytes())
        self.client_identity = PrivateIdentity.from_files("client", self.client_chain, self.client_key)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def client_config(self, **fields: Any) -> TlsConfig:
        return TlsConfig(trust=[self.root_pem], use_system_roots=False, identities=[self.client_identity], **fields)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> ChainPki:
    return ChainPki(tmp_path_factory.mktemp("chain"))


@pytest.fixture(scope="module")
def pss(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return rsa_pss_files(tmp_path_factory.mktemp("pss"))


def connections(output: str) -> list[dict[str, str]]:
    """tls_client's facts, one dict per connection (each ends with a ``done`` line)."""
    found, current = [], {}
    for line in output.splitlines():
        if line == "done":
            found.append(current)
            current = {}
        elif "=" in line:
            key, value = line.split("=", 1)
            current[key] = value
    if current:
        found.append(current)  # a connection that failed before its end
    return found


@pytest.fixture
def run_client(run_guest) -> Callable[..., Any]:
    """run_client(port, args..., tls=...) -> GuestRun of tls_client to localhost:port."""

    def run(port: int, *args: str, tls: TlsConfig) -> Any:
        r = run_guest("tls_client", "127.0.0.1", str(port), "--server-name", "localhost", *args,
                      network=NetworkPolicy().allow_connect("127.0.0.1:*"), tls=tls)
        assert r.trap is None, r.trap
        return r

    return run


# --- item 4: a client identity's intermediates -----------------------------------------------


def test_client_chain_go_server_trusting_only_the_root(gotls: GoTls, run_client, chain: ChainPki) -> None:
    server = gotls.server("-cert", str(chain.server_pem), "-key", str(chain.server_key), "-ca", str(chain.root_pem),
                          "-client-auth", "require")
    r = run_client(server.port, "--identity", "client", "--send", "hi", tls=chain.client_config())
    assert r.exit_code == 0, r.out + r.err
    assert connections(r.out)[0]["reply"] == "hi"
    [seen] = server.connections(1)
    assert seen["ok"], seen
    # Go lists the chain the client sent: the leaf, then the intermediate.
    assert len(seen["peer_chain"]) == 2 and "chain-client" in seen["peer_chain"][0], seen


@needs_gnutls
def test_client_chain_gnutls_server_trusting_only_the_root(peers, run_client, chain: ChainPki, tmp_path: Path) -> None:
    server = GnutlsServer("--x509certfile", str(chain.server_pem), "--x509keyfile", str(chain.server_key),
                          "--x509cafile", str(chain.root_pem), "--require-client-cert", "--verify-client-cert", cwd=tmp_path)
    peers.append(server)
    r = run_client(server.port, "--identity", "client", "--send", "hi", tls=chain.client_config())
    assert r.exit_code == 0, r.out + r.err + server.log
    assert connections(r.out)[0]["reply"] == "hi"


def test_client_chain_openssl_server_trusting_only_the_root(peers, run_client, chain: ChainPki, tmp_path: Path) -> None:
    server = OpensslServer(LeafFiles(chain.server_with_key, chain.server), "-Verify", "2", "-verify_return_error",
                           "-CAfile", str(chain.root_pem), "-rev", cwd=tmp_path)
    peers.append(server)
    r = run_client(server.port, "--identity", "client", "--send", "hi", tls=chain.client_config())
    assert r.exit_code == 0, r.out + r.err + server.log
    assert connections(r.out)[0]["reply"] == "ih"  # s_server -rev reverses each line
    assert "chain-client" in server.log


# --- item 3: RSA-PSS identities ------------------------------------------------------------


def test_rsa_pss_identity_from_cryptography_objects_is_refused_in_one_line(pss: dict[str, Path]) -> None:
    """cryptography reads an RSA-PSS key as a plain RSA key, which OpenSSL cannot pair with
    the certificate: refused when the identity is made, never at each handshake."""
    cert = x509.load_pem_x509_certificate(pss["server.pem"].read_bytes())
    key = serialization.load_pem_private_key(pss["server.key"].read_bytes(), None)
    with pytest.raises(ValueError) as refused:
        PrivateIdentity("pss", [cert], key)  # type: ignore[arg-type]
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("identity 'pss': OpenSSL cannot use this certificate with this key"), message
    assert "PrivateIdentity.from_pem or from_files" in message


@pytest.fixture
def pss_server(host: Host, guest_path, pss: dict[str, Path]) -> Iterator[Callable[[int], GuestServer]]:
    """pss_server(count) -> the tls_server guest presenting an RSA-PSS identity (alpn mode)."""
    started: list[GuestServer] = []

    def start(count: int) -> GuestServer:
        identity = PrivateIdentity.from_files("pss", pss["server.pem"], pss["server.key"])
        config = TlsConfig(trust=[pss["ca.pem"]], use_system_roots=False, identities=[identity])
        server = GuestServer(host, host.load(guest_path("tls_server")), free_port(), "--mode", "alpn", "--count", str(count), tls=config)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(timeout=2.0)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_rsa_pss_server_identity_with_openssl_s_client(pss_server, pss: dict[str, Path], version: str) -> None:
    server = pss_server(1)
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername", "localhost", "-CAfile", str(pss["ca.pem"]),
           "-verify_return_error", "-ign_eof", f"-tls1_{version[-1]}"]
    r = subprocess.run(cmd, input="", capture_output=True, text=True, timeout=TIMEOUT)
    assert "Verify return code: 0 (ok)" in r.stdout, r.stdout + r.stderr + server.out
    assert "subject=CN = localhost" in r.stdout and "alpn=-" in r.stdout  # the certificate, then the guest's answer
    facts = connection_line(server)
    assert (facts["identity"], facts["version"]) == ("pss", f"0x030{int(version[-1]) + 1}"), facts


@needs_gnutls
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_rsa_pss_server_identity_with_gnutls_cli(pss_server, pss: dict[str, Path], version: str) -> None:
    server = pss_server(1)
    cmd = ["gnutls-cli", "--x509cafile", str(pss["ca.pem"]), "-p", str(server.port), "--sni-hostname", "localhost",
           "--verify-hostname", "localhost", "--priority", f"NORMAL:-VERS-ALL:+VERS-TLS{version}", "127.0.0.1"]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
    assert "Handshake was completed" in r.stdout + r.stderr, r.stdout + r.stderr + server.out
    assert "alpn=-" in r.stdout, r.stdout + r.stderr
    assert connection_line(server)["identity"] == "pss"


def pss_client_config(pss: dict[str, Path]) -> TlsConfig:
    identity = PrivateIdentity.from_files("pss-client", pss["client.pem"], pss["client.key"])
    return TlsConfig(trust=[pss["ca.pem"]], use_system_roots=False, identities=[identity])


def test_rsa_pss_client_identity_with_openssl_s_server(peers, run_client, pss: dict[str, Path], tmp_path: Path) -> None:
    both = tmp_path / "pss-server-with-key.pem"
    both.write_bytes(pss["server.key"].read_bytes() + pss["server.pem"].read_bytes())
    server = OpensslServer(LeafFiles(both, None), "-Verify", "1", "-verify_return_error", "-CAfile", str(pss["ca.pem"]), "-rev",
                           cwd=tmp_path)  # type: ignore[arg-type]
    peers.append(server)
    r = run_client(server.port, "--identity", "pss-client", "--send", "hi", tls=pss_client_config(pss))
    assert r.exit_code == 0, r.out + r.err + server.log
    assert connections(r.out)[0]["reply"] == "ih"
    assert "CN = pss-client" in server.log, server.log  # s_server's verify callback saw the certificate


@needs_gnutls
def test_rsa_pss_client_identity_with_gnutls_serv(peers, run_client, pss: dict[str, Path], tmp_path: Path) -> None:
    server = GnutlsServer("--x509certfile", str(pss["server.pem"]), "--x509keyfile", str(pss["server.key"]),
                          "--x509cafile", str(pss["ca.pem"]), "--require-client-cert", "--verify-client-cert", cwd=tmp_path)
    peers.append(server)
    r = run_client(server.port, "--identity", "pss-client", "--send", "hi", tls=pss_client_config(pss))
    assert r.exit_code == 0, r.out + r.err + server.log
    assert connections(r.out)[0]["reply"] == "hi"


# --- item 14: client-side session resumption ----------------------------------------------


def start_resuming_server(kind: str, chain: ChainPki, gotls: GoTls, peers: list[Any], tmp_path: Path) -> tuple[int, Callable[[int], list[bool]] | None]:
    """A server of ``kind`` that issues session tickets and echoes lines (s_server reverses
    them), and a function giving the first n connections' resumption as the server saw it
    (None where the server does not say)."""
    if kind == "go":
        go = gotls.server("-cert", str(chain.server_pem), "-key", str(chain.server_key))
        return go.port, lambda n: [c["resumed"] for c in go.connections(n)]
    if kind == "gnutls":
        if shutil.which("gnutls-serv") is None:
            pytest.skip("GnuTLS (gnutls-bin) is not installed")
        gnutls = GnutlsServer("--x509certfile", str(chain.server_pem), "--x509keyfile", str(chain.server_key),
                              "--disable-client-cert", cwd=tmp_path)
        peers.append(gnutls)
        return gnutls.port, None
    openssl = OpensslServer(LeafFiles(chain.server_with_key, chain.server), "-rev", cwd=tmp_path)
    peers.append(openssl)
    return openssl.port, None


@pytest.mark.parametrize("kind", ["go", "gnutls", "openssl"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_guest_client_resumes_its_sessions(gotls: GoTls, peers, run_client, chain: ChainPki, tmp_path: Path, kind: str, version: str) -> None:
    port, server_saw = start_resuming_server(kind, chain, gotls, peers, tmp_path)
    r = run_client(port, "--tls", version, "--connections", "3", "--send", "hi", tls=chain.client_config())
    assert r.exit_code == 0, r.out + r.err
    seen = connections(r.out)
    assert [c["version"] for c in seen] == [f"0x030{int(version[-1]) + 1}"] * 3
    # The second connection resumes the first's session; the third resumes too (TLS 1.3:
    # with a fresh ticket, each being used once).
    assert [c["resumed"] for c in seen] == ["false", "true", "true"], r.out
    assert [c["reply"] for c in seen] == ["ih" if kind == "openssl" else "hi"] * 3
    if server_saw is not None:
        assert server_saw(3) == [False, True, True]
    if kind == "gnutls":
        assert peers[-1].resumed == 2, peers[-1].log


def test_no_resumption_turns_client_tickets_off(gotls: GoTls, run_client, chain: ChainPki) -> None:
    server = gotls.server("-cert", str(chain.server_pem), "-key", str(chain.server_key))
    r = run_client(server.port, "--connections", "2", "--send", "hi", tls=chain.client_config(resumption=False))
    assert [c["resumed"] for c in connections(r.out)] == ["false", "false"], r.out
    assert [c["resumed"] for c in server.connections(2)] == [False, False]


def test_two_guests_never_share_sessions(gotls: GoTls, run_client, chain: ChainPki) -> None:
    """Both guests run with the same TlsConfig object on the same host: the sessions are the
    guest instance's own."""
    server = gotls.server("-cert", str(chain.server_pem), "-key", str(chain.server_key))
    config = chain.client_config()
    first = run_client(server.port, "--connections", "2", "--send", "hi", tls=config)
    second = run_client(server.port, "--send", "hi", tls=config)
    assert [c["resumed"] for c in connections(first.out)] == ["false", "true"], first.out
    assert [c["resumed"] for c in connections(second.out)] == ["false"], second.out
    assert [c["resumed"] for c in server.connections(3)] == [False, True, False]


def test_upstream_wasi_tls_client_resumes(gotls: GoTls, run_guest, chain: ChainPki) -> None:
    """wasi:tls/types has no way to ask: the embedder's on_handshake hook says so."""
    server = gotls.server("-cert", str(chain.server_pem), "-key", str(chain.server_key))
    seen: list[HandshakeInfo] = []
    config = TlsConfig(trust=[chain.root_pem], use_system_roots=False, on_handshake=seen.append)
    r = run_guest("tls_probe", "resume", "127.0.0.1", str(server.port), "3", "localhost",
                  network=NetworkPolicy().allow_connect("127.0.0.1:*"), tls=config)
    assert r.exit_code == 0, r.out + r.err
    assert [info.resumed for info in seen] == [False, True, True]
    assert [c["resumed"] for c in server.connections(3)] == [False, True, True]


def test_cli_resumes_by_default_says_so_with_v_and_no_resumption_turns_it_off(gotls: GoTls, guest_path, chain: ChainPki) -> None:
    server = gotls.server("-cert", str(chain.server_pem), "-key", str(chain.server_key))

    def run(*flags: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "wasi_tls_host.cli", "-v", "run", "--allow-connect", "127.0.0.1:*", "--trust", str(chain.root_pem),
               "--no-system-trust", *flags, str(guest_path("tls_client")), "127.0.0.1", str(server.port), "--server-name", "localhost",
               "--send", "hi", "--connections", "2"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    default = run()
    assert [c["resumed"] for c in connections(default.stdout)] == ["false", "true"], default.stdout + default.stderr
    logged = [line for line in default.stderr.splitlines() if "TLS client localhost:" in line]
    assert [line.endswith("full handshake") for line in logged] == [True, False], default.stderr
    assert logged[1].endswith("resumed a session")
    off = run("--no-resumption")
    assert [c["resumed"] for c in connections(off.stdout)] == ["false", "false"], off.stdout + off.stderr
    assert [line.endswith("full handshake") for line in off.stderr.splitlines() if "TLS client localhost:" in line] == [True, True]
    assert [c["resumed"] for c in server.connections(4)] == [False, True, False, False]


# --- the sessions kept: lifetime, single use, bounds (real sessions from real handshakes) ---


def blocking_with_timeouts(sock: socket.socket) -> None:
    """pyOpenSSL needs blocking sockets (a Python timeout makes them non-blocking): the
    kernel's own send and receive timeouts bound every wait instead."""
    sock.settimeout(None)
    bound = int(TIMEOUT).to_bytes(8, sys.byteorder) + (0).to_bytes(8, sys.byteorder)  # struct timeval
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)


class TicketServer:
    """An OpenSSL server (pyOpenSSL, blocking, on a thread) whose sessions and tickets live
    ``lifetime`` seconds; it echoes one line per connection."""

    def __init__(self, chain: ChainPki, lifetime: int) -> None:
        self.ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.ctx.use_certificate_chain_file(str(chain.server_with_key))
        self.ctx.use_privatekey_file(str(chain.server_with_key))
        self.ctx.set_timeout(lifetime)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.5)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.stopping = False
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by stop()
                return
            with raw:
                blocking_with_timeouts(raw)
                conn = SSL.Connection(self.ctx, raw)
                conn.set_accept_state()
                try:
                    conn.sendall(conn.recv(100))
                    conn.shutdown()
                except SSL.Error:
                    pass

    def stop(self) -> None:
        self.stopping = True
        self.listener.close()
        self.thread.join(TIMEOUT)


def real_session(port: int, chain: ChainPki, version: int) -> SSL.Session:
    """A session a pyOpenSSL client got from the server at ``port`` (after reading, so that a
    TLS 1.3 ticket has arrived)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(version)
    ctx.set_max_proto_version(version)
    ctx.load_verify_locations(str(chain.root_pem))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        blocking_with_timeouts(raw)
        conn = SSL.Connection(ctx, raw)
        conn.set_connect_state()
        conn.set_tlsext_host_name(b"localhost")
        conn.sendall(b"x\n")
        assert conn.recv(100) == b"x\n"
        session = conn.get_session()
        conn.shutdown()
    assert session is not None
    return session


@pytest.fixture(scope="module")
def ticket_server(chain: ChainPki) -> Iterator[Callable[[int], TicketServer]]:
    started: list[TicketServer] = []

    def start(lifetime: int) -> TicketServer:
        server = TicketServer(chain, lifetime)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def key(name: str = "localhost") -> SessionKey:
    return SessionKey(name, 443, (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION), None)


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION])
def test_a_session_is_forgotten_at_the_end_of_its_lifetime(ticket_server, chain: ChainPki, version: int) -> None:
    server = ticket_server(1)
    session = real_session(server.port, chain, version)
    assert session_lifetime(session) == 1  # the ticket's lifetime hint (OpenSSL: the session timeout)
    sessions = ClientSessions()
    sessions.keep(key(), session, single_use=version == SSL.TLS1_3_VERSION)
    assert len(sessions) == 1
    time.sleep(1.05)
    assert sessions.take(key()) is None
    assert len(sessions) == 0


def test_tls13_tickets_are_used_once_tls12_sessions_again(ticket_server, chain: ChainPki) -> None:
    server = ticket_server(3600)
    sessions = ClientSessions()
    tls13 = [real_session(server.port, chain, SSL.TLS1_3_VERSION) for _ in range(2)]
    for session in tls13:
        sessions.keep(key("a"), session, single_use=True)
    assert sessions.take(key("a")) is tls13[1]  # the newest first
    assert sessions.take(key("a")) is tls13[0]
    assert sessions.take(key("a")) is None
    tls12 = real_session(server.port, chain, SSL.TLS1_2_VERSION)
    sessions.keep(key("b"), tls12, single_use=False)
    assert sessions.take(key("b")) is tls12
    assert sessions.take(key("b")) is tls12


def test_sessions_are_bounded_least_recently_used_servers_first(ticket_server, chain: ChainPki) -> None:
    server = ticket_server(3600)
    sessions = ClientSessions(max_servers=2, per_server=2)
    tls12 = real_session(server.port, chain, SSL.TLS1_2_VERSION)
    for name in ("a", "b"):
        sessions.keep(key(name), tls12, single_use=False)
    assert sessions.take(key("a")) is tls12  # "a" is now the most recently used
    sessions.keep(key("c"), tls12, single_use=False)
    assert sessions.take(key("b")) is None
    assert sessions.take(key("a")) is tls12 and sessions.take(key("c")) is tls12
    for _ in range(3):
        sessions.keep(key("d"), real_session(server.port, chain, SSL.TLS1_3_VERSION), single_use=True)
    assert len(sessions) == 1 + 2  # "c" (one) and "d" (two of three); "a" went
