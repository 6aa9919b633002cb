"""Compiled artifacts are code: the caches load only artifacts they wrote themselves (the
component runtime's artifacts, and the core runtime's modules and plan)."""

from __future__ import annotations

import hashlib
import logging
import os
import stat

import pytest

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.runtime import artifact_auth
from wasi_tls_host.runtime.artifact_auth import KEY_FILE, SEEN_SUFFIX, SOURCES_DIR, TAG_SUFFIX, ArtifactAuthenticator


def _artifact(cache_dir, wasm_host: Host, wasm: bytes):
    return cache_dir / f"{wasm_host.cache.key(wasm)}.cwasm"


def test_key_is_created_private_and_each_artifact_is_tagged(tmp_path, guest_path) -> None:
    wasm = guest_path("exit_code").read_bytes()
    host = Host(cache_dir=tmp_path, runtime="component")
    host.load(wasm)
    key = tmp_path / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == 32
    artifact = _artifact(tmp_path, host, wasm)
    assert artifact.exists() and (tmp_path / (artifact.name + TAG_SUFFIX)).stat().st_size == 32
    again = Host(cache_dir=tmp_path, runtime="component")
    assert again.run(wasm, WasiConfig(args=["x", "3"])).exit_code == 3
    assert again.cache.compiled == 0  # loaded from the authenticated artifact


def test_a_substituted_artifact_is_not_loaded(tmp_path, guest_path, caplog) -> None:
    # The attack: put a valid artifact of other code under this component's name. wasmtime
    # itself would load it (same engine, same version) and run the other code.
    wasm = guest_path("exit_code").read_bytes()
    other = guest_path("calc").read_bytes()
    host = Host(cache_dir=tmp_path, runtime="component")
    host.load(wasm)
    host.load(other)
    target, foreign = _artifact(tmp_path, host, wasm), _artifact(tmp_path, host, other)
    foreign_bytes = foreign.read_bytes()
    os.replace(foreign, target)
    victim = Host(cache_dir=tmp_path, runtime="component")
    with caplog.at_level(logging.WARNING, logger="wasi_tls_host.cache"):
        result = victim.run(wasm, WasiConfig(args=["x", "9"]))
    assert result.exit_code == 9  # the real component ran, not calc
    assert victim.cache.compiled == 1  # the substitute was a miss: compiled again
    assert "authentication failed" in caplog.text
    assert target.read_bytes() != foreign_bytes  # and replaced by an artifact it wrote


def test_one_flipped_byte_in_an_artifact_is_a_miss(tmp_path, guest_path) -> None:
    wasm = guest_path("exit_code").read_bytes()
    host = Host(cache_dir=tmp_path, runtime="component")
    host.load(wasm)
    artifact = _artifact(tmp_path, host, wasm)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    again = Host(cache_dir=tmp_path, runtime="component")
    assert again.run(wasm, WasiConfig(args=["x", "4"])).exit_code == 4
    assert again.cache.compiled == 1


def test_a_key_others_can_read_disables_the_disk_cache(tmp_path, guest_path, caplog) -> None:
    wasm = guest_path("exit_code").read_bytes()
    Host(cache_dir=tmp_path, runtime="component").load(wasm)
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with caplog.at_level(logging.WARNING, logger="wasi_tls_host.cache"):
        host = Host(cache_dir=tmp_path, runtime="component")
        assert host.run(wasm, WasiConfig(args=["x", "1"])).exit_code == 1
    assert host.cache.compiled == 1 and "mode is 644" in caplog.text


