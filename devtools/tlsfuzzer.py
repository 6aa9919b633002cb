"""Running tlsfuzzer's scripts against TLS servers: the ``tls_server`` example guest on this
host, ``openssl s_server``, and a bare pyOpenSSL server on the host's own OpenSSL build and
TLS profile (the witness for "OpenSSL does this, not the host").

Used by tests/test_tlsfuzzer.py and benchmarks/tlsfuzzer_report.py. tlsfuzzer is GPL and is
not part of this repository: ``$TLSFUZZER`` names its folder (the one holding ``tlsfuzzer/``
and ``scripts/``); without it, ``../shared/testsuites/tlsfuzzer`` beside the checkout is
tried. Its scripts need tlslite-ng and ecdsa (the ``test`` extra).

``SCRIPTS`` is the curated list: each script's options, the host TLS profile and guest mode
it needs, and every probe expected to fail here with the reason, passed to the script as
``-x PROBE -X ERROR`` (a probe listed there that passes fails the script: XPASS).

    python -m devtools.tlsfuzzer serve-pyopenssl PORT CERT KEY [--profile P] [--mode M]
"""

from __future__ import annotations

import ast
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = Path(os.environ.get("TLSFUZZER") or REPO.parent / "shared" / "testsuites" / "tlsfuzzer")
SEED = 20  # random.seed for every script run: which probes -n samples and the fuzzed values
STARTUP = 120.0  # a host process loading the guest on a busy 2-core machine
SCRIPT_TIMEOUT = 900.0

# The reference servers an expected failure can be shown on.
PYOPENSSL = "pyopenssl"  # bare pyOpenSSL: the host's OpenSSL build and TLS profile
S_SERVER = "s_server"  # openssl s_server (the system OpenSSL, another version)

GCM = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"  # an ECDHE AEAD suite the default profile allows


def available() -> str | None:
    """None when the suite can run here, else why not (for a skip message)."""
    if not (SUITE / "tlsfuzzer" / "_apps").is_dir():
        return f"no tlsfuzzer at {SUITE}: set TLSFUZZER to its folder (it lives outside the repository)"
    try:
        import ecdsa  # noqa: F401
        import tlslite  # noqa: F401
    except ImportError as e:
        return f"tlsfuzzer needs tlslite-ng and ecdsa (the 'test' extra): {e}"
    return None


# --- the curated list -----------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """A probe that fails against this host, and why."""

    probe: str
    reason: str
    error: str  # a substring of tlsfuzzer's failure message that must be the cause (-X)
    same_on: tuple[str, ...] = ()  # reference servers that fail it the same way


@dataclass(frozen=True)
class Kind:
    """What a server is configured with: the host's TLS profile, the guest's mode and ALPN
    ids (None: the guest's default for the mode, http/1.1 for http)."""

    profile: str = "intermediate"
    mode: str = "http"
    alpn: str | None = None

    def __str__(self) -> str:
        return f"{self.profile}/{self.mode}" + (f"/alpn={self.alpn}" if self.alpn else "")

    @property
    def alpn_ids(self) -> str:
        """The ids the guest chooses from (its default: only http/1.1 in http mode)."""
        return self.alpn or ("http/1.1" if self.mode == "http" else "h2,http/1.1")


@dataclass(frozen=True)
class Script:
    name: str  # scripts/test-NAME.py
    args: tuple[str, ...] = ()
    kind: Kind = Kind()
    ci_n: int | None = None  # -n in the test suite (fuzzing scripts); None: the script's default
    report_n: int | None = None  # -n in the report; 0 runs every probe
    expected: tuple[Expected, ...] = ()
    only: tuple[str, ...] = ()  # run just these probes (when every other one fails like them)

    @property
    def module(self) -> str:
        return "tlsfuzzer._apps.test_" + self.name.replace("-", "_")

    def expected_on(self, server: str) -> tuple[Expected, ...]:
        return tuple(e for e in self.expected if server in e.same_on)


