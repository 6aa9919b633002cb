"""The upstream wasi:tls client driven by a WAT guest (no language runtime): the host's own
handshake path, and the guest the TLS client benchmark uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import open_fds, without_gc
from tls_peers import PeerServer, Pki, handshake_only
from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.wasi.sockets import NetworkPolicy


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(Path(tmp_path_factory.mktemp("pki")))


def _config(pki: Pki, trusted: bool) -> WasiConfig:
    anchors = [pki.ca.cert_pem.bytes()] if trusted else []
    return WasiConfig(network=NetworkPolicy().allow_connect("127.0.0.1:*"),
                      tls=TlsConfig(trust=anchors, use_system_roots=False))


def test_repeated_handshakes_succeed_and_leave_no_descriptors(host: Host, guest_path, pki: Pki) -> None:
    server = PeerServer(handshake_only, pki.leaf("localhost").server_context())
    try:
        with host.instantiate(guest_path("tls_handshake"), _config(pki, trusted=True)) as guest:
            assert guest.call("handshake", server.port) == 0  # warm up
            assert guest.call("handshake", server.port) == 6  # one connection at a time
            guest.call("close")
            with without_gc():  # each socket must close when dropped, not at a GC pass
                server.wait_idle()  # the peer thread closes its end after the guest returns
                before = open_fds()
                for _ in range(20):
                    assert guest.call("handshake", server.port) == 0
                    guest.call("close")
                server.wait_idle()
                # A leak would add at least one socket per handshake.
                assert open_fds() <= before
    finally:
        server.stop()
    assert server.errors == []


def test_untrusted_server_fails_at_the_handshake_step(host: Host, guest_path, pki: Pki) -> None:
    server = PeerServer(handshake_only, pki.leaf("localhost").server_context())
    try:
        with host.instantiate(guest_path("tls_handshake"), _config(pki, trusted=False)) as guest:
            assert guest.call("handshake", server.port) == 5  # the handshake's io-error
    finally:
        server.stop()


def test_refused_connect_fails_at_the_connect_step(host: Host, guest_path, pki: Pki) -> None:
    from conftest import free_port

    with host.instantiate(guest_path("tls_handshake"), _config(pki, trusted=True)) as guest:
        assert guest.call("handshake", free_port()) == 3  # finish-connect: connection-refused
