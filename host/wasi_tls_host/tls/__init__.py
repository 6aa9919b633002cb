"""TLS for guests: OpenSSL connections on memory BIOs, driven over wasi:io streams."""

from __future__ import annotations

from ..runtime.binding import Interface
from . import client
from .config import TlsConfig


def interfaces() -> list[Interface]:
    return [*client.INTERFACES]


__all__ = ["TlsConfig", "interfaces"]
