"""WebAssembly module signatures in the tool-conventions format (the one wasmsign2 implements).

The format (``wit-reference/module-signatures/Signatures.md``) works on the section framing
shared by core modules and components (id byte, varuint32 size, contents), so one code path
serves both:

- the signed content is every section after an optional leading ``signature`` custom section;
- a rolling SHA-256 over the raw sections yields one hash per part, a part ending at each
  ``signature_delimiter`` custom section (and at the end of the module if the last section is
  not a delimiter);
- a signer signs ``"wasmsig" ‖ spec_version ‖ content_type ‖ hash_fn ‖ h1 ‖ … ‖ hn`` with
  Ed25519; the signature data lists sets of hashes, each with one or more signatures;
- the signature data is the payload of a ``signature`` custom section placed first in the
  module, or the same bytes kept apart (a detached signature).

Signing an already signed module adds a signature (to the matching hash set, or as a new
set). Verification of the whole module is the default; a prefix of ``parts`` parts can be
verified on request (partial verification), as the format describes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..runtime import leb128
from .digest import ProvenanceError

SPEC_VERSION = 0x01
CONTENT_TYPE_WASM = 0x01
HASH_SHA256 = 0x01
ALG_ED25519 = 0x01
DOMAIN = b"wasmsig"
SIGNATURE_SECTION = "signature"
DELIMITER_SECTION = "signature_delimiter"
# Raw key encodings of the format (wasmsign2's key files).
RAW_PUBLIC_KEY_ED25519 = 0x01
RAW_KEY_PAIR_ED25519 = 0x81

# Bounds on what a decoder accepts (as wasmsign2 does): signature data comes from strangers.
MAX_HASHES = 64
MAX_SIGNATURES = 256

HEADERS = {b"\0asm\x01\0\0\0": "core module", b"\0asm\x0d\0\x01\0": "component"}


class SignatureError(ProvenanceError):
    """A module's signature is missing, malformed, made by another key, or does not match."""


# --- binary framing ---------------------------------------------------------------------


encode_varuint32 = leb128.encode_u32


def decode_varuint32(data: bytes, offset: int) -> tuple[int, int]:
    """(value, offset after it); LEB128 of at most 5 bytes, as the wasm binary format says."""
    try:
        return leb128.decode_u32(data, offset)
    except ValueError as e:
        raise SignatureError(str(e)) from None


@dataclass(frozen=True)
class Section:
    """One section: its id, its raw bytes (id, size and contents, exactly as in the file)
    and, for custom sections (id 0), its name and payload."""

    id: int
    raw: bytes
    name: str | None = None
    payload: bytes = b""

    @property
    def is_signature(self) -> bool:
        return self.id == 0 and self.name == SIGNATURE_SECTION

    @property
    def is_delimiter(self) -> bool:
        return self.id == 0 and self.name == DELIMITER_SECTION


def custom_section(name: str, payload: bytes) -> Section:
    encoded = name.encode()
    contents = encode_varuint32(len(encoded)) + encoded + payload
    return Section(0, b"\0" + encode_varuint32(len(contents)) + contents, name, payload)


def parse_module(wasm: bytes) -> tuple[bytes, list[Section]]:
    """Split a core module or component into its 8-byte header and its sections."""
    header = bytes(wasm[:8])
    if header not in HEADERS:
        raise SignatureError("not a WebAssembly module or component (unknown header)")
    sections: list[Section] = []
    offset = 8
    while offset < len(wasm):
        start = offset
        section_id = wasm[offset]
        size, offset = decode_varuint32(wasm, offset + 1)
        end = offset + size
        if end > len(wasm):
            raise SignatureError(f"section {len(sections)} runs past the end of the module")
        if section_id == 0:
            name_len, name_start = decode_varuint32(wasm, offset)
            if name_start + name_len > end:
                raise SignatureError(f"custom section {len(sections)} has a name longer than the section")
            try:
                name = bytes(wasm[name_start:name_start + name_len]).decode()
            except UnicodeDecodeError:
                raise SignatureError(f"custom section {len(sections)} has a name that is not UTF-8") from None
            sections.append(Section(0, bytes(wasm[start:end]), name, bytes(wasm[name_start + name_len:end])))
        else:
            sections.append(Section(section_id, bytes(wasm[start:end])))
        offset = end
    return header, sections


def assemble(header: bytes, sections: Iterable[Section]) -> bytes:
    return header + b"".join(s.raw for s in sections)


def part_hashes(sections: Iterable[Section]) -> list[bytes]:
    """The rolling hashes: h_i = SHA-256 of every section up to and including the i-th
    delimiter; a last part that no delimiter closes gets a hash too. A leading signature
    section is never part of the signed content."""
    hasher = hashlib.sha256()
    hashes: list[bytes] = []
    open_part = False
    for index, section in enumerate(sections):
        if index == 0 and section.is_signature:
            continue
        hasher.update(section.raw)
        if section.is_delimiter:
            hashes.append(hasher.copy().digest())
            open_part = False
        else:
            open_part = True
    if open_part or not hashes:
        hashes.append(hasher.digest())
    return hashes


