"""Bounds on what one guest may hold of the host's TLS machinery.

``TlsLimits`` is the embedder's policy (a field of ``TlsConfig``; CLI flags map onto it);
``TlsUsage`` is one store's count of what is open, kept as sets of live connections (keyed by
their ciphertext input stream, which stays the same object from the first byte of a
ClientHello to the last byte of the connection), so an entry leaves exactly when its
connection's state machine ends it, never when a counter is balanced by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..runtime.store import PerStore
from .names import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HANDSHAKES, DEFAULT_MAX_HELLO_SIZE


@dataclass(frozen=True)
class TlsLimits:
    """Per-guest limits. The defaults are far above what an honest guest needs; ``None``
    means unlimited (as in ``GuestLimits``)."""

    # Seconds from accept/connect until the handshake is established; after it the peer gets
    # an alert and the guest a "closed" error. None: no deadline.
    handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT
    # TLS connections a guest may have open at once (handshaking or established).
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS
    # Of those, how many may still be handshaking.
    max_handshakes: int | None = DEFAULT_MAX_HANDSHAKES
    # Largest first flight (records carrying the ClientHello, headers included) a guest
    # server accepts; a bigger one is refused with a decode_error alert. None: the host
    # reads any ClientHello the protocol can express, and OpenSSL's own limit (131,396
    # bytes, refused with illegal_parameter) is the only one.
    max_client_hello: int | None = DEFAULT_MAX_HELLO_SIZE

    def __post_init__(self) -> None:
        if self.handshake_timeout is not None and not self.handshake_timeout > 0:
            raise ValueError(f"the TLS handshake timeout must be positive, not {self.handshake_timeout}")
        for name in ("max_connections", "max_handshakes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be at least 1, or None for no limit, not {value!r}")
        if self.max_client_hello is not None and self.max_client_hello < 512:
            raise ValueError(f"max_client_hello must be at least 512 bytes, not {self.max_client_hello}")


class LimitExceeded(Exception):
    """A TLS limit of the embedder's was reached; the message names it and its option."""


@dataclass
class TlsUsage:
    """What one store has open now."""

    connections: set[Any] = field(default_factory=set)
    handshakes: set[Any] = field(default_factory=set)

    def start(self, key: Any, limits: TlsLimits) -> None:
        """A new connection begins its handshake (raises ``LimitExceeded`` if it may not)."""
        if limits.max_handshakes is not None and len(self.handshakes) >= limits.max_handshakes:
            raise LimitExceeded(f"this guest already has {len(self.handshakes)} TLS handshakes in progress, "
                                f"the embedder's limit (--max-tls-handshakes, TlsLimits.max_handshakes)")
        if limits.max_connections is not None and len(self.connections) >= limits.max_connections:
            raise LimitExceeded(f"this guest already has {len(self.connections)} TLS connections open, "
                                f"the embedder's limit (--max-tls-connections, TlsLimits.max_connections)")
        self.connections.add(key)
        self.handshakes.add(key)

    def handshake_ended(self, key: Any) -> None:
        self.handshakes.discard(key)

    def closed(self, key: Any) -> None:
        self.handshakes.discard(key)
        self.connections.discard(key)


# The TLS usage of the store a host function runs in: usage_of(cx).
usage_of = PerStore(TlsUsage).of
