"""``wasi-tls-host interop``: the matrix against real peers and the project's guests, its
report, its faults (peers that crash, hang or send garbage; a guest that hangs or breaks
its contract), the run's cleanup, and the command's usage errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from wasi_tls_host import guests
from wasi_tls_host.interop import MatrixOptions, run_matrix
from wasi_tls_host.interop.peers import Peer, PeerServer, RunContext
from wasi_tls_host.interop.peers.gotls import json_peer_server
from wasi_tls_host.interop.report import OUTCOMES
from wasi_tls_host.interop.specs import ServerSpec

pytestmark = pytest.mark.timeout(900)
HOSTILE = Path(__file__).resolve().parent / "hostile_tls_peer.py"
CASE_FIELDS = {"guest", "toolchain", "wasi", "role", "host", "runtime", "peer", "peer_version", "tls_version", "feature", "outcome",
               "detail", "ms"}


def interop(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", "interop", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def children() -> set[int]:
    """Processes whose parent is this one."""
    mine = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                mine.add(int(entry))
    return mine


def scratch_folders() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("wasi-tls-host-interop-")}


def test_a_small_matrix_passes_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    r = interop("--out", str(out), "--guests", "tls_client,tls_server", "--runtime", "core", "--peers", "openssl,python",
                "--features", "handshake,alpn-agreed,cert-expired,resumption,truncation-*", "--tls", "1.3", "--no-wasmtime")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith(f"report: {out / 'index.html'}"), r.stdout
    report = json.loads((out / "report.json").read_text())
    cases = report["cases"]
    assert all(set(c) == CASE_FIELDS for c in cases)
    assert {c["outcome"] for c in cases} <= set(OUTCOMES) and not [c for c in cases if c["outcome"] == "fail"]
    assert {(c["guest"], c["role"]) for c in cases} == {("tls_client", "client"), ("tls_server", "server")}
    assert {c["peer"] for c in cases} == {"openssl", "python"} and {c["tls_version"] for c in cases} == {"1.3"}
    summary = report["summary"]
    assert summary["cases"] == len(cases) == sum(summary[o] for o in OUTCOMES)
    assert summary["peers"]["openssl"]["version"].startswith("OpenSSL 3") and summary["peers"]["python"]["status"] == "ok"
    # What each case says: a resumption pass names who saw it; a refusal the guest's error code.
    by = {(c["guest"], c["peer"], c["feature"]): c for c in cases}
    assert by[("tls_client", "python", "resumption")]["outcome"] == "pass"
    assert "resumed" in by[("tls_client", "python", "resumption")]["detail"]
    assert by[("tls_client", "openssl", "cert-expired")]["detail"].startswith("client saw: expired:")
    # s_server cannot end a connection on its own: n/a with the reason, never a pass.
    assert by[("tls_client", "openssl", "truncation-server")]["outcome"] == "n/a"
    assert "openssl s_server cannot" in by[("tls_client", "openssl", "truncation-server")]["detail"]
    assert by[("tls_client", "python", "truncation-server")]["outcome"] == "pass"
    assert by[("tls_server", "python", "truncation-client")]["outcome"] == "pass"
    # Handshake times, and the figures beside the peers' own handshake.
    assert by[("tls_client", "openssl", "handshake")]["ms"] > 0 and by[("tls_server", "python", "handshake")]["ms"] > 0
    figures = {(f["guest"], f["peer"]): f for f in summary["figures"]}
    assert figures[("tls_client", "openssl")]["reference"] == "pyssl_peer.py (CPython ssl) -> openssl s_server"
    assert figures[("tls_client", "openssl")]["reference_ms"] > 0 and figures[("tls_client", "openssl")]["ratio"] > 0
    assert figures[("tls_server", "openssl")]["reference"] == "openssl s_client -> pyssl_peer.py (CPython ssl)"
    markdown = (out / "report.md").read_text()
    assert "| handshake | pass |" in markdown and "## Handshake figures" in markdown
    page = (out / "index.html").read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "src=" not in page and "href=" not in page
    assert page.count("class='c pass'") == summary["pass"]


def test_a_peer_that_is_not_installed_is_skipped_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "bin"
    path.mkdir()
    for tool in ("openssl",):  # openssl only: no gnutls, no go, no curl
        (path / tool).symlink_to(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip())
    env = {**os.environ, "PATH": str(path)}
    r = interop("--out", str(tmp_path / "r"), "--guests", "tls_client", "--runtime", "core", "--peers", "openssl,gnutls,go",
                "--features", "handshake", "--tls", "1.3", "--no-wasmtime", "--no-reference", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    cases = {c["peer"]: c for c in json.loads((tmp_path / "r" / "report.json").read_text())["cases"]}
    assert cases["openssl"]["outcome"] == "pass"
    assert (cases["gnutls"]["outcome"], cases["gnutls"]["detail"]) == ("skip", "gnutls: skipped: gnutls-serv, gnutls-cli not installed (Debian: gnutls-bin)")
    assert (cases["go"]["outcome"], cases["go"]["detail"]) == ("skip", "go: skipped: go not installed (Debian: golang-go)")
    assert "1 pass, 0 fail, 2 skip" in r.stdout


class HostilePeer(Peer):
    """A server that crashes, hangs, sends garbage or never starts (tests/hostile_tls_peer.py)."""

    implementation = "hostile"
    client_tool = None

    def __init__(self, mode: str) -> None:
        self.name = f"hostile-{mode}"
        self.server_tool = f"hostile_tls_peer.py {mode}"
        self.mode = mode

    def abilities(self, role: str) -> frozenset[str]:
        return frozenset({"echo", "pin-version"})

    def start_server(self, spec: ServerSpec, ctx: RunContext) -> PeerServer:
        return json_peer_server(ctx, self.name, [sys.executable, str(HOSTILE), self.mode])


def test_peers_that_crash_hang_or_send_garbage_end_their_cases_and_the_matrix_goes_on() -> None:
    before, folders = children(), scratch_folders()
    threads = threading.active_count()
    started = time.monotonic()
    report = run_matrix(MatrixOptions(
        peer_objects=[HostilePeer(m) for m in ("crash", "hang", "garbage", "nostart")],
        guests=["tls_client"], runtimes=["core"], features=["handshake"], versions=["1.3"], wasmtime=False, references=False,
        timeout=5))
    elapsed = time.monotonic() - started
    details = {c.peer: c for c in report.cases}
    assert {c.outcome for c in report.cases} == {"fail"}, [(c.peer, c.outcome, c.detail) for c in report.cases]
    assert "closed" in details["hostile-crash"].detail or "reset" in details["hostile-crash"].detail, details["hostile-crash"].detail
    assert "time" in details["hostile-hang"].detail, details["hostile-hang"].detail  # the handshake's deadline
    assert details["hostile-garbage"].detail.startswith("expected a verified handshake, got:"), details["hostile-garbage"].detail
    assert details["hostile-nostart"].detail.startswith("hostile-nostart failed to start:"), details["hostile-nostart"].detail
    assert "cannot start: told not to" in details["hostile-nostart"].detail
    # Each case ended within its bound (5 s for the guest, 2 s for the server's report).
    assert elapsed < 4 * (5 + 2 + 10), elapsed
    # Nothing left behind: no process, no scratch folder, no thread.
    assert children() == before
    assert scratch_folders() == folders
    assert threading.active_count() <= threads + 1  # the epoch ticker may still be winding down


def test_a_guest_that_hangs_is_stopped_at_its_timeout_and_one_that_breaks_its_contract_fails(tmp_path: Path) -> None:
    spin = guests.build("spin_command")
    hello = guests.build("hello")
    started = time.monotonic()
    report = run_matrix(MatrixOptions(
        builtin=False, client_guests=[spin, hello], server_guests=[hello], peers=["python"], runtimes=["core"],
        features=["handshake"], versions=["1.3"], wasmtime=False, references=False, timeout=3))
    elapsed = time.monotonic() - started
    by_guest = {(c.guest, c.role): c for c in report.cases}
    spinning = by_guest[(spin.name, "client")]
    assert (spinning.outcome, spinning.detail) == ("fail", "the guest was stopped at its timeout (3 s); it said: (nothing)")
    talking = by_guest[(hello.name, "client")]
    assert talking.outcome == "fail"
    assert talking.detail.startswith("expected key=value lines ending with 'done' per connection"), talking.detail
    assert "got (exit status 0): hello" in talking.detail
    server = by_guest[(hello.name, "server")]
    assert server.outcome == "fail"
    assert server.detail.startswith("the server guest did not listen on 127.0.0.1:"), server.detail
    assert server.detail.endswith("(it ended: exit status 0)"), server.detail
    assert elapsed < 60, elapsed


@pytest.mark.parametrize("args, message", [
    (["--peers", "openssl,nss-nope"], "error: unknown peer 'nss-nope' (known: openssl, gnutls, go, python, java, curl)"),
    (["--features", "alpn-sometimes"], "error: unknown feature 'alpn-sometimes' (known: handshake, sni,"),
    (["--client-guest", "/nonexistent/guest.wasm"], "error: no component at /nonexistent/guest.wasm"),
    (["--out", "/proc/self/interop-report"], "error: --out /proc/self/interop-report: cannot write there ("),
])
def test_bad_input_is_one_line_and_exit_status_2(args: list[str], message: str) -> None:
    r = interop(*args, "--no-wasmtime", timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr
    assert r.stdout == ""


def test_out_into_a_file_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "report.json"
    a_file.write_text("keep me")
    r = interop("--out", str(a_file), "--no-wasmtime", timeout=120)
    assert (r.returncode, r.stderr.strip()) == (2, f"error: --out {a_file}: this is a file, not a folder")
    assert a_file.read_text() == "keep me"


@pytest.mark.skipif(not (shutil.which("java") and shutil.which("javac")), reason="java is not installed (Debian: default-jdk-headless)")
def test_jsse_closes_and_refusals() -> None:
    """JSSE ends a TLS 1.3 connection with user_canceled then close_notify: a clean end for
    this host, either side (OpenSSL 3.0 reports that close_notify as a syscall error). Its
    refusals are judged by its own words ("validity check failed", "No subject alternative
    DNS name matching"), and a JSSE server, which cannot tell a truncation from a clean
    end, makes truncation-client n/a."""
    report = run_matrix(MatrixOptions(
        peers=["java"], guests=["tls_client", "tls_server"], runtimes=["core"], versions=["1.3"], wasmtime=False, references=False,
        features=["cert-expired", "cert-wrong-host", "close-notify-server", "close-notify-client", "truncation-client"]))
    outcomes = {(c.guest, c.feature): c.outcome for c in report.cases}
    assert outcomes == {
        ("tls_client", "close-notify-server"): "pass", ("tls_client", "close-notify-client"): "n/a",
        ("tls_client", "truncation-client"): "n/a", ("tls_client", "cert-expired"): "pass", ("tls_client", "cert-wrong-host"): "pass",
        ("tls_server", "close-notify-server"): "pass", ("tls_server", "truncation-client"): "pass",
        ("tls_server", "cert-expired"): "pass", ("tls_server", "cert-wrong-host"): "pass", ("tls_server", "close-notify-client"): "pass",
    }, [(c.guest, c.feature, c.outcome, c.detail) for c in report.cases]


def test_wasi_03_guests_take_part_on_the_core_runtime_and_say_what_they_lack() -> None:
    """The WASI 0.3 examples in the matrix: the 0.3 clients (this project's TLS and upstream
    wasi:tls@0.3.0-draft) against CPython's HTTPS server, the 0.3 echo server and
    tls_server_p3 against its client; the SNI the server guest does not print is the host's fact; the component
    runtime and features a guest cannot do are n/a with the reason. Each has a handshake
    figure on the core runtime beside the same handshake between peers (the clients timed
    by this host, as they print no time of their own)."""
    report = run_matrix(MatrixOptions(
        peers=["python"], guests=["https_get_p3", "https_get_upstream_p3", "tls_echo_server_p3", "tls_server_p3"], versions=["1.2"],
        features=["sni", "alpn-agreed", "truncation-client", "cert-unknown-ca", "mtls", "mtls-optional"], wasmtime=False))
    by = {(c.guest, c.runtime, c.feature): c for c in report.cases}
    assert {c.wasi for c in report.cases} == {"0.3"}
    assert {(k, c.outcome) for k, c in by.items() if k[1] == "core"} == {
        (("https_get_p3", "core", "cert-unknown-ca"), "pass"),
        (("https_get_upstream_p3", "core", "cert-unknown-ca"), "pass"),
        (("tls_echo_server_p3", "core", "sni"), "pass"), (("tls_echo_server_p3", "core", "truncation-client"), "pass"),
        (("tls_echo_server_p3", "core", "cert-unknown-ca"), "pass"), (("tls_echo_server_p3", "core", "alpn-agreed"), "n/a"),
        (("tls_echo_server_p3", "core", "mtls"), "n/a"), (("tls_echo_server_p3", "core", "mtls-optional"), "n/a"),
        *((("tls_server_p3", "core", f), "pass") for f in ("sni", "alpn-agreed", "truncation-client", "cert-unknown-ca", "mtls")),
        (("tls_server_p3", "core", "mtls-optional"), "n/a"),
    }, [(c.guest, c.runtime, c.feature, c.outcome, c.detail) for c in report.cases]
    # tls_server_p3 takes the server contract less --tls (the peer pins the version) and
    # prints no client certificate: its subject is the host's fact.
    assert by[("tls_server_p3", "core", "mtls")].detail == "client certificate CN=interop-client accepted"
    assert by[("tls_server_p3", "core", "mtls-optional")].detail == "tls_server_p3 cannot ask for a client certificate without requiring one"
    assert by[("https_get_p3", "core", "cert-unknown-ca")].detail.startswith("client saw: unknown-issuer:")
    assert by[("https_get_upstream_p3", "core", "cert-unknown-ca")].detail.startswith("client saw: unknown-issuer:")
    assert by[("tls_echo_server_p3", "core", "sni")].detail == "sent b.test: the server saw b.test"
    assert by[("tls_echo_server_p3", "core", "truncation-client")].detail.startswith("the server saw an error: truncated:")
    assert by[("tls_echo_server_p3", "core", "alpn-agreed")].detail == "tls_echo_server_p3 cannot offer any list of ALPN protocols, or choose among them"
    assert all(c.outcome == "n/a" and "no async ABI" in c.detail for k, c in by.items() if k[1] == "component")
    figures = {(f["guest"], f["role"], f["runtime"]): f for f in report.summary["figures"]}
    assert set(figures) == {("https_get_p3", "client", "core"), ("https_get_upstream_p3", "client", "core"),
                            ("tls_echo_server_p3", "server", "core"), ("tls_server_p3", "server", "core")}, figures
    for (guest, role, _), f in figures.items():
        assert (f["samples"], f["measured_by"], f["tls_version"]) == (3, "host", "1.2"), f
        assert f["ms"] > 0 and f["reference_ms"] > 0 and f["ratio"] == round(f["ms"] / f["reference_ms"], 2), f
    assert figures[("tls_server_p3", "server", "core")]["reference"] == "pyssl_peer.py (CPython ssl) -> pyssl_peer.py (CPython ssl)"


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _mentioning(text: str) -> set[int]:
    """Processes whose command line mentions ``text``."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    found.add(int(entry))
            except OSError:
                continue
    return found


def _interop_with_a_peer_running(tmp_path: Path, jobs: str) -> tuple[subprocess.Popen[str], Path, set[int]]:
    """An interop run (python peer, tls_client, its own TMPDIR) once a peer process runs:
    the process, its scratch folder and the peers' pids."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "wasi_tls_host.cli", "interop", "--out", str(tmp_path / "r"), "--guests", "tls_client",
                             "--runtime", "core", "--peers", "python", "--no-wasmtime", "--jobs", jobs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    peers: set[int] = set()
    while not peers and time.monotonic() < deadline and proc.poll() is None:
        peers = {pid for pid in _descendants(proc.pid) if pid in _mentioning("pyssl_peer.py")}
        time.sleep(0.05)
    if not peers:
        proc.kill()
        proc.communicate()
        pytest.fail("no peer process started within 120 s")
    return proc, scratch, peers


def _assert_nothing_left(started: set[int], scratch: Path) -> None:
    time.sleep(0.2)  # a killed process group is reaped by its parent, which ended too
    alive = {pid for pid in started if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]}
    assert not alive, [Path(f"/proc/{p}/cmdline").read_bytes() for p in alive]
    assert not _mentioning(str(scratch)), "a process still uses the run's scratch folder"
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("signum, jobs", [(signal.SIGINT, "2"), (signal.SIGTERM, "1")])
def test_a_signal_stops_the_peers_and_removes_the_scratch_folder(tmp_path: Path, signum: int, jobs: str) -> None:
    """SIGINT or SIGTERM while peers run: the command ends them (and its worker processes),
    removes its temporary folder and exits 128 + the signal's number, as a shell expects."""
    proc, scratch, _ = _interop_with_a_peer_running(tmp_path, jobs)
    try:
        started = _descendants(proc.pid)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum, (proc.returncode, err)
    assert err.strip().splitlines()[-1] == f"wasi-tls-host interop: stopped by {signal.Signals(signum).name}; no report written", err
    assert "Traceback" not in err, err
    _assert_nothing_left(started, scratch)


def test_a_worker_deaf_to_sigterm_is_killed_and_its_peers_are_ended_too(tmp_path: Path) -> None:
    """A worker that cannot act on SIGTERM (stuck inside wasmtime; here: stopped with
    SIGSTOP) is killed by the command after its 10 s, and the peers it started, which it
    could not end, are ended by the command: nothing is left, the scratch folder is gone."""
    proc, scratch, peers = _interop_with_a_peer_running(tmp_path, "2")
    stuck: int | None = None
    try:
        peer = min(peers)
        stuck = int(Path(f"/proc/{peer}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the worker that started it
        os.kill(stuck, signal.SIGSTOP)
        started = _descendants(proc.pid) | {peer}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if stuck is not None and Path(f"/proc/{stuck}").exists():
            os.kill(stuck, signal.SIGKILL)
    assert proc.returncode == 143, (proc.returncode, err)
    assert "Traceback" not in err, err
    _assert_nothing_left(started, scratch)


def test_install_peers_asks_apt_get_for_the_missing_ones_and_says_what_is_still_missing(tmp_path: Path) -> None:
    """``--install-peers`` with openssl present and gnutls, go and curl absent: apt-get is
    asked for exactly their Debian packages (a recording apt-get stands in for Debian's, so
    nothing is installed), and the peers still missing afterwards are named, exit status 1."""
    path = tmp_path / "bin"
    path.mkdir()
    (path / "openssl").symlink_to(shutil.which("openssl") or "/usr/bin/openssl")
    calls = tmp_path / "apt-calls"
    (path / "apt-get").write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n")
    (path / "apt-get").chmod(0o755)
    r = interop("--install-peers", "--peers", "openssl,gnutls,go,curl,python", env={**os.environ, "PATH": str(path)}, timeout=120)
    assert calls.read_text().splitlines() == ["update -qq", "install -y -qq --no-install-recommends gnutls-bin golang-go curl"]
    assert r.stdout.splitlines() == [
        "installed: gnutls-bin golang-go curl", "ready: openssl, python",
        "still missing: gnutls: gnutls-serv, gnutls-cli not installed (Debian: gnutls-bin)",
        "still missing: go: go not installed (Debian: golang-go)", "still missing: curl: curl not installed"], r.stdout + r.stderr
    assert r.returncode == 1
