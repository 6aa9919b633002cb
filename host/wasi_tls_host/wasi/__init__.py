"""WASI 0.2 implemented in Python: one module per interface family."""

from __future__ import annotations

from ..runtime.binding import Interface
from . import cli, clocks, filesystem, io, random, sockets


def interfaces() -> list[Interface]:
    """Every WASI interface this host implements."""
    return [
        *io.INTERFACES, *clocks.INTERFACES, *random.INTERFACES, *cli.INTERFACES,
        *filesystem.INTERFACES, *sockets.INTERFACES,
    ]
