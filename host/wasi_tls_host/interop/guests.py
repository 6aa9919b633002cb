"""The guests of the matrix and how to drive them: the arguments each receives and what its
output means.

Two adapters are the documented contract for a user's own guest (``--client-guest``,
``--server-guest``; the project's ``tls_client`` and ``tls_server`` follow it):

Client contract: ``GUEST ADDRESS PORT --server-name NAME --timeout SECONDS [--tls 1.2|1.3]
[--alpn P1,P2] [--identity NAME] [--send LINE] [--connections N] [--read-to-end]
[--end close|truncate]``; it prints ``key=value`` lines per connection and ``done`` after
each: ``verification=ok`` once the server was verified (or ``verification=CODE: MESSAGE``),
``version=0x0303|0x0304``, ``alpn=ID|-``, ``resumed=true|false``, ``reply=LINE`` (with
``--send``), ``received=N`` and ``end=close_notify|CODE: MESSAGE`` (with ``--read-to-end``),
optionally ``handshake-us=N``; a failure prints ``error=CODE: MESSAGE`` and exits 1.

Server contract: ``GUEST PORT --count 0 --concurrent --mode echo|http|alpn [--tls 1.2|1.3]
[--alpn P1,P2] [--client-auth none|optional|required]``, with identities preopened (named
``server``, and ``sni`` for a second server name); it listens on 127.0.0.1:PORT, prints a
line containing ``listening``, then per connection ``#N connection sni=NAME|- version=0x0304
alpn=ID|- client=SUBJECT|-`` once established, ``#N handshake failed: CODE: MESSAGE`` or
``#N rejected: REASON`` when not, and ``#N closed ...`` (the client's close_notify) or
``#N read error: CODE: MESSAGE`` when the client ended. Modes: ``echo`` echoes lines until
the client ends, ``http`` answers one HTTP request, ``alpn`` answers one line and ends with
close_notify.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import guests as examples
from ..guests import installed_version
from .specs import LINE, SNI_NAME, ClientSpec, Observation, Seen, ServerSpec, version_name

CLIENT_CONTRACT = "key=value lines ending with 'done' per connection (verification=ok, version=0x0304, ...; see the client guest contract)"
SERVER_CONTRACT = "'#N connection ...' lines (see the server guest contract)"


def _value(text: str) -> str:
    return "" if text == "-" else text


# --- client adapters ---------------------------------------------------------------------


class ClientAdapter:
    abilities: frozenset[str] = frozenset()
    http_only = False  # the servers it meets must answer HTTP
    needs_dns = False  # it resolves "localhost" itself

    def args(self, spec: ClientSpec, port: int, timeout: float) -> list[str]:
        raise NotImplementedError

    def parse(self, stdout: str, stderr: str, exit_code: int | None, spec: ClientSpec) -> Observation:
        raise NotImplementedError


class ContractClient(ClientAdapter):
    """The client contract (``tls_client``, ``--client-guest``)."""

    abilities = frozenset({"pin-version", "alpn", "client-cert", "resume", "verify", "read-to-end", "truncate", "echo"})

    def args(self, spec: ClientSpec, port: int, timeout: float) -> list[str]:
        args = ["127.0.0.1", str(port), "--server-name", spec.server_name, "--timeout", f"{timeout:g}", "--tls", spec.version]
        if spec.alpn:
            args += ["--alpn", ",".join(spec.alpn)]
        if spec.identity is not None:
            args += ["--identity", "client"]
        if spec.send is not None:
            args += ["--send", spec.send]
        if spec.connections > 1:
            args += ["--connections", str(spec.connections)]
        if spec.read_to_end:
            args.append("--read-to-end")
        if spec.ending == "truncate":
            args += ["--end", "truncate"]
        return args

    def parse(self, stdout: str, stderr: str, exit_code: int | None, spec: ClientSpec) -> Observation:
        seen: list[Seen] = []
        current: dict[str, str] = {}

        def close() -> None:
            if not current:
                return
            verified = current.get("verification") == "ok"
            error = current.get("error") or (None if verified else current.get("verification"))
            us = current.get("handshake-us", "")
            received = current.get("received", "")
            seen.append(Seen(
                ok=verified, error=error, version=version_name(current.get("version")),
                alpn=_value(current["alpn"]) if "alpn" in current else None,
                resumed={"true": True, "false": False}.get(current.get("resumed", "")),
                reply=_value(current["reply"]) if "reply" in current else None,
                received=int(received) if received.isdigit() else None, end=current.get("end"),
                handshake_ms=int(us) / 1000 if us.isdigit() else None,
            ))

        for line in stdout.splitlines():
            if line.strip() == "done":
                close()
                current = {}
            elif "=" in line:
                key, value = line.split("=", 1)
                current[key.strip()] = value.strip()
        close()
        problem = None
        if not seen:
            problem = f"expected {CLIENT_CONTRACT}; got (exit status {exit_code}): {_excerpt(stdout + stderr)}"
        return Observation(seen, exit_code=exit_code, output=stdout + stderr, problem=problem)


class ProbeClient(ClientAdapter):
    """``tls_probe`` (upstream ``wasi:tls@0.2.0-draft``): ``resume`` for lines echoed over N
    connections, ``download`` to read to the end. The draft API has no ALPN, no version
    choice and no client certificates."""

    abilities = frozenset({"resume", "verify", "read-to-end", "echo"})

    def args(self, spec: ClientSpec, port: int, timeout: float) -> list[str]:
        if spec.read_to_end:
            return ["download", "127.0.0.1", str(port), spec.server_name]
        return ["resume", "127.0.0.1", str(port), str(spec.connections), spec.server_name]

    def parse(self, stdout: str, stderr: str, exit_code: int | None, spec: ClientSpec) -> Observation:
        facts = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
        error = facts.get("error") or facts.get("TimeoutError") or facts.get("ConnectionError")
        output = stdout + stderr
        if spec.read_to_end:
            if "bytes" not in facts:
                return Observation([Seen(ok=False, error=error or _excerpt(output))] if error else [], exit_code=exit_code, output=output,
                                   problem=None if error else f"expected bytes=N and end=...; got: {_excerpt(output)}")
            end = "close_notify" if facts.get("end") == "closed" else (facts.get("error") or facts.get("end"))
            return Observation([Seen(ok=True, received=int(facts["bytes"]), end=end)], exit_code=exit_code, output=output)
        if error is not None:
            return Observation([Seen(ok=False, error=error)], exit_code=exit_code, output=output)
        if "connections" not in facts:
            return Observation([], exit_code=exit_code, output=output, problem=f"expected connections=N; got: {_excerpt(output)}")
        times = [int(t) for t in facts.get("handshake-us", "").split(",") if t.isdigit()]
        return Observation([Seen(ok=True, reply=LINE, handshake_ms=t / 1000) for t in times] or [Seen(ok=True, reply=LINE)],
                           exit_code=exit_code, output=output)


class HttpsGetClient(ClientAdapter):
    """``https_get`` (upstream ``wasi:tls@0.2.0-draft``): one GET of https://localhost:PORT/."""

    abilities = frozenset({"verify"})
    http_only = True
    needs_dns = True

    def args(self, spec: ClientSpec, port: int, timeout: float) -> list[str]:
        return [f"https://{spec.server_name}:{port}/"]

    def parse(self, stdout: str, stderr: str, exit_code: int | None, spec: ClientSpec) -> Observation:
        status = re.search(r"^status: (\S+) (\d+)", stdout, flags=re.M)
        error = re.search(r"^error: (.*)$", stderr, flags=re.M)
        output = stdout + stderr
        if status:
            ok = status.group(2).startswith("2")
            return Observation([Seen(ok=True, version=None, error=None if ok else f"HTTP status {status.group(2)}")],
                               exit_code=exit_code, output=output)
        if error:
            return Observation([Seen(ok=False, error=error.group(1))], exit_code=exit_code, output=output)
        return Observation([], exit_code=exit_code, output=output, problem=f"expected 'status: ...' or 'error: ...'; got: {_excerpt(output)}")


