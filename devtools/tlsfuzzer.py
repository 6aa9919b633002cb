"""Running tlsfuzzer's scripts against TLS servers: the ``tls_server`` example guest (WASI
0.2) and its WASI 0.3 counterpart ``tls_server_p3`` (written with the asyncio binding) on this
host, ``openssl s_server``, and a bare pyOpenSSL server on the host's own OpenSSL build and
TLS profile (the witness for "OpenSSL does this, not the host").

Used by tests/test_tlsfuzzer.py and benchmarks/tlsfuzzer_report.py. tlsfuzzer is GPL and is
not part of this repository: ``$TLSFUZZER`` names its folder (the one holding ``tlsfuzzer/``
and ``scripts/``); without it, ``../shared/testsuites/tlsfuzzer`` beside the checkout is
tried. Its scripts need tlslite-ng and ecdsa (the ``test`` extra).

``SCRIPTS`` is the curated list: each script's options, the host TLS profile and guest mode
it needs, and every probe expected to fail here with the reason, passed to the script as
``-x PROBE -X ERROR`` (a probe listed there that passes fails the script: XPASS). Both guests
take the same arguments and fail the same probes, but where a script says otherwise
(``Script.on``: the 0.3 guest refuses a server name it has no identity for).

    python -m devtools.tlsfuzzer serve-pyopenssl PORT CERT KEY [--profile P] [--mode M] [--alpn IDS]
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
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
# The example guest serving the scripts, per WASI version: same arguments, same answers.
GUESTS = {"0.2": "tls_server", "0.3": "tls_server_p3"}


def available() -> str | None:
    """None when the suite can run here, else why not (for a skip message)."""
    if not (SUITE / "tlsfuzzer" / "_apps").is_dir():
        return f"no tlsfuzzer at {SUITE}: set TLSFUZZER to its folder (it lives outside the repository)"
    missing = [name for name in ("tlslite", "ecdsa") if importlib.util.find_spec(name) is None]
    if missing:
        return f"tlsfuzzer needs tlslite-ng and ecdsa (the 'test' extra); missing: {', '.join(missing)}"
    return None


# --- the curated list -----------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """A probe that fails against this host, and why."""

    probe: str
    reason: str
    # A substring of tlsfuzzer's failure message that must be the cause (-X); None where
    # the failure shows in more than one way (an alert, or a reset that overtook it).
    error: str | None
    same_on: tuple[str, ...] = ()  # reference servers that fail it too (checked by the tests)


@dataclass(frozen=True)
class Kind:
    """What a server is configured with: the host's TLS profile, the guest's mode and ALPN
    ids (None: the guest's default for the mode, http/1.1 for http), and the WASI version of
    the guest (``GUESTS``)."""

    profile: str = "intermediate"
    mode: str = "http"
    alpn: str | None = None
    wasi: str = "0.2"

    def __str__(self) -> str:
        return f"{self.wasi}/{self.profile}/{self.mode}" + (f"/alpn={self.alpn}" if self.alpn else "")

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
    # Against the WASI 0.3 guest: more script options, and expected failures it passes.
    p3_args: tuple[str, ...] = ()
    p3_passes: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return "tlsfuzzer._apps.test_" + self.name.replace("-", "_")

    def on(self, wasi: str) -> Script:
        """This script as run against the guest of WASI version ``wasi``."""
        if wasi == self.kind.wasi:
            return self
        return replace(self, kind=replace(self.kind, wasi=wasi), args=self.args + self.p3_args,
                       expected=tuple(e for e in self.expected if e.probe not in self.p3_passes))

    def expected_on(self, server: str) -> tuple[Expected, ...]:
        return tuple(e for e in self.expected if server in e.same_on)


# --- why probes fail here -----------------------------------------------------------------

BOTH = (PYOPENSSL, S_SERVER)

# The host's own choices.
CLIENT_HELLO_CAP = (
    "a ClientHello over 64 KiB: the host refuses it before OpenSSL sees it (--max-client-hello, "
    "65536 by default; decode_error, or a close when the reset for the unread rest overtakes "
    "the alert)"
)
NO_RENEGOTIATION = (
    "the host's TLS profiles refuse renegotiation (no_renegotiation); the bare pyOpenSSL "
    "server with the profile answers the same, s_server renegotiates"
)
CBC_FALLBACK = (
    "the script's TLS 1.2 fallback offers only CBC suites, which the default profile refuses "
    "(handshake_failure; the bare pyOpenSSL server with the profile answers the same, "
    "s_server accepts CBC)"
)
# OpenSSL's behaviour, shared by OpenSSL 3.0 (s_server) and the host's build (4.0).
SHA1_ONLY = (
    "no signature_algorithms extension, so TLS 1.2 assumes SHA-1 signatures, which OpenSSL 3.0 "
    "and later refuse at their default security level (handshake_failure, 'no suitable "
    "signature algorithm'); s_server and the bare pyOpenSSL server refuse it too, s_server "
    "passes with -cipher DEFAULT:@SECLEVEL=0"
)
PADDED_FINISHED = (
    "OpenSSL answers a Finished message with padding around it with illegal_parameter where "
    "the script expects decode_error (s_server and the bare pyOpenSSL server the same)"
)
# OpenSSL 4.0's behaviour: the host's build and the bare pyOpenSSL server on it fail these,
# OpenSSL 3.0's s_server passes them.
LONG_SIGALGS = (
    "213 or more unusable signature schemes before the two usable RSA-PSS ones: OpenSSL 4.0, "
    "the host's build, finds no shared signature algorithm (handshake_failure) and the bare "
    "pyOpenSSL server on it the same; OpenSSL 3.0's s_server finds them"
)
MANY_KEY_SHARES = (
    "about 220 key shares of unassigned groups before the one it knows: OpenSSL 4.0, the "
    "host's build, answers handshake_failure ('no suitable key share') and the bare pyOpenSSL "
    "server on it the same; OpenSSL 3.0's s_server uses the known share"
)


def _each(reason: str, error: str | None, same_on: tuple[str, ...], *probes: str) -> tuple[Expected, ...]:
    return tuple(Expected(p, reason, error, same_on) for p in probes)


def _over_cap(template: str, first: int, last: int) -> tuple[Expected, ...]:
    """The probes ``template.format(n)`` for n in [first, last]: large-hello's hellos grow
    with n and pass 64 KiB at ``first`` (measured on a run of every probe)."""
    return _each(CLIENT_HELLO_CAP, None, (), *(template.format(n) for n in range(first, last + 1)))


_CIPHERS = ("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")
_SIGALG_COUNTS = (213, 2353, 8130, 23752, 32715)

COMPAT = Kind("compat")
ECHO = Kind(mode="echo")

SCRIPTS: tuple[Script, ...] = (
    Script("conversation", ("-d", "-C", GCM)),
    Script("tls13-conversation"),
    Script("tls13-hrr"),
    Script("tls13-keyupdate", ci_n=20, report_n=0, expected=(
        *_each("OpenSSL answers a KeyUpdate that requests one with its own before its next "
               "application data (as RFC 8446 section 4.6.3 asks), and an HTTP server has none "
               "to send before the rest of the request the script holds back until it sees "
               "that KeyUpdate (s_server and the bare pyOpenSSL server time out the same)",
               "Timeout when waiting for peer message", BOTH, "app data split, conversation with KeyUpdate msg"),
        *_each("OpenSSL answers a KeyUpdate message with a trailing byte with illegal_parameter, "
               "where the script expects decode_error (s_server and the bare pyOpenSSL server the "
               "same)",
               'received "illegal_parameter"', BOTH, "large KeyUpdate message"),
    )),
    Script("tls13-ccs"),
    Script("tls13-multiple-ccs-messages", expected=(
        *_each("OpenSSL answers decode_error to a second ChangeCipherSpec, in the same record or "
               "the next, where the script expects unexpected_message (RFC 8446 section 5); "
               "s_server and the bare pyOpenSSL server the same",
               'received "decode_error"', BOTH,
               "multiple CCS Messages in one TLS record", "multiple CCS Messages in one TCP packet",
               "CH and multiple CCS Messages in one TCP packet"),
        *_each("the script sends a ChangeCipherSpec right after its ClientHello in a record of "
               "the same version, 0x0300; OpenSSL, reading it after its ServerHello, refuses the "
               "record ('wrong version number'; s_server and the bare pyOpenSSL server answer "
               "decode_error), and the host, taking the peer for one not speaking TLS, closes "
               "without an alert",
               None, BOTH, "sanity with one CCS message", "second CCS before client finished"),
    )),
    Script("tls13-finished", ci_n=20, report_n=0, expected=_each(
        PADDED_FINISHED, "illegal_parameter", BOTH,
        *(f"padding - cipher TLS_AES_128_GCM_SHA256, pad_byte 0, pad_left {left}, pad_right {right}"
          for left, right in ((0, 48), (0, 16348), (0, 131072), (0, 196608), (0, 16777183), (48, 0), (16348, 0))),
        *(f"padding - cipher TLS_AES_256_GCM_SHA384, pad_byte 0, pad_left {left}, pad_right {right}"
          for left, right in ((0, 32), (0, 48), (0, 16332), (0, 131072), (0, 196608), (0, 16777167),
                              (32, 0), (48, 0), (16332, 0))),
    )),
    Script("tls13-lengths", kind=ECHO, ci_n=40, report_n=300),
    Script("tls13-legacy-version"),
    Script("tls13-invalid-ciphers", ci_n=20, report_n=200),
    Script("tls13-nociphers"),
    Script("tls13-keyshare-omitted"),
    Script("tls13-empty-alert"),
    Script("tls13-0rtt-garbage", ("-d",), expected=_each(
        CBC_FALLBACK, "Alert(fatal, handshake_failure)", (PYOPENSSL,),
        "handshake with invalid 0-RTT and unknown version (downgrade to TLS 1.2)")),
    Script("tls13-record-layer-limits", ci_n=20, report_n=0, expected=(
        *_each("a padded Finished filling a record of 2^14 + 256 bytes, the most TLS 1.3 allows: "
               "OpenSSL never answers (s_server and the bare pyOpenSSL server time out too)",
               "Timeout when waiting for peer message", BOTH,
               *(f"max size of Finished msg, with 16587 bytes of record layer padding {c}" for c in _CIPHERS)),
        *_each(PADDED_FINISHED, 'received "illegal_parameter"', BOTH,
               *(f"max size payload (2**14) of Finished msg, with 16348 bytes of left padding, cipher {c}"
                 for c in _CIPHERS)),
        *_each("OpenSSL accepts a record whose plaintext with its padding is one byte over 2^14 + 1 "
               "(RFC 8446 section 5.4 counts the padding; s_server and the bare pyOpenSSL server "
               "answer it too)",
               "Unexpected message from peer: ApplicationData", BOTH,
               *(f"too big plaintext, size: 2**14 - 8, with an additional 9 bytes of padding, cipher {c}"
                 for c in _CIPHERS)),
    )),
    Script("tls13-zero-length-data"),
    Script("tls13-unrecognised-groups", kind=COMPAT, expected=_each(
        MANY_KEY_SHARES, "Alert(fatal, handshake_failure)", (PYOPENSSL,),
        *(f"known group {group} and unknown groups from {kind} range, key_share of size {size}"
          for group in ("secp256r1", "ffdhe2048") for kind in ("EC", "FFDHE") for size in (64, 128, 256)))),
    Script("tls13-signature-algorithms", ci_n=20, report_n=0, expected=(
        *_each(LONG_SIGALGS, "Alert(fatal, handshake_failure)", (PYOPENSSL,),
               *(f"{n} invalid schemes" for n in _SIGALG_COUNTS[:-1]),
               *(f"duplicated {n} non-rsa schemes" for n in _SIGALG_COUNTS[:-1]),
               *(f"tolerance {n} methods" for n in _SIGALG_COUNTS[:-1])),
        # The longest lists make hellos over 64 KiB: the cap refuses them first.
        *_each(CLIENT_HELLO_CAP, None, (),
               "32715 invalid schemes", "duplicated 32715 non-rsa schemes", "tolerance 32715 methods",
               "tolerance 32715 methods with sig_alg_cert"),
    )),
    Script("tls13-connection-abort"),
    Script("record-layer-fragmentation", ("-d", "-C", GCM), expected=_each(
        CLIENT_HELLO_CAP, None, (), "maximum size: max fragment - 65385B extension")),
    Script("fuzzed-ciphertext", ("-d",), ci_n=20),
    Script("fuzzed-plaintext", ("-d",), kind=COMPAT, ci_n=20, report_n=200),
    # Every probe needs the handshake the sanity probe shows refused: only that one runs.
    Script("fuzzed-finished", kind=COMPAT, only=("sanity",), expected=_each(
        SHA1_ONLY, "Alert(fatal, handshake_failure)", BOTH, "sanity")),
    Script("invalid-client-hello-w-record-overflow", ("-d", "-C", GCM), ci_n=40),
    Script("ccs", ("-d", "-C", GCM)),
    Script("renegotiation-disabled", ("-d", "-C", GCM)),
    # The guest also offers h2, so a resumption that changes to it can succeed (only the
    # negotiation is tested: nothing speaks HTTP/2 after it).
    Script("alpn-negotiation", ("-d",), kind=Kind("compat", alpn="h2,http/1.1"), expected=_each(
        NO_RENEGOTIATION, "no_renegotiation", (PYOPENSSL,),
        "renegotiation 2nd handshake alpn", "renegotiation with protocol change",
        "renegotiation without protocol change")),
    Script("truncating-of-client-hello", ("-d", "-C", GCM)),
    Script("large-hello", ("-d",), ci_n=10, expected=(
        *_over_cap("ciphers even {0}", 10949, 11003),
        *_over_cap("ciphers odd {0}", 10947, 11003),
        *_over_cap("ext #80, {0} bytes", 65414, 65484),
        *_over_cap("ext padding, {0} bytes", 65414, 65484),
        *_over_cap("fragmented, padding ext {0} bytes", 65409, 65484),
        *_over_cap("multiple extensions {0}", 16356, 16373),
        *_over_cap("two ext, #80 {0} bytes", 61314, 61380),
        *_each(CLIENT_HELLO_CAP, None, (), "huge hello"),
    )),
    Script("extensions", kind=COMPAT, expected=(
        *_each(SHA1_ONLY, "Alert(fatal, handshake_failure)", BOTH, "sanity", "sanity - secure renego ext",
               *(f"{n} extensions{last}" for n in (31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 256, 1024, 4085, 4086, 4096, 8192)
                 for last in ("", " last empty"))),
        # Over 64 KiB as well: the cap refuses them here before SHA-1 could.
        *_each(CLIENT_HELLO_CAP, None, (), "16383 extensions", "16383 extensions last empty"),
    )),
    # The 0.3 guest refuses a name it has no identity for with a fatal unrecognized_name,
    # which the script checks with --sni-fatal: "incorrect SNI" passes there.
    Script("invalid-server-name-extension", ("-d",), kind=COMPAT, p3_args=("--sni-fatal",), p3_passes=("incorrect SNI",), expected=(
        *_each("the 0.2 guest answers a name it has no certificate for with its default one and "
               "no alert: RFC 6066 section 3 lets a server go on, and advises against the "
               "warning-level unrecognized_name the script expects (s_server and the bare "
               "pyOpenSSL server go on the same)",
               "Unexpected message from peer: Handshake(server_hello)", BOTH, "incorrect SNI"),
        *_each("a server_name list holding a name of an unknown type besides the host_name is "
               "refused with decode_error, as OpenSSL refuses it (s_server and the bare pyOpenSSL "
               "server); the script expects the unknown type to be ignored",
               "Alert(fatal, decode_error)", BOTH,
               "multiple types in SNI, host_name first", "multiple types in SNI, host_name last"),
    )),
    Script("ssl-death-alert", ("-d",), kind=COMPAT),
    # Records and hellos the host's transport and ClientHello reader see before OpenSSL does:
    # padded and zero-type TLS 1.3 records, plaintext alerts and Finished, aborts at each
    # step, and a hello without null compression (illegal_parameter, as OpenSSL answers).
    Script("tls13-record-padding"),
    Script("tls13-unencrypted-alert"),
    Script("tls13-zero-content-type"),
    Script("tls13-finished-plaintext"),
    Script("connection-abort", ("-d", "-C", GCM)),
    Script("invalid-compression-methods", ("-d", "-C", GCM)),
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
        """The last error line tlsfuzzer printed for ``probe``'s first run (for messages)."""
        _, found, rest = ("\n" + self.output).partition(f"\n{probe} ...\n")
        block = re.split(r"\n(?=\S.* \.\.\.\n)", rest, maxsplit=1)[0] if found else ""
        errors = [line for line in block.splitlines() if re.match(r"^[\w.]*(Error|Exception)\b", line)]
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
        args += ["-x", e.probe] + (["-X", e.error] if e.error is not None else [])
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


def compile_once(guest: Path) -> None:
    """Compile the guest into the shared component cache, so servers started together each
    load it instead of each compiling it (seconds of CPU apiece)."""
    from wasi_tls_host import Host

    with Host() as host:
        host.load(guest)


class GuestServer(ServerProcess):
    """``wasi-tls-host run ... tls_server PORT --count 0 --concurrent --mode MODE`` (or
    ``tls_server_p3``: ``guest`` is the one of ``kind.wasi``)."""

    def __init__(self, guest: Path, cert: Path, key: Path, workdir: Path, kind: Kind) -> None:
        self.label = f"the {GUESTS[kind.wasi]} guest"
        port = free_port()
        cmd = [sys.executable, "-m", "wasi_tls_host.cli", "run", "--allow-listen", f"127.0.0.1:{port}",
               "--identity", f"web={cert},{key}", "--tls-profile", kind.profile, "--access-log",
               str(guest), str(port), "--count", "0", "--concurrent", "--mode", kind.mode]
        if kind.alpn:
            cmd += ["--alpn", kind.alpn]
        super().__init__(cmd, workdir / f"{GUESTS[kind.wasi]}-{kind.profile}-{kind.mode}-{port}.log", "listening on", port=port)

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
