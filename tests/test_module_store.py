"""Modules by hash: sha256:<hex> resolved from a directory store or an HTTPS store (a local
CPython ssl server with a trustme CA), verified before anything else, kept locally."""

from __future__ import annotations

import functools
import http.server
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
import trustme

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.provenance import DigestMismatch, digest
from wasi_tls_host.provenance import store

CLI = [sys.executable, "-m", "wasi_tls_host.cli"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_store(tmp_path) -> Iterator[tuple[str, Path, trustme.CA]]:
    """(base URL, served directory, CA) of an HTTPS server on 127.0.0.1."""
    ca = trustme.CA()
    served = tmp_path / "served"
    served.mkdir()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/modules", served / "modules", ca
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def test_directory_store_add_get_and_refuse_other_bytes(tmp_path, guest_path) -> None:
    wasm = guest_path("exit_code").read_bytes()
    d = store.DirectoryStore(tmp_path / "s")
    name = d.add(wasm)
    assert name == digest(wasm) and d.path(name) == tmp_path / "s" / "sha256" / (name[7:] + ".wasm")
    assert d.get(name) == wasm
    other = guest_path("calc").read_bytes()
    d.path(name).write_bytes(other)
    with pytest.raises(DigestMismatch) as refused:
        d.get(name)
    assert digest(other) in str(refused.value) and name in str(refused.value)


def test_https_store_fetch_verify_and_keep(https_store, tmp_path, guest_path) -> None:
    base, served, ca = https_store
    wasm = guest_path("exit_code").read_bytes()
    name = store.DirectoryStore(served).add(wasm)
    local = store.DirectoryStore(tmp_path / "local")
    seen: list[tuple[int, int | None]] = []
    remote = store.HttpsStore(base, _client_context(ca))
    assert store.resolve(name, [remote], local, progress=lambda n, t: seen.append((n, t))) == wasm
    assert seen[-1] == (len(wasm), len(wasm))
    assert local.get(name) == wasm  # kept locally
    (served / store.relative_path(name)).unlink()
    assert store.resolve(name, [remote], local) == wasm  # from the local store now
    result = Host(cache_dir=tmp_path / "cache").run(store.resolve(name, [], local), WasiConfig(args=["x", "4"]))
    assert result.exit_code == 4


def test_https_store_refusals(https_store, tmp_path, guest_path) -> None:
    base, served, ca = https_store
    wasm, other = guest_path("exit_code").read_bytes(), guest_path("calc").read_bytes()
    name = digest(wasm)
    # The store answers with other bytes under the name: refused, nothing kept.
    target = served / store.relative_path(name)
    target.parent.mkdir(parents=True)
    target.write_bytes(other)
    local = store.DirectoryStore(tmp_path / "local")
    with pytest.raises(DigestMismatch) as refused:
        store.resolve(name, [store.HttpsStore(base, _client_context(ca))], local)
    assert digest(other) in str(refused.value) and name in str(refused.value)
    assert local.get(name) is None
    # Over the size limit.
    with pytest.raises(store.StoreError, match="over the limit"):
        store.HttpsStore(base, _client_context(ca), max_bytes=100).get(name)
    # A server the host does not trust (default context: system roots only).
    with pytest.raises(store.StoreError, match="not trusted"):
        store.HttpsStore(base).get(name)
    # Not there.
    with pytest.raises(store.StoreError, match="in none of the stores"):
        store.resolve("sha256:" + "0" * 64, [store.HttpsStore(base, _client_context(ca))], local)
    with pytest.raises(ValueError, match="https://"):
        store.HttpsStore(base.replace("https", "http"))


def test_https_fetch_has_an_overall_deadline(https_store, guest_path, monkeypatch) -> None:
    """Each read is bounded and so is the whole transfer: a store that takes longer (here:
    any time at all) is given up with a message saying so."""
    base, served, ca = https_store
    wasm = guest_path("exit_code").read_bytes()
    target = served / store.relative_path(digest(wasm))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(wasm)
    monkeypatch.setattr(store, "FETCH_SECONDS", 0.0)
    with pytest.raises(store.StoreError, match="not received within 0 s"):
        store.HttpsStore(base, _client_context(ca)).get(digest(wasm))


def test_cli_run_by_hash_from_https_and_store_add(https_store, tmp_path, guest_path) -> None:
    base, served, ca = https_store
    guest = guest_path("exit_code")
    env = {**os.environ, "WASI_TLS_HOST_MODULE_STORE": str(tmp_path / "local"), "WASI_TLS_HOST_CACHE": str(tmp_path / "cache")}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env={**env, **extra})

    r = cli("store", "add", str(guest), "--module-store", str(served))
    assert r.returncode == 0 and r.stdout.strip() == digest(guest.read_bytes())
    name = r.stdout.strip()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # The host's own trust settings: without the CA the fetch is refused; with it, it runs.
    r = cli("run", "--module-store", base, name, "6")
    assert r.returncode == 2 and "not trusted" in r.stderr, r.stderr
    r = cli("run", "--module-store", base, name, "6", SSL_CERT_FILE=str(ca_file))
    assert r.returncode == 6, r.stderr
    assert (tmp_path / "local" / store.relative_path(name)).read_bytes() == guest.read_bytes()
    r = cli("run", "sha256:" + "1" * 64)
    assert r.returncode == 2 and "in none of the stores" in r.stderr


@pytest.mark.parametrize("size", ["0", "-5", "lots"])
def test_cli_module_max_size_must_be_a_positive_count(size: str) -> None:
    r = subprocess.run([*CLI, "run", "--module-max-size", size, "sha256:" + "0" * 64], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "--module-max-size" in r.stderr and "Traceback" not in r.stderr, r.stderr
