"""Server operation for guests that listen, in uvicorn/gunicorn habits: ``--workers``,
``--graceful-timeout``, ``--access-log``. Signals (cli/serve.py): SIGHUP re-reads the
``--identity`` files; SIGTERM (or SIGINT) stops accepting and lets open connections finish;
a second one ends at once."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from ..wasi.context import WasiConfig
from ..wasi.sockets import IPAddress, NetworkPolicy, format_address
from .errors import UsageError
from .startup import worker_number

# Set in the environment of the processes ``--workers`` starts, besides the worker's number
# (startup.WORKER_ENV): the listening sockets the supervisor hands down (``ADDRESS=FD`` separated by
# spaces).
LISTENERS_ENV = "WASI_TLS_HOST_LISTENERS"


def format_listeners(listeners: dict[tuple[IPAddress, int], int]) -> str:
    return " ".join(f"{format_address(ip, port)}={fd}" for (ip, port), fd in listeners.items())


def parse_listeners(text: str) -> dict[tuple[IPAddress, int], int]:
    listeners: dict[tuple[IPAddress, int], int] = {}
    for item in text.split():
        address, _, fd = item.rpartition("=")
        host, _, port = address.rpartition(":")
        listeners[(ipaddress.ip_address(host.strip("[]")), int(port))] = int(fd)
    return listeners


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server operation (guests that listen)")
    group.add_argument("--workers", type=int, default=1, metavar="N", help="serve from N host processes, each with its own guest instance, accepting from one listening socket per --allow-listen HOST:PORT (opened by a supervisor; other patterns: SO_REUSEPORT); a worker that dies is restarted")
    group.add_argument("--graceful-timeout", type=float, default=30.0, metavar="SECONDS", help="on SIGTERM/SIGINT stop accepting and give open connections this long to finish (default 30); a second signal ends at once")
    group.add_argument("--access-log", action="store_true", help="log one line per connection on stderr: peer, SNI, ALPN, version, suite, client identity, handshake time, bytes each way, how it ended (also with -v)")


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    if args.workers < 1:
        raise UsageError(f"--workers wants a number of processes (1 or more), got {args.workers}")
    if args.graceful_timeout < 0:
        raise UsageError("--graceful-timeout cannot be negative")
    if args.workers > 1 or worker_number() is not None:
        # Every worker accepts from the listeners the supervisor handed down (one queue for
        # all); addresses it could not open ahead (wildcards, port ranges) are bound by each
        # worker with SO_REUSEPORT, and the kernel spreads connections among them.
        if config.network is None:
            config.network = NetworkPolicy()
        config.network.reuse_port = True
        config.whole_lines = True  # the workers share the supervisor's stdout and stderr
        try:
            config.network.listeners = parse_listeners(os.environ.get(LISTENERS_ENV, ""))
        except ValueError:
            raise UsageError(f"{LISTENERS_ENV} is not ADDRESS=FD ...: {os.environ.get(LISTENERS_ENV)!r}") from None
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
