"""Costs of knowing which code runs (issue 10), each next to a reference from the same run.

- loading a cached 18 MB componentize-py guest's artifact with authentication (HMAC-SHA256
  over the artifact, then mapping it) against wasmtime's bare ``deserialize_file``, and
  against SHA-256 of the same bytes (the floor of any authentication);
- verifying an Ed25519 module signature over the 18 MB component against SHA-256 of it;
- issuing one attested identity (key pair + certificate) against generating an ECDSA
  P-256 key alone.

Run: python benchmarks/bench_provenance.py   (figures are medians of a few runs)
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from wasmtime.component import Component

from wasi_tls_host import Host, guests
from wasi_tls_host.attestation import AttestationCA, configuration_document
from wasi_tls_host.provenance import CodeEvidence
from wasi_tls_host.provenance import signatures as ws
from wasi_tls_host.wasi.context import WasiConfig


def median_ms(fn: Callable[[], object], runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    wasm = guests.build("https_get").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(cache_dir=Path(tmp), runtime="component")  # one artifact file (the core runtime writes one per module)
        host.load(wasm)
        key = host.cache.key(wasm)
        artifact = Path(tmp) / f"{key}.cwasm"
        size = artifact.stat().st_size / 1e6
        authenticated = median_ms(lambda: host.cache._load_artifact(key))
        bare = median_ms(lambda: Component.deserialize_file(host.engine, str(artifact)))
        data = artifact.read_bytes()
        floor = median_ms(lambda: hashlib.sha256(data).digest())
    print(f"cached artifact ({size:.1f} MB): authenticated load {authenticated:.1f} ms; "
          f"reference: bare deserialize_file {bare:.1f} ms, SHA-256 of the artifact {floor:.1f} ms")

    signer = Ed25519PrivateKey.generate()
    signed, _ = ws.sign(wasm, signer)
    verify = median_ms(lambda: ws.verify(signed, [signer.public_key()]))
    hashed = median_ms(lambda: hashlib.sha256(signed).digest())
    print(f"module signature verify ({len(signed) / 1e6:.1f} MB component): {verify:.1f} ms; reference: SHA-256 of it {hashed:.1f} ms")

    ca_key = ec.generate_private_key(ec.SECP256R1())
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    ca = AttestationCA(ca_cert, ca_key, names=["bench.test"])
    evidence = CodeEvidence.of(wasm)
    document = configuration_document(WasiConfig(args=["guest"]))
    issue = median_ms(lambda: ca.issue(evidence, document), runs=21)
    keygen = median_ms(lambda: ec.generate_private_key(ec.SECP256R1()), runs=21)
    print(f"attested identity issue: {issue:.2f} ms; reference: ECDSA P-256 key generation {keygen:.2f} ms")


if __name__ == "__main__":
    main()
