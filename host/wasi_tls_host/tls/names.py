"""The TLS settings a command line offers, by name, readable without loading OpenSSL:
``tls.profiles`` and ``tls.config`` define what each name means (and check they agree)."""

from __future__ import annotations

PROFILE_NAMES = ("compat", "intermediate", "modern")
DEFAULT_PROFILE = "intermediate"
VERSION_NAMES = ("1.2", "1.3")
DEFAULT_MIN_VERSION = "1.2"
# The logger of certificate rotation (one line per identity per reload): the command line
# shows its INFO.
ROTATION_LOG = "wasi_tls_host.identities"
# TlsLimits' defaults (tls/limits.py), for the command line's help without loading the TLS
# modules; what each limit means is said there.
DEFAULT_HANDSHAKE_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_MAX_HANDSHAKES = 1_000
DEFAULT_MAX_HELLO_SIZE = 64 * 1024
