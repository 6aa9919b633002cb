"""The compiled-component cache is bounded: least recently used entries are evicted past its
size limit after each compile, never one a running host has loaded (in this process or
another); ``wasi-tls-host cache info|clear``. Real compiles of a WAT component, made distinct
by a custom section, into a temporary cache directory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.runtime import artifact_auth
from wasi_tls_host.runtime.artifact_auth import KEY_FILE, SOURCES_DIR, TAG_SUFFIX
from wasi_tls_host.runtime.cache_space import GRACE_S, MAX_SIZE_ENV, entry_name, primary_name, scan, trim

TIMEOUT = 120.0


@pytest.fixture(scope="module")
def exit_code_wasm(guest_path) -> bytes:
    return guest_path("exit_code").read_bytes()


def variant(wasm: bytes, n: int) -> bytes:
    """Another component (another digest, so another cache entry) that runs the same: a
    custom section appended."""
    name, payload = b"n", f"variant {n}".encode()
    content = bytes([len(name)]) + name + payload
    return wasm + bytes([0, len(content)]) + content


def entry_of(host: Host, wasm: bytes) -> str:
    return host.core_cache.key(wasm) if host.runtime == "core" else host.cache.key(wasm)


def load_and_close(cache: Path, runtime: str, wasm: bytes, **options) -> str:
    with Host(cache_dir=cache, runtime=runtime, **options) as host:
        assert host.run(wasm, WasiConfig(args=["x", "7"])).exit_code == 7
        return entry_of(host, wasm)


def age(cache: Path, entry: str, seconds_ago: float) -> None:
    os.utime(cache / primary_name(entry), (time.time() - seconds_ago,) * 2)


def test_least_recently_used_entries_go_first_and_a_load_counts_as_a_use(tmp_path: Path, runtime: str, exit_code_wasm: bytes) -> None:
    cache = tmp_path / "cache"
    a, b = (load_and_close(cache, runtime, variant(exit_code_wasm, n)) for n in (1, 2))
    one_entry = scan(cache).entries[a].size
    age(cache, a, 300)  # a: used long ago, b: more recently...
    age(cache, b, 200)
    assert load_and_close(cache, runtime, variant(exit_code_wasm, 1)) == a  # ...and now a again
    limit = 2 * one_entry + one_entry // 2  # room for two entries, not three
    c = load_and_close(cache, runtime, variant(exit_code_wasm, 3), cache_max_size=limit)
    contents = scan(cache)
    assert set(contents.entries) == {a, c}  # b went: the least recently used
    assert contents.size <= limit
    assert not [p for p in cache.iterdir() if b in p.name]  # artifacts and their tags alike
    assert (cache / KEY_FILE).exists()
    # Surviving entries still load from disk, authenticated, without a compile.
    with Host(cache_dir=cache, runtime=runtime) as host:
        assert host.run(variant(exit_code_wasm, 1), WasiConfig(args=["x", "5"])).exit_code == 5
        assert host.cache.compiled == 0


def test_an_entry_a_running_host_has_loaded_is_never_evicted(tmp_path: Path, runtime: str, exit_code_wasm: bytes) -> None:
    cache = tmp_path / "cache"
    a = load_and_close(cache, runtime, variant(exit_code_wasm, 1))
    one_entry = scan(cache).entries[a].size
    with Host(cache_dir=cache, runtime=runtime) as running:
        running.load(variant(exit_code_wasm, 1))  # mapped and leased by this host
        age(cache, a, 3600)  # the oldest by far
        for n in (2, 3, 4):
            load_and_close(cache, runtime, variant(exit_code_wasm, n), cache_max_size=one_entry + one_entry // 2)
        entries = scan(cache).entries
        assert a in entries and len(entries) == 2  # a (in use) and the entry just written
        guest = running.instantiate(variant(exit_code_wasm, 1), WasiConfig(args=["x", "9"]))
        with guest:
            assert guest.run().exit_code == 9
    # Closed, its lease is gone: the next compile over the limit evicts it.
    age(cache, a, 3600)
    load_and_close(cache, runtime, variant(exit_code_wasm, 5), cache_max_size=one_entry + one_entry // 2)
    assert a not in scan(cache).entries


def test_a_host_that_misses_while_another_compiles_waits_and_loads_its_artifact(tmp_path: Path, runtime: str,
                                                                               exit_code_wasm: bytes) -> None:
    """Two hosts (parallel test workers, a server's workers) missing the same entry at once
    compile it once: the second, having missed, waits for the first's compile lock on that
    entry and then finds the artifact on disk. (Two hosts in one process take the lock through separate
    descriptors, as two processes would.)"""
    cache, wasm, config = tmp_path / "cache", variant(exit_code_wasm, 40), WasiConfig(args=["x", "7"])
    with Host(cache_dir=cache, runtime=runtime) as first, Host(cache_dir=cache, runtime=runtime) as second:
        # Ordered by hooks on the caches' own steps: the second misses on disk while the
        # first has compiled and not yet stored.
        first_loader, second_loader = (h.core_cache if runtime == "core" else h.cache for h in (first, second))
        store_name, load_name = ("_store_artifacts", "_load_artifacts") if runtime == "core" else ("_store_artifact", "_load_artifact")
        real_store, real_load = getattr(first_loader, store_name), getattr(second_loader, load_name)
        missed = threading.Event()
        exit_codes: list[int] = []
        second_run = threading.Thread(target=lambda: exit_codes.append(second.run(wasm, config).exit_code))

        def load_then_tell(key: str):
            found = real_load(key)
            missed.set()
            return found

        def store_once_the_second_missed(*args) -> None:
            second_run.start()
            assert missed.wait(TIMEOUT)
            real_store(*args)

        setattr(second_loader, load_name, load_then_tell)
        setattr(first_loader, store_name, store_once_the_second_missed)
        try:
            assert first.run(wasm, config).exit_code == 7
        finally:
            second_run.join(TIMEOUT)
        assert exit_codes == [7]
        assert (first.cache.compiled, second.cache.compiled) == (1, 0)


def test_growth_stays_within_the_limit_over_many_compiles(tmp_path: Path, exit_code_wasm: bytes) -> None:
    """The core runtime's entries are several files each (plan, modules, tags)."""
    cache = tmp_path / "cache"
    limit = 200_000
    sizes = []
    for n in range(12):
        load_and_close(cache, "core", variant(exit_code_wasm, n), cache_max_size=limit)
        sizes.append(scan(cache).size)
    assert max(sizes) <= limit and sizes[-1] > limit // 2, sizes
    names = [p.name for p in cache.iterdir()]
    assert all(entry_name(n) is not None or n in {KEY_FILE, ".lock"} for n in names), names
    assert all((cache / (n + TAG_SUFFIX)).exists() for n in names if n.endswith((".cwasm", ".plan")))


def test_unfinished_writes_are_left_until_they_are_debris(tmp_path: Path, exit_code_wasm: bytes) -> None:
    cache = tmp_path / "cache"
    a = load_and_close(cache, "core", variant(exit_code_wasm, 1))
    one_entry = scan(cache).entries[a].size
    # Modules without their plan (a writer still at work, or one that died), and temporary files.
    for name, seconds_ago in [("f" * 64 + "-young-core-0.cwasm", 0), ("0" * 64 + "-old-core-0.cwasm", GRACE_S + 60),
                              ("tmpyoung.tmp", 0), ("tmpold.tmp", GRACE_S + 60)]:
        (cache / name).write_bytes(b"\0" * one_entry)
        os.utime(cache / name, (time.time() - seconds_ago,) * 2)
    load_and_close(cache, "core", variant(exit_code_wasm, 2), cache_max_size=one_entry)
    names = {p.name for p in cache.iterdir()}
    assert "tmpyoung.tmp" in names and "f" * 64 + "-young-core-0.cwasm" in names
    assert "tmpold.tmp" not in names and "0" * 64 + "-old-core-0.cwasm" not in names


def test_remembered_digests_count_toward_the_limit_and_are_evicted_like_entries(tmp_path: Path, exit_code_wasm: bytes,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest a load from a file remembers (``sources/``, one small record per file) is
    in the cache's size and goes, least recently used first among the entries, when the
    bound needs room (a load through it counts as a use); it is not counted as an entry
    removed."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(artifact_auth, "SETTLED_NS", 0)
    a = load_and_close(cache, "core", variant(exit_code_wasm, 1))
    source = tmp_path / "guest.wasm"
    source.write_bytes(variant(exit_code_wasm, 2))
    with Host(cache_dir=cache, runtime="core") as host:
        b = entry_of(host, source.read_bytes())
        host.load(source)
    [record] = (cache / SOURCES_DIR).iterdir()
    contents = scan(cache)
    assert contents.size == sum(e.size for e in contents.entries.values()) + record.stat().st_size
    os.utime(record, (time.time() - 3600,) * 2)
    age(cache, a, 1800)
    with Host(cache_dir=cache, runtime="core") as host:
        host.load(source)  # through the record: it and entry b are used now, a is the oldest
        assert host.sources_remembered == 1
    trim(cache, contents.size - 1, grace=0.0)
    assert record.exists() and set(scan(cache).entries) == {b}
    os.utime(record, (time.time() - 3600,) * 2)  # now the record is the oldest
    trimmed = trim(cache, scan(cache).size - 1, grace=0.0)
    assert not record.exists() and set(scan(cache).entries) == {b}
    assert trimmed is not None and (trimmed.removed, trimmed.freed) == (0, contents.records[0].size)


def test_the_limit_comes_from_the_environment_or_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def limit(**options) -> int | None:
        with Host(cache_dir=tmp_path, **options) as host:
            return host.cache.max_size

    monkeypatch.delenv(MAX_SIZE_ENV, raising=False)
    assert limit() == 1 << 30
    assert limit(cache_max_size=None) is None and limit(cache_max_size=5 << 20) == 5 << 20
    monkeypatch.setenv(MAX_SIZE_ENV, "256M")
    assert limit() == 256 << 20
    monkeypatch.setenv(MAX_SIZE_ENV, "none")
    assert limit() is None
    monkeypatch.setenv(MAX_SIZE_ENV, "lots")
    with pytest.raises(ValueError, match=rf"\${MAX_SIZE_ENV}: want a size such as 512M"):
        Host(cache_dir=tmp_path)
    with pytest.raises(ValueError, match="positive number of bytes or None"):
        Host(cache_dir=tmp_path, cache_max_size=0)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def test_cache_info_and_clear(tmp_path: Path, exit_code_wasm: bytes, guest_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    env = {"WASI_TLS_HOST_CACHE": str(cache), MAX_SIZE_ENV: "64M"}
    a = load_and_close(cache, "core", variant(exit_code_wasm, 1))
    load_and_close(cache, "component", variant(exit_code_wasm, 2))
    contents = scan(cache)
    with Host(cache_dir=cache, runtime="core") as running:
        running.load(variant(exit_code_wasm, 1))  # in use while the other process looks
        info = _cli("cache", "info", env=env)
        assert info.returncode == 0, info.stderr
        assert info.stdout.splitlines() == [
            f"location: {cache}",
            f"size: {contents.size / (1 << 20):.1f} MiB in {sum(len(e.files) for e in contents.entries.values())} files",
            "entries: 2 (1 in use by running hosts)",
            f"limit: 64 MiB (${MAX_SIZE_ENV}; least recently used entries are evicted past it)",
        ]
        cleared = _cli("cache", "clear", env=env)
        assert cleared.returncode == 0, cleared.stderr
        assert cleared.stdout.startswith(f"{cache}: removed 1 entries (") and cleared.stdout.endswith("kept 1 in use by running hosts\n")
        assert set(scan(cache).entries) == {a}
    source = tmp_path / "guest.wasm"
    source.write_bytes(variant(exit_code_wasm, 1))
    monkeypatch.setattr(artifact_auth, "SETTLED_NS", 0)
    with Host(cache_dir=cache, runtime="core") as host:
        host.load(source)  # from a file: its digest remembered (artifact_auth.SOURCES_DIR)
    assert list((cache / SOURCES_DIR).iterdir())
    assert _cli("cache", "clear", env=env).returncode == 0
    assert scan(cache).entries == {} and (cache / KEY_FILE).exists()
    assert not list((cache / SOURCES_DIR).iterdir())
    nowhere = {**env, "WASI_TLS_HOST_CACHE": str(tmp_path / "none-yet")}
    assert _cli("cache", "clear", env=nowhere).stdout == f"{tmp_path / 'none-yet'}: removed 0 entries (0.0 MiB); 0.0 MiB left\n"
    assert "size: 0.0 MiB in 0 files" in _cli("cache", "info", env=nowhere).stdout
    bad = _cli("run", str(guest_path("exit_code")), env={**env, MAX_SIZE_ENV: "lots"})
    assert bad.returncode == 2 and bad.stderr == f"error: ${MAX_SIZE_ENV}: want a size such as 512M, 2G or 1048576, got 'lots'\n"


def test_processes_sharing_the_cache_keep_it_within_the_limit(tmp_path: Path, exit_code_wasm: bytes) -> None:
    """As ``--workers`` do: three processes compile into one cache at once (half of their
    components in common), each trimming after its compiles."""
    cache = tmp_path / "cache"
    load_and_close(cache, "core", variant(exit_code_wasm, 0))
    limit = 4 * scan(cache).size
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from wasi_tls_host import Host, WasiConfig\n"
        "wasm = Path(sys.argv[1]).read_bytes()\n"
        "for n in [int(a) for a in sys.argv[3:]]:\n"
        "    name, payload = b'n', f'variant {n}'.encode()\n"
        "    content = bytes([len(name)]) + name + payload\n"
        "    with Host(cache_dir=Path(sys.argv[2]), runtime='core', cache_max_size=%d) as host:\n"
        "        assert host.run(wasm + bytes([0, len(content)]) + content, WasiConfig(args=['x', '7'])).exit_code == 7\n"
    ) % limit
    source = tmp_path / "exit_code.wasm"
    source.write_bytes(exit_code_wasm)
    runs = [subprocess.Popen([sys.executable, "-c", script, str(source), str(cache), *map(str, [*range(10, 16), *range(100 * p, 100 * p + 6)])],
                             stderr=subprocess.PIPE, text=True) for p in (1, 2, 3)]
    for run in runs:
        _, err = run.communicate(timeout=TIMEOUT)
        assert run.returncode == 0, err
    assert scan(cache).size <= limit
