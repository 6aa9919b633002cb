"""Code-bound identities: the attestation CA certifies each instance's own key with the
component's digest and its grants (Open DICE extension); verifiers and peers check them."""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host import attestation
from wasi_tls_host.provenance import CodeEvidence, CodePolicy, digest
from wasi_tls_host.provenance import signatures as ws
from wasi_tls_host.provenance.dice import Claims
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.wasi.sockets import NetworkPolicy

from conftest import free_port
from tls_server_util import GuestServer

CLI = [sys.executable, "-m", "wasi_tls_host.cli"]
SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA(organization_name="attestation CA")
        self.other = trustme.CA(organization_name="some other CA")
        self.ca_pem = directory / "attest-ca.pem"
        self.ca_key = directory / "attest-ca.key"
        self.ca_pem.write_bytes(self.ca.cert_pem.bytes())
        self.ca_key.write_bytes(self.ca.private_key_pem.bytes())
        self.other_pem = directory / "other-ca.pem"
        self.other_pem.write_bytes(self.other.cert_pem.bytes())

    def attest_ca(self, **options) -> attestation.AttestationCA:
        return attestation.AttestationCA.from_files(self.ca_pem, self.ca_key, **options)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("attest-pki"))


def _evidence(wasm: bytes, signers: tuple[bytes, ...] = ()) -> CodeEvidence:
    return CodeEvidence.of(wasm, signers)


# --- the extension and the verifier (library) ----------------------------------------------


def test_extension_layout_and_decoding(pki) -> None:
    wasm = b"\0asm\x0d\0\x01\0example"
    signer = ws.raw_public_key(SIGNER.public_key())
    document = attestation.configuration_document(WasiConfig(args=["g", "x"], env={"TOKEN": "secret"}))
    cert, key = pki.attest_ca(names=["svc.test", "127.0.0.1"]).issue(_evidence(wasm, (signer,)), document)
    ext = cert.extensions.get_extension_for_oid(attestation.DICE_OID)
    assert not ext.critical and isinstance(ext.value, x509.UnrecognizedExtension)
    der = ext.value.value
    # SEQUENCE, then [0] EXPLICIT OCTET STRING of the 64-byte SHA-512 of the component.
    assert der[0] == 0x30
    body_start = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    assert der[body_start:body_start + 4] == bytes([0xA0, 66, 0x04, 64])
    assert der[body_start + 4:body_start + 68] == hashlib.sha512(wasm).digest()
    claims = attestation.claims_of(cert)
    assert claims.digest == digest(wasm) and claims.code_descriptor == digest(wasm).encode()
    assert claims.configuration_descriptor == document
    assert claims.configuration_hash == hashlib.sha512(document).digest()
    assert claims.authority_hash == hashlib.sha512(signer).digest()
    assert claims.authority_keys == [signer.hex()]
    assert claims.mode == 1 and claims.profile_name == attestation.PROFILE_NAME
    granted = json.loads(document)
    assert granted["args"] == ["g", "x"] and granted["env"] == {"TOKEN": "sha256:" + hashlib.sha256(b"secret").hexdigest()}
    assert b"secret" not in der  # environment values are pinned by hash, not published
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["svc.test"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(hours=24) <= lifetime <= datetime.timedelta(hours=24, minutes=2)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    # Round trip, and a mode written as INTEGER (some encoders) reads the same.
    assert Claims.decode(claims.encode()) == claims
    as_integer = Claims(b"\1" * 64, mode=2).encode().replace(bytes([0xA6, 3, 0x0A, 1, 2]), bytes([0xA6, 3, 0x02, 1, 2]))
    assert Claims.decode(as_integer).mode == 2
    with pytest.raises(ValueError):
        Claims.decode(der[:-1])


def test_verifier_refuses_each_wrong_claim_with_its_own_error(pki) -> None:
    wasm = b"\0asm\x0d\0\x01\0component"
    signer = SIGNER.public_key()
    document = b'{"version":1}'
    cert, _ = pki.attest_ca().issue(_evidence(wasm, (ws.raw_public_key(signer),)), document)
    claims = attestation.verify([cert], pki.ca_pem, expect_code=digest(wasm), expect_config=document, expect_authority=[signer])
    assert claims.digest == digest(wasm)
    attestation.verify(cert.public_bytes(serialization.Encoding.PEM), [pki.ca.cert_pem.bytes()], expect_code=hashlib.sha512(wasm).digest(),
                       expect_config=hashlib.sha512(document).digest())
    cases = [
        (dict(ca=pki.other_pem), attestation.UntrustedIssuer, "not issued by the attestation CA"),
        (dict(now=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)), attestation.Expired, "valid from"),
        (dict(expect_code=digest(b"other")), attestation.CodeMismatch, f"code: expected {digest(b'other')}"),
        (dict(expect_config=b'{"version":2}'), attestation.ConfigurationMismatch, "configuration: expected"),
        (dict(expect_authority=[]), attestation.AuthorityMismatch, "authority: expected none"),
        (dict(expect_authority=[Ed25519PrivateKey.generate().public_key()]), attestation.AuthorityMismatch, "authority: expected"),
    ]
    for options, error, message in cases:
        ca = options.pop("ca", pki.ca_pem)
        with pytest.raises(error, match=message):
            attestation.verify([cert], ca, **options)
    plain = pki.ca.issue_cert("plain.test").cert_chain_pems[0].bytes()
    with pytest.raises(attestation.NotAttested):
        attestation.verify(plain, pki.ca_pem)


