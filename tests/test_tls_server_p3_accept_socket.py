"""``accept-socket``'s own error path (wit/deps/tls-host-0.2.0/server.wit): a guest that hands
it a socket it may not take (its ``receive`` or ``send`` called already, never connected, a
listener) gets ``invalid-state`` and keeps the socket as it was; nothing leaks and the host
goes on serving. The guest is ``tests/guests/accept_socket_misuse_p3`` (componentize-py)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from conftest import free_port, open_fds, without_gc
from tls_server_util import TIMEOUT, GuestServer, ServerPki, p3_server_fixtures, ssl_client_context
from wasi_tls_host import Host, WasiConfig, guests

pytestmark = pytest.mark.timeout(300)

GUEST = Path(__file__).parent / "guests" / "accept_socket_misuse_p3"


pki, p3_host = p3_server_fixtures("accept-socket")


def test_a_socket_accept_socket_may_not_take_is_invalid_state_and_nothing_leaks(p3_host: Host, pki: ServerPki) -> None:
    component = p3_host.load(guests.build_path(GUEST))
    # wasmtime maps a freshly compiled module's memory image at its first instance, and keeps it
    # with the module: counted from after that one.
    p3_host.instantiate(component, WasiConfig()).close()
    with without_gc():
        before = open_fds()
        server = GuestServer(p3_host, component, free_port(), tls=pki.server_config(client_ca=False))
        try:
            # The first two connections are misused: the guest drops them, the client sees the end.
            for name in ("receive-taken", "send-taken"):
                with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as client:
                    server.wait_for(name)
                    assert client.recv(1) == b"", f"{name}: the guest dropped its socket, the client sees the end"
            # The third is given over properly and refused with unrecognized_name: the host serves on.
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
                with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
                    ssl_client_context(pki).wrap_socket(raw, server_hostname="a.test")
            result = server.stop()
        finally:
            server.stop()
        lines = {line.split(" ", 1)[0]: line for line in server.lines}
        for name, why in (("receive-taken", "receive or send was called already"), ("send-taken", "receive or send was called already"),
                          ("unconnected", "not a connected one"), ("listening", "not a connected one")):
            assert lines[name].startswith(f"{name} error invalid-state: "), server.out
            assert why in lines[name]
        assert lines["served"] == "served ok", server.out
        assert result is not None and result.exit_code == 0, server.out
        del server, result
        assert open_fds() == before
