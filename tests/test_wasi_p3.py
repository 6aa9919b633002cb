"""WASI 0.3 cli, clocks and random on the core runtime, with real components: the
componentize-py guests ``wasi_probe_p3``/``hello_p3`` and the WAT guest ``stdio_p3`` (for
the precise misuses a language runtime does not produce).

The 0.3 surface shares the 0.2 engines: the WasiCtx's stdio (bytearray, callable, file,
``inherit``, ``whole_lines``), clocks and random sources. Bad input gets a clear error, the
host closes everything at exit (descriptors counted with the GC off) and nothing hangs:
every wait below is bounded by an interrupt.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import open_fds, without_gc
from wasi_tls_host import GuestError, Host, WasiConfig
from wasi_tls_host.cli import main as cli_main
from wasi_tls_host.runtime.limits import GuestLimits
from wasi_tls_host.runtime.scheduler import Scheduler
from wasi_tls_host.wasi.io import PipeInput

BOUND_S = 30.0  # no wait below may take longer: a hang is a failure, not a stuck run


@pytest.fixture(scope="module")
def p3_host() -> Iterator[Host]:
    with Host(runtime="core") as host:
        yield host


class Run:
    def __init__(self, exit_code: int, stdout: bytes, stderr: bytes, trap: str | None, error: str | None) -> None:
        self.exit_code, self.stdout, self.stderr, self.trap, self.error = exit_code, stdout, stderr, trap, error

    @property
    def out(self) -> str:
        return self.stdout.decode()


def run_probe(host: Host, guest: Path, *args: str, stdin: Any = None, **fields: Any) -> Run:
    out, err = bytearray(), bytearray()
    config = WasiConfig(args=["wasi_probe_p3", *args], stdin=stdin, stdout=out, stderr=err, **fields)
    with host.instantiate(guest, config) as g:
        timer = threading.Timer(BOUND_S, g.interrupt, args=("the test's bound ran out",))
        timer.start()
        try:
            result = g.run()
        finally:
            timer.cancel()
    return Run(result.exit_code, bytes(out), bytes(err), result.trap, result.error)


def call_bounded(host: Host, guest: Path, name: str, *args: Any, **config: Any) -> Any:
    """Call an export of the WAT guest; an interrupt ends it if it waits past the bound."""
    out, err = bytearray(), bytearray()
    config.setdefault("stdout", out)
    config.setdefault("stderr", err)
    with host.instantiate(guest, WasiConfig(**config)) as g:
        timer = threading.Timer(BOUND_S, g.interrupt, args=("the test's bound ran out",))
        timer.start()
        try:
            return g.call(name, *args), bytes(out)
        finally:
            timer.cancel()


@pytest.fixture(scope="module")
def probe(guest_path) -> Path:
    return guest_path("wasi_probe_p3")


@pytest.fixture(scope="module")
def stdio(guest_path) -> Path:
    return guest_path("stdio_p3")


# --- cli: environment, exit, stdio ----------------------------------------------------------


def test_hello_p3_writes_through_write_via_stream(p3_host: Host, guest_path) -> None:
    out = bytearray()
    result = p3_host.run(guest_path("hello_p3"), WasiConfig(args=["hello_p3", "a", "b c"], stdout=out))
    assert (result.exit_code, bytes(out)) == (0, b"hello ['hello_p3', 'a', 'b c']\n")


def test_arguments_environment_and_cwd(p3_host: Host, probe: Path) -> None:
    assert run_probe(p3_host, probe, "args", "x", "ÿ", "").out == "args=wasi_probe_p3|args|x|ÿ|\n"
    r = run_probe(p3_host, probe, "env", "A", "B", "C", env={"A": "1", "B": "two=2"}, cwd="/work")
    assert r.out == "A=1\nB=two=2\nC=<unset>\ncount=2 cwd=/work\n"


def test_exact_bytes_through_stdout_and_stderr(p3_host: Host, probe: Path) -> None:
    r = run_probe(p3_host, probe, "bytes")
    assert (r.exit_code, r.stdout, r.stderr) == (0, bytes(range(256)), b"\xff\xfeerr\x00")


@pytest.mark.parametrize("size", [0, 5, 65536, 1_000_003])
def test_stdin_to_stdout_through_streams(p3_host: Host, probe: Path, size: int) -> None:
    data = bytes(range(251)) * (size // 251) + bytes(size % 251)
    r = run_probe(p3_host, probe, "cat", "40000", stdin=data)
    assert r.exit_code == 0, r.trap
    assert r.stdout == data
    assert r.stderr == f"copied {size} read=Ok(value=None) write=Ok(value=None)\n".encode()


def test_closed_stdin_reads_as_its_end(p3_host: Host, probe: Path) -> None:
    assert run_probe(p3_host, probe, "stdin-closed").out == "read=b'' dropped=True then=b'' result=Ok(value=None)\n"


def test_one_stdout_engine_serves_both_versions_in_order(p3_host: Host, probe: Path) -> None:
    assert run_probe(p3_host, probe, "mixed").out == "one (0.2)\ntwo (0.3)\nthree (0.2)\n"


def test_output_goes_to_callables_and_files_as_configured(p3_host: Host, probe: Path, tmp_path: Path) -> None:
    chunks: list[bytes] = []
    with open(tmp_path / "err", "wb") as err_file:
        result = p3_host.run(probe, WasiConfig(args=["p", "bytes"], stdout=chunks.append, stderr=err_file))
    assert result.exit_code == 0
    assert b"".join(chunks) == bytes(range(256))
    assert (tmp_path / "err").read_bytes() == b"\xff\xfeerr\x00"


def test_whole_lines_holds_a_partial_line_written_through_a_stream(probe: Path) -> None:
    # Inherited stdout with whole_lines (what --workers uses): the pipe gets the line once,
    # whole, though the guest wrote its halves 200 ms apart.
    code = ("import sys; from wasi_tls_host import Host, WasiConfig; "
            f"r = Host().run({str(probe)!r}, WasiConfig(args=['p', 'parts'], stdout='inherit', whole_lines=True)); "
            "sys.exit(r.exit_code)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = proc.stdout.read1(4096)
        rest, err = proc.communicate(timeout=BOUND_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert (first, rest) == (b"first half, second half\n", b"")


@pytest.mark.parametrize("args, code", [(("exit", "ok"), 0), (("exit", "err"), 1), (("exit-code", "7"), 7)])
def test_exit_statuses(p3_host: Host, probe: Path, args: tuple[str, ...], code: int) -> None:
    r = run_probe(p3_host, probe, *args)
    assert (r.exit_code, r.out, r.trap) == (code, "before exit\n", None)


def test_run_returning_err_is_status_1_and_says_so(p3_host: Host, probe: Path) -> None:
    r = run_probe(p3_host, probe, "err")
    assert (r.exit_code, r.out, r.error) == (1, "returning an error\n", "the guest's wasi:cli/run returned an error")


def test_a_trap_is_status_1_with_its_cause(p3_host: Host, probe: Path) -> None:
    r = run_probe(p3_host, probe, "fail")
    assert r.exit_code == 1 and "unreachable" in (r.trap or "")
    assert b"RuntimeError: guest failure on purpose" in r.stderr


def test_terminals_only_for_inherited_ttys(p3_host: Host, probe: Path) -> None:
    assert run_probe(p3_host, probe, "terminal").out == "stdin=False stdout=False stderr=False\n"


# --- what the guest wrote before it returned or exited ------------------------------------------


@pytest.mark.parametrize("args, code, out", [
    (("exit-undropped", "4"), 4, "written before exit\n"),
    (("return-undropped",), 0, "written, stream left open\n"),
    (("drop-future",), 0, "future dropped, bytes written\n"),
])
def test_bytes_written_before_the_end_reach_stdout(p3_host: Host, probe: Path, args: tuple[str, ...], code: int, out: str) -> None:
    # Each writes its last bytes into a read the host posted earlier: the host holds them
    # when the guest exits (or returns with the stream open), and writes them out.
    r = run_probe(p3_host, probe, *args)
    assert (r.exit_code, r.out, r.trap) == (code, out, None)


def test_exit_with_a_write_in_flight(p3_host: Host, stdio: Path) -> None:
    with p3_host.instantiate(stdio, WasiConfig(stdout=(out := bytearray()))) as g:
        with pytest.raises(Exception, match="guest exited with code 3"):
            g.call("exit-writing", 1000)
        assert g.state.exit_code == 3
    assert out == b"x" * 2000


def test_cli_reports_exit_and_errors_for_0_3_guests(probe: Path, stdio: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["run", str(probe), "exit-code", "9"]) == 9
    assert cli_main(["run", str(probe), "err"]) == 1
    assert "error: the guest's wasi:cli/run returned an error" in capsys.readouterr().err
    assert cli_main(["run", "--invoke", "exit-writing(3)", str(stdio)]) == 3  # --invoke too
    assert cli_main(["run", "--invoke", "wait-for(20)", str(stdio)]) == 0  # an async export
    assert capsys.readouterr().out.endswith("20\n")


def test_component_runtime_refuses_a_0_3_guest_in_one_line(stdio: Path) -> None:
    with Host(runtime="component") as host, pytest.raises(GuestError) as info:
        host.instantiate(stdio)
    assert "async ABI (WASI 0.3 guests do), which only the core runtime runs" in str(info.value)
    assert "--runtime core" in str(info.value)


# --- stdin: waits that sleep, ends that arrive ------------------------------------------------


def _fed_pipe(data: bytes) -> PipeInput:
    pipe = PipeInput()
    pipe.feed(data)
    return pipe


def test_reading_exactly_what_was_there_then_dropping_ends_at_once(p3_host: Host, stdio: Path) -> None:
    # stdin stays open: the host's producer, having filled the guest's whole buffer, must
    # wait for the guest's next read or drop (not for more input) and end the future.
    pipe = _fed_pipe(b"hello")
    value, _ = call_bounded(p3_host, stdio, "read-drop", 5, stdin=lambda: pipe)
    assert value == 5


def test_dropping_stdin_after_a_cancelled_read_ends_at_once(p3_host: Host, stdio: Path) -> None:
    pipe = PipeInput()  # open, empty
    started = time.monotonic()
    value, _ = call_bounded(p3_host, stdio, "cancel-drop", stdin=lambda: pipe)
    assert value == 0  # the stdin future: ok
    assert time.monotonic() - started < BOUND_S


@pytest.fixture
def scheduler_polls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the scheduler's polls of the kernel: a wait is a few, a spinning one thousands."""
    polls = [0]
    original = Scheduler.poll

    def counting(self: Scheduler, block: bool) -> bool:
        polls[0] += 1
        return original(self, block)

    monkeypatch.setattr(Scheduler, "poll", counting)
    return polls


