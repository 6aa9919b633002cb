"""WASI 0.3.0: a thin surface per interface over the engines WASI 0.2 uses (stdio, clocks,
random sources), with ``pumps`` moving bytes between those engines and Component Model
streams."""

from __future__ import annotations

from ...runtime.binding import Interface
from . import cli, clocks, random


def interfaces() -> list[Interface]:
    return [*cli.INTERFACES, *clocks.INTERFACES, *random.INTERFACES]
