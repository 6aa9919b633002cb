"""The Go TLS peer (``tests/peers/gotls/main.go``, Go's ``crypto/tls``) for interop tests.

``build_gotls()`` compiles it once per source and Go version into ``.cache/peers/`` of the
checkout (standard library only: no module is downloaded, no network is touched).
``GoTlsServer`` runs it as a server on a free port and waits (bounded) until it listens;
``run_gotls_client`` runs it as a client to the end. Both hand back its JSON lines, one per
connection (see the comment at the top of main.go for the flags and the fields).

The ``gotls`` fixture (conftest.py) gives tests both, skipping when Go is not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tests" / "peers" / "gotls"
CACHE = REPO / ".cache" / "peers"
TIMEOUT = 10.0
BUILD_TIMEOUT = 300.0

Event = dict[str, Any]


class GoUnavailable(Exception):
    """``go`` is not installed (tests skip, saying so)."""


def _go_environment(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The module names no dependency: nothing to fetch, and no toolchain download either.
    env.update(GOFLAGS="-mod=mod", GOTOOLCHAIN="local", GOPROXY="off", GO111MODULE="on", CGO_ENABLED="0")
    if not (env.get("GOCACHE") or env.get("XDG_CACHE_HOME") or env.get("HOME")):
        env["GOCACHE"] = str(cache / "go-build")
    return env


def build_gotls(cache: Path = CACHE) -> Path:
    """The peer's binary, built now unless one built from the same sources and Go exists."""
    go = shutil.which("go")
    if go is None:
        raise GoUnavailable("go is not installed (Debian: golang-go)")
    env = _go_environment(cache)
    go_version = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60, env=env, check=True).stdout
    digest = hashlib.sha256(go_version.encode())
    for name in ("go.mod", "main.go"):
        digest.update(name.encode() + b"\0" + (SOURCE / name).read_bytes())
    binary = cache / f"gotls-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    # Built beside its final name and renamed: two test sessions building at once each
    # produce a whole binary, and neither sees the other's half-written one.
    fd, partial = tempfile.mkstemp(prefix=".gotls-", dir=cache)
    os.close(fd)
    try:
        result = subprocess.run([go, "build", "-trimpath", "-o", partial, "."], cwd=SOURCE, env=env,
                                capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"building the Go TLS peer failed:\n{result.stderr}")
        os.replace(partial, binary)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return binary


class _Lines:
    """Whole lines from a pipe, each read waiting (bounded) in select, never past a line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.ended = False

    def next(self, deadline: float) -> bytes | None:
        """The next line, or None at the end of output or past ``deadline``."""
        while b"\n" not in self.buffer:
            if self.ended:
                return None
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                self.ended = True
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


class GoTlsServer:
    """``gotls -mode server ARGS...`` on 127.0.0.1, a free port it picked itself."""

    def __init__(self, binary: Path, *args: str, timeout: float = TIMEOUT) -> None:
        self.proc = subprocess.Popen([str(binary), "-mode", "server", "-listen", "127.0.0.1:0", *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        self._lines = _Lines(self.proc.stdout.fileno())
        self.events: list[Event] = []  # every connection line so far
        try:
            listening = self._next(time.monotonic() + timeout)
            if listening is None or listening.get("event") != "listening":
                raise RuntimeError(f"the Go TLS server did not start: {listening} {self._stderr()}")
        except BaseException:
            self.stop()
            raise
        self.port = int(listening["addr"].rsplit(":", 1)[1])

    def _next(self, deadline: float) -> Event | None:
        line = self._lines.next(deadline)
        return None if line is None else json.loads(line)

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def connections(self, n: int, timeout: float = TIMEOUT) -> list[Event]:
        """The first ``n`` connection lines, waiting (bounded) for those not printed yet."""
        deadline = time.monotonic() + timeout
        while len(self.events) < n:
            event = self._next(deadline)
            if event is None:
                raise TimeoutError(f"the Go TLS server reported {len(self.events)} of {n} connections: {self.events}")
            self.events.append(event)
        return self.events[:n]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> GoTlsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class GoTlsClientRun:
    exit_code: int
    connections: list[Event]
    stderr: str


def run_gotls_client(binary: Path, *args: str, timeout: float = 30.0) -> GoTlsClientRun:
    """``gotls -mode client ARGS...`` to its end (bounded by ``timeout``)."""
    result = subprocess.run([str(binary), "-mode", "client", *args], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=timeout)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return GoTlsClientRun(result.returncode, events, result.stderr.decode(errors="replace"))


class GoTls:
    """What the ``gotls`` fixture gives a test: servers stopped when the test ends, clients."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self._servers: list[GoTlsServer] = []

    def server(self, *args: str) -> GoTlsServer:
        server = GoTlsServer(self.binary, *args)
        self._servers.append(server)
        return server

    def client(self, *args: str, timeout: float = 30.0) -> GoTlsClientRun:
        return run_gotls_client(self.binary, *args, timeout=timeout)

    def stop(self) -> None:
        for server in self._servers:
            server.stop()

