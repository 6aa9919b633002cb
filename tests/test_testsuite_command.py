"""``wasi-tls-host testsuite``: the official wasi-testsuite runner on this host, through the
adapter the package ships; a WASI 0.3 program runs as it is, a preview1 program as a WASI
0.2 component made on the way. Two programs only (the whole suites are a command to run, not
a test: the README gives their counts)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED

from wasi_tls_host.cli.testsuite import PROBE

TESTSUITES = Path(os.environ.get("WASI_TESTSUITES", SHARED / "testsuites"))
RUNNER_DIR = TESTSUITES / "wasi-testsuite-runner"


def _runner_python() -> str | None:
    for candidate in (os.environ.get("WASI_TESTSUITE_PYTHON"), "python3.13", "python3.12"):
        path = shutil.which(candidate) if candidate else None
        if path and subprocess.run([path, "-c", PROBE], capture_output=True).returncode == 0:
            return path
    return None


def run_testsuite(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", "testsuite", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_a_runner_folder_without_the_runner_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    r = run_testsuite(str(tmp_path), str(tmp_path))
    assert (r.returncode, r.stderr.strip()) == (2, f"error: no test-runner/wasi_test_runner.py in {tmp_path} (a checkout of WebAssembly/wasi-testsuite)")


def test_help_gives_the_adapters_default_time_limit() -> None:
    # The help text states the number without importing the adapter at start-up.
    from wasi_tls_host.wasi_testsuite_adapter import DEFAULT_TIMEOUT

    r = run_testsuite("--help")
    assert r.returncode == 0 and f"{DEFAULT_TIMEOUT:g} s" in " ".join(r.stdout.split()), r.stdout


def test_a_python_too_old_for_the_runner_is_named() -> None:
    if not RUNNER_DIR.is_dir():
        pytest.skip(f"no wasi-testsuite runner at {RUNNER_DIR} (set WASI_TESTSUITES)")
    r = run_testsuite(str(RUNNER_DIR), str(TESTSUITES / "wasi-testsuite-p3"), "--python", sys.executable)
    assert r.returncode == 2
    assert r.stderr.strip() in (f"error: --python {sys.executable} is older than 3.12",
                                f"error: --python {sys.executable} lacks colorama or requests (pip install colorama requests)")


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"") for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("where", ["this host", "wasmtime CLI"])
def test_the_official_runner_runs_a_wasi_03_and_a_preview1_program_here(tmp_path: Path, where: str) -> None:
    """One WASI 0.3 program and one preview1 program whose description preopens a folder in
    the older format (``"dirs": ["fs-tests.dir"]``, which the runner ignores): both pass on
    this host and (``--wasmtime``) on the wasmtime CLI, and the suite folders are left as
    they were (the runner works on a copy)."""
    python = _runner_python()
    if python is None or not RUNNER_DIR.is_dir():
        pytest.skip("needs the wasi-testsuite runner (WASI_TESTSUITES) and a Python 3.12+ with colorama and requests (WASI_TESTSUITE_PYTHON)")
    p3, p1 = tmp_path / "p3", tmp_path / "p1" / "rust"
    p3.mkdir()
    p1.mkdir(parents=True)
    for name in ("manifest.json", "cli-exit.wasm", "cli-exit.json"):
        shutil.copy(TESTSUITES / "wasi-testsuite-p3" / name, p3 / name)
    for name in ("manifest.json", "fd_readdir.wasm", "fd_readdir.json"):
        shutil.copy(TESTSUITES / "wasi-testsuite-p1" / "rust" / name, p1 / name)
    shutil.copytree(TESTSUITES / "wasi-testsuite-p1" / "rust" / "fs-tests.dir", p1 / "fs-tests.dir")
    shutil.copy(TESTSUITES / "wasi-testsuite-p1" / "wasi_snapshot_preview1.command.wasm", tmp_path / "p1")
    before = _listing(tmp_path)
    extra = ["--wasmtime"] if where == "wasmtime CLI" else []
    r = run_testsuite(str(RUNNER_DIR), str(p3), str(p1), "--python", python, "--runner-arg=--disable-colors", *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "Test cli-exit passed" in lines and "Test fd_readdir passed" in lines, r.stdout
    assert lines[-1].startswith("wasmtime " if extra else "wasi-tls-host "), r.stdout
    assert lines[-1].endswith(": PASS: 2 tests passed"), r.stdout
    assert _listing(tmp_path) == before


def test_timeout_is_the_limit_for_each_program(tmp_path: Path) -> None:
    python = _runner_python()
    if python is None or not RUNNER_DIR.is_dir():
        pytest.skip("needs the wasi-testsuite runner (WASI_TESTSUITES) and a Python 3.12+ with colorama and requests (WASI_TESTSUITE_PYTHON)")
    for name in ("manifest.json", "cli-exit.wasm", "cli-exit.json"):
        shutil.copy(TESTSUITES / "wasi-testsuite-p3" / name, tmp_path / name)
    r = run_testsuite(str(RUNNER_DIR), str(tmp_path), "--python", python, "--runner-arg=--disable-colors", "--timeout", "0.01")
    assert r.returncode != 0
    assert "timeout expired" in r.stdout, r.stdout
