"""Helpers for the guest TLS server tests and benchmark.

* ``ServerPki``: trustme CAs and certificates (server certificates for two names, client
  certificates from the trusted client CA and from an untrusted one, an encrypted key), as
  files for openssl/curl and as ``PrivateIdentity`` objects for the host.
* ``GuestServer``: the ``tls_server`` guest running on a thread of this process, with its
  printed lines collected; ``stop()`` waits for it to exit (bounded) and interrupts it if not.
* ``KeyAudit``: the forms a private key can be leaked in, and a walker that searches any
  value a host function returns for them.
* ``AccessLog``: the access-log lines (``wasi_tls_host.access``) written while it is
  installed, found by the client's port.
"""

from __future__ import annotations

import json
import socket
import logging
import re
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.host import RunResult
from wasi_tls_host.runtime.limits import GuestLimits
from wasi_tls_host.runtime.values import Err, Ok, Some, Variant
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.tls.identities import PrivateIdentity
from wasi_tls_host.wasi.sockets import NetworkPolicy

TIMEOUT = 10.0
PASSPHRASE = b"correct horse battery staple"


@dataclass
class ClientCert:
    pem: Path  # key and chain in one file (openssl -cert, curl --cert, ssl load_cert_chain)
    leaf: trustme.LeafCert
    subject_cn: str


class ServerPki:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = trustme.CA()
        self.client_ca = trustme.CA(organization_name="client CA")
        self.rogue_ca = trustme.CA(organization_name="rogue CA")
        self.ca_pem = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.client_ca_pem = self._write("client-ca.pem", self.client_ca.cert_pem.bytes())
        # Two server names with different key types: "a" (ECDSA, key PEM in memory) and "b"
        # (RSA, encrypted key file read with a passphrase).
        self.leaf_a = self.ca.issue_cert("a.test", common_name="a.test")
        self.leaf_b = self.ca.issue_cert("b.test", common_name="b.test", key_type=trustme.KeyType.RSA)
        self.a_chain = self._write("a.pem", b"".join(c.bytes() for c in self.leaf_a.cert_chain_pems))
        self.b_chain = self._write("b.pem", b"".join(c.bytes() for c in self.leaf_b.cert_chain_pems))
        b_key = serialization.load_pem_private_key(self.leaf_b.private_key_pem.bytes(), None)
        self.b_key_encrypted = self._write("b.key", b_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(PASSPHRASE)))
        self.identity_a = PrivateIdentity.from_pem("a", self.a_chain.read_bytes(), self.leaf_a.private_key_pem.bytes())
        self.identity_b = PrivateIdentity.from_files("b", self.b_chain, self.b_key_encrypted, passphrase=PASSPHRASE)
        self.client = self._client(self.client_ca, "alice", "client.pem")
        self.rogue_client = self._client(self.rogue_ca, "mallory", "rogue-client.pem")
        # The guest client's identity for mutual TLS, from cryptography objects.
        self.identity_alice = PrivateIdentity(
            "alice", [_cert(self.client.leaf)],
            serialization.load_pem_private_key(self.client.leaf.private_key_pem.bytes(), None))  # type: ignore[arg-type]
        self.identity_mallory = PrivateIdentity.from_pem("mallory", self.rogue_client.leaf.cert_chain_pems[0].bytes(), self.rogue_client.leaf.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def _client(self, ca: trustme.CA, name: str, filename: str) -> ClientCert:
        leaf = ca.issue_cert(f"{name}@example.org", common_name=name)
        return ClientCert(self._write(filename, leaf.private_key_and_cert_chain_pem.bytes()), leaf, name)

    def server_config(self, *, client_ca: bool = True, identities: list[PrivateIdentity] | None = None) -> TlsConfig:
        return TlsConfig(
            trust=[self.ca_pem], use_system_roots=False,
            identities=[self.identity_a, self.identity_b] if identities is None else identities,
            client_ca=[self.client_ca_pem] if client_ca else [],
        )

    def private_keys(self) -> list[Any]:
        return [i.key for i in (self.identity_a, self.identity_b, self.identity_alice, self.identity_mallory)]


def _cert(leaf: trustme.LeafCert) -> Any:
    from cryptography import x509

    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())


# --- the guest server ------------------------------------------------------------------


class GuestThread:
    """A guest instance run on a thread of this process; ``out`` and ``lines`` are what it has
    printed so far, ``_changed`` is notified on each write and when the guest ends."""

    def __init__(self, host: Host, component: Any, args: list[str], *, network: NetworkPolicy, tls: TlsConfig, name: str | None = None,
                 limits: GuestLimits | None = None) -> None:
        self._out = bytearray()
        self._err = bytearray()
        self._changed = threading.Condition()
        config = WasiConfig(args=args, stdout=self._write, stderr=self._err.extend, network=network, tls=tls,
                            limits=limits or GuestLimits())
        self.guest = host.instantiate(component, config)
        self.result: RunResult | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _printed(self) -> None:
        """Called (holding ``_changed``) after each write; for subclasses."""

    def _write(self, data: bytes) -> None:
        with self._changed:
            self._out.extend(data)
            self._printed()
            self._changed.notify_all()

    def _run(self) -> None:
        try:
            self.result = self.guest.run()
        finally:
            self.guest.close()
            with self._changed:
                self._changed.notify_all()

    @property
    def out(self) -> str:
        return self._out.decode(errors="replace")

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


