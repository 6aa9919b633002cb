"""Planning and running the matrix: guests x hosts x peers x features x TLS versions.

Every case is one TLS client against one TLS server: a client guest against a peer's
server, or a peer's client against a server guest. Each case starts its own server and
ends it (a peer that crashed or hung in one case cannot spoil the next), every wait is
bounded, and whatever a case leaves (processes, the guest thread) is ended before the next.
A case whose side cannot do what its feature needs is "n/a" with the reason; a case whose
peer or host is not installed is "skip" with the reason; neither is ever a pass.

After the cases, the same handshake between two peers is measured for each peer and
version (a peer client that reports its own handshake time against each peer server, and
each peer client against a peer server that reports it), so the report can set each
guest's median handshake beside it.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from cryptography import x509

from ..guests import BuildError
from ..host import RUNTIMES
from .features import ABILITIES, BY_NAME, Feature, pick
from .guests import Guest, builtin_guests, user_guest
from .hosts import AccessLines, ThisHost, WasmtimeCli, handshake_ms
from .peers import Peer, PeerUnavailable, RunContext, all_peers, free_port
from .peers.gotls import peer_cache_dir
from .pki import Pki
from .processes import Processes, kill_left
from .report import Case, Figure, Report, machine, median_ms
from .specs import ClientSpec, Observation, ServerSpec, version_name

RUSTLS_ROOTS = ("the wasmtime CLI's wasi:tls (rustls) trusts only its built-in public roots: it cannot verify this run's CA, "
                "so only its refusal of that CA is tested")
TIMED_CONNECTIONS = 3  # full handshakes behind each figure
SERVER_REPORT_WAIT = 2.0  # seconds a server gets to report the connections its client saw
REFUSED_REPORT_WAIT = 0.5  # the same when the client saw no connection established
WORKER_STOP_WAIT = 10.0  # seconds a worker gets to end its peers and exit


@dataclass
class MatrixOptions:
    peers: Sequence[str] | None = None  # by name; None: every peer
    features: Sequence[str] | None = None  # names or globs; None: every feature
    versions: Sequence[str] = ("1.2", "1.3")
    runtimes: Sequence[str] = RUNTIMES
    guests: Sequence[str] | None = None  # built-in guests by name; None: all of them
    client_guests: Sequence[Path] = ()  # users' components following the client contract
    server_guests: Sequence[Path] = ()
    builtin: bool = True  # run the project's example guests
    wasmtime: bool = True  # the wasmtime CLI as a second host, for upstream-interface guests
    timeout: float = 20.0  # seconds for one side of one case
    # Worker processes running cases. More than 1 spawns interpreters that import the caller's
    # __main__ again (multiprocessing's rule), so a script must guard its entry point; the
    # command defaults to ``default_jobs()``.
    jobs: int = 1
    references: bool = True
    progress: Callable[[int, int, Case], None] | None = None
    peer_objects: Sequence[Peer] | None = None  # instead of the built-in peers (e.g. a peer of your own)


class UnknownName(ValueError):
    """A peer, guest, feature, runtime or version the matrix does not know."""


def choose_peers(names: Sequence[str] | None, available: Sequence[Peer]) -> list[Peer]:
    by_name = {p.name: p for p in available}
    if not names:
        return list(available)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UnknownName(f"unknown peer {unknown[0]!r} (known: {', '.join(by_name)})")
    return [by_name[n] for n in dict.fromkeys(names)]


@dataclass
class Planned:
    guest: Guest
    host: ThisHost | WasmtimeCli
    peer: Peer
    feature: Feature
    version: str
    verdict: tuple[str, str] | None = None  # decided without running (n/a, skip)

    @property
    def role(self) -> str:
        return self.guest.role


@dataclass
class Matrix:
    options: MatrixOptions
    guests: list[Guest]
    peers: list[Peer]
    hosts: list[ThisHost | WasmtimeCli]
    features: list[Feature]
    peer_status: dict[str, str] = field(default_factory=dict)  # name -> "ok" or why skipped
    host_status: dict[str, str] = field(default_factory=dict)
    guest_status: dict[str, str] = field(default_factory=dict)


def _lacks(side: str, abilities: frozenset[str], needs: frozenset[str]) -> str | None:
    missing = sorted(needs - abilities)
    return f"{side} cannot {ABILITIES[missing[0]]}" if missing else None


def _specs(p: Planned, pki: Pki) -> tuple[ServerSpec, ClientSpec]:
    server, client = p.feature.server(pki, p.version), p.feature.client(pki, p.version)  # type: ignore[arg-type]
    http_client = p.guest.client.http_only if p.role == "client" and p.guest.client else p.role == "server" and p.peer.http_only
    if http_client and server.behaviour == "echo":
        server, client = replace(server, behaviour="http"), replace(client, send=None)
    return server, client


def _needs(p: Planned, server: ServerSpec, client: ClientSpec) -> tuple[frozenset[str], frozenset[str]]:
    server_needs = set(p.feature.server_needs)
    if server.behaviour == "http":
        server_needs.add("http")
    elif server.behaviour == "echo" and client.send is not None:
        server_needs.add("echo")
    return frozenset(server_needs), frozenset(p.feature.client_needs)


def plan(matrix: Matrix, pki: Pki) -> list[Planned]:
    cases: list[Planned] = []
    for guest in matrix.guests:
        for host in matrix.hosts:
            if isinstance(host, WasmtimeCli) and not guest.upstream:
                continue  # it runs only guests of upstream interfaces (this host's own package is this host's)
            for peer in matrix.peers:
                if guest.role not in _peer_roles(peer):
                    continue
                for feature in matrix.features:
                    if guest.features is not None and feature.name not in guest.features:
                        continue
                    for version in matrix.options.versions:
                        p = Planned(guest, host, peer, feature, version)
                        p.verdict = _decide(matrix, p, pki)
                        cases.append(p)
    return cases


def _peer_roles(peer: Peer) -> set[str]:
    """The guest roles a peer meets: a peer with a server meets client guests."""
    roles = set()
    if peer.server_tool:
        roles.add("client")
    if peer.client_tool:
        roles.add("server")
    return roles


def _decide(matrix: Matrix, p: Planned, pki: Pki) -> tuple[str, str] | None:
    peer_status = matrix.peer_status.get(p.peer.name, "ok")
    if peer_status != "ok":
        return "skip", f"{p.peer.name}: {peer_status}"
    host_status = matrix.host_status.get(p.host.name, "ok")
    if host_status != "ok":
        return "skip", host_status
    guest_status = matrix.guest_status.get(p.guest.name, "ok")
    if guest_status != "ok":
        return "skip", guest_status
    if p.guest.wasi == "0.3" and p.host.runtime == "component":
        return "n/a", "the component runtime has no async ABI: WASI 0.3 guests run on the core runtime"
    server, client = _specs(p, pki)
    server_needs, client_needs = _needs(p, server, client)
    if p.role == "client":
        server_side = (p.peer.server_tool or p.peer.name, p.peer.abilities("server"))
        client_side = (p.guest.name, p.guest.adapter_abilities)
    else:
        server_side = (p.guest.name, p.guest.adapter_abilities)
        client_side = (p.peer.client_tool or p.peer.name, p.peer.abilities("client"))
    lack = _lacks(*server_side, server_needs) or _lacks(*client_side, client_needs)
    if lack is None and p.feature.name.startswith("group-") and "groups" not in p.peer.abilities("server" if p.role == "client" else "client"):
        lack = f"{p.peer.name} cannot {ABILITIES['groups']}"
    if lack:
        return "n/a", lack
    if isinstance(p.host, WasmtimeCli) and p.feature.name != "cert-unknown-ca":
        return "n/a", RUSTLS_ROOTS
    return None


# --- running -----------------------------------------------------------------------------


class Runner:
    def __init__(self, matrix: Matrix, ctx: RunContext) -> None:
        self.matrix = matrix
        self.ctx = ctx
        self.access = AccessLines()

    def run(self, p: Planned) -> tuple[str, str, float | None]:
        if p.verdict is not None:
            return (*p.verdict, None)
        try:
            if p.role == "client":
                return self._client_case(p)
            return self._server_case(p)
        except PeerUnavailable as e:
            return "fail", f"{p.peer.name} failed to start: {e}", None
        except BuildError as e:
            return "skip", f"the guest could not be built: {e}", None

    def _client_case(self, p: Planned) -> tuple[str, str, float | None]:
        assert p.guest.client is not None
        server_spec, client_spec = _specs(p, self.ctx.pki)
        server = p.peer.start_server(server_spec, self.ctx)
        try:
            args = p.guest.client.args(client_spec, server.port, self.ctx.timeout)
            run = p.host.run_client(p.guest, args, client_spec, self.ctx.pki, self.ctx.timeout, self.ctx.processes)
            client = p.guest.client.parse(run.stdout, run.stderr, run.exit_code, client_spec)
            client.timed_out = run.timed_out
            if run.timed_out:
                client.problem = f"the guest was stopped at its timeout ({self.ctx.timeout:g} s); it said: {client.excerpt() or '(nothing)'}"
            elif run.trap and not client.connections:
                client.problem = f"the guest trapped: {run.trap}"
            # Facts the guest's API cannot tell (wasi:tls 0.2 has no resumed()): the host's.
            for seen, info in zip((c for c in client.connections if c.ok), run.handshakes):
                if seen.resumed is None:
                    seen.resumed = info.resumed
                if seen.version is None:
                    seen.version = version_name(info.protocol_name)
            # A refused connection's server side is only a detail: a short wait for it.
            wait = SERVER_REPORT_WAIT if any(c.ok for c in client.connections) else REFUSED_REPORT_WAIT
            server_seen = server.observe(max(1, len(client.connections)), wait, ends="report-end" in p.feature.server_needs)
        finally:
            server.stop()
        outcome, detail = p.feature.judge(p.feature, server_spec, client_spec, server_seen, client)
        first = client.first
        return outcome, detail, first.handshake_ms if first is not None and first.ok else None

    def _server_case(self, p: Planned) -> tuple[str, str, float | None]:
        assert p.guest.server is not None and isinstance(p.host, ThisHost)
        server_spec, client_spec = _specs(p, self.ctx.pki)
        port = free_port()
        running = p.host.start_server(p.guest, p.guest.server.args(server_spec, port), server_spec, self.ctx.pki, port, self.ctx.timeout)
        try:
            problem = running.wait_listening()
            if problem:
                return "fail", problem, None
            self.access.take()
            client = p.peer.run_client(client_spec, port, self.ctx)
            expected = max(1, len(client.connections))
            deadline = time.monotonic() + (SERVER_REPORT_WAIT if any(c.ok for c in client.connections) else REFUSED_REPORT_WAIT)
            while len(p.guest.server.parse(running.output)) < expected and time.monotonic() < deadline and running.thread.is_alive():
                time.sleep(0.02)
            if "report-end" in p.feature.server_needs:
                self._await_end(p, running, deadline + SERVER_REPORT_WAIT)
            server = Observation(p.guest.server.parse(running.output), output=running.output)
            # Facts a server guest does not print (tls_echo_server_p3: the SNI; tls_server_p3: the
            # client certificate): the host's.
            for seen, info in zip((c for c in server.connections if c.ok), running.handshakes):
                if seen.resumed is None:
                    seen.resumed = info.resumed
                if seen.server_name is None:
                    seen.server_name = info.server_name or ""
                if seen.version is None:
                    seen.version = version_name(info.protocol_name)
                if seen.peer_subject is None:
                    seen.peer_subject = _subject(info.peer_chain_der)
            if not running.thread.is_alive():
                server.problem = f"the server guest ended: {running.ended()}"
        finally:
            running.stop()
        times = handshake_ms(self.access.take())
        outcome, detail = p.feature.judge(p.feature, server_spec, client_spec, server, client)
        return outcome, detail, times[0] if times else None

    def _await_end(self, p: Planned, running: object, deadline: float) -> None:
        """Wait (bounded) until the guest reported how the client ended its connection."""
        assert p.guest.server is not None
        while time.monotonic() < deadline:
            seen = p.guest.server.parse(running.output)  # type: ignore[attr-defined]
            if seen and seen[0].end is not None:
                return
            time.sleep(0.02)


def _subject(chain_der: list[bytes]) -> str:
    """The subject of a chain's leaf ("" for no chain), as this host read it."""
    return x509.load_der_x509_certificate(chain_der[0]).subject.rfc4514_string() if chain_der else ""