def test_waiting_for_more_stdin_sleeps(p3_host: Host, probe: Path, scheduler_polls: list[int]) -> None:
    # The guest reads what is there, then waits 0.5 s for more (its end).
    pipe = _fed_pipe(b"abc")
    threading.Timer(0.5, pipe.close_writer).start()
    r = run_probe(p3_host, probe, "cat", stdin=lambda: pipe)
    assert (r.exit_code, r.stdout) == (0, b"abc")
    assert scheduler_polls[0] < 50, f"{scheduler_polls[0]} polls for one wait"


def test_waiting_until_stdin_is_readable_sleeps(p3_host: Host, stdio: Path, scheduler_polls: list[int]) -> None:
    # A zero-length read after the guest took exactly what was there: the wakeup that
    # announced those bytes must not wake this wait (it spun until the next input).
    pipe = _fed_pipe(b"abc")
    threading.Timer(0.5, pipe.close_writer).start()
    value, _ = call_bounded(p3_host, stdio, "read-then-wait", 3, stdin=lambda: pipe)
    assert value == 0  # COMPLETED: the end of stdin can be read
    assert scheduler_polls[0] < 50, f"{scheduler_polls[0]} polls for one wait"


def test_stdin_and_a_pipe_of_the_host_process(stdio: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", "run", "--invoke", "cat()", str(stdio)],
                          input=b"piped bytes", capture_output=True, timeout=BOUND_S * 4)
    assert (proc.returncode, proc.stdout) == (0, b"piped bytes0\n"), proc.stderr


