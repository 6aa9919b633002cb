"""Command-line option groups contributed by interface modules (see ``cli.OPTION_GROUPS``).

Each module that needs options (filesystem preopens, network policy, TLS trust) defines
``add_arguments(parser)`` and ``apply(args, config)`` and is registered here.
"""

from __future__ import annotations

from . import cli as _cli  # noqa: E402
from .wasi import sockets as _sockets  # noqa: E402

_cli.OPTION_GROUPS.append((_sockets.add_arguments, _sockets.apply))
