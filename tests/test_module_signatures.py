"""Module signatures in the tool-conventions format (wasmsign2's), checked against byte
layouts written out by hand from Signatures.md, not only against our own encoder."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.provenance import CodePolicy, SignatureError
from wasi_tls_host.provenance import signatures as ws

CLI = [sys.executable, "-m", "wasi_tls_host.cli"]
KEY_A = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_B = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))

HEADER = bytes.fromhex("0061736d01000000")
# type section: one func type () -> ()
TYPE = bytes.fromhex("01" "04" "01" "60" "00" "00")
# function section: one function of type 0; code section: one empty body
FUNC = bytes.fromhex("03" "02" "01" "00")
CODE = bytes.fromhex("0a" "04" "01" "02" "00" "0b")
# a custom section "note" with payload "hi"
NOTE = bytes.fromhex("00" "07" "04") + b"note" + b"hi"
MODULE = HEADER + TYPE + FUNC + CODE + NOTE
DELIM_1 = bytes.fromhex("00" "24" "13") + b"signature_delimiter" + bytes(range(16))
DELIM_2 = bytes.fromhex("00" "24" "13") + b"signature_delimiter" + bytes(range(16, 32))


def ed25519(key: Ed25519PrivateKey, hashes: bytes) -> bytes:
    return key.sign(b"wasmsig" + b"\x01\x01\x01" + hashes)


def test_varuint32() -> None:
    assert ws.encode_varuint32(0) == b"\x00" and ws.encode_varuint32(127) == b"\x7f"
    assert ws.encode_varuint32(300) == b"\xac\x02" and ws.encode_varuint32(2**32 - 1) == b"\xff\xff\xff\xff\x0f"
    assert ws.decode_varuint32(b"\x00\xac\x02", 1) == (300, 3)
    for bad in (b"\x80", b"\xff\xff\xff\xff\x7f", b"\x80\x80\x80\x80\x80\x00"):
        with pytest.raises(SignatureError):
            ws.decode_varuint32(bad, 0)


def test_whole_module_signature_matches_the_documented_layout() -> None:
    h = hashlib.sha256(TYPE + FUNC + CODE + NOTE).digest()
    payload = (
        b"\x01" b"\x01" b"\x01"      # spec_version, content_type, hash_fn
        + b"\x01"                    # signed_hashes_count
        + b"\x01" + h                # hashes_count, hashes
        + b"\x01"                    # signature_count
        + b"\x00"                    # key_id_len
        + b"\x01"                    # Ed25519
        + b"\x40" + ed25519(KEY_A, h)
    )
    assert len(payload) == 105
    expected = HEADER + b"\x00" + bytes([1 + 9 + 105]) + b"\x09signature" + payload + TYPE + FUNC + CODE + NOTE
    signed, detached = ws.sign(MODULE, KEY_A)
    assert signed == expected and detached == payload
    assert ws.verify(expected, [KEY_A.public_key()]).signers == [KEY_A.public_key()]
    # Detached: the module stays as it was; the same bytes verify it from outside.
    unchanged, alone = ws.sign(MODULE, KEY_A, detached=True)
    assert unchanged == MODULE and alone == payload
    assert ws.verify(MODULE, [KEY_A.public_key()], payload).parts_total == 1
    assert ws.split_signature(expected) == (MODULE, payload)
    assert ws.embed_signature(MODULE, payload) == expected


def test_delimited_parts_two_signers_and_partial_verification() -> None:
    module = HEADER + TYPE + FUNC + CODE + DELIM_1 + NOTE + DELIM_2
    h1 = hashlib.sha256(TYPE + FUNC + CODE + DELIM_1).digest()
    h2 = hashlib.sha256(TYPE + FUNC + CODE + DELIM_1 + NOTE + DELIM_2).digest()
    payload = (
        b"\x01\x01\x01" + b"\x01"
        + b"\x02" + h1 + h2
        + b"\x02"
        + b"\x05first" + b"\x01" + b"\x40" + ed25519(KEY_A, h1 + h2)
        + b"\x06second" + b"\x01" + b"\x40" + ed25519(KEY_B, h1 + h2)
    )
    data = ws.SignatureData.decode(payload)
    assert [e.hashes for e in data.signed_hashes] == [[h1, h2]]
    assert [(s.key_id, s.algorithm) for s in data.signed_hashes[0].signatures] == [(b"first", 1), (b"second", 1)]
    assert data.encode() == payload
    # Our signer produces the same bytes: second signature joins the first hash set.
    once, _ = ws.sign(module, KEY_A, key_id=b"first")
    twice, _ = ws.sign(once, KEY_B, key_id=b"second")
    assert ws.split_signature(twice)[1] == payload
    both = [KEY_A.public_key(), KEY_B.public_key()]
    assert len(ws.verify(twice, both, require_all=True).signers) == 2
    # Sections appended after signing: the whole module no longer verifies, its signed
    # prefix does when asked for explicitly (partial verification).
    extended = twice + NOTE + DELIM_1
    with pytest.raises(SignatureError, match="only some parts"):
        ws.verify(extended, [KEY_A.public_key()])
    assert ws.verify(extended, [KEY_A.public_key()], parts=2).parts_verified == 2
    # A change inside a signed part fails even partial verification of that part.
    changed = HEADER + TYPE + FUNC + CODE + DELIM_1 + NOTE.replace(b"hi", b"ho") + DELIM_2
    changed = ws.embed_signature(changed, payload)
    assert ws.verify(changed, [KEY_A.public_key()], parts=1).parts_verified == 1
    with pytest.raises(SignatureError, match="changed after signing"):
        ws.verify(changed, [KEY_A.public_key()])


def test_partial_signature_and_extension_delimiter() -> None:
    module = ws.add_delimiter(MODULE)
    _, sections = ws.parse_module(module)
    assert sections[-1].is_delimiter and len(sections[-1].payload) == 16
    assert ws.add_delimiter(module) == module
    # Sections added after a closing delimiter: the original part still verifies alone.
    signed, _ = ws.sign(module, KEY_A)
    grown = signed + NOTE
    assert ws.verify(grown, [KEY_A.public_key()], parts=1).parts_total == 2
    # A signer may sign only the first part: refused by default, accepted for that part.
    partial, _ = ws.sign(HEADER + TYPE + DELIM_1 + NOTE, KEY_A, parts=1)
    with pytest.raises(SignatureError, match="only some parts"):
        ws.verify(partial, [KEY_A.public_key()])
    assert ws.verify(partial, [KEY_A.public_key()], parts=1).parts_verified == 1


def test_a_module_changed_by_one_byte_anywhere_is_refused() -> None:
    signed, _ = ws.sign(MODULE, KEY_A)
    key = [KEY_A.public_key()]
    ws.verify(signed, key)
    for i in range(len(signed)):
        for flip in (0x01, 0x80):
            tampered = bytearray(signed)
            tampered[i] ^= flip
            with pytest.raises(SignatureError):
                ws.verify(bytes(tampered), key)
    with pytest.raises(SignatureError):
        ws.verify(signed + NOTE, key)  # an unsigned section appended
    with pytest.raises(SignatureError):
        ws.verify(signed[:-1], key)


def test_a_detached_signature_changed_by_one_byte_is_refused() -> None:
    _, payload = ws.sign(MODULE, KEY_A, detached=True)
    for i in range(len(payload)):
        tampered = bytearray(payload)
        tampered[i] ^= 0x01
        with pytest.raises(SignatureError):
            ws.verify(MODULE, [KEY_A.public_key()], bytes(tampered))


def test_another_key_is_refused_and_all_signers_means_all() -> None:
    signed, _ = ws.sign(MODULE, KEY_A)
    with pytest.raises(SignatureError, match="no valid signature by"):
        ws.verify(signed, [KEY_B.public_key()])
    assert ws.verify(signed, [KEY_B.public_key(), KEY_A.public_key()]).signers == [KEY_A.public_key()]
    with pytest.raises(SignatureError, match=ws.key_fingerprint(KEY_B.public_key())):
        ws.verify(signed, [KEY_A.public_key(), KEY_B.public_key()], require_all=True)
    with pytest.raises(SignatureError, match="not signed"):
        ws.verify(MODULE, [KEY_A.public_key()])


def test_key_formats() -> None:
    pem = KEY_A.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = KEY_A.public_key()
    raw_pub = ws.raw_public_key(pub)
    assert ws.raw_public_key(ws.load_private_key(pem).public_key()) == raw_pub
    assert ws.raw_public_key(ws.load_private_key(b"\x81" + bytes(range(32)) + raw_pub).public_key()) == raw_pub
    assert ws.raw_public_key(ws.load_public_key(b"\x01" + raw_pub)) == raw_pub
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(ValueError, match="Ed25519"):
        ws.load_private_key(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _write_keys(tmp_path, key: Ed25519PrivateKey, name: str):
    priv, pub = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def test_signed_component_runs_under_require_signer(tmp_path, guest_path) -> None:
    wasm = guest_path("exit_code").read_bytes()
    signed, _ = ws.sign(wasm, KEY_A)
    host = Host(cache_dir=tmp_path, policy=CodePolicy(signers=[KEY_A.public_key()]))
    assert host.run(signed, WasiConfig(args=["x", "6"])).exit_code == 6  # wasmtime ignores the section
    assert host.evidence(host.load(signed)).signers == (ws.raw_public_key(KEY_A.public_key()),)
    compiled = host.cache.compiled
    with pytest.raises(SignatureError):
        host.load(wasm)
    with pytest.raises(SignatureError):
        Host(cache_dir=tmp_path, policy=CodePolicy(signers=[KEY_B.public_key()])).load(signed)
    assert host.cache.compiled == compiled


def test_cli_sign_verify_and_run(tmp_path, guest_path) -> None:
    a_priv, a_pub = _write_keys(tmp_path, KEY_A, "a")
    b_priv, b_pub = _write_keys(tmp_path, KEY_B, "b")
    guest = guest_path("exit_code")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    out = tmp_path / "signed.wasm"
    assert cli("sign", "--key", a_priv, guest, "-o", out).returncode == 0
    assert cli("sign", "--key", b_priv, out).returncode == 0  # a second signer, in place
    # An output file has the permissions any new file gets here, not a temporary file's 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    r = cli("verify", "--public-key", a_pub, "--public-key", b_pub, "--require-all-signers", out)
    assert r.returncode == 0 and r.stdout.startswith("ok: signed by"), r.stderr
    r = cli("run", "--require-signer", b_pub, out, "8")
    assert r.returncode == 8, r.stderr
    r = cli("run", "--require-signer", b_pub, guest, "8")
    assert r.returncode == 2 and "not signed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # Detached: the component is untouched; the signature file verifies it.
    sig = tmp_path / "exit_code.sig"
    assert cli("sign", "--key", a_priv, guest, "--detached", sig).returncode == 0
    assert guest.read_bytes()[:8] == b"\0asm\x0d\0\x01\0" and not ws.split_signature(guest.read_bytes())[1]
    assert cli("verify", "--public-key", a_pub, guest, "--signature", sig).returncode == 0
    assert cli("run", "--require-signer", a_pub, "--signature", sig, guest, "3").returncode == 3
    r = cli("verify", "--public-key", b_pub, guest, "--signature", sig)
    assert r.returncode == 2 and "no valid signature" in r.stderr
