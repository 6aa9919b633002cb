"""tlsfuzzer, the TLS test suite OpenSSL, NSS and GnuTLS are tested with, against the example
guest servers on this host: ``tls_server_p3`` (WASI 0.3, written with the asyncio binding)
and ``tls_server`` (WASI 0.2), both run as ``wasi-tls-host run ... GUEST PORT --count 0
--concurrent --mode http`` (``echo`` for tls13-lengths), in the default TLS profile and in
``compat`` where a script needs CBC suites, RSA key exchange or finite-field groups.

The curated list and every expected failure with its reason are in devtools/tlsfuzzer.py;
the expected failures are passed to each script (``-x PROBE -X ERROR``), so anything else
that fails, and any expected failure that starts passing, fails the test. A failure said to
be OpenSSL's is checked to fail the same on a bare pyOpenSSL server (the host's OpenSSL build
and profile, no host code) or on ``openssl s_server``, as its reason says. Fuzzing scripts run
with a fixed seed and a bounded ``-n`` (benchmarks/tlsfuzzer_report.py runs more, beside
s_server). One guest server per configuration serves every script; its descriptors are
counted before and after.

The 0.3 guest runs every script; the 0.2 guest the scripts whose outcome its own code decides
(``BOTH_GUESTS``: the rest exercise the host's engine and transport, which both guests share).
``WASI_TLS_HOST_TLSFUZZER=all`` runs every script against both, and checks OpenSSL's failures
on its own servers (minutes more).

tlsfuzzer is GPL and lives outside the repository (``$TLSFUZZER``, else
``../shared/testsuites/tlsfuzzer``); without it this module is skipped. Deselect it with
``-m 'not tlsfuzzer'``.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterator, TypeVar

import pytest
import trustme

from devtools import tlsfuzzer as tf

# The first test sets up the module's run: every script, minutes on a busy machine.
pytestmark = [pytest.mark.tlsfuzzer, pytest.mark.timeout(1200)]
if (why := tf.available()) is not None:
    pytest.skip(why, allow_module_level=True)

K = TypeVar("K", bound=Hashable)
S = TypeVar("S", bound=tf.ServerProcess)

# Every script runs by default (about 45 s); checking that each failure put on OpenSSL fails
# the same on s_server and a bare pyOpenSSL server takes minutes more, so those checks run
# with WASI_TLS_HOST_TLSFUZZER=all (and in benchmarks/tlsfuzzer_report.py's table).
EVERYTHING = os.environ.get("WASI_TLS_HOST_TLSFUZZER") == "all"
JOBS = 2  # scripts run at once: each is a client process, the guest server one more
REFERENCES = (tf.PYOPENSSL, tf.S_SERVER)
PER_REASON = 2  # probes of each reason checked on the reference servers

# The scripts whose outcome depends on the guest's code, not only on the host's engine and
# transport: its answers (HTTP, echo), its ALPN and server-name choices, how it ends a
# connection (close_notify, a reset mid-request), and errors after the handshake reaching it
# through its WASI version's streams. Both guests run these; the 0.3 guest runs the rest too.
BOTH_GUESTS = frozenset({
    "conversation", "tls13-conversation", "tls13-lengths", "tls13-keyupdate", "tls13-empty-alert",
    "tls13-zero-length-data", "tls13-connection-abort", "fuzzed-ciphertext", "alpn-negotiation",
    "invalid-server-name-extension",
})
RUNS = [(wasi, s.name) for wasi in ("0.3", "0.2") for s in tf.SCRIPTS
        if wasi == "0.3" or EVERYTHING or s.name in BOTH_GUESTS]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An RSA certificate for localhost (the scripts expect RSA signatures) and its key."""
    d = tmp_path_factory.mktemp("tlsfuzzer-pki")
    leaf = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert("localhost", common_name="localhost", key_type=trustme.KeyType.RSA)
    cert, key = d / "localhost.pem", d / "localhost.key"
    cert.write_bytes(b"".join(c.bytes() for c in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def _selected(request: pytest.FixtureRequest, parameters: tuple[str, ...], everything: list[tuple]) -> list[tuple]:
    """The parameter tuples this session's selected tests of this module ask for (all if none
    does: e.g. only the descriptor test was selected), so ``-k NAME`` runs one script."""
    chosen = {tuple(item.callspec.params[p] for p in parameters) for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and all(p in item.callspec.params for p in parameters)}
    return [e for e in everything if e in chosen] or list(everything)


def _start_all(make: dict[K, Callable[[], S]]) -> dict[K, S]:
    """Start servers on threads (each guest spends seconds loading the component); if one
    fails to start, the others are stopped and its error raised."""
    started: dict[K, S] = {}
    errors: list[BaseException] = []

    def start(key: K, factory: Callable[[], S]) -> None:
        try:
            started[key] = factory()
        except BaseException as e:  # raised below, once the others have started or failed
            errors.append(e)

    threads = [threading.Thread(target=start, args=item) for item in make.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for server in started.values():
            server.stop()
        raise errors[0]
    return started


@dataclass
class Run:
    """The guest servers and what every selected script did against them."""

    servers: dict[tf.Kind, tf.GuestServer]
    outcomes: dict[tuple[str, str], tf.Outcome] = field(default_factory=dict)  # (wasi, script name) ->
    fds_before: dict[tf.Kind, int] = field(default_factory=dict)
    fds_after: dict[tf.Kind, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def run(request: pytest.FixtureRequest, guest_path, pki: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    scripts = [tf.script(name).on(wasi) for wasi, name in _selected(request, ("wasi", "name"), RUNS)]
    cert, key = pki
    work = tmp_path_factory.mktemp("tlsfuzzer")
    guests = {wasi: guest_path(tf.GUESTS[wasi]) for wasi in {s.kind.wasi for s in scripts}}
    for guest in guests.values():
        tf.compile_once(guest)
    kinds = {s.kind for s in scripts}
    servers = _start_all({kind: (lambda kind=kind: tf.GuestServer(guests[kind.wasi], cert, key, work, kind)) for kind in kinds})
    try:
        result = Run(servers)
        result.fds_before = {kind: server.descriptors() for kind, server in servers.items()}
        with ThreadPoolExecutor(JOBS) as pool:
            outcomes = pool.map(lambda s: tf.run(s, servers[s.kind].port, n=s.ci_n, expected=s.expected, only=s.only), scripts)
            result.outcomes = {(s.kind.wasi, s.name): o for s, o in zip(scripts, outcomes)}
        result.fds_after = {kind: server.settled_descriptors(result.fds_before[kind]) for kind, server in servers.items()}
        yield result
    finally:
        for server in servers.values():
            server.stop()


def _report(outcome: tf.Outcome) -> str:
    lines = [f"{outcome.summary()} (exit status {outcome.returncode}, {outcome.seconds:.1f} s)"]
    lines += [f"  failed {p!r}: {outcome.why(p)}" for p in dict.fromkeys(outcome.failed_probes)]
    lines += [f"  passed although expected to fail: {p!r}" for p in outcome.xpassed_probes]
    if outcome.returncode not in (0, 1) or not (outcome.passed or outcome.failed or outcome.xfailed):
        lines.append(outcome.output[-3000:])
    return "\n".join(lines)


@pytest.mark.parametrize(("wasi", "name"), RUNS, ids=[f"{wasi}-{name}" for wasi, name in RUNS])
def test_script(run: Run, wasi: str, name: str) -> None:
    """Every probe passes but the expected failures, which fail as expected."""
    outcome = run.outcomes[(wasi, name)]
    assert outcome.ok, _report(outcome)
    assert outcome.passed + outcome.xfailed > 0, _report(outcome)


@pytest.mark.parametrize("kind", sorted({tf.script(name).on(wasi).kind for wasi, name in RUNS}, key=str), ids=str)
def test_guest_server_survives_and_keeps_no_descriptors(run: Run, kind: tf.Kind) -> None:
    if kind not in run.servers:
        pytest.skip(f"no selected script uses a {kind} server")
    server = run.servers[kind]
    assert server.alive, f"the guest server exited:\n{server.log[-3000:]}"
    assert server.connections() > 0
    assert run.fds_after[kind] == run.fds_before[kind], (
        f"{run.fds_before[kind]} descriptors after start, {run.fds_after[kind]} after {server.connections()} connections")


# --- expected failures that are said to be OpenSSL's ------------------------------------------


WITNESSED = [(s, ref) for s in tf.SCRIPTS for ref in REFERENCES if s.expected_on(ref)] if EVERYTHING else []


def _sample(s: tf.Script, reference: str) -> tuple[str, ...]:
    """The first few probes of each reason put on ``reference`` (some send megabytes)."""
    by_reason: dict[str, list[str]] = {}
    for e in s.expected_on(reference):
        by_reason.setdefault(e.reason, []).append(e.probe)
    return tuple(dict.fromkeys(p for listed in by_reason.values() for p in listed[:PER_REASON]))


@pytest.fixture(scope="module")
def witnessed(request: pytest.FixtureRequest, pki: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Those probes run against a bare pyOpenSSL server per configuration, and each script's
    against an s_server of its own (it serves one connection at a time), for the scripts
    selected here: (script name, reference) -> (probes, outcome)."""
    cert, key = pki
    work = tmp_path_factory.mktemp("tlsfuzzer-references")
    selected = {name for name, _ in _selected(request, ("name", "reference"), [(s.name, ref) for s, ref in WITNESSED])}
    checks = [(s, ref) for s, ref in WITNESSED if s.name in selected]
    bare = _start_all({s.kind: (lambda kind=s.kind: tf.PyOpenSSLServer(cert, key, work, kind))
                       for s, ref in checks if ref == tf.PYOPENSSL})

    def check(job: tuple[tf.Script, str]) -> tuple[tuple[str, ...], tf.Outcome]:
        s, ref = job
        probes = _sample(s, ref)
        if ref == tf.PYOPENSSL:
            return probes, tf.run(s, bare[s.kind].port, only=probes)
        s_server = tf.OpensslServer(cert, key, work, mode=s.kind.mode)
        try:
            return probes, tf.run(s, s_server.port, only=probes)
        finally:
            s_server.stop()

    try:
        with ThreadPoolExecutor(JOBS) as pool:
            yield {(s.name, ref): result for (s, ref), result in zip(checks, pool.map(check, checks))}
    finally:
        for server in bare.values():
            server.stop()


@pytest.mark.parametrize(("name", "reference"), [(s.name, ref) for s, ref in WITNESSED], ids=[f"{s.name}-{ref}" for s, ref in WITNESSED])
def test_openssl_fails_the_same(witnessed: dict, name: str, reference: str) -> None:
    """Probes whose expected failure is put on OpenSSL fail there too, without the host."""
    probes, outcome = witnessed[(name, reference)]
    assert set(outcome.failed_probes) == set(probes), (
        f"on {reference}, expected every one of {list(probes)} to fail:\n{_report(outcome)}")
