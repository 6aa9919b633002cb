"""``wasi-tls-host demo attest``: a client guest that pins the code of the server it talks to.

1. A throwaway attestation CA is preopened for a server guest: the host makes the instance
   a fresh key and a certificate carrying the component's digest and its grants (Open DICE
   extension).
2. A client guest connects requiring the server's code to be that digest: the host checks
   the server's certificate against the attestation CA and the digest.
3. The same server program with one byte-level change (an extra custom section, so another
   digest) gets its own certificate; the same client refuses it with ``code-mismatch``.

The guests are ``attest_p3`` in both roles (WASI 0.3, the asyncio binding's
``expect_peer_code=``); ``demo attest --wasi 0.2`` runs ``tls_server`` and ``tls_client``
(``expect-peer-code`` of the WASI 0.2 interface).

Everything runs on 127.0.0.1 with nothing from the network.
"""

from __future__ import annotations

import datetime
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from cryptography.hazmat.primitives import serialization

from .. import attestation
from ..host import GuestInstance, Host, RunResult
from ..provenance import digest
from ..tls.config import TlsConfig
from ..wasi.context import WasiConfig
from ..wasi.sockets import NetworkPolicy
from .demo import make_ca

SERVER_NAME = "attested.localhost"
GREETING = "hello, attested server"


@dataclass(frozen=True)
class DemoGuests:
    """The two roles' guests for one WASI version and the arguments each takes."""

    server: str
    client: str
    server_args: Callable[[int], list[str]]  # port -> argv answering one connection
    client_args: Callable[[int, str], list[str]]  # port, pinned digest -> argv
    ends_after_a_refusal: bool  # whether the server's count includes a refused handshake


GUESTS = {
    # attest_p3 counts only connections whose handshake succeeded, so after a refusal the
    # demo stops it; tls_server counts every accepted connection.
    "0.3": DemoGuests(
        "attest_p3", "attest_p3",
        lambda port: ["attest_p3", "serve", "127.0.0.1", str(port), "1"],
        lambda port, pinned: ["attest_p3", "connect", "127.0.0.1", str(port), SERVER_NAME, pinned, "--send", GREETING],
        ends_after_a_refusal=False,
    ),
    "0.2": DemoGuests(
        "tls_server", "tls_client",
        lambda port: ["tls_server", str(port), "--count", "1", "--identity", "attested"],
        lambda port, pinned: ["tls_client", "127.0.0.1", str(port), "--server-name", SERVER_NAME, "--expect-code", pinned, "--send", GREETING],
        ends_after_a_refusal=True,
    ),
}


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
    """A server guest answering one connection with its attested identity, on a thread."""

    def __init__(self, host: Host, wasm: bytes, ca: attestation.AttestationCA, args: Callable[[int], list[str]]) -> None:
        self.port = _free_port()
        self.out = bytearray()
        config = WasiConfig(
            args=args(self.port),
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

    def stop(self, ends_by_itself: bool) -> None:
        if ends_by_itself:
            self.thread.join(10)
        if self.thread.is_alive():
            self.guest.interrupt("demo finished")
            self.thread.join(5)
        self.guest.close()


def _client(host: Host, wasm: bytes, args: list[str], port: int, ca_pem: Path) -> dict[str, str]:
    """What the client guest reported, as its ``key=value`` lines."""
    out = bytearray()
    config = WasiConfig(
        args=args,
        stdout=out, stderr=out,
        network=NetworkPolicy().allow_connect(f"127.0.0.1:{port}"),
        tls=TlsConfig(trust=[ca_pem], use_system_roots=False, attest_trust=[ca_pem]),
    )
    host.run(wasm, config)
    return dict(line.split("=", 1) for line in out.decode(errors="replace").splitlines() if "=" in line)


def run_attest_demo(out: TextIO = sys.stdout, wasi: str = "0.3") -> int:
    from .. import guests

    roles = GUESTS[wasi]
    kind = "WASI 0.3, asyncio" if wasi == "0.3" else "WASI 0.2"
    print(f"wasi-tls-host demo attest: a client guest ({kind}) pins the code of the server guest it talks to.\n", file=out)
    server_wasm = guests.build(roles.server, quiet=False).read_bytes()
    client_wasm = server_wasm if roles.client == roles.server else guests.build(roles.client, quiet=False).read_bytes()
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
            server = _ServerGuest(host, wasm, ca, roles.server_args)
            seen: dict[str, str] = {}
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
                seen = _client(host, client_wasm, roles.client_args(server.port, pinned), server.port, ca_pem)
            finally:
                server.stop(ends_by_itself=seen.get("verification") == "ok" or roles.ends_after_a_refusal)
            verdict = seen.get("verification", "-")
            if "server-code" in seen:  # the 0.3 client's refusal names the certificate's code instead
                print(f"  client sees server code {seen['server-code']}", file=out)
            print(f"  client verdict: {verdict}", file=out)
            if "reply" in seen:
                print(f"  reply: {seen['reply']}", file=out)
            print(file=out)
            outcomes.append(verdict)
    ok = outcomes[0] == "ok" and outcomes[1].startswith("code-mismatch")
    print(f"result: {'OK' if ok else 'FAILED'} (pinned server accepted, changed server refused with code-mismatch)", file=out)
    print("The host vouches for which component holds each key; a verifier trusts the host that holds the attestation CA.", file=out)
    if wasi == "0.3":
        print("(the WASI 0.2 guests: wasi-tls-host demo attest --wasi 0.2)", file=out)
    return 0 if ok else 1
