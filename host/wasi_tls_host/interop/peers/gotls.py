"""Go's ``crypto/tls``: the peer program in ``gotls/main.go`` (standard library only).

``build_gotls()`` compiles it with the ``go`` command (Debian: golang-go) once per source
and Go version into the user's cache (no module download, no network). ``GoTlsServer``
runs it as a server on a port it picks itself and waits (bounded) until it listens;
``run_gotls_client`` runs it as a client to the end. Both hand back its JSON lines, one per
connection (the flags and fields are described at the top of main.go). The ``GoTls`` peer
drives both for the interop matrix; the test suite's ``gotls`` fixture uses the same.
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

from ...runtime.cache import user_cache_dir
from ..specs import ClientSpec, Observation, Seen, ServerSpec, version_name
from . import Peer, PeerServer, PeerUnavailable, RunContext, missing_programs, tool_version

SOURCE = Path(__file__).resolve().parent / "gotls"
TIMEOUT = 10.0
BUILD_TIMEOUT = 300.0

Event = dict[str, Any]


class GoUnavailable(PeerUnavailable):
    """``go`` is not installed (or the build failed)."""


def peer_cache_dir() -> Path:
    """Built peers: ``$WASI_TLS_HOST_PEER_CACHE``, else ``~/.cache/wasi-tls-host/peers``."""
    return user_cache_dir("peers", "WASI_TLS_HOST_PEER_CACHE")


def _go_environment(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The module names no dependency: nothing to fetch, and no toolchain download either.
    env.update(GOFLAGS="-mod=mod", GOTOOLCHAIN="local", GOPROXY="off", GO111MODULE="on", CGO_ENABLED="0")
    if not (env.get("GOCACHE") or env.get("XDG_CACHE_HOME") or env.get("HOME")):
        env["GOCACHE"] = str(cache / "go-build")
    return env


def build_gotls(cache: Path | None = None) -> Path:
    """The peer's binary, built now unless one built from the same sources and Go exists."""
    cache = cache or peer_cache_dir()
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
    # Built in a scratch copy of the sources (an installed package's folder may be read-only)
    # and renamed into place: two builds at once each produce a whole binary, and neither
    # sees the other's half-written one.
    with tempfile.TemporaryDirectory(prefix="gotls-build-") as scratch:
        for name in ("go.mod", "main.go"):
            shutil.copyfile(SOURCE / name, Path(scratch) / name)
        partial = Path(scratch) / "gotls"
        try:
            result = subprocess.run([go, "build", "-trimpath", "-o", str(partial), "."], cwd=scratch, env=env,
                                    capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise GoUnavailable(f"building the Go TLS peer took over {BUILD_TIMEOUT:.0f} s") from None
        if result.returncode != 0:
            raise GoUnavailable(f"building the Go TLS peer failed: {result.stderr.strip()[-500:]}")
        fd, staged = tempfile.mkstemp(prefix=".gotls-", dir=cache)
        os.close(fd)
        try:
            shutil.copyfile(partial, staged)
            os.chmod(staged, 0o755)
            os.replace(staged, binary)
        finally:
            if os.path.exists(staged):
                os.unlink(staged)
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
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        self._lines = _Lines(self.proc.stdout.fileno())
        self.events: list[Event] = []  # every connection line so far
        self.ends: list[Event] = []  # every "end" line so far
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

    def _read_until(self, enough: Any, deadline: float) -> bool:
        while not enough():
            event = self._next(deadline)
            if event is None:
                return False
            (self.ends if event.get("event") == "end" else self.events).append(event)
        return True

    def connections(self, n: int, timeout: float = TIMEOUT) -> list[Event]:
        """The first ``n`` connection lines, waiting (bounded) for those not printed yet."""
        if not self._read_until(lambda: len(self.events) >= n, time.monotonic() + timeout):
            raise TimeoutError(f"the Go TLS server reported {len(self.events)} of {n} connections: {self.events}")
        return self.events[:n]

    def seen(self, n: int, wait: float, ends: int = 0) -> tuple[list[Event], list[Event]]:
        """Up to ``n`` connection lines and ``ends`` end lines, waiting at most ``wait``."""
        self._read_until(lambda: len(self.events) >= n and len(self.ends) >= ends, time.monotonic() + wait)
        return self.events[:n], self.ends[:ends]

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


def seen_from_event(event: Event) -> Seen:
    """A JSON line of the Go peer (or any peer printing the same fields) as a ``Seen``."""
    received = event.get("received")
    return Seen(
        ok=bool(event.get("ok")), error=event.get("error") or None, version=version_name(event.get("version")),
        alpn=event.get("alpn", ""), resumed=event.get("resumed"), server_name=event.get("server_name"),
        peer_subject=event.get("peer_subject", ""), reply=event.get("reply"),
        received=int(received) if received is not None else None, end=event.get("end"),
        handshake_ms=event.get("handshake_ms"),
    )


def json_connections(text: str) -> list[Seen]:
    """The "connection" lines among JSON output lines, each with its "end" line merged in."""
    seen: list[Seen] = []
    by_peer: dict[str, Seen] = {}
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("event") == "connection":
            record = seen_from_event(event)
            seen.append(record)
            by_peer[str(event.get("peer"))] = record
        elif event.get("event") == "end" and str(event.get("peer")) in by_peer:
            by_peer[str(event.get("peer"))].end = event.get("end")
    return seen


def json_listening(log: str) -> int | None:
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "listening":
            return int(str(event["addr"]).rsplit(":", 1)[1])
    return None


GO_GROUPS = {"X25519": "X25519", "P-256": "P-256", "P-384": "P-384"}


def json_peer_server(ctx: RunContext, name: str, cmd: list[str]) -> PeerServer:
    """A peer server that prints {"event":"listening","addr":...} once it listens on the port
    it picked, then JSON connection lines (the Go and Python peers)."""
    service = ctx.processes.start(cmd, name=name)
    if not service.wait_for(lambda log: json_listening(log) is not None, 10.0):
        output = service.log
        service.stop()
        raise PeerUnavailable(f"{name} did not start listening: {output.strip()[-300:]}")
    port = json_listening(service.log)
    assert port is not None
    return PeerServer(service, port, json_connections)


def flags_for_server(spec: ServerSpec, ca: Path) -> list[str]:
    """The server flags the Go and Python peers share."""
    args = ["-cert", str(spec.cert.cert), "-key", str(spec.cert.key), "-min", spec.version, "-max", spec.version,
            "-ca", str(ca), "-then", spec.behaviour, f"-tickets={'true' if spec.tickets else 'false'}"]
    if spec.sni_cert is not None:
        args += ["-cert2", str(spec.sni_cert.cert), "-key2", str(spec.sni_cert.key)]
    if spec.alpn:
        args += ["-alpn", ",".join(spec.alpn)]
    args += ["-client-auth", {"none": "none", "optional": "verify-if-given", "required": "require"}[spec.client_auth]]
    if spec.groups:
        args += ["-groups", ",".join(GO_GROUPS[g] for g in spec.groups)]
    return args


def flags_for_client(spec: ClientSpec, port: int, ca: Path) -> list[str]:
    args = ["-connect", f"127.0.0.1:{port}", "-server-name", spec.server_name, "-ca", str(ca), "-min", spec.version,
            "-max", spec.version, "-count", str(spec.connections), f"-tickets={'true' if spec.resumption else 'false'}",
            "-then", spec.ending]
    if spec.alpn:
        args += ["-alpn", ",".join(spec.alpn)]
    if spec.identity is not None:
        args += ["-cert", str(spec.identity.cert), "-key", str(spec.identity.key)]
    if spec.groups:
        args += ["-groups", ",".join(GO_GROUPS[g] for g in spec.groups)]
    if spec.send is not None:
        args += ["-send", spec.send]
    if spec.read_to_end:
        args.append("-read-to-end")
    return args


class GoTls(Peer):
    name = "go"
    debian_packages = ("golang-go",)
    implementation = "Go crypto/tls"
    server_tool = "gotls (Go crypto/tls)"
    client_tool = "gotls (Go crypto/tls)"

    def __init__(self) -> None:
        self.binary: Path | None = None

    def missing(self) -> str | None:
        reason = missing_programs("go")
        return f"{reason} (Debian: golang-go)" if reason else None

    def prepare(self, ctx: RunContext) -> None:
        self.binary = build_gotls(ctx.cache)

    def version(self) -> str:
        return tool_version(["go", "version"], lambda text: text.split()[2])

    def abilities(self, role: str) -> frozenset[str]:
        # Go reads no RSA-PSS (id-RSASSA-PSS) keys, but signs with RSA-PSS using RSA keys.
        common = {"pin-version", "alpn", "groups", "key-ecdsa-p384", "key-rsa", "key-ed25519", "echo", "truncate"}
        if role == "server":
            # No "report-end": crypto/tls takes a TCP close at a record boundary for a clean
            # end (io.EOF, as for close_notify; RFC 8446 section 6.1 asks for an error, Go
            # accepts it for the web's sake), so it cannot say whether a client truncated.
            return frozenset(common | {"client-auth", "client-auth-optional", "sni-select", "close"})
        return frozenset(common | {"client-cert", "resume", "verify", "read-to-end"})

    def start_server(self, spec: ServerSpec, ctx: RunContext) -> PeerServer:
        assert self.binary is not None
        if spec.behaviour == "http":
            raise PeerUnavailable("the Go peer does not answer HTTP")
        return json_peer_server(ctx, "gotls-server", [str(self.binary), "-mode", "server", "-listen", "127.0.0.1:0",
                                                      "-timeout", f"{ctx.timeout:g}s", *flags_for_server(spec, ctx.pki.ca_pem)])

    def run_client(self, spec: ClientSpec, port: int, ctx: RunContext) -> Observation:
        assert self.binary is not None
        done = ctx.processes.run([str(self.binary), "-mode", "client", "-timeout", f"{ctx.timeout:g}s",
                                  *flags_for_client(spec, port, ctx.pki.ca_pem)], timeout=ctx.timeout + 5, name="gotls-client")
        return Observation(json_connections(done.stdout), exit_code=done.exit_code, timed_out=done.timed_out, output=done.output)
