"""WASI 0.2 core (cli, io, clocks, random) through a real componentize-py guest."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.wasi.io import PipeInput

CLI = [sys.executable, "-m", "wasi_tls_host.cli"]


def test_args_reach_the_guest(run_guest) -> None:
    r = run_guest("wasi_probe", "args", "a b", "ü", "")
    assert r.exit_code == 0, r.err
    assert "args=wasi_probe|args|a b|ü|\n" in r.out
    assert "sys.argv=wasi_probe|args|a b|ü|\n" in r.out


def test_environment_is_exactly_what_was_given(run_guest) -> None:
    r = run_guest("wasi_probe", "env", "GREETING", "HOME", env={"GREETING": "hi there"})
    assert r.out.splitlines() == ["GREETING=hi there", "HOME=<unset>", "count=1"]


def test_stdout_and_stderr_bytes_are_exact(run_guest) -> None:
    r = run_guest("wasi_probe", "bytes")
    assert r.stdout == bytes(range(256))
    assert r.stderr == b"\xff\xfeerr\x00"


def test_stdin_round_trip_through_streams_and_poll(run_guest) -> None:
    data = os.urandom(3 << 20)
    r = run_guest("wasi_probe", "cat", stdin=data)
    assert r.exit_code == 0, r.err
    assert r.stdout == data
    assert r.err == f"copied {len(data)}\n"


def test_splice_stdin_to_stdout(run_guest) -> None:
    data = os.urandom(1 << 20) + b"tail"
    r = run_guest("wasi_probe", "splice", stdin=data)
    assert r.stdout == data
    assert r.err == f"spliced {len(data)}\n"


def test_closed_stdin_reads_closed(run_guest) -> None:
    assert run_guest("wasi_probe", "stdin-closed").out == "error=StreamError_Closed\n"
    assert run_guest("wasi_probe", "stdin-closed", stdin=b"abc").out == "read=b'abc'\n"


@pytest.mark.parametrize(("arg", "code"), [("0", 0), ("1", 1)])
def test_exit_ok_and_err(run_guest, arg: str, code: int) -> None:
    r = run_guest("wasi_probe", "exit", arg)
    assert r.exit_code == code
    assert r.out == "before exit\n"
    assert r.trap is None


@pytest.mark.parametrize("code", [0, 3, 42, 255])
def test_exit_with_code_reaches_the_cli_exit_status(guest_path, code: int) -> None:
    r = _cli("run", str(guest_path("exit_code")), str(code))
    assert r.returncode == code
    assert r.stderr == b""


def test_guest_exception_is_exit_1_with_its_traceback(run_guest) -> None:
    r = run_guest("wasi_probe", "fail")
    assert r.exit_code == 1
    assert "guest failure on purpose" in r.err


def test_clocks(run_guest) -> None:
    before = time.time()
    lines = dict(line.split("=") for line in run_guest("wasi_probe", "clocks").out.split())
    assert lines["monotonic_ok"] == "True"
    assert int(lines["monotonic_resolution"]) >= 1
    assert abs(int(lines["wall_seconds"]) - before) < 5
    assert lines["wall_nanos_ok"] == "True"


def _cpu_seconds() -> float:
    # This thread's CPU time (the guest runs on it): other tests' leftover threads, or a
    # collection another thread triggers, must not count as the host's.
    return time.thread_time()


def test_sleep_is_accurate_and_uses_no_cpu(run_guest, no_gc) -> None:
    run_guest("wasi_probe", "sleep", "0")  # warm caches
    cpu0 = _cpu_seconds()
    run_guest("wasi_probe", "sleep", "0")
    baseline = _cpu_seconds() - cpu0
    cpu1 = _cpu_seconds()
    r = run_guest("wasi_probe", "sleep", "400")
    slept_cpu = _cpu_seconds() - cpu1
    lines = dict(line.split("=") for line in r.out.split())
    assert lines["ready_before"] == "False"
    assert 400e6 <= int(lines["elapsed_ns"]) < 600e6
    # A busy-waiting host would burn ~0.4 s of CPU here.
    assert slept_cpu - baseline < 0.1, (slept_cpu, baseline)

    r = run_guest("wasi_probe", "sleep", "50")
    elapsed = int(dict(line.split("=") for line in r.out.split())["elapsed_ns"])
    assert 50e6 <= elapsed < 150e6


def test_poll_reports_only_ready_pollables(run_guest) -> None:
    assert run_guest("wasi_probe", "poll-mix").out == "first=[1]\nsecond=[0, 1]\n"


def test_random(run_guest) -> None:
    assert run_guest("wasi_probe", "random").out.split() == [
        "len=32", "distinct=True", "u64_distinct=True", "insecure_len=17", "seed_stable=True", "big=1048576",
    ]


@pytest.mark.parametrize("whole_lines", [False, True])
def test_inherited_output_writes_whole_lines_when_asked(whole_lines: bool) -> None:
    """Each os.write on a datagram socket is one datagram, so the writes can be seen: with
    whole_lines a print that arrives in flushed pieces leaves as one write per line."""
    import socket

    from wasi_tls_host.wasi.io import FdOutput

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        out = FdOutput(theirs.fileno(), whole_lines)
        for piece in (b"hello", b" ", b"world", b"\nnext", b" line\nlast"):
            out.check_write()
            out.write(piece)
            out.flush()  # componentize-py flushes every piece
        out.check_write()
        out.write(b"x" * FdOutput.LINE_HOLD)  # a line too long to hold: written as it comes
        out.drop()  # the stream's end: what is held goes out
        ours.setblocking(False)
        writes = []
        while True:
            try:
                writes.append(ours.recv(65536))
            except BlockingIOError:
                break
    if whole_lines:
        assert writes == [b"hello world\n", b"next line\n", b"last" + b"x" * FdOutput.LINE_HOLD]
    else:
        assert writes == [b"hello", b" ", b"world", b"\nnext", b" line\nlast", b"x" * FdOutput.LINE_HOLD]


def test_a_large_write_to_an_inherited_pipe_grows_the_pipe_first() -> None:
    """A 64 KiB pipe makes a guest writing megabytes wait for its reader once per 64 KiB;
    the first large write grows the pipe to FdOutput.PIPE_SIZE (the speed is measured in
    benchmarks/bench_p3.py). Small writes (a print) leave the pipe as it is."""
    import fcntl
    import os

    from wasi_tls_host.wasi.io import FdOutput

    read_end, write_end = os.pipe()
    try:
        out = FdOutput(write_end)
        out.check_write()
        out.write(b"hello\n")
        assert fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) == 65536
        out.check_write()
        out.write(b"x" * 200_000)  # more than the pipe held: no reader is needed now
        assert fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) == FdOutput.PIPE_SIZE
        assert os.read(read_end, 1 << 20) == b"hello\n" + b"x" * 200_000
    finally:
        os.close(read_end)
        os.close(write_end)


def test_permit_protocol(run_guest) -> None:
    r = run_guest("wasi_probe", "permits")
    assert r.stdout.startswith(b"a" * 10 + b"\0\0\0")
    assert "permit_positive=True after_flush_ready=True again=True" in r.out


@pytest.mark.parametrize(
    ("cmd", "message"),
    [
        ("write-past-permit", "exceeds the permit of"),
        ("write-without-check", "write of 5 bytes exceeds the permit of 0 bytes"),
        ("big-blocking-write", "blocking-write-and-flush takes at most 4096 bytes, got 5000"),
    ],
)
def test_stream_misuse_traps_clearly(run_guest, cmd: str, message: str) -> None:
    r = run_guest("wasi_probe", cmd)
    assert r.exit_code == 1
    assert r.trap is not None and message in r.trap
    assert "must not appear" not in r.out
    # The host is unharmed: the next guest runs normally.
    assert run_guest("wasi_probe", "args").exit_code == 0


def test_poll_wakes_on_stdin_data_from_another_thread(host: Host, guest_path) -> None:
    pipe = PipeInput()
    out = bytearray()
    timer = threading.Timer(0.1, pipe.feed, args=(b"x",))
    timer.start()
    try:
        result = host.run(guest_path("wasi_probe"), WasiConfig(args=["p", "wait-stdin", "5000"], stdin=lambda: pipe, stdout=out))
    finally:
        timer.cancel()
    assert result.exit_code == 0
    assert out == b"ready=[0]\n"


def test_poll_timer_wins_when_stdin_is_quiet(host: Host, guest_path) -> None:
    pipe = PipeInput()
    out = bytearray()
    result = host.run(guest_path("wasi_probe"), WasiConfig(args=["p", "wait-stdin", "50"], stdin=lambda: pipe, stdout=out))
    assert result.exit_code == 0
    assert out == b"ready=[1]\n"


def test_embedder_can_interrupt_a_waiting_guest(host: Host, guest_path) -> None:
    guest = host.instantiate(guest_path("wasi_probe"), WasiConfig(args=["p", "forever"]))
    timer = threading.Timer(0.2, guest.interrupt)
    timer.start()
    start = time.monotonic()
    try:
        result = guest.run()
    finally:
        guest.close()
    assert time.monotonic() - start < 5
    assert result.exit_code == 1
    assert result.trap_cause is not None and "interrupted by the embedder" in result.trap_cause


async def test_run_async_and_cancellation(host: Host, guest_path) -> None:
    out = bytearray()
    result = await host.run_async(guest_path("wasi_probe"), WasiConfig(args=["p", "args", "z"], stdout=out))
    assert result.exit_code == 0 and b"args=p|args|z" in out

    task = asyncio.ensure_future(host.run_async(guest_path("wasi_probe"), WasiConfig(args=["p", "forever"])))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


# --- the command line ---------------------------------------------------------------------


def _cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=120)


def test_cli_runs_a_command_and_passes_exit_status(guest_path) -> None:
    probe = str(guest_path("wasi_probe"))
    r = _cli("run", "--env", "A=1", probe, "env", "A")
    assert r.returncode == 0 and r.stdout.startswith(b"A=1\n")
    assert _cli("run", probe, "exit", "1").returncode == 1
    r = _cli("run", probe, "cat", stdin=b"through the cli")
    assert r.stdout == b"through the cli"


# Loaded only when a component or an option needs them (start-up time, issue 15).
_NOT_FOR_A_PLAIN_RUN = ("OpenSSL", "cryptography", "ssl", "urllib.request", "importlib.metadata", "wasi_tls_host.tls.config",
                        "wasi_tls_host.provenance.signatures", "ctypes.util", "concurrent.futures",
                        # the component runtime's (wasmtime's component API and its value conversions)
                        "wasmtime.component", "wasi_tls_host.runtime.abi", "wasi_tls_host.runtime.exports",
                        # the other subcommands' and TLS options' (loaded when used)
                        "subprocess", "tempfile", "getpass", "wasi_tls_host.tls.limits",
                        # WASI 0.3's surfaces, for a component that imports only 0.2
                        "wasi_tls_host.wasi.p3.cli", "wasi_tls_host.wasi.p3.filesystem",
                        # standard modules nothing on a run's path needs (records are plain classes)
                        "dataclasses", "inspect", "shutil", "random", "secrets", "ast")


def test_cli_run_of_a_plain_guest_loads_no_tls_and_collects_again(guest_path) -> None:
    """``run`` of a guest that imports no wasi:tls never loads pyOpenSSL, cryptography,
    urllib or importlib.metadata, nor on the core runtime wasmtime's component API, and the collector paused for start-up is as it was once
    ``main`` returns (nothing left frozen for a process that goes on)."""
    def loaded_after_run(guest: str, *args: str) -> str:
        check = f"""
