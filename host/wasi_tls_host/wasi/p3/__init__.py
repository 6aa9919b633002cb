"""WASI 0.3.0: a thin surface per interface over the engines WASI 0.2 uses (the filesystem
engine: preopens, sandbox, permissions)."""

from __future__ import annotations

from ...runtime.binding import Interface
from . import filesystem


def interfaces() -> list[Interface]:
    return [*filesystem.INTERFACES]
