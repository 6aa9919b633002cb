"""IANA cipher suite numbers and the OpenSSL names for them.

pyOpenSSL exposes neither ``SSL_CIPHER_get_protocol_id`` nor a way to list suites by number,
so this table (values from the IANA TLS Cipher Suites registry) bridges the guest-facing
integers and OpenSSL's configuration strings. A test checks every OpenSSL name against the
library. Suites OpenSSL does not know are rejected with a clear error, not ignored.
"""

from __future__ import annotations

TLS13_SUITES: dict[int, str] = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
}

TLS12_SUITES: dict[int, str] = {
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
    0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
    0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
    0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
    0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305",
    0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
    0x009E: "DHE-RSA-AES128-GCM-SHA256",
    0x009F: "DHE-RSA-AES256-GCM-SHA384",
    0xC009: "ECDHE-ECDSA-AES128-SHA",
    0xC00A: "ECDHE-ECDSA-AES256-SHA",
    0xC013: "ECDHE-RSA-AES128-SHA",
    0xC014: "ECDHE-RSA-AES256-SHA",
    0xC023: "ECDHE-ECDSA-AES128-SHA256",
    0xC024: "ECDHE-ECDSA-AES256-SHA384",
    0xC027: "ECDHE-RSA-AES128-SHA256",
    0xC028: "ECDHE-RSA-AES256-SHA384",
    0x009C: "AES128-GCM-SHA256",
    0x009D: "AES256-GCM-SHA384",
    0x002F: "AES128-SHA",
    0x0035: "AES256-SHA",
}

_BY_NAME = {name: number for table in (TLS13_SUITES, TLS12_SUITES) for number, name in table.items()}


def suite_number(openssl_name: str | None) -> int:
    """IANA number of a negotiated suite (0 if unknown to this table)."""
    return _BY_NAME.get(openssl_name or "", 0)


def split_suites(numbers: list[int]) -> tuple[list[str], list[str]]:
    """OpenSSL names for TLS 1.3 and TLS 1.2 suites; ValueError for unknown numbers."""
    tls13, tls12, unknown = [], [], []
    for n in numbers:
        if n in TLS13_SUITES:
            tls13.append(TLS13_SUITES[n])
        elif n in TLS12_SUITES:
            tls12.append(TLS12_SUITES[n])
        else:
            unknown.append(f"0x{n:04x}")
    if unknown:
        raise ValueError(f"cipher suites not supported by this host: {', '.join(unknown)}")
    return tls13, tls12
