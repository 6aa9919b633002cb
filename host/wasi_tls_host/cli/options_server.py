"""Server operation for guests that listen, in uvicorn/gunicorn habits: ``--workers``,
``--graceful-timeout``, ``--access-log``. Signals (cli/serve.py): SIGHUP re-reads the
``--identity`` files; SIGTERM (or SIGINT) stops accepting and lets open connections finish;
a second one ends at once."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..wasi.context import WasiConfig
from ..wasi.sockets import NetworkPolicy
from .errors import UsageError

# Set in the environment of the processes ``--workers`` starts (the worker's number).
WORKER_ENV = "WASI_TLS_HOST_WORKER"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server operation (guests that listen)")
    group.add_argument("--workers", type=int, default=1, metavar="N", help="serve from N host processes, each with its own guest instance, sharing the listening address (SO_REUSEPORT); a worker that dies is restarted")
    group.add_argument("--graceful-timeout", type=float, default=30.0, metavar="SECONDS", help="on SIGTERM/SIGINT stop accepting and give open connections this long to finish (default 30); a second signal ends at once")
    group.add_argument("--access-log", action="store_true", help="log one line per connection on stderr: peer, SNI, ALPN, version, suite, client identity, handshake time, bytes each way, how it ended (also with -v)")


def worker_number() -> int | None:
    value = os.environ.get(WORKER_ENV)
    return int(value) if value and value.isdigit() else None


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    if args.workers < 1:
        raise UsageError(f"--workers wants a number of processes (1 or more), got {args.workers}")
    if args.graceful_timeout < 0:
        raise UsageError("--graceful-timeout cannot be negative")
    if args.workers > 1 or worker_number() is not None:
        # Every worker binds the same address: the kernel spreads connections among them.
        if config.network is None:
            config.network = NetworkPolicy()
        config.network.reuse_port = True
    if args.access_log or args.verbose:
        access = logging.getLogger("wasi_tls_host.access")
        access.setLevel(logging.INFO)
        if not access.handlers:
            handler = logging.StreamHandler(sys.stderr)
            number = worker_number()
            prefix = f"[worker {number} pid {os.getpid()}] " if number is not None else ""
            handler.setFormatter(logging.Formatter(f"{prefix}access %(message)s"))
            access.addHandler(handler)
            access.propagate = False