# --- signature data -------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    key_id: bytes
    algorithm: int
    signature: bytes


@dataclass
class SignedHashes:
    hashes: list[bytes]
    signatures: list[Signature] = field(default_factory=list)

    def message(self, data: SignatureData) -> bytes:
        return DOMAIN + bytes([data.spec_version, data.content_type, data.hash_function]) + b"".join(self.hashes)


@dataclass
class SignatureData:
    """The payload of a ``signature`` section (or a detached signature)."""

    signed_hashes: list[SignedHashes] = field(default_factory=list)
    spec_version: int = SPEC_VERSION
    content_type: int = CONTENT_TYPE_WASM
    hash_function: int = HASH_SHA256

    def encode(self) -> bytes:
        out = bytearray([self.spec_version, self.content_type, self.hash_function])
        out += encode_varuint32(len(self.signed_hashes))
        for entry in self.signed_hashes:
            out += encode_varuint32(len(entry.hashes)) + b"".join(entry.hashes)
            out += encode_varuint32(len(entry.signatures))
            for sig in entry.signatures:
                out += encode_varuint32(len(sig.key_id)) + sig.key_id
                out += bytes([sig.algorithm]) + encode_varuint32(len(sig.signature)) + sig.signature
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> SignatureData:
        if len(data) < 3:
            raise SignatureError("malformed signature data: shorter than its header")
        spec_version, content_type, hash_function = data[0], data[1], data[2]
        if spec_version != SPEC_VERSION:
            raise SignatureError(f"unsupported signature specification version 0x{spec_version:02x}")
        if content_type != CONTENT_TYPE_WASM:
            raise SignatureError(f"unsupported signature content type 0x{content_type:02x}")
        if hash_function != HASH_SHA256:
            raise SignatureError(f"unsupported signature hash function 0x{hash_function:02x}")
        offset = 3

        def take(n: int) -> bytes:
            nonlocal offset
            if offset + n > len(data):
                raise SignatureError("malformed signature data: truncated")
            chunk = bytes(data[offset:offset + n])
            offset += n
            return chunk

        def count(limit: int, what: str) -> int:
            nonlocal offset
            value, offset = decode_varuint32(data, offset)
            if value > limit:
                raise SignatureError(f"malformed signature data: {value} {what} (at most {limit})")
            return value

        signed: list[SignedHashes] = []
        for _ in range(count(MAX_HASHES, "hash sets")):
            n_hashes = count(MAX_HASHES, "hashes")
            if n_hashes == 0:
                raise SignatureError("malformed signature data: a hash set without hashes")
            hashes = [take(32) for _ in range(n_hashes)]
            signatures = []
            for _ in range(count(MAX_SIGNATURES, "signatures")):
                key_id = take(count(1 << 16, "bytes of key id"))
                algorithm = take(1)[0]
                signatures.append(Signature(key_id, algorithm, take(count(1 << 16, "bytes of signature"))))
            signed.append(SignedHashes(hashes, signatures))
        if offset != len(data):
            raise SignatureError("malformed signature data: bytes after the last signature")
        return cls(signed, spec_version, content_type, hash_function)


# --- keys ---------------------------------------------------------------------------------


