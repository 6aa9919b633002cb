"""Build step the wheel needs beyond pyproject.toml: bundle the example guests' sources and
the WIT, and the components the installed package runs without build tools (the demo's
``https_get``), so that a wheel works away from a checkout.

Why a prebuilt component rather than building at first use: building a Python guest needs
componentize-py (a large download and about 10 s per guest); the component adds about 6 MB
to the wheel (19 MB uncompressed) and, compiled once by wasmtime on first use, starts in
milliseconds afterwards from the compiled-component cache.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _guests_module():  # type: ignore[no-untyped-def]
    # Load host/wasi_tls_host/guests.py by path: the package itself is not importable yet.
    spec = importlib.util.spec_from_file_location("_wasi_tls_host_guests", ROOT / "host" / "wasi_tls_host" / "guests.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithGuests(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads guest_examples/ and wit/ in the checkout
        bundle = Path(self.build_lib) / "wasi_tls_host" / "_bundled"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for folder in ("guest_examples", "wit"):
            shutil.rmtree(bundle / folder, ignore_errors=True)
            shutil.copytree(ROOT / folder, bundle / folder, ignore=ignore)
        guests = _guests_module()
        (bundle / "prebuilt").mkdir(parents=True, exist_ok=True)
        for name in guests.PREBUILT_GUESTS:
            shutil.copyfile(guests.build(name, quiet=False), bundle / "prebuilt" / f"{name}.wasm")


setup(cmdclass={"build_py": BuildPyWithGuests})
