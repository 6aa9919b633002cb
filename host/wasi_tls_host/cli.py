"""The ``wasi-tls-host`` command: a thin layer over ``host.Host``.

Errors an operator can fix (missing file, not a component, missing import, bad option) are
one line on stderr and exit status 2; a guest's own exit status is passed through; a trap
prints its message and exits 1 (like the wasmtime CLI, which also uses 1 for traps).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Iterator

from wasmtime import WasmtimeError

from .host import GuestError, Host, trap_cause
from .runtime.values import Err, Ok, Some, Variant
from .wasi.context import WasiConfig

class UsageError(Exception):
    pass


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``65536``, ``64KiB`` -> bytes (binary units)."""
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = cleaned.rstrip("kmg"), cleaned[len(cleaned.rstrip("kmg")):]
    try:
        value = int(number) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"want a size such as 512M, 2G or 1048576, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return value


def parse_duration(text: str) -> float:
    """``30``, ``30s``, ``500ms``, ``2m``, ``1h`` -> seconds."""
    cleaned = text.strip().lower()
    number = cleaned.rstrip("smh")
    try:
        value = float(number) * _TIME_UNITS[cleaned[len(number):]]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"want a duration such as 30s, 500ms or 2m, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"a duration must be positive, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"want a number >= 0, got {text!r}")
    return value


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"--env wants KEY=VALUE, got {text!r}")
    return key, value if sep else os.environ.get(key, "")


def parse_invoke(text: str) -> tuple[str, list[Any]]:
    """Parse ``name(arg, ...)``; arguments are WAVE-style literals: numbers, "strings",
    true/false, lists [..], tuples (..), none/some(x), ok(x)/err(x)."""
    # Export names are kebab-case (not Python identifiers): split them off before parsing.
    name, paren, rest = text.strip().partition("(")
    name = name.strip()
    if not name or (paren and not rest.rstrip().endswith(")")):
        raise UsageError(f"--invoke wants name(args...), got {text!r}")
    if not paren or not rest[:-1].strip():
        return name, []
    try:
        tree = ast.parse(f"({rest[:-1]},)", mode="eval").body
    except SyntaxError as e:
        raise UsageError(f"--invoke: cannot parse the arguments of {text!r}: {e.msg}") from None
    assert isinstance(tree, ast.Tuple)
    return name, [_literal(a) for a in tree.elts]


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand)
    if isinstance(node, ast.Name):
        # Bare ok/err are results without payload (as format_value writes them), not
        # variant cases: a Variant("err") would be lowered as the ok case.
        words = {"true": True, "false": False, "none": None, "ok": Ok(None), "err": Err(None)}
        if node.id in words:
            return words[node.id]
        return Variant(node.id)
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) <= 1:
        payload = _literal(node.args[0]) if node.args else None
        wrap = {"some": Some, "ok": Ok, "err": Err}.get(node.func.id)
        return wrap(payload) if wrap else Variant(node.func.id, payload)
    raise UsageError(f"--invoke: unsupported argument {ast.unparse(node)!r}")


def format_value(value: Any) -> str:
    """WAVE-like rendering of a result for people."""
    if value is None:
        return "none"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # astral characters as themselves, not surrogate pairs
    if isinstance(value, (bytes, bytearray)):
        return "[" + ", ".join(str(b) for b in value) + "]"
    if isinstance(value, (Ok, Err, Some)):
        inner = "" if value.value is None else f"({format_value(value.value)})"
        return f"{type(value).__name__.lower()}{inner}"
    if isinstance(value, Variant):
        return value.tag if value.payload is None else f"{value.tag}({format_value(value.payload)})"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k.replace('_', '-')}: {format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(value)) + "}"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wasi-tls-host", description="Run WebAssembly components with WASI 0.2 and wasi:tls implemented in Python.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log host activity (repeat for more)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a component (wasi:cli/run, or --invoke an export)")
    run.add_argument("guest", help="the component (.wasm)")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the guest")
    run.add_argument("--env", action="append", type=_env_pair, default=[], metavar="KEY=VALUE", help="set a guest environment variable (KEY alone copies the host's)")
    run.add_argument("--inherit-env", action="store_true", help="give the guest the host's whole environment")
    run.add_argument("--invoke", metavar="'name(args)'", help="call this export instead of wasi:cli/run and print its result")
    run.add_argument("--no-cache", action="store_true", help="do not read or write the compiled-component cache")
    from .options import OPTION_GROUPS

    for add_arguments, _ in OPTION_GROUPS:
        add_arguments(run)
    limits = run.add_argument_group("limits on the guest (defaults: " + _limit_defaults() + ")")
    limits.add_argument("--max-memory", type=parse_size, metavar="SIZE", help="largest size of each guest linear memory (e.g. 256M, 2G); memory.grow past it fails")
    limits.add_argument("--max-table-elements", type=_count, metavar="N", help="largest number of elements in each guest table")
    limits.add_argument("--timeout", type=parse_duration, metavar="DURATION", help="stop the guest after this much wall-clock time (e.g. 30s, 5m), whether it computes or waits")
    limits.add_argument("--max-sockets", type=_count, metavar="N", help="most sockets the guest may have open at once (new ones fail with new-socket-limit)")
    tls = run.add_argument_group("TLS policy")
    tls.add_argument("--tls-profile", choices=_tls_profiles(), default=None, help="what guests may negotiate: modern (TLS 1.3 only), intermediate (Mozilla's; the default), compat (old peers: CBC suites, more groups)")
    tls.add_argument("--no-resumption", action="store_true", help="no session tickets or resumption on guest TLS servers (0-RTT is never accepted)")

    sub.add_parser("demo", help="fetch https://localhost from a guest through this host, with a throwaway CA (no network needed)")

    build = sub.add_parser("build-guest", help="build an example guest from guest_examples/ and print its path")
    build.add_argument("names", nargs="*", help="guest names (default: all)")
    return parser