def test_stdin_stream_handed_to_stdout_is_copied_in_the_host(p3_host: Host, stdio: Path) -> None:
    value, out = call_bounded(p3_host, stdio, "cat", stdin=b"z" * 200_000)
    assert (value, out) == (0, b"z" * 200_000)


def test_returning_with_stdin_flowing_to_stdout_ends_the_run(p3_host: Host, stdio: Path) -> None:
    # stdin (open, never ended) is handed to stdout and the guest returns: what stdin had is
    # copied, and the run ends without waiting for stdin's end.
    value, out = call_bounded(p3_host, stdio, "cat-return", stdin=lambda: _fed_pipe(b"abc"))
    assert (value, out) == (None, b"abc")


# --- stdout failures -----------------------------------------------------------------------------


def test_write_after_stdout_failed_gets_dropped(probe: Path, stdio: Path) -> None:
    # stdout is a pipe whose reader is gone: the write that failed took nothing, the future
    # says `pipe`, the host gives up the stream, and a later write delivers nothing
    # (componentize-py: 0 bytes, reader_dropped).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", "run", str(probe), "write-after-error"],
                              stdout=write_end, stderr=subprocess.PIPE, timeout=BOUND_S * 4)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, b"sent=False result=ErrorCode.PIPE again=0 dropped=True\n")
    # The WAT guest: its future (1 + pipe = 3), its write's result (DROPPED: the host gave the
    # stream up), so no second write (15).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        code = (f"from wasi_tls_host import Host, WasiConfig; g = Host().instantiate({str(stdio)!r}, "
                "WasiConfig(stdout='inherit')); import sys; sys.stderr.write(str(g.call('write-twice', 70000))); g.close()")
        proc = subprocess.run([sys.executable, "-c", code], stdout=write_end, stderr=subprocess.PIPE, timeout=BOUND_S * 4)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, str(3 | 1 << 8 | 15 << 16).encode())


