"""``wasi-tls-host build-guest [NAME | PATH ...] [--world WORLD]``: build example guests, or
a guest author's own Python file or folder, and print the components' paths."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    build = sub.add_parser("build-guest", help="build an example guest from guest_examples/, or your own guest (FILE.py or a "
                                               "folder with app.py), and print its path")
    build.add_argument("names", nargs="*", metavar="NAME|PATH",
                       help="example guest names (default: all), or paths of your own guests (a .py file or a folder)")
    build.add_argument("--world", help="the WIT world of your own guest (e.g. tls-host-p3 for wasi_tls_aio on WASI 0.3; "
                                       "default: its folder's guest.json, else command)")
    return build


def _is_path(name: str) -> bool:
    return name.endswith(".py") or "/" in name or name in (".", "..")


def command(args: argparse.Namespace) -> int:
    from .. import guests

    for name in args.names or guests.available():
        if _is_path(name):
            print(guests.build_path(Path(name), world=args.world, quiet=False))
        else:
            print(guests.build(name, quiet=False))
    return 0
