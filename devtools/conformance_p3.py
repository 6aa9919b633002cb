"""Running the wasi-testsuite's WASI 0.3 programs the way its official runner does, in Python
3.11 (the runner needs 3.12), on this host's command line or on the wasmtime CLI.

Each ``NAME.wasm`` comes with ``NAME.json``: a list of ``operations`` (``run`` with
``args``/``env``/``root``, ``write`` to stdin, ``read`` an exact payload from stdout or
stderr, ``connect`` to the ``host:port`` the program prints and ``send``/``recv`` there,
``kill``, ``wait`` for an ``exit_code``), and ``proposals`` (``sockets`` allows the network);
the legacy format (``root``, ``args``, ``env``, ``exit_code``, ``stdout``, ``stderr``) reads
as run, reads, wait. This follows ``test-runner/wasi_test_runner/test_suite_runner.py``
(operation by operation, the same defaults), with two differences that cannot change a
verdict: every read and wait has a deadline (the official runner's reads can wait forever),
and a test's directory is copied to a scratch folder first (the runner writes into the
suite's own copy).

The suite lives outside the repository: ``$WASI_TESTSUITE_P3`` names its folder, else
``../shared/testsuites/wasi-testsuite-p3`` beside the checkout. The command line a run
operation becomes is the one the shipped adapter (``wasi_tls_host/wasi_testsuite_adapter.py``)
gives the official runner.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from devtools.conformance import remove_leftovers, wasmtime_binary
from wasi_tls_host.wasi_testsuite_adapter import host_argv

REPO = Path(__file__).resolve().parents[1]
SUITE_P3 = Path(os.environ.get("WASI_TESTSUITE_P3") or REPO.parent / "shared" / "testsuites" / "wasi-testsuite-p3")
# Seconds for a wait (the program's whole run) and for each read, connect and recv.
TIMEOUT_S = 30.0
_LEGACY_KEYS = {"args", "root", "env", "exit_code", "stderr", "stdout"}

# (test path, args, env, scratch copy of the test's directory or None, proposals) -> argv
ArgvFor = Callable[[str, list[str], dict[str, str], "str | None", list[str]], list[str]]


@dataclass
class Case:
    wasm: Path
    operations: list[dict[str, Any]] = field(default_factory=list)
    proposals: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.wasm.stem


@dataclass
class Outcome:
    passed: bool
    detail: str = ""


def discover(root: Path = SUITE_P3) -> list[Case]:
    cases = []
    for wasm in sorted(root.glob("*.wasm")):
        spec_path = wasm.with_suffix(".json")
        spec: dict[str, Any] = json.loads(spec_path.read_text()) if spec_path.exists() else {}
        if not spec:
            cases.append(Case(wasm, [{"type": "run"}, {"type": "wait"}]))
        elif set(spec) <= _LEGACY_KEYS:
            ops: list[dict[str, Any]] = [{"type": "run", **{k: spec[k] for k in ("args", "env", "root") if k in spec}}]
            for stream in ("stdout", "stderr"):
                if spec.get(stream) is not None:
                    ops.append({"type": "read", "id": stream, "payload": spec[stream]})
            ops.append({"type": "wait", "exit_code": spec.get("exit_code", 0)})
            cases.append(Case(wasm, ops))
        else:
            cases.append(Case(wasm, list(spec.get("operations", [])), list(spec.get("proposals", []))))
    return cases


def host_command() -> list[str]:
    """This host's command line, from the interpreter running this module."""
    return [sys.executable, "-m", "wasi_tls_host.cli"]


def on_host(command: list[str] | None = None) -> ArgvFor:
    cmd = command or host_command()
    return lambda test, args, env, root, proposals: host_argv(cmd, test, args, env, root, proposals)


def on_wasmtime_cli() -> ArgvFor:
    """The wasmtime CLI as the suite's own wasmtime adapter runs it (``-Sp3``)."""
    def argv(test: str, args: list[str], env: dict[str, str], root: str | None, proposals: list[str]) -> list[str]:
        flags = "-Sp3" + (",inherit-network" if "sockets" in proposals else "")
        out = [str(wasmtime_binary()), "-Wcomponent-model-async", flags]
        for key, value in env.items():
            out += ["--env", f"{key}={value}"]
        if root:
            out += ["--dir", f"{root}::/"]
        return out + [test, *args]
    return argv