# --- references --------------------------------------------------------------------------


def _reference(peers: list[Peer], prefer_http: bool = False) -> Peer | None:
    """The peer whose own handshake times the references use: Go, else CPython."""
    order = ["python", "go"] if prefer_http else ["go", "python"]
    for name in order:
        for peer in peers:
            if peer.name == name:
                return peer
    return None


def measure_figures(matrix: Matrix, runner: Runner, versions: Sequence[str]) -> list[Figure]:
    """Handshake figures, one case after another: each guest's median of
    ``TIMED_CONNECTIONS`` full handshakes with each peer, beside the same handshake between
    two peers measured right before it (a client that times itself against the same peer
    server; the peer's client against a server that times itself). WASI 0.3 guests are
    timed on the core runtime only (the component runtime has no async ABI)."""
    ctx = runner.ctx
    usable = [p for p in matrix.peers if matrix.peer_status.get(p.name) == "ok"]
    ok_guests = [g for g in matrix.guests if matrix.guest_status.get(g.name, "ok") == "ok"]
    hosts = [h for h in matrix.hosts if isinstance(h, ThisHost)]
    handshake = BY_NAME["handshake"]
    result: list[Figure] = []
    for version in versions:
        server_spec = replace(handshake.server(ctx.pki, version), tickets=False)  # type: ignore[arg-type]
        client_spec = replace(handshake.client(ctx.pki, version), resumption=False, connections=TIMED_CONNECTIONS)  # type: ignore[arg-type]
        for peer in usable:
            measurer = _reference(usable)
            if peer.server_tool and measurer is not None:
                result += _client_figures(peer, measurer, server_spec, client_spec, ok_guests, hosts, runner)
            server_reference = _reference(usable, prefer_http=peer.http_only)
            if peer.client_tool and server_reference is not None:
                result += _server_figures(peer, server_reference, server_spec, client_spec, ok_guests, hosts, runner)
    return result


