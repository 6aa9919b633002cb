"""``--trust``, ``--no-system-trust``, ``--tls-min``, ``--tls-max``, ``--tls-profile``,
``--no-resumption``: the guest's ``TlsConfig``."""

from __future__ import annotations

import argparse

from ..tls.names import DEFAULT_MIN_VERSION, DEFAULT_PROFILE, PROFILE_NAMES, VERSION_NAMES
from ..wasi.context import WasiConfig
from .errors import UsageError

VERSIONS = list(VERSION_NAMES)


# What the flags give when none is used: TlsConfig's own defaults.
_DEFAULTS = dict(trust=[], use_system_roots=True, min_version=DEFAULT_MIN_VERSION, max_version=None, profile=DEFAULT_PROFILE, resumption=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS")
    group.add_argument("--trust", action="append", default=[], metavar="CA.pem", help="trust the certificates in this PEM file (repeatable; adds to the system's roots)")
    group.add_argument("--no-system-trust", action="store_true", help="trust only the --trust certificates, not the system's roots")
    group.add_argument("--tls-min", choices=VERSIONS, default=DEFAULT_MIN_VERSION, help="lowest TLS version to negotiate")
    group.add_argument("--tls-max", choices=VERSIONS, default=None, help="highest TLS version to negotiate")
    group.add_argument("--tls-profile", choices=sorted(PROFILE_NAMES), default=DEFAULT_PROFILE, help="what guests may negotiate: modern (TLS 1.3 only), intermediate (Mozilla's; the default), compat (old peers: CBC suites, more groups)")
    group.add_argument("--no-resumption", action="store_true", help="no session resumption: guest TLS servers issue no session tickets, guest TLS clients keep none (0-RTT is never used)")


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    settings = dict(trust=list(args.trust), use_system_roots=not args.no_system_trust, min_version=args.tls_min, max_version=args.tls_max,
                    profile=args.tls_profile, resumption=not args.no_resumption)
    if settings == _DEFAULTS:
        return  # the library's defaults (config.tls None): OpenSSL loads only if the guest uses TLS
    from ..tls.config import TlsConfig

    try:
        config.tls = TlsConfig(**settings)
    except ValueError as e:
        raise UsageError(str(e)) from None
