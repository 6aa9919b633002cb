"""The hostile WASI 0.3 guests: WAT components that misuse wasi:sockets@0.3.0 and
wasi:filesystem@0.3.0 on purpose, each export one misuse.

The hostile suite is every module marked ``hostile`` (``pytest -m hostile``): the Canonical
ABI (``test_runtime_hostile.py``, ``guest_examples/wat/hostile.wat``), the async ABI
(``test_async_hostile.py``, ``async_hostile.wat``), and here the WASI 0.3 surfaces
(``sockets_p3_hostile.wat``, ``fs_hostile_p3.wat``).

``sockets_p3_hostile`` binds outside the policy, asks for a huge backlog, reads and writes on
connections the peer reset, leaves streams undropped, drops a listen stream with a client
waiting. ``fs_hostile_p3`` opens ``..`` and absolute paths out of its preopen, drops
descriptors, streams and futures in every order, leaves everything open. Each misuse ends
in the error code WASI specifies, the same answer as the wasmtime CLI gives (checked here
against it, export by export; the one deliberate difference is named in
``test_sockets_guest_answers_as_on_the_wasmtime_cli``), or in the Canonical ABI's trap; and
the host closes everything the guest held (descriptors counted with the garbage collector
off).
"""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wasmtime import WasmtimeError

from conftest import free_port, open_fds
from devtools.conformance import precompiled_for_wasmtime, wasmtime_binary
from sockets_util import TIMEOUT, ServerThread, eof_or_reset, loopback_policy
from wasi_tls_host import Host, NetworkPolicy, WasiConfig
from wasi_tls_host.wasi.filesystem import Preopen

pytestmark = pytest.mark.hostile

ACCESS_DENIED, CONNECTION_BROKEN, CONNECTION_RESET, OK = 0, 10, 11, 100


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    with Host(runtime="core") as host:  # the component runtime has no async ABI
        yield host


# The wasmtime CLI runs these guests' sync exports (which wait inside waitable-set.wait)
# only with the stackful async feature.
CLI_FLAGS = ("-Wcomponent-model-async,component-model-async-stackful",)


def on_wasmtime_cli(wasm: Path, invoke: str, *options: str) -> str:
    """``wasmtime run --invoke`` of one export: its printed answer, or the trap's last words."""
    cmd = [str(wasmtime_binary()), "run", "--allow-precompiled", *CLI_FLAGS, *options, "--invoke", invoke,
           str(precompiled_for_wasmtime(wasm, *CLI_FLAGS))]
    proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    if proc.returncode == 0:
        return proc.stdout.decode().strip()
    return "trap: " + proc.stderr.decode(errors="replace").split("Stack backtrace:")[0]


# --- wasi:sockets@0.3.0 ---------------------------------------------------------------------

@pytest.fixture
def sockets_guest(host: Host, guest_path):
    """sockets_guest(policy) -> a new instance of the sockets_guest guest (closed after the test)."""
    wasm = guest_path("sockets_p3_hostile")
    host.load(wasm)  # its compiled files are mapped for good: not the guest's descriptors
    made = []

    def make(policy: NetworkPolicy | None = None):
        guest = host.instantiate(wasm, WasiConfig(network=policy if policy is not None else loopback_policy()))
        made.append(guest)
        return guest

    yield make
    for guest in made:
        guest.close()


