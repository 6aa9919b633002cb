"""The ``wasi-tls-host`` command: a thin layer over ``host.Host``.

Errors an operator can fix (missing file, not a component, missing import, bad option) are
one line on stderr and exit status 2; a guest's own exit status is passed through; a trap
prints its message and exits 1 (like the wasmtime CLI, which also uses 1 for traps).

One module per subcommand (``run.py``, ``build_guest.py``, ``demo.py``, ``provenance.py``,
``cache.py``) and per option group (``options_*.py``); server operation is ``serve.py``
(signals), ``workers.py`` (``--workers``) and ``startup.py`` (signals before either is ready);
this module only builds the parser and dispatches.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Any

from ..host import GuestError, trap_cause
from ..provenance import ProvenanceError
from ..tls.names import ROTATION_LOG
from . import build_guest, cache, interop, provenance, run, startup, testsuite
from .errors import UsageError, print_error
from .version import VersionAction


# Every subcommand, in the order the parser lists them (its usage line names them all).
COMMANDS = ("run", "store", "inspect-cert", "verify-cert", "precompile", "digest", "sign", "verify",
            "demo", "build-guest", "interop", "testsuite", "cache")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter, which looks the terminal's width up when it first formats
    something rather than when it is made: argparse makes one for every ``add_argument`` (to
    check the argument's ``nargs``), and the look-up imports ``shutil`` (with ``bz2`` and
    ``lzma``), 2-3 ms of every start. The width and layout are the stock formatter's."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, width=0 if width is None else width)
        if width is None:  # taken from the stock formatter when first used (the properties below)
            self._requested = (prog, indent_increment, max_help_position)
            del self._width, self._max_help_position

    @functools.cached_property
    def _stock(self) -> argparse.HelpFormatter:
        return argparse.HelpFormatter(*self._requested)

    @functools.cached_property
    def _width(self) -> int:  # type: ignore[override]
        return self._stock._width

    @functools.cached_property
    def _max_help_position(self) -> int:  # type: ignore[override]
        return self._stock._max_help_position


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with ``HelpFormatter`` by default (its subcommands' parsers are of
    this class too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser. ``only="run"``: the other subcommands' parsers are left out
    (a third of the parser's making, every start), with the same usage line, so what ``run``
    and its errors print is the same; anything else gets the whole parser."""
    parser = ArgumentParser(prog="wasi-tls-host", description="Run WebAssembly components with WASI 0.2 and 0.3 and wasi:tls implemented in Python.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log host activity (repeat for more)")
    parser.add_argument("--version", action=VersionAction, help="print the versions of wasi-tls-host, wasmtime and OpenSSL and exit")
    if only == "run":  # argparse's own usage text, which would name only run
        sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    else:
        sub = parser.add_subparsers(dest="command", required=True)
    run_parser = run.add_parser(sub)
    provenance.add_run_arguments(run_parser)
    if only == "run":
        return parser
    provenance.add_parsers(sub)
    demo = sub.add_parser("demo", help="fetch https://localhost from a guest through this host, with a throwaway CA (no network needed)")
    demo.add_argument("which", nargs="?", choices=["https", "attest"], default="https", help="attest: a client guest pins the code of a server guest (code-bound identities)")
    demo.add_argument("--wasi", choices=["0.3", "0.2"], default="0.3", help="the WASI version of the demo's guests (default 0.3: https_get_p3 or attest_p3, written with the asyncio binding; 0.2: https_get, or tls_server and tls_client)")
    build_guest.add_parser(sub)
    interop.add_parser(sub)
    testsuite.add_parser(sub)
    cache.add_parser(sub)
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names when only ``-v`` options come before it (None when
    something else does, ``-h`` say, which needs the whole parser)."""
    for arg in argv:
        if arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            continue
        return arg if arg in COMMANDS else None
    return None


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return run.command(args)
    if args.command in provenance.COMMANDS:
        return provenance.COMMANDS[args.command](args)
    if args.command == "interop":
        return interop.command(args)
    if args.command == "testsuite":
        return testsuite.command(args)
    if args.command == "demo" and args.which == "attest":
        from .demo_attest import run_attest_demo

        return run_attest_demo(wasi=args.wasi)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(wasi=args.wasi)
    if args.command == "cache":
        return cache.command(args)
    return build_guest.command(args)


def main(argv: list[str] | None = None) -> int:
    signals = startup.hold()  # held since the entry point (cli/__init__.py) unless called directly
    try:
        arguments = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(only=chosen_command(arguments)).parse_args(arguments)
        if args.command != "run":
            startup.resume_collection()
            signals.release()  # only `run` operates a guest: the rest take signals as usual
        args.argv = arguments  # what --workers starts again
        logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)], format=f"{startup.process_name()}: %(message)s")
        rotation_log = logging.getLogger(ROTATION_LOG)  # tls.config's, without loading OpenSSL for it
        rotation_log.setLevel(min(rotation_log.getEffectiveLevel(), logging.INFO))  # say what each SIGHUP did
        status = _run(args)
    finally:
        signals.finish()
    return status


def _run(args: argparse.Namespace) -> int:
    try:
        return _dispatch(args)
    except (GuestError, UsageError, ProvenanceError) as e:
        print_error(str(e))
        return 2
    except Exception as e:
        from wasmtime import WasmtimeError

        from ..guests import BuildError

        if isinstance(e, WasmtimeError):
            print_error(f"the guest trapped: {trap_cause(str(e))}")
            return 1
        if isinstance(e, (BuildError, OSError)):
            print_error(str(e))
            return 1
        raise
    except KeyboardInterrupt:
        return 130