# Reasons shared by several scripts.
SHA1_ONLY = (
    "the ClientHello has no signature_algorithms extension, so TLS 1.2 assumes SHA-1, which "
    "OpenSSL 3.0 and later refuse at their default security level ('no suitable signature "
    "algorithm'); s_server and a bare pyOpenSSL server refuse it too, and both pass with "
    "-cipher DEFAULT:@SECLEVEL=0"
)
NO_RENEGOTIATION = (
    "every TLS profile of the host refuses renegotiation (no_renegotiation alert); the bare "
    "pyOpenSSL server with the same profile answers the same, s_server renegotiates"
)
CLIENT_HELLO_CAP = (
    "the host refuses a ClientHello over 64 KiB (--max-client-hello 65536, the default): "
    "decode_error before OpenSSL sees it"
)

COMPAT = Kind("compat")
ECHO = Kind(mode="echo")

SCRIPTS: tuple[Script, ...] = (
    Script("conversation", ("-d", "-C", GCM)),
    Script("tls13-conversation"),
    Script("tls13-hrr"),
    Script("tls13-keyupdate", ci_n=20, report_n=0),
    Script("tls13-ccs"),
    Script("tls13-multiple-ccs-messages"),
    Script("tls13-finished", ci_n=20, report_n=0),
    Script("tls13-lengths", kind=ECHO, ci_n=40, report_n=300),
    Script("tls13-legacy-version"),
    Script("tls13-invalid-ciphers", ci_n=20, report_n=200),
    Script("tls13-nociphers"),
    Script("tls13-keyshare-omitted"),
    Script("tls13-empty-alert"),
    Script("tls13-0rtt-garbage", ("-d",)),
    Script("tls13-record-layer-limits", ci_n=20, report_n=0),
    Script("tls13-zero-length-data"),
    Script("tls13-unrecognised-groups", kind=COMPAT),
    Script("tls13-signature-algorithms", ci_n=20, report_n=0),
    Script("tls13-connection-abort"),
    Script("record-layer-fragmentation", ("-d", "-C", GCM)),
    Script("fuzzed-ciphertext", ("-d",), ci_n=20),
    Script("fuzzed-plaintext", ("-d",), kind=COMPAT, ci_n=20, report_n=200),
    Script("fuzzed-finished", kind=COMPAT, ci_n=20),
    Script("invalid-client-hello-w-record-overflow", ("-d", "-C", GCM), ci_n=40),
    Script("ccs", ("-d", "-C", GCM)),
    Script("renegotiation-disabled", ("-d", "-C", GCM)),
    # The guest also offers h2, so a resumption that changes to it can succeed (only the
    # negotiation is tested: nothing speaks HTTP/2 after it).
    Script("alpn-negotiation", ("-d",), kind=Kind("compat", alpn="h2,http/1.1")),
    Script("truncating-of-client-hello", ("-d", "-C", GCM)),
    Script("large-hello", ("-d",), ci_n=10),
    Script("extensions", kind=COMPAT),
    Script("invalid-server-name-extension", ("-d",), kind=COMPAT),
    Script("ssl-death-alert", ("-d",), kind=COMPAT),
)


def script(name: str) -> Script:
    return next(s for s in SCRIPTS if s.name == name)


# --- running a script -------------------------------------------------------------------------

