"""The IANA cipher-suite table must agree with the OpenSSL the host runs on."""

from __future__ import annotations

import pytest
from OpenSSL import SSL
from OpenSSL._util import lib

from wasi_tls_host.tls.ciphers import TLS12_SUITES, TLS13_SUITES, split_suites, suite_number


@pytest.mark.parametrize(("number", "name"), sorted(TLS12_SUITES.items()))
def test_every_tls12_name_is_known_to_openssl(number: int, name: str) -> None:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_cipher_list(name.encode())  # raises SSL.Error for a name OpenSSL does not know
    conn = SSL.Connection(ctx, None)
    assert [c for c in conn.get_cipher_list() if not c.startswith("TLS_")] == [name]
    assert suite_number(name) == number


@pytest.mark.parametrize(("number", "name"), sorted(TLS13_SUITES.items()))
def test_every_tls13_name_is_known_to_openssl(number: int, name: str) -> None:
    ctx = SSL.Context(SSL.TLS_METHOD)
    assert lib.SSL_CTX_set_ciphersuites(ctx._context, name.encode()) == 1
    assert suite_number(name) == number


def test_unknown_numbers_are_refused_by_number() -> None:
    assert split_suites([0x1301, 0xC02F]) == (["TLS_AES_128_GCM_SHA256"], ["ECDHE-RSA-AES128-GCM-SHA256"])
    with pytest.raises(ValueError, match="0x0a0a, 0x0005"):
        split_suites([0x0A0A, 0x1302, 0x0005])
