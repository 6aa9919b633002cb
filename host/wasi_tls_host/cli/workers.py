"""``--workers N``: a supervisor process starts N copies of this command (each its own host
and guest instance, binding the same address with SO_REUSEPORT), restarts one that dies,
and passes SIGHUP, SIGTERM and SIGINT on to them.

Exit status: 0 when every worker stopped with 0; else the first non-zero status a worker
stopped with during shutdown (2 when a worker could not start: bad options or guest).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from .options_server import WORKER_ENV

log = logging.getLogger("wasi_tls_host.workers")

USAGE_ERROR = 2  # a worker that cannot start at all is not restarted forever
RESTART_BACKOFF_S = 1.0  # a worker that dies this soon after starting waits before restarting
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A worker must not outlive its supervisor (e.g. one killed with SIGKILL).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Worker:
    def __init__(self, number: int, argv: list[str]) -> None:
        self.number = number
        self.argv = argv
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        env = dict(os.environ, **{WORKER_ENV: str(self.number)})
        # Its own session: a terminal's Ctrl-C reaches the supervisor only, which decides.
        self.process = subprocess.Popen([sys.executable, "-m", "wasi_tls_host.cli", *self.argv], env=env,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        self.started = time.monotonic()
        log.warning("worker %d started (pid %d)", self.number, self.process.pid)

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass


class Supervisor:
    def __init__(self, count: int, argv: list[str]) -> None:
        self.workers = [Worker(n, argv) for n in range(1, count + 1)]
        self.stopping = 0  # stop signals received

    def on_signal(self, signum: int, frame: Any) -> None:
        if signum != signal.SIGHUP:
            self.stopping += 1
            log.warning("%s: %s workers", signal.Signals(signum).name, "stopping" if self.stopping == 1 else "ending")
        for worker in self.workers:
            worker.signal(signum)

    def run(self) -> int:
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {s: signal.signal(s, self.on_signal) for s in handled}
        statuses: dict[int, int] = {}
        try:
            for worker in self.workers:
                worker.start()
            while True:
                for worker in self.workers:
                    assert worker.process is not None
                    status = worker.process.poll()
                    if status is None:
                        continue
                    if status < 0:
                        status = 128 - status  # killed by a signal, as a shell reports it
                    if self.stopping:
                        statuses.setdefault(worker.number, status)
                        continue
                    if status == USAGE_ERROR:
                        log.error("worker %d could not start (status %d); stopping", worker.number, status)
                        self.on_signal(signal.SIGTERM, None)
                        self.on_signal(signal.SIGTERM, None)
                        statuses[worker.number] = status
                        continue
                    log.warning("worker %d (pid %d) exited with status %d; restarting it", worker.number, worker.process.pid, status)
                    if time.monotonic() - worker.started < RESTART_BACKOFF_S:
                        time.sleep(RESTART_BACKOFF_S)
                    worker.start()
                if self.stopping and len(statuses) == len(self.workers):
                    break
                time.sleep(0.05)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is None:
                    worker.process.kill()
                    worker.process.wait()
        return next((s for s in statuses.values() if s != 0), 0)