# Seeds Python's random (tlsfuzzer samples probes and fuzzes values with it), then runs the
# script as __main__ with the remaining arguments.
_BOOT = (
    "import random, runpy, sys\n"
    "seed, module = int(sys.argv[1]), sys.argv[2]\n"
    "sys.argv = [module] + sys.argv[3:]\n"
    "random.seed(seed)\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)


@dataclass
class Outcome:
    """One run of a script, from its summary."""

    passed: int = 0
    failed: int = 0
    xfailed: int = 0
    xpassed: int = 0
    failed_probes: list[str] = field(default_factory=list)
    xpassed_probes: list[str] = field(default_factory=list)
    returncode: int | None = None
    seconds: float = 0.0
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.failed and not self.xpassed

    def summary(self) -> str:
        text = f"{self.passed} passed, {self.failed} failed"
        if self.xfailed or self.xpassed:
            text += f", {self.xfailed} expected failures, {self.xpassed} unexpected passes"
        return text

    def why(self, probe: str) -> str:
        """The last error line tlsfuzzer printed for ``probe`` (for failure messages)."""
        block = self.output.split(f"\n{probe} ...\n", 1)[-1] if f"\n{probe} ...\n" in "\n" + self.output else ""
        errors = [line for line in block.split("\n\n", 1)[0].splitlines() if re.match(r"^[\w.]*(Error|Exception)\b", line)]
        return errors[-1] if errors else "(no error line)"


def _listed(output: str, heading: str) -> list[str]:
    match = re.search(rf"^{heading}:\n((?:\t.*\n?)*)", output, re.M)
    return [ast.literal_eval(line.strip()) for line in match.group(1).splitlines()] if match else []


def parse(output: str, returncode: int | None, seconds: float) -> Outcome:
    counts = {key: int(value) for key, value in re.findall(r"^(PASS|FAIL|XFAIL|XPASS): (\d+)$", output, re.M)}
    return Outcome(
        counts.get("PASS", 0), counts.get("FAIL", 0), counts.get("XFAIL", 0), counts.get("XPASS", 0),
        _listed(output, "FAILED"), _listed(output, "XPASSED"), returncode, seconds, output,
    )


def command(script: Script, port: int, *, n: int | None = None, expected: tuple[Expected, ...] = (), only: tuple[str, ...] = ()) -> list[str]:
    """The command running ``script`` against 127.0.0.1:``port`` with Python's random seeded."""
    args = ["-h", "127.0.0.1", "-p", str(port), *script.args]
    if n is not None:
        args += ["-n", str(n)]
    for e in expected:
        args += ["-x", e.probe, "-X", e.error]
    return [sys.executable, "-c", _BOOT, str(SEED), script.module, *args, *only]


def run(script: Script, port: int, *, n: int | None = None, expected: tuple[Expected, ...] = (),
        only: tuple[str, ...] = (), timeout: float = SCRIPT_TIMEOUT) -> Outcome:
    """Run one script (a subprocess, bounded by ``timeout``) and parse its summary."""
    env = {**os.environ, "PYTHONPATH": str(SUITE), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    try:
        proc = subprocess.run(command(script, port, n=n, expected=expected, only=only), cwd=SUITE, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return parse(out + f"\n(timed out after {timeout:.0f} s)", None, time.monotonic() - started)
    return parse(proc.stdout + proc.stderr, proc.returncode, time.monotonic() - started)


# --- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class ServerProcess:
    """A server subprocess on 127.0.0.1:``port``, its output in ``log_path``; started when the
    log shows ``ready``, stopped (bounded) by ``stop()``."""

    label = "server"

    def __init__(self, cmd: list[str], log_path: Path, ready: str, *, port: int, startup: float = STARTUP, cwd: Path | None = None) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # stdin stays an open pipe: s_server takes EOF on stdin for "quit".
        self.process = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup
        while ready not in self.log:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.label} did not start ({cmd[0]} ...): {self.log[-2000:]}")
            time.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def descriptors(self) -> int:
        return descriptors(self.process.pid)

    def settled_descriptors(self, target: int, timeout: float = 10.0) -> int:
        """The descriptor count once it is back to ``target`` (connections the clients just
        closed are still being closed on this side), or whatever it is at the deadline."""
        deadline = time.monotonic() + timeout
        while (count := self.descriptors()) > target and time.monotonic() < deadline:
            time.sleep(0.05)
        return count

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(10)
        assert self.process.stdin is not None
        self.process.stdin.close()
        self._log.close()


class GuestServer(ServerProcess):
    """``wasi-tls-host run ... tls_server PORT --count 0 --concurrent --mode MODE``."""

    label = "the tls_server guest"

    def __init__(self, guest: Path, cert: Path, key: Path, workdir: Path, kind: Kind) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "wasi_tls_host.cli", "run", "--allow-listen", f"127.0.0.1:{port}",
               "--identity", f"web={cert},{key}", "--tls-profile", kind.profile, "--access-log",
               str(guest), str(port), "--count", "0", "--concurrent", "--mode", kind.mode]
        if kind.alpn:
            cmd += ["--alpn", kind.alpn]
        super().__init__(cmd, workdir / f"guest-{kind.profile}-{kind.mode}-{port}.log", "listening on", port=port)

    def connections(self) -> int:
        """Connections served so far (one access-log line each, written when it closes)."""
        return sum("access peer=" in line for line in self.log.splitlines())


class OpensslServer(ServerProcess):
    """``openssl s_server -www`` (http) or ``-rev`` (echo: each line sent back reversed,
    which keeps its length, all tlsfuzzer's echo tests look at)."""

    label = "openssl s_server"

    def __init__(self, cert: Path, key: Path, workdir: Path, *, mode: str = "http") -> None:
        port = free_port()
        cmd = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key),
               "-www" if mode == "http" else "-rev"]
        super().__init__(cmd, workdir / f"s_server-{mode}-{port}.log", "ACCEPT", port=port, startup=10.0)


