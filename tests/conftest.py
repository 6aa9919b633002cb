"""Shared fixtures: one Host per test session, guests built on demand from guest_examples/."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

from gotls_peer import GoTls, GoUnavailable, build_gotls
from sockets_util import ServerThread
from tls_peers import LeafFiles, OpensslServer
from wasi_tls_host import Host, WasiConfig
from wasi_tls_host import guests
from wasi_tls_host.host import RUNTIMES

if TYPE_CHECKING:
    from tls_server_util import ServerPki

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))  # devtools/ (not installed with the package)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runtime", action="append", choices=RUNTIMES, default=None,
        help="run the guest tests on this runtime backend only (repeatable; default: every backend)",
    )


_prebuild: subprocess.Popen[bytes] | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    # A whole-suite run (no paths given) builds and compiles the suite's componentize-py
    # guests from the start in one more process (devtools/prebuild.py), so that on a cold
    # cache the test workers seldom wait for a build or compile the other worker is doing.
    global _prebuild
    config = session.config
    if hasattr(config, "workerinput") or config.args_source is not pytest.Config.ArgsSource.TESTPATHS:
        return
    _prebuild = subprocess.Popen([sys.executable, "-m", "devtools.prebuild"], cwd=REPO, start_new_session=True,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pytest_sessionfinish(session: pytest.Session) -> None:
    global _prebuild
    if _prebuild is not None:
        # Only still running when the tests ended first (e.g. -x): it and its builds stop.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_prebuild.pid, signal.SIGTERM)
        _prebuild.wait(timeout=60)
        _prebuild = None


# Modules that take minutes (on a cold cache, or anyway), run first: --dist=loadfile hands
# out whole modules in collection order, and one of these started last would leave the other
# worker idle while it finishes alone.
LONG_MODULES = ("test_tlsfuzzer.py", "test_runtime_differential.py", "test_wheel.py", "test_interop.py",
                "test_wasi_testsuite.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_MODULES)))  # stable: the rest keep their order


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test that uses a Host (through `host`, `run_guest` or `runtime`) runs once per
    # backend: the component backend is the reference the core backend must match.
    if "runtime" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("runtime") or list(RUNTIMES)
        metafunc.parametrize("runtime", chosen, scope="session")


@pytest.fixture(scope="session")
def host(runtime: str) -> Host:
    return Host(runtime=runtime)


@pytest.fixture(autouse=True)
def close_leftover_servers() -> Iterator[None]:
    """A CPython server a failed test left open is closed with the test, not by the GC later."""
    yield
    ServerThread.close_leftovers()


@pytest.fixture(scope="session")
def guest_path():
    """guest_path("name") -> Path of the built component (built once, cached on disk)."""
    return lambda name: guests.build(name)


@dataclass
class GuestRun:
    exit_code: int
    stdout: bytes
    stderr: bytes
    trap: str | None

    @property
    def out(self) -> str:
        return self.stdout.decode()

    @property
    def err(self) -> str:
        return self.stderr.decode()


@pytest.fixture(scope="session")
def run_guest(host: Host, guest_path):
    """run_guest("name", "arg", ..., stdin=b"", env={}, config=None, **WasiConfig fields)."""

    def run(name: str, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None, **fields: Any) -> GuestRun:
        out, err = bytearray(), bytearray()
        config = WasiConfig(args=[name, *args], env=env or {}, stdin=stdin, stdout=out, stderr=err, **fields)
        result = host.run(guest_path(name), config)
        return GuestRun(result.exit_code, bytes(out), bytes(err), result.trap)

    return run


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def without_gc() -> Iterator[None]:
    """Run a descriptor count with the garbage collector off: every socket must close when
    its last user is dropped, so a leak that only a GC pass would hide shows up."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def attestation_ca_files(directory: Path) -> tuple[Path, Path]:
    """A new attestation CA's certificate and key written as ``ca.pem`` and ``ca.key`` in
    ``directory`` (what ``--attestation-ca`` and ``AttestationCA.from_files`` read)."""
    import trustme

    ca = trustme.CA(organization_name="attestation CA")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    ca.private_key_pem.write_to_path(str(directory / "ca.key"))
    return directory / "ca.pem", directory / "ca.key"


def free_port(family: int = socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The whole test runs with the garbage collector off (see ``without_gc``)."""
    with without_gc():
        yield


@pytest.fixture
def s_server(pki: ServerPki, tmp_path: Path) -> Iterator[Callable[..., OpensslServer]]:
    """Starts ``openssl s_server ARGS...`` with leaf ``a`` of the test module's ``pki``; stops
    every server it started."""
    started: list[OpensslServer] = []

    def start(*args: str) -> OpensslServer:
        leaf = LeafFiles(pki.dir / "a-with-key.pem", pki.leaf_a)
        leaf.chain_pem.write_bytes(pki.leaf_a.private_key_and_cert_chain_pem.bytes())
        server = OpensslServer(leaf, *args, cwd=tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def gotls_binary() -> Path:
    """The Go TLS peer (wasi_tls_host/interop/peers/gotls), built once per source hash; skips without Go."""
    try:
        return build_gotls()
    except GoUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def gotls(gotls_binary: Path) -> Iterator[GoTls]:
    """gotls.server(ARGS...) starts the Go TLS peer as a server (listening once it returns);
    gotls.client(ARGS...) runs it as a client. Servers stop when the test ends."""
    peers = GoTls(gotls_binary)
    yield peers
    peers.stop()


@pytest.fixture
def peers() -> Iterator[list[Any]]:
    """Peer servers a test started (anything with ``stop()``: threads, processes); all
    stopped afterwards, whatever the test's outcome."""
    started: list[Any] = []
    yield started
    for server in started:
        server.stop()