class _Session:
    """One test's process, pipes and sockets, and what went wrong (the runner's
    ``TestCaseRunner``)."""

    def __init__(self, case: Case, argv_for: ArgvFor, scratch: Path) -> None:
        self.case = case
        self.argv_for = argv_for
        self.scratch = scratch
        self.proc: subprocess.Popen[bytes] | None = None
        self.sockets: dict[str, socket.socket] = {}
        self.failures: list[str] = []
        self.stderr_seen = b""

    def do(self, op: dict[str, Any]) -> None:
        kind = op["type"]
        if kind != "run" and self.proc is None and kind in ("read", "write", "wait", "connect", "kill"):
            self.failures.append(f"{kind}: no process is running")
            return
        getattr(self, "do_" + kind)(op)

    def do_run(self, op: dict[str, Any]) -> None:
        root = None
        if op.get("root"):
            root = self.scratch / "root"
            shutil.copytree(self.case.wasm.parent / op["root"], root, symlinks=True)
            for path in [root, *root.rglob("*")]:
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | stat.S_IWUSR)
            remove_leftovers(root)
        argv = self.argv_for(str(self.case.wasm), list(op.get("args", [])), dict(op.get("env", {})),
                             str(root) if root else None, self.case.proposals)
        # Unbuffered pipes: reads below wait with select() on their descriptors.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     bufsize=0, cwd=self.scratch)

    def _read(self, stream: Any, n: int, until: bytes | None = None) -> bytes:
        """Up to ``n`` bytes (stopping after ``until``), as the runner's blocking read gets
        them, within the deadline."""
        data = b""
        deadline = time.monotonic() + TIMEOUT_S
        while len(data) < n and not (until and data.endswith(until)):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stream], [], [], left)[0]:
                break
            chunk = os.read(stream.fileno(), 1 if until else n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def do_read(self, op: dict[str, Any]) -> None:
        assert self.proc is not None
        stream_id = op.get("id", "stdout")
        expected = op.get("payload", "").encode()
        stream = self.proc.stdout if stream_id == "stdout" else self.proc.stderr
        got = self._read(stream, len(expected))
        if stream_id == "stderr":
            self.stderr_seen += got
        if got != expected:
            self.failures.append(f"read {stream_id}: expected {expected!r}, got {got!r}")

    def do_write(self, op: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(op.get("payload", "").encode())
        self.proc.stdin.flush()

    def do_wait(self, op: dict[str, Any]) -> None:
        assert self.proc is not None
        proc, self.proc = self.proc, None
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            self.failures.append(f"wait: still running after {TIMEOUT_S} s")
            return
        expected = op.get("exit_code", 0)
        if proc.returncode != expected:
            self.failures.append(f"wait: exit status {proc.returncode}, expected {expected}; "
                                 f"stdout {out[-300:]!r}; stderr {(self.stderr_seen + err)[-600:]!r}")

    def do_connect(self, op: dict[str, Any]) -> None:
        assert self.proc is not None
        line = self._read(self.proc.stdout, 1024, until=b"\n").decode(errors="replace").strip()
        host, _, port = line.rpartition(":")
        if not host or not port.isdigit():
            self.failures.append(f"connect: expected <host>:<port> on stdout, found {line!r}")
            return
        try:
            self.sockets[op.get("id", "server")] = socket.create_connection((host, int(port)), timeout=TIMEOUT_S)
        except OSError as e:
            self.failures.append(f"connect: could not connect to {host}:{port}: {e}")

    def do_send(self, op: dict[str, Any]) -> None:
        try:
            self.sockets[op["id"]].sendall(op.get("payload", "").encode())
        except (KeyError, OSError) as e:
            self.failures.append(f"send: {e!r}")

    def do_recv(self, op: dict[str, Any]) -> None:
        expected = op.get("payload", "").encode()
        try:
            got = self.sockets[op["id"]].recv(len(expected))
        except (KeyError, OSError) as e:
            self.failures.append(f"recv: {e!r}")
            return
        if got != expected:
            self.failures.append(f"recv: expected {expected!r}, got {got!r}")

    def do_kill(self, op: dict[str, Any]) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.Signals[op.get("signal", "SIGTERM")])

    def do_request(self, op: dict[str, Any]) -> None:
        self.failures.append("request: wasi:http tests are not part of this suite")

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            _, err = self.proc.communicate()
            self.failures.append(f"the program was still running after the last operation; stderr {err[-600:]!r}")
            self.proc = None
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


def run_case(case: Case, argv_for: ArgvFor) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="wasi-testsuite-p3-") as tmp:
        session = _Session(case, argv_for, Path(tmp))
        try:
            for op in case.operations:
                session.do(op)
        finally:
            session.close()
        return Outcome(not session.failures, "; ".join(session.failures))