def _hosts_for(guest: Guest, hosts: list[ThisHost]) -> list[ThisHost]:
    return [h for h in hosts if guest.wasi != "0.3" or h.runtime == "core"]


def _figure(guest: Guest, role: str, host: ThisHost, peer: Peer, spec: ServerSpec, values: list[float], label: str,
            reference: float | None, measured_by: str = "host") -> Figure | None:
    ms = median_ms(values)
    if ms is None:
        return None
    return Figure(guest.name, role, host.name, host.runtime, peer.name, spec.version, ms, len(values), label, reference,
                  round(ms / reference, 2) if reference else None, measured_by)


def _timed_client_runs(guest: Guest, host: ThisHost, port: int, client_spec: ClientSpec, ctx: RunContext) -> tuple[list[float], str]:
    """Up to ``TIMED_CONNECTIONS`` handshakes of a client guest, and who timed them: the
    guest's own figures when it prints them (``handshake-us``), else the host's
    (``HandshakeInfo.handshake_ms``). A guest that makes one connection per run (an HTTPS
    GET) runs again until there are enough, and stops at the first run without one."""
    assert guest.client is not None
    own: list[float] = []
    hosts: list[float] = []
    for _ in range(TIMED_CONNECTIONS):
        run = host.run_client(guest, guest.client.args(client_spec, port, ctx.timeout), client_spec, ctx.pki, ctx.timeout, ctx.processes)
        seen = guest.client.parse(run.stdout, run.stderr, run.exit_code, client_spec)
        own += [c.handshake_ms for c in seen.connections if c.ok and c.handshake_ms is not None]
        hosts += [h.handshake_ms for h in run.handshakes if h.handshake_ms is not None]
        if own and len(own) >= TIMED_CONNECTIONS:
            return own[:TIMED_CONNECTIONS], "guest"
        if not own and (len(hosts) >= TIMED_CONNECTIONS or not run.handshakes):
            break
    return (own, "guest") if own else (hosts[:TIMED_CONNECTIONS], "host")