class AioHttpsGetClient(ClientAdapter):
    """``https_get_p3 https://127.0.0.1:PORT/ --server-name NAME`` (WASI 0.3, wasi_tls_aio's
    ``open_connection`` through this host's wasi-tls-host:tls 0.3): one GET, ALPN http/1.1
    offered; it prints ``version: V``, ``alpn: ID``, then ``https_get``'s lines (``status:
    LINE``, ...), or ``error: TlsError: CODE: MESSAGE`` on stderr (exit 1). With ``upstream``
    (``https_get_upstream_p3 localhost PORT``, upstream wasi:tls@0.3.0-draft only): the name
    is the address it resolves, and it prints ``status LINE`` and ``rest N bytes``, or ``tls
    error: MESSAGE``."""

    abilities = frozenset({"verify"})
    http_only = True

    def __init__(self, upstream: bool = False) -> None:
        self.upstream = upstream
        self.needs_dns = upstream

    def args(self, spec: ClientSpec, port: int, timeout: float) -> list[str]:
        if self.upstream:
            return [spec.server_name, str(port)]
        return [f"https://127.0.0.1:{port}/", "--server-name", spec.server_name]

    def parse(self, stdout: str, stderr: str, exit_code: int | None, spec: ClientSpec) -> Observation:
        output = stdout + stderr
        if self.upstream:
            error = re.search(r"^tls error: (.*)$", stdout, flags=re.M)
            status = re.search(r"^status (\S+) (\d+)", stdout, flags=re.M)
            version = alpn = None
            handshaken = status is not None
        else:
            error = re.search(r"^error: (?:\w+: )?(.*)$", stderr, flags=re.M)  # without the exception's name
            status = re.search(r"^status: (\S+) (\d+)", stdout, flags=re.M)
            negotiated = re.search(r"^version: (\S+)\nalpn: (\S+)$", stdout, flags=re.M)
            version = version_name(negotiated.group(1)) if negotiated else None
            alpn = (negotiated.group(2) if negotiated.group(2) != "-" else "") if negotiated else None
            handshaken = negotiated is not None  # the status comes after the whole body
        if status and not error:
            ok = status.group(2).startswith("2")
            return Observation([Seen(ok=True, version=version, alpn=alpn, error=None if ok else f"HTTP status {status.group(2)}")],
                               exit_code=exit_code, output=output)
        if error:
            # A failure after the handshake (a truncated body) still had a verified handshake.
            return Observation([Seen(ok=handshaken, version=version, error=error.group(1))],
                               exit_code=exit_code, output=output)
        return Observation([], exit_code=exit_code, output=output,
                           problem=f"expected 'status...' or an error; got (exit status {exit_code}): {_excerpt(output)}")


