"""``wasi-tls-host demo``: a self-contained run of the product on a machine with no network.

It makes a throwaway certificate authority and a certificate for ``localhost``, starts a
local HTTPS server (CPython ``ssl``) on 127.0.0.1, builds the example guest if needed, and
runs it through this host with a network policy that allows only that server and a trust
store that holds only the throwaway CA. Then it shows what happened on both sides.

The guest is ``https_get_p3`` (WASI 0.3, written with the asyncio binding ``wasi_tls_aio``);
``demo --wasi 0.2`` runs the WASI 0.2 ``https_get`` instead.
"""

from __future__ import annotations

import datetime
import hashlib
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..host import Host
from ..tls.config import TlsConfig
from ..tls.engine import HandshakeInfo
from ..wasi.context import WasiConfig
from ..wasi.sockets import NetworkPolicy

BODY = b"Hello from a local HTTPS server! The guest never saw a private key.\n" * 64
GUESTS = {"0.3": "https_get_p3", "0.2": "https_get"}  # the demo's guest per WASI version


def make_ca(common_name: str, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A throwaway self-signed CA valid for a day from ``now``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_ca_and_leaf(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a localhost certificate signed by it (written as PEM files).

    Written with ``cryptography`` rather than trustme so that the demo needs only the
    product's own dependencies.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert, ca_key = make_ca("wasi-tls-host demo CA", now)
    ca_name = ca_cert.subject
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "localhost.pem", directory / "localhost.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


class DemoServer:
    """Serves one HTTPS response per connection until stopped (CPython ssl, one thread)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["http/1.1"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="demo-https", daemon=True)

    def __enter__(self) -> DemoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            raw.settimeout(10)
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    self.requests.append(request.split(b"\r\n", 1)[0].decode("latin-1"))
                    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(BODY)}\r\nConnection: close\r\n\r\n"
                    tls.sendall(head.encode() + BODY)
                    tls.unwrap()  # close_notify: a clean end for the guest
            except (OSError, ssl.SSLError):
                raw.close()


def _describe_certificate(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = ", ".join(str(n.value) for n in sans)
    except x509.ExtensionNotFound:
        names = "(none)"
    return [
        f"subject:     {cert.subject.rfc4514_string()}",
        f"issuer:      {cert.issuer.rfc4514_string()}",
        f"names:       {names}",
        f"valid until: {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        f"sha256:      {cert.fingerprint(hashes.SHA256()).hex(':')}",
    ]


def _guest_args(wasi: str, port: int) -> list[str]:
    return [GUESTS[wasi], f"https://localhost:{port}/hello.txt"]  # both guests take the URL


def _fetched(stdout: bytes) -> bool:
    """Whether the guest printed the digest of the whole body (its last bytes came with the
    server's close_notify: a truncated body is an error in both guests)."""
    return f"body-sha256: {hashlib.sha256(BODY).hexdigest()}".encode() in stdout.splitlines()


def run_demo(out: TextIO = sys.stdout, wasi: str = "0.3") -> int:
    from .. import guests

    kind = "WASI 0.3, asyncio" if wasi == "0.3" else "WASI 0.2"
    print(f"wasi-tls-host demo: a WebAssembly guest ({kind}) fetches https://localhost over TLS done by the host.\n", file=out)
    guest = guests.build(GUESTS[wasi], quiet=False)
    handshakes: list[HandshakeInfo] = []
    with tempfile.TemporaryDirectory(prefix="wasi-tls-host-demo-") as tmp:
        ca, cert, key = make_ca_and_leaf(Path(tmp))
        with DemoServer(cert, key) as server:
            args = _guest_args(wasi, server.port)
            print(f"server:  CPython ssl on 127.0.0.1:{server.port}, certificate for 'localhost' from a throwaway CA", file=out)
            print(f"policy:  the guest may connect to 127.0.0.1:{server.port} and resolve names; nothing else", file=out)
            print("trust:   only the throwaway CA (no system roots)", file=out)
            print(f"guest:   {guest.name} {' '.join(args[1:])}\n", file=out)
            stdout, stderr = bytearray(), bytearray()
            config = WasiConfig(
                args=args,
                stdout=stdout,
                stderr=stderr,
                network=NetworkPolicy().allow_connect(f"127.0.0.1:{server.port}").allow_connect(f"[::1]:{server.port}").allow_dns(),
                tls=TlsConfig(trust=[ca], use_system_roots=False, on_handshake=handshakes.append),
            )
            started = time.perf_counter()
            host = Host()
            result = host.run(guest, config)
            elapsed = time.perf_counter() - started
    print("--- guest output " + "-" * 40, file=out)
    out.write(stdout.decode(errors="replace"))
    if stderr:
        out.write(stderr.decode(errors="replace"))
    print("-" * 57 + "\n", file=out)
    for info in handshakes:
        print(f"handshake: {info.protocol_name}, cipher {info.cipher}, server name {info.server_name!r}", file=out)
        if info.peer_chain_der:
            print("peer certificate (verified by the host):", file=out)
            for line in _describe_certificate(info.peer_chain_der[0]):
                print(f"  {line}", file=out)
    print(f"server saw: {', '.join(server.requests) or 'no request'}", file=out)
    print(f"server sent: {len(BODY)} bytes of body, sha256 {hashlib.sha256(BODY).hexdigest()}", file=out)
    ok = result.exit_code == 0 and handshakes and _fetched(bytes(stdout))
    first = " and compiling the component once (cached for later runs)" if host.cache.compiled else ""
    print(f"\nresult: {'OK' if ok else 'FAILED'} (guest exit status {result.exit_code}, {elapsed * 1000:.0f} ms including start-up{first})", file=out)
    if result.trap_cause:
        print(f"trap: {result.trap_cause}", file=out)
    if wasi == "0.3":
        print("(the WASI 0.2 guest: wasi-tls-host demo --wasi 0.2)", file=out)
    return 0 if ok else 1
