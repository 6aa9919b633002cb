"""WASI 0.2 implemented in Python: one module per interface family."""

from __future__ import annotations

from pathlib import Path

from ..runtime.binding import Interface
from ..runtime.stubs import stub_interfaces
from . import cli, clocks, io, random
from . import sockets
from . import filesystem

_WIT = Path(__file__).resolve().parents[3] / "wit" / "deps"
# Placeholders until wasi:filesystem and wasi:sockets land: every call traps, naming itself.
_PENDING = [
    *filesystem.INTERFACES,  # real implementation (wasi/filesystem.py)
    *sockets.INTERFACES,  # real implementation (wasi/sockets.py)
]


def interfaces() -> list[Interface]:
    """Every WASI interface this host implements."""
    return [*io.INTERFACES, *clocks.INTERFACES, *random.INTERFACES, *cli.INTERFACES, *_PENDING]