# --- server adapters ---------------------------------------------------------------------


class ServerAdapter:
    abilities: frozenset[str] = frozenset()
    # The names the host preopens the server's identities under: its default certificate,
    # and the one for the second server name (features.SNI_NAME) of the "sni" feature.
    identity_names: tuple[str, str] = ("server", "sni")

    def args(self, spec: ServerSpec, port: int) -> list[str]:
        raise NotImplementedError

    def parse(self, output: str) -> list[Seen]:
        raise NotImplementedError


MODES = {"echo": "echo", "http": "http", "close": "alpn"}


class ContractServer(ServerAdapter):
    """The server contract (``tls_server``, ``--server-guest``)."""

    abilities = frozenset({"pin-version", "alpn", "client-auth", "client-auth-optional", "sni-select", "echo", "http", "close",
                           "report-end", "key-ecdsa-p384", "key-rsa", "key-ed25519"})

    def args(self, spec: ServerSpec, port: int) -> list[str]:
        args = [str(port), "--count", "0", "--concurrent", "--mode", MODES[spec.behaviour], "--tls", spec.version,
                "--client-auth", spec.client_auth]
        if spec.alpn:
            args += ["--alpn", ",".join(spec.alpn)]
        return args

    # How a line says the client's end was an error, and whether it names the client
    # certificate (a guest that does not leaves it to the host: peer_subject None).
    end_errors: tuple[str, ...] = ("read error:", "write error:")
    prints_client = True

    def parse(self, output: str) -> list[Seen]:
        by_number: dict[str, Seen] = {}
        for line in output.splitlines():
            match = re.match(r"#(\d+) (.*)$", line.strip())
            if not match:
                continue
            number, text = match.groups()
            if text.startswith(self.end_errors):
                if number in by_number and by_number[number].end is None:
                    by_number[number].end = text.split(":", 1)[1].strip()
            elif text.startswith("connection "):
                facts = dict(re.findall(r"(\w+)=(\S+)", text.split(" client=", 1)[0]))
                client = text.split(" client=", 1)[1] if " client=" in text else "-"
                by_number[number] = Seen(ok=True, server_name=_value(facts.get("sni", "-")), version=version_name(facts.get("version")),
                                         alpn=_value(facts.get("alpn", "-")),
                                         peer_subject=_value(client.split(" code=", 1)[0]) if self.prints_client else None)
            elif text.startswith(("handshake failed:", "rejected:", "answer refused:")):
                by_number[number] = Seen(ok=False, error=text.split(":", 1)[1].strip())
            elif number in by_number and text.startswith("closed"):
                by_number[number].end = "close_notify"
        return [by_number[n] for n in sorted(by_number, key=int)]