def _run(args: argparse.Namespace) -> int:
    config = WasiConfig(args=[os.path.basename(args.guest), *args.args])
    config.stdin, config.stdout, config.stderr = "inherit", "inherit", "inherit"
    if args.inherit_env:
        config.inherit_env()
    config.env.update(dict(args.env))
    from .options import OPTION_GROUPS

    for _, apply in OPTION_GROUPS:
        apply(args, config)
    _apply_policy(args, config)
    host = Host(use_cache=not args.no_cache)
    component = host.load(args.guest)
    if args.invoke:
        name, call_args = parse_invoke(args.invoke)
        config.args = [os.path.basename(args.guest)]
        with host.instantiate(component, config) as guest, _sigint_stops(guest):
            try:
                value = guest.call(name, *call_args)
            except WasmtimeError:
                if guest.guard is not None and guest.guard.reason == SIGINT_REASON:
                    raise KeyboardInterrupt from None
                raise
            print(format_value(value))
        return 0
    with host.instantiate(component, config) as guest, _sigint_stops(guest):
        result = guest.run()
    if result.trap and guest.guard is not None and guest.guard.reason == SIGINT_REASON:
        raise KeyboardInterrupt
    if result.trap:
        detail = result.trap.strip() if args.verbose else result.trap_cause
        print(f"error: the guest trapped: {detail}", file=sys.stderr)
        if not args.verbose:
            print("(run with -v to see the wasm backtrace)", file=sys.stderr)
    return result.exit_code


SIGINT_REASON = "interrupted (SIGINT)"


@contextlib.contextmanager
def _sigint_stops(guest: Any) -> Iterator[None]:
    """While the guest runs on this (main) thread, Ctrl-C stops it like an embedder's
    interrupt: at once in a wait, at the next epoch tick when computing. (A KeyboardInterrupt
    raised inside a host callback would be swallowed by ctypes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: guest.interrupt(SIGINT_REASON))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _limit_defaults() -> str:
    from .runtime.limits import GuestLimits, format_bytes

    d = GuestLimits()
    memory = format_bytes(d.max_memory) if d.max_memory else "none"
    return f"memory {memory}, table elements {d.max_table_elements}, sockets {d.max_sockets}, no timeout"


def _tls_profiles() -> list[str]:
    from .tls.profiles import PROFILES

    return sorted(PROFILES)


def _apply_policy(args: argparse.Namespace, config: WasiConfig) -> None:
    """Map the limit and TLS-policy flags onto ``WasiConfig.limits`` and ``TlsConfig``."""
    import dataclasses

    from .tls.config import TlsConfig

    changes = {name: getattr(args, name) for name in ("max_memory", "max_table_elements", "timeout", "max_sockets")
               if getattr(args, name) is not None}
    config.limits = dataclasses.replace(config.limits, **changes)
    tls = config.tls if isinstance(config.tls, TlsConfig) else TlsConfig()
    tls_changes: dict[str, Any] = {}
    if args.tls_profile is not None:
        tls_changes["profile"] = args.tls_profile
    if args.no_resumption:
        tls_changes["resumption"] = False
    if tls_changes:
        try:
            config.tls = dataclasses.replace(tls, **tls_changes)
        except ValueError as e:
            raise UsageError(str(e)) from None


def _build(args: argparse.Namespace) -> int:
    from . import guests

    for name in args.names or guests.available():
        print(guests.build(name, quiet=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)], format="wasi-tls-host: %(message)s")
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo()
        return _build(args)
    except (GuestError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .guests import BuildError
        from wasmtime import WasmtimeError

        if isinstance(e, WasmtimeError):
            print(f"error: the guest trapped: {trap_cause(str(e))}", file=sys.stderr)
            return 1
        if isinstance(e, (BuildError, OSError)):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
