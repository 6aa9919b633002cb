"""WASI 0.3.0: a thin surface per interface over the engines WASI 0.2 uses (stdio, clocks,
random sources, the filesystem engine: preopens, sandbox, permissions), with ``pumps``
moving bytes between those engines and Component Model streams. wasi:sockets@0.3.0 is the
``p3`` surface of the ``sockets`` package, beside its 0.2 one."""

from __future__ import annotations

from ...runtime.binding import Interface


def interfaces() -> list[Interface]:
    # Loaded here, not with the package: the embedder's pumps (finish_output) are needed by
    # every run, these surfaces only by a component that imports WASI 0.3.
    from . import cli, clocks, filesystem, random

    return [*cli.INTERFACES, *clocks.INTERFACES, *random.INTERFACES, *filesystem.INTERFACES]
