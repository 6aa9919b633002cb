"""tlsfuzzer against the example guest servers on this host, beside ``openssl s_server`` and
a bare pyOpenSSL server, in one run: a table of passed/failed probes per script and server.

Every script of the curated list (devtools/tlsfuzzer.py) runs with the same options and the
same seed against
  (a) the ``tls_server_p3`` example guest (WASI 0.3, the asyncio binding) and
  (b) the ``tls_server`` example guest (WASI 0.2) on this host (``wasi-tls-host run ...
      --count 0 --concurrent --mode http``, or ``echo`` for tls13-lengths), with the TLS
      profile the script needs (``intermediate``, the default, or ``compat``);
  (c) a bare pyOpenSSL server: the host's own OpenSSL build and TLS profile, no host code;
  (d) ``openssl s_server -www`` (``-rev`` for echo), the system OpenSSL with its defaults.
Probes are counted as tlsfuzzer reports them, without the expected-failure list, so the
columns compare like with like; the failures of each guest are then sorted into those the
list expects (with the reason) and any others. The guest servers' descriptors are counted
after start and after the last script (once the closed connections are closed here too).

Run: python benchmarks/tlsfuzzer_report.py [-k SUBSTRING] [--wasi 0.3,0.2] [--jobs 2] [--ci] [-v]
(--ci uses the test suite's -n; the default runs the larger -n of the list.)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools/ (not installed)
from devtools import tlsfuzzer as tf  # noqa: E402
from wasi_tls_host import guests  # noqa: E402

REFERENCES = ("pyopenssl", "s_server")


def write_pki(directory: Path) -> tuple[Path, Path]:
    """An RSA certificate for localhost (tlsfuzzer's scripts expect RSA) and its key."""
    leaf = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert("localhost", common_name="localhost", key_type=trustme.KeyType.RSA)
    cert, key = directory / "localhost.pem", directory / "localhost.key"
    cert.write_bytes(b"".join(c.bytes() for c in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only scripts whose name contains this")
    parser.add_argument("--jobs", type=int, default=2, help="scripts run at once (default 2)")
    parser.add_argument("--ci", action="store_true", help="the test suite's -n instead of the report's")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every failed probe and why")
    parser.add_argument("--wasi", default="0.3,0.2", help="the guests to run, by WASI version (default: 0.3,0.2)")
    args = parser.parse_args()
    if (why := tf.available()) is not None:
        print(why, file=sys.stderr)
        return 2
    # SIGTERM stops the servers too (as Ctrl-C does), instead of leaving them running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    scripts = [s for s in tf.SCRIPTS if args.k in s.name]
    versions = [v for v in args.wasi.split(",") if v]
    servers = (*versions, *REFERENCES)
    guest_files = {v: guests.build(tf.GUESTS[v]) for v in versions}
    for guest in guest_files.values():
        tf.compile_once(guest)
    with tempfile.TemporaryDirectory(prefix="tlsfuzzer-report-") as tmp:
        work = Path(tmp)
        cert, key = write_pki(work)
        kinds = sorted({s.kind for s in scripts}, key=str)
        guest_kinds = sorted({s.on(v).kind for s in scripts for v in versions}, key=str)
        started: list[tf.ServerProcess] = []
        pool = ThreadPoolExecutor(args.jobs)
        try:
            here = {kind: tf.GuestServer(guest_files[kind.wasi], cert, key, work, kind) for kind in guest_kinds}
            started += here.values()
            bare = {kind: tf.PyOpenSSLServer(cert, key, work, kind) for kind in kinds}
            started += bare.values()
            s_server = {mode: tf.OpensslServer(cert, key, work, mode=mode) for mode in sorted({k.mode for k in kinds})}
            started += s_server.values()
            fds_before = {kind: server.descriptors() for kind, server in here.items()}

            def against(server: str, s: tf.Script) -> tuple[tf.Script, int]:
                """The script as run against ``server``, and the server's port."""
                if server in versions:
                    mine = s.on(server)
                    return mine, here[mine.kind].port
                if server == "pyopenssl":
                    return s, bare[s.kind].port
                return s, s_server[s.kind.mode].port

            # s_server serves one connection at a time: two scripts at once would make each
            # other's probes time out, so its scripts take turns.
            turns = {mode: threading.Lock() for mode in s_server}

            def run(job: tuple[tf.Script, str]) -> tf.Outcome:
                s, server = job
                n = s.ci_n if args.ci else s.report_n
                script, port = against(server, s)
                if server != "s_server":
                    return tf.run(script, port, n=n, only=s.only)
                with turns[s.kind.mode]:
                    return tf.run(script, port, n=n, only=s.only)

            jobs = [(s, server) for s in scripts for server in servers]
            began = time.monotonic()
            outcomes = dict(zip(jobs, pool.map(run, jobs)))
            elapsed = time.monotonic() - began
            fds_after = {kind: server.settled_descriptors(fds_before[kind]) for kind, server in here.items()}
            alive = {kind: server.alive for kind, server in here.items()}
            served = {kind: server.connections() for kind, server in here.items()}
        finally:
            # Servers first: on an interrupt, scripts still running then end at once.
            for server in started:
                server.stop()
            pool.shutdown(cancel_futures=True)

    print(f"tlsfuzzer at {tf.SUITE}, seed {tf.SEED}, {len(scripts)} scripts x {len(servers)} servers in {elapsed:.0f} s "
          f"({args.jobs} at a time){' with the CI -n' if args.ci else ''}; load {os.getloadavg()[0]:.1f}\n")
    header = (f"{'script':40} {'profile':12} {'-n':>4} | "
              + " | ".join(f"{'WASI ' + v + ' guest':>17} {'not expected':>12}" for v in versions)
              + f" | {'pyOpenSSL':>11} | {'s_server':>11}")
    print(header)
    print("-" * len(header))
    unexpected_total = 0
    for s in scripts:
        n = s.ci_n if args.ci else s.report_n
        cells = []
        for v in versions:
            mine, listed = outcomes[(s, v)], {e.probe for e in s.on(v).expected}
            unexpected = [p for p in mine.failed_probes if p not in listed]
            unexpected_total += len(unexpected) + (mine.returncode not in (0, 1))
            cells.append(f"{mine.passed:>11}/{mine.failed:<5} {len(unexpected):>12}")
        ref, sserv = outcomes[(s, "pyopenssl")], outcomes[(s, "s_server")]
        print(f"{s.name:40} {s.kind.profile:12} {'-' if n is None else n or 'all':>4} | " + " | ".join(cells)
              + f" | {ref.passed:>5}/{ref.failed:<5} | {sserv.passed:>5}/{sserv.failed:<5}")
    print()
    for kind, count in fds_before.items():
        state = "still serving" if alive[kind] else "EXITED"
        print(f"{tf.GUESTS[kind.wasi]} {kind}: descriptors {count} after start, {fds_after[kind]} after "
              f"{served[kind]} connections; {state}")
    print()
    for s in scripts:
        ref, sserv = outcomes[(s, "pyopenssl")], outcomes[(s, "s_server")]
        for v in versions:
            mine = outcomes[(s, v)]
            reasons = {e.probe: e.reason for e in s.on(v).expected}
            for probe in mine.failed_probes:
                if probe in reasons and not args.verbose:
                    continue
                also = [name for name, o in (("pyOpenSSL", ref), ("s_server", sserv)) if probe in o.failed_probes]
                label = "expected" if probe in reasons else "NOT EXPECTED"
                print(f"{s.name} (WASI {v} guest): {label}: {probe!r}: {mine.why(probe)}"
                      f" [fails on {', '.join(also) if also else 'neither reference'}]")
                if probe in reasons:
                    print(f"    reason: {reasons[probe]}")
            if mine.returncode not in (0, 1):
                print(f"{s.name} (WASI {v} guest): the script itself failed (exit {mine.returncode}):\n{mine.output[-1500:]}")
    if args.verbose:
        print()
        for s in scripts:
            for name, o in (("pyOpenSSL", outcomes[(s, "pyopenssl")]), ("s_server", outcomes[(s, "s_server")])):
                for probe in o.failed_probes:
                    print(f"{s.name} on {name}: failed {probe!r}: {o.why(probe)}")
    return 0 if unexpected_total == 0 and all(alive.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
