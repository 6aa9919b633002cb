"""``--workers N``: a supervisor process starts N copies of this command (each its own host
and guest instance), restarts one that dies, and passes SIGHUP, SIGTERM and SIGINT on to them.

The supervisor opens a listening socket for each ``--allow-listen HOST:PORT`` that names one
address and one port, and hands it down to every worker (``LISTENERS_ENV``): the guests
accept from one queue, so connections waiting when a worker stops or dies are served by the
others, as gunicorn does. Other patterns are bound by each worker with SO_REUSEPORT. On the
first stop signal the supervisor closes its copies, so once the workers have stopped
accepting the kernel refuses new clients.

The supervisor also reads the ``--identity`` files (and asks for passphrases) and the
``--ticket-keys`` file, and hands the bytes to every worker it starts
(options_identities.write_sources, private_file). On SIGHUP it reads them
again before passing the signal on, and keeps the previous bytes of an identity whose files
(or of the ticket keys whose file) fail to load, as the workers keep its certificate: a worker restarted later starts with the
identities in use, not with a file the reload refused. Workers start with SIGTERM, SIGINT and
SIGHUP blocked until their own handlers are in place (startup.py): a signal passed on while a
worker starts is acted on, never the default action. The supervisor's handler only notes a
signal; its loop acts on it (as serve.py does), so no signal lands in the middle of starting
a worker.

Exit status: 0 when every worker stopped with 0; else the first non-zero status a worker
stopped with during shutdown (2 when a worker could not start: bad options or guest).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from typing import Any

from ..wasi.sockets import AddressPattern, IPAddress, format_address
from ..tls.ticket_keys import TicketKeys, log_reload as log_ticket_keys
from .options_identities import IDENTITIES_ENV, IdentitySource, private_file, reload_sources, write_sources
from .options_tls import TICKET_KEYS_ENV
from .options_server import LISTENERS_ENV, format_listeners
from .startup import HANDLED, WORKER_ENV, StartupSignals, block_in_child

log = logging.getLogger("wasi_tls_host.workers")

USAGE_ERROR = 2  # a worker that cannot start at all is not restarted forever
RESTART_BACKOFF_S = 1.0  # a worker that dies this soon after starting waits before restarting
_PR_SET_PDEATHSIG = 1


def _prepare_worker() -> None:
    """Run in the worker between fork and exec."""
    block_in_child()  # signals wait for the worker's handlers (startup.py)
    # A worker must not outlive its supervisor (e.g. one killed with SIGKILL).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def open_listeners(patterns: list[AddressPattern], backlog: int = 1024) -> dict[tuple[IPAddress, int], socket.socket]:
    """A listening socket for each pattern naming one address and one port (OSError if one
    cannot be opened: the port is taken, say). SO_REUSEPORT too, so that a guest binding one
    of these addresses itself (a second socket) still can; IPv6 sockets are v6-only, as a
    guest's are."""
    listeners: dict[tuple[IPAddress, int], socket.socket] = {}
    try:
        for pattern in patterns:
            if pattern.networks is None or len(pattern.networks) != 1 or pattern.networks[0].num_addresses != 1:
                continue
            if pattern.low_port != pattern.high_port or pattern.low_port == 0:
                continue
            ip, port = pattern.networks[0].network_address, pattern.low_port
            if (ip, port) in listeners:
                continue
            sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
            listeners[(ip, port)] = sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if ip.version == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((str(ip), port))
            sock.listen(backlog)
    except OSError:
        for sock in listeners.values():
            sock.close()
        raise
    return listeners


class Worker:
    def __init__(self, number: int, argv: list[str], listeners: dict[tuple[IPAddress, int], socket.socket]) -> None:
        self.number = number
        self.argv = argv
        self.listeners = listeners
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self, identities: list[IdentitySource], ticket_keys: TicketKeys | None = None) -> None:
        handed = {address: sock.fileno() for address, sock in self.listeners.items()}
        secrets = {IDENTITIES_ENV: write_sources(identities)}
        try:
            if ticket_keys is not None:
                secrets[TICKET_KEYS_ENV] = private_file("wasi-tls-host-ticket-keys", ticket_keys.data())
            env = dict(os.environ, **{WORKER_ENV: str(self.number), LISTENERS_ENV: format_listeners(handed)},
                       **{variable: str(fd) for variable, fd in secrets.items()})
            # Its own session: a terminal's Ctrl-C reaches the supervisor only, which decides.
            self.process = subprocess.Popen([sys.executable, "-m", "wasi_tls_host.cli", *self.argv], env=env,
                                            pass_fds=[*handed.values(), *secrets.values()],
                                            start_new_session=True, preexec_fn=_prepare_worker)
        finally:
            for fd in secrets.values():
                os.close(fd)  # the worker has its own
        self.started = time.monotonic()
        log.warning("worker %d started (pid %d)", self.number, self.process.pid)

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass


