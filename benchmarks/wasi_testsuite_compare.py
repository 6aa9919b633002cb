"""Run the wasi-testsuite preview1 programs on this host and on the wasmtime CLI, in one go,
and print both pass lists and their difference.

    /work/venv/bin/python benchmarks/wasi_testsuite_compare.py [-k SUBSTRING] [-v]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools/ (not installed)
from wasi_tls_host import Host  # noqa: E402
from devtools.conformance import SUITE, Outcome, discover, run_on_host, run_on_wasmtime_cli, to_component


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    parser.add_argument("-v", "--verbose", action="store_true", help="print why each failing case failed")
    args = parser.parse_args()
    if not SUITE.is_dir():
        print(f"no testsuite at {SUITE}: set WASI_TESTSUITE to the suite's folder", file=sys.stderr)
        return 2
    cases = [c for c in discover() if args.k in c.name]
    for case in cases:
        to_component(case)  # convert (or reuse) before timing either runner
    host = Host()
    results: dict[str, dict[str, Outcome]] = {"wasi-tls-host": {}, "wasmtime CLI": {}}
    runners = {"wasi-tls-host": lambda c: run_on_host(host, c), "wasmtime CLI": run_on_wasmtime_cli}
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
