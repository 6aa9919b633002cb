"""``wasi-tls-host:tls/types`` and ``wasi-tls-host:tls/connection``: the error record shared by
this package's interfaces, and the established connection both sides end with."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ..runtime.binding import Interface
from ..runtime.store import StoreState
from ..runtime.values import WitError
from ..wasi.io import IoError
from .ciphers import suite_number
from .engine import TlsFailure
from .identities import PublicIdentity
from .limits import LimitExceeded
from .states import WrongState
from .p2 import PendingHandshake, TlsConnection, TlsInputStream, TlsOutputStream

types_iface = Interface("wasi-tls-host:tls/types@0.1.0")
connection_iface = Interface("wasi-tls-host:tls/connection@0.1.0")

ERROR_CODES = frozenset({
    "unknown-issuer", "expired", "not-yet-valid", "name-mismatch", "bad-certificate",
    "handshake-failure", "protocol-version", "peer-alert", "decode-error", "closed",
    "truncated", "access-denied", "invalid-state", "would-block", "invalid-argument", "internal",
    "code-mismatch",
})


# The ClientHello reader's finer codes (each with its own alert), which the guest sees as one.
_DECODE_ERRORS = frozenset({"unexpected-message", "record-overflow", "illegal-parameter"})


def error_record(code: str, message: str) -> dict[str, str]:
    """The ``error`` record of this package (both versions)."""
    return {"code": code if code in ERROR_CODES else "decode-error" if code in _DECODE_ERRORS else "internal", "message": message}


def tls_error(code: str, message: str) -> WitError:
    """The ``error`` record of this package, raised as the function's error result."""
    return WitError(error_record(code, message))


def failure_record(failure: TlsFailure) -> dict[str, str]:
    return error_record(failure.code, failure.message)


def failure_error(failure: TlsFailure) -> WitError:
    return tls_error(failure.code, failure.message)


@contextmanager
def guest_errors() -> Iterator[None]:
    """A call refused by a state table (``WrongState``) or ended by a failure, as the
    error result of this package's functions."""
    try:
        yield
    except WrongState as e:
        raise tls_error(e.code, e.message) from None
    except TlsFailure as e:
        raise failure_error(e) from None


def answer(handshake: PendingHandshake, call: str) -> None:
    """Raise the guest-facing error unless the handshake's state answers ``call``."""
    with guest_errors():
        handshake.require(call)


def limit_error(e: LimitExceeded) -> WitError:
    return tls_error("access-denied", str(e))


def finish_established(handshake: PendingHandshake) -> tuple[Connection, TlsInputStream, TlsOutputStream]:
    """The connection and plaintext streams of a completed handshake, handed out once."""
    with guest_errors():
        t = handshake.finish()
    return Connection(t), TlsInputStream(t), TlsOutputStream(t)


@types_iface.func("error-code-of")
def error_code_of(cx: StoreState, err: IoError) -> str | None:
    return err.code if err.domain == "tls" and err.code in ERROR_CODES else None


class Connection(TlsConnection):
    """An established connection (either side); its streams are separate resources."""


connection_iface.resource("connection", Connection)


@connection_iface.func("[method]connection.protocol-version")
def connection_protocol_version(cx: StoreState, this: Connection) -> int:
    return this.transport.engine.protocol_version()


@connection_iface.func("[method]connection.cipher-suite")
def connection_cipher_suite(cx: StoreState, this: Connection) -> int:
    return suite_number(this.transport.engine.cipher_name())


@connection_iface.func("[method]connection.alpn-id")
def connection_alpn_id(cx: StoreState, this: Connection) -> bytes | None:
    return this.transport.engine.alpn()


@connection_iface.func("[method]connection.server-name")
def connection_server_name(cx: StoreState, this: Connection) -> str | None:
    return this.transport.engine.requested_server_name()


@connection_iface.func("[method]connection.peer-identity")
def connection_peer_identity(cx: StoreState, this: Connection) -> PublicIdentity | None:
    return this.peer.copy() if this.peer is not None else None


@connection_iface.func("[method]connection.resumed")
def connection_resumed(cx: StoreState, this: Connection) -> bool:
    return this.transport.engine.resumed()


@connection_iface.func("[method]connection.close-output")
def connection_close_output(cx: StoreState, this: Connection) -> None:
    this.close_output()


INTERFACES = (types_iface, connection_iface)
