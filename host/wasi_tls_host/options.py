"""Command-line option groups contributed by interface modules.

Each module that needs options (filesystem preopens, network policy, TLS trust and
identities) defines ``add_arguments(parser)`` and ``apply(args, config)``; the CLI walks this
list, so it stays a thin dispatcher.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from .tls import config as _tls_config
from .tls import identities as _tls_identities
from .wasi import filesystem as _filesystem
from .wasi import sockets as _sockets

OptionGroup = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, Any], None]]

OPTION_GROUPS: list[OptionGroup] = [
    (_filesystem.add_arguments, _filesystem.apply),
    (_sockets.add_arguments, _sockets.apply),
    (_tls_config.add_arguments, _tls_config.apply),
    (_tls_identities.add_arguments, _tls_identities.apply),
]
