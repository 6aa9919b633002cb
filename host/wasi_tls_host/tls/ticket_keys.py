"""Session-ticket keys shared by a fleet of hosts (``--ticket-keys FILE``, ``TlsConfig.ticket_keys``).

By default each server context draws its own random ticket keys (``TlsConfig`` rotates them
by replacing contexts), so a ticket resumes only on the process that issued it. With a key
file every host that reads the same file encrypts and decrypts tickets with the same keys,
and a client behind a load balancer resumes on whichever host it reaches, as with nginx's
``ssl_session_ticket_key``.

The file: one or more 80-byte keys back to back, each a 16-byte name, a 32-byte HMAC-SHA256
key and a 32-byte AES-256-CBC key (nginx's 80-byte key, and OpenSSL's own ticket key layout;
``openssl rand 80 > ticket.key`` makes one). The first key encrypts new tickets; every key
decrypts, so rotating is ``cat new.key ticket.key > next; mv next ticket.key`` on every
host, then SIGHUP, then dropping the oldest key a ticket lifetime later. A ticket under the
second or a later key resumes and is replaced by one under the first. A ticket under no key
of the file is a full handshake.

How OpenSSL is reached: pyOpenSSL binds no ticket-key API (neither
``SSL_CTX_set_tlsext_ticket_keys``, a ``SSL_CTX_ctrl`` macro, nor
``SSL_CTX_set_tlsext_ticket_key_evp_cb``), and cryptography links OpenSSL statically into
its extension module without exporting it. The host therefore resolves the five public
OpenSSL functions it needs in that module's ELF symbol table (offsets from an exported
symbol, checked by comparing ``OpenSSL_version`` through the resolved pointer with
pyOpenSSL's answer) and calls them through cffi. A build where they cannot be found (a
stripped module, another platform) refuses ``--ticket-keys`` with a line saying so; it never
guesses.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import struct
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cffi
from OpenSSL import SSL
from OpenSSL._util import ffi as _ssl_ffi

KEY_SIZE = 80  # name 16 | HMAC-SHA256 key 32 | AES-256 key 32
NAME_SIZE = 16
MAX_KEYS = 64

log = logging.getLogger("wasi_tls_host.identities")  # beside the identities' rotation lines


@dataclass(frozen=True)
class TicketKeys:
    """The keys of a ticket key file, the first encrypting; ``path`` to read it again."""

    keys: tuple[bytes, ...] = field(repr=False)
    path: Path | None = None

    @classmethod
    def from_bytes(cls, data: bytes, path: Path | None = None) -> TicketKeys:
        where = str(path) if path is not None else "the ticket keys"
        if not data:
            raise ValueError(f"ticket keys: {where} is empty: it holds one or more {KEY_SIZE}-byte keys (openssl rand {KEY_SIZE})")
        if len(data) % KEY_SIZE:
            raise ValueError(f"ticket keys: {where} is {len(data)} bytes, not a multiple of {KEY_SIZE}: it holds one or more "
                             f"{KEY_SIZE}-byte keys back to back (openssl rand {KEY_SIZE})")
        keys = tuple(data[at:at + KEY_SIZE] for at in range(0, len(data), KEY_SIZE))
        if len(keys) > MAX_KEYS:
            raise ValueError(f"ticket keys: {where} holds {len(keys)} keys, more than {MAX_KEYS}")
        names = [key[:NAME_SIZE] for key in keys]
        if len(set(names)) != len(names):
            raise ValueError(f"ticket keys: {where} holds two keys with the same name (their first {NAME_SIZE} bytes)")
        return cls(keys, path)

    @classmethod
    def from_file(cls, path: str | Path) -> TicketKeys:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"ticket keys: cannot read {path}: {e.strerror}") from None
        return cls.from_bytes(data, path)

    def data(self) -> bytes:
        return b"".join(self.keys)

    def describe(self) -> str:
        """Which keys these are, without saying anything secret: the count and the first
        key's name hashed."""
        return f"{len(self.keys)} key(s), the first named sha256 {hashlib.sha256(self.keys[0][:NAME_SIZE]).hexdigest()[:16]}..."


