"""GnuTLS's programs: ``gnutls-serv`` (``--echo``, or HTTP) and ``gnutls-cli``.

Versions, groups and signature algorithms are GnuTLS priority strings. gnutls-serv picks
among its certificates by the client's server name, and logs per connection the
negotiated "Description" (version, key exchange group, signature), the server name it was
given, the client certificate and how the client ended. gnutls-cli resumes with ``-r``
(two connections) and sends what it reads on stdin; closing that sends close_notify.
"""

from __future__ import annotations

import re
import shutil

from ..specs import LINE, ClientSpec, Observation, Seen, ServerSpec, version_name
from . import Peer, PeerServer, RunContext, converse, missing_programs, start_listening, tool_version

GNUTLS_GROUPS = {"X25519": "GROUP-X25519", "P-256": "GROUP-SECP256R1", "P-384": "GROUP-SECP384R1"}
RSA_PSS = "-SIGN-ALL:+SIGN-RSA-PSS-RSAE-SHA256:+SIGN-RSA-PSS-RSAE-SHA384:+SIGN-RSA-PSS-RSAE-SHA512"


def priority(version: str, groups: tuple[str, ...], rsa_pss: bool) -> str:
    parts = ["NORMAL", "-VERS-ALL", f"+VERS-TLS{version}"]
    if groups:
        parts += ["-GROUP-ALL", *(f"+{GNUTLS_GROUPS[g]}" for g in groups)]
    if rsa_pss:
        parts.append(RSA_PSS)
    return ":".join(parts)


def _description(line: str) -> str | None:
    match = re.search(r"\((TLS[\d.]+)-", line)
    return version_name(match.group(1)) if match else None


def parse_server_log(log: str) -> list[Seen]:
    seen: list[Seen] = []
    current: Seen | None = None
    for line in log.splitlines():
        text = line.strip()
        if text.startswith("* Accepted connection"):
            current = Seen(ok=False, error="the handshake did not complete", peer_subject="", resumed=False)
            seen.append(current)
        elif current is None:
            continue
        elif text.startswith("- Description:"):
            current.ok, current.error = True, None
            current.version = _description(text)
        elif text.startswith("- Given server name"):
            current.server_name = text.split(":", 1)[1].strip()
        elif text.startswith("Subject:") and not current.peer_subject:
            current.peer_subject = text.split(":", 1)[1].strip()
        elif "This is a resumed session" in text:
            current.resumed = True
        elif text.startswith("- Application protocol:"):
            current.alpn = text.split(":", 1)[1].strip()
        elif text.startswith("Error in handshake") or text.startswith("*** Handshake has failed") or "Fatal error" in text:
            if current.ok:
                current.end = text
            else:
                current.error = text.split(":", 1)[1].strip() if ":" in text else text
        elif "Peer has closed the GnuTLS connection" in text:
            current.end = "close_notify"
        elif text.startswith("*** ") and "received" in text.lower() and current.ok and current.end is None:
            current.end = text
        elif text.startswith("Error while receiving data") and current.ok:
            current.end = text.split(":", 1)[-1].strip()
    return seen


def parse_client_output(output: str, spec: ClientSpec) -> list[Seen]:
    seen: list[Seen] = []
    prefix, *blocks = re.split(r"^Connecting to ", output, flags=re.M)
    # stderr is unbuffered and stdout is not: a connection's error lines can come before
    # its "Connecting to" line; they belong to the first connection.
    blocks = [prefix + blocks[0], *blocks[1:]] if blocks else ([prefix] if prefix.strip() else [])
    for block in blocks:
        described = re.search(r"^- Description: (.*)$", block, flags=re.M)
        failed = re.findall(r"^\*\*\* (?:Received alert|Fatal error|Handshake has failed|Verifying server certificate failed)[^\n]*"
                            r"|^- Status: The certificate is NOT trusted[^\n]*|^Error in handshake[^\n]*", block, flags=re.M)
        alpn = re.search(r"^- Application protocol: (\S+)", block, flags=re.M)
        completed = re.search(r"^- (?:Resume )?Handshake was completed", block, flags=re.M)
        ok = completed is not None and not any("NOT trusted" in f or "Handshake has failed" in f for f in failed)
        after = [f for f in failed if "Fatal error" in f]  # once established: how it broke
        lines = [line.strip() for line in block.splitlines()]
        end = "close_notify" if any("Peer has closed the GnuTLS connection" in line for line in lines) else (after[-1] if after else None)
        if not ok:
            error: str | None = "; ".join(failed) or "the handshake did not complete"
        else:
            error = "; ".join(after) if after and not spec.read_to_end else None
        seen.append(Seen(
            ok=ok, error=error,
            version=_description(described.group(1)) if described else None,
            alpn=alpn.group(1) if alpn else ("" if completed else None),
            resumed="This is a resumed session" in block if completed else None,
            reply=LINE if LINE in lines else None, end=end,
            received=_received(block) if spec.read_to_end else None,
        ))
    return seen


