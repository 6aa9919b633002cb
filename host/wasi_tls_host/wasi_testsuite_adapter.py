"""An adapter for the official wasi-testsuite runner (``test-runner/wasi_test_runner.py``,
Python 3.12+) that runs the suite's programs on this host's command line. ``wasi-tls-host
testsuite RUNNER_DIR SUITE...`` runs the runner with it; by hand:

    python3.12 test-runner/wasi_test_runner.py -t ../wasi-testsuite-p3 \\
        -r "$(python -c 'import wasi_tls_host.wasi_testsuite_adapter as a; print(a.__file__)')"

It follows the interface of the runner's ``adapters/wasmtime.py`` and needs only the
standard library (the runner loads it as a module, in its own interpreter). The command it
runs is ``$WASI_TLS_HOST`` (split like a shell would), else the checkout's
``.venv/bin/wasi-tls-host``, else ``wasi-tls-host`` from PATH. Options a test asks for map
to this host's flags: ``env`` to ``--env``, the test's directory to ``--dir ROOT::/``, the
``sockets`` proposal to ``--inherit-network`` (what the wasmtime adapter's
``-Sinherit-network`` grants).

This host runs components: WASI 0.3 programs (``wasm32-wasip3``) as they are, and preview1
programs (``wasm32-wasip1``, core modules) as WASI 0.2 components, made once (and cached by
content) with ``wasm-tools component new --adapt`` and the preview1 adapter module:
``$WASI_TLS_HOST_P1_ADAPTER``, else a ``wasi_snapshot_preview1.command.wasm`` in the
program's folder or a folder above it; ``wasm-tools`` is ``$WASI_TLS_HOST_WASM_TOOLS``, else
from PATH.
"""

import hashlib
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

_CHECKOUT_HOST = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "wasi-tls-host"
_DEFAULT = str(_CHECKOUT_HOST) if _CHECKOUT_HOST.exists() else "wasi-tls-host"
HOST = shlex.split(os.getenv("WASI_TLS_HOST", _DEFAULT), posix=os.name != "nt")

# Seconds the runner gives each program (its default is 5), unless $WASI_TLS_HOST_TESTSUITE_TIMEOUT
# says otherwise (``wasi-tls-host testsuite --timeout``). This host is a Python program that
# compiles each component on first use (then takes it from its cache): on a loaded 2-core
# machine a first run can take longer than 5 s before the guest even starts.
DEFAULT_TIMEOUT = 30.0
TIMEOUT_VARIABLE = "WASI_TLS_HOST_TESTSUITE_TIMEOUT"


def get_name() -> str:
    return "wasmtime" if WASMTIME_ADAPTER else "wasi-tls-host"


def get_version() -> str:
    if WASMTIME_ADAPTER:
        return str(_wasmtime_adapter().get_version())
    # "wasi-tls-host 0.1.0, wasmtime 49.0.0 (wasmtime-py), OpenSSL ..."
    result = subprocess.run(HOST + ["--version"], encoding="UTF-8", capture_output=True, check=True)
    return result.stdout.split(",")[0].split(" ")[-1]


def get_wasi_versions() -> List[str]:
    return ["wasm32-wasip1", "wasm32-wasip3"]


def get_wasi_worlds() -> List[str]:
    return ["wasi:cli/command"]


def get_timeout_seconds() -> float:
    """The same limit for either runtime, so the counts compare."""
    return float(os.getenv(TIMEOUT_VARIABLE) or DEFAULT_TIMEOUT)