def log_reload(keys: TicketKeys, outcome: TicketKeys | ValueError) -> str:
    """Log (once) and return the line saying what a reload did to the ticket keys."""
    if isinstance(outcome, ValueError):
        line = f"ticket keys: kept the {len(keys.keys)} key(s) in use: {str(outcome).removeprefix('ticket keys: ')}"
        log.warning("%s", line)
    else:
        line = f"ticket keys: reloaded from {outcome.path}: {outcome.describe()}"
        log.info("%s", line)
    return line


class KeyRing:
    """The ticket keys a config's server contexts use now: replaced by a reload, read by
    the callback at each ticket (so contexts built before a reload use the new keys)."""

    def __init__(self, keys: TicketKeys) -> None:
        self.keys = keys


# ---------------------------------------------------------------------------------------------
# OpenSSL's ticket key callback, reached through cryptography's statically linked OpenSSL.

_FFI = cffi.FFI()
_FFI.cdef("""
typedef struct { const char *key; unsigned int data_type; void *data; size_t data_size; size_t return_size; } OSSL_PARAM;
typedef int (*ticket_key_cb)(void *ssl, unsigned char *key_name, unsigned char *iv, void *cipher_ctx, void *mac_ctx, int enc);
""")
_OSSL_PARAM_UTF8_STRING = 4
_OSSL_PARAM_OCTET_STRING = 5
_OSSL_PARAM_UNMODIFIED = 2**64 - 1
_IV_SIZE = 16  # AES-CBC

_SIGNATURES = {
    "OpenSSL_version": "const char *(*)(int)",
    "SSL_CTX_set_tlsext_ticket_key_evp_cb": "int (*)(void *, ticket_key_cb)",
    "EVP_aes_256_cbc": "void *(*)(void)",
    "EVP_EncryptInit_ex2": "int (*)(void *, void *, const unsigned char *, const unsigned char *, const OSSL_PARAM *)",
    "EVP_DecryptInit_ex2": "int (*)(void *, void *, const unsigned char *, const unsigned char *, const OSSL_PARAM *)",
    "EVP_MAC_CTX_set_params": "int (*)(void *, const OSSL_PARAM *)",
}


class TicketKeysUnsupported(ValueError):
    """This build of OpenSSL gives no way to set ticket keys."""


