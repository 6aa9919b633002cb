"""Digests and pins: a component is named by its sha256, and a pinned host refuses any other
component before compiling it (API and command line)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.provenance import CodePolicy, DigestMismatch, digest, parse_digest

CLI = [sys.executable, "-m", "wasi_tls_host.cli"]


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_digest_is_sha256_of_the_bytes(guest_path) -> None:
    wasm = guest_path("exit_code").read_bytes()
    assert digest(wasm) == "sha256:" + hashlib.sha256(wasm).hexdigest()
    assert parse_digest(digest(wasm).upper().replace("SHA256", "sha256")) == digest(wasm)
    for bad in ("sha256:abc", "sha512:" + "0" * 64, "0" * 64, "sha256:" + "g" * 64):
        with pytest.raises(ValueError, match="64 hex digits"):
            parse_digest(bad)


def test_cli_digest_prints_the_name(guest_path) -> None:
    path = guest_path("exit_code")
    r = cli("digest", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == digest(path.read_bytes()) + "\n"


def test_pinned_host_runs_the_pinned_component_and_refuses_others_before_compiling(tmp_path, guest_path) -> None:
    wanted = guest_path("exit_code").read_bytes()
    other = guest_path("calc").read_bytes()
    host = Host(cache_dir=tmp_path, policy=CodePolicy(digests=["sha256:" + "0" * 64, digest(wanted)]))
    assert host.run(wanted, WasiConfig(args=["exit_code", "7"])).exit_code == 7
    assert host.evidence(host.load(wanted)).digest == digest(wanted)
    compiled = host.cache.compiled
    with pytest.raises(DigestMismatch) as refused:
        host.load(other)
    assert digest(other) in str(refused.value) and digest(wanted) in str(refused.value)
    assert refused.value.found == digest(other)
    assert host.cache.compiled == compiled  # refused before compiling
    assert not any(p.name.startswith(hashlib.sha256(other).hexdigest()) for p in tmp_path.iterdir())
    # A policy given to load() replaces the host's for that load.
    with pytest.raises(DigestMismatch):
        Host(cache_dir=tmp_path).load(other, policy=CodePolicy(digests=[digest(wanted)]))


def test_cli_require_digest_exit_status_and_one_line(guest_path) -> None:
    path = guest_path("exit_code")
    good = digest(path.read_bytes())
    wrong = "sha256:" + "ab" * 32
    r = cli("run", "--require-digest", wrong, "--require-digest", good, str(path), "5")
    assert r.returncode == 5, r.stderr
    r = cli("run", "--require-digest", wrong, str(path), "5")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and good in lines[0] and wrong in lines[0], r.stderr
    r = cli("run", "--require-digest", "sha256:nothex", str(path))
    assert r.returncode == 2 and "64 hex digits" in r.stderr