def test_a_failing_sink_is_an_io_error_for_the_guest(p3_host: Host, stdio: Path) -> None:
    def broken(data: bytes) -> None:
        raise OSError(5, "Input/output error")

    value, _ = call_bounded(p3_host, stdio, "write-twice", 10, stdout=broken)
    assert value == 1 | 1 << 8 | 15 << 16  # future: 1 + io; the write: DROPPED; none after it


def test_dropping_a_stream_with_a_write_pending_traps_clearly(p3_host: Host, stdio: Path) -> None:
    with p3_host.instantiate(stdio, WasiConfig(stdout=bytearray())) as g:
        with pytest.raises(Exception, match="cannot drop busy stream"):
            g.call("drop-busy", 10)


def test_deadlock_is_reported_not_waited_on(p3_host: Host, stdio: Path) -> None:
    # write-twice waits for stdout's future with the stream still open: nothing can ever
    # resolve it (the future ends with the stream), and the host says so.
    with p3_host.instantiate(stdio, WasiConfig(stdout=bytearray())) as g:
        with pytest.raises(Exception, match="deadlock detected"):
            g.call("write-twice", 10)


# --- descriptors ------------------------------------------------------------------------------


def test_no_descriptor_outlives_its_guest(p3_host: Host, probe: Path, stdio: Path, no_gc: None) -> None:
    def misuse_all() -> None:
        run_probe(p3_host, probe, "exit-undropped", "2", stdin=lambda: _fed_pipe(b"unread"))
        run_probe(p3_host, probe, "return-undropped")
        run_probe(p3_host, probe, "cat", stdin=b"abc")
        for name, args in [("exit-writing", (100,)), ("exit-reading", ()), ("drop-busy", (5,)), ("cancel-drop", ())]:
            with p3_host.instantiate(stdio, WasiConfig(stdin=lambda: PipeInput(), stdout=bytearray())) as g:
                try:
                    g.call(name, *args)
                except Exception:
                    pass

    misuse_all()  # the compiled modules' cache files are opened once, here
    before = open_fds()
    for _ in range(3):
        misuse_all()
    assert open_fds() == before


# --- clocks and random -----------------------------------------------------------------------


def test_clocks(p3_host: Host, probe: Path) -> None:
    assert run_probe(p3_host, probe, "clocks").out == (
        "monotonic_ok=True\nmonotonic_resolution_ok=True\nwall_ok=True nanos_ok=True\nwall_resolution_ok=True\n")


def test_wait_for_and_wait_until_sleep_at_least_as_long(p3_host: Host, probe: Path) -> None:
    started = time.monotonic()
    r = run_probe(p3_host, probe, "sleep", "40")
    assert r.out == "slept_enough=True both_enough=True\n"
    assert time.monotonic() - started >= 0.08


def test_async_clock_export_waits_on_the_scheduler(p3_host: Host, stdio: Path) -> None:
    started = time.monotonic()
    assert call_bounded(p3_host, stdio, "wait-for", 50)[0] == 50
    assert time.monotonic() - started >= 0.05
    assert call_bounded(p3_host, stdio, "now")[0] > 0


def test_a_wait_for_the_longest_duration_ends_at_the_timeout(p3_host: Host, probe: Path) -> None:
    started = time.monotonic()
    r = run_probe(p3_host, probe, "forever", limits=GuestLimits(timeout=0.3))
    assert r.exit_code == 1 and "ran out of time" in (r.trap or ""), r.trap
    assert 0.3 <= time.monotonic() - started < BOUND_S


def test_random(p3_host: Host, probe: Path) -> None:
    assert run_probe(p3_host, probe, "random").out == (
        "len=32 distinct=True\nu64_distinct=True\ninsecure_len=17 zero=0\ninsecure_u64_distinct=True\n"
        "seed_stable=True\nbig=1048576\n")

