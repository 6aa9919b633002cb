"""Limits on guests: memory and tables (StoreLimits), wall-clock time and CPU (epoch
interruption), open sockets. Each limit is met by a guest built to meet it, gives a clear
trap or error, and leaves the host and later instances working.

Guests: ``wat/limits.wat`` (spin, memory.grow and table.grow loops), ``wat/spin_command.wat``
(a wasi:cli/run that never returns), ``sockets_probe`` (componentize-py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest
from wasmtime import WasmtimeError

from conftest import free_port
from wasi_tls_host import GuestError, Host, WasiConfig
from wasi_tls_host.cli import main as cli_main
from wasi_tls_host.runtime.limits import TICK, GuestLimits
from wasi_tls_host.wasi.io import start_reader_thread
from wasi_tls_host.wasi.sockets import NetworkPolicy

pytestmark = pytest.mark.timeout(180)

PAGE = 65536


def limits(**fields) -> WasiConfig:
    return WasiConfig(limits=GuestLimits(**fields))


def still_works(host: Host, guest_path) -> None:
    with host.instantiate(guest_path("limits")) as g:
        assert g.call("add", 20, 22) == 42


def test_spinning_guest_stops_at_its_timeout(host: Host, guest_path) -> None:
    component = host.load(guest_path("limits"))
    start = time.monotonic()  # the deadline counts from instantiation (a loaded machine may take a while there)
    with host.instantiate(component, limits(timeout=0.3)) as g:
        with pytest.raises(WasmtimeError, match=r"ran out of time: its limit of 0.3 s of wall-clock time \(timeout\)"):
            g.call("spin")
        assert time.monotonic() - start >= 0.3  # never before its deadline
    still_works(host, guest_path)


def test_embedder_interrupt_stops_a_spinning_guest(host: Host, guest_path) -> None:
    with host.instantiate(guest_path("limits")) as g:
        stopper = threading.Timer(0.2, g.interrupt, ["stopped by the test"])
        stopper.start()
        with pytest.raises(WasmtimeError, match="stopped by the test"):
            g.call("spin")
        stopper.join()
    still_works(host, guest_path)


async def test_cancelling_run_async_stops_a_spinning_command(guest_path) -> None:
    host = Host()
    task = asyncio.ensure_future(host.run_async(guest_path("spin_command")))
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The worker unwinds (the guest traps) and its store is closed: no guest is left alive.
    assert host.ticker is not None
    deadline = time.monotonic() + 5
    while host.ticker._guards and time.monotonic() < deadline:
        await asyncio.sleep(TICK)
    assert not host.ticker._guards
    result = await host.run_async(guest_path("spin_command"), limits(timeout=0.2))
    assert result.exit_code == 1 and "ran out of time" in (result.trap_cause or ""), result
    await asyncio.to_thread(still_works, host, guest_path)


def test_timeout_also_ends_a_guest_that_waits(run_guest) -> None:
    # drain-stdin waits on a stdin that never gets data (a pipe nobody writes): a stuck peer.
    read_end, write_end = os.pipe()
    try:
        start = time.monotonic()
        r = run_guest("sockets_probe", "drain-stdin", stdin=lambda: start_reader_thread(read_end),
                      limits=GuestLimits(timeout=0.3))
        assert r.exit_code == 1
        assert "ran out of time" in (r.trap or ""), (r.trap, r.out, r.err)
        assert time.monotonic() - start >= 0.3
    finally:
        os.close(write_end)  # the reader thread sees EOF and ends
        os.close(read_end)


def test_memory_grow_stops_at_the_limit(host: Host, guest_path) -> None:
    with host.instantiate(guest_path("limits"), limits(max_memory=4 << 20)) as g:
        pages = g.call("grow")
        # One page to start with, then steps of 16 pages while they fit in 4 MiB (64 pages).
        assert pages == 48
        assert g.call("add", 1, 2) == 3  # memory.grow failing is not a trap
    with host.instantiate(guest_path("limits"), limits(max_memory=None)) as g:
        assert g.call("add", 1, 1) == 2


def test_table_grow_stops_at_the_limit(host: Host, guest_path) -> None:
    with host.instantiate(guest_path("limits"), limits(max_table_elements=5000)) as g:
        assert g.call("grow-table") == 4096  # 1 + 4 x 1024 fit, the fifth step does not


def test_instantiation_that_needs_more_memory_than_allowed_is_refused(host: Host, guest_path) -> None:
    with pytest.raises(GuestError, match=r"needs more memory than its limit of 1000 bytes \(max_memory, --max-memory\)"):
        host.instantiate(guest_path("limits"), limits(max_memory=1000))
    with pytest.raises(GuestError, match=r"larger tables than its limit of 0 elements"):
        host.instantiate(guest_path("limits"), limits(max_table_elements=0))
    still_works(host, guest_path)


def test_componentize_py_guest_under_a_small_memory_limit_is_refused_clearly(host: Host, guest_path) -> None:
    with pytest.raises(GuestError, match=r"needs more memory than its limit of 1 MiB"):
        host.instantiate(guest_path("hello"), limits(max_memory=1 << 20))


def test_socket_limit(run_guest) -> None:
    r = run_guest("sockets_probe", "hoard", "50", limits=GuestLimits(max_sockets=5))
    assert r.exit_code == 0, r.out + r.err
    assert r.out.splitlines() == ["holding 5 then new-socket-limit", "after closing: created one more"]
    r = run_guest("sockets_probe", "hoard", "50")
    assert r.out.splitlines()[0] == "holding 50"


def test_accept_past_the_socket_limit_refuses_the_connection(run_guest) -> None:
    port = free_port()
    result: dict[str, object] = {}
    policy = NetworkPolicy().allow_listen(f"127.0.0.1:{port}")

    def serve() -> None:
        # The listener is one socket: with a limit of 3, two clients fit.
        result["run"] = run_guest("sockets_probe", "echo-server", "127.0.0.1", str(port), "3",
                                  network=policy, limits=GuestLimits(max_sockets=3))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    clients: list[socket.socket] = []
    try:  # the clients are closed whether or not an assertion fails
        deadline = time.monotonic() + 60  # bounds a hang only (the guest starts in ~1 s)
        while not clients:
            try:
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        for _ in range(2):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        # The refused client's connection was closed by the host, not left hanging.
        assert clients[2].recv(10) == b""
        # The server keeps serving: once the first two leave, a new client fits.
        for c in clients[:2]:
            c.sendall(b"ping")
            assert c.recv(10) == b"ping"
            c.close()
        clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        clients[3].sendall(b"pong")
        assert clients[3].recv(10) == b"pong"
        clients[3].close()
        thread.join(60)
        assert not thread.is_alive()
        run = result["run"]
        assert run.exit_code == 0, run.out + run.err  # type: ignore[attr-defined]
        assert "accept error new-socket-limit" in run.out, run.out  # type: ignore[attr-defined]
    finally:
        for c in clients:
            c.close()


def test_cli_limit_flags(guest_path, capsys: pytest.CaptureFixture[str]) -> None:
    wasm = str(guest_path("limits"))
    assert cli_main(["run", "--timeout", "300ms", "--invoke", "spin()", wasm]) == 1
    err = capsys.readouterr().err
    assert "the guest ran out of time: its limit of 0.3 s of wall-clock time (timeout) has passed" in err, err
    assert cli_main(["run", "--max-memory", "2M", "--invoke", "grow()", wasm]) == 0
    assert capsys.readouterr().out.strip() == "16"
    assert cli_main(["run", "--max-table-elements", "2048", "--invoke", "grow-table()", wasm]) == 0
    assert capsys.readouterr().out.strip() == "1024"
    # "none" lifts a limit: the default 2 GiB, then all of a 32-bit memory (reserved, untouched).
    assert cli_main(["run", "--invoke", "grow()", wasm]) == 0
    assert capsys.readouterr().out.strip() == str((2 << 30) // 65536 - 16)
    assert cli_main(["run", "--max-memory", "none", "--timeout", "None", "--invoke", "grow()", wasm]) == 0
    assert capsys.readouterr().out.strip() == str(65536 - 16)
    for bad in (["--max-memory", "lots"], ["--timeout=-1s"], ["--timeout", "0"], ["--max-sockets", "many"]):
        with pytest.raises(SystemExit):
            cli_main(["run", *bad, wasm])
        err = capsys.readouterr().err
        assert "want a" in err or "must be positive" in err, err


def test_epoch_ticker_runs_only_while_guests_are_alive(guest_path) -> None:
    host = Host()
    assert host.ticker is not None and host.ticker._thread is None
    with host.instantiate(guest_path("limits")) as g:
        thread = host.ticker._thread
        assert thread is not None and thread.is_alive()
        assert g.call("add", 1, 1) == 2
    assert not thread.is_alive() and host.ticker._thread is None  # closing the last guest ends it
    with host.instantiate(guest_path("limits")) as g:  # and starts again for the next one
        assert host.ticker._thread is not None


def test_embedder_engine_without_epochs_still_runs_guests(guest_path) -> None:
    from wasmtime import Engine

    host = Host(Engine())
    assert host.ticker is None
    with host.instantiate(guest_path("limits")) as g:
        assert g.call("add", 2, 2) == 4


@pytest.mark.parametrize("invoke", [True, False], ids=["invoke-spin", "spinning-command"])
def test_ctrl_c_stops_a_spinning_guest_in_the_cli(guest_path, invoke: bool) -> None:
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "wasi_tls_host.cli", "run"]
    cmd += ["--invoke", "spin()", str(guest_path("limits"))] if invoke else [str(guest_path("spin_command"))]
    # SIGINT as a terminal would send it (a non-interactive parent may have it ignored).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Wait until it spins: more CPU time than starting up takes (bounded).
        deadline = time.monotonic() + 60
        while cpu_seconds(proc.pid) < 2.0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
