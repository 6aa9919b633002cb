"""WASI 0.3 stdout: a componentize-py guest (``wasi_probe_p3 write``) writes 64 MiB through
``wasi:cli/stdout@0.3.0#write-via-stream`` into a pipe this script drains, beside ``cat`` of
the same bytes from a file into the same kind of pipe, and the same guest on the wasmtime
CLI, measured in the same run.

Each figure is the best of REPEAT runs: the whole command (start-up and exit included), and
the transfer alone (from the first byte this script reads to the last; the command's exit,
which ends the pipe, is not part of it).

Run: python benchmarks/bench_p3.py [--mib 64] [--chunk-kib 1024]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools/ (not installed)
from devtools.conformance import precompiled_for_wasmtime, wasmtime_binary  # noqa: E402
from wasi_tls_host import guests  # noqa: E402

REPEAT = 3
P3_FLAGS = ("-Wcomponent-model-async",)


def drain(cmd: list[str], expect: int = 0) -> tuple[float, float, int]:
    """Seconds from start to the end of the command's stdout (its exit, for these
    commands), from its first byte to its last (the ``expect``-th), and the bytes read."""
    read_end, write_end = os.pipe()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=write_end, stdin=subprocess.DEVNULL)
    os.close(write_end)
    total = 0
    first = last = None
    try:
        while chunk := os.read(read_end, 1 << 20):
            first = first or time.perf_counter()
            total += len(chunk)
            if total >= expect and last is None:
                last = time.perf_counter()
    finally:
        os.close(read_end)
    ended = time.perf_counter()
    if proc.wait(timeout=600) != 0:
        raise SystemExit(f"{cmd[0]} exited with status {proc.returncode}")
    return ended - started, (last or ended) - (first or ended), total


def best(cmd: list[str], expect: int) -> tuple[float, float]:
    runs = []
    for _ in range(REPEAT):
        whole, transfer, total = drain(cmd, expect)
        if total != expect:
            raise SystemExit(f"{' '.join(cmd[:3])}...: {total} bytes, expected {expect}")
        runs.append((whole, transfer))
    return min(w for w, _ in runs), min(t for _, t in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--chunk-kib", type=int, default=1024, help="the guest's write size")
    args = parser.parse_args()
    nbytes, chunk = args.mib << 20, args.chunk_kib << 10
    wasm = guests.build("wasi_probe_p3")
    cwasm = precompiled_for_wasmtime(wasm, *P3_FLAGS)
    ours = [sys.executable, "-m", "wasi_tls_host.cli", "run", str(wasm), "write"]
    theirs = [str(wasmtime_binary()), "run", "--allow-precompiled", *P3_FLAGS, "-Sp3", str(cwasm), "write"]
    drain(ours + ["0"])  # compile into the host's cache before timing
    with tempfile.NamedTemporaryFile(prefix="bench-p3-") as data:
        block = bytes(range(256)) * (chunk // 256 + 1)
        for offset in range(0, nbytes, chunk):
            data.write(block[:min(chunk, nbytes - offset)])
        data.flush()
        rows = [
            ("cat (reference)", best(["cat", data.name], nbytes)),
            ("wasi-tls-host run", best(ours + [str(nbytes), str(chunk)], nbytes)),
            ("wasmtime CLI -Sp3", best(theirs + [str(nbytes), str(chunk)], nbytes)),
        ]
    print(f"== {args.mib} MiB to stdout into a pipe, guest writes of {args.chunk_kib} KiB, best of {REPEAT}")
    print(f"{'':20} {'whole s':>8} {'transfer s':>11} {'MB/s':>8} {'of cat':>7}")
    cat_rate = None
    for name, (whole, transfer) in rows:
        rate = nbytes / max(transfer, 1e-9) / 1e6
        cat_rate = cat_rate or rate
        print(f"{name:20} {whole:8.3f} {transfer:11.3f} {rate:8.1f} {rate / cat_rate:7.1%}")


if __name__ == "__main__":
    main()