def _client_figures(peer: Peer, measurer: Peer, server_spec: ServerSpec, client_spec: ClientSpec, guests: list[Guest],
                    hosts: list[ThisHost], runner: Runner) -> list[Figure]:
    """Each client guest against ``peer``'s server (one that answers HTTP for the guests
    that only GET, when the peer has one), beside ``measurer``'s client against it."""
    ctx = runner.ctx
    found: list[Figure] = []
    clients = [g for g in guests if g.role == "client" and g.client is not None]
    try:
        server = peer.start_server(server_spec, ctx)
    except PeerUnavailable:
        return found
    try:
        reference = median_ms(c.handshake_ms for c in measurer.run_client(client_spec, server.port, ctx).connections)
        label = f"{measurer.client_tool} -> {peer.server_tool}"
        for guest in clients:
            if guest.client is not None and guest.client.http_only:
                continue
            for host in _hosts_for(guest, hosts):
                values, measured_by = _timed_client_runs(guest, host, server.port, client_spec, ctx)
                figure = _figure(guest, "client", host, peer, server_spec, values, label, reference, measured_by)
                if figure is not None:
                    found.append(figure)
    finally:
        server.stop()
    http_clients = [g for g in clients if g.client is not None and g.client.http_only]
    if not http_clients or "http" not in peer.abilities("server"):
        return found
    http_spec = replace(server_spec, behaviour="http")
    try:
        server = peer.start_server(http_spec, ctx)
    except PeerUnavailable:
        return found
    try:
        for guest in http_clients:
            for host in _hosts_for(guest, hosts):
                values, measured_by = _timed_client_runs(guest, host, server.port, replace(client_spec, send=None), ctx)
                figure = _figure(guest, "client", host, peer, server_spec, values, label, reference, measured_by)
                if figure is not None:
                    found.append(figure)
    finally:
        server.stop()
    return found


