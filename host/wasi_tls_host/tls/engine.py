"""One TLS connection as a pure bytes-in/bytes-out object over OpenSSL memory BIOs.

Nothing here touches a socket or a wasi:io stream: callers feed ciphertext in, take
ciphertext out, and read/write plaintext. Failures are turned into ``TlsFailure`` with an
error code guests can branch on and a sentence a person can act on.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from .states import detached

# Error codes, shared by the guest-visible interfaces.
UNKNOWN_ISSUER = "unknown-issuer"
EXPIRED = "expired"
NOT_YET_VALID = "not-yet-valid"
NAME_MISMATCH = "name-mismatch"
BAD_CERTIFICATE = "bad-certificate"
HANDSHAKE_FAILURE = "handshake-failure"
PROTOCOL_VERSION = "protocol-version"
PEER_ALERT = "peer-alert"
DECODE_ERROR = "decode-error"
CLOSED = "closed"
TRUNCATED = "truncated"
ACCESS_DENIED = "access-denied"
INVALID_ARGUMENT = "invalid-argument"
INTERNAL = "internal"
CODE_MISMATCH = "code-mismatch"  # the peer does not show the code expected of it (code_identity.py)

# X509_V_ERR_* values (stable across OpenSSL 1.1 and 3.x) mapped to error codes.
_VERIFY_CODES = {
    2: UNKNOWN_ISSUER,   # unable to get issuer certificate
    18: UNKNOWN_ISSUER,  # self-signed certificate
    19: UNKNOWN_ISSUER,  # self-signed certificate in chain
    20: UNKNOWN_ISSUER,  # unable to get local issuer certificate
    21: UNKNOWN_ISSUER,  # unable to verify the first certificate
    9: NOT_YET_VALID,    # certificate is not yet valid
    10: EXPIRED,         # certificate has expired
    62: NAME_MISMATCH,   # hostname mismatch
    64: NAME_MISMATCH,   # IP address mismatch
}


@dataclass
class TlsFailure(Exception):
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


class TlsClosed(Exception):
    """The peer sent close_notify: a clean end of its data."""


def _reasons(error: SSL.Error) -> list[str]:
    args = error.args[0] if error.args else []
    if isinstance(args, list):
        return [str(item[2]) for item in args if isinstance(item, tuple) and len(item) == 3]
    return [str(a) for a in error.args]


def _alert_code(reason: str) -> str:
    if "protocol version" in reason or "unsupported protocol" in reason:
        return PROTOCOL_VERSION
    if "handshake failure" in reason or "no shared cipher" in reason or "no application protocol" in reason:
        return HANDSHAKE_FAILURE
    if "unknown ca" in reason:
        return UNKNOWN_ISSUER
    if "certificate required" in reason or "bad certificate" in reason or "certificate unknown" in reason:
        return BAD_CERTIFICATE
    if "certificate expired" in reason:
        return EXPIRED
    if "decode error" in reason:
        return DECODE_ERROR
    return PEER_ALERT


@dataclass
class HandshakeInfo:
    """What a completed handshake negotiated, for the embedder (never holds key material)."""

    server_side: bool
    server_name: str | None
    protocol_version: int
    protocol_name: str
    cipher: str | None
    alpn: bytes | None
    peer_chain_der: list[bytes]
    resumed: bool = False  # an earlier session was resumed (no certificate was sent)
    # From the handshake's start (the guest asked for it) until it was established, as this
    # host saw it: the handshake alone, without the TCP connect before it.
    handshake_ms: float | None = None


RECORD_CHANGE_CIPHER_SPEC = 20
RECORD_APPLICATION_DATA = 23  # also the outer type of every protected TLS 1.3 record


class RecordWatch:
    """Follows the record framing of one direction of a connection until a record of one of
    ``types`` passes (then it stops looking: it only ever answers "seen yet?").

    The host's own alerts are plaintext records (it cannot ask OpenSSL to protect one), so
    it must know when the peer stops accepting those. The framing is five header bytes with
    a length (RFC 8446 §5.1); OpenSSL writes and reads nothing else here.
    """

    def __init__(self, types: frozenset[int]) -> None:
        self.types = types
        self.seen = False
        self._header = bytearray()
        self._skip = 0  # body bytes of the current record still to pass

    def scan(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and not self.seen:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            take = min(5 - len(self._header), n - i)
            self._header += data[i:i + take]
            i += take
            if len(self._header) == 5:
                self.seen = self._header[0] in self.types
                self._skip = int.from_bytes(self._header[3:5], "big")
                self._header.clear()


_PROTECTED_SENT = frozenset({RECORD_CHANGE_CIPHER_SPEC, RECORD_APPLICATION_DATA})
_PROTECTED_RECEIVED = frozenset({RECORD_APPLICATION_DATA})


@functools.lru_cache(maxsize=256)
def _verify_target(name: str) -> tuple[bytes, bool]:
    """What a client checks the server's certificate against: (the address's bytes, True)
    for an IP literal, else (the IDNA-encoded name, False). Kept per name: parsing and IDNA
    encoding cost tens of microseconds per connection, and clients reconnect to few names
    (a failure is not kept: it is raised again each time)."""
    try:
        return ipaddress.ip_address(name.strip("[]")).packed, True
    except ValueError:
        pass
    try:
        return name.encode("idna"), False
    except UnicodeError as e:  # an empty or over-long label, say
        raise TlsFailure(INVALID_ARGUMENT, f"{name!r} is not a valid server name: {e}") from None


class TlsEngine:
    """A client or server connection driven through memory BIOs."""

    def __init__(self, context: SSL.Context, *, server_side: bool, server_name: str | None = None) -> None:
        self.conn = SSL.Connection(context, None)
        # OpenSSL frees its record buffers whenever they are empty (as nginx has it do): a
        # handshake waiting on its peer holds about 53 KiB instead of 70, an idle connection
        # about 33 KiB less.
        _lib.SSL_set_mode(self.conn._ssl, SSL.MODE_RELEASE_BUFFERS)
        self.server_side = server_side
        # A client's: the name it sends and checks the certificate against; a server's: the
        # SNI of the ClientHello the host parsed (OpenSSL's copy keeps the client's spelling).
        self.server_name = server_name
        self.handshake_done = False
        self.close_notify_received = False
        self.close_notify_sent = False
        self.input_ended = False
        # OpenSSL last answered "want read" and no ciphertext came since: it has consumed all
        # it was given and would say the same again, so the handshake and plaintext reads
        # skip the call (each costs an SSL error raised and caught in pyOpenSSL).
        self._starved = False
        # The first failure OpenSSL reported: once it fails, OpenSSL answers every later call
        # with an error that has no reason at all, which is reported as this one instead.
        self.failure: TlsFailure | None = None
        # Protection in use: ours once we sent ChangeCipherSpec (TLS 1.2) or a protected
        # TLS 1.3 record; a TLS 1.3 peer's once it sent protected records (its ServerHello
        # came before them, so we hold its handshake keys too).
        self._sent_protected = RecordWatch(_PROTECTED_SENT)
        self._received_protected = RecordWatch(_PROTECTED_RECEIVED)
        # OpenSSL may have queued ciphertext since take_output last emptied the memory BIO:
        # only the calls that run its state machine (handshake, read, write, shutdown) queue
        # any, and a connection's transport asks after every step (about two dozen times per
        # server connection, most of them between such calls): one flag, not a call into
        # OpenSSL, answers those.
        self._output_possible = False
        if server_side:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()
            if server_name:
                self._expect_name(server_name)

    def _expect_name(self, name: str) -> None:
        # pyOpenSSL has no public API for hostname checks; OpenSSL's own verifier does them
        # during the handshake (so a mismatch ends it with a proper alert) via the
        # connection's X509_VERIFY_PARAM. A deliberate use of pyOpenSSL's private bindings.
        param = _lib.SSL_get0_param(self.conn._ssl)
        raw, is_ip = _verify_target(name)
        if is_ip:
            if not _lib.X509_VERIFY_PARAM_set1_ip(param, raw, len(raw)):
                raise TlsFailure(INTERNAL, f"cannot check the certificate against address {ipaddress.ip_address(raw)}")
        else:
            self.conn.set_tlsext_host_name(raw)
            if not _lib.X509_VERIFY_PARAM_set1_host(param, raw, len(raw)):
                raise TlsFailure(INTERNAL, f"cannot check the certificate against name {name!r}")

    # --- ciphertext side ----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if data:
            if not self._received_protected.seen:
                self._received_protected.scan(data)
            self.conn.bio_write(data)
            self._starved = False

    @property
    def records_protected(self) -> bool:
        """Whether the peer now expects protected records from us, so that a plaintext alert
        of our own would read as a bad record rather than as its reason."""
        return self._sent_protected.seen or self._received_protected.seen

    def feed_eof(self) -> None:
        """The peer's data ended (a TCP FIN or reset). OpenSSL is not told: at the end of its
        input it fails the whole connection (and queues a decode_error alert), so a client
        that half-closes after its request could not be answered. ``read`` reports the end
        itself, as a truncation unless close_notify came first; writing goes on."""
        self.input_ended = True

    def take_output(self) -> bytes:
        # The memory BIO says how much it holds (BIO_get_mem_data): most calls find it
        # empty, and reading an empty one goes through an exception (and a 128 KiB buffer
        # per try); a full one is taken in one read of exactly its size, which empties it.
        if not self._output_possible:
            return b""
        self._output_possible = False
        size = _lib.BIO_get_mem_data(self.conn._from_ssl, _ffi.NULL)
        if size <= 0:
            return b""
        out = self.conn.bio_read(size)
        if out and not self._sent_protected.seen:
            self._sent_protected.scan(out)
        return out

    # --- handshake --------------------------------------------------------------------------

    def advance_handshake(self) -> bool:
        """Run the handshake as far as the buffered ciphertext allows; True when done."""
        if self.handshake_done:
            return True
        if not self._starved:
            self._output_possible = True
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                self._starved = True
            except SSL.Error as e:
                raise self._failure(e, during_handshake=True) from None
            else:
                self.handshake_done = True
                return True
        if self.input_ended:
            raise TlsFailure(CLOSED, "TLS handshake failed: the peer closed the connection during the handshake")
        return False

    def _failure(self, error: SSL.Error, *, during_handshake: bool, from_peer: bool = False) -> TlsFailure:
        """``error`` as a failure for guests; ``from_peer``: raised while reading the peer's records."""
        failure = self._describe(error, during_handshake=during_handshake, from_peer=from_peer)
        if self.failure is None:
            self.failure = detached(failure)
        return failure

    def _describe(self, error: SSL.Error, *, during_handshake: bool, from_peer: bool) -> TlsFailure:
        what = "TLS handshake failed" if during_handshake else "TLS connection failed"
        reasons = _reasons(error)
        if not reasons:
            # OpenSSL's queue is empty: a call on a connection that already failed.
            if self.failure is not None:
                return detached(self.failure)
            return TlsFailure(INTERNAL, f"{what}: OpenSSL refused the operation without giving a reason "
                                        f"({type(error).__name__})")
        if isinstance(error, SSL.SysCallError) or any("unexpected eof" in r for r in reasons):
            if during_handshake:
                return TlsFailure(CLOSED, f"{what}: the peer closed the connection during the handshake")
            return TlsFailure(TRUNCATED, f"{what}: the peer closed the connection without close_notify (truncated data)")
        if "certificate verify failed" in reasons:
            result = _lib.SSL_get_verify_result(self.conn._ssl)
            detail = _ffi.string(_lib.X509_verify_cert_error_string(result)).decode()
            code = _VERIFY_CODES.get(result, BAD_CERTIFICATE)
            if code == NAME_MISMATCH and self.server_name:
                detail = f"{detail}: the certificate is not valid for {self.server_name!r}"
            return TlsFailure(code, f"{what}: certificate verification failed: {detail}")
        for reason in reasons:
            if "alert" in reason:
                return TlsFailure(_alert_code(reason), f"{what}: the peer sent alert '{reason.split('alert ', 1)[-1]}'")
        text = "; ".join(reasons)
        if not during_handshake and from_peer:
            # Past the handshake, what OpenSSL refuses while reading is a record the peer sent
            # (a bad key update, a record that fails its integrity check, an oversized one).
            return TlsFailure(DECODE_ERROR, f"{what}: the peer sent a record TLS does not allow ({text})")
        if any(r in text for r in ("wrong version number", "packet length too long", "record layer failure", "unexpected message", "bad record")):
            return TlsFailure(DECODE_ERROR, f"{what}: the peer did not speak TLS ({text})")
        if "unsupported protocol" in text or "protocol version" in text or "no protocols available" in text:
            return TlsFailure(PROTOCOL_VERSION, f"{what}: no protocol version in common ({text})")
        if "no shared cipher" in text or "no suitable" in text:
            return TlsFailure(HANDSHAKE_FAILURE, f"{what}: {text}")
        return TlsFailure(HANDSHAKE_FAILURE if during_handshake else INTERNAL, f"{what}: {text}")

    # --- plaintext side -----------------------------------------------------------------

    def read(self, n: int) -> bytes | None:
        """Up to n plaintext bytes; None when more ciphertext is needed.

        Raises TlsClosed after close_notify and TlsFailure for errors, including an EOF
        without close_notify (truncation).
        """
        return self._plaintext(self.conn.recv, n)  # type: ignore[no-any-return]

    def read_into(self, view: memoryview) -> int | None:
        """``read`` decrypting into ``view`` (one record at most): the count."""
        return self._plaintext(self.conn.recv_into, view)  # type: ignore[no-any-return]

    def _plaintext(self, receive: Any, arg: Any) -> Any:
        if self._starved:
            return self._no_plaintext()
        self._output_possible = True  # a read may answer the peer (a key update, an alert, tickets)
        try:
            return receive(arg)
        except SSL.WantReadError:
            self._starved = True
            return self._no_plaintext()
        except SSL.ZeroReturnError:
            self.close_notify_received = True
            raise TlsClosed() from None
        except SSL.SysCallError as e:
            if self.conn.get_shutdown() & SSL.RECEIVED_SHUTDOWN:
                # The peer's close_notify, which OpenSSL 3.0 records but reports as a syscall
                # error when a TLS 1.3 user_canceled alert came just before it (JSSE closes so).
                self.close_notify_received = True
                raise TlsClosed() from None
            raise self._failure(e, during_handshake=False, from_peer=True) from None
        except SSL.Error as e:
            raise self._failure(e, during_handshake=False, from_peer=True) from None

    def _no_plaintext(self) -> None:
        """OpenSSL needs more ciphertext: None, or the truncation if no more will come."""
        if self.input_ended:
            raise TlsFailure(TRUNCATED, "TLS connection failed: the peer closed the connection without close_notify (truncated data)")
        return None

    def pending(self) -> int:
        return self.conn.pending()

    def received_failure(self) -> TlsFailure | None:
        """Have OpenSSL process the records already fed in, without taking plaintext from
        them: the failure they amount to (an alert from the peer, a bad record), if any.
        Used when sending failed, so the peer's last word is reported rather than the
        broken pipe it caused."""
        if self.failure is not None:
            return detached(self.failure)
        self._output_possible = True
        try:
            self.conn.recv(1, socket.MSG_PEEK)
        except (SSL.WantReadError, SSL.ZeroReturnError):
            return None
        except SSL.Error as e:
            return self._failure(e, during_handshake=False, from_peer=True)
        return None

    def write(self, data: bytes) -> None:
        self._output_possible = True
        try:
            self.conn.sendall(data)
        except SSL.Error as e:
            raise self._failure(e, during_handshake=False) from None

    def close_notify(self) -> None:
        if self.close_notify_sent:
            return
        self.close_notify_sent = True
        self._output_possible = True
        try:
            self.conn.shutdown()
        except SSL.Error:
            pass  # shutdown on a failed connection: nothing more to say to the peer

    # --- what was negotiated ------------------------------------------------------------------

    def protocol_version(self) -> int:
        name = self.conn.get_protocol_version_name()
        return {"TLSv1.3": 0x0304, "TLSv1.2": 0x0303, "TLSv1.1": 0x0302, "TLSv1": 0x0301}.get(name, 0)

    def cipher_name(self) -> str | None:
        return self.conn.get_cipher_name()

    def alpn(self) -> bytes | None:
        proto = self.conn.get_alpn_proto_negotiated()
        return proto or None

    def resumed(self) -> bool:
        # pyOpenSSL has no session_reused(): its private binding of SSL_session_reused.
        return bool(_lib.SSL_session_reused(self.conn._ssl))

    def info(self, peer_chain_der: list[bytes] | None = None) -> HandshakeInfo:
        """What was negotiated; ``peer_chain_der`` if the caller decoded the chain already."""
        return HandshakeInfo(
            server_side=self.server_side,
            server_name=self.server_name,
            protocol_version=self.protocol_version(),
            protocol_name=self.conn.get_protocol_version_name(),
            cipher=self.cipher_name(),
            alpn=self.alpn(),
            peer_chain_der=self.peer_chain_der() if peer_chain_der is None else peer_chain_der,
            resumed=self.resumed(),
        )

    def requested_server_name(self) -> str | None:
        """SNI: what this client sent, or (server side) what the client asked for as the host
        read it from the ClientHello, in its one canonical spelling (client_hello.py)."""
        return self.server_name

    def peer_chain(self) -> list[Any]:
        """The peer's certificates (cryptography objects), leaf first; [] if it sent none."""
        chain: Any = list(self.conn.get_peer_cert_chain(as_cryptography=True) or [])
        if self.server_side:
            # On a server OpenSSL leaves the client's leaf out of the peer chain.
            leaf = self.conn.get_peer_certificate(as_cryptography=True)
            if leaf is not None and (not chain or chain[0] != leaf):
                chain.insert(0, leaf)
        return chain  # type: ignore[no-any-return]

    def peer_chain_der(self) -> list[bytes]:
        from cryptography.hazmat.primitives.serialization import Encoding

        return [cert.public_bytes(Encoding.DER) for cert in self.peer_chain()]
