"""WASI implemented in Python: one module per interface family for 0.2 (each also holds the
engine both versions use), and ``p3/`` for 0.3's surfaces over the same engines."""

from __future__ import annotations

from ..runtime.binding import Interface
from . import cli, clocks, filesystem, io, random, sockets


def interfaces(wasi_0_3: bool = True) -> list[Interface]:
    """Every WASI interface this host implements; ``wasi_0_3=False``: without the ``p3``
    package's 0.3 surfaces, which then stay unloaded (enough for a component importing only
    0.2; wasi:sockets@0.3.0 comes with the ``sockets`` package either way)."""
    found = [*io.INTERFACES, *clocks.INTERFACES, *random.INTERFACES, *cli.INTERFACES, *filesystem.INTERFACES,
             *sockets.INTERFACES]
    if wasi_0_3:
        from . import p3

        found += p3.interfaces()
    return found
