"""``wasi-tls-host build-guest [NAME...]``: build example guests and print their paths."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    build = sub.add_parser("build-guest", help="build an example guest from guest_examples/ and print its path")
    build.add_argument("names", nargs="*", help="guest names (default: all)")
    return build


def command(args: argparse.Namespace) -> int:
    from .. import guests

    for name in args.names or guests.available():
        print(guests.build(name, quiet=False))
    return 0
