"""Moving ciphertext between a ``TlsEngine`` and a pair of wasi:io streams, and the
plaintext streams guests read and write.

All progress happens inside guest calls: a read, a write, or a pollable's readiness check
"pumps" (sends pending ciphertext as far as the output permits, feeds whatever ciphertext
is waiting) and never blocks. Waiting is delegated to the ciphertext streams' own
pollables, so a TLS stream sleeps in the kernel exactly like the socket beneath it.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
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
from ..wasi.sockets.registry import access_log
from .client_hello import ALERT_FATAL, alert_record
from .engine import CLOSED, TRUNCATED, HandshakeInfo, TlsClosed, TlsEngine, TlsFailure
from .limits import TlsLimits, TlsUsage
from .states import CONNECTION, SERVER_HELLO, ConnectionState, Event, HandshakeState, Machine, StateMachine, detached

# Ciphertext read per pump, and how much encrypted output may wait for the transport before
# plaintext writes are held back (the plaintext stream's permit shrinks accordingly).
READ_CHUNK = 1 << 18
OUTPUT_HIGH_WATER = 1 << 20


class Role(enum.Enum):
    """Who uses a transport: the handshake resource until its end, then the connection and
    its two plaintext streams (each until the guest drops it)."""

    HANDSHAKE = "handshake"
    CONNECTION = "connection"
    INPUT = "input"
    OUTPUT = "output"


_AFTER_HANDSHAKE = frozenset({Role.CONNECTION, Role.INPUT, Role.OUTPUT})


class TlsTransport:
    """One connection's engine plus the ciphertext streams it owns.

    Its lifetime follows the resources' states, with no counting: it starts used by the
    handshake resource; ``hand_over`` (the transition that ends a handshake with a
    connection) gives it to the connection and the two plaintext streams; ``let_go`` removes
    one of those when the guest drops it; ``close`` (the last one gone, or a failed
    handshake) drops the ciphertext streams, so their socket closes then, not at a GC pass.
    """

    def __init__(self, engine: TlsEngine, ciphertext_in: InputStream, ciphertext_out: OutputStream,
                 usage: TlsUsage | None = None) -> None:
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
        self.users: set[Role] = {Role.HANDSHAKE}
        self.usage = usage

    # --- lifetime -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return not self.users

    def hand_over(self) -> None:
        """The handshake resource ends with an established connection."""
        assert self.users == {Role.HANDSHAKE}, self.users
        self.users = set(_AFTER_HANDSHAKE)
        if self.usage is not None:
            self.usage.handshake_ended(self.cin)

    def let_go(self, role: Role) -> None:
        if role in self.users:
            if self.users == {role}:
                self.send_pending()  # the last word (close_notify, an alert) goes out if the stream takes it now
            self.users.discard(role)
            if not self.users:
                self._release_streams()

    def close(self) -> None:
        """End the connection now (a failed handshake): later users see it closed."""
        if self.users:
            self.send_pending()  # what is queued (an alert) goes out if the stream takes it now
            self.users.clear()
            self._release_streams()

    def _release_streams(self) -> None:
        for resource in (self._cin_ready, self._cout_ready, self.cin, self.cout):
            resource.drop()
        if self.usage is not None:
            self.usage.closed(self.cin)

    def send_alert(self, description: int) -> None:
        """Queue a fatal alert record of our own (a deadline, a limit, a handshake the guest
        abandoned: not OpenSSL's decision) and send it after whatever the engine still had to
        say. The record is plaintext (pyOpenSSL cannot have OpenSSL protect an alert of the
        host's), so once the peer expects protected records no alert is sent: the connection
        just ends, which the peer reports as an early end rather than as a bad record."""
        if self.closed:
            return
        self.pending_out += self.engine.take_output()
        if not self.engine.records_protected:
            self.pending_out += alert_record(ALERT_FATAL, description)
        self.send_pending()

    # --- moving bytes ---------------------------------------------------------------------

    def fail(self, failure: TlsFailure) -> TlsFailure:
        """The connection failed: later calls report ``failure`` (or the first one), and what
        OpenSSL queued on failing (its alert) is sent now, before anyone closes the socket."""
        if self.failure is None:
            self.failure = detached(self.explain(failure))
        self.send_pending()
        return detached(self.failure)

    def explain(self, failure: TlsFailure) -> TlsFailure:
        """Add the transport's reason to failures that only say the data ended."""
        if self.transport_error and failure.code in (CLOSED, TRUNCATED) and self.transport_error not in failure.message:
            return TlsFailure(failure.code, f"{failure.message} ({self.transport_error})")
        return failure

    def _transport_failed(self, reason: str) -> None:
        if self.transport_error is None:
            self.transport_error = reason

    def send_failure(self, during_handshake: bool) -> TlsFailure:
        """The failure to report once sending is impossible: the peer's own last word if it
        sent one before going away (an alert waiting in the socket: that is why it closed),
        else the transport's."""
        if self.failure is not None:
            return detached(self.failure)
        if not during_handshake:  # a handshake has already read all there is
            self._receive()
            received = self.engine.received_failure()
            if received is not None:
                return self.fail(received)
        what = "TLS handshake failed" if during_handshake else "TLS connection failed"
        return self.fail(TlsFailure(CLOSED, f"{what}: {self.transport_error}"))

    def read_failure(self, failure: TlsFailure) -> TlsFailure:
        """What a plaintext read reports for ``failure``. The end of the peer's data without
        close_notify (a TCP half-close) ends reading only: the guest can still answer, so
        it does not fail the connection; anything else does."""
        if self.failure is not None:
            return detached(self.failure)
        if failure.code == TRUNCATED:
            return detached(self.explain(failure))
        return self.fail(failure)

    def pump(self) -> bool:
        """Send and receive what can be moved now; True if any ciphertext arrived."""
        self.send_pending()
        received = self._receive()
        if received:
            self.send_pending()  # the engine may have answered (handshake, key update)
        return received

    def send_pending(self) -> None:
        """Send what the engine has queued, as far as the output takes it now (never blocks)."""
        out = self.engine.take_output()
        if out:
            self.pending_out += out
        if self.send_broken:
            self.pending_out.clear()  # nowhere to send it any more
            return
        if not self.pending_out or self.closed:
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
        if self.engine.input_ended or self.closed:
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
        if self.closed:
            waits.soon()  # nothing left to wait for: the next check reports the end
            return
        if self.pending_out or not self._cout_ready.ready():
            self._cout_ready.add_waits(waits)
        elif not want_input:
            waits.soon()
        if want_input:
            if self.engine.input_ended:
                waits.soon()  # the end of input is there to be reported, not awaited
            else:
                self._cin_ready.add_waits(waits)

    def flushed(self) -> bool:
        """Every ciphertext byte so far was handed on and the ciphertext stream flushed it."""
        if self.send_broken or self.closed:
            return True
        return not self.pending_out and self._cout_ready.ready()


class TlsInputStream(InputStream):
    """Decrypted bytes from the peer."""

    # Ciphertext pumps per read or readiness check: enough for any record, and a peer that
    # floods us with records that carry no data cannot keep one guest call busy for long.
    MAX_PUMPS = 16

    def __init__(self, transport: TlsTransport) -> None:
        self.transport = transport
        self._buffer = b""
        self._closed = False
        # A failure met while gathering more records, reported after the bytes read before it.
        self._deferred_failure: TlsFailure | None = None

    def _fill(self) -> None:
        """Try to get plaintext into the buffer without blocking.

        Reads the engine again after every pump that brought anything, the end of input
        included, so an EOF fed into the engine is reported now, not at the next wake-up.
        """
        if self._buffer or self._closed:
            return
        t = self.transport
        if t.closed:
            raise StreamClosed()
        for _ in range(self.MAX_PUMPS):
            try:
                data = t.engine.read(1 << 16)
            except TlsClosed:
                self._closed = True
                return
            except TlsFailure as e:
                failure = self.transport.read_failure(e)
                raise StreamFailed(str(failure), failure.code, "tls") from None
            if data:
                self._buffer = data
                return
            if not t.pump():
                return

    def read(self, n: int) -> bytes:
        deferred = self._deferred_failure
        if deferred is not None and not self._buffer:
            self._deferred_failure = None
            failure = self.transport.read_failure(deferred)
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
        if self._deferred_failure is not None or n == 0:
            return self.read(n)
        self._fill()
        if not self._buffer:
            # Nothing yet, or the end (not read(): it would pump the transport a second time).
            if self._closed:
                raise StreamClosed()
            return b""
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
                # Reported by the next read, after these bytes; OpenSSL's alert goes now.
                self._deferred_failure = detached(e)
                self.transport.send_pending()
                break
            if not more:
                break
            parts.append(more)
            got += len(more)
        return parts

    def _ready(self) -> bool:
        if self._deferred_failure is not None:
            return True
        try:
            self._fill()
        except (StreamFailed, StreamClosed):
            return True
        return bool(self._buffer) or self._closed

    def _waits(self, waits: Waits) -> None:
        self.transport.add_waits(waits, want_input=True)

    def subscribe(self) -> Pollable:
        return CallbackPollable(self._ready, self._waits)

    def drop(self) -> None:
        self.transport.let_go(Role.INPUT)


class TlsOutputStream(OutputStream):
    """Plaintext to the peer; encrypted at once, sent as the transport accepts it."""

    takes_views = True  # the engine encrypts what it is given before returning

    def __init__(self, transport: TlsTransport) -> None:
        super().__init__()
        self.transport = transport
        self._flushing = False

    def _check(self) -> None:
        t = self.transport
        # The io-error carries the failure's code, so guests can ask error-code-of.
        if t.failure is not None:
            raise StreamFailed(str(t.failure), t.failure.code, "tls")
        if t.send_broken:
            failure = t.send_failure(during_handshake=False)
            raise StreamFailed(str(failure), failure.code, "tls")
        if t.engine.close_notify_sent or t.closed:
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
        if t.failure is not None or t.send_broken or t.engine.close_notify_sent or t.closed:
            return True
        if self._flushing:
            return t.flushed()
        return len(t.pending_out) < OUTPUT_HIGH_WATER

    def _waits(self, waits: Waits) -> None:
        self.transport.add_waits(waits, want_input=False)

    def subscribe(self) -> Pollable:
        return CallbackPollable(self._ready, self._waits)

    def drop(self) -> None:
        self.transport.let_go(Role.OUTPUT)


class TlsConnection(HostResource):
    """An established connection (either package); its streams are separate resources."""

    def __init__(self, transport: TlsTransport) -> None:
        self.transport = transport
        self.states = StateMachine(CONNECTION)

    def close_output(self) -> None:
        self.states.require("close-output")
        if self.states.state is ConnectionState.OPEN:
            t = self.transport
            t.engine.close_notify()
            t.pump()
        self.states.advance(Event.CLOSE_OUTPUT)

    def drop(self) -> None:
        self.transport.let_go(Role.CONNECTION)


log = logging.getLogger("wasi_tls_host.tls")

ALERT_USER_CANCELED = 90


def _access_logged(transport: TlsTransport) -> bool:
    """Whether an access-log line will be written for the TCP connection beneath."""
    return getattr(transport.cin, "record", None) is not None and access_log.isEnabledFor(logging.INFO)


@dataclass(frozen=True)
class HandshakeDeadline:
    """When a handshake that started under ``TlsLimits.handshake_timeout`` must be done."""

    at_ns: int
    timeout: float

    @staticmethod
    def start(limits: TlsLimits) -> HandshakeDeadline | None:
        """The deadline of a handshake starting now (None: the embedder set none)."""
        timeout = limits.handshake_timeout
        return None if timeout is None else HandshakeDeadline(time.monotonic_ns() + int(timeout * 1e9), timeout)

    def passed(self) -> bool:
        return time.monotonic_ns() >= self.at_ns

    def failure(self) -> TlsFailure:
        return TlsFailure(CLOSED, f"TLS handshake timed out: not established within {self.timeout:g} s "
                                  "(the embedder's handshake deadline, --tls-handshake-timeout)")


class PendingHandshake(HostResource):
    """A handshake in progress (either side); ``poll`` advances it without blocking.

    Its state (``states``, a ``HANDSHAKE`` machine of states.py) decides what each call
    answers. The transport is the handshake's until the FINISH transition hands it to the
    connection; a FAIL transition closes it (after our alert, if any, went out); dropping the
    resource before either lets it go. ``on_handshake`` (the embedder's hook) sees every
    established handshake.
    """

    machine: Machine[HandshakeState] = SERVER_HELLO

    def __init__(self, transport: TlsTransport, on_handshake: Callable[[Any], None] | None = None,
                 *, deadline: HandshakeDeadline | None = None) -> None:
        self.transport = transport
        self.on_handshake = on_handshake
        self.states: StateMachine[HandshakeState] = StateMachine(self.machine)
        self.deadline = deadline
        # The peer's code digest the guest expects, and whether it was checked (tls/code_identity.py).
        self.expected_code: str | None = None
        self.code_checked = False

    @property
    def state(self) -> HandshakeState:
        return self.states.state

    @property
    def failure(self) -> TlsFailure | None:
        failure = self.states.failure
        return failure if isinstance(failure, TlsFailure) else None

    def explain(self, failure: TlsFailure) -> TlsFailure:
        """Hook for a side to reword a failure (e.g. a server's missing client certificate)."""
        return failure

    def poll(self) -> bool:
        """True once the handshake is no longer running."""
        if self.state is not HandshakeState.RUNNING:
            return True
        t = self.transport
        try:
            t.pump()
            while not t.engine.advance_handshake():
                if t.failure is not None:
                    raise detached(t.failure)
                if not t.pump():
                    if t.send_broken:
                        # Nothing more to read now and nothing can be sent: no way forward.
                        raise t.send_failure(during_handshake=True)
                    if self.deadline is not None and self.deadline.passed():
                        self.fail(self.deadline.failure(), alert=ALERT_USER_CANCELED)
                        return True
                    return False
            t.pump()  # send our final flight now, not at the first write
            self.states.advance(Event.ESTABLISH)
            # Built only when someone reads it (the embedder's hook, the access log): it
            # costs about 0.15 ms, a tenth of a handshake.
            logged = _access_logged(t)
            if self.on_handshake is not None or logged:
                info = t.engine.info()
                self._report(info)
                if logged:
                    self._note_access(info)
        except TlsFailure as failure:
            self.fail(self.explain(failure))
        return True

    def fail(self, failure: TlsFailure, alert: int | None = None) -> None:
        """End the handshake: the peer gets OpenSSL's alert (or ``alert``), the transport is
        closed, later calls answer ``failure``."""
        t = self.transport
        if alert is not None:
            t.send_alert(alert)
        else:
            t.pump()  # deliver OpenSSL's alert to the peer, if any
        failure = t.failure or t.fail(failure)
        self.states.advance(Event.FAIL, failure)
        t.close()
        self._note_access(None)
        log.info("TLS handshake (%s) failed: %s", "server" if t.engine.server_side else t.engine.server_name, failure)

    def require(self, call: str) -> None:
        """Advance, then answer ``call`` as the state table says (states.WrongState or the
        handshake's TlsFailure when it is not answered)."""
        self.poll()
        self.states.require(call)

    def finish(self, call: str = "finish") -> TlsTransport:
        """The FINISH transition: the transport now belongs to the connection and streams."""
        self.require(call)
        self.states.advance(Event.FINISH)
        self.transport.hand_over()
        return self.transport

    def _note_access(self, info: HandshakeInfo | None) -> None:
        """Tell the access log's record of the TCP connection beneath (accepted sockets
        have one) what the handshake negotiated (``info``), or why it failed (None)."""
        record = getattr(self.transport.cin, "record", None)
        if record is None or not access_log.isEnabledFor(logging.INFO):
            return
        engine = self.transport.engine
        if info is not None:
            client = "-"
            if engine.server_side and info.peer_chain_der:
                from cryptography import x509

                client = x509.load_der_x509_certificate(info.peer_chain_der[0]).subject.rfc4514_string()
            record.annotate(sni=engine.requested_server_name() or "-", alpn=info.alpn.decode("ascii", "replace") if info.alpn else "-",
                            version=info.protocol_name, suite=info.cipher or "-", client=client, tls="ok")
            record.handshake_done()
        else:
            record.annotate(tls=f"failed: {self.failure}")

    def _report(self, info: HandshakeInfo) -> None:
        if self.on_handshake is not None:
            try:
                self.on_handshake(info)
            except Exception:
                log.exception("on_handshake hook failed")

    def waits(self, waits: Waits) -> None:
        self.transport.add_waits(waits, want_input=True)
        if self.deadline is not None:
            waits.until(self.deadline.at_ns)

    def drop(self) -> None:
        """The guest let go of the handshake before it ended (or a consuming call refused it):
        the peer is told, then the transport closes."""
        t = self.transport
        if self.state is HandshakeState.RUNNING:
            t.send_alert(ALERT_USER_CANCELED)
        elif self.state is HandshakeState.ESTABLISHED:
            t.engine.close_notify()
            t.pump()
        if self.state is not HandshakeState.FINISHED:
            t.let_go(Role.HANDSHAKE)
