"""``--tls-handshake-timeout``, ``--max-tls-connections``, ``--max-tls-handshakes``,
``--max-client-hello``: the guest's ``TlsLimits`` (defaults are the library's)."""

from __future__ import annotations

import argparse

from ..tls.config import TlsConfig
from ..tls.limits import TlsLimits
from ..wasi.context import WasiConfig
from .errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TlsLimits()
    group = parser.add_argument_group("TLS limits (per guest)")
    group.add_argument("--tls-handshake-timeout", type=float, metavar="SECONDS", default=defaults.handshake_timeout,
                       help=f"end handshakes not established within this time: the peer gets an alert, the guest a closed error; 0 = no deadline (default {defaults.handshake_timeout:g})")
    group.add_argument("--max-tls-connections", type=int, metavar="N", default=defaults.max_connections,
                       help=f"TLS connections a guest may have open at once (default {defaults.max_connections})")
    group.add_argument("--max-tls-handshakes", type=int, metavar="N", default=defaults.max_handshakes,
                       help=f"TLS handshakes a guest may have in progress at once (default {defaults.max_handshakes})")
    group.add_argument("--max-client-hello", type=int, metavar="BYTES", default=defaults.max_client_hello,
                       help=f"largest ClientHello a guest server accepts (default {defaults.max_client_hello})")


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    try:
        limits = TlsLimits(
            handshake_timeout=args.tls_handshake_timeout or None,
            max_connections=args.max_tls_connections,
            max_handshakes=args.max_tls_handshakes,
            max_client_hello=args.max_client_hello,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    if config.tls is None:
        config.tls = TlsConfig()
    config.tls.limits = limits
