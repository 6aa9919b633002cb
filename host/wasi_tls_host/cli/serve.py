"""Running a guest so that a person can operate it: signals for rotation and graceful stop.

The guest runs on a thread; the main thread handles signals. The handlers only note them:
the main thread's loop acts on them within a tick (50 ms). A handler runs wherever the main
thread happens to be, possibly holding a lock the action needs (the socket registry's, to
ask whether the guest listens): acting in the handler deadlocked a worker that got two
SIGTERMs in a row.

* SIGHUP: ``Host.reload_identities()`` (new connections present the new certificates, open
  ones keep theirs; a file that fails to load keeps the old identity, with a log line).
* SIGTERM or SIGINT, first: the guest's listeners stop accepting; open connections get
  ``--graceful-timeout`` seconds to finish, then the guest is ended. Once the last one
  finished, the guest gets ``DRAIN_SETTLE_S`` (within that deadline) to end by itself, as a
  server does whose listener ended (it may still be writing its last lines); one that goes on
  is ended then. A guest that does not listen (a command) is ended at once.
* SIGTERM or SIGINT, second: the guest is ended at once.
* Before the guest runs (start-up, ``startup.py``): a stop signal means it never starts; a
  SIGHUP is delivered once it runs.

Exit status: the guest's own when it ends by itself; ``EXIT_DRAINED`` (0) when a graceful
stop saw every connection finish (or came during start-up, to a guest allowed to listen);
``EXIT_DEADLINE`` (3) when the deadline cut connections short; 128 + signal number when a
signal ended it at once (130 SIGINT, 143 SIGTERM), or stopped during start-up a guest not
allowed to listen (a command).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from typing import Any

from ..host import GuestInstance, Host, RunResult
from ..wasi import sockets
from .startup import HANDLED, StartupSignals

log = logging.getLogger("wasi_tls_host.serve")

EXIT_DRAINED = 0
EXIT_DEADLINE = 3
DRAIN_SETTLE_S = 2.0
_TICK_S = 0.05


class Operator:
    """What signals ask for, handled on the main thread while the guest runs elsewhere."""

    def __init__(self, host: Host, guest: GuestInstance, graceful_timeout: float) -> None:
        self.host = host
        self.guest = guest
        self.graceful_timeout = graceful_timeout
        self.deadline: float | None = None  # set by the first stop signal
        self.drained_at: float | None = None  # when the drain saw no open connection left
        self.exit_status: int | None = None  # decided by the operator, not the guest
        self.signals: deque[int] = deque()  # noted by the handler, acted on by tick()

    def on_signal(self, signum: int, frame: Any) -> None:
        """The signal handler: notes the signal and nothing else (see the module's notes)."""
        self.signals.append(signum)

    def handle(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.warning("SIGHUP: reloading identities and ticket keys")
            self.host.reload_identities()  # logs one line per identity
            return
        if self.deadline is not None or not self.guest.is_listening():
            self.exit_status = 128 + signum
            log.warning("%s: stopping now", name)
            sockets.cut_connections(self.guest.ctx)
            self.guest.interrupt(f"stopped by {name}")
            return
        self.deadline = time.monotonic() + self.graceful_timeout
        log.warning("%s: stopped accepting; waiting up to %.1f s for %d open connection(s) (send it again to stop now)",
                    name, self.graceful_timeout, self.guest.open_connections())
        self.guest.stop_accepting()

    def tick(self) -> None:
        """Called every few ms on the main thread: the signals noted since, then the drain."""
        while self.signals and self.exit_status is None:
            self.handle(self.signals.popleft())
        if self.deadline is None or self.exit_status is not None:
            return
        remaining = self.guest.open_connections()
        now = time.monotonic()
        if remaining == 0:
            if self.drained_at is None:
                self.drained_at = now
                log.warning("graceful stop: every connection finished")
            if now >= min(self.drained_at + DRAIN_SETTLE_S, self.deadline):  # it did not end by itself
                self.exit_status = EXIT_DRAINED
                self.guest.interrupt("graceful stop")
        elif now >= self.deadline:
            self.exit_status = EXIT_DEADLINE
            log.warning("graceful stop: %d connection(s) still open after %.1f s; ending them", remaining, self.graceful_timeout)
            sockets.cut_connections(self.guest.ctx)
            self.guest.interrupt("graceful stop deadline")


def serve(host: Host, guest: GuestInstance, graceful_timeout: float, held: StartupSignals | None = None) -> tuple[RunResult | None, int | None]:
    """Run ``guest`` (wasi:cli/run) with signal handling; returns its result (None if it
    never ran) and the exit status the operator decided (None: the guest ended by itself).
    ``held``: the signals that came during start-up, acted on here first."""
    operator = Operator(host, guest, graceful_timeout)
    outcome: list[RunResult] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(guest.run())
        except BaseException as e:  # handed to the main thread, which re-raises it
            failure.append(e)

    handled = HANDLED
    # Signal handlers can only be set from the main thread (an embedder may call main()
    # from another): there the guest simply runs, without operator signals.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, operator.on_signal) for s in handled} if on_main_thread else {}
    worker = threading.Thread(target=run, name="guest", daemon=True)
    try:
        if held is not None and (stop := held.stop_signal()) is not None:
            may_listen = guest.ctx.network is not None and bool(guest.ctx.network.bind)
            return None, EXIT_DRAINED if may_listen else 128 + stop  # never run (said when it came)
        if held is not None and held.take_hangup():
            operator.handle(signal.SIGHUP)
        worker.start()
        while worker.is_alive():
            worker.join(_TICK_S)
            operator.tick()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if failure:
        raise failure[0]
    return outcome[0], operator.exit_status