def _server_figures(peer: Peer, reference_server: Peer, server_spec: ServerSpec, client_spec: ClientSpec, guests: list[Guest],
                    hosts: list[ThisHost], runner: Runner) -> list[Figure]:
    ctx = runner.ctx
    spec = replace(server_spec, behaviour="http") if peer.http_only else server_spec
    one = replace(client_spec, connections=1, send=None if peer.http_only else client_spec.send)
    found: list[Figure] = []
    try:
        server = reference_server.start_server(spec, ctx)
    except PeerUnavailable:
        return found
    try:
        for _ in range(TIMED_CONNECTIONS):
            peer.run_client(one, server.port, ctx)
        seen = server.observe(TIMED_CONNECTIONS, SERVER_REPORT_WAIT)
        reference = median_ms(c.handshake_ms for c in seen.connections)
    finally:
        server.stop()
    label = f"{peer.client_tool} -> {reference_server.server_tool}"
    for guest in guests:
        if guest.role != "server" or guest.server is None or (peer.http_only and "http" not in guest.server.abilities):
            continue
        for host in _hosts_for(guest, hosts):
            port = free_port()
            running = host.start_server(guest, guest.server.args(spec, port), spec, ctx.pki, port, ctx.timeout)
            try:
                if running.wait_listening() is not None:
                    continue
                runner.access.take()
                for _ in range(TIMED_CONNECTIONS):
                    peer.run_client(one, port, ctx)
                times = handshake_ms(runner.access.take())
            finally:
                running.stop()
            figure = _figure(guest, "server", host, peer, spec, times, label, reference)
            if figure is not None:
                found.append(figure)
    return found


