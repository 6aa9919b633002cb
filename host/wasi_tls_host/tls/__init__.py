"""TLS for guests: OpenSSL connections on memory BIOs, driven over wasi:io streams."""

from __future__ import annotations

from ..runtime.binding import Interface
from . import client, client_p3, connection, connection_p3, identities, server, server_p3, wasi_tls, wasi_tls_p3
from . import code_identity  # noqa: F401  (defines public-identity.code-identity on import)
from .config import TlsConfig
from .identities import PrivateIdentity


def interfaces() -> list[Interface]:
    return [*wasi_tls.INTERFACES, *wasi_tls_p3.INTERFACES, *connection.INTERFACES, *identities.INTERFACES, *server.INTERFACES, *client.INTERFACES,
            *connection_p3.INTERFACES, *server_p3.INTERFACES, *client_p3.INTERFACES]


__all__ = ["PrivateIdentity", "TlsConfig", "interfaces"]
