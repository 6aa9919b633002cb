"""Moving ciphertext between a ``TlsEngine`` and a pair of wasi:io streams, and the
plaintext streams guests read and write.

All progress happens inside guest calls: a read, a write, or a pollable's readiness check
"pumps" (sends pending ciphertext as far as the output permits, feeds whatever ciphertext
is waiting) and never blocks. Waiting is delegated to the ciphertext streams' own
pollables, so a TLS stream sleeps in the kernel exactly like the socket beneath it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ..runtime.resources import HostResource
from ..wasi.io import (
    CallbackPollable,
    InputStream,
    OutputStream,
    Pollable,
    StreamClosed,
    StreamFailed,
    Waits,
)
from .engine import CLOSED, TRUNCATED, TlsClosed, TlsEngine, TlsFailure

# Ciphertext read per pump, and how much encrypted output may wait for the transport before
# plaintext writes are held back (the plaintext stream's permit shrinks accordingly).
READ_CHUNK = 1 << 18
OUTPUT_HIGH_WATER = 1 << 20


class TlsTransport:
    """One connection's engine plus the ciphertext streams it owns."""

    def __init__(self, engine: TlsEngine, ciphertext_in: InputStream, ciphertext_out: OutputStream) -> None:
        self.engine = engine
        self.cin = ciphertext_in
        self.cout = ciphertext_out
        self._cin_ready = ciphertext_in.subscribe()
        self._cout_ready = ciphertext_out.subscribe()
        self.pending_out = bytearray()
        self.bytes_sent = 0  # ciphertext, for the embedder's statistics
        self.bytes_received = 0
        self.failure: TlsFailure | None = None
        # Why the ciphertext streams failed, kept apart from ``failure``: when a peer sends an
        # alert and then resets the connection, the alert (already buffered) is the cause to
        # report, and the reset only explains an otherwise bare "end of data".
        self.transport_error: str | None = None
        self.send_broken = False
        self.output_closed = False
        self._users = 0
        self._dropped = False

    # --- shared ownership: the ciphertext streams live until every user is gone --------

    def acquire(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0 and not self._dropped:
            self._dropped = True
            for pollable in (self._cin_ready, self._cout_ready):
                pollable.drop()
            self.cin.drop()
            self.cout.drop()

    # --- moving bytes ---------------------------------------------------------------------

    def fail(self, failure: TlsFailure) -> TlsFailure:
        if self.failure is None:
            self.failure = self.explain(failure)
        return self.failure

    def explain(self, failure: TlsFailure) -> TlsFailure:
        """Add the transport's reason to failures that only say the data ended."""
        if self.transport_error and failure.code in (CLOSED, TRUNCATED) and self.transport_error not in failure.message:
            return TlsFailure(failure.code, f"{failure.message} ({self.transport_error})")
        return failure

    def _transport_failed(self, reason: str) -> None:
        if self.transport_error is None:
            self.transport_error = reason

    def send_failure(self, during_handshake: bool) -> TlsFailure:
        """The failure to report once sending is impossible and the engine has no better one."""
        what = "TLS handshake failed" if during_handshake else "TLS connection failed"
        return self.fail(TlsFailure(CLOSED, f"{what}: {self.transport_error}"))

    def pump(self) -> bool:
        """Send and receive what can be moved now; True if any ciphertext arrived."""
        self._send()
        received = self._receive()
        if received:
            self._send()  # the engine may have answered (handshake, key update)
        return received

    def _send(self) -> None:
        out = self.engine.take_output()
        if out:
            self.pending_out += out
        if self.send_broken:
            self.pending_out.clear()  # nowhere to send it any more
            return
        if not self.pending_out or self._dropped:
            return
        try:
            permit = self.cout.check_write()
            if permit:
                chunk = bytes(self.pending_out[:permit])
                self.cout.write(chunk)
                del self.pending_out[: len(chunk)]
                self.bytes_sent += len(chunk)
                self.cout.flush()
        except StreamClosed:
            self._transport_failed("the transport's output stream is closed")
            self.send_broken = True
            self.pending_out.clear()
        except StreamFailed as e:
            self._transport_failed(f"writing to the transport failed: {e}")
            self.send_broken = True
            self.pending_out.clear()

    def _receive(self) -> bool:
        if self.engine.input_ended or self._dropped:
            return False
        received = 0
        try:
            while received < READ_CHUNK:
                data = self.cin.read(READ_CHUNK - received)
                if not data:
                    break
                self.engine.feed(data)
                received += len(data)
                self.bytes_received += len(data)
        except StreamClosed:
            self.engine.feed_eof()
            return True
        except StreamFailed as e:
            # A reset or other transport error: the engine sees EOF (and reports any alert it
            # had already received); we remember why the data ended.
            self._transport_failed(f"reading from the transport failed: {e}")
            self.engine.feed_eof()
            return True
        return received > 0

    def add_waits(self, waits: Waits, *, want_input: bool) -> None:
        if self.pending_out:
            self._cout_ready.add_waits(waits)
        if want_input and not self.engine.input_ended:
            self._cin_ready.add_waits(waits)
        if not self.pending_out and not want_input:
            waits.soon()

    def flushed(self) -> bool:
        return not self.pending_out


class TransportHold:
    """Keeps a transport (and so its ciphertext streams) alive until dropped: the plaintext
    streams, the connection and the handshake resources each hold one."""

    transport: TlsTransport

    def _hold(self, transport: TlsTransport) -> None:
        self.transport = transport
        transport.acquire()
        self._released = False

    def drop(self) -> None:
        if not self._released:
            self._released = True
            self.transport.release()


class TlsInputStream(TransportHold, InputStream):
    """Decrypted bytes from the peer."""

    def __init__(self, transport: TlsTransport) -> None:
        self._hold(transport)
        self._buffer = b""
        self._closed = False

    def _fill(self) -> None:
        """Try to get plaintext into the buffer without blocking."""
        if self._buffer or self._closed:
            return
        t = self.transport
        for _ in range(2):
            try:
                data = t.engine.read(1 << 16)
            except TlsClosed:
                self._closed = True
                return
            except TlsFailure as e:
                failure = t.failure or t.fail(e)
                raise StreamFailed(str(failure), failure.code, "tls") from None
            if data:
                self._buffer = data
                return
            if not t.pump():
                return

    def read(self, n: int) -> bytes:
        deferred = getattr(self, "_deferred_failure", None)
        if deferred is not None and not self._buffer:
            self._deferred_failure = None
            failure = self.transport.failure or self.transport.fail(deferred)
            raise StreamFailed(str(failure), failure.code, "tls")
        self._fill()
        if not self._buffer:
            if self._closed:
                raise StreamClosed()
            return b""
        chunk, self._buffer = self._buffer[:n], self._buffer[n:]
        if len(chunk) < n and not self._buffer:
            chunk = self._more_records(chunk, n)
        return chunk

    def read_into(self, n: int, fill: Any) -> Any:
        """``read`` with the plaintext copied once, straight into the guest's buffer (see
        ``InputStream.read_into``), without joining the records first."""
        if getattr(self, "_deferred_failure", None) is not None or n == 0:
            return self.read(n)
        self._fill()
        if not self._buffer:
            return self.read(n)  # nothing yet, or the end: read() says which
        first, self._buffer = self._buffer[:n], self._buffer[n:]
        parts = [first] if self._buffer else self._record_list(first, n)
        view = fill(sum(len(p) for p in parts))
        at = 0
        for part in parts:
            view[at:at + len(part)] = part
            at += len(part)
        return fill.done(at)

    def _more_records(self, chunk: bytes, n: int) -> bytes:
        """Add records OpenSSL has already received, up to n bytes: one call from the guest
        then moves several records (each call costs more than a record's decryption)."""
        parts = self._record_list(chunk, n)
        return chunk if len(parts) == 1 else b"".join(parts)

    def _record_list(self, chunk: bytes, n: int) -> list[bytes]:
        parts, got = [chunk], len(chunk)
        while got < n:
            try:
                more = self.transport.engine.read(n - got)
            except TlsClosed:
                self._closed = True  # reported once the buffered bytes are read
                break
            except TlsFailure as e:
                self._deferred_failure = e  # reported by the next read, after these bytes
                break
            if not more:
                break
            parts.append(more)
            got += len(more)
        return parts

    def _ready(self) -> bool:
        if getattr(self, "_deferred_failure", None) is not None:
            return True
        try:
            self._fill()
        except StreamFailed:
            return True
        return bool(self._buffer) or self._closed

    def _waits(self, waits: Waits) -> None:
        self.transport.add_waits(waits, want_input=True)

    def subscribe(self) -> Pollable:
        return CallbackPollable(self._ready, self._waits)


class TlsOutputStream(TransportHold, OutputStream):
    """Plaintext to the peer; encrypted at once, sent as the transport accepts it."""

    takes_views = True  # the engine encrypts what it is given before returning

    def __init__(self, transport: TlsTransport) -> None:
        super().__init__()
        self._hold(transport)
        self._flushing = False

    def _check(self) -> None:
        t = self.transport
        # The io-error carries the failure's code, so guests can ask error-code-of.
        if t.failure is not None:
            raise StreamFailed(str(t.failure), t.failure.code, "tls")
        if t.send_broken:
            failure = t.send_failure(during_handshake=False)
            raise StreamFailed(str(failure), failure.code, "tls")
        if t.output_closed or t.engine.close_notify_sent:
            raise StreamClosed()

    def _check_write(self) -> int:
        t = self.transport
        t.pump()
        self._check()
        if self._flushing:
            if not t.flushed():
                return 0
            self._flushing = False
        return max(0, OUTPUT_HIGH_WATER - len(t.pending_out))

    def _write(self, data: bytes) -> None:
        self._check()
        try:
            self.transport.engine.write(data)
        except TlsFailure as e:
            failure = self.transport.fail(e)
            raise StreamFailed(str(failure), failure.code, "tls") from None
        self.transport.pump()

    def _flush(self) -> None:
        self._check()
        self._flushing = True
        self.transport.pump()

    def _ready(self) -> bool:
        t = self.transport
        t.pump()
        if t.failure is not None or t.send_broken or t.engine.close_notify_sent:
            return True
        if self._flushing:
            return t.flushed()
        return len(t.pending_out) < OUTPUT_HIGH_WATER

    def _waits(self, waits: Waits) -> None:
        self.transport.add_waits(waits, want_input=False)

    def subscribe(self) -> Pollable:
        return CallbackPollable(self._ready, self._waits)


class TransportUser(TransportHold, HostResource):
    """A resource (connection, future, handshake) that keeps the transport alive."""

    def __init__(self, transport: TlsTransport) -> None:
        self._hold(transport)


log = logging.getLogger("wasi_tls_host.tls")


class PendingHandshake(TransportUser):
    """A handshake in progress (either side): ``poll`` advances it without blocking.

    ``outcome`` is None while it runs, True once established, or the TlsFailure that ended
    it. ``on_handshake`` (the embedder's hook) sees every established handshake.
    """

    def __init__(self, transport: TlsTransport, on_handshake: Callable[[Any], None] | None = None) -> None:
        super().__init__(transport)
        self.on_handshake = on_handshake
        self.outcome: TlsFailure | bool | None = None
        self.finished = False  # finish() handed out the connection and streams

    def explain(self, failure: TlsFailure) -> TlsFailure:
        """Hook for a side to reword a failure (e.g. a server's missing client certificate)."""
        return failure

    def poll(self) -> bool:
        """True once the handshake has an outcome."""
        if self.outcome is not None:
            return True
        t = self.transport
        try:
            t.pump()
            while not t.engine.advance_handshake():
                if t.failure is not None:
                    raise t.failure
                if not t.pump():
                    if t.send_broken:
                        # Nothing more to read now and nothing can be sent: no way forward.
                        raise t.send_failure(during_handshake=True)
                    return False
            t.pump()  # send our final flight now, not at the first write
            self.outcome = True
            self._report()
        except TlsFailure as failure:
            t.pump()  # deliver our alert to the peer, if any
            self.outcome = t.failure or t.fail(self.explain(failure))
            log.info("TLS handshake (%s) failed: %s", "server" if t.engine.server_side else t.engine.server_name, self.outcome)
        return True

    def _report(self) -> None:
        if self.on_handshake is not None:
            try:
                self.on_handshake(self.transport.engine.info())
            except Exception:
                log.exception("on_handshake hook failed")

    def waits(self, waits: Waits) -> None:
        self.transport.add_waits(waits, want_input=True)