import gc, sys
from wasi_tls_host.cli import main
status = main(["run", {str(guest_path(guest))!r}, *{args!r}])
loaded = [m for m in {_NOT_FOR_A_PLAIN_RUN!r} if m in sys.modules]
print(status, loaded, gc.isenabled(), gc.get_freeze_count())
"""
        r = subprocess.run([sys.executable, "-c", check], capture_output=True, timeout=120)
        return r.stdout.decode().strip().splitlines()[-1]

    assert loaded_after_run("wasi_probe", "exit", "0") == "0 [] True 0"
    # The check sees them when a guest imports wasi:tls (its usage message and status 2).
    assert "'OpenSSL'" in loaded_after_run("tls_probe")


@pytest.mark.parametrize("argv", [
    ["run", "g.wasm", "a", "--b"], ["-vv", "run", "--env", "A=1", "--require-digest", "sha256:00", "g.wasm"],
    ["run", "--bogus", "g.wasm"], ["-v", "run"], ["run", "--max-memory", "lots", "g.wasm"], ["run", "--help"],
])
def test_run_gets_a_parser_of_its_own_that_says_what_the_whole_one_says(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``run`` is parsed without the other subcommands' parsers (start-up time): the same
    values, the same help, and the same errors with the same usage line naming every
    subcommand."""
    from wasi_tls_host.cli.command import build_parser, chosen_command

    def outcome(parser: Any) -> tuple[Any, str, str]:
        try:
            result: Any = vars(parser.parse_args(argv))
        except SystemExit as e:
            result = e.code
        out, err = capsys.readouterr()
        return result, out, err

    assert chosen_command(argv) == "run"
    assert outcome(build_parser(only="run")) == outcome(build_parser())
    assert (chosen_command(["-h", "run"]), chosen_command(["--version"]), chosen_command(["-v", "cache", "info"])) == (None, None, "cache")


