"""The ``wasi-tls-host`` command: a thin layer over ``host.Host``.

Errors an operator can fix (missing file, not a component, missing import, bad option) are
one line on stderr and exit status 2; a guest's own exit status is passed through; a trap
prints its message and exits 1 (like the wasmtime CLI, which also uses 1 for traps).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
from typing import Any

from .host import DEFAULT_RUNTIME, RUNTIMES, GuestError, Host, trap_cause
from .runtime.values import Err, Ok, Some, Variant
from .wasi.context import WasiConfig

class UsageError(Exception):
    pass


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
        words = {"true": True, "false": False, "none": None}
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
        return json.dumps(value)
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
    run.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME, help="core: this host's own Canonical ABI on wasmtime's core API (fast); component: wasmtime's component API")
    from .options import OPTION_GROUPS

    for add_arguments, _ in OPTION_GROUPS:
        add_arguments(run)

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
    host = Host(use_cache=not args.no_cache, runtime=args.runtime)
    component = host.load(args.guest)
    if args.invoke:
        name, call_args = parse_invoke(args.invoke)
        config.args = [os.path.basename(args.guest)]
        with host.instantiate(component, config) as guest:
            print(format_value(guest.call(name, *call_args)))
        return 0
    result = host.run(component, config)
    if result.trap:
        detail = result.trap.strip() if args.verbose else result.trap_cause
        print(f"error: the guest trapped: {detail}", file=sys.stderr)
        if not args.verbose:
            print("(run with -v to see the wasm backtrace)", file=sys.stderr)
    return result.exit_code


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
