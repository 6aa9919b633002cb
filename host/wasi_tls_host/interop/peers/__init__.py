"""TLS implementations on the far side of the wire: one module per peer.

A ``Peer`` runs its implementation's own programs as a server (``start_server``: listening
once it returns) and as a client (``run_client``: to its end), turning a case's
``ServerSpec``/``ClientSpec`` into that program's flags and its output into ``Seen``
records. ``abilities(role)`` says which of ``features.ABILITIES`` it has in that role; a
peer that is not installed says why in ``missing()`` and all its cases are skipped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..pki import CertificateSource
from ..processes import Processes, Service
from ..specs import ClientSpec, Observation, Seen, ServerSpec

READY_TIMEOUT = 10.0  # seconds a peer server gets to start listening


class PeerUnavailable(Exception):
    """The peer cannot run here (not installed, failed to build): the reason, in one line."""


@dataclass
class RunContext:
    """What a peer needs from the run: its scratch folder, certificates, processes, bounds."""

    workdir: Path
    pki: CertificateSource
    processes: Processes
    timeout: float  # bound on one side of one case
    cache: Path  # where built peers (Go, Java) are kept between runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool_version(cmd: list[str], pick: Callable[[str], str] = lambda text: text.strip().splitlines()[0]) -> str:
    """The first line (or ``pick``) of a version command's output; "unknown" if it fails."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        return pick(done.stdout + done.stderr) or "unknown"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown"


def missing_programs(*programs: str) -> str | None:
    absent = [p for p in programs if shutil.which(p) is None]
    return f"{', '.join(absent)} not installed" if absent else None


class PeerServer:
    """A peer server process: ``port``, what it saw (``observe``), ``stop``."""

    def __init__(self, service: Service, port: int, parse: Callable[[str], list[Seen]]) -> None:
        self.service = service
        self.port = port
        self._parse = parse

    def observe(self, connections: int, wait: float, *, ends: bool = False) -> Observation:
        """The connections the server reported, waiting up to ``wait`` s for ``connections``
        (and with ``ends``, for how each established one ended)."""
        deadline = time.monotonic() + wait
        while True:
            log = self.service.log
            seen = self._parse(log)
            done = len(seen) >= connections and (not ends or all(s.end is not None for s in seen if s.ok))
            if done or time.monotonic() > deadline or not self.service.alive:
                problem = None if self.service.alive else f"the server exited (status {self.service.proc.returncode})"
                return Observation(seen, output=log, problem=problem)
            time.sleep(0.02)

    def stop(self) -> None:
        self.service.stop()


def start_listening(processes: Processes, name: str, make_cmd: Callable[[int], list[str]], ready: Callable[[str], bool],
                    parse: Callable[[str], list[Seen]], *, stdin_pipe: bool = False, cwd: Path | None = None) -> PeerServer:
    """Start a server on a free port (twice if another process took the port meanwhile);
    raises PeerUnavailable with its output if it never says it listens."""
    output = ""
    for _ in range(2):
        port = free_port()
        service = processes.start(make_cmd(port), name=name, stdin_pipe=stdin_pipe, cwd=cwd)
        if service.wait_for(ready, READY_TIMEOUT):
            return PeerServer(service, port, parse)
        output = service.log
        service.stop()
    raise PeerUnavailable(f"{name} did not start listening within {READY_TIMEOUT:g} s: {output.strip()[-300:]}")


class Peer:
    name = ""  # as --peers names it
    implementation = ""  # the TLS implementation, for the report
    server_tool: str | None = None  # what plays the server, for the report ("openssl s_server")
    client_tool: str | None = None
    http_only = False  # its client speaks HTTP only: servers it meets answer HTTP
    debian_packages: tuple[str, ...] = ()  # what ``interop --install-peers`` installs when it is missing

    def missing(self) -> str | None:
        """Why this peer cannot run here (one line), or None."""
        return None

    def prepare(self, ctx: RunContext) -> None:
        """Build what needs building; raise PeerUnavailable if that fails."""

    def make_ready(self, ctx: RunContext) -> str | None:
        """``missing``, then ``prepare``: None when the peer can take part, else why not."""
        reason = self.missing()
        if reason is None:
            try:
                self.prepare(ctx)
            except PeerUnavailable as e:
                reason = str(e)
        return reason

    def version(self) -> str:
        return "unknown"

    def abilities(self, role: str) -> frozenset[str]:
        """What this peer can do as ``role`` ("server" or "client")."""
        return frozenset()

    def start_server(self, spec: ServerSpec, ctx: RunContext) -> PeerServer:
        raise NotImplementedError

    def run_client(self, spec: ClientSpec, port: int, ctx: RunContext) -> Observation:
        raise NotImplementedError


def all_peers() -> list[Peer]:
    """Every peer this package knows, in the report's order."""
    from .curl import Curl
    from .gnutls import GnuTls
    from .gotls import GoTls
    from .jsse import Jsse
    from .openssl import OpenSsl
    from .pyssl import PythonSsl

    return [OpenSsl(), GnuTls(), GoTls(), PythonSsl(), Jsse(), Curl()]


__all__ = ["Peer", "PeerServer", "PeerUnavailable", "RunContext", "all_peers", "free_port", "missing_programs", "start_listening",
           "tool_version", "ClientSpec", "ServerSpec", "Observation", "Seen", "CertificateSource"]


@dataclass
class Conversation:
    """An interactive client's output once it ended (``timed_out``: it had to be killed)."""

    output: str
    exit_code: int | None
    timed_out: bool


def converse(ctx: RunContext, name: str, cmd: list[str], *, line: str | None, answered: Callable[[str], bool],
             ending: str = "close") -> Conversation:
    """Run a client that sends what it reads on stdin (``openssl s_client``, ``gnutls-cli``):
    write ``line``, wait (bounded) until ``answered(output)`` or it exits, then end it: close
    its stdin ("close": it sends close_notify and exits) or kill it ("truncate": the kernel
    closes its socket, no close_notify)."""
    service = ctx.processes.start(cmd, name=name, stdin_pipe=True)
    assert service.proc.stdin is not None
    try:
        if line is not None:
            try:
                service.proc.stdin.write(line.encode() + b"\n")
                service.proc.stdin.flush()
            except BrokenPipeError:
                pass  # it ended already: its output says why
        service.wait_for(answered, ctx.timeout)
        if ending == "truncate":
            service.stop()
            return Conversation(service.log, None, False)
        try:
            service.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            service.proc.wait(ctx.timeout)
            return Conversation(service.log, service.proc.returncode, False)
        except subprocess.TimeoutExpired:
            return Conversation(service.log, None, True)
    finally:
        service.stop()