class GuestServer(GuestThread):
    """``tls_server PORT ARGS...`` on a thread; ``lines`` are its printed lines."""

    def __init__(self, host: Host, component: Any, port: int, *args: str, tls: TlsConfig) -> None:
        self.port = port
        super().__init__(
            host, component, ["tls_server", str(port), *args],
            network=NetworkPolicy().allow_listen(f"127.0.0.1:{port}"), tls=tls, name=f"guest-server-{port}",
        )
        try:
            self.wait_for("listening on")
        except AssertionError:
            self.stop()
            raise

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        """The first printed line containing ``text`` (waiting for it, bounded)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (not self.thread.is_alive() and self.result is not None):
                    raise AssertionError(f"guest server never printed {text!r}; output:\n{self.out}{self._err.decode(errors='replace')}")
                self._changed.wait(min(left, 0.2))

    def stop(self, timeout: float = TIMEOUT) -> RunResult | None:
        """Wait for the guest to finish its --count; interrupt it if it does not."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.guest.interrupt("test teardown")
            self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "guest server thread did not stop"
        return self.result


# --- the key audit ---------------------------------------------------------------------


@dataclass
class KeyAudit:
    """Every encoding of the given private keys that a leak could take, and a search."""

    secrets: list[tuple[str, bytes]] = field(default_factory=list)
    values_seen: int = 0
    functions_seen: set[str] = field(default_factory=set)
    findings: list[str] = field(default_factory=list)
    # Values kept for a later search, for keys made while the guest runs (attested
    # identities): None keeps nothing.
    recorded: list[tuple[str, Any]] | None = None

    def add_key(self, label: str, key: Any) -> None:
        enc, fmt = serialization.Encoding, serialization.PrivateFormat
        forms = {
            "pkcs8-der": key.private_bytes(enc.DER, fmt.PKCS8, serialization.NoEncryption()),
            "traditional-der": key.private_bytes(enc.DER, fmt.TraditionalOpenSSL, serialization.NoEncryption()),
            "pkcs8-pem": key.private_bytes(enc.PEM, fmt.PKCS8, serialization.NoEncryption()),
            "traditional-pem": key.private_bytes(enc.PEM, fmt.TraditionalOpenSSL, serialization.NoEncryption()),
        }
        for name in ("pkcs8-pem", "traditional-pem"):
            # A PEM body's first base64 line: catches re-wrapped or partial PEM too.
            forms[name + "-line"] = forms[name].splitlines()[1]
        if isinstance(key, ec.EllipticCurvePrivateKey):
            size = (key.curve.key_size + 7) // 8
            forms["ec-scalar"] = key.private_numbers().private_value.to_bytes(size, "big")
        elif isinstance(key, rsa.RSAPrivateKey):
            numbers = key.private_numbers()
            for part in ("d", "p", "q"):
                value = getattr(numbers, part)
                forms[f"rsa-{part}"] = value.to_bytes((value.bit_length() + 7) // 8, "big")
        for form, data in list(forms.items()):
            self.secrets.append((f"{label} {form}", data))
            if not form.endswith("pem") and not form.endswith("line"):
                self.secrets.append((f"{label} {form} (hex)", data.hex().encode()))

    def add_file(self, label: str, data: bytes) -> None:
        self.secrets.append((label, data))

    def hook(self, function: str, value: Any) -> None:
        if self.recorded is not None:
            self.recorded.append((function, value))
        self.values_seen += 1
        self.functions_seen.add(function)
        for where in self.search(value):
            self.findings.append(f"{function} returned {where}")

    def search_recorded(self) -> list[str]:
        """Findings among the recorded values, for keys added after they were seen."""
        return [f"{function} returned {where}" for function, value in self.recorded or [] for where in self.search(value)]

    def search(self, value: Any, depth: int = 0) -> list[str]:
        """Names of the secrets found anywhere inside ``value``."""
        found: list[str] = []
        for blob in self._blobs(value, depth):
            for label, secret in self.secrets:
                if secret in blob:
                    found.append(label)
        return found

    def _blobs(self, value: Any, depth: int) -> list[bytes]:
        if depth > 20:
            return [repr(value).encode()]
        if isinstance(value, (bytes, bytearray, memoryview)):
            return [bytes(value)]
        if isinstance(value, str):
            return [value.encode("utf-8", "surrogatepass")]
        if isinstance(value, (int, float, bool)) or value is None:
            return []
        if isinstance(value, dict):
            return [b for k, v in value.items() for item in (k, v) for b in self._blobs(item, depth + 1)]
        if isinstance(value, (list, tuple, set, frozenset)):
            return [b for item in value for b in self._blobs(item, depth + 1)]
        # Resources and other objects reach the guest as handles; their repr is what
        # could leak through a careless __repr__ or a payload.
        blobs = [repr(value).encode("utf-8", "replace")]
        if isinstance(value, (Ok, Err, Some)):
            blobs += self._blobs(value.value, depth + 1)
        elif isinstance(value, Variant):
            blobs += self._blobs(value.payload, depth + 1)
        return blobs


# --- the access log ------------------------------------------------------------------------


class AccessLog(logging.Handler):
    """``with AccessLog() as log``: the access-log lines written meanwhile (one per accepted
    connection, when it closes), as the CLI's ``--access-log`` would print them."""

    _FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._logger = logging.getLogger("wasi_tls_host.access")
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.lines.append(record.getMessage())
            self._changed.notify_all()

    def __enter__(self) -> AccessLog:
        self._level = self._logger.level
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def of(self, client_port: int, timeout: float = TIMEOUT) -> dict[str, str]:
        """The fields of the line for the connection from 127.0.0.1:``client_port`` (waiting
        for it, bounded); quoted values unquoted."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if f"peer=127.0.0.1:{client_port} " in line:
                        return {k: json.loads(v) if v.startswith('"') else v for k, v in self._FIELD.findall(line)}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no access-log line for client port {client_port}; lines:\n" + "\n".join(self.lines))
                self._changed.wait(left)


# --- clients and the guest's output, shared by the server test files ---------------------


def fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def connection_line(server: GuestServer, number: int = 1) -> dict[str, str]:
    line = server.wait_for(f"#{number} ")
    head, _, client = line.partition(" client=")
    facts = dict(part.split("=", 1) for part in head.split() if "=" in part)
    facts["client"] = client
    facts["line"] = line
    return facts


def s_client(port: int, *args: str, pki: ServerPki, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """``openssl s_client`` that waits for the server to close (-ign_eof), bounded."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki.ca_pem),
           "-verify_return_error", "-ign_eof", *args]
    return subprocess.run(cmd, input=stdin.decode(), capture_output=True, text=True, timeout=TIMEOUT)


