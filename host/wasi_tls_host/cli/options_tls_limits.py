"""``--tls-handshake-timeout``, ``--max-tls-connections``, ``--max-tls-handshakes``,
``--max-client-hello``: the guest's ``TlsLimits`` (defaults are the library's)."""

from __future__ import annotations

import argparse

from ..tls.names import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HANDSHAKES, DEFAULT_MAX_HELLO_SIZE
from ..wasi.context import WasiConfig
from .errors import UsageError
from .options_limits import limit_value, or_unlimited, parse_duration, parse_size, whole_number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS limits (per guest; 'none' lifts a limit)")
    group.add_argument("--tls-handshake-timeout", type=or_unlimited(_timeout), metavar="DURATION",
                       help=f"end handshakes not established within this time (e.g. 10s): the peer gets an alert, the guest a closed error; 0 or none = no deadline (default {DEFAULT_HANDSHAKE_TIMEOUT:g}s)")
    group.add_argument("--max-tls-connections", type=or_unlimited(whole_number(1)), metavar="N",
                       help=f"TLS connections a guest may have open at once (default {DEFAULT_MAX_CONNECTIONS})")
    group.add_argument("--max-tls-handshakes", type=or_unlimited(whole_number(1)), metavar="N",
                       help=f"TLS handshakes a guest may have in progress at once (default {DEFAULT_MAX_HANDSHAKES})")
    group.add_argument("--max-client-hello", type=or_unlimited(parse_size), metavar="BYTES",
                       help=f"largest first flight (the records carrying a ClientHello) a guest server reads, e.g. 64K; "
                            f"none = only OpenSSL's own limit (default {DEFAULT_MAX_HELLO_SIZE})")


def _timeout(text: str) -> float:
    """``0`` keeps its old meaning: no deadline."""
    return 0.0 if text.strip() in ("0", "0.0") else parse_duration(text)


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    given = {
        "handshake_timeout": args.tls_handshake_timeout,
        "max_connections": args.max_tls_connections,
        "max_handshakes": args.max_tls_handshakes,
        "max_client_hello": args.max_client_hello,
    }
    changes = {name: limit_value(value) for name, value in given.items() if value is not None}
    if not changes:
        return  # the library's defaults (see options_tls: OpenSSL loads only if the guest uses TLS)
    if changes.get("handshake_timeout") == 0.0:
        changes["handshake_timeout"] = None
    import dataclasses  # TlsLimits is one (and loads dataclasses anyway)

    from ..tls.limits import TlsLimits  # only when a limit is given (the TLS modules load on use)

    try:
        limits = dataclasses.replace(TlsLimits(), **changes)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if config.tls is None:
        from ..tls.config import TlsConfig

        config.tls = TlsConfig()
    config.tls.limits = limits