def test_the_executable_leaves_its_objects_frozen_for_the_interpreter_exit(guest_path, tmp_path) -> None:
    """``python -m wasi_tls_host.cli`` and the console script (``process_main``) freeze what
    exists once the command returns, so the interpreter's last collection does not walk
    every object of the start-up (about 70 ms of a cached run); exit handlers still run and
    the guest's status is the process's."""
    (tmp_path / "sitecustomize.py").write_text(  # its exit handler runs last (registered first)
        "import atexit, gc, sys\n"
        "atexit.register(lambda: sys.stderr.write(f'frozen at exit: {gc.get_freeze_count() > 0}\\n'))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    r = subprocess.run([*CLI, "run", str(guest_path("wasi_probe")), "exit", "1"], env=env, capture_output=True, timeout=120)
    assert (r.returncode, r.stderr.decode().strip().splitlines()[-1]) == (1, "frozen at exit: True")
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'wasi-tls-host = "wasi_tls_host.cli:process_main"' in pyproject


def test_cli_version_alone_loads_no_host() -> None:
    """``--version`` by itself prints what the parser's --version prints, without importing
    the host and every subcommand first."""
    check = """
import contextlib, io, sys
from wasi_tls_host.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = main(["--version"])
print(status, "wasi_tls_host.host" in sys.modules, out.getvalue().strip())
"""
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, timeout=120)
    status, host_loaded, text = r.stdout.decode().strip().split(" ", 2)
    assert (status, host_loaded) == ("0", "False") and text.startswith("wasi-tls-host ") and "OpenSSL" in text
    through_parser = _cli("-v", "--version")
    assert through_parser.returncode == 0 and through_parser.stdout.decode().strip() == text


