"""Pre-compiled artifacts made elsewhere are loaded only when a trusted key vouches for them
(over the component's digest, wasmtime version, engine configuration, platform and the
artifact's own hash); anything else is compiled here."""

from __future__ import annotations

import logging
import subprocess
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.provenance import precompiled as pre
from wasi_tls_host.runtime.cache import WASMTIME_VERSION

VOUCHER = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes(range(50, 82)))


# Artifacts are made for an engine like this host's (Host() has epoch interruption on) by the
# component runtime, the one whose artifacts can be shipped (the core runtime caches its
# modules itself).
MAKER = Host(use_cache=False, runtime="component")
HERE = pre.Target(WASMTIME_VERSION, MAKER.engine_label)


def _made_elsewhere(wasm: bytes, key=VOUCHER, target=None) -> tuple[bytes, bytes]:
    artifact = MAKER.load(wasm).serialize()
    return artifact, pre.sign_artifact(wasm, artifact, target or HERE, key)


def test_a_vouched_artifact_is_loaded_without_compiling(tmp_path, guest_path) -> None:
    wasm = guest_path("exit_code").read_bytes()
    host = Host(cache_dir=tmp_path, trust_compiled=[VOUCHER.public_key()])
    component = host.load(wasm, precompiled=_made_elsewhere(wasm))
    assert host.cache.compiled == 0
    assert host.run(component, WasiConfig(args=["x", "5"])).exit_code == 5


def test_anything_else_is_compiled_here(tmp_path, guest_path, caplog) -> None:
    wasm = guest_path("exit_code").read_bytes()
    other = guest_path("calc").read_bytes()
    artifact, signature = _made_elsewhere(wasm)
    foreign, foreign_sig = _made_elsewhere(other)
    cases = {
        "not signed by a key trusted": (artifact, pre.sign_artifact(wasm, artifact, HERE, STRANGER)),
        "artifact": (foreign, signature),            # another artifact under this signature
        "component": (foreign, foreign_sig),         # vouched for, but for other code
        "wasmtime": (artifact, pre.sign_artifact(wasm, artifact, pre.Target("48.0.0", MAKER.engine_label), VOUCHER)),
        "engine": (artifact, pre.sign_artifact(wasm, artifact, pre.Target(WASMTIME_VERSION, "default"), VOUCHER)),
        "platform": (artifact, pre.sign_artifact(wasm, artifact, pre.Target(WASMTIME_VERSION, MAKER.engine_label, platform="wasi-riscv"), VOUCHER)),
        "malformed": (artifact, b"{"),
    }
    for why, precompiled in cases.items():
        host = Host(cache_dir=tmp_path / why.replace(" ", "-"), trust_compiled=[VOUCHER.public_key()])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="wasi_tls_host"):
            component = host.load(wasm, precompiled=precompiled)
        assert host.cache.compiled == 1, why
        assert why in caplog.text, (why, caplog.text)
        assert host.run(component, WasiConfig(args=["x", "3"])).exit_code == 3
    # No trusted key at all: never loaded.
    host = Host(cache_dir=tmp_path / "none")
    host.load(wasm, precompiled=(artifact, signature))
    assert host.cache.compiled == 1


def test_cli_precompile_and_run(tmp_path, guest_path) -> None:
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    key.write_bytes(VOUCHER.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pub.write_bytes(VOUCHER.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    guest = guest_path("exit_code")
    out = tmp_path / "g.cwasm"
    cli = [sys.executable, "-m", "wasi_tls_host.cli"]
    r = subprocess.run([*cli, "precompile", str(guest), "--key", str(key), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (tmp_path / "g.cwasm.sig").exists(), r.stderr
    r = subprocess.run([*cli, "-v", "run", "--no-cache", "--trust-compiled", str(pub), "--precompiled", str(out), str(guest), "4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 4 and "not using the pre-compiled" not in r.stderr, r.stderr