def reset(conn: socket.socket) -> None:
    """Close with RST instead of FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_bind_outside_the_policy_is_access_denied_and_logged(sockets_guest, caplog) -> None:
    allowed, other = free_port(), free_port()
    guest = sockets_guest(NetworkPolicy().allow_listen(f"127.0.0.1:{allowed}"))
    with caplog.at_level(logging.WARNING, logger="wasi_tls_host.sockets"):
        assert guest.call("bind", other) == ACCESS_DENIED
    assert f"network policy denied TCP bind on 127.0.0.1:{other}" in caplog.text
    assert guest.call("bind", allowed) == OK


def test_no_policy_denies_every_bind(sockets_guest) -> None:
    assert sockets_guest(NetworkPolicy()).call("bind", free_port()) == ACCESS_DENIED


def test_a_huge_backlog_is_clamped_not_refused(sockets_guest) -> None:
    assert sockets_guest().call("huge-backlog", free_port()) == (OK << 8) | OK


def test_dropping_the_listen_stream_and_socket_frees_the_port_before_the_next_call(sockets_guest) -> None:
    assert sockets_guest().call("rebind", free_port()) == OK


def test_the_listen_stream_keeps_the_listener_open_after_the_socket_is_dropped(sockets_guest) -> None:
    assert sockets_guest().call("accept-after-drop", free_port()) == 1


def test_receive_after_a_peer_reset_ends_the_stream_with_connection_reset(sockets_guest) -> None:
    def send_then_reset(conn: socket.socket) -> None:
        assert conn.recv(1) == b"!"  # the guest is connected
        conn.sendall(b"x" * 1000)
        reset(conn)

    peer = ServerThread(send_then_reset)
    result = sockets_guest().call("receive-reset", peer.port)
    peer.close()
    assert result & 0xFF == CONNECTION_RESET
    assert result >> 8 <= 1000  # what arrived before the reset (the kernel may drop it)


def test_dropping_the_receive_stream_mid_transfer_ends_it_with_ok(sockets_guest, no_gc) -> None:
    """The guest stops reading while the peer still sends: the receive side shuts down, the
    future says ok, and the socket closes with its handle."""
    outcome: list[str] = []

    def flood(conn: socket.socket) -> None:
        try:
            while True:
                conn.sendall(b"x" * 65536)
        except OSError as e:  # the guest's side is closed: a reset or a broken pipe
            outcome.append(type(e).__name__)

    before = open_fds()
    peer = ServerThread(flood)
    guest = sockets_guest()
    assert guest.call("receive-drop", peer.port) == OK
    peer.close()
    assert outcome and outcome[0] in ("ConnectionResetError", "BrokenPipeError")
    guest.close()
    assert open_fds() == before


def test_send_to_a_peer_that_reset_ends_with_an_error_not_a_hang(sockets_guest) -> None:
    def reset_on_data(conn: socket.socket) -> None:
        assert conn.recv(1)
        reset(conn)

    peer = ServerThread(reset_on_data)
    result = sockets_guest().call("send-reset", peer.port)
    peer.close()
    assert result in (CONNECTION_RESET, CONNECTION_BROKEN)


def test_streams_left_undropped_are_closed_with_the_guest(sockets_guest, host, no_gc) -> None:
    received: list[int] = []

    def read_until_eof(conn: socket.socket) -> None:
        total = 0
        while chunk := conn.recv(65536):
            total += len(chunk)
        received.append(total)

    before = open_fds()
    peer = ServerThread(read_until_eof)
    guest = sockets_guest()
    assert guest.call("leave-streams", peer.port) == OK
    assert guest.state.scheduler.pending > 0  # its receiver and sender are still at work
    guest.close()
    peer.close()
    assert received == [1000]  # the peer got what was written, then the end
    assert open_fds() == before


def test_a_listen_stream_dropped_with_a_client_waiting_refuses_the_client(sockets_guest, no_gc) -> None:
    """The host accepts a connection only for a guest that reads: the client waiting in the
    backlog when the stream and socket are dropped is refused, never held by the host."""
    before = open_fds()
    port = free_port()
    guest = sockets_guest()
    assert guest.call("listen-and-read", port) == OK
    client = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)  # waits in the backlog
    assert guest.call("cancel-and-drop") == 0  # the cancelled read had delivered no socket
    assert eof_or_reset(client) == b""
    client.close()
    assert guest.state.scheduler.pending == 0
    with socket.create_server(("127.0.0.1", port)):
        pass  # the port is free
    guest.close()
    assert open_fds() == before




def test_sockets_guest_answers_as_on_the_wasmtime_cli(sockets_guest, guest_path) -> None:
    """With the network granted (``-Sinherit-network``), each misuse gets the CLI's answer.
    Without it the CLI refuses ``create`` itself (access-denied); this host's policy is per
    address and operation, so ``create`` (which touches no network) succeeds and the denial
    comes, with the same code and a log line naming the address, at ``bind``/``connect``/
    ``listen``: the one deliberate difference."""
    wasm = guest_path("sockets_p3_hostile")
    granted = "-Sp3,inherit-network"
    for export in ("create", "bind", "huge-backlog", "rebind", "accept-after-drop"):
        args = () if export == "create" else (free_port(),)
        invoke = f"{export}({', '.join(map(str, args))})"
        ours = sockets_guest(NetworkPolicy.inherit()).call(export, *args)
        assert (export, str(ours)) == (export, on_wasmtime_cli(wasm, invoke, granted))

    def send_then_reset(conn: socket.socket) -> None:
        assert conn.recv(1) == b"!"
        reset(conn)

    answers = []
    for run in (lambda port: sockets_guest(NetworkPolicy.inherit()).call("receive-reset", port),
                lambda port: int(on_wasmtime_cli(wasm, f"receive-reset({port})", granted))):
        peer = ServerThread(send_then_reset)
        answers.append(run(peer.port))
        peer.close()
    assert answers == [CONNECTION_RESET, CONNECTION_RESET]  # no bytes, then the reset

    assert on_wasmtime_cli(wasm, "create()", "-Sp3") == str(ACCESS_DENIED)
    assert sockets_guest(NetworkPolicy()).call("create") == OK
    assert sockets_guest(NetworkPolicy()).call("bind", free_port()) == ACCESS_DENIED


# --- wasi:filesystem@0.3.0 ------------------------------------------------------------------

NOT_PERMITTED = 30  # error-code's case index


@pytest.fixture
def hostile_dir(tmp_path: Path) -> Path:
    (tmp_path / "data.txt").write_bytes(bytes(range(256)) * 20)  # 5120 bytes
    (tmp_path / "sub").mkdir()
    return tmp_path


@pytest.fixture
def fs_guest(host: Host, guest_path, hostile_dir: Path):
    """fs_guest("export", *args): call one export in a fresh instance, closed afterwards."""

    def call(export: str, *args: Any) -> Any:
        with host.instantiate(guest_path("fs_hostile_p3"), WasiConfig(preopens=[Preopen(str(hostile_dir), "/d")])) as g:
            return g.call(export, *args)

    return call


@pytest.mark.parametrize(("export", "answer"), [
    ("open-dotdot", 1000 + NOT_PERMITTED),
    ("open-absolute", 1000 + NOT_PERMITTED),
    ("read-after-drop", 5120),            # the stream outlives its descriptor; the future says ok
    ("drop-stream-early", 0),             # ok: the reader gave up, nothing failed
    ("drop-future-first", 5120),          # the stream does not need its future
    ("write-cancel-mid-copy", 0),         # what was written before the cancel stays; ok
    ("list-directory", 2),                # data.txt, sub: records with strings, 3 at a time
    ("list-drop-early", 0),
])
def test_misuse_gets_its_defined_answer_and_leaks_nothing(fs_guest, export: str, answer: int, no_gc: None) -> None:
    fs_guest("open-dotdot")  # warm up: the host's own caches
    baseline = open_fds()
    assert fs_guest(export) == answer
    assert open_fds() == baseline
    assert fs_guest("read-after-drop") == 5120  # the host is unharmed


@pytest.mark.parametrize(("export", "cause"), [
    ("write-drop-mid-copy", "cannot drop busy stream"),  # the Canonical ABI: cancel a copy first
    ("use-after-drop", "unknown handle index"),
])
def test_misuse_that_must_trap_traps_and_leaks_nothing(fs_guest, export: str, cause: str, no_gc: None) -> None:
    fs_guest("open-dotdot")
    baseline = open_fds()
    with pytest.raises(WasmtimeError, match=cause):
        fs_guest(export)
    assert open_fds() == baseline  # the write pump's descriptor too, though it never ran
    assert fs_guest("read-after-drop") == 5120


def test_streams_and_descriptors_left_open_are_closed_with_the_instance(fs_guest, hostile_dir: Path, no_gc: None) -> None:
    fs_guest("open-dotdot")
    baseline = open_fds()
    assert fs_guest("leave-open", 30) == 30  # each: a descriptor, read, write and directory streams
    assert open_fds() == baseline
    assert (hostile_dir / "out.bin").exists()
    assert fs_guest("list-directory") == 3


def test_fs_guest_answers_as_on_the_wasmtime_cli(host: Host, guest_path, tmp_path: Path) -> None:
    """Each export in a fresh directory, here and on the CLI: the same answer, or a trap
    with the same cause."""
    trap_causes = {"write-drop-mid-copy": "cannot drop busy stream", "use-after-drop": "unknown handle index"}
    wasm = guest_path("fs_hostile_p3")
    exports = ("open-dotdot", "open-absolute", "read-after-drop", "drop-stream-early", "drop-future-first",
               "write-cancel-mid-copy", "list-directory", "list-drop-early", "write-drop-mid-copy", "use-after-drop")
    for export in exports:
        ours_dir, theirs_dir = tmp_path / f"{export}-here", tmp_path / f"{export}-cli"
        for d in (ours_dir, theirs_dir):
            d.mkdir()
            (d / "data.txt").write_bytes(bytes(range(256)) * 20)
            (d / "sub").mkdir()
        try:
            with host.instantiate(wasm, WasiConfig(preopens=[Preopen(str(ours_dir), "/d")])) as guest:
                ours = str(guest.call(export))
        except WasmtimeError as e:
            ours = f"trap: {e}"
        theirs = on_wasmtime_cli(wasm, f"{export}()", "-Sp3", "--dir", f"{theirs_dir}::/d")
        if export in trap_causes:
            assert trap_causes[export] in ours and trap_causes[export] in theirs, (export, ours, theirs)
        else:
            assert (export, ours) == (export, theirs)