def compute_argv(test_path: str,
                 args_env_root: Tuple[List[str], Dict[str, str], Optional[str]],
                 proposals: List[str],
                 wasi_world: str,
                 wasi_version: str) -> List[str]:
    args, env, root = args_env_root
    program = Path(test_path)
    if WASMTIME_ADAPTER:
        # The wasmtime CLI through the runner's own adapter, with the same preopens added.
        argv = _wasmtime_adapter().compute_argv(test_path, args_env_root, proposals, wasi_world, wasi_version)
        at = len(shlex.split(os.getenv("WASMTIME", "wasmtime"), posix=os.name != "nt"))
        return argv[:at] + legacy_dirs(program) + argv[at:]
    if wasi_version == "wasm32-wasip1":
        test_path = str(preview1_component(program))
    argv = host_argv(HOST, test_path, args, env, root, proposals)
    at = len(HOST) + 1  # after "run"
    return argv[:at] + legacy_dirs(program) + argv[at:]


def legacy_dirs(program: Path) -> List[str]:
    """``--dir`` options for the preopens a test's description names in the older format
    (``"dirs": ["fs-tests.dir"]``, each preopened under its own name, as the preview1
    programs of the suite's ``prod/testsuite-all`` expect), which runners of the newer
    format (``root``, preopened as ``/``) ignore with a warning."""
    description = program.with_suffix(".json")
    if not description.is_file():
        return []
    try:
        dirs = json.loads(description.read_text(encoding="utf-8")).get("dirs", [])
    except (OSError, ValueError, AttributeError):
        return []
    options: List[str] = []
    for name in dirs if isinstance(dirs, list) else []:
        options += ["--dir", f"{program.parent / str(name)}::{name}"]
    return options


# $WASI_TLS_HOST_TESTSUITE_WASMTIME_ADAPTER: the runner's adapters/wasmtime.py, to run the
# programs on the wasmtime CLI instead (``wasi-tls-host testsuite --wasmtime``).
WASMTIME_ADAPTER = os.getenv("WASI_TLS_HOST_TESTSUITE_WASMTIME_ADAPTER")


def _wasmtime_adapter():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("wasi_testsuite_wasmtime_adapter", WASMTIME_ADAPTER)  # type: ignore[arg-type]
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMPONENT_LAYER = b"\0asm\x0d\x00\x01\x00"  # a component's preamble (a core module's is \0asm 1 0 0 0)
P1_ADAPTER = "wasi_snapshot_preview1.command.wasm"


def _p1_adapter(program: Path) -> Path:
    given = os.getenv("WASI_TLS_HOST_P1_ADAPTER")
    if given:
        return Path(given)
    for folder in program.resolve().parents:
        if (folder / P1_ADAPTER).is_file():
            return folder / P1_ADAPTER
    raise RuntimeError(f"no preview1 adapter for {program}: set WASI_TLS_HOST_P1_ADAPTER to {P1_ADAPTER} "
                       "(from wasmtime's releases or jco)")


def preview1_component(program: Path) -> Path:
    """The preview1 core module ``program`` as a WASI 0.2 component (a component is kept)."""
    module = program.read_bytes()
    if module.startswith(COMPONENT_LAYER):
        return program
    adapter = _p1_adapter(program)
    key = hashlib.sha256(module + hashlib.sha256(adapter.read_bytes()).digest()).hexdigest()[:20]
    cache = Path(os.getenv("XDG_CACHE_HOME") or Path.home() / ".cache") / "wasi-tls-host" / "testsuite-components"
    out = cache / f"{program.stem}-{key}.wasm"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tool = os.getenv("WASI_TLS_HOST_WASM_TOOLS") or shutil.which("wasm-tools") or "wasm-tools"
        partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        subprocess.run([tool, "component", "new", str(program), "--adapt", f"wasi_snapshot_preview1={adapter}", "-o", str(partial)],
                       check=True, capture_output=True)
        os.replace(partial, out)
    return out


def host_argv(command: List[str], test_path: str, args: List[str], env: Dict[str, str],
              root: Optional[str], proposals: List[str]) -> List[str]:
    """``command run [options] test_path args...`` for a test's run operation (also used by
    ``devtools/conformance_p3.py``, which runs the suite without the official runner)."""
    argv = list(command) + ["run"]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    if root:
        argv += ["--dir", f"{root}::/"]
    if "sockets" in proposals:
        argv += ["--inherit-network"]
    return argv + [test_path, *args]