def test_the_core_runtime_loads_only_modules_and_plans_it_wrote(tmp_path, guest_path, caplog) -> None:
    wasm = guest_path("exit_code").read_bytes()
    host = Host(cache_dir=tmp_path, runtime="core")
    host.load(wasm)
    files = sorted(p for p in tmp_path.iterdir() if p.name.startswith(host.core_cache.key(wasm)) and not p.name.endswith(TAG_SUFFIX))
    assert any(p.suffix == ".plan" for p in files) and any(p.suffix == ".cwasm" for p in files)
    assert all((tmp_path / (p.name + TAG_SUFFIX)).exists() for p in files)
    for victim in files:
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
        again = Host(cache_dir=tmp_path, runtime="core")
        with caplog.at_level(logging.WARNING, logger="wasi_tls_host.cache"):
            assert again.run(wasm, WasiConfig(args=["x", "6"])).exit_code == 6
        assert again.cache.compiled == 1, victim.name  # a miss: compiled again (and rewritten)
        assert "authentication failed" in caplog.text
        caplog.clear()


def test_a_verified_module_is_mapped_again_unread_until_its_file_changes(tmp_path, guest_path, monkeypatch) -> None:
    """Once verified, a module whose open file is the same (inode, size, mtime, ctime) is
    mapped without hashing its bytes again; a file rewritten in place with its size and mtime
    put back, or replaced by a copy, is hashed again, and a changed byte is still a miss."""
    monkeypatch.setattr(artifact_auth, "SETTLED_NS", 0)  # the files here are brand new
    wasm = guest_path("exit_code").read_bytes()
    Host(cache_dir=tmp_path, runtime="core").load(wasm)
    first = Host(cache_dir=tmp_path, runtime="core")
    first.load(wasm)
    modules = sorted(tmp_path.glob(f"{first.core_cache.key(wasm)}-*.cwasm"))
    assert modules and all(p.with_name(p.name + SEEN_SUFFIX).exists() for p in modules)
    assert first.cache.auth.content_checks == len(modules) + 1  # and the plan
    again = Host(cache_dir=tmp_path, runtime="core")
    assert again.run(wasm, WasiConfig(args=["x", "5"])).exit_code == 5
    assert again.cache.auth.content_checks == 1  # only the plan (each load marks its use on it)

    victim = modules[0]
    info = victim.stat()
    victim.write_bytes(victim.read_bytes())  # same bytes, same inode: only its ctime moves
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))
    copy = modules[-1].with_name("copy")
    copy.write_bytes(modules[-1].read_bytes())
    os.utime(copy, ns=(modules[-1].stat().st_atime_ns, modules[-1].stat().st_mtime_ns))
    os.replace(copy, modules[-1])
    changed = Host(cache_dir=tmp_path, runtime="core")
    assert changed.run(wasm, WasiConfig(args=["x", "7"])).exit_code == 7
    assert changed.cache.auth.content_checks == 1 + len({victim, modules[-1]}) and changed.cache.compiled == 0

    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    info = victim.stat()
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(info.st_atime_ns, info.st_mtime_ns))
    flipped = Host(cache_dir=tmp_path, runtime="core")
    assert flipped.run(wasm, WasiConfig(args=["x", "8"])).exit_code == 8
    assert flipped.cache.compiled == 1  # a miss: compiled again


def test_a_failed_write_leaves_no_file_behind(tmp_path) -> None:
    """Writing an artifact that fails midway (here: data the file cannot take) leaves neither
    the artifact nor its temporary file, and an earlier artifact at that name stays whole."""
    auth = ArtifactAuthenticator(tmp_path)
    target = tmp_path / "a.cwasm"
    auth.store(target, "a", b"first")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TypeError):
        auth.store(target, "a", "not bytes")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert target.read_bytes() == b"first"


