"""OpenSSL's own programs: ``openssl s_server`` and ``openssl s_client``.

s_server echoes each line reversed (``-rev``; the line the matrix sends is a palindrome) or
answers HTTP (``-www``); it cannot end a connection on its own, so it has no close or
truncate behaviour. Its log says, per connection, the version and the client certificate.
s_client says per connection whether it was new or reused, the ALPN protocol and the
verification result; its stdin stays open until the reply came back, then closing it sends
close_notify, and killing it ends the connection without one.
"""

from __future__ import annotations

import re

from ..specs import LINE, ClientSpec, Observation, Seen, ServerSpec, version_name
from . import Peer, PeerServer, RunContext, converse, missing_programs, start_listening, tool_version

OPENSSL_GROUPS = {"X25519": "X25519", "P-256": "P-256", "P-384": "P-384"}
RSA_PSS_SIGALGS = "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512"


def parse_server_log(log: str) -> list[Seen]:
    """s_server's connections in order: each CONNECTION ESTABLISHED, or a run of error lines."""
    seen: list[Seen] = []
    current: Seen | None = None
    in_error = False
    for line in log.splitlines():
        if line.startswith("CONNECTION ESTABLISHED"):
            current = Seen(ok=True, peer_subject="")
            seen.append(current)
            in_error = False
        elif ":error:" in line and "routines" in line:
            # PID:error:CODE:LIBRARY routines:FUNCTION:REASON:FILE:LINE:
            match = re.search(r":error:[0-9A-Fa-f]+:[^:]*:[^:]*:([^:]*)", line)
            reason = match.group(1) if match else line
            if not in_error:
                seen.append(Seen(ok=False, error=reason))
                current = None
            in_error = True
        elif current is not None and line.startswith("Protocol version:"):
            current.version = version_name(line.split(":", 1)[1])
        elif current is not None and line.startswith("Peer certificate:"):
            current.peer_subject = line.split(":", 1)[1].strip()
        elif line.strip():
            in_error = False
    return seen


def parse_client_output(output: str, spec: ClientSpec) -> list[Seen]:
    """s_client's connections: each starts at a "CONNECTED(" line."""
    seen: list[Seen] = []
    prefix, *blocks = re.split(r"^CONNECTED\(", output, flags=re.M)
    # stderr is unbuffered and stdout is not: a connection's first error lines can come
    # before its CONNECTED line; they belong to the first connection.
    blocks = [prefix + blocks[0], *blocks[1:]] if blocks else ([prefix] if prefix.strip() else [])
    for block in blocks:
        errors = [line for line in block.splitlines()
                  if ("error" in line.lower() and ("routines" in line or line.startswith(("verify error", "Verification error"))))
                  or "alert" in line]
        verify = re.search(r"Verify return code: (\d+) \(([^)]*)\)", block)
        new = re.search(r"^(New|Reused), (TLSv[\d.]+)", block, flags=re.M)
        alpn = re.search(r"^ALPN protocol: (\S+)", block, flags=re.M)
        verified = verify is not None and verify.group(1) == "0"
        ok = new is not None and new.group(2) != "(NONE)" and verified and not errors
        error = None
        if not ok:
            reasons = errors + ([f"verify return code {verify.group(1)} ({verify.group(2)})"] if verify and verify.group(1) != "0" else [])
            error = "; ".join(r.strip() for r in reasons) or "the handshake did not complete"
        replies = [line for line in block.splitlines() if line.strip() == LINE]
        seen.append(Seen(
            ok=ok, error=error, version=version_name(new.group(2)) if new else None,
            alpn=alpn.group(1) if alpn else ("" if "No ALPN negotiated" in block else None),
            resumed=(new.group(1) == "Reused") if new else None,
            reply=LINE if replies else None,
        ))
    return seen


class OpenSsl(Peer):
    name = "openssl"
    debian_packages = ("openssl",)
    implementation = "OpenSSL"
    server_tool = "openssl s_server"
    client_tool = "openssl s_client"

    def missing(self) -> str | None:
        return missing_programs("openssl")

    def version(self) -> str:
        return tool_version(["openssl", "version"])

    def abilities(self, role: str) -> frozenset[str]:
        common = {"pin-version", "alpn", "groups", "key-ecdsa-p384", "key-rsa", "key-ed25519", "echo"}
        if role == "server":
            return frozenset(common | {"client-auth", "client-auth-optional", "sni-select", "http"})
        return frozenset(common | {"client-cert", "resume", "truncate", "verify"})

    def _common(self, version: str, groups: tuple[str, ...], rsa: bool) -> list[str]:
        args = ["-tls1_3" if version == "1.3" else "-tls1_2"]
        if groups:
            args += ["-groups", ":".join(OPENSSL_GROUPS[g] for g in groups)]
        if rsa:
            args += ["-sigalgs", RSA_PSS_SIGALGS]
        return args

    def start_server(self, spec: ServerSpec, ctx: RunContext) -> PeerServer:
        args = self._common(spec.version, spec.groups, "rsa" in spec.cert.name)
        if spec.sni_cert is not None:
            args += ["-servername", spec.sni_cert.subject, "-cert2", str(spec.sni_cert.bundle)]
        if spec.alpn:
            args += ["-alpn", ",".join(spec.alpn)]
        if spec.client_auth != "none":
            args += ["-Verify" if spec.client_auth == "required" else "-verify", "1", "-CAfile", str(ctx.pki.ca_pem)]
            if spec.client_auth == "required":
                args.append("-verify_return_error")
        if not spec.tickets:
            args.append("-no_ticket")
        args.append("-www" if spec.behaviour == "http" else "-rev")

        def cmd(port: int) -> list[str]:
            return ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(spec.cert.bundle), *args]

        return start_listening(ctx.processes, "s_server", cmd, lambda log: "ACCEPT" in log, parse_server_log, stdin_pipe=True)

    def run_client(self, spec: ClientSpec, port: int, ctx: RunContext) -> Observation:
        base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", spec.server_name,
                "-verify_hostname", spec.server_name, "-CAfile", str(ctx.pki.ca_pem), "-verify_return_error",
                *self._common(spec.version, spec.groups, False)]
        if spec.alpn:
            base += ["-alpn", ",".join(spec.alpn)]
        if spec.identity is not None:
            base += ["-cert", str(spec.identity.bundle)]
        if not spec.resumption:
            base.append("-no_ticket")
        session = ctx.processes.workdir / f"s_client-{port}.session"
        output, exit_code, timed_out = "", None, False
        for number in range(spec.connections):
            cmd = list(base)
            if spec.connections > 1 and spec.resumption:
                cmd += ["-sess_out", str(session)] + (["-sess_in", str(session)] if number else [])

            def answered(text: str) -> bool:
                if ":error:" in text:
                    return True
                if spec.send is not None:
                    return any(line.strip() == LINE for line in text.splitlines())
                return "Verify return code:" in text

            done = converse(ctx, "s_client", cmd, line=spec.send, answered=answered, ending=spec.ending)
            output += done.output
            exit_code, timed_out = done.exit_code, timed_out or done.timed_out
        session.unlink(missing_ok=True)
        return Observation(parse_client_output(output, spec), exit_code=exit_code, timed_out=timed_out, output=output)
