"""``wasi-tls-host demo attest``: a client guest that pins the code of the server it talks to.

1. A throwaway attestation CA is preopened for a server guest (``tls_server``): the host
   makes the instance a fresh key and a certificate carrying the component's digest and its
   grants (Open DICE extension).
2. A client guest (``tls_client``) connects with ``expect-peer-code(<server digest>)``: the
   host checks the server's certificate against the attestation CA and the digest.
3. The same server program with one byte-level change (an extra custom section, so another
   digest) gets its own certificate; the same client refuses it with ``code-mismatch``.

Everything runs on 127.0.0.1 with nothing from the network.
"""

from __future__ import annotations

import datetime
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives import serialization

from .. import attestation
from ..host import GuestInstance, Host, RunResult
from ..provenance import digest
from ..tls.config import TlsConfig
from ..wasi.context import WasiConfig
from ..wasi.sockets import NetworkPolicy
from .demo import make_ca

SERVER_NAME = "attested.localhost"


def make_attestation_ca(directory: Path) -> tuple[Path, Path]:
    cert, key = make_ca("wasi-tls-host demo attestation CA", datetime.datetime.now(datetime.timezone.utc))
    cert_path, key_path = directory / "attest-ca.pem", directory / "attest-ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ServerGuest:
    """A tls_server guest answering one connection, on a thread."""

    def __init__(self, host: Host, wasm: bytes, ca: attestation.AttestationCA) -> None:
        self.port = _free_port()
        self.out = bytearray()
        config = WasiConfig(
            args=["tls_server", str(self.port), "--count", "1", "--identity", "attested"],
            stdout=self.out, stderr=self.out,
            network=NetworkPolicy().allow_listen(f"127.0.0.1:{self.port}"),
            tls=TlsConfig(attest_ca=ca),
        )
        self.guest: GuestInstance = host.instantiate(wasm, config)
        self.result: RunResult | None = None
        self.thread = threading.Thread(target=self._run, name="demo-attest-server", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.result = self.guest.run()

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout  # monotonic: a clock step cannot stretch the wait
        while b"listening" not in self.out and time.monotonic() < deadline and self.thread.is_alive():
            self.thread.join(0.05)

    def stop(self) -> None:
        self.thread.join(10)
        if self.thread.is_alive():
            self.guest.interrupt("demo finished")
            self.thread.join(5)
        self.guest.close()


def _client(host: Host, wasm: bytes, port: int, expect: str, ca_pem: Path) -> dict[str, str]:
    out = bytearray()
    config = WasiConfig(
        args=["tls_client", "127.0.0.1", str(port), "--server-name", SERVER_NAME, "--expect-code", expect, "--send", "hello, attested server"],
        stdout=out, stderr=out,
        network=NetworkPolicy().allow_connect(f"127.0.0.1:{port}"),
        tls=TlsConfig(trust=[ca_pem], use_system_roots=False, attest_trust=[ca_pem]),
    )
    host.run(wasm, config)
    return dict(line.split("=", 1) for line in out.decode(errors="replace").splitlines() if "=" in line)


def run_attest_demo(out: TextIO = sys.stdout) -> int:
    from .. import guests

    print("wasi-tls-host demo attest: a client guest pins the code of the server guest it talks to.\n", file=out)
    server_wasm = guests.build("tls_server", quiet=False).read_bytes()
    client_wasm = guests.build("tls_client", quiet=False).read_bytes()
    changed_wasm = server_wasm + b"\x00\x0c\x0bdemo-change"  # one more custom section: other bytes, same program
    host = Host()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="wasi-tls-host-attest-") as tmp:
        ca_pem, ca_key = make_attestation_ca(Path(tmp))
        ca = attestation.AttestationCA.from_files(ca_pem, ca_key, names=[SERVER_NAME])
        pinned = digest(server_wasm)
        print(f"attestation CA: {ca.certificate.subject.rfc4514_string()} (throwaway, preopened by the embedder)", file=out)
        print(f"client pins:    {pinned}\n", file=out)
        for label, wasm in (("the pinned server", server_wasm), ("a server built from changed code", changed_wasm)):
            server = _ServerGuest(host, wasm, ca)
            try:
                server.wait_listening()
                leaf = server.guest.ctx.attestation.identity().chain[0]
                print(f"--- {label}: {digest(wasm)}", file=out)
                print(f"  certificate: {leaf.subject.rfc4514_string()}, valid until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", file=out)
                claims = attestation.claims_of(leaf)
                assert claims is not None
                for line in attestation.describe(claims):
                    if not line.lstrip().startswith("document:"):
                        print(f"  {line}", file=out)
                seen = _client(host, client_wasm, server.port, pinned, ca_pem)
            finally:
                server.stop()
            verdict = seen.get("verification", "-")
            print(f"  client sees server code {seen.get('server-code', '-')}", file=out)
            print(f"  client verdict: {verdict}", file=out)
            if "reply" in seen:
                print(f"  reply: {seen['reply']}", file=out)
            print(file=out)
            outcomes.append(verdict)
    ok = outcomes[0] == "ok" and outcomes[1].startswith("code-mismatch")
    print(f"result: {'OK' if ok else 'FAILED'} (pinned server accepted, changed server refused with code-mismatch)", file=out)
    print("The host vouches for which component holds each key; a verifier trusts the host that holds the attestation CA.", file=out)
    return 0 if ok else 1
