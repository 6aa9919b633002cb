"""Check a guest TLS server against Mozilla's TLS recommendations (not a test).

Starts the ``tls_server`` guest in its own process with a throwaway CA and a 90-day ECDSA
certificate for ``a.test`` (so certificate lifetime and type do not distract), under the
chosen ``--profile`` (default: the host's default), then:

- runs sslyze's ``--mozilla_config`` check if sslyze is available (``--sslyze PATH``, or
  ``sslyze`` on PATH; it is not a project dependency: its pinned cryptography conflicts
  with pyOpenSSL's, so install it in a venv of its own), and
- always enumerates with ``openssl s_client``: every TLS 1.2 suite OpenSSL knows and a list
  of groups, one connection each, printing what the server accepted.

Run: python benchmarks/mozilla_check.py [--profile intermediate] [--mozilla intermediate]
     [--sslyze /path/to/venv/bin/sslyze]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
NAME = "a.test"
GROUPS = ["X25519", "P-256", "P-384", "P-521", "X448", "ffdhe2048", "ffdhe3072", "X25519MLKEM768"]


def serve(port: int, cert: str, key: str, profile: str | None) -> None:
    from wasi_tls_host import Host, WasiConfig, guests
    from wasi_tls_host.tls import TlsConfig
    from wasi_tls_host.tls.identities import PrivateIdentity
    from wasi_tls_host.wasi.sockets import NetworkPolicy

    identity = PrivateIdentity.from_files("a", cert, key)
    tls = TlsConfig(use_system_roots=False, identities=[identity], **({"profile": profile} if profile else {}))
    config = WasiConfig(args=["tls_server", str(port), "--concurrent", "--count", "0", "--mode", "echo"],
                        stdout="inherit" if os.environ.get("MOZILLA_CHECK_VERBOSE") else None, stderr="inherit", network=NetworkPolicy().allow_listen(f"{HOST}:{port}"), tls=tls)
    host, component = Host(), guests.build("tls_server")
    # Echo mode: in alpn mode, a scanner that closes right after the handshake ends the
    # example server's whole run (issue 12, item 1). Restarted if it ends anyway (counted).
    runs = 0
    while True:
        result = host.run(component, config)
        runs += 1
        print(f"guest server run {runs} ended: {result}; restarting", file=sys.stderr)


def write_pki(cert: Path, key: Path, ca_pem: Path) -> None:
    """A CA and a 90-day ECDSA P-256 leaf for a.test, shaped like a public one (subject CN,
    non-critical SAN), so sslyze's certificate checks judge the TLS settings, not test certs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mozilla_check CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the guest server exited")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the guest server did not start listening")


def s_client_accepts(port: int, ca: str, *args: str) -> bool:
    cmd = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", NAME, "-CAfile", ca, *args]
    r = subprocess.run(cmd, input="", capture_output=True, text=True, timeout=20)
    return "Verify return code: 0 (ok)" in r.stdout and "Cipher is (NONE)" not in r.stdout


def enumerate_with_openssl(port: int, ca: str) -> None:
    suites = subprocess.run(["openssl", "ciphers", "-tls1_2", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"], capture_output=True, text=True).stdout.strip().split(":")
    tls12 = [s for s in suites if not s.startswith("TLS_")]
    accepted = [s for s in tls12 if s_client_accepts(port, ca, "-tls1_2", "-cipher", s + ":@SECLEVEL=0")]
    print(f"openssl s_client: TLS 1.2 suites accepted ({len(accepted)} of {len(tls12)} tried): {', '.join(accepted) or 'none'}")
    for version in ("-tls1", "-tls1_1"):
        print(f"openssl s_client: {version}: {'ACCEPTED' if s_client_accepts(port, ca, version, '-cipher', 'ALL:@SECLEVEL=0') else 'refused'}")
    for version in ("-tls1_2", "-tls1_3"):
        ok = [g for g in GROUPS if s_client_accepts(port, ca, version, "-groups", g)]
        print(f"openssl s_client: groups accepted with {version}: {', '.join(ok) or 'none'} (tried {', '.join(GROUPS)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=None, help="the host's TLS profile for the guest (default: the host default)")
    parser.add_argument("--mozilla", default="intermediate", choices=["modern", "intermediate", "old"], help="the Mozilla configuration sslyze checks against")
    parser.add_argument("--sslyze", default=shutil.which("sslyze"), help="path to the sslyze command")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.serve[2], args.profile)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        cert, key, ca_pem = Path(tmp, "cert.pem"), Path(tmp, "key.pem"), Path(tmp, "ca.pem")
        write_pki(cert, key, ca_pem)
        port = free_port()
        serve_args = [sys.executable, __file__, "--serve", str(port), str(cert), str(key)]
        if args.profile:
            serve_args += ["--profile", args.profile]
        proc = subprocess.Popen(serve_args)
        try:
            wait_listening(port, proc)
            print(f"guest tls_server on {HOST}:{port}, profile {args.profile or '(host default)'}")
            if args.sslyze:
                # --slow_connection: fewer connections at once, so that the example server's
                # restarts (see serve) lose fewer of them.
                r = subprocess.run([args.sslyze, "--slow_connection", f"--certinfo_ca_file={ca_pem}", f"--mozilla_config={args.mozilla}", f"{NAME}:{port}{{{HOST}}}"],
                                   capture_output=True, text=True, timeout=600)
                print(r.stdout[r.stdout.find("COMPLIANCE AGAINST MOZILLA"):] if "COMPLIANCE AGAINST MOZILLA" in r.stdout else r.stdout)
                print(f"sslyze exit status: {r.returncode}")
                if r.stderr.strip():
                    print(r.stderr.strip()[-2000:])
            else:
                print("sslyze not found (pass --sslyze PATH); openssl enumeration only")
            enumerate_with_openssl(port, str(ca_pem))
        finally:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