class PyOpenSSLServer(ServerProcess):
    """A bare pyOpenSSL server (``serve_pyopenssl``) as a process."""

    label = "the pyOpenSSL server"

    def __init__(self, cert: Path, key: Path, workdir: Path, kind: Kind) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "devtools.tlsfuzzer", "serve-pyopenssl", str(port), str(cert), str(key),
               "--profile", kind.profile, "--mode", kind.mode, "--alpn", kind.alpn_ids]
        super().__init__(cmd, workdir / f"pyopenssl-{kind.profile}-{kind.mode}-{port}.log", f"listening on 127.0.0.1:{port}",
                         port=port, startup=30.0, cwd=REPO)


def linger_close(sock: socket.socket, timeout: float = 2.0) -> None:
    """Close after the client has read what was sent: end our side, then read until the
    client closes (or ``timeout``). Closing with unread input makes the kernel send a reset,
    which can reach the client before the alert OpenSSL just wrote and discard it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(timeout), 0))
        deadline = time.monotonic() + timeout
        while sock.recv(65536) and time.monotonic() < deadline:
            pass
    except OSError:
        pass
    finally:
        sock.close()


def serve_pyopenssl(port: int, cert: str, key: str, profile: str, mode: str, alpn: list[bytes]) -> None:
    """One thread per connection, OpenSSL on the socket itself (no memory BIOs, no host code
    but the profile): what OpenSSL alone answers, for comparison with the host. ALPN and the
    two modes are the tls_server guest's: the first of ``alpn`` the client offered is chosen,
    a client offering only other protocols gets no_application_protocol; ``http`` answers one request, ``echo`` echoes."""
    from OpenSSL import SSL

    from wasi_tls_host.tls.profiles import profile as tls_profile

    chosen = tls_profile(profile)
    ctx = SSL.Context(SSL.TLS_METHOD)
    chosen.configure(ctx, (chosen.min_version, chosen.max_version))
    ctx.use_certificate_chain_file(cert)
    ctx.use_privatekey_file(key)

    def select_alpn(conn: SSL.Connection, offered: list[bytes]) -> bytes:
        for protocol in alpn:  # server preference, as the guest
            if protocol in offered:
                return protocol
        raise SSL.Error("no common ALPN protocol")  # pyOpenSSL answers no_application_protocol

    ctx.set_alpn_select_callback(select_alpn)

    def handle(sock: socket.socket) -> None:
        # A blocking socket with a kernel receive timeout: a silent client cannot hold a
        # thread for ever, and OpenSSL still sees a blocking socket.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 30, 0))
        conn = SSL.Connection(ctx, sock)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            request = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                if mode == "echo":
                    conn.sendall(data)
                    continue
                request += data
                if b"\n\n" in request.replace(b"\r\n", b"\n"):
                    body = b"ok\n"
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    break
            conn.shutdown()
        except (SSL.Error, OSError):
            pass  # what the client sees (an alert, a close) is the point; nothing to log here
        finally:
            linger_close(sock)

    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devtools.tlsfuzzer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve-pyopenssl", help="run the bare pyOpenSSL server until killed")
    serve.add_argument("port", type=int)
    serve.add_argument("cert")
    serve.add_argument("key")
    serve.add_argument("--profile", default="intermediate")
    serve.add_argument("--mode", choices=["http", "echo"], default="http")
    serve.add_argument("--alpn", default="http/1.1", help="ALPN ids in preference order, comma-separated")
    args = parser.parse_args(argv)
    serve_pyopenssl(args.port, args.cert, args.key, args.profile, args.mode, [p.encode() for p in args.alpn.split(",") if p])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
