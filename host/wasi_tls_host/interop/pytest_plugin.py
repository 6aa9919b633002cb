"""A pytest plugin for interop suites of your own (registered as the ``pytest11`` entry point
``wasi_tls_host``; it needs pytest, and trustme for its certificates):

    async def test_alpn(tls_peer, run_guest_async):
        server = tls_peer.server("gnutls", version="1.3", alpn=("http/1.1",))
        result = await run_guest_async("tls_client.wasm", "127.0.0.1", str(server.port),
                                       "--server-name", "localhost", "--alpn", "h2,http/1.1")
        assert "alpn=http/1.1" in result.stdout

Fixtures (function scope unless said):

* ``wasi_tls_pki`` (session): a trustme CA (``ca_pem``) and ``server()``/``client()``
  certificates as files (``Credentials``: cert, key, bundle).
* ``wasi_tls_host`` (session): a ``Host`` (runtime from ``--wasi-tls-host-runtime``).
* ``run_guest`` / ``run_guest_async``: run a component (a path, or the name of one of this
  project's example guests) to its end, trusting the CA and allowed to connect to
  127.0.0.1; returns a ``GuestResult`` (exit_code, stdout, stderr, trap, handshakes).
* ``serve_guest``: start a server component on a free port (its first argument), wait until
  it prints "listening", stop it when the test ends; preopened identity ``server``.
* ``tls_peer``: ``tls_peer.server(NAME, **ServerSpec fields)`` starts a peer server;
  ``tls_peer.client(NAME, port, **ClientSpec fields)`` runs a peer client and returns its
  ``Observation``; peers stop when the test ends, and a peer not installed skips the test.
* ``openssl_peer``, ``gnutls_peer``, ``go_peer``, ``python_peer``, ``curl_peer``, ``java_peer``:
  the same factory bound to one implementation (``openssl_peer.server(...)``).

The names are chosen not to clash with a suite's own ``host``/``runtime`` fixtures; a
conftest.py fixture of the same name wins over the plugin's, as pytest always does.
"""

from __future__ import annotations

import asyncio
import datetime
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import pytest

from .. import Host, NetworkPolicy, PrivateIdentity, TlsConfig, WasiConfig
from .. import guests as examples
from ..host import RUNTIMES, RunResult
from ..runtime.limits import GuestLimits
from ..tls.engine import HandshakeInfo
from .hosts import GuestServerRun
from .peers import Peer, PeerServer, PeerUnavailable, RunContext, all_peers, free_port
from .peers.gotls import peer_cache_dir
from .pki import SERVER_NAME, Credentials
from .processes import Processes
from .specs import ClientSpec, Observation, ServerSpec

DEFAULT_TIMEOUT = 20.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wasi-tls-host", "wasi-tls-host interop fixtures")
    group.addoption("--wasi-tls-host-runtime", choices=RUNTIMES, default="core",
                    help="the runtime backend of the wasi_tls_host fixture's Host (default: core)")
    group.addoption("--wasi-tls-host-timeout", type=float, default=DEFAULT_TIMEOUT,
                    help="seconds a guest or a peer may take in the wasi-tls-host fixtures (default: 20)")


