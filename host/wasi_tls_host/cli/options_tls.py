"""``--trust``, ``--no-system-trust``, ``--tls-min``, ``--tls-max``, ``--tls-profile``,
``--no-resumption``, ``--ticket-keys``: the guest's ``TlsConfig``.

With ``--workers`` the supervisor reads the ticket key file (a broken one stops it at start),
reads it again on SIGHUP keeping the keys in use when the file is refused, and hands the keys
in use to each worker it starts (``TICKET_KEYS_ENV``), as it does identities."""

from __future__ import annotations

import argparse
from pathlib import Path

from typing import TYPE_CHECKING

from ..tls.names import DEFAULT_MIN_VERSION, DEFAULT_PROFILE, PROFILE_NAMES, VERSION_NAMES
from ..wasi.context import WasiConfig
from .errors import UsageError
from .options_identities import take_handed

if TYPE_CHECKING:
    from ..tls.ticket_keys import TicketKeys

# In a worker: the descriptor of the private in-memory file holding the ticket keys in use.
TICKET_KEYS_ENV = "WASI_TLS_HOST_TICKET_KEYS_FD"

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
    group.add_argument("--ticket-keys", metavar="FILE", default=None, help="encrypt TLS session tickets with keys from FILE shared by several hosts, so clients resume on any of them: one or more 80-byte keys (openssl rand 80); the first encrypts, all decrypt; read again on SIGHUP")


def read_ticket_keys(args: argparse.Namespace) -> TicketKeys | None:
    """The ``--ticket-keys`` file, read and checked (UsageError saying what is wrong); in a
    worker, the keys its supervisor handed down."""
    if args.ticket_keys is None:
        return None
    from ..tls.ticket_keys import TicketKeys

    try:
        handed = take_handed(TICKET_KEYS_ENV, "ticket keys")
        return TicketKeys.from_bytes(handed, Path(args.ticket_keys)) if handed is not None else TicketKeys.from_file(args.ticket_keys)
    except ValueError as e:
        raise UsageError(str(e)) from None


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    settings = dict(trust=list(args.trust), use_system_roots=not args.no_system_trust, min_version=args.tls_min, max_version=args.tls_max,
                    profile=args.tls_profile, resumption=not args.no_resumption)
    if settings == _DEFAULTS and args.ticket_keys is None:
        return  # the library's defaults (config.tls None): OpenSSL loads only if the guest uses TLS
    from ..tls.config import TlsConfig

    try:
        config.tls = TlsConfig(**settings, ticket_keys=read_ticket_keys(args))
    except ValueError as e:
        raise UsageError(str(e)) from None
