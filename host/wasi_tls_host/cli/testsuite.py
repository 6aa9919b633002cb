"""``wasi-tls-host testsuite RUNNER_DIR SUITE...``: the official wasi-testsuite runner
(``RUNNER_DIR/test-runner/wasi_test_runner.py``, a checkout of WebAssembly/wasi-testsuite)
run on this host through the adapter this package ships (``wasi_testsuite_adapter.py``).

The runner needs Python 3.12 or newer with its requirements (``colorama``, ``requests``);
this host's own interpreter may be older, so the runner gets one of its own (``--python``,
else ``python3.13``/``python3.12``/``python3`` from PATH, the first that is new enough)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import UsageError

RUNNER = Path("test-runner") / "wasi_test_runner.py"
CANDIDATES = ("python3.13", "python3.12", "python3")
PROBE = "import sys, colorama, requests; sys.exit(0 if sys.version_info >= (3, 12) else 3)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser("testsuite", help="run the official wasi-testsuite runner on this host",
                       description="Run the official wasi-testsuite runner (RUNNER_DIR/test-runner/wasi_test_runner.py) with this host's "
                                   "adapter on the suite folders given: WASI 0.3 programs run as they are, preview1 programs as WASI "
                                   "0.2 components. Exit status: the runner's.")
    p.add_argument("runner_dir", metavar="RUNNER_DIR", help="a checkout of WebAssembly/wasi-testsuite (holding test-runner/)")
    p.add_argument("suites", nargs="+", metavar="SUITE", help="test suite folders (e.g. tests/rust/testsuite/wasm32-wasip3)")
    p.add_argument("--python", metavar="PATH", help="a Python 3.12+ with colorama and requests for the runner (default: found on PATH)")
    p.add_argument("--runner-arg", action="append", default=[], metavar="ARG", help="passed on to the runner (repeatable), e.g. --runner-arg=--json-output-location=out.json")
    return p


def _python(given: str | None) -> str:
    """An interpreter that can run the runner, or a one-line error saying how to get one."""
    import shutil  # here: the other commands do not pay for them at start-up
    import subprocess

    for candidate in [given] if given else CANDIDATES:
        path = shutil.which(candidate) if candidate else None
        if path is None:
            continue
        probe = subprocess.run([path, "-c", PROBE], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if probe.returncode == 0:
            return path
        if given:
            why = "is older than 3.12" if probe.returncode == 3 else "lacks colorama or requests (pip install colorama requests)"
            raise UsageError(f"--python {given} {why}")
    raise UsageError("the wasi-testsuite runner needs Python 3.12+ with colorama and requests: none found on PATH "
                     "(make one with `python3.12 -m venv V && V/bin/pip install colorama requests`, then --python V/bin/python)")


def command(args: argparse.Namespace) -> int:
    import shlex
    import shutil
    import subprocess

    from .. import wasi_testsuite_adapter

    runner = Path(args.runner_dir) / RUNNER
    if not runner.is_file():
        raise UsageError(f"no {RUNNER} in {args.runner_dir} (a checkout of WebAssembly/wasi-testsuite)")
    for suite in args.suites:
        if not Path(suite).is_dir():
            raise UsageError(f"no test suite folder at {suite}")
    python = _python(args.python)
    env = dict(os.environ)
    env["WASI_TLS_HOST"] = shlex.join([sys.executable, "-m", "wasi_tls_host.cli"])  # this installation
    wasm_tools = shutil.which("wasm-tools", path=str(Path(sys.executable).parent)) or shutil.which("wasm-tools")
    if wasm_tools:
        env.setdefault("WASI_TLS_HOST_WASM_TOOLS", wasm_tools)
    cmd = [python, str(runner), "-t", *args.suites, "-r", wasi_testsuite_adapter.__file__, *args.runner_arg]
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode
