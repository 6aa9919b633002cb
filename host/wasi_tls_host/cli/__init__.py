"""The command line, a layer above the library: it parses flags, calls the library's
constructors (``NetworkPolicy``, ``Preopen``, ``TlsConfig``, ``PrivateIdentity``...) and
turns their ``ValueError``s into usage errors. Nothing in the library imports from here.

``main`` is the ``wasi-tls-host`` command. It holds SIGTERM, SIGINT and SIGHUP (``startup.py``)
before the host is imported, so this package imports only the standard library until then;
the other names load on first use."""

from __future__ import annotations

import gc
import importlib
import sys
from typing import TYPE_CHECKING, Any

from .startup import end_collection_pause, hold, pause_collection

if TYPE_CHECKING:
    from .command import build_parser
    from .errors import UsageError
    from .invoke import format_value, parse_invoke

__all__ = ["UsageError", "build_parser", "format_value", "main", "parse_invoke", "process_main"]

_LAZY = {"UsageError": ".errors", "build_parser": ".command", "format_value": ".invoke", "parse_invoke": ".invoke"}


def main(argv: list[str] | None = None) -> int:
    """Run the ``wasi-tls-host`` command (``argv``: default ``sys.argv[1:]``); returns its
    exit status."""
    if (sys.argv[1:] if argv is None else list(argv)) == ["--version"]:
        # The whole command: answered without importing the host (the parser's --version
        # does the same after importing every subcommand's modules, half a second).
        from .version import version_text

        print(version_text())
        return 0
    hold()  # before the heavy imports: a signal now is remembered, not fatal
    pause_collection()  # until the guest runs (startup.py)
    try:
        from .command import main as command_main

        return command_main(argv)
    finally:
        end_collection_pause()


def process_main() -> int:
    """The ``wasi-tls-host`` executable (its console script, ``python -m wasi_tls_host.cli``):
    ``main``, and then everything that exists is frozen for the interpreter's exit. Its last
    collection would otherwise walk every object the start-up made (the host's modules, the
    guest's plan and bindings: about 70 ms, a quarter of a cached run) only to find cycles
    that end with the process anyway. Exit handlers, waits for threads and the modules'
    teardown run as usual; ``main`` itself leaves the collector as it found it, for a
    process that goes on."""
    try:
        return main()
    finally:
        gc.freeze()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
