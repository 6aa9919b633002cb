"""The old name of ``wasi_tls_aio``'s blocking API for WASI 0.2 guests (kept so existing
guests build unchanged): ``from wasi_tls_client import connect`` is ``from wasi_tls_aio
import connect``."""

from wasi_tls_aio import TlsConnection, TlsError, connect, handshake, resolve, tcp_connect

__all__ = ["connect", "TlsConnection", "TlsError", "handshake", "tcp_connect", "resolve"]
