"""``wasi-tls-host interop``: run the interop matrix and write its report (a thin layer over
``wasi_tls_host.interop``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .errors import UsageError
from .startup import STOP_SIGNALS


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("interop", help="test wasi:tls guests, hosts and TLS implementations against each other; write a report",
                       description="Run the interop matrix (guests x hosts x TLS peers x features x TLS versions) and write "
                                   "DIR/report.json, DIR/report.md and DIR/index.html. Exit status 0 only when no case failed.")
    p.add_argument("--out", default="interop-report", metavar="DIR", help="where the report goes (default: interop-report)")
    p.add_argument("--peers", type=_names, action="extend", metavar="NAMES",
                   help="comma-separated peers (default: all): openssl, gnutls, go, python, java, curl")
    p.add_argument("--features", type=_names, action="extend", metavar="NAMES", help="comma-separated features or globs (cert-*); default: all")
    p.add_argument("--tls", type=_names, action="extend", metavar="VERSIONS", help="TLS versions: 1.2, 1.3 (default: both)")
    p.add_argument("--runtime", type=_names, action="extend", metavar="NAMES", help="this host's runtimes: core, component (default: both)")
    p.add_argument("--guests", type=_names, action="extend", metavar="NAMES",
                   help="the project's guests to run (default: all): tls_client, tls_probe, https_get, tls_server, tls_echo_server, "
                        "https_get_p3, https_get_upstream_p3, tls_echo_server_p3")
    p.add_argument("--client-guest", action="append", default=[], metavar="PATH", help="your client component (the client contract; repeatable)")
    p.add_argument("--server-guest", action="append", default=[], metavar="PATH", help="your server component (the server contract; repeatable)")
    p.add_argument("--no-builtin-guests", action="store_true", help="run only the guests given with --client-guest/--server-guest")
    p.add_argument("--no-wasmtime", action="store_true", help="leave the wasmtime CLI out")
    p.add_argument("--no-reference", action="store_true", help="skip the peer-to-peer handshake figures")
    p.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS", help="bound on one side of one case (default: 20)")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="cases run at once, each in a worker process (default: 2, or 1 on one CPU)")
    p.add_argument("--list", action="store_true", help="list the peers and features, then exit")
    p.add_argument("--install-peers", action="store_true",
                   help="install the missing peers (--peers, default all but java) with apt-get, build the Go and Java peers, then exit")
    return p


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: unwinds the matrix like KeyboardInterrupt, so every
    ``finally`` on the way ends what it started (peers, workers, the scratch folder)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    for other in STOP_SIGNALS:  # once: a second signal must not cut the clean-up short
        signal.signal(other, signal.SIG_IGN)
    raise Stopped(signum)


def _check_out(out: Path) -> None:
    """The report folder must be a folder this process can write (one line if not)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: this is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        import tempfile  # here: the other commands do not pay for it at start-up

        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None


class Progress:
    """One rewritten line on a terminal; failures always get a line of their own."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, case: object) -> None:
        from ..interop.report import Case

        assert isinstance(case, Case)
        where = f"{case.guest} ({case.role}) {case.column} {case.peer} TLS {case.tls_version} {case.feature}"
        if case.outcome == "fail":
            self._clear()
            print(f"FAIL [{done}/{total}] {where}: {case.detail}", file=sys.stderr)
        if self.tty:
            print(f"\r[{done}/{total}] {case.outcome:4} {where}"[:150].ljust(150), end="", file=sys.stderr, flush=True)

    def _clear(self) -> None:
        if self.tty:
            print("\r" + " " * 150 + "\r", end="", file=sys.stderr)

    def finish(self) -> None:
        self._clear()


def _install(names: list[str] | None) -> int:
    from ..interop.install import InstallError, install_peers
    from ..interop.matrix import UnknownName, choose_peers
    from ..interop.peers import all_peers

    available = all_peers()
    try:
        # JSSE needs a JDK (hundreds of MB): installed only when --peers names java.
        peers = choose_peers(names, available) if names else [p for p in available if p.name != "java"]
    except UnknownName as e:
        raise UsageError(str(e)) from None
    try:
        result = install_peers(peers)
    except InstallError as e:
        raise UsageError(str(e)) from None
    print(f"installed: {' '.join(result.packages)}" if result.packages else "installed: nothing (no peer was missing)")
    print(f"ready: {', '.join(result.ready) or 'none'}")
    for name, reason in result.missing.items():
        print(f"still missing: {name}: {reason}")
    return 1 if result.missing else 0


def command(args: argparse.Namespace) -> int:
    from ..interop import features as feature_list
    from ..interop.matrix import MatrixOptions, UnknownName, default_jobs, run_matrix, validate
    from ..interop.peers import all_peers
    from ..interop.report import write

    if args.list:
        for peer in all_peers():
            print(f"peer {peer.name:8} {peer.implementation}: {', '.join(t for t in (peer.server_tool, peer.client_tool) if t)}")
        for feature in feature_list.FEATURES:
            print(f"feature {feature.name:24} {feature.about}")
        return 0
    if args.install_peers:
        return _install(args.peers)
    out = Path(args.out)
    for path in [*args.client_guest, *args.server_guest]:
        if not Path(path).is_file():
            raise UsageError(f"no component at {path}")
    options = MatrixOptions(
        peers=args.peers, features=args.features, versions=args.tls or ("1.2", "1.3"),
        runtimes=args.runtime or ("core", "component"), guests=args.guests,
        client_guests=[Path(p) for p in args.client_guest], server_guests=[Path(p) for p in args.server_guest],
        builtin=not args.no_builtin_guests, wasmtime=not args.no_wasmtime, timeout=args.timeout,
        references=not args.no_reference,
    )
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be 1 or more")
    options.jobs = args.jobs if args.jobs is not None else default_jobs()
    try:
        validate(options)  # every name checked before anything runs
    except UnknownName as e:
        raise UsageError(str(e)) from None
    if args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    _check_out(out)
    progress = Progress()
    options.progress = progress
    previous = {signum: signal.signal(signum, _stop) for signum in STOP_SIGNALS}
    try:
        report = run_matrix(options)
    except Stopped as e:  # run_matrix ended its peers and workers and removed its scratch folder
        progress.finish()
        print(f"wasi-tls-host interop: stopped by {signal.Signals(e.signum).name}; no report written", file=sys.stderr)
        return 128 + e.signum
    finally:
        progress.finish()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    write(report, out)
    s = report.summary
    counts = report.counts()
    print(f"{s['cases']} cases in {s['seconds']:.0f} s: " + ", ".join(f"{counts[o]} {o}" for o in ("pass", "fail", "skip", "n/a"))
          + f"; report: {out / 'index.html'}")
    return 1 if report.failed else 0
