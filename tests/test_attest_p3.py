"""The attestation example on WASI 0.3 (``guest_examples/attest_p3``, written with the asyncio
binding): ``open_connection(expect_peer_code=...)`` accepts a server attested for that code
and refuses any other with ``CodeMismatchError``; ``start_server(expect_peer_code=...)``
serves only clients attested for it. One componentize-py guest plays both roles, compiled
once for the module; the digest a peer is held to is this guest's or another.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest
from conftest import attestation_ca_files

from wasi_tls_host.attestation import AttestationCA
from wasi_tls_host.guests import build
from wasi_tls_host.host import AnyComponent, GuestInstance, Host, RunResult
from wasi_tls_host.provenance import digest
from wasi_tls_host.tls.config import TlsConfig
from wasi_tls_host.wasi.context import WasiConfig
from wasi_tls_host.wasi.sockets import NetworkPolicy

pytestmark = pytest.mark.timeout(300)

SERVER_NAME = "attested.test"
OTHER_CODE = "sha256:" + "00" * 32


@pytest.fixture(scope="module")
def attest_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AttestationCA]:
    ca_pem, ca_key = attestation_ca_files(tmp_path_factory.mktemp("attest-p3"))
    return ca_pem, AttestationCA.from_files(ca_pem, ca_key, names=[SERVER_NAME])


@pytest.fixture(scope="module")
def guest() -> Iterator[tuple[Host, AnyComponent, str]]:
    wasm = build("attest_p3").read_bytes()
    host = Host()
    component = host.load(wasm)  # compiled before any peer starts
    yield host, component, digest(wasm)
    host.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``attest_p3 serve`` on a thread, with its attested identity."""

    def __init__(self, host: Host, component: AnyComponent, tls: TlsConfig, count: int, *flags: str) -> None:
        self.port = free_port()
        self.out, self.err = bytearray(), bytearray()
        self.listening = threading.Event()
        config = WasiConfig(args=["attest_p3", "serve", "127.0.0.1", str(self.port), str(count), *flags],
                            stdout=self.out, stderr=self.err, tls=tls,
                            network=NetworkPolicy().allow_listen(f"127.0.0.1:{self.port}"))
        self.guest: GuestInstance = host.instantiate(component, config)
        self.result: RunResult | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        # Event-driven: the guest prints "listening" once its socket listens.
        while b"listening" not in self.out and self.thread.is_alive():
            self.thread.join(0.02)
        assert b"listening" in self.out, (self.out, self.err, self.result)

    def wait_for(self, text: bytes, timeout: float = 30.0) -> None:
        for _ in range(int(timeout / 0.02)):
            if text in self.err or not self.thread.is_alive():
                break
            self.thread.join(0.02)

    def _run(self) -> None:
        self.result = self.guest.run()

    def finish(self) -> RunResult:
        self.thread.join(60)
        if self.thread.is_alive():
            self.guest.interrupt("the test is over")
            self.thread.join(10)
        self.guest.close()
        assert self.result is not None
        return self.result


def connect(host: Host, component: AnyComponent, port: int, expect: str, tls: TlsConfig, *flags: str) -> tuple[int, dict[str, str]]:
    out = bytearray()
    config = WasiConfig(args=["attest_p3", "connect", "127.0.0.1", str(port), SERVER_NAME, expect, *flags],
                        stdout=out, stderr=out, tls=tls, network=NetworkPolicy().allow_connect(f"127.0.0.1:{port}"))
    result = host.run(component, config)
    facts = dict(line.split("=", 1) for line in out.decode(errors="replace").splitlines() if "=" in line)
    return result.exit_code, facts


def test_open_connection_expect_peer_code_accepts_the_attested_server_and_refuses_other_code(
        guest: tuple[Host, AnyComponent, str], attest_ca: tuple[Path, AttestationCA]) -> None:
    host, component, code = guest
    ca_pem, ca = attest_ca
    server = Server(host, component, TlsConfig(attest_ca=ca, use_system_roots=False), 2)
    trusting = TlsConfig(trust=[ca_pem], use_system_roots=False, attest_trust=[ca_pem])
    try:
        status, seen = connect(host, component, server.port, code, trusting)
        assert status == 0, seen
        assert seen == {"server-code": code, "verification": "ok", "reply": "HELLO, ATTESTED SERVER"}
        # Another program's digest: CodeMismatchError (code-mismatch) with the host's reason,
        # before the connection counted as established (nothing was sent or answered).
        status, seen = connect(host, component, server.port, OTHER_CODE, trusting)
        assert status == 1
        assert seen == {"verification": f"code-mismatch: the server's code identity was refused: "
                                        f"code: expected {OTHER_CODE}, the certificate names {code}"}
    finally:
        result = server.finish()
    assert result.exit_code == 0, (result, server.err)


def test_start_server_expect_peer_code_serves_only_clients_attested_for_it(
        guest: tuple[Host, AnyComponent, str], attest_ca: tuple[Path, AttestationCA]) -> None:
    host, component, code = guest
    ca_pem, ca = attest_ca
    # The client is the same program with its own attested identity, so `code` is its code too.
    client_tls = TlsConfig(attest_ca=ca, trust=[ca_pem], use_system_roots=False, attest_trust=[ca_pem])
    for expected, served in ((code, True), (OTHER_CODE, False)):
        server = Server(host, component, TlsConfig(attest_ca=ca, use_system_roots=False, client_ca_sets={"attest": [ca_pem]}),
                        1, "--expect-code", expected, "--client-ca", "attest")
        try:
            status, seen = connect(host, component, server.port, code, client_tls, "--identity", "attested")
            if not served:  # the server reports the refusal once its alert went out: wait for it
                server.wait_for(b"wasi_tls_aio: connection from")
                server.guest.interrupt("the refused client was the only one")
        finally:
            result = server.finish()
        if served:
            assert (status, seen.get("reply")) == (0, "HELLO, ATTESTED SERVER"), seen
            assert result.exit_code == 0, (result, server.err)
        else:
            assert status == 1 and "reply" not in seen, seen
            assert "CodeMismatchError: code-mismatch: the client's code identity was refused: " \
                   f"code: expected {OTHER_CODE}, the certificate names {code}" in server.err.decode(), server.err
