"""``--dir`` and ``--dir-readonly``: host directories preopened for the guest (``Preopen``)."""

from __future__ import annotations

import argparse
import os

from ..wasi.context import WasiConfig
from ..wasi.filesystem import Preopen
from .errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", action="append", default=[], metavar="HOST_PATH[::GUEST_PATH]", help="give the guest this host directory (read-write), as GUEST_PATH (default: the same path)")
    parser.add_argument("--dir-readonly", action="append", default=[], metavar="HOST_PATH[::GUEST_PATH]", help="like --dir, but the guest cannot change anything in it")


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    for spec, read_only in [*((s, False) for s in args.dir), *((s, True) for s in args.dir_readonly)]:
        try:
            preopen = Preopen.parse(spec, read_only)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if not os.path.isdir(preopen.host_path):
            raise UsageError(f"--dir {spec}: {preopen.host_path} is not a directory")
        config.preopens.append(preopen)
