"""The Open DICE certificate extension (OID 1.3.6.1.4.1.11129.2.1.24): encode and decode.

    SEQUENCE {
      [0] codeHash OCTET STRING (64 bytes)        [1] codeDescriptor OCTET STRING OPTIONAL
      [2] configurationHash OCTET STRING OPTIONAL [3] configurationDescriptor OCTET STRING
      [4] authorityHash OCTET STRING OPTIONAL     [5] authorityDescriptor OCTET STRING OPTIONAL
      [6] mode (ENUMERATED in the Open DICE profile, INTEGER in some encoders; both read)
      [7] profileName UTF8String OPTIONAL }

each field explicitly tagged. Written by hand: ``cryptography`` has no general ASN.1 codec
and this structure needs only OCTET STRING, ENUMERATED/INTEGER and UTF8String.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

DICE_OID = ObjectIdentifier("1.3.6.1.4.1.11129.2.1.24")
PROFILE_NAME = "wasi-tls-host/code-identity/v1"
MODE_NOT_CONFIGURED, MODE_NORMAL, MODE_DEBUG, MODE_RECOVERY = 0, 1, 2, 3
MODE_NAMES = {0: "not configured", 1: "normal", 2: "debug", 3: "recovery"}


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(value)) + value


def _read_tlv(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(tag, value, offset after it) of the DER element at ``offset``."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[offset:offset + count], "big")
        offset += count
    else:
        length = first
    if offset + length > len(data):
        raise ValueError("DER element runs past the end")
    return tag, bytes(data[offset:offset + length]), offset + length


@dataclass(frozen=True)
class Claims:
    """The Open DICE claims of one certificate, as stated in it."""

    code_hash: bytes
    code_descriptor: bytes | None = None
    configuration_hash: bytes | None = None
    configuration_descriptor: bytes | None = None
    authority_hash: bytes | None = None
    authority_descriptor: bytes | None = None
    mode: int | None = None
    profile_name: str | None = None

    @property
    def digest(self) -> str | None:
        """The component's ``sha256:<hex>`` from the code descriptor, if it holds one."""
        text = (self.code_descriptor or b"").decode("ascii", "replace")
        return text if text.startswith("sha256:") else None

    @property
    def configuration(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.configuration_descriptor) if self.configuration_descriptor else None
        except ValueError:
            return None

    @property
    def authority_keys(self) -> list[str]:
        try:
            return list(json.loads(self.authority_descriptor)["ed25519"]) if self.authority_descriptor else []
        except (ValueError, KeyError, TypeError):
            return []

    def encode(self) -> bytes:
        fields = [
            (0, 0x04, self.code_hash), (1, 0x04, self.code_descriptor),
            (2, 0x04, self.configuration_hash), (3, 0x04, self.configuration_descriptor),
            (4, 0x04, self.authority_hash), (5, 0x04, self.authority_descriptor),
            (6, 0x0A, None if self.mode is None else bytes([self.mode])),
            (7, 0x0C, None if self.profile_name is None else self.profile_name.encode()),
        ]
        body = b"".join(_tlv(0xA0 | n, _tlv(tag, value)) for n, tag, value in fields if value is not None)
        return _tlv(0x30, body)

    @classmethod
    def decode(cls, der: bytes) -> Claims:
        tag, body, end = _read_tlv(der, 0)
        if tag != 0x30 or end != len(der):
            raise ValueError("the DICE extension is not one DER SEQUENCE")
        values: dict[int, Any] = {}
        offset = 0
        while offset < len(body):
            outer, inner, offset = _read_tlv(body, offset)
            number = outer & 0x1F
            if outer & 0xE0 != 0xA0 or number > 7 or number in values:
                raise ValueError(f"unexpected element 0x{outer:02x} in the DICE extension")
            tag, value, used = _read_tlv(inner, 0)
            if used != len(inner):
                raise ValueError(f"trailing bytes in DICE field [{number}]")
            if number == 6:
                if tag not in (0x0A, 0x02) or not value:  # ENUMERATED (profile) or INTEGER
                    raise ValueError("DICE mode is not an ENUMERATED or INTEGER")
                values[6] = int.from_bytes(value, "big", signed=True)
            elif number == 7:
                if tag != 0x0C:
                    raise ValueError("DICE profileName is not a UTF8String")
                values[7] = value.decode()
            else:
                if tag != 0x04:
                    raise ValueError(f"DICE field [{number}] is not an OCTET STRING")
                values[number] = value
        if 0 not in values:
            raise ValueError("the DICE extension has no code hash")
        return cls(values[0], values.get(1), values.get(2), values.get(3), values.get(4), values.get(5), values.get(6), values.get(7))


def claims_of(cert: x509.Certificate) -> Claims | None:
    """The DICE claims of a certificate (unverified: as stated), or None if it has none."""
    try:
        ext = cert.extensions.get_extension_for_oid(DICE_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    return Claims.decode(value.value)


def describe(claims: Claims) -> list[str]:
    """The claims in words, one line each."""
    lines = [
        f"code: {claims.digest or '(no sha256 descriptor)'} (SHA-512 {claims.code_hash.hex()})",
        f"configuration: SHA-512 {(claims.configuration_hash or b'').hex() or 'none'}",
    ]
    if claims.configuration_descriptor is not None:
        # The canonical document itself (what the hash covers), so it can be saved and given
        # back to verify-cert --expect-config.
        lines.append(f"  document: {claims.configuration_descriptor.decode('utf-8', 'replace')}")
    if claims.authority_hash:
        lines.append(f"authority: SHA-512 {claims.authority_hash.hex()} (signed by ed25519 {', '.join(claims.authority_keys)})")
    else:
        lines.append("authority: none (the component was not verified against a signature)")
    lines.append(f"mode: {MODE_NAMES.get(claims.mode, str(claims.mode)) if claims.mode is not None else 'absent'}")
    if claims.profile_name:
        lines.append(f"profile: {claims.profile_name}")
    return lines