def test_attestation_ca_checks(pki, tmp_path) -> None:
    leaf = pki.ca.issue_cert("leaf.test")
    (tmp_path / "leaf.pem").write_bytes(leaf.cert_chain_pems[0].bytes())
    (tmp_path / "leaf.key").write_bytes(leaf.private_key_pem.bytes())
    with pytest.raises(ValueError, match="not a CA"):
        attestation.AttestationCA.from_files(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    with pytest.raises(ValueError, match="does not match"):
        attestation.AttestationCA.from_files(pki.ca_pem, tmp_path / "leaf.key")
    assert attestation.parse_lifetime("90m") == datetime.timedelta(minutes=90)
    assert attestation.parse_lifetime("2") == datetime.timedelta(hours=2)
    # Attestation anchors are read when the configuration is made, not at a handshake.
    with pytest.raises(ValueError, match="cannot read trust anchors"):
        TlsConfig(attest_trust=[tmp_path / "missing.pem"])
    for bad in ("-1h", "inf", "nan", "1e12h", "soon"):
        with pytest.raises(ValueError):
            attestation.parse_lifetime(bad)


def test_an_attested_instance_of_a_component_the_host_did_not_load_is_refused(pki, host, guest_path) -> None:
    """Attestation needs the bytes the host loaded; a component object made elsewhere gets a
    GuestError saying so (and its half-made instance is closed), not an AttributeError."""
    from wasmtime.component import Component

    from wasi_tls_host import GuestError

    foreign = Component(host.engine, guest_path("tls_server").read_bytes())
    with pytest.raises(GuestError, match="an attested identity needs the component's bytes"):
        host.instantiate(foreign, WasiConfig(tls=TlsConfig(attest_ca=pki.attest_ca())))


def test_the_code_hash_of_a_component_loaded_from_a_file_is_of_the_code_loaded(pki, host, guest_path, tmp_path) -> None:
    """Loading from a file leaves the SHA-512 for later (start-up time); when an attested
    instance needs it, it is taken from the file again, and a file changed since the load is
    refused with a GuestError instead of being certified as the code that runs."""
    from wasi_tls_host import GuestError

    wasm = guest_path("tls_server").read_bytes()
    path = tmp_path / "server.wasm"
    path.write_bytes(wasm)
    component = host.load(path)
    evidence = host.evidence(component)
    assert evidence is not None and evidence.code_hash is None
    assert evidence.sha512 == hashlib.sha512(wasm).digest() and evidence.code_hash == evidence.sha512
    changed = Host(cache_dir=tmp_path / "cache")
    component = changed.load(path)
    path.write_bytes(wasm + b"\0")
    with pytest.raises(GuestError, match="changed since it was loaded"):
        changed.instantiate(component, WasiConfig(tls=TlsConfig(attest_ca=pki.attest_ca())))


# --- guests ---------------------------------------------------------------------------------


def _run_attested(host: Host, guest: bytes, tls: TlsConfig, *args: str, env=None) -> dict[str, str]:
    out = bytearray()
    result = host.run(guest, WasiConfig(args=["tls_server", "attested", *args], env=env or {}, stdout=out, tls=tls))
    assert result.exit_code == 0, (result.trap, out)
    return dict(line.split("=", 1) for line in out.decode().splitlines() if line.startswith(("code=", "configuration=", "authority=", "attested=")))


def test_guest_sees_its_own_code_identity_and_configurations_differ(pki, host, guest_path) -> None:
    wasm = guest_path("tls_server").read_bytes()
    tls = TlsConfig(attest_ca=pki.attest_ca(names=["svc.test"]))
    first = _run_attested(host, wasm, tls, env={"A": "1"})
    second = _run_attested(host, wasm, tls, env={"A": "2"})
    own = digest(wasm)
    assert first["code"].startswith(own + " ")  # the guest cannot name another digest
    code_hash = first["code"].split("code-hash=")[1].split()[0]
    assert code_hash == hashlib.sha512(wasm).hexdigest()
    assert second["code"] == first["code"].replace(first["code"].split("config-hash=")[1], second["code"].split("config-hash=")[1])
    assert first["code"].split("config-hash=")[1] != second["code"].split("config-hash=")[1]
    assert first["authority"].startswith("- ")  # unsigned: no authority
    assert json.loads(first["configuration"])["env"]["A"] == "sha256:" + hashlib.sha256(b"1").hexdigest()
    # Without an attestation CA the guest gets access-denied, not a certificate.
    out = bytearray()
    host.run(wasm, WasiConfig(args=["tls_server", "attested"], stdout=out, tls=TlsConfig()))
    assert "attested=error access-denied" in out.decode()


def test_signed_component_carries_its_authority(pki, tmp_path, guest_path) -> None:
    signed, _ = ws.sign(guest_path("tls_server").read_bytes(), SIGNER)
    host = Host(cache_dir=tmp_path, policy=CodePolicy(signers=[SIGNER.public_key()]))
    seen = _run_attested(host, signed, TlsConfig(attest_ca=pki.attest_ca()))
    assert seen["authority"].split()[0] == hashlib.sha512(ws.raw_public_key(SIGNER.public_key())).hexdigest()


def _attested_server(host: Host, component, pki: Pki, *args: str, **tls_options) -> GuestServer:
    tls = TlsConfig(attest_ca=pki.attest_ca(names=["svc.test"]), **tls_options)
    return GuestServer(host, component, free_port(), "--identity", "attested", *args, tls=tls)


def test_real_peers_see_the_attested_certificate(pki, host, guest_path, tmp_path) -> None:
    wasm = guest_path("tls_server").read_bytes()
    server = _attested_server(host, host.load(wasm), pki, "--count", "6", "--mode", "http")
    try:
        # CPython ssl, verifying against the attestation CA like any TLS client.
        ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="svc.test") as tls:
                der = tls.getpeercert(binary_form=True)
                tls.sendall(b"GET / HTTP/1.0\r\nHost: svc.test\r\n\r\n")
                while tls.recv(4096):
                    pass
        claims = attestation.verify(der, pki.ca_pem, expect_code=digest(wasm))
        assert claims.mode == 1
        # openssl s_client verifies the chain and shows the extension's OID.
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername", "svc.test",
                            "-CAfile", str(pki.ca_pem), "-verify_return_error", "-verify_hostname", "svc.test"],
                           input="GET / HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=30)
        assert "Verify return code: 0 (ok)" in r.stdout, r.stdout + r.stderr
        # curl, as a plain HTTPS client.
        r = subprocess.run(["curl", "-sS", "--cacert", str(pki.ca_pem), "--resolve", f"svc.test:{server.port}:127.0.0.1",
                            f"https://svc.test:{server.port}/", "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}"],
                           capture_output=True, text=True, timeout=30)
        assert r.stdout.split()[1] == "0", r.stdout + r.stderr
        # The CLI reads the chain from the live server, too.
        address = f"127.0.0.1:{server.port}"
        r = subprocess.run([*CLI, "inspect-cert", address], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and f"code: {digest(wasm)}" in r.stdout, r.stderr
        document = r.stdout.split("  document: ", 1)[1].splitlines()[0]
        (tmp_path / "granted.json").write_text(document)
        assert json.loads(document)["network"]["listen"] == [f"127.0.0.1:{server.port}"]
        r = subprocess.run([*CLI, "verify-cert", address, "--ca", str(pki.ca_pem), "--expect-code", digest(wasm),
                            "--expect-config", str(tmp_path / "granted.json")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        (tmp_path / "other.json").write_text(document.replace('"dns":false', '"dns":true'))
        r = subprocess.run([*CLI, "verify-cert", address, "--ca", str(pki.ca_pem), "--expect-config", str(tmp_path / "other.json")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "configuration: expected" in r.stderr
    finally:
        server.stop(timeout=5)
    # inspect-cert and verify-cert over the wire would need the server up; over a file:
    pem = tmp_path / "leaf.pem"
    pem.write_bytes(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))
    r = subprocess.run([*CLI, "inspect-cert", str(pem)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"code: {digest(wasm)}" in r.stdout and "mode: normal" in r.stdout, r.stderr
    r = subprocess.run([*CLI, "verify-cert", str(pem), "--ca", str(pki.ca_pem), "--expect-code", digest(wasm), "--expect-unsigned"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stderr
    r = subprocess.run([*CLI, "verify-cert", str(pem), "--ca", str(pki.other_pem)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not issued by the attestation CA" in r.stderr
    for bad_ca in (tmp_path / "missing.pem", pem.with_name("not-a-cert.pem")):
        if bad_ca.name == "not-a-cert.pem":
            bad_ca.write_text("not a certificate")
        r = subprocess.run([*CLI, "verify-cert", str(pem), "--ca", str(bad_ca)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "--ca:" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_client_guest_pins_the_server_code(pki, host, guest_path, run_guest) -> None:
    wasm = guest_path("tls_server").read_bytes()
    changed = wasm + b"\0\x06\x05extra"  # the same program with one more custom section
    assert digest(changed) != digest(wasm)

    def client(port: int, expect: str) -> dict[str, str]:
        tls = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, attest_trust=[pki.ca_pem])
        r = run_guest("tls_client", "127.0.0.1", str(port), "--server-name", "svc.test", "--expect-code", expect,
                      "--send", "hi", network=NetworkPolicy().allow_connect("127.0.0.1:*"), tls=tls)
        return dict(line.split("=", 1) for line in r.out.splitlines() if "=" in line)

    for component, expect_ok in ((wasm, True), (changed, False)):
        server = _attested_server(host, host.load(component), pki, "--count", "1")
        try:
            seen = client(server.port, digest(wasm))
        finally:
            server.stop(timeout=5)
        assert seen["server-code"] == digest(component)
        if expect_ok:
            assert seen["verification"] == "ok" and seen["reply"] == "hi", seen
        else:
            assert seen["verification"].startswith("code-mismatch:"), seen
            assert digest(wasm) in seen["verification"] and digest(changed) in seen["verification"]


def test_expect_peer_code_needs_an_attestation_anchor(pki, host, guest_path, run_guest) -> None:
    wasm = guest_path("tls_server").read_bytes()
    server = _attested_server(host, host.load(wasm), pki, "--count", "1")
    try:
        # Trusted for TLS, but not for code claims: the claim is not relied on.
        tls = TlsConfig(trust=[pki.ca_pem], use_system_roots=False)
        r = run_guest("tls_client", "127.0.0.1", str(server.port), "--server-name", "svc.test", "--expect-code", digest(wasm),
                      network=NetworkPolicy().allow_connect("127.0.0.1:*"), tls=tls)
    finally:
        server.stop(timeout=5)
    assert "verification=code-mismatch: no attestation CA is trusted" in r.out, r.out


def test_mutual_tls_between_attested_guests_and_no_attested_key_reaches_a_guest(pki, host, guest_path, run_guest) -> None:
    """Both sides present their attested identity; the server requires the client's code;
    every value returned to either guest is searched for both attested keys."""
    from wasi_tls_host.runtime.binding import OUTGOING_VALUE_HOOKS
    from tls_server_util import KeyAudit

    server_wasm = guest_path("tls_server").read_bytes()
    client_wasm = guest_path("tls_client").read_bytes()
    audit = KeyAudit(recorded=[])
    OUTGOING_VALUE_HOOKS.append(audit.hook)
    try:
        server = _attested_server(host, host.load(server_wasm), pki, "--count", "2", "--expect-code", digest(client_wasm),
                                  client_ca=[pki.ca_pem], attest_trust=[pki.ca_pem])
        try:
            tls = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, attest_ca=pki.attest_ca(names=["client.test"]), attest_trust=[pki.ca_pem])
            out = bytearray()
            config = WasiConfig(args=["tls_client", "127.0.0.1", str(server.port), "--server-name", "svc.test", "--identity", "attested",
                                      "--expect-code", digest(server_wasm), "--send", "both attested"],
                                stdout=out, network=NetworkPolicy().allow_connect("127.0.0.1:*"), tls=tls)
            with host.instantiate(client_wasm, config) as client:
                assert client.run().exit_code == 0, out.decode()
                client_key = client.ctx.attestation.identity().key
            seen = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
            assert seen["verification"] == "ok" and seen["reply"] == "both attested", seen
            line = server.wait_for("#1 ")
            assert f"code={digest(client_wasm)}" in line, line
            # A client certificate from the same CA without code claims: TLS accepts it,
            # the code check does not.
            from wasi_tls_host.tls import PrivateIdentity

            leaf = pki.ca.issue_cert("plain.client")
            plain_identity = PrivateIdentity.from_pem("plain", leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())
            plain = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, identities=[plain_identity])
            r = run_guest("tls_client", "127.0.0.1", str(server.port), "--server-name", "svc.test", "--identity", "plain", "--send", "x",
                          network=NetworkPolicy().allow_connect("127.0.0.1:*"), tls=plain)
            assert "reply=x" not in r.out
            refused = server.wait_for("#2 ")
            assert "code-mismatch" in refused and "no code claims" in refused, server.out
        finally:
            server.stop(timeout=5)
        server_key = server.guest.ctx.attestation.identity().key
    finally:
        OUTGOING_VALUE_HOOKS.remove(audit.hook)
    audit.add_key("attested server", server_key)
    audit.add_key("attested client", client_key)
    assert audit.values_seen > 50 and audit.search_recorded() == []
    planted = server_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert audit.search([b"x" + planted])  # the search really looks


def test_cli_run_with_attest_ca_and_debug_mode(pki, guest_path) -> None:
    guest = guest_path("tls_server")

    def run(*options: str) -> dict[str, str]:
        r = subprocess.run([*CLI, "run", "--attest-ca", f"{pki.ca_pem},{pki.ca_key}", "--attest-name", "cli.test",
                            "--attest-lifetime", "2h", *options, str(guest), "attested"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    normal = run()
    assert normal["attested"].startswith("attested subject=CN=cli.test names=cli.test"), normal
    assert normal["code"].startswith(digest(guest.read_bytes()))
    assert normal["authority"].endswith("debug=False")
    assert run("--inherit-env")["authority"].endswith("debug=True")  # isolation weakened: said so
    r = subprocess.run([*CLI, "run", "--attest-ca", str(pki.ca_pem), str(guest), "attested"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "CA.pem,CA.key" in r.stderr


@pytest.mark.parametrize("wasi", ["0.3", "0.2"])
def test_demo_attest(wasi: str) -> None:
    r = subprocess.run([*CLI, "demo", "attest", "--wasi", wasi], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"({'WASI 0.3, asyncio' if wasi == '0.3' else 'WASI 0.2'})" in r.stdout
    assert "client verdict: ok" in r.stdout and "client verdict: code-mismatch" in r.stdout
    assert "result: OK" in r.stdout


def test_an_instance_outliving_its_certificate_gets_a_fresh_one(pki) -> None:
    from wasi_tls_host.tls.attested import InstanceAttestation
    from wasi_tls_host.tls import TlsConfig as Tls

    ca = pki.attest_ca(lifetime=datetime.timedelta(seconds=50))  # renewed in its last 5 s
    config = WasiConfig(tls=Tls(attest_ca=ca))
    source = InstanceAttestation(ca, _evidence(b"\0asm\x0d\0\x01\0x"), config)
    first = source.identity()
    assert source.identity() is first
    first.chain[0] = ca.issue(source.evidence, source.document, now=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=48))[0]
    renewed = source.identity()
    assert renewed is not first and renewed.key is not first.key
    assert attestation.claims_of(renewed.chain[0]) == attestation.claims_of(first.chain[0])
