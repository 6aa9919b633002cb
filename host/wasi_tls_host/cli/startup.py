"""Signals that arrive while the command starts: held from its first line until the command
is ready to act on them.

Importing the host takes about half a second and loading a guest can take seconds (a
compile). Without handlers a SIGTERM then would kill the process by the default action,
without a word (status 143), and a SIGHUP would too (129). So the entry point installs
``StartupSignals`` before anything heavy is imported (this module uses the standard library
only), and whoever takes over (``serve.py``, the ``--workers`` supervisor) asks what came:

* a first SIGTERM or SIGINT is said on stderr and remembered: the command stops before the
  guest runs; a server that had no connection yet exits 0, as a graceful stop that drained;
* a second one ends the process at once with 128 + its number (``os._exit``: see
  ``_on_signal``);
* SIGHUP is remembered and delivered (identities re-read) once the guest runs.

Subcommands that do not operate a guest get the default dispositions back, and what came
meanwhile is delivered to them as if it came now. A ``--workers`` supervisor starts its
workers with these signals blocked (``block_in_child``), so even the interpreter's own start
is covered; a worker unblocks them once its handlers are in place.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# Set in the environment of the processes ``--workers`` starts: the worker's number.
WORKER_ENV = "WASI_TLS_HOST_WORKER"


def worker_number() -> int | None:
    value = os.environ.get(WORKER_ENV)
    return int(value) if value and value.isdigit() else None


def process_name() -> str:
    """How this process names itself on stderr (workers say which one they are)."""
    worker = worker_number()
    return f"wasi-tls-host[worker {worker} pid {os.getpid()}]" if worker is not None else "wasi-tls-host"


def say(message: str) -> None:
    """One line on stderr, from a signal handler: straight to the descriptor (the handler may
    run while sys.stderr is in the middle of a write, which a second write would break)."""
    os.write(sys.stderr.fileno(), f"{process_name()}: {message}\n".encode())


class StartupSignals:
    """What arrived before the command was ready, in order."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}

    @property
    def installed(self) -> bool:
        return bool(self.previous)

    def install(self) -> None:
        if self.installed or threading.current_thread() is not threading.main_thread():
            return  # an embedder calling main() from another thread keeps its own handling
        self.received = []
        self.previous = {signum: signal.signal(signum, self._on_signal) for signum in HANDLED}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)  # held by a supervisor until now

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum in STOP_SIGNALS and self.stop_signal() is not None:
            say(f"{name}: stopping now (during start-up)")
            # Not SystemExit: raised from a handler it lands in whatever code runs then, and
            # some of that catches it (a weakref callback of importlib's module locks prints
            # "Exception ignored" with its traceback and goes on; CI once saw a close path
            # swallow it and the command exit 0), nor could it stop a compile inside wasmtime.
            # Nothing of start-up needs cleaning that a killed process would not leave too:
            # the guest has not run (no output of its is buffered), descriptors and the
            # cache's lease close with the process, the cache evicts temporary files.
            os._exit(128 + signum)
        self.received.append(signum)
        if signum in STOP_SIGNALS:
            say(f"{name} during start-up: stopping")

    def stop_signal(self) -> int | None:
        """The first SIGTERM or SIGINT that arrived, if any."""
        return next((s for s in self.received if s in STOP_SIGNALS), None)

    def take_hangup(self) -> bool:
        """Whether a SIGHUP arrived (forgotten once asked)."""
        came = signal.SIGHUP in self.received
        self.received = [s for s in self.received if s != signal.SIGHUP]
        return came

    def release(self) -> None:
        """The handlers from before back, then what arrived delivered as if it came now
        (for a command that does not operate a guest)."""
        pending = self._restore()
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)

    def finish(self) -> None:
        """The handlers from before back; what arrived while the command was ending is
        dropped (it ends anyway)."""
        self._restore()

    def _restore(self) -> list[int]:
        for signum, handler in self.previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self.previous = {}
        pending, self.received = self.received, []
        return pending


_current = StartupSignals()


def hold() -> StartupSignals:
    """Install the start-up handlers (unless they are) and return what they record."""
    _current.install()
    return _current


def block_in_child() -> None:
    """``preexec_fn`` for a worker: its stop and reload signals are held (blocked) across
    exec, until its own start-up handlers are in place (``StartupSignals.install``)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)


_collection_paused = False
_collection_frozen = False
_thresholds: tuple[int, ...] | None = None  # the collector's, while the command raised the first
_YOUNG_THRESHOLD = 7000


def pause_collection() -> None:
    """No cyclic garbage collection while the command starts: importing the host and loading
    a guest make hundreds of thousands of long-lived objects and almost no cycles, and the
    collector's passes over them cost about a tenth of a second of start-up. (Reference
    counting frees everything else as usual.)"""
    global _collection_paused
    if gc.isenabled():
        gc.disable()
        _collection_paused = True


def resume_collection() -> None:
    """Collection back on (if ``pause_collection`` turned it off), with what exists now frozen
    while the command runs: the start-up's objects live as long as the guest, so no
    collection needs to scan them."""
    global _collection_paused, _collection_frozen, _thresholds
    if _collection_paused:
        _collection_paused = False
        gc.freeze()
        _collection_frozen = True
        # A server's connections each hold tens of objects for a few milliseconds: with the
        # default 700, a dozen concurrent ones set off a young collection every ~20
        # connections (0.1-0.25 ms each, 1-2% of a TLS server's CPU per handshake), which
        # finds almost no garbage (cycles are rare; nothing's lifetime depends on them).
        _thresholds = gc.get_threshold()
        gc.set_threshold(max(_thresholds[0], _YOUNG_THRESHOLD), *_thresholds[1:])
        gc.enable()


def end_collection_pause() -> None:
    """When the command returns: collection as it was before it (for a process that called
    ``main`` and goes on: what was frozen is collectable again)."""
    global _collection_frozen, _thresholds
    resume_collection()
    if _collection_frozen:
        _collection_frozen = False
        gc.unfreeze()
    if _thresholds is not None:
        gc.set_threshold(*_thresholds)
        _thresholds = None