def ssl_client_context(pki: ServerPki, cert: Path | None = None, *, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    if cert is not None:
        ctx.load_cert_chain(str(cert))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


# --- raw first flights and what a server answers them with --------------------------------


def ssl_echo(port: int, ctx: ssl.SSLContext, name: str | None, payload: bytes = b"ping") -> tuple[bytes, dict[str, Any], str | None]:
    """Connect (SNI ``name``, none if None), send ``payload``, read it back, close with
    close_notify: (what came back, the server's certificate, the TLS version)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                got += chunk
            cert = tls.getpeercert()
            version = tls.version()
            tls.unwrap()
    return got, cert, version


def read_to_end(sock: socket.socket) -> bytes:
    """What the server sends until it closes. A server that closes with part of our flight
    unread makes its kernel answer the rest with a reset, which ends the reading too (what
    arrived before it is still read first)."""
    reply = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return reply
        if not chunk:
            return reply
        reply += chunk


def alert_after(port: int, data: bytes) -> bytes:
    """Everything the server sends after ``data``, until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        try:
            s.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            pass  # refused before we finished sending: what it said is still to be read
        return read_to_end(s)


def cpython_hello(name: str = "a.test", alpn: list[str] | None = None) -> bytes:
    """CPython's first flight for ``name`` (one record), made without a socket."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("a handshake without a server cannot complete")


def with_record_version(flight: bytes, version: int) -> bytes:
    return flight[:1] + version.to_bytes(2, "big") + flight[3:]


def server_hello_after(port: int, data: bytes) -> bytes:
    """The server's first record after ``data`` (its header and body), or b"" if it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(data)
        reply = b""
        while len(reply) < 5 or len(reply) < 5 + int.from_bytes(reply[3:5], "big"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


def p3_server_fixtures(directory: str) -> tuple[Any, Any]:
    """A 0.3 server test module's module-scoped ``pki`` (a ``ServerPki`` in a directory of its
    own) and ``p3_host`` (a Host on the core runtime):
    ``pki, p3_host = p3_server_fixtures("name")``."""

    @pytest.fixture(scope="module", name="pki")
    def pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPki:
        return ServerPki(tmp_path_factory.mktemp(directory))

    @pytest.fixture(scope="module", name="p3_host")
    def p3_host() -> Iterator[Host]:
        with Host(runtime="core") as host:
            yield host

    return pki, p3_host