def test_cli_inherit_env(guest_path) -> None:
    r = subprocess.run([*CLI, "run", "--inherit-env", str(guest_path("wasi_probe")), "env", "MARKER"],
                       env={**os.environ, "MARKER": "inherited"}, capture_output=True, timeout=120)
    assert r.stdout.startswith(b"MARKER=inherited\n")


def test_cli_trap_is_one_clear_line(guest_path) -> None:
    r = _cli("run", str(guest_path("wasi_probe")), "write-without-check")
    assert r.returncode == 1
    assert b"exceeds the permit of 0 bytes" in r.stderr
    assert b"error while executing" not in r.stderr and r.stderr.count(b"\n") == 2


def test_cli_invoke(guest_path) -> None:
    calc = str(guest_path("calc"))
    assert _cli("run", "--invoke", "add(2, 40)", calc).stdout == b"42\n"
    assert _cli("run", "--invoke", "checked-div(7, 0)", calc).stdout == b"err(7)\n"
    assert _cli("run", "--invoke", "checked-div(7, 2)", calc).stdout == b"ok(3)\n"
    r = _cli("run", "--invoke", "add(1)", calc)
    assert r.returncode == 2 and r.stderr == b"error: calling add: expected 2 arguments, got 1\n"
    r = _cli("run", "--invoke", "nope()", calc)
    assert r.returncode == 2 and b"no export named 'nope'" in r.stderr


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp, gp: str(tmp / "missing.wasm"), b"no such file"),
        (lambda tmp, gp: str(Path(__file__)), b"not a WebAssembly binary"),
        (lambda tmp, gp: _core_module(tmp), b"core WebAssembly module, not a component"),
        (lambda tmp, gp: str(gp("needs_missing_import")), b"needs an import this host does not provide"),
        (lambda tmp, gp: str(gp("calc")), b"does not export wasi:cli/run"),
    ],
)
def test_cli_load_errors_are_one_line(tmp_path, guest_path, make, message: bytes) -> None:
    r = _cli("run", make(tmp_path, guest_path))
    assert r.returncode == 2
    assert message in r.stderr
    assert r.stderr.count(b"\n") == 1, r.stderr  # one line, no traceback


def _core_module(tmp: Path) -> str:
    path = tmp / "core.wasm"
    path.write_bytes(b"\0asm\x01\0\0\0")
    return str(path)
