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

from wasi_tls_host.cli.testsuite import PROBE

SHARED = Path(__file__).resolve().parents[1].parent.parent / "shared" / "testsuites"
TESTSUITES = Path(os.environ.get("WASI_TESTSUITES", SHARED))
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


def test_a_python_too_old_for_the_runner_is_named() -> None:
    if not RUNNER_DIR.is_dir():
        pytest.skip(f"no wasi-testsuite runner at {RUNNER_DIR} (set WASI_TESTSUITES)")
    r = run_testsuite(str(RUNNER_DIR), str(TESTSUITES / "wasi-testsuite-p3"), "--python", sys.executable)
    assert r.returncode == 2
    assert r.stderr.strip() in (f"error: --python {sys.executable} is older than 3.12",
                                f"error: --python {sys.executable} lacks colorama or requests (pip install colorama requests)")


def test_the_official_runner_runs_a_wasi_03_and_a_preview1_program_here(tmp_path: Path) -> None:
    python = _runner_python()
    if python is None or not RUNNER_DIR.is_dir():
        pytest.skip("needs the wasi-testsuite runner (WASI_TESTSUITES) and a Python 3.12+ with colorama and requests (WASI_TESTSUITE_PYTHON)")
    p3, p1 = tmp_path / "p3", tmp_path / "p1" / "rust"
    p3.mkdir()
    p1.mkdir(parents=True)
    for name in ("manifest.json", "cli-exit.wasm", "cli-exit.json"):
        shutil.copy(TESTSUITES / "wasi-testsuite-p3" / name, p3 / name)
    for name in ("manifest.json", "clock_time_get.wasm"):
        shutil.copy(TESTSUITES / "wasi-testsuite-p1" / "rust" / name, p1 / name)
    shutil.copy(TESTSUITES / "wasi-testsuite-p1" / "wasi_snapshot_preview1.command.wasm", tmp_path / "p1")
    r = run_testsuite(str(RUNNER_DIR), str(p3), str(p1), "--python", python, "--runner-arg=--disable-colors")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "Test cli-exit passed" in lines and "Test clock_time_get passed" in lines, r.stdout
    assert lines[-1].endswith(": PASS: 2 tests passed"), r.stdout
