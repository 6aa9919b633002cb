"""The subprocesses of an interop run (peer servers and clients, the wasmtime CLI).

Every process starts through one ``Processes`` in its own process group, its output goes
to a file in the run's scratch folder (never a pipe that could fill up), every wait is
bounded, and ``close()`` kills whatever is left, group and all: a run leaves no process
behind, whatever a peer did.

Each live process also has a marker file in the run's folder (``.live-PID``: its pid and
start time), so that when the process owning a ``Processes`` is killed before it could
close it (a matrix worker stuck inside wasmtime, killed by its parent), ``kill_left`` ends
that process's processes from outside.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

KILL_WAIT = 5.0  # seconds a killed process gets to be reaped
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while a process is started and tracked. Their handlers unwind
    the run by raising (the command's ``Stopped``, a worker's ``SystemExit``); raised between
    the fork and the tracking, the new process would be neither in ``close()``'s list nor
    marked for ``kill_left``, and would outlive the run (seen once under load: an orphaned
    peer). A signal that comes meanwhile is noted and handed to its handler right after.
    Python runs signal handlers on the main thread only, so other threads need nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[tuple[int, Any]] = []
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    held = [signum for signum, handler in previous.items() if callable(handler)]
    for signum in held:
        signal.signal(signum, lambda signum, frame: noted.append((signum, frame)))
    try:
        yield
    finally:
        for signum in held:
            signal.signal(signum, previous[signum])
        if noted:
            signum, frame = noted[0]
            handler = signal.getsignal(signum)
            if callable(handler):
                handler(signum, frame)


@dataclass
class Finished:
    """A process run to its end, or killed at its deadline (``timed_out``, ``exit_code`` None)."""

    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Service:
    """A long-running process (a peer server) whose output goes to ``log_path``."""

    def __init__(self, owner: Processes, cmd: Sequence[str], log_path: Path, *, cwd: Path | None,
                 env: Mapping[str, str] | None, stdin_pipe: bool) -> None:
        self.cmd = list(cmd)
        self.log_path = log_path
        self._owner = owner
        with open(log_path, "wb") as log:
            # stdin stays an open pipe when asked: openssl s_server treats EOF on stdin as "quit".
            self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=None if env is None else dict(env),
                                         stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, ready: Callable[[str], bool], timeout: float) -> bool:
        """Whether ``ready(log)`` became true within ``timeout`` (False early if the process ended)."""
        deadline = time.monotonic() + timeout
        while True:
            if ready(self.log):
                return True
            if not self.alive or time.monotonic() > deadline:
                return ready(self.log)
            time.sleep(0.01)

    def stop(self) -> None:
        _kill(self.proc)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._owner._forget(self.proc)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc``'s whole process group (a peer may have children) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(KILL_WAIT)
    except subprocess.TimeoutExpired:  # unkillable (a zombie's parent is us: it will be reaped)
        pass


class Processes:
    """Starts and runs the run's processes in ``workdir``; ``close()`` kills what is left."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._live: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._count = 0

    def _name(self, stem: str) -> Path:
        with self._lock:
            self._count += 1
            return self.workdir / f"{self._count:05d}-{stem}"

    def _track(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._live.add(proc)
        started = _start_time(proc.pid)
        if started is not None:
            (self.workdir / f"{LIVE_MARK}{proc.pid}").write_text(f"{proc.pid} {started}\n")

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._live.discard(proc)
        (self.workdir / f"{LIVE_MARK}{proc.pid}").unlink(missing_ok=True)

    def start(self, cmd: Sequence[str], *, name: str, cwd: Path | None = None, env: Mapping[str, str] | None = None,
              stdin_pipe: bool = False) -> Service:
        log_path = self._name(f"{name}.log")
        with _stop_signals_held():
            service = Service(self, cmd, log_path, cwd=cwd, env=env, stdin_pipe=stdin_pipe)
            self._track(service.proc)
        return service

    def run(self, cmd: Sequence[str], *, timeout: float, name: str, input: bytes | None = None,
            cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Finished:
        """Run ``cmd`` to its end; at ``timeout`` its group is killed and ``timed_out`` set."""
        out_path, err_path = self._name(f"{name}.out"), self._name(f"{name}.err")
        started = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            with _stop_signals_held():
                proc = subprocess.Popen(list(cmd), cwd=cwd, env=None if env is None else dict(env),
                                        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                        stdout=out, stderr=err, start_new_session=True)
                self._track(proc)
            timed_out = False
            try:
                if input is not None:
                    assert proc.stdin is not None
                    try:
                        proc.stdin.write(input)
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass  # it ended (or closed stdin) before reading: its output says why
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill(proc)
                self._forget(proc)
        seconds = time.monotonic() - started
        stdout = out_path.read_bytes().decode(errors="replace")
        stderr = err_path.read_bytes().decode(errors="replace")
        out_path.unlink(missing_ok=True)
        err_path.unlink(missing_ok=True)
        return Finished(None if timed_out else proc.returncode, stdout, stderr, seconds, timed_out)

    def close(self) -> None:
        with self._lock:
            live = list(self._live)
            self._live.clear()
        for proc in live:
            _kill(proc)
            if proc.stdin is not None:
                proc.stdin.close()
            (self.workdir / f"{LIVE_MARK}{proc.pid}").unlink(missing_ok=True)


LIVE_MARK = ".live-"


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with
    the pid it names one process, never a later one given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def kill_left(workdir: Path) -> int:
    """Kill the process groups that a ``Processes`` in ``workdir`` started and never ended
    (its owner was killed); the number killed."""
    killed = 0
    for mark in workdir.glob(f"{LIVE_MARK}*"):
        try:
            pid_text, started = mark.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if _start_time(pid) == started:  # still that process (an orphan now, reaped by init)
            try:
                os.killpg(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        mark.unlink(missing_ok=True)
    return killed
