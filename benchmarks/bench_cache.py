"""What bounding the compiled-component cache costs (issue 19), next to references from the
same run:

- the LRU bookkeeping of a cached load (lease the entry's primary file and mark it used: an
  open, a shared flock, two stats and a utime) against the cached start it is part of
  (``Host`` + ``load`` of the 18 MB ``https_get`` guest from a warm cache, per runtime);
- a trim after a compile: on a hard-linked copy of this user's real cache (so nothing of it
  is touched), the first trim to 1 GiB (size and files before and after) and a trim when
  under the limit (the scan every compile pays), against a stat of every file alone.

Run: python benchmarks/bench_cache.py   (figures are medians of a few runs)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wasi_tls_host import Host, guests
from wasi_tls_host.runtime.cache import default_cache_dir
from wasi_tls_host.runtime.cache_space import DEFAULT_MAX_SIZE, Lease, primary_name, scan, trim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_provenance import median_ms  # noqa: E402  (the same median of a few runs)


def cached_starts(wasm: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in ("core", "component"):
            with Host(cache_dir=Path(tmp), runtime=runtime) as host:
                host.load(wasm)  # compiles once, into the cache
                entry = host.core_cache.key(wasm) if runtime == "core" else host.cache.key(wasm)

            def start() -> None:
                with Host(cache_dir=Path(tmp), runtime=runtime) as host:
                    host.load(wasm)
                    assert host.cache.compiled == 0

            def bookkeeping() -> None:
                lease = Lease.take(Path(tmp) / primary_name(entry))
                assert lease is not None
                lease.release()

            whole = median_ms(start)
            each = median_ms(lambda: [bookkeeping() for _ in range(1000)], runs=5) / 1000
            print(f"{runtime} runtime: cached start {whole:.1f} ms; LRU bookkeeping {each * 1000:.1f} us "
                  f"({each / whole * 100:.3f} % of it)")


def stat_all(directory: Path) -> None:
    for item in os.scandir(directory):
        item.stat(follow_symlinks=False)


def trims() -> None:
    real = default_cache_dir()
    if not real.exists():
        print(f"no cache at {real}: trim figures skipped")
        return
    with tempfile.TemporaryDirectory(dir=real.parent) as tmp:
        copy = Path(tmp) / "components"
        subprocess.run(["cp", "-al", str(real), str(copy)], check=True)  # hard links: no space, nothing shared changes
        before = scan(copy)
        files = len(os.listdir(copy))
        listing = median_ms(lambda: stat_all(copy))
        start = time.perf_counter()
        first = trim(copy, DEFAULT_MAX_SIZE)
        first_ms = (time.perf_counter() - start) * 1000
        assert first is not None
        after_files = len(os.listdir(copy))
        steady = median_ms(lambda: trim(copy, DEFAULT_MAX_SIZE))
        steady_listing = median_ms(lambda: stat_all(copy))
        print(f"trim to 1 GiB: {before.size / 2**20:.0f} MiB in {files} files ({len(before.entries)} entries) -> "
              f"{first.size / 2**20:.0f} MiB in {after_files} files ({first.removed} entries removed) in {first_ms:.0f} ms "
              f"(reference: a stat of each of the {files} files {listing:.1f} ms)")
        print(f"trim under the limit (every compile): {steady:.1f} ms for {after_files} files "
              f"(reference: a stat of each {steady_listing:.1f} ms; a compile of https_get takes seconds)")
        shutil.rmtree(copy)


def main() -> None:
    cached_starts(guests.build("https_get").read_bytes())
    trims()


if __name__ == "__main__":
    main()