class Supervisor:
    def __init__(self, count: int, argv: list[str], listen: list[AddressPattern] | None = None,
                 identities: list[IdentitySource] | None = None, held: StartupSignals | None = None,
                 ticket_keys: TicketKeys | None = None) -> None:
        self.count = count
        self.argv = argv
        self.listen = list(listen or [])
        self.identities = list(identities or [])  # the bytes in use, handed to each worker started
        self.ticket_keys = ticket_keys  # likewise
        self.held = held  # signals that came during start-up
        self.listeners: dict[tuple[IPAddress, int], socket.socket] = {}
        self.workers: list[Worker] = []
        self.stopping = 0  # stop signals received
        self.signals: deque[int] = deque()  # noted by the handler, acted on by the loop

    def on_signal(self, signum: int, frame: Any) -> None:
        """The signal handler: notes the signal (acted on by ``_act``, from the loop)."""
        self.signals.append(signum)

    def _act(self) -> None:
        while self.signals:
            self.handle(self.signals.popleft())

    def handle(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            log.warning("SIGHUP: reloading identities for workers started later; passing it on")
            self.identities = reload_sources(self.identities)
            self._reload_ticket_keys()
        else:
            self.stopping += 1
            log.warning("%s: %s workers", signal.Signals(signum).name, "stopping" if self.stopping == 1 else "ending")
            self._close_listeners()  # the workers' copies close as they stop accepting
        for worker in self.workers:
            worker.signal(signum)

    def _reload_ticket_keys(self) -> None:
        keys = self.ticket_keys
        if keys is None or keys.path is None:
            return
        try:
            fresh = TicketKeys.from_file(keys.path)
        except ValueError as e:
            log_ticket_keys(keys, e)
        else:
            log_ticket_keys(keys, fresh)
            self.ticket_keys = fresh

    def _start(self, worker: Worker) -> None:
        self._act()
        if not self.stopping:  # else the listeners it would inherit are closed; it has nothing to drain
            worker.start(self.identities, self.ticket_keys)

    def _close_listeners(self) -> None:
        for sock in self.listeners.values():
            sock.close()

    def run(self) -> int:
        try:
            self.listeners = open_listeners(self.listen)
        except OSError as e:
            log.error("cannot listen on an --allow-listen address for the workers: %s", e.strerror or e)
            return USAGE_ERROR
        for address in self.listeners:
            log.warning("listening on %s for %d workers", format_address(*address), self.count)
        self.workers = [Worker(n, self.argv, self.listeners) for n in range(1, self.count + 1)]
        try:
            return self._supervise()
        finally:
            self._close_listeners()

    def _supervise(self) -> int:
        handled = HANDLED
        previous = {s: signal.signal(s, self.on_signal) for s in handled}
        statuses: dict[int, int] = {}
        try:
            if self.held is not None and self.held.stop_signal() is not None:
                return 0  # stopped before any worker started (said when the signal came)
            if self.held is not None and self.held.take_hangup():
                self.handle(signal.SIGHUP)
            for worker in self.workers:
                self._start(worker)
            while True:
                self._act()
                for worker in self.workers:
                    if worker.process is None:  # never started: a stop came first
                        statuses[worker.number] = 0
                        continue
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
                        self.handle(signal.SIGTERM)
                        self.handle(signal.SIGTERM)
                        statuses[worker.number] = status
                        continue
                    log.warning("worker %d (pid %d) exited with status %d; restarting it", worker.number, worker.process.pid, status)
                    if time.monotonic() - worker.started < RESTART_BACKOFF_S:
                        time.sleep(RESTART_BACKOFF_S)
                    self._start(worker)
                    if self.stopping:  # a stop came meanwhile: nothing of this worker's to drain
                        statuses[worker.number] = 0
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