def validate(options: MatrixOptions) -> tuple[list[Peer], list[Feature], list[Guest]]:
    """The peers, features and guests the options name; ``UnknownName`` for a name that
    does not exist (nothing is started here)."""
    available = list(options.peer_objects) if options.peer_objects is not None else all_peers()
    peers = choose_peers(options.peers, available)
    for runtime in options.runtimes:
        if runtime not in RUNTIMES:
            raise UnknownName(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    for version in options.versions:
        if version not in ("1.2", "1.3"):
            raise UnknownName(f"unknown TLS version {version!r} (known: 1.2, 1.3)")
    try:
        features = pick(list(options.features) if options.features else None)
    except ValueError as e:
        raise UnknownName(str(e)) from None
    guests: list[Guest] = []
    if options.builtin:
        builtin = builtin_guests()
        names = [g.name for g in builtin]
        for name in options.guests or []:
            if name not in names:
                raise UnknownName(f"unknown guest {name!r} (known: {', '.join(names)})")
        guests += [g for g in builtin if not options.guests or g.name in options.guests]
    guests += [user_guest(Path(p), "client") for p in options.client_guests]
    guests += [user_guest(Path(p), "server") for p in options.server_guests]
    return peers, features, guests


def build_matrix(options: MatrixOptions) -> Matrix:
    peers, features, guests = validate(options)
    hosts: list[ThisHost | WasmtimeCli] = [ThisHost(r) for r in dict.fromkeys(options.runtimes)]
    if options.wasmtime:
        hosts.append(WasmtimeCli(peer_cache_dir()))
    return Matrix(options, guests, peers, hosts, features)


def _case(matrix: Matrix, p: Planned, outcome: str, detail: str, ms: float | None) -> Case:
    return Case(p.guest.name, p.guest.toolchain, p.guest.wasi, p.role, p.host.name, p.host.runtime, p.peer.name,
                matrix.peer_status.get(f"{p.peer.name}:version", "unknown"), p.version, p.feature.name, outcome, detail,
                None if ms is None else round(ms, 3))


def _open_run(options: MatrixOptions, workdir: Path) -> tuple[Matrix, RunContext, Runner]:
    matrix = build_matrix(options)
    (workdir / "processes").mkdir(parents=True)
    ctx = RunContext(workdir, Pki(workdir / "pki"), Processes(workdir / "processes"), options.timeout, peer_cache_dir())
    return matrix, ctx, Runner(matrix, ctx)


def _close_run(matrix: Matrix, ctx: RunContext, runner: Runner) -> None:
    runner.access.remove()
    ctx.processes.close()
    for host in matrix.hosts:
        host.close()


def _worker(options: MatrixOptions, workdir: str, indices: list[int], results: Any) -> None:
    """A worker process: the same plan as the parent's, running the cases it was given;
    each result goes back on ``results`` as (index, outcome, detail, ms). The parent ends it
    early with SIGTERM: that unwinds like an exception, so the peers it started are ended."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C reaches the whole group: the parent decides
    matrix, ctx, runner = _open_run(options, Path(workdir))
    runner.access.install()
    try:
        _prepare(matrix, ctx)
        planned = plan(matrix, ctx.pki)
        for index in indices:
            try:
                outcome, detail, ms = runner.run(planned[index])
            except Exception as e:  # one broken case must not end the others
                outcome, detail, ms = "fail", f"the case broke the matrix: {type(e).__name__}: {e}", None
            results.put((index, outcome, detail, ms))
    finally:
        _close_run(matrix, ctx, runner)


def _exit_on_signal(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the clean-up runs to its end
    raise SystemExit(128 + signum)


def _run_parallel(options: MatrixOptions, matrix: Matrix, planned: list[Planned], workdir: Path,
                  report: Callable[[int, str, str, float | None], None]) -> None:
    """Run the cases that need running in ``options.jobs`` worker processes (spawned: a
    fresh interpreter each, nothing inherited from this one's threads)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    runnable = [i for i, p in enumerate(planned) if p.verdict is None]
    shares = [runnable[w::options.jobs] for w in range(options.jobs)]
    worker_options = replace(options, progress=None, jobs=1)
    workers = [context.Process(target=_worker, args=(worker_options, str(workdir / f"worker-{w}"), share, results), daemon=True)
               for w, share in enumerate(shares) if share]
    for worker in workers:
        worker.start()
    pending = set(runnable)
    try:
        while pending:
            try:
                index, outcome, detail, ms = results.get(timeout=1.0)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    break
                continue
            pending.discard(index)
            report(index, outcome, detail, ms)
        for index in sorted(pending):  # a worker died under these cases
            codes = ", ".join(str(w.exitcode) for w in workers)
            report(index, "fail", f"the worker process running this case ended early (exit status {codes})", None)
    finally:
        if pending:  # stopped early (an exception, a signal): the workers stop too, now
            for worker in workers:
                if worker.is_alive():
                    worker.terminate()
        for worker in workers:
            worker.join(WORKER_STOP_WAIT)
            if worker.is_alive():
                worker.kill()
                worker.join(WORKER_STOP_WAIT)
        for folder in workdir.glob("worker-*"):
            # A worker killed (stuck inside wasmtime, deaf to SIGTERM) could not end its peers.
            kill_left(folder / "processes")
        results.close()
        results.join_thread()


def default_jobs() -> int:
    """Two worker processes, or one on a single CPU (the command's default)."""
    return min(2, os.cpu_count() or 1)


def run_matrix(options: MatrixOptions) -> Report:
    """Run the matrix; the report is returned (``report.write`` puts it on disk). Leaves no
    process and no temporary file behind."""
    started_at = time.strftime("%Y-%m-%d %H:%M:%S %z")
    started = time.monotonic()
    jobs = options.jobs if options.peer_objects is None else 1  # peers of one's own stay in this process
    with tempfile.TemporaryDirectory(prefix="wasi-tls-host-interop-") as scratch:
        matrix, ctx, runner = _open_run(options, Path(scratch) / "main")
        try:
            _prepare(matrix, ctx)
            planned = plan(matrix, ctx.pki)
            cases: list[Case | None] = [None] * len(planned)
            done = [0]

            def record(index: int, outcome: str, detail: str, ms: float | None) -> None:
                cases[index] = _case(matrix, planned[index], outcome, detail, ms)
                done[0] += 1
                if options.progress is not None:
                    options.progress(done[0], len(planned), cases[index])

            for index, p in enumerate(planned):
                if p.verdict is not None:
                    record(index, *p.verdict, None)
            if jobs > 1:
                _run_parallel(replace(options, jobs=jobs), matrix, planned, Path(scratch), record)
            else:
                runner.access.install()
                for index, p in enumerate(planned):
                    if p.verdict is None:
                        record(index, *runner.run(p))
            report = Report([c for c in cases if c is not None])
            runner.access.install()
            figures_measured = measure_figures(matrix, runner, options.versions) if options.references else []
        finally:
            _close_run(matrix, ctx, runner)
    report.summary = {
        "cases": len(report.cases), **report.counts(), "seconds": round(time.monotonic() - started, 1), "started": started_at,
        "jobs": jobs, "machine": machine(),
        "peers": {p.name: {"implementation": p.implementation, "server": p.server_tool, "client": p.client_tool,
                           "version": matrix.peer_status.get(f"{p.name}:version", "unknown"),
                           "status": matrix.peer_status.get(p.name, "ok")} for p in matrix.peers},
        "hosts": {h.name if isinstance(h, WasmtimeCli) else f"{h.name} ({h.runtime})":
                  {"version": matrix.host_status.get(f"{h.name}:version", "unknown"), "status": matrix.host_status.get(h.name, "ok")}
                  for h in matrix.hosts},
        "guests": {g.name: {"role": g.role, "wasi": g.wasi, "toolchain": g.toolchain, "api": g.api,
                            "status": matrix.guest_status.get(g.name, "ok")} for g in matrix.guests},
        "figures": [vars(f) for f in figures_measured],
    }
    return report


def _prepare(matrix: Matrix, ctx: RunContext) -> None:
    """Find out which peers, hosts and guests can take part (and their versions)."""
    for peer in matrix.peers:
        reason = peer.make_ready(ctx)
        matrix.peer_status[peer.name] = "ok" if reason is None else f"skipped: {reason}"
        matrix.peer_status[f"{peer.name}:version"] = peer.version() if reason is None else "not installed"
    for host in matrix.hosts:
        reason = host.missing()
        matrix.host_status[host.name] = "ok" if reason is None else f"skipped: {reason}"
        matrix.host_status[f"{host.name}:version"] = host.version() if reason is None else "not installed"
    for guest in matrix.guests:
        try:
            path = guest.source()
            if not path.is_file():
                matrix.guest_status[guest.name] = f"skipped: no component at {path}"
        except BuildError as e:
            matrix.guest_status[guest.name] = f"skipped: it could not be built: {str(e).splitlines()[0]}"
