"""Layers point one way: runtime -> WASI and TLS -> Host -> CLI. The library must work, and
import, without the command line: no argparse, no prompts, nothing from wasi_tls_host.cli."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import wasi_tls_host

PACKAGE = Path(wasi_tls_host.__file__).resolve().parent
CLI_ONLY = {"argparse", "getpass"}


# A layer above the library too: the pytest plugin imports pytest, which imports argparse.
ABOVE_THE_LIBRARY = {PACKAGE / "interop" / "pytest_plugin.py"}


def _library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts[:1] and p not in ABOVE_THE_LIBRARY)


def _imported_names(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth (imports inside
    functions included: they are how an import cycle hides)."""
    package = ".".join(("wasi_tls_host", *path.relative_to(PACKAGE).with_suffix("").parts))
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = node.module or ""
            full = (f"{base}.{module}" if module else base) if node.level else module
            names.add(full)
            names.update(f"{full}.{alias.name}" for alias in node.names)
    return names


def test_no_library_module_imports_the_command_line() -> None:
    offenders = []
    for path in _library_modules():
        for name in _imported_names(path):
            if name.split(".")[0] in CLI_ONLY or name == "wasi_tls_host.cli" or name.startswith("wasi_tls_host.cli."):
                offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not offenders, offenders
    # The scan sees the CLI's own imports (so it is not vacuous).
    assert "argparse" in _imported_names(PACKAGE / "cli" / "command.py")
    assert "wasi_tls_host.cli.errors.UsageError" in _imported_names(PACKAGE / "cli" / "options_tls.py")


def test_every_library_module_imports_with_argparse_blocked() -> None:
    modules = [".".join(("wasi_tls_host", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__") for p in _library_modules()]
    script = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name in {sorted(CLI_ONLY)!r} or name == "wasi_tls_host.cli" or name.startswith("wasi_tls_host.cli."):
            raise ImportError("blocked: " + name)
for name in {sorted(CLI_ONLY)!r}:
    sys.modules.pop(name, None)
sys.meta_path.insert(0, Block())
for name in {modules!r}:
    importlib.import_module(name)
from wasi_tls_host import Host, NetworkPolicy, Preopen, PrivateIdentity, TlsConfig, WasiConfig
print("ok", len({modules!r}))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok ")


def test_the_embedders_names_are_at_the_package_root() -> None:
    from wasi_tls_host.tls.config import TlsConfig
    from wasi_tls_host.tls.identities import PrivateIdentity
    from wasi_tls_host.wasi.filesystem import Preopen
    from wasi_tls_host.wasi.sockets import NetworkPolicy

    assert (wasi_tls_host.TlsConfig, wasi_tls_host.PrivateIdentity, wasi_tls_host.Preopen, wasi_tls_host.NetworkPolicy) == (TlsConfig, PrivateIdentity, Preopen, NetworkPolicy)
    assert {"Host", "WasiConfig", "TlsConfig", "NetworkPolicy", "Preopen", "PrivateIdentity"} <= set(wasi_tls_host.__all__)
