"""``--allow-connect``, ``--allow-listen``, ``--allow-dns``, ``--inherit-network``: the guest's
``NetworkPolicy`` (everything denied unless granted)."""

from __future__ import annotations

import argparse

from ..wasi.context import WasiConfig
from ..wasi.sockets import AddressPattern, NetworkPolicy
from .errors import argument_type

_pattern = argument_type(AddressPattern.parse, "network policy: ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("network (everything is denied unless granted)")
    group.add_argument("--allow-connect", action="append", default=[], type=_pattern, metavar="HOST:PORT", help="allow TCP connects and UDP sends to matching addresses (e.g. 127.0.0.1:*, [::1]:443, 10.0.0.0/8:1000-2000)")
    group.add_argument("--allow-listen", action="append", default=[], type=_pattern, metavar="HOST:PORT", help="allow binding (and listening) on matching local addresses (e.g. 127.0.0.1:8443)")
    group.add_argument("--allow-dns", action="store_true", help="allow host name lookups")
    group.add_argument("--inherit-network", action="store_true", help="allow all network access the host itself has")


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    if args.inherit_network:
        config.network = NetworkPolicy.inherit()
    elif args.allow_connect or args.allow_listen or args.allow_dns:
        config.network = NetworkPolicy(list(args.allow_connect), list(args.allow_listen), args.allow_dns)
