"""curl (its TLS backend, OpenSSL on Debian) as a client: it speaks HTTP only, so the
servers it meets answer HTTP; a second URL in the same run resumes the first's session."""

from __future__ import annotations

import re

from ..specs import ClientSpec, Observation, Seen, version_name
from . import Peer, RunContext, missing_programs, tool_version

CURL_GROUPS = {"X25519": "X25519", "P-256": "P-256", "P-384": "P-384"}
WRITE_OUT = "curl-result %{http_code} %{time_connect} %{time_appconnect} %{ssl_verify_result}\\n"


def parse_output(stdout: str, stderr: str) -> list[Seen]:
    """One ``Seen`` per URL, from -w lines (stdout) and the -v trace (stderr)."""
    seen: list[Seen] = []
    traces = re.split(r"^\*\s+(?:Trying|Connected to) 127\.0\.0\.1", stderr, flags=re.M)
    results = re.findall(r"^curl-result (\d+) ([\d.]+) ([\d.]+) (\d+)$", stdout, flags=re.M)
    errors = re.findall(r"^curl: \(\d+\) (.*)$", stderr, flags=re.M)
    connections = [t for t in traces if "SSL connection using" in t or "SSL certificate problem" in t or "alert" in t.lower()]
    for index, (code, connect, appconnect, _verify) in enumerate(results):
        trace = connections[index] if index < len(connections) else ""
        version = re.search(r"SSL connection using (TLSv[\d.]+)", trace)
        alpn = re.search(r"ALPN(?:, server accepted to use|: server accepted) (\S+)", trace)
        ok = code != "000" and float(appconnect) > 0
        seen.append(Seen(
            ok=ok, error=None if ok and code.startswith("2") else (errors[0] if errors else f"HTTP status {code}"),
            version=version_name(version.group(1)) if version else None,
            alpn=alpn.group(1) if alpn else ("" if ok else None),
            resumed=("SSL re-using session ID" in trace) if ok else None,
            handshake_ms=round((float(appconnect) - float(connect)) * 1000, 3) if ok else None,
        ))
    return seen


class Curl(Peer):
    name = "curl"
    debian_packages = ("curl",)
    implementation = "curl"
    client_tool = "curl"
    http_only = True

    def missing(self) -> str | None:
        return missing_programs("curl")

    def version(self) -> str:
        return tool_version(["curl", "--version"], lambda text: " ".join(text.split()[:2] + [p for p in text.split() if p.startswith("OpenSSL/")][:1]))

    def abilities(self, role: str) -> frozenset[str]:
        if role == "server":
            return frozenset()
        return frozenset({"pin-version", "groups", "client-cert", "resume", "verify", "key-ecdsa-p384", "key-rsa", "key-ed25519"})

    def run_client(self, spec: ClientSpec, port: int, ctx: RunContext) -> Observation:
        url = f"https://{spec.server_name}:{port}/"
        flags = {"1.2": ["--tlsv1.2", "--tls-max", "1.2"], "1.3": ["--tlsv1.3", "--tls-max", "1.3"]}[spec.version]
        cmd = ["curl", "-sS", "-v", "--http1.1", "--max-time", f"{ctx.timeout:g}", "--cacert", str(ctx.pki.ca_pem),
               "--resolve", f"{spec.server_name}:{port}:127.0.0.1", "-o", "/dev/null", "-w", WRITE_OUT, *flags]
        if spec.groups:
            cmd += ["--curves", ":".join(CURL_GROUPS[g] for g in spec.groups)]
        if spec.identity is not None:
            cmd += ["--cert", str(spec.identity.cert), "--key", str(spec.identity.key)]
        if not spec.resumption:
            cmd.append("--no-sessionid")
        cmd += [url] * max(1, spec.connections)
        done = ctx.processes.run(cmd, timeout=ctx.timeout + 5, name="curl")
        return Observation(parse_output(done.stdout, done.stderr), exit_code=done.exit_code, timed_out=done.timed_out, output=done.output)