def _received(block: str) -> int:
    """Bytes of application data gnutls-cli printed: what follows "Simple Client Mode", but
    its own notes ("- ...", "*** ...")."""
    _, _, data = block.partition("- Simple Client Mode:")
    lines = [line for line in data.splitlines(keepends=True) if not line.startswith(("- ", "*** ")) and line.strip()]
    return sum(len(line) for line in lines)


class GnuTls(Peer):
    name = "gnutls"
    debian_packages = ("gnutls-bin",)
    implementation = "GnuTLS"
    server_tool = "gnutls-serv"
    client_tool = "gnutls-cli"

    def missing(self) -> str | None:
        reason = missing_programs("gnutls-serv", "gnutls-cli")
        return f"{reason} (Debian: gnutls-bin)" if reason else None

    def version(self) -> str:
        return tool_version(["gnutls-cli", "--version"], lambda text: text.split("\n")[0].replace("gnutls-cli ", "GnuTLS "))

    def abilities(self, role: str) -> frozenset[str]:
        common = {"pin-version", "alpn", "groups", "key-ecdsa-p384", "key-rsa", "key-ed25519", "echo"}
        if role == "server":
            # No "report-end": gnutls-serv says when a client ended without close_notify, but
            # says nothing when one ended cleanly, so a clean end cannot be told from none yet.
            return frozenset(common | {"client-auth", "client-auth-optional", "sni-select", "http"})
        return frozenset(common | {"client-cert", "resume", "truncate", "verify", "read-to-end"})

    def start_server(self, spec: ServerSpec, ctx: RunContext) -> PeerServer:
        args = ["--priority", priority(spec.version, spec.groups, "rsa" in spec.cert.name),
                "--x509certfile", str(spec.cert.cert), "--x509keyfile", str(spec.cert.key)]
        if spec.sni_cert is not None:
            args += ["--x509certfile", str(spec.sni_cert.cert), "--x509keyfile", str(spec.sni_cert.key)]
        if spec.alpn:
            for proto in spec.alpn:
                args += ["--alpn", proto]
            args.append("--alpn-fatal")
        if spec.client_auth == "none":
            args.append("--disable-client-cert")
        else:
            args += ["--x509cafile", str(ctx.pki.ca_pem), "--verify-client-cert"]
            if spec.client_auth == "required":
                args.append("--require-client-cert")
        if not spec.tickets:
            args.append("--noticket")
        if spec.behaviour != "http":
            args.append("--echo")

        # Its output goes to a file, where stdio buffers it: line buffering (stdbuf) lets each
        # connection's lines be read as they happen.
        line_buffered = ["stdbuf", "-oL", "-eL"] if shutil.which("stdbuf") else []

        def cmd(port: int) -> list[str]:
            return [*line_buffered, "gnutls-serv", "-p", str(port), *args]

        return start_listening(ctx.processes, "gnutls-serv", cmd, lambda log: "listening on IPv4" in log, parse_server_log)

    def run_client(self, spec: ClientSpec, port: int, ctx: RunContext) -> Observation:
        cmd = ["gnutls-cli", "--x509cafile", str(ctx.pki.ca_pem), "-p", str(port), "--sni-hostname", spec.server_name,
               "--verify-hostname", spec.server_name, "--priority", priority(spec.version, spec.groups, False)]
        for proto in spec.alpn:
            cmd += ["--alpn", proto]
        if spec.identity is not None:
            cmd += ["--x509certfile", str(spec.identity.cert), "--x509keyfile", str(spec.identity.key)]
        if spec.connections > 1 and spec.resumption:
            cmd.append("-r")
        cmd.append("127.0.0.1")

        def answered(text: str) -> bool:
            if spec.read_to_end:
                return "Peer has closed" in text or "Fatal error" in text
            if spec.send is not None:
                return any(line.strip() == LINE for line in text.splitlines()) or "Handshake has failed" in text or "Fatal error" in text
            return "Handshake was completed" in text or "Handshake has failed" in text

        done = converse(ctx, "gnutls-cli", cmd, line=spec.send, answered=answered, ending=spec.ending)
        return Observation(parse_client_output(done.output, spec), exit_code=done.exit_code, timed_out=done.timed_out, output=done.output)
