"""CPython's ``ssl`` module, as a peer program of its own (``pyssl_peer.py``): the Go peer's
flags and JSON lines, run with this interpreter in a separate process (so it competes with
the host under test for no lock)."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

from ..specs import ClientSpec, Observation, ServerSpec
from . import Peer, PeerServer, RunContext
from .gotls import flags_for_client, flags_for_server, json_connections, json_peer_server

PROGRAM = Path(__file__).resolve().parent / "pyssl_peer.py"
# Isolated and without site-packages: the peer needs only the standard library, and starts
# faster without the environment's .pth files.
PYTHON = [sys.executable, "-I", "-S"]


class PythonSsl(Peer):
    name = "python"
    implementation = "CPython ssl"
    server_tool = "pyssl_peer.py (CPython ssl)"
    client_tool = "pyssl_peer.py (CPython ssl)"

    def version(self) -> str:
        return f"Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}"

    def abilities(self, role: str) -> frozenset[str]:
        common = {"pin-version", "alpn", "groups", "key-ecdsa-p384", "key-rsa", "key-ed25519", "echo", "truncate"}
        if role == "server":
            return frozenset(common | {"client-auth", "client-auth-optional", "sni-select", "close", "http", "report-end"})
        return frozenset(common | {"client-cert", "resume", "verify", "read-to-end"})

    def start_server(self, spec: ServerSpec, ctx: RunContext) -> PeerServer:
        flags = flags_for_server(spec, ctx.pki.ca_pem)
        if spec.sni_cert is not None:
            flags += ["-cert2-names", spec.sni_cert.subject]
        return json_peer_server(ctx, "pyssl-server", [*PYTHON, str(PROGRAM), "-mode", "server", "-listen", "127.0.0.1:0",
                                                      "-timeout", f"{ctx.timeout:g}s", *flags])

    def run_client(self, spec: ClientSpec, port: int, ctx: RunContext) -> Observation:
        done = ctx.processes.run([*PYTHON, str(PROGRAM), "-mode", "client", "-timeout", f"{ctx.timeout:g}s",
                                  *flags_for_client(spec, port, ctx.pki.ca_pem)], timeout=ctx.timeout + 5, name="pyssl-client")
        return Observation(json_connections(done.stdout), exit_code=done.exit_code, timed_out=done.timed_out, output=done.output)
