"""``--trust``, ``--no-system-trust``, ``--tls-min``, ``--tls-max``, ``--tls-profile``,
``--no-resumption``: the guest's ``TlsConfig``."""

from __future__ import annotations

import argparse

from ..tls.config import TlsConfig
from ..tls.profiles import DEFAULT_PROFILE, PROFILES
from ..wasi.context import WasiConfig
from .errors import UsageError

VERSIONS = ["1.2", "1.3"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS")
    group.add_argument("--trust", action="append", default=[], metavar="CA.pem", help="trust the certificates in this PEM file (repeatable; adds to the system's roots)")
    group.add_argument("--no-system-trust", action="store_true", help="trust only the --trust certificates, not the system's roots")
    group.add_argument("--tls-min", choices=VERSIONS, default="1.2", help="lowest TLS version to negotiate")
    group.add_argument("--tls-max", choices=VERSIONS, default=None, help="highest TLS version to negotiate")
    group.add_argument("--tls-profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE, help="what guests may negotiate: modern (TLS 1.3 only), intermediate (Mozilla's; the default), compat (old peers: CBC suites, more groups)")
    group.add_argument("--no-resumption", action="store_true", help="no session resumption: guest TLS servers issue no session tickets, guest TLS clients keep none (0-RTT is never used)")


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    try:
        config.tls = TlsConfig(trust=list(args.trust), use_system_roots=not args.no_system_trust, min_version=args.tls_min, max_version=args.tls_max,
                               profile=args.tls_profile, resumption=not args.no_resumption)
    except ValueError as e:
        raise UsageError(str(e)) from None