def _elf_functions(path: str, wanted: set[str]) -> dict[str, int]:
    """The symbol-table values (addresses relative to the load base) of the named symbols of
    an ELF64 little-endian shared object (empty when it has no symbol table)."""
    with open(path, "rb") as f:
        image = f.read()
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        return {}
    section_offset, = struct.unpack_from("<Q", image, 0x28)
    entry_size, count = struct.unpack_from("<HH", image, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", image, section_offset + i * entry_size) for i in range(count)]
    found: dict[str, int] = {}
    for _, kind, _, _, offset, size, link, _, _, symbol_size in sections:
        if kind != 2 or not symbol_size:  # SHT_SYMTAB
            continue
        names_at = sections[link][4]
        for name_offset, _, _, _, value, _ in struct.iter_unpack("<IBBHQQ", image[offset:offset + size]):
            if value and name_offset:
                start = names_at + name_offset
                name = image[start:image.index(b"\0", start)].decode("ascii", "replace")
                if name in wanted:
                    found[name] = value
    return found


class _OpenSslTickets:
    """The resolved functions, and the one callback every server context shares."""

    def __init__(self) -> None:
        from cryptography.hazmat.bindings import _rust

        library = _rust.__file__
        exported = "PyInit__rust"
        values = _elf_functions(library, {exported, *_SIGNATURES})
        missing = sorted(set(_SIGNATURES) - set(values))
        if exported not in values or missing:
            raise TicketKeysUnsupported(f"ticket keys: this build of OpenSSL (in {library}) does not expose "
                                        f"{', '.join(missing) or exported}: --ticket-keys needs them")
        base = ctypes.cast(getattr(ctypes.CDLL(library), exported), ctypes.c_void_p).value - values[exported]  # type: ignore[operator]
        self.functions = {name: _FFI.cast(signature, base + values[name]) for name, signature in _SIGNATURES.items()}
        resolved = _FFI.string(self.functions["OpenSSL_version"](0))
        if resolved != SSL.OpenSSL_version(SSL.OPENSSL_VERSION):
            raise TicketKeysUnsupported(f"ticket keys: the OpenSSL found in {library} ({resolved!r}) is not the one "
                                        "pyOpenSSL uses: --ticket-keys cannot be supported")
        self.aes = self.functions["EVP_aes_256_cbc"]()
        self.callback = _FFI.callback("ticket_key_cb", self._on_ticket, error=-1)
        self._digest = _FFI.new("char[]", b"SHA256")
        self._names = {name: _FFI.new("char[]", name.encode()) for name in ("key", "digest")}

    def _on_ticket(self, ssl: Any, key_name: Any, iv: Any, cipher_ctx: Any, mac_ctx: Any, enc: int) -> int:
        """OpenSSL's ticket key callback: choose the key (encrypting: the first; decrypting:
        the one named, 0 if none: a full handshake) and set up the cipher and the MAC."""
        try:
            connection = SSL.Connection._reverse_mapping.get(_ssl_ffi.cast("SSL *", int(_FFI.cast("uintptr_t", ssl))))
            ring = _rings.get(connection.get_context()) if connection is not None else None
            if ring is None:
                return -1
            keys = ring.keys.keys
            if enc:
                key = keys[0]
                _FFI.memmove(key_name, key[:NAME_SIZE], NAME_SIZE)
                _FFI.memmove(iv, os.urandom(_IV_SIZE), _IV_SIZE)
                init, answer = self.functions["EVP_EncryptInit_ex2"], 1
            else:
                name = bytes(_FFI.buffer(key_name, NAME_SIZE))
                index = next((i for i, k in enumerate(keys) if k[:NAME_SIZE] == name), None)
                if index is None:
                    return 0
                key = keys[index]
                init, answer = self.functions["EVP_DecryptInit_ex2"], 1 if index == 0 else 2  # 2: issue a ticket under the first
            aes_key = _FFI.new("unsigned char[]", key[NAME_SIZE + 32:])
            hmac_key = _FFI.new("unsigned char[]", key[NAME_SIZE:NAME_SIZE + 32])
            if init(cipher_ctx, self.aes, aes_key, iv, _FFI.NULL) != 1:
                return -1
            params = _FFI.new("OSSL_PARAM[3]")
            params[0] = (self._names["key"], _OSSL_PARAM_OCTET_STRING, hmac_key, 32, _OSSL_PARAM_UNMODIFIED)
            params[1] = (self._names["digest"], _OSSL_PARAM_UTF8_STRING, self._digest, 6, _OSSL_PARAM_UNMODIFIED)
            if self.functions["EVP_MAC_CTX_set_params"](mac_ctx, params) != 1:
                return -1
            return answer
        except Exception:  # never through OpenSSL's stack: no ticket, or a full handshake
            log.exception("ticket key callback failed")
            return -1


_openssl: _OpenSslTickets | None = None
# The key ring of each server context given ticket keys (the callback finds it by context).
_rings: weakref.WeakKeyDictionary[SSL.Context, KeyRing] = weakref.WeakKeyDictionary()


def openssl_tickets() -> _OpenSslTickets:
    """OpenSSL's ticket key functions, resolved once (TicketKeysUnsupported if they cannot be)."""
    global _openssl
    if _openssl is None:
        _openssl = _OpenSslTickets()
    return _openssl


def use_ticket_keys(ctx: SSL.Context, ring: KeyRing) -> None:
    """Make the server context ``ctx`` encrypt and decrypt its tickets with ``ring``'s keys."""
    tickets = openssl_tickets()
    _rings[ctx] = ring
    if tickets.functions["SSL_CTX_set_tlsext_ticket_key_evp_cb"](_FFI.cast("void *", int(_ssl_ffi.cast("uintptr_t", ctx._context))), tickets.callback) != 1:
        raise ValueError("ticket keys: OpenSSL refused the ticket key callback")
