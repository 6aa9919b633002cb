"""Run the wasi-testsuite preview1 programs (or, with --p3, its WASI 0.3 programs) on this
host and on the wasmtime CLI, in one go, and print both pass lists and their difference.

    .venv/bin/python benchmarks/wasi_testsuite_compare.py [--p3] [-k SUBSTRING] [-v]

The WASI 0.3 programs run as the suite's official runner runs them (devtools/conformance_p3.py),
through this host's command line and the wasmtime CLI with -Sp3.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools/ (not installed)
from wasi_tls_host import Host  # noqa: E402
from devtools.conformance import SUITE, Outcome, discover, run_on_host, run_on_wasmtime_cli, to_component
from devtools import conformance_p3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    parser.add_argument("-v", "--verbose", action="store_true", help="print why each failing case failed")
    parser.add_argument("--p3", action="store_true", help="the WASI 0.3 programs ($WASI_TESTSUITE_P3)")
    args = parser.parse_args()
    suite = conformance_p3.SUITE_P3 if args.p3 else SUITE
    if not suite.is_dir():
        print(f"no testsuite at {suite}: set {'WASI_TESTSUITE_P3' if args.p3 else 'WASI_TESTSUITE'} to the suite's folder", file=sys.stderr)
        return 2
    runners: dict[str, Callable[[Any], Any]]
    if args.p3:
        cases: list[Any] = [c for c in conformance_p3.discover() if args.k in c.name]
        on_host, on_wasmtime = conformance_p3.on_host(), conformance_p3.on_wasmtime_cli()
        runners = {"wasi-tls-host": lambda c: conformance_p3.run_case(c, on_host),
                   "wasmtime CLI": lambda c: conformance_p3.run_case(c, on_wasmtime)}
    else:
        cases = [c for c in discover() if args.k in c.name]
        for case in cases:
            to_component(case)  # convert (or reuse) before timing either runner
        host = Host()
        runners = {"wasi-tls-host": lambda c: run_on_host(host, c), "wasmtime CLI": run_on_wasmtime_cli}
    results: dict[str, dict[str, Any]] = {"wasi-tls-host": {}, "wasmtime CLI": {}}
    for runner_name, run in runners.items():
        started = time.monotonic()
        for case in cases:
            try:
                results[runner_name][case.name] = run(case)
            except Exception as e:  # a runner crash is a failure of that case, not of the script
                results[runner_name][case.name] = Outcome(False, f"{type(e).__name__}: {e}")
        elapsed = time.monotonic() - started
        passed = sorted(n for n, o in results[runner_name].items() if o.passed)
        print(f"\n== {runner_name}: {len(passed)} of {len(cases)} pass ({elapsed:.1f} s)")
        print("  passed: " + ", ".join(passed))
        failed = sorted(n for n, o in results[runner_name].items() if not o.passed)
        print("  failed: " + (", ".join(failed) or "none"))
        if args.verbose:
            for name in failed:
                print(f"    {name}: {results[runner_name][name].detail}")
    ours = {n for n, o in results["wasi-tls-host"].items() if o.passed}
    theirs = {n for n, o in results["wasmtime CLI"].items() if o.passed}
    print("\n== difference")
    print("  pass on wasmtime CLI only: " + (", ".join(sorted(theirs - ours)) or "none"))
    print("  pass on wasi-tls-host only: " + (", ".join(sorted(ours - theirs)) or "none"))
    for name in sorted(theirs - ours):
        print(f"    {name}: {results['wasi-tls-host'][name].detail}")
    return 0 if theirs <= ours else 1


if __name__ == "__main__":
    sys.exit(main())
