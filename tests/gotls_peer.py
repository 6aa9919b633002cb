"""The Go TLS peer for the tests: the package's own (``wasi_tls_host/interop/peers/gotls``,
Go's ``crypto/tls``, built once per source and Go version into the user's cache), as the
``gotls`` fixture (conftest.py) uses it. Flags and JSON lines: the top of its ``main.go``.
"""

from __future__ import annotations

from pathlib import Path

from wasi_tls_host.interop.peers.gotls import GoTlsClientRun, GoTlsServer, GoUnavailable, build_gotls, run_gotls_client

__all__ = ["GoTls", "GoTlsClientRun", "GoTlsServer", "GoUnavailable", "build_gotls", "run_gotls_client"]


class GoTls:
    """What the ``gotls`` fixture gives a test: servers stopped when the test ends, clients."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self._servers: list[GoTlsServer] = []

    def server(self, *args: str) -> GoTlsServer:
        server = GoTlsServer(self.binary, *args)
        self._servers.append(server)
        return server

    def client(self, *args: str, timeout: float = 30.0) -> GoTlsClientRun:
        return run_gotls_client(self.binary, *args, timeout=timeout)

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
