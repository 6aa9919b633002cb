"""Guest TLS clients and servers against GnuTLS, Go's crypto/tls and OpenSSL (issue 19):
RSA-PSS identities both ways, a client identity's intermediates.

Peers: ``gnutls-serv``/``gnutls-cli`` (GnuTLS), the Go TLS peer (``tests/peers/gotls``, the
``gotls`` fixture), ``openssl s_server``/``s_client``. Guests: ``tls_client``, ``tls_server``
(this project's API). Tests needing a peer that is not installed are skipped, saying which.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import free_port
from gotls_peer import GoTls
from tls_peers import GnutlsServer, LeafFiles, OpensslServer, rsa_pss_files
from tls_server_util import GuestServer, connection_line
from wasi_tls_host import Host
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.tls.identities import PrivateIdentity
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


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[list[Any]]:
    """GnuTLS and OpenSSL servers a test started; all stopped afterwards."""
    started: list[Any] = []
    yield started
    for server in started:
        server.stop()


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