class EchoServerAdapter(ServerAdapter):
    """``tls_echo_server PORT COUNT``: identity by SNI, ALPN fixed (h2, then http/1.1), no
    client authentication, no version choice."""

    abilities = frozenset({"sni-select", "echo", "report-end", "key-ecdsa-p384", "key-rsa", "key-ed25519"})

    def args(self, spec: ServerSpec, port: int) -> list[str]:
        return [str(port), "1000"]

    def parse(self, output: str) -> list[Seen]:
        seen: list[Seen] = []
        for line in output.splitlines():
            text = line.strip()
            if text.startswith("connection error:"):
                if seen:
                    seen[-1].end = text.split(":", 1)[1].strip()
            elif text.startswith("connection "):
                facts = dict(re.findall(r"(\w+)=(\S+)", text))
                seen.append(Seen(ok=True, server_name=_value(facts.get("sni", "-")), version=version_name(facts.get("version")),
                                 alpn=_value(facts.get("alpn", "-"))))
            elif text.startswith(("handshake failed:", "rejected:")):
                seen.append(Seen(ok=False, error=text.split(":", 1)[1].strip()))
            elif text.startswith("echoed") and seen:
                seen[-1].end = "close_notify"
        return seen


class AioEchoServerAdapter(ServerAdapter):
    """``tls_echo_server_p3 --plain 127.0.0.1 PORT COUNT b.test`` (WASI 0.3, wasi_tls_aio's
    ``start_server``): identity by SNI among the names given (``default`` otherwise), ALPN
    fixed (echo, then http/1.1), no client authentication. It reports the version and ALPN
    of each connection and how the client ended it; the SNI it received is the host's fact."""

    abilities = frozenset({"sni-select", "echo", "report-end", "key-ecdsa-p384", "key-rsa", "key-ed25519"})
    identity_names = ("default", SNI_NAME)

    def args(self, spec: ServerSpec, port: int) -> list[str]:
        return ["--plain", "127.0.0.1", str(port), "1000000", SNI_NAME]

    def parse(self, output: str) -> list[Seen]:
        by_number: dict[str, Seen] = {}
        failed = _binding_failures(output)
        for line in output.splitlines():
            text = line.strip()
            match = re.match(r"#(\d+) (.*)$", text)
            if not match:
                continue
            number, said = match.groups()
            if said.startswith("connection "):
                facts = dict(re.findall(r"(\w+)=(\S+)", said))
                by_number[number] = Seen(ok=True, version=version_name(facts.get("version")), alpn=_value(facts.get("alpn", "-")))
            elif number in by_number and said == "closed":
                by_number[number].end = "close_notify"
            elif number in by_number and said.startswith("read error:"):
                by_number[number].end = said.split(":", 1)[1].strip()
        return [by_number[n] for n in sorted(by_number, key=int)] + failed


