"""WASI 0.3.0: a thin surface per interface over the engines WASI 0.2 uses (stdio, clocks,
random sources, the filesystem engine: preopens, sandbox, permissions), with ``pumps``
moving bytes between those engines and Component Model streams. wasi:sockets@0.3.0 is the
``p3`` surface of the ``sockets`` package, beside its 0.2 one."""

from __future__ import annotations

from ...runtime.binding import Interface
from . import cli, clocks, filesystem, random


def interfaces() -> list[Interface]:
    return [*cli.INTERFACES, *clocks.INTERFACES, *random.INTERFACES, *filesystem.INTERFACES]
