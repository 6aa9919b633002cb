"""A wheel built from this checkout works away from it: installed (no extras) into a fresh
virtual environment, ``wasi-tls-host demo`` prints its OK line and ``--version`` names the
package, wasmtime and OpenSSL, with nothing from the checkout or the test environment.

The fresh environment gets its dependencies from the local package mirror when pip is
configured with one (``file://`` indexes), so the test runs offline; else from pip's default
index.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _local_indexes() -> list[str]:
    r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    urls = []
    for line in r.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(("index-url", "extra-index-url")):
            urls += [u for u in value.strip("'\"").split() if u.startswith("file://")]
    return urls


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "WASI_TLS_HOST_", "PIP_"))}
    env["HOME"] = str(tmp / "home")  # empty caches: the first run compiles, as a new user's does
    env.pop("XDG_CACHE_HOME", None)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    # No build isolation: the test environment already has the build requirements
    # (setuptools, componentize-py), so this needs no network.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=600)
    wheels = list(dist.glob("wasi_tls_host-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = _clean_env(tmp)
    indexes = _local_indexes()
    where = ["--index-url", indexes[0], *(a for u in indexes[1:] for a in ("--extra-index-url", u))] if indexes else []
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *where, str(wheels[0])],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    return venv, env


def _cli(installed: tuple[Path, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    venv, env = installed
    return subprocess.run([str(venv / "bin" / "wasi-tls-host"), *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=venv.parent, stdin=subprocess.DEVNULL)


def test_the_wheel_has_no_test_tools(installed: tuple[Path, dict[str, str]]) -> None:
    venv, env = installed
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u, wasi_tls_host as w; print(w.__file__); print(u.find_spec('componentize_py'), u.find_spec('devtools'))"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=venv.parent)
    location, tools = r.stdout.splitlines()
    assert location.startswith(str(venv)), location  # the installed copy, not the checkout
    assert tools == "None None"


def test_version_names_package_wasmtime_and_openssl(installed: tuple[Path, dict[str, str]]) -> None:
    r = _cli(installed, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("wasi-tls-host 0."), r.stdout
    assert re.search(r"wasmtime (49|50)\.", r.stdout) and "OpenSSL" in r.stdout, r.stdout


def test_demo_runs_from_the_wheel(installed: tuple[Path, dict[str, str]]) -> None:
    r = _cli(installed, "demo")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "result: OK" in r.stdout
    assert "building guest" not in r.stderr  # the wheel's prebuilt component, no build tools


def test_build_guest_from_the_wheel(installed: tuple[Path, dict[str, str]]) -> None:
    wat = _cli(installed, "build-guest", "exit_code")  # assembled by wasmtime: no wasm-tools here
    assert wat.returncode == 0, wat.stderr
    assert Path(wat.stdout.strip()).read_bytes()[:4] == b"\0asm"
    bundled = _cli(installed, "build-guest", "https_get")
    assert bundled.returncode == 0 and Path(bundled.stdout.strip()).exists()
    python_guest = _cli(installed, "build-guest", "hello")
    assert python_guest.returncode == 1
    assert python_guest.stderr.strip().splitlines() == ["error: componentize-py is not installed: pip install 'componentize-py==0.25.1'"]


@pytest.mark.skipif(shutil.which("go") is None, reason="go is not installed (Debian: golang-go)")
def test_the_installed_package_builds_the_go_peer(installed: tuple[Path, dict[str, str]]) -> None:
    """The interop command's Go peer ships as source in the wheel and builds with the go command."""
    venv, env = installed
    # Go's build cache of this session (keyed by the sources' content, so the wheel's copy is
    # still what gets built and linked): the standard library's crypto/tls is not compiled
    # again for a test about what the wheel ships (about 20 s of CPU on a cold cache).
    go_cache = subprocess.run(["go", "env", "GOCACHE"], capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    script = ("import sys; from pathlib import Path; from wasi_tls_host.interop.peers.gotls import build_gotls; "
              "print(build_gotls(Path(sys.argv[1])))")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", script, str(venv.parent / "peers")], capture_output=True, text=True,
                       timeout=600, env={**env, "GOCACHE": go_cache}, cwd=venv.parent)
    assert r.returncode == 0, r.stderr
    binary = Path(r.stdout.strip())
    assert binary.parent == venv.parent / "peers"
    usage = subprocess.run([str(binary), "-mode", "neither"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "-mode must be server or client" in usage.stderr