def _binding_failures(output: str) -> list[Seen]:
    """The handshakes that failed before a 0.3 server guest's handler ran: wasi_tls_aio's
    ``start_server`` prints each (``wasi_tls_aio: connection from ADDRESS: ERROR``)."""
    return [Seen(ok=False, error=line.strip().split(": ", 2)[-1]) for line in output.splitlines()
            if line.strip().startswith("wasi_tls_aio: connection from")]


class AioContractServer(ContractServer):
    """``tls_server_p3`` (WASI 0.3, ``wasi_tls_aio.start_server``): the server contract, less
    what the asyncio binding does not set. It takes no ``--tls`` (it accepts TLS 1.2 and 1.3;
    the peer's client pins the case's version) and has no optional client certificates
    (``n/a``). It refuses an SNI no identity is valid for where the 0.2 example falls back to
    its first identity, so a case with one certificate fixes it (``--identity server``) and
    only a case with a second one lets it choose by SNI. It prints no ``client=`` (the client
    certificate's subject is the host's fact), ends a line ``#N closed`` or ``#N connection
    error: ...``, and its failed handshakes are the binding's lines."""

    abilities = ContractServer.abilities - {"pin-version", "client-auth-optional"}

    def args(self, spec: ServerSpec, port: int) -> list[str]:
        args = [str(port), "--count", "0", "--mode", MODES[spec.behaviour], "--client-auth", spec.client_auth]
        if spec.sni_cert is None:
            args += ["--identity", self.identity_names[0]]
        if spec.alpn:
            args += ["--alpn", ",".join(spec.alpn)]
        return args

    end_errors = ("connection error:",)
    prints_client = False

    def parse(self, output: str) -> list[Seen]:
        return super().parse(output) + _binding_failures(output)


def _excerpt(text: str, limit: int = 300) -> str:
    flat = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return (flat if len(flat) <= limit else "..." + flat[-limit:]) or "(nothing)"


# --- the guests --------------------------------------------------------------------------


@dataclass(frozen=True)
class Guest:
    """A guest of the matrix: a component and the adapter that drives it."""

    name: str
    role: str  # "client" or "server"
    wasi: str  # "0.2" or "0.3"
    toolchain: str
    api: str  # the TLS interface it uses
    source: Callable[[], Path]  # the component (built on first use)
    client: ClientAdapter | None = None
    server: ServerAdapter | None = None
    features: frozenset[str] | None = None  # only these features (None: every feature)

    @property
    def upstream(self) -> bool:
        """Uses only upstream interfaces, so the wasmtime CLI can run it too."""
        return self.api.startswith("wasi:tls@")

    @property
    def adapter_abilities(self) -> frozenset[str]:
        adapter = self.client if self.role == "client" else self.server
        assert adapter is not None
        return adapter.abilities


