"""TLS profiles: the embedder's bound on what guests may negotiate.

``intermediate`` (the default) is Mozilla's "intermediate" server configuration: TLS 1.2 with
ECDHE key exchange and AEAD suites only, plus TLS 1.3; groups X25519, P-256, P-384.
``modern`` is TLS 1.3 only. ``compat`` is for old peers: CBC and non-forward-secret TLS 1.2
suites and the groups X448, P-521 and the finite-field ones, still no TLS below 1.2 (the
host's interfaces speak of 1.2 and 1.3 only).

A guest can narrow a profile (versions, suites), never widen it: a request outside it fails
with a message naming the profile. Every profile refuses renegotiation and 0-RTT.

pyOpenSSL has no public API for TLS 1.3 suites, groups or early data; this module uses its
private ``OpenSSL._util.lib`` bindings of ``SSL_CTX_set_ciphersuites``,
``SSL_CTX_set1_curves_list`` (the groups list) and ``SSL_CTX_set_max_early_data``, checking
each return value.
"""

from __future__ import annotations

from dataclasses import dataclass

from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from .ciphers import TLS12_SUITES, TLS13_SUITES
from .names import DEFAULT_PROFILE, PROFILE_NAMES
from .ticket_keys import KeyRing, use_ticket_keys

_VERSION_NAME = {SSL.TLS1_2_VERSION: "TLS 1.2", SSL.TLS1_3_VERSION: "TLS 1.3"}

_AEAD_ECDHE_TLS12 = (
    0xC02B,  # ECDHE-ECDSA-AES128-GCM-SHA256
    0xC02F,  # ECDHE-RSA-AES128-GCM-SHA256
    0xC02C,  # ECDHE-ECDSA-AES256-GCM-SHA384
    0xC030,  # ECDHE-RSA-AES256-GCM-SHA384
    0xCCA9,  # ECDHE-ECDSA-CHACHA20-POLY1305
    0xCCA8,  # ECDHE-RSA-CHACHA20-POLY1305
)
_ALL_TLS13 = (0x1301, 0x1302, 0x1303)
_MOZILLA_GROUPS = ("X25519", "P-256", "P-384")


@dataclass(frozen=True)
class TlsProfile:
    name: str
    min_version: int  # OpenSSL protocol constants
    max_version: int
    tls12_suites: tuple[int, ...]  # IANA numbers, in preference order
    tls13_suites: tuple[int, ...]
    groups: tuple[str, ...]  # OpenSSL group names, in preference order

    def describe(self) -> str:
        if self.min_version == self.max_version:
            return f"'{self.name}' ({_VERSION_NAME[self.min_version]} only)"
        return f"'{self.name}'"

    def allows(self, suite: int) -> bool:
        return suite in self.tls12_suites or suite in self.tls13_suites

    def check_suites(self, suites: list[int]) -> None:
        """ValueError naming the requested suites this profile does not allow."""
        outside = [s for s in suites if not self.allows(s)]
        if outside:
            names = ", ".join(f"0x{s:04x} ({TLS12_SUITES.get(s) or TLS13_SUITES.get(s) or 'unknown'})" for s in outside)
            raise ValueError(f"cipher suites outside the host's TLS profile {self.describe()}: {names}")

    def narrow_versions(self, low: int, high: int) -> tuple[int, int]:
        """The profile's versions intersected with [low, high] (OpenSSL constants)."""
        lo, hi = max(low, self.min_version), min(high, self.max_version)
        if lo > hi:
            raise ValueError(
                f"{_VERSION_NAME.get(low, hex(low))} to {_VERSION_NAME.get(high, hex(high))} is outside "
                f"the host's TLS profile {self.describe()}")
        return lo, hi

    def configure(self, ctx: SSL.Context, versions: tuple[int, int], suites: list[int] | None = None) -> None:
        """Versions, suites, groups and refusals on a fresh context. ``suites`` (IANA
        numbers, already checked against the profile) narrows the profile's own; if they
        leave one version without a suite, that version is dropped."""
        low, high = versions
        tls12 = [s for s in self.tls12_suites if suites is None or s in suites]
        tls13 = [s for s in self.tls13_suites if suites is None or s in suites]
        if suites is not None:
            tls12.sort(key=suites.index)
            tls13.sort(key=suites.index)
        if not tls12:
            low = max(low, SSL.TLS1_3_VERSION)
        if not tls13:
            high = min(high, SSL.TLS1_2_VERSION)
        if low > high:
            raise ValueError(f"none of the requested cipher suites can be used with {_VERSION_NAME.get(versions[0])}"
                             f" to {_VERSION_NAME.get(versions[1])}")
        ctx.set_min_proto_version(low)
        ctx.set_max_proto_version(high)
        if tls12:
            ctx.set_cipher_list(":".join(TLS12_SUITES[s] for s in tls12).encode())
        if not _lib.SSL_CTX_set_ciphersuites(ctx._context, ":".join(TLS13_SUITES[s] for s in tls13).encode()):
            raise ValueError("OpenSSL refused the TLS 1.3 cipher suites")
        if not _lib.SSL_CTX_set1_curves_list(ctx._context, ":".join(self.groups).encode()):
            raise ValueError(f"OpenSSL refused the key exchange groups {self.groups}")
        ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
        # 0-RTT data can be replayed by an attacker: never accepted (the engine does not read
        # early data either; this makes the refusal explicit in the server's tickets).
        _lib.SSL_CTX_set_max_early_data(ctx._context, 0)


PROFILES: dict[str, TlsProfile] = {
    "modern": TlsProfile("modern", SSL.TLS1_3_VERSION, SSL.TLS1_3_VERSION, (), _ALL_TLS13, _MOZILLA_GROUPS),
    "intermediate": TlsProfile("intermediate", SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION, _AEAD_ECDHE_TLS12, _ALL_TLS13, _MOZILLA_GROUPS),
    "compat": TlsProfile(
        "compat", SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION,
        _AEAD_ECDHE_TLS12 + tuple(s for s in TLS12_SUITES if s not in _AEAD_ECDHE_TLS12),
        _ALL_TLS13,
        _MOZILLA_GROUPS + ("X448", "P-521", "ffdhe2048", "ffdhe3072", "ffdhe4096"),
    ),
}
assert sorted(PROFILES) == sorted(PROFILE_NAMES) and DEFAULT_PROFILE in PROFILES


def profile(name: str) -> TlsProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"TLS profile must be one of {sorted(PROFILES)}, not {name!r}") from None


def configure_resumption(ctx: SSL.Context, enabled: bool, context_id: bytes, lifetime: float, ticket_keys: KeyRing | None = None) -> None:
    """Session tickets and resumption on a server context, or neither.

    On: OpenSSL's stateless tickets under the context's own random keys (the host rotates
    them by replacing contexts, see ``TlsConfig.server_context_cache``), or under
    ``ticket_keys`` (a ``ticket_keys.KeyRing``: keys shared by hosts), valid for at most
    ``lifetime`` seconds; ``context_id`` keeps sessions from resuming under another answer
    (identity, client authentication): it must be the same on every host for the same answer.
    Off: no tickets and no session cache.
    """
    if enabled:
        ctx.set_session_id(context_id[:32])
        ctx.set_timeout(max(1, int(lifetime)))
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        if ticket_keys is not None:
            use_ticket_keys(ctx, ticket_keys)
    else:
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
