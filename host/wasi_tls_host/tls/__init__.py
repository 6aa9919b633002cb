"""TLS for guests: OpenSSL connections on memory BIOs, driven over wasi:io streams.

Nothing here is imported until it is used (PEP 562): pyOpenSSL and cryptography cost about
150 ms of start-up, which a guest that imports no wasi:tls interface never needs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..runtime.binding import Interface
    from .config import TlsConfig
    from .identities import PrivateIdentity

_LAZY = {"TlsConfig": ".config", "PrivateIdentity": ".identities"}


def interfaces() -> list[Interface]:
    from . import client, client_p3, connection, connection_p3, identities, server, server_p3, wasi_tls, wasi_tls_p3
    from . import code_identity  # noqa: F401  (defines public-identity.code-identity on import)

    return [*wasi_tls.INTERFACES, *wasi_tls_p3.INTERFACES, *connection.INTERFACES, *identities.INTERFACES, *server.INTERFACES, *client.INTERFACES,
            *connection_p3.INTERFACES, *server_p3.INTERFACES, *client_p3.INTERFACES]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PrivateIdentity", "TlsConfig", "interfaces"]
