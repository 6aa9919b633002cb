"""WASI implemented in Python: one module per interface family for 0.2 (each also holds the
engine both versions use), and ``p3/`` for 0.3's surfaces over the same engines."""

from __future__ import annotations

from ..runtime.binding import Interface
from . import cli, clocks, filesystem, io, p3, random, sockets


def interfaces() -> list[Interface]:
    """Every WASI interface this host implements."""
    return [
        *io.INTERFACES, *clocks.INTERFACES, *random.INTERFACES, *cli.INTERFACES,
        *filesystem.INTERFACES, *sockets.INTERFACES, *p3.interfaces(),
    ]
