"""An adapter for the official wasi-testsuite runner (``test-runner/wasi_test_runner.py``,
Python 3.12+) that runs the suite's programs on this host's command line:

    python3.12 test-runner/wasi_test_runner.py -t ../wasi-testsuite-p3 \\
        -r /path/to/checkout/devtools/wasi_testsuite_adapter.py

It follows the interface of the runner's ``adapters/wasmtime.py`` and needs only the
standard library (the runner loads it as a module). The command it runs is
``$WASI_TLS_HOST`` (split like a shell would), else the checkout's ``.venv/bin/wasi-tls-host``,
else ``wasi-tls-host`` from PATH. Options a test asks for map to this host's flags: ``env``
to ``--env``, the test's directory to ``--dir ROOT::/``, the ``sockets`` proposal to
``--inherit-network`` (what the wasmtime adapter's ``-Sinherit-network`` grants).

Only components are run here: WASI 0.3 programs (the suite's ``wasm32-wasip3``). The
preview1 programs are core modules; ``devtools/conformance.py`` turns them into components
first.
"""

import os
import shlex
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Tuple

_CHECKOUT_HOST = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "wasi-tls-host"
_DEFAULT = str(_CHECKOUT_HOST) if _CHECKOUT_HOST.exists() else "wasi-tls-host"
HOST = shlex.split(os.getenv("WASI_TLS_HOST", _DEFAULT), posix=os.name != "nt")

# Seconds the runner gives each program (its default is 5). This host is a Python program
# that compiles each component on first use (then takes it from its cache): on a loaded
# 2-core machine a first run can take longer than 5 s before the guest even starts.
TIMEOUT_S = 30.0


def get_name() -> str:
    return "wasi-tls-host"


def get_version() -> str:
    # "wasi-tls-host 0.1.0, wasmtime 49.0.0 (wasmtime-py), OpenSSL ..."
    result = subprocess.run(HOST + ["--version"], encoding="UTF-8", capture_output=True, check=True)
    return result.stdout.split(",")[0].split(" ")[-1]


def get_wasi_versions() -> List[str]:
    return ["wasm32-wasip3"]


def get_wasi_worlds() -> List[str]:
    return ["wasi:cli/command"]


def get_timeout_seconds() -> float:
    return TIMEOUT_S


def compute_argv(test_path: str,
                 args_env_root: Tuple[List[str], Dict[str, str], Optional[str]],
                 proposals: List[str],
                 wasi_world: str,
                 wasi_version: str) -> List[str]:
    args, env, root = args_env_root
    return host_argv(HOST, test_path, args, env, root, proposals)


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