COMPONENTIZE_PY = f"componentize-py {installed_version('componentize-py') if installed_version('componentize-py') != 'unknown' else examples.COMPONENTIZE_PY.split('==')[1]}"
PROJECT_API = "wasi-tls-host:tls"
UPSTREAM_02 = "wasi:tls@0.2.0-draft"
USER_CONTRACT = "the guest contract"
HTTPS_GET_FEATURES = frozenset({"handshake", "cert-expired", "cert-wrong-host", "cert-unknown-ca", "group-x25519", "group-p-256",
                                "group-p-384", "sig-ecdsa-p384", "sig-rsa-pss", "sig-ed25519"})


def _example(name: str) -> Callable[[], Path]:
    return lambda: examples.build(name)


def builtin_guests() -> list[Guest]:
    """The project's example guests that speak TLS: the WASI 0.2 ones, then ``WASI_03_GUESTS``.

    The matrix takes its guests from here only; a guest's ``wasi`` decides where it runs
    (``"0.3"``: this host's core runtime, and the wasmtime CLI with ``-Sp3`` when its ``api``
    is upstream; the component runtime says n/a)."""
    return [*_wasi_02_guests(), *WASI_03_GUESTS]


# The hook for WASI 0.3 guests (the 0.3 examples and the upstream-0.3 client, being built on
# branches p3 and tls-p3): append a ``Guest(name, role, "0.3", COMPONENTIZE_PY, api,
# _example(name), client=... or server=...)`` whose adapter follows the guest contract above
# (``ContractClient``/``ContractServer``) or has its own adapter class in this module. An
# upstream-0.3 client names its api ``UPSTREAM_03`` so the wasmtime CLI runs it too.
UPSTREAM_03 = "wasi:tls@0.3.0-draft"
PROJECT_API_03 = "wasi-tls-host:tls (async, WASI 0.3)"
WASI_03_GUESTS: list[Guest] = [
    Guest("https_get_p3", "client", "0.3", COMPONENTIZE_PY, PROJECT_API_03, _example("https_get_p3"), client=AioHttpsGetClient(),
          features=HTTPS_GET_FEATURES),
    Guest("https_get_upstream_p3", "client", "0.3", COMPONENTIZE_PY, UPSTREAM_03, _example("https_get_upstream_p3"),
          client=AioHttpsGetClient(upstream=True), features=HTTPS_GET_FEATURES),
    Guest("tls_echo_server_p3", "server", "0.3", COMPONENTIZE_PY, PROJECT_API_03, _example("tls_echo_server_p3"),
          server=AioEchoServerAdapter()),
    Guest("tls_server_p3", "server", "0.3", COMPONENTIZE_PY, PROJECT_API_03, _example("tls_server_p3"), server=AioContractServer()),
]


def _wasi_02_guests() -> list[Guest]:
    return [
        Guest("tls_client", "client", "0.2", COMPONENTIZE_PY, PROJECT_API, _example("tls_client"), client=ContractClient()),
        Guest("tls_probe", "client", "0.2", COMPONENTIZE_PY, UPSTREAM_02, _example("tls_probe"), client=ProbeClient()),
        Guest("https_get", "client", "0.2", COMPONENTIZE_PY, UPSTREAM_02, _example("https_get"), client=HttpsGetClient(),
              features=HTTPS_GET_FEATURES),
        Guest("tls_server", "server", "0.2", COMPONENTIZE_PY, PROJECT_API, _example("tls_server"), server=ContractServer()),
        Guest("tls_echo_server", "server", "0.2", COMPONENTIZE_PY, PROJECT_API, _example("tls_echo_server"), server=EchoServerAdapter()),
    ]


def user_guest(path: Path, role: str) -> Guest:
    """A user's component following the client or server contract."""
    if role == "client":
        return Guest(path.name, "client", "0.2", "user", USER_CONTRACT, lambda: path, client=ContractClient())
    return Guest(path.name, "server", "0.2", "user", USER_CONTRACT, lambda: path, server=ContractServer())


__all__ = ["Guest", "WASI_03_GUESTS", "builtin_guests", "user_guest", "ContractClient", "ContractServer"]
