"""``wasi-tls-host --version``: this package, and the wasmtime and OpenSSL it runs on (what a
bug report needs)."""

from __future__ import annotations

import argparse


def version_text() -> str:
    # pyOpenSSL's SSL.OpenSSL_version(SSL.OPENSSL_VERSION) is this call on the OpenSSL binding
    # of cryptography that pyOpenSSL uses: importing pyOpenSSL's SSL module for it took ~50 ms more.
    from cryptography.hazmat.bindings.openssl.binding import Binding

    from ..guests import installed_version as _version

    openssl = Binding.ffi.string(Binding.lib.OpenSSL_version(Binding.lib.OPENSSL_VERSION)).decode()
    return f"wasi-tls-host {_version('wasi-tls-host')}, wasmtime {_version('wasmtime')} (wasmtime-py), {openssl} (pyOpenSSL {_version('pyOpenSSL')})"


class VersionAction(argparse.Action):
    """Like argparse's ``version`` action, but the text is computed only when asked for
    (importing OpenSSL costs start-up time every other command would pay)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()
