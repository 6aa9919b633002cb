"""Java's JSSE (the JDK's own TLS implementation): the peer program ``jsse/Peer.java``,
compiled with ``javac`` once per source and JDK into the user's cache, run as a long-lived
JVM that takes one command a line (starting a JVM per case would cost more than the case).
JDK 17 sets key exchange groups for the whole JVM, so there is one JVM per group setting.
Its lines are the Go peer's, tagged with the command's id."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from ..processes import Service
from ..specs import ClientSpec, Observation, Seen, ServerSpec
from . import Peer, PeerServer, PeerUnavailable, RunContext, missing_programs, tool_version
from .gotls import flags_for_client, flags_for_server, json_connections

SOURCE = Path(__file__).resolve().parent / "jsse" / "Peer.java"
JAVA_GROUPS = {"X25519": "x25519", "P-256": "secp256r1", "P-384": "secp384r1"}
BUILD_TIMEOUT = 300.0
START_TIMEOUT = 30.0  # a JVM's start on a busy machine


def build_jsse(cache: Path) -> Path:
    """The folder holding the compiled Peer class, compiled now unless it exists."""
    java_version = tool_version(["javac", "-version"])
    digest = hashlib.sha256(java_version.encode() + SOURCE.read_bytes()).hexdigest()[:16]
    folder = cache / f"jsse-{digest}"
    if (folder / "Peer.class").exists():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jsse-build-", dir=cache) as scratch:
        try:
            done = subprocess.run(["javac", "-d", scratch, str(SOURCE)], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise PeerUnavailable(f"javac took over {BUILD_TIMEOUT:.0f} s") from None
        if done.returncode != 0:
            raise PeerUnavailable(f"javac failed: {done.stderr.strip()[-300:]}")
        try:
            os.replace(scratch, folder)
            os.mkdir(scratch)  # for TemporaryDirectory's cleanup
        except OSError:
            if not (folder / "Peer.class").exists():  # another build won the race: use it
                raise
    return folder


class _Jvm:
    """One ``java Peer`` process taking commands on stdin; its answers are in its log."""

    def __init__(self, ctx: RunContext, classes: Path, groups: tuple[str, ...]) -> None:
        cmd = ["java", "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-cp", str(classes)]
        if groups:
            cmd.append("-Djdk.tls.namedGroups=" + ",".join(JAVA_GROUPS[g] for g in groups))
        self.service = ctx.processes.start([*cmd, "Peer"], name="jsse", stdin_pipe=True)
        if not self.service.wait_for(lambda log: '"event":"ready"' in log, START_TIMEOUT):
            output = self.service.log
            self.service.stop()
            raise PeerUnavailable(f"java did not start: {output.strip()[-300:]}")

    def send(self, *words: str) -> None:
        assert self.service.proc.stdin is not None
        try:
            self.service.proc.stdin.write(("\t".join(words) + "\n").encode())
            self.service.proc.stdin.flush()
        except BrokenPipeError:
            raise PeerUnavailable(f"the JVM ended: {self.service.log.strip()[-300:]}") from None

    def lines(self, command: str) -> list[dict[str, object]]:
        found = []
        tag = f'"id":"{command}"'
        for line in self.service.log.splitlines():
            if tag not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("id") == command:
                found.append(event)
        return found

    def wait(self, command: str, event: str, timeout: float) -> dict[str, object] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.service.alive:
            for found in self.lines(command):
                if found.get("event") in (event, "failed"):
                    return found
            time.sleep(0.01)
        return None


class _JvmServer(PeerServer):
    def __init__(self, jvm: _Jvm, command: str, port: int) -> None:
        self.jvm = jvm
        self.command = command
        self.port = port
        self.service = jvm.service

    def _seen(self) -> list[Seen]:
        return json_connections("\n".join(json.dumps(e) for e in self.jvm.lines(self.command)))

    def observe(self, connections: int, wait: float, *, ends: bool = False) -> Observation:
        deadline = time.monotonic() + wait
        while True:
            seen = self._seen()
            done = len(seen) >= connections and (not ends or all(s.end is not None for s in seen if s.ok))
            if done or time.monotonic() > deadline or not self.service.alive:
                return Observation(seen, output="\n".join(json.dumps(e) for e in self.jvm.lines(self.command)),
                                   problem=None if self.service.alive else "the JVM exited")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.service.alive:
            try:
                self.jvm.send(self.command, "stop")
            except PeerUnavailable:
                pass


class Jsse(Peer):
    name = "java"
    debian_packages = ("default-jdk-headless",)
    implementation = "Java JSSE"
    server_tool = "Peer.java (JSSE)"
    client_tool = "Peer.java (JSSE)"

    def __init__(self) -> None:
        self.classes: Path | None = None
        self._jvms: dict[tuple[str, ...], _Jvm] = {}
        self._ids = itertools.count(1)

    def missing(self) -> str | None:
        reason = missing_programs("java", "javac")
        return f"{reason} (Debian: default-jdk-headless)" if reason else None

    def prepare(self, ctx: RunContext) -> None:
        self.classes = build_jsse(ctx.cache)
        self._jvms.clear()

    def version(self) -> str:
        return tool_version(["java", "-version"], lambda text: text.split("\n")[0].replace('"', ""))

    def abilities(self, role: str) -> frozenset[str]:
        common = {"pin-version", "alpn", "groups", "key-ecdsa-p384", "key-rsa", "key-ed25519", "echo", "truncate"}
        if role == "server":
            # No "report-end": a JSSE server's read ends the same way (end of stream, no
            # exception) whether the client sent close_notify or just closed TCP (measured with
            # JDK 17, TLS 1.2 and 1.3), so it cannot tell a truncation from a clean end.
            return frozenset(common | {"client-auth", "client-auth-optional", "sni-select", "close", "http"})
        return frozenset(common | {"client-cert", "verify", "read-to-end"})  # no "resume": JSSE does not say

    def _jvm(self, ctx: RunContext, groups: tuple[str, ...]) -> _Jvm:
        assert self.classes is not None
        jvm = self._jvms.get(groups)
        if jvm is None or not jvm.service.alive or jvm.service.log_path.parent != ctx.processes.workdir:
            jvm = self._jvms[groups] = _Jvm(ctx, self.classes, groups)
        return jvm

    def start_server(self, spec: ServerSpec, ctx: RunContext) -> PeerServer:
        jvm = self._jvm(ctx, spec.groups)
        command = str(next(self._ids))
        jvm.send(command, "server", *flags_for_server(spec, ctx.pki.ca_pem), "-timeout", f"{ctx.timeout:g}s")
        listening = jvm.wait(command, "listening", START_TIMEOUT)
        if listening is None or listening.get("event") != "listening":
            raise PeerUnavailable(f"the JSSE server did not start: {listening or jvm.service.log.strip()[-300:]}")
        return _JvmServer(jvm, command, int(str(listening["addr"]).rsplit(":", 1)[1]))

    def run_client(self, spec: ClientSpec, port: int, ctx: RunContext) -> Observation:
        jvm = self._jvm(ctx, spec.groups)
        command = str(next(self._ids))
        started = time.monotonic()
        jvm.send(command, "client", *flags_for_client(spec, port, ctx.pki.ca_pem), "-timeout", f"{ctx.timeout:g}s")
        done = jvm.wait(command, "done", ctx.timeout * max(1, spec.connections) + 5)
        output = "\n".join(json.dumps(e) for e in jvm.lines(command))
        if done is None:
            return Observation(json_connections(output), timed_out=True, output=output,
                               problem=f"the JSSE client did not finish within {time.monotonic() - started:.0f} s")
        return Observation(json_connections(output), exit_code=0, output=output)