def load_private_key(data: bytes, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key: PEM (PKCS#8), or the format's raw key pair (0x81 ‖ sk ‖ pk)."""
    if len(data) == 65 and data[0] == RAW_KEY_PAIR_ED25519:
        return Ed25519PrivateKey.from_private_bytes(bytes(data[1:33]))
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot load the signing key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"module signatures use Ed25519 keys, not {type(key).__name__}")
    return key


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key: PEM (SubjectPublicKeyInfo), or the raw form (0x01 ‖ pk)."""
    if len(data) == 33 and data[0] == RAW_PUBLIC_KEY_ED25519:
        return Ed25519PublicKey.from_public_bytes(bytes(data[1:]))
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise ValueError(f"cannot load the public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"module signatures use Ed25519 keys, not {type(key).__name__}")
    return key


def load_public_key_file(path: str | Path) -> Ed25519PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read public key {path}: {e.strerror}") from None
    return load_public_key(data)


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """A short printable name of a public key (SHA-256 of its raw bytes, 16 hex digits)."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]


# --- signing and verifying --------------------------------------------------------------


def split_signature(wasm: bytes) -> tuple[bytes, bytes | None]:
    """(the module without its embedded signature section, that section's payload or None)."""
    header, sections = parse_module(wasm)
    if sections and sections[0].is_signature:
        return assemble(header, sections[1:]), sections[0].payload
    return bytes(wasm), None


def embed_signature(wasm: bytes, signature: bytes) -> bytes:
    """Put ``signature`` first in the module, replacing an embedded one."""
    header, sections = parse_module(wasm)
    if sections and sections[0].is_signature:
        sections = sections[1:]
    return assemble(header, [custom_section(SIGNATURE_SECTION, signature), *sections])


def add_delimiter(wasm: bytes) -> bytes:
    """Close the module's last part with a delimiter (16 random bytes), so sections added
    later can be signed and the original parts still verified."""
    header, sections = parse_module(wasm)
    if sections and sections[-1].is_delimiter:
        return bytes(wasm)
    return assemble(header, [*sections, custom_section(DELIMITER_SECTION, os.urandom(16))])


def sign(
    wasm: bytes,
    key: Ed25519PrivateKey,
    *,
    key_id: bytes = b"",
    signature: bytes | None = None,
    detached: bool = False,
    parts: int | None = None,
) -> tuple[bytes, bytes]:
    """Sign a module (or component); return (module, signature data).

    Embedded (default): the module comes back with the signature section first; a signature
    already embedded (or given as ``signature``) keeps its signatures and gains this one.
    Detached: the module comes back without a signature section, unchanged otherwise.
    ``parts=n`` signs only the first n parts (a partial signature, which verifiers accept
    only when asked to verify those parts).
    """
    header, sections = parse_module(wasm)
    existing = signature
    if sections and sections[0].is_signature:
        existing = existing if existing is not None else sections[0].payload
        sections = sections[1:]
    data = SignatureData.decode(existing) if existing is not None else SignatureData()
    hashes = part_hashes(sections)
    if parts is not None:
        if not 1 <= parts <= len(hashes):
            raise ValueError(f"cannot sign {parts} parts: the module has {len(hashes)}")
        hashes = hashes[:parts]
    entry = next((e for e in data.signed_hashes if e.hashes == hashes), None)
    if entry is None:
        entry = SignedHashes(hashes)
        data.signed_hashes.append(entry)
    entry.signatures.append(Signature(key_id, ALG_ED25519, key.sign(entry.message(data))))
    encoded = data.encode()
    if detached:
        return assemble(header, sections), encoded
    return assemble(header, [custom_section(SIGNATURE_SECTION, encoded), *sections]), encoded


@dataclass
class Verified:
    """What a verification established: which keys signed, over how many parts."""

    signers: list[Ed25519PublicKey]
    parts_verified: int
    parts_total: int


def verify(
    wasm: bytes,
    keys: Iterable[Ed25519PublicKey],
    signature: bytes | None = None,
    *,
    parts: int | None = None,
    require_all: bool = False,
) -> Verified:
    """Verify ``wasm`` against ``keys`` (any one suffices unless ``require_all``).

    ``signature`` is a detached signature; without it the module must carry one first.
    ``parts=None`` verifies the whole module: a signature over fewer parts than the module
    has (a partial signature) is refused. ``parts=m`` verifies only the first m parts.
    Raises SignatureError saying what failed.
    """
    keys = list(keys)
    if not keys:
        raise ValueError("verification needs at least one public key")
    header, sections = parse_module(wasm)
    if signature is None:
        if not sections or not sections[0].is_signature:
            raise SignatureError("refused: the module is not signed (no signature section first, no detached signature)")
        signature = sections[0].payload
    data = SignatureData.decode(signature)
    computed = part_hashes(sections)
    wanted = len(computed) if parts is None else parts
    if wanted < 1 or wanted > len(computed):
        raise SignatureError(f"cannot verify {wanted} parts: the module has {len(computed)}")

    signed_by: list[Ed25519PublicKey] = []
    signed_other_content = False
    partial_only = False
    for key in keys:
        matched = False
        for entry in data.signed_hashes:
            if not any(_valid(key, entry, sig, data) for sig in entry.signatures):
                continue
            if parts is None:
                if entry.hashes == computed:
                    matched = True
                    break
                if len(entry.hashes) < len(computed) and entry.hashes == computed[:len(entry.hashes)]:
                    partial_only = True  # sections were added after signing
                    continue
            elif len(entry.hashes) >= wanted and entry.hashes[:wanted] == computed[:wanted]:
                matched = True
                break
            signed_other_content = True
        if matched:
            signed_by.append(key)
        elif require_all:
            break
    if require_all and len(signed_by) != len(keys):
        missing = [key_fingerprint(k) for k in keys if k not in signed_by]
        raise SignatureError(f"refused: no valid signature by required key(s) {', '.join(missing)}" + _why(signed_other_content, partial_only))
    if not signed_by:
        names = ", ".join(key_fingerprint(k) for k in keys)
        raise SignatureError(f"refused: no valid signature by {'any of ' if len(keys) > 1 else ''}{names}" + _why(signed_other_content, partial_only))
    return Verified(signed_by, wanted, len(computed))


def _why(signed_other_content: bool, partial_only: bool) -> str:
    if signed_other_content:
        return " (a signature by it covers other content: the module changed after signing)"
    if partial_only:
        return " (its signature covers only some parts of the module: verify those parts explicitly)"
    return ""


def _valid(key: Ed25519PublicKey, entry: SignedHashes, sig: Signature, data: SignatureData) -> bool:
    if sig.algorithm != ALG_ED25519 or len(sig.signature) != 64:
        return False
    try:
        key.verify(sig.signature, entry.message(data))
    except InvalidSignature:
        return False
    return True