class TrustmePki:
    """The run's certificates from trustme: a CA and leaves as files (ECDSA P-256 or RSA)."""

    def __init__(self, directory: Path) -> None:
        import trustme

        self._trustme = trustme
        self.dir = directory
        self.ca = trustme.CA()
        self._unknown = trustme.CA(organization_name="an unknown CA")
        self.ca_pem = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        self._made: dict[tuple[object, ...], Credentials] = {}

    def _key_type(self, kind: str) -> Any:
        kinds = {"ecdsa-p256": self._trustme.KeyType.ECDSA, "rsa": self._trustme.KeyType.RSA}
        if kind not in kinds:
            raise ValueError(f"trustme makes ECDSA P-256 and RSA keys, not {kind!r}")
        return kinds[kind]

    def server(self, kind: str = "ecdsa-p256", *, names: tuple[str, ...] = (SERVER_NAME, "127.0.0.1"), expired: bool = False,
               unknown_ca: bool = False) -> Credentials:
        return self._issue(("server", kind, names, expired, unknown_ca), kind, names, names[0], expired, unknown_ca)

    def client(self, kind: str = "ecdsa-p256", *, unknown_ca: bool = False) -> Credentials:
        return self._issue(("client", kind, unknown_ca), kind, ("client@example.org",), "interop-client", False, unknown_ca)

    def _issue(self, memo: tuple[object, ...], kind: str, names: tuple[str, ...], common_name: str, expired: bool,
               unknown_ca: bool) -> Credentials:
        if memo in self._made:
            return self._made[memo]
        ca = self._unknown if unknown_ca else self.ca
        window: dict[str, Any] = {}
        if expired:
            now = datetime.datetime.now(datetime.timezone.utc)
            window = {"not_before": now - datetime.timedelta(days=30), "not_after": now - datetime.timedelta(days=1)}
        leaf = ca.issue_cert(*names, common_name=common_name, key_type=self._key_type(kind), **window)
        stem = f"{len(self._made):03d}-{common_name}"
        cert, key, bundle = self.dir / f"{stem}.pem", self.dir / f"{stem}.key", self.dir / f"{stem}-bundle.pem"
        cert.write_bytes(b"".join(c.bytes() for c in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        bundle.write_bytes(leaf.private_key_and_cert_chain_pem.bytes())
        made = Credentials(f"{kind}-{stem}", cert, key, bundle, common_name)
        self._made[memo] = made
        return made


@dataclass
class GuestResult:
    exit_code: int
    stdout: str
    stderr: str
    trap: str | None
    handshakes: list[HandshakeInfo] = field(default_factory=list)


def _component(source: str | Path) -> Path:
    path = Path(source)
    if path.suffix == ".wasm" or path.exists():
        return path
    return examples.build(str(source))  # one of this project's example guests, by name


class GuestRunner:
    """``run_guest(component, *args, tls=None, network=None, **WasiConfig fields)``."""

    def __init__(self, host: Host, pki: TrustmePki, timeout: float) -> None:
        self.host = host
        self.pki = pki
        self.timeout = timeout

    def config(self, source: str | Path, args: tuple[str, ...], tls: TlsConfig | None, network: NetworkPolicy | None,
               handshakes: list[HandshakeInfo], out: bytearray, err: bytearray, fields: dict[str, Any]) -> WasiConfig:
        if tls is None:
            tls = TlsConfig(trust=[self.pki.ca_pem], use_system_roots=False, on_handshake=handshakes.append,
                            identities=[PrivateIdentity.from_files("client", self.pki.client().cert, self.pki.client().key)])
        fields.setdefault("limits", GuestLimits(timeout=self.timeout))
        return WasiConfig(args=[Path(str(source)).stem, *args], stdout=out, stderr=err, tls=tls,
                          network=network or NetworkPolicy().allow_connect("127.0.0.1:*"), **fields)

    def __call__(self, source: str | Path, *args: str, tls: TlsConfig | None = None, network: NetworkPolicy | None = None,
                 **fields: Any) -> GuestResult:
        handshakes: list[HandshakeInfo] = []
        out, err = bytearray(), bytearray()
        config = self.config(source, args, tls, network, handshakes, out, err, fields)
        return self._result(self.host.run(_component(source), config), out, err, handshakes)

    async def run_async(self, source: str | Path, *args: str, tls: TlsConfig | None = None, network: NetworkPolicy | None = None,
                        **fields: Any) -> GuestResult:
        handshakes: list[HandshakeInfo] = []
        out, err = bytearray(), bytearray()
        config = self.config(source, args, tls, network, handshakes, out, err, fields)
        component = await asyncio.to_thread(_component, source)
        return self._result(await self.host.run_async(component, config), out, err, handshakes)

    @staticmethod
    def _result(result: RunResult, out: bytearray, err: bytearray, handshakes: list[HandshakeInfo]) -> GuestResult:
        return GuestResult(result.exit_code, out.decode(errors="replace"), err.decode(errors="replace"), result.trap_cause, handshakes)


class Peers:
    """The ``tls_peer`` factory (or one implementation's, when ``only`` names it)."""

    def __init__(self, ctx: RunContext, only: str | None = None) -> None:
        self.ctx = ctx
        self.only = only
        self._by_name = {p.name: p for p in all_peers()}
        self._ready: set[str] = set()
        self._servers: list[PeerServer] = []

    def peer(self, name: str | None) -> Peer:
        name = name or self.only
        if name not in self._by_name:
            raise ValueError(f"unknown peer {name!r} (known: {', '.join(self._by_name)})")
        peer = self._by_name[name]
        if name not in self._ready:
            reason = peer.missing()
            if reason is None:
                try:
                    peer.prepare(self.ctx)
                except PeerUnavailable as e:
                    reason = str(e)
            if reason is not None:
                pytest.skip(f"{name}: {reason}")
            self._ready.add(name)
        return peer

    def server(self, name: str | None = None, *, version: str = "1.3", cert: Credentials | None = None, **spec: Any) -> PeerServer:
        """Start ``name``'s server (ServerSpec fields as keywords); it stops with the test."""
        peer = self.peer(name)
        if not peer.server_tool:
            raise ValueError(f"{peer.name} has no server")
        server = peer.start_server(ServerSpec(version=version, cert=cert or self.ctx.pki.server(), **spec), self.ctx)  # type: ignore[arg-type]
        self._servers.append(server)
        return server

    def client(self, name: str | None = None, port: int = 0, *, version: str = "1.3", server_name: str = SERVER_NAME,
               **spec: Any) -> Observation:
        """Run ``name``'s client against 127.0.0.1:``port`` (ClientSpec fields as keywords)."""
        peer = self.peer(name)
        if not peer.client_tool:
            raise ValueError(f"{peer.name} has no client")
        known = {f.name for f in fields(ClientSpec)}
        unknown = set(spec) - known
        if unknown:
            raise TypeError(f"unknown client options {sorted(unknown)} (known: {sorted(known)})")
        return peer.run_client(ClientSpec(version=version, server_name=server_name, **spec), port, self.ctx)  # type: ignore[arg-type]

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()


@pytest.fixture(scope="session")
def wasi_tls_pki(tmp_path_factory: pytest.TempPathFactory) -> TrustmePki:
    return TrustmePki(tmp_path_factory.mktemp("wasi-tls-pki"))


@pytest.fixture(scope="session")
def wasi_tls_host(pytestconfig: pytest.Config) -> Iterator[Host]:
    host = Host(runtime=pytestconfig.getoption("--wasi-tls-host-runtime"))
    yield host
    host.close()


@pytest.fixture
def run_guest(wasi_tls_host: Host, wasi_tls_pki: TrustmePki, pytestconfig: pytest.Config) -> GuestRunner:
    return GuestRunner(wasi_tls_host, wasi_tls_pki, pytestconfig.getoption("--wasi-tls-host-timeout"))


@pytest.fixture
def run_guest_async(run_guest: GuestRunner) -> Any:
    return run_guest.run_async


@pytest.fixture
def serve_guest(wasi_tls_host: Host, wasi_tls_pki: TrustmePki, pytestconfig: pytest.Config) -> Iterator[Any]:
    """serve_guest(component, *args, tls=None, client_auth=False) -> GuestServerRun (``port``,
    ``output``); the port is the guest's first argument."""
    timeout = pytestconfig.getoption("--wasi-tls-host-timeout")
    started: list[GuestServerRun] = []

    def start(source: str | Path, *args: str, tls: TlsConfig | None = None, client_auth: bool = False) -> GuestServerRun:
        port = free_port()
        if tls is None:
            server = wasi_tls_pki.server()
            tls = TlsConfig(trust=[wasi_tls_pki.ca_pem], use_system_roots=False,
                            identities=[PrivateIdentity.from_files("server", server.cert, server.key)],
                            client_ca=[wasi_tls_pki.ca_pem] if client_auth else [])
        config = WasiConfig(args=[Path(str(source)).stem, str(port), *args], tls=tls,
                            network=NetworkPolicy().allow_listen(f"127.0.0.1:{port}"), limits=GuestLimits(timeout=timeout * 3))
        run = GuestServerRun(wasi_tls_host, _component(source), config, port)
        started.append(run)
        problem = run.wait_listening()
        if problem:
            raise AssertionError(f"{problem}; it printed: {run.output}")
        return run

    yield start
    for run in started:
        run.stop()


@pytest.fixture
def _wasi_tls_context(wasi_tls_pki: TrustmePki, pytestconfig: pytest.Config) -> Iterator[RunContext]:
    with tempfile.TemporaryDirectory(prefix="wasi-tls-peers-") as scratch:
        processes = Processes(Path(scratch))
        try:
            yield RunContext(Path(scratch), wasi_tls_pki, processes, pytestconfig.getoption("--wasi-tls-host-timeout"),
                             peer_cache_dir())
        finally:
            processes.close()


def _peers(ctx: RunContext, only: str | None) -> Iterator[Peers]:
    peers = Peers(ctx, only)
    try:
        yield peers
    finally:
        peers.stop()


@pytest.fixture
def tls_peer(_wasi_tls_context: RunContext) -> Iterator[Peers]:
    yield from _peers(_wasi_tls_context, None)


@pytest.fixture
def openssl_peer(_wasi_tls_context: RunContext) -> Iterator[Peers]:
    yield from _peers(_wasi_tls_context, "openssl")


@pytest.fixture
def gnutls_peer(_wasi_tls_context: RunContext) -> Iterator[Peers]:
    yield from _peers(_wasi_tls_context, "gnutls")


@pytest.fixture
def go_peer(_wasi_tls_context: RunContext) -> Iterator[Peers]:
    yield from _peers(_wasi_tls_context, "go")


@pytest.fixture
def python_peer(_wasi_tls_context: RunContext) -> Iterator[Peers]:
    yield from _peers(_wasi_tls_context, "python")


@pytest.fixture
def curl_peer(_wasi_tls_context: RunContext) -> Iterator[Peers]:
    yield from _peers(_wasi_tls_context, "curl")


@pytest.fixture
def java_peer(_wasi_tls_context: RunContext) -> Iterator[Peers]:
    yield from _peers(_wasi_tls_context, "java")
