"""Command-line option groups contributed by interface modules (see ``cli.OPTION_GROUPS``).

Each module that needs options (filesystem preopens, network policy, TLS trust) defines
``add_arguments(parser)`` and ``apply(args, config)`` and is registered here.
"""

from __future__ import annotations

from . import cli as _cli
from .wasi import filesystem as _filesystem

_cli.OPTION_GROUPS.append((_filesystem.add_arguments, _filesystem.apply))

from .wasi import sockets as _sockets  # noqa: E402

_cli.OPTION_GROUPS.append((_sockets.add_arguments, _sockets.apply))

from .tls import config as _tls_config  # noqa: E402

_cli.OPTION_GROUPS.append((_tls_config.add_arguments, _tls_config.apply))