def test_a_component_file_is_read_once_until_it_changes(tmp_path, guest_path, monkeypatch) -> None:
    """A component file whose digest was taken is loaded from the cache by its identity
    without reading it again; a file rewritten in place (mtime put back), a forged record and
    a file too new to be remembered are read and hashed as before."""
    cache = tmp_path / "cache"
    source = tmp_path / "guest.wasm"
    wasm, other = guest_path("exit_code").read_bytes(), guest_path("calc").read_bytes()
    source.write_bytes(wasm)
    fresh = Host(cache_dir=cache, runtime="core")
    fresh.load(source)
    assert not (cache / SOURCES_DIR).exists()  # its ctime is not settled yet: not remembered
    monkeypatch.setattr(artifact_auth, "SETTLED_NS", 0)
    Host(cache_dir=cache, runtime="core").load(source)
    [record] = (cache / SOURCES_DIR).iterdir()
    Host(cache_dir=tmp_path / "off", use_cache=False, runtime="core").load(source)
    assert not (tmp_path / "off").exists()  # without the cache nothing is remembered either

    again = Host(cache_dir=cache, runtime="core")
    component = again.load(source)
    assert again.sources_remembered == 1 and again.cache.compiled == 0
    assert again.evidence(component).digest == "sha256:" + hashlib.sha256(wasm).hexdigest()
    assert again.run(component, WasiConfig(args=["x", "5"])).exit_code == 5

    info = source.stat()
    source.write_bytes(other)  # in place: same inode, the old mtime put back, a new ctime
    os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns))
    changed = Host(cache_dir=cache, runtime="core")
    component = changed.load(source)
    assert changed.sources_remembered == 0 and changed.cache.compiled == 1
    assert changed.evidence(component).digest == "sha256:" + hashlib.sha256(other).hexdigest()

    forged = record.read_bytes()
    record.write_bytes(hashlib.sha256(wasm).hexdigest().encode() + forged[64:])  # the old digest, the new tag
    cheated = Host(cache_dir=cache, runtime="core")
    component = cheated.load(source)
    assert cheated.sources_remembered == 0
    assert cheated.evidence(component).digest == "sha256:" + hashlib.sha256(other).hexdigest()


def test_the_core_runtime_takes_a_shared_module_compiled_for_another_component(tmp_path, guest_path, monkeypatch) -> None:
    """Two components with a core module in common (as every componentize-py guest has
    CPython's): the second compiles only its own module and takes the common one from the
    first's authenticated files; with a changed byte in that file it compiles both."""
    from wasmtime import wat2wasm

    from wasi_tls_host.guests import EXAMPLES
    from wasi_tls_host.runtime.core import loader

    monkeypatch.setattr(loader, "SHARED_MODULE_MIN", 0)  # this guest's modules are tiny

    wasm = guest_path("exit_code").read_bytes()
    text = (EXAMPLES / "wat" / "exit_code.wat").read_text()
    marker = '    (func (export "run") (result i32)\n'
    assert text.count(marker) == 1
    # The same $Libc, another $Main (one more export): another component.
    variant = bytes(wat2wasm(text.replace(marker, '    (func (export "other") (result i32) (i32.const 1))\n' + marker)))
    first = Host(cache_dir=tmp_path, runtime="core")
    first.load(wasm)
    assert (first.core_cache.modules_compiled, first.core_cache.modules_reused) == (2, 0)

    second = Host(cache_dir=tmp_path, runtime="core")
    assert second.run(variant, WasiConfig(args=["x", "11"])).exit_code == 11
    assert (second.core_cache.modules_compiled, second.core_cache.modules_reused) == (1, 1)
    assert second.cache.compiled == 1
    again = Host(cache_dir=tmp_path, runtime="core")
    assert again.run(variant, WasiConfig(args=["x", "12"])).exit_code == 12  # its own entry, complete
    assert (again.cache.compiled, again.core_cache.modules_compiled) == (0, 0)

    for entry in tmp_path.glob(f"{second.core_cache.key(variant)}*"):
        entry.unlink()  # the variant is compiled again, and the module it took is now corrupt
    donor = sorted(tmp_path.glob(f"{first.core_cache.key(wasm)}-*.cwasm"))
    for p in donor:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x01
        p.write_bytes(bytes(data))
    third = Host(cache_dir=tmp_path, runtime="core")
    assert third.run(variant, WasiConfig(args=["x", "13"])).exit_code == 13
    assert (third.core_cache.modules_compiled, third.core_cache.modules_reused) == (2, 0)
