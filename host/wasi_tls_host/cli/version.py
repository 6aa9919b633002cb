"""``wasi-tls-host --version``: this package, and the wasmtime and OpenSSL it runs on (what a
bug report needs)."""

from __future__ import annotations

import argparse
import os
import re
import sys

_DIST_INFO = ".dist-info"


def installed_version(distribution: str) -> str:
    """The version of ``distribution`` that ``importlib.metadata.version`` gives, or "unknown":
    read from the name of its one ``NAME-VERSION.dist-info`` folder in the first ``sys.path``
    entry holding it (how wheels and editable installs record it), else asked of
    importlib.metadata itself (an ``.egg-info``, two copies...), whose imports took ~40 ms of
    ``--version``."""
    wanted = _normalized(distribution)
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        dist_infos = [n for n in names if n.endswith(_DIST_INFO) and _normalized(n[:-len(_DIST_INFO)].rpartition("-")[0]) == wanted]
        egg_infos = [n for n in names if n.endswith(".egg-info") and _normalized(n.split("-")[0].removesuffix(".egg-info")) == wanted]
        if len(dist_infos) == 1 and not egg_infos:
            return dist_infos[0][:-len(_DIST_INFO)].rpartition("-")[2]
        if dist_infos or egg_infos:
            break
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()  # as a wheel's file names spell a project's name


def version_text() -> str:
    # pyOpenSSL's SSL.OpenSSL_version(SSL.OPENSSL_VERSION) is this call on the OpenSSL binding
    # of cryptography that pyOpenSSL uses: importing pyOpenSSL's SSL module for it took ~50 ms more.
    from cryptography.hazmat.bindings.openssl.binding import Binding

    openssl = Binding.ffi.string(Binding.lib.OpenSSL_version(Binding.lib.OPENSSL_VERSION)).decode()
    return (f"wasi-tls-host {installed_version('wasi-tls-host')}, wasmtime {installed_version('wasmtime')} (wasmtime-py), "
            f"{openssl} (pyOpenSSL {installed_version('pyOpenSSL')})")


class VersionAction(argparse.Action):
    """Like argparse's ``version`` action, but the text is computed only when asked for
    (importing OpenSSL costs start-up time every other command would pay)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()
