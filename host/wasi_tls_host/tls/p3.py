"""TLS on the Component Model's streams (WASI 0.3): the surface of upstream
``wasi:tls@0.3.0-draft`` and ``wasi-tls-host:tls@0.2.0`` (transport.py says what is shared
with WASI 0.2).

The ciphertext the peer sends arrives on a stream the guest gave the host; the ciphertext
for the peer goes into a stream the host returns (``StreamPort``). Plaintext moves through
a stream each way (``PlaintextOut``, ``PlaintextIn``), each with a future that says how its
direction ended. Both TLS packages use this: upstream ``wasi:tls@0.3.0-draft`` (whose
``connector`` sets the plaintext ends up before the handshake) and ``wasi-tls-host:tls@0.2.0``
(whose ``connection`` sets them up after it).

One host task per connection moves every byte (``StreamTransport.run``): a step drives the
engine as far as the streams allow without waiting, then the task waits on the
connection's one ``Event``, which every end sets when it can move (a read posted, bytes
written, an end dropped) and the handshake deadline sets when it passes. So a waiting
connection uses no CPU, and OpenSSL is driven from one place, in one order.

How a connection ends (and what each future says):

* receiving ends at the peer's close_notify (``ok``), at the end of its data without one
  (``truncated``: reading ends, sending goes on, as after a TCP half-close), at a failure
  (the failure), or when the guest drops the plaintext stream (``ok``: it chose to stop).
  Then the host stops reading the incoming ciphertext (its writer sees the stream dropped).
* sending ends when the guest drops its plaintext stream: close_notify is sent, and once
  every byte was handed to the outgoing ciphertext stream, that stream ends (``ok``). A
  guest that drops the outgoing ciphertext stream first gets ``closed``.
* a failure (the handshake's, the deadline's, a bad record) ends both: the peer gets
  OpenSSL's alert (or the host's, while records are plaintext), the futures the failure.

The handshake runs as in WASI 0.2 (``TlsTransport.advance_handshake``, the states of the
resource that sees it); the calls that would answer ``would-block`` there wait for
``settled`` here.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ..runtime.binding import OUTGOING_VALUE_HOOKS
from ..runtime.scheduler import Cancelled, Event, HostTask, Scheduler, any_of, readable, sleep_until, writable, yield_now
from ..runtime.streams import Future, Stream, StreamClosed, StreamReader, new_future, new_stream
from ..runtime.values import Err, Ok
from ..wasi.sockets.p3 import DirectSink, DirectSource, connection_of, offer_direct_send, take_receive, withdraw_direct_send
from .engine import TRUNCATED, TlsClosed, TlsEngine, TlsFailure
from .limits import TlsUsage
from .states import HandshakeState
from .transport import ALERT_USER_CANCELED, OUTPUT_HIGH_WATER, READ_CHUNK, PortFailed, TlsTransport

log = logging.getLogger("wasi_tls_host.tls")

# Plaintext taken per read of the guest's stream.
WRITE_CHUNK = 1 << 16
# OpenSSL hands out one record (at most 2^14 bytes) per read; asking for more makes
# pyOpenSSL allocate a larger temporary buffer for nothing.
_RECORD = 1 << 14
# A step that took a write of the guest's plaintext posts the read for its next one at
# once while less than this (that write included) waits to be sent (OUTPUT_HIGH_WATER
# stops the reading, checked at the next step, and this keeps well clear of it).
_WATCH_BELOW = OUTPUT_HIGH_WATER // 4
# What one read of a socket read directly takes at most (a larger bytes object per read
# would be allocated and given back to the system each time).
_DIRECT_READ = 1 << 16

# Makes the guest-facing error value (a wasi:tls error resource, a wasi-tls-host record).
ErrorValue = Callable[[TlsFailure], Any]


class StreamPort:
    """A connection's ciphertext: read from the stream the guest gave (``incoming``, with
    one read always posted so the writer's bytes land at once), written into a stream the
    host made (``outgoing``, handed to the guest). Never waits; ``wake`` is set whenever
    either can move. The incoming stream may be attached later (upstream ``receive``).

    When the incoming stream is a socket's ``receive`` stream, the socket is read directly
    (a ``DirectSource``), and when the guest hands ``outgoing`` to a socket's ``send``, that
    socket is written directly (a ``DirectSink``): a flight is one system call, not a stream
    copy and a step of the socket's task each way. Then what the connection's task waits
    for (``waits``) includes the socket's readiness: ``want_read``/``want_write`` say the
    last receive found nothing / the last send was not taken whole (the task clears them
    before each step)."""

    def __init__(self, wake: Event, origin: str, incoming: Stream | None = None) -> None:
        self.wake = wake
        self.outgoing, self.writer = new_stream(wake=wake, origin=origin)
        self.reader: StreamReader | None = None
        self.source: DirectSource | None = None
        self.sink: DirectSink | None = None
        self.want_read = False
        self.want_write = False
        # The last direct read took less than it asked for: the kernel had no more, so the
        # next read of this step finds nothing without asking it (one failed system call,
        # and the exceptions around it, less per read).
        self._drained = False
        self._incoming: Stream | None = None
        # The access-log record of the connection beneath, when the stream is an accepted
        # socket's and its implementation says so.
        self.record: Any = None
        offer_direct_send(self.outgoing, self._attach_sink)
        if incoming is not None:
            self.attach_incoming(incoming)

    def attach_incoming(self, incoming: Stream) -> None:
        self._incoming = incoming
        connection = connection_of(incoming)
        self.record = connection.record if connection is not None else None
        self.source = take_receive(incoming)
        if self.source is None:
            self.reader = StreamReader(incoming, is_bytes=True)

    def attach_source(self, source: DirectSource, record: Any) -> None:
        """Read ``source`` (a socket the host reads from the start, ``receive_directly``)
        as the incoming ciphertext; ``record`` is its connection's access-log record."""
        self.source, self.record = source, record

    def _attach_sink(self, sink: DirectSink) -> None:
        self.sink = sink
        self.writer.close()  # nothing goes through the stream from now on
        self.wake.set()  # what waited for a reader goes now

    @property
    def incoming(self) -> Stream | None:
        return self._incoming

    @property
    def remote_port(self) -> int | None:
        """The peer's port when the incoming ciphertext is a socket read directly (a client's
        sessions are kept per server name and port: ``sessions.remote_port``)."""
        source = self.source
        return source.remote_port if source is not None else None

    def receive(self, limit: int = READ_CHUNK) -> bytes | None:
        """What arrived (b"" if nothing yet), None once the peer's data ended (or reading
        stopped)."""
        source = self.source
        if source is not None:
            if self._drained:
                self._drained = False
                self.want_read = True
                return b""
            asked = min(limit, _DIRECT_READ)
            data = source.recv(asked)
            if data is not None and len(data) < asked:
                self.want_read = True
                self._drained = bool(data)
            return data
        if self.reader is None or self.reader.closed:
            return None
        return self.reader.read_nowait(limit, self.wake)  # type: ignore[no-any-return]

    def send(self, data: bytearray) -> int:
        """How much of ``data`` the outgoing stream's reader took now (a host reader keeps
        it as given)."""
        sink = self.sink
        if sink is not None:
            try:
                taken = sink.send(data)
            except OSError as e:
                self._drained = False  # what the peer sent before it went away is read in full
                raise PortFailed(f"sending failed: {e.strerror or type(e).__name__}") from None
            if taken < len(data):
                self.want_write = True
            if taken and OUTGOING_VALUE_HOOKS:
                # The audit sees the ciphertext as it did when it went through the stream
                # (it no longer enters guest memory, but the key audit still covers it).
                for hook in OUTGOING_VALUE_HOOKS:
                    hook(self.writer.origin, bytes(data[:taken]))
            return taken
        try:
            return self.writer.write_nowait(data)
        except StreamClosed:
            raise PortFailed("the guest dropped the stream of ciphertext to send") from None

    def begin_step(self) -> None:
        """A step of the connection's task begins: what the last one found is forgotten."""
        self.want_read = self.want_write = self._drained = False

    def waits(self, deadline_ns: int | None = None) -> Any:
        """What the connection's task awaits when a step moved nothing: ``wake``, and the
        socket's readiness the last step found missing, and ``deadline_ns``."""
        extra: list[Any] = []
        if self.want_read and self.source is not None:
            extra.append(readable(self.source.fd))
        if self.want_write and self.sink is not None:
            extra.append(writable(self.sink.fd))
        if deadline_ns is not None:
            extra.append(sleep_until(deadline_ns))
        return any_of(self.wake, *extra) if extra else self.wake

    def stop_receiving(self) -> None:
        if self.source is not None:
            self.source.stop()
        if self.reader is not None:
            self.reader.close()

    def close_outgoing(self) -> None:
        withdraw_direct_send(self.outgoing)
        self.writer.close()
        if self.sink is not None:
            self.sink.close()

    def close(self) -> None:
        self.stop_receiving()
        self.close_outgoing()


class PlaintextOut:
    """The peer's plaintext on its way to the guest: a stream the host writes and a future
    that says how it ended."""

    def __init__(self, wake: Event, origin: str) -> None:
        self.stream, self.writer = new_stream(wake=wake, origin=origin)
        self.future, self.outcome = new_future(origin=f"{origin} (how it ended)")
        self.done = False

    def finish(self, outcome: Ok[None] | Err[Any]) -> None:
        if not self.done:
            self.done = True
            self.outcome.write(outcome)
            self.writer.close()

    def abandon(self) -> None:
        """The store is going away: close without a value."""
        self.done = True
        self.outcome.close()
        self.writer.close()


class PlaintextIn:
    """The guest's plaintext on its way to the peer: the stream the guest gave (read by the
    host) and a future that says how sending ended."""

    def __init__(self, data: Stream, origin: str) -> None:
        self.reader = StreamReader(data, is_bytes=True)
        self.future, self.outcome = new_future(origin=origin)
        self.ended = False  # the guest dropped its writable end: close_notify follows
        self.done = False

    def finish(self, outcome: Ok[None] | Err[Any]) -> None:
        if not self.done:
            self.done = True
            self.outcome.write(outcome)
            self.reader.close()

    def abandon(self) -> None:
        self.done = True
        self.outcome.close()
        self.reader.close()


def ended_stream() -> Stream:
    """A stream that has already ended (what a second ``receive`` gets)."""
    stream, writer = new_stream()
    writer.close()
    return stream


def resolved_future(value: Any) -> Future:
    future, writer = new_future()
    writer.write(value)
    return future


class StreamTransport(TlsTransport):
    """One connection's ciphertext port, plaintext ends and the task that moves bytes
    between them (see the module's docstring). Its handshake starts with
    ``begin_handshake`` and runs once ``start`` has given it its task."""

    port: StreamPort

    def __init__(self, engine: TlsEngine, port: StreamPort, *, error_value: ErrorValue, usage: TlsUsage | None = None,
                 receiver: PlaintextOut | None = None, sender: PlaintextIn | None = None) -> None:
        super().__init__(engine, port, usage)
        self.wake = port.wake
        self.settled = Event()  # the handshake is no longer running (established or failed)
        self.error_value = error_value
        self.receiver = receiver
        self.sender = sender
        self.needs_input = True
        self.receiving = True  # the incoming ciphertext is still read
        self.sending = True  # the outgoing stream is open (closing once close_notify is queued)
        self.closing = False
        self._ended_by_failure = False
        # A close or failure met while decrypting into the guest's buffer, reported once
        # the bytes decrypted before it were taken.
        self._deferred: BaseException | None = None
        self._sender_unwatched = False  # this step left no read posted on the guest's plaintext stream
        self.task: HostTask | None = None

    # --- lifetime ---------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return not self.receiving and not self.sending

    def start(self, scheduler: Scheduler) -> None:
        """Run the connection on ``scheduler`` (the handshake starts at once)."""
        self.task = scheduler.start(self.run(), "TLS connection")

    def _deadline_ns(self) -> int | None:
        """When the handshake's deadline passes, while it runs (the task's wait ends then:
        no timer task of its own)."""
        deadline = self.deadline
        return deadline.at_ns if deadline is not None and self.state is HandshakeState.RUNNING else None

    async def run(self) -> None:
        port = self.port
        try:
            while not self.finished:
                self.wake.clear()
                port.begin_step()
                handshaking = self.state is HandshakeState.RUNNING
                self._sender_unwatched = False
                if not self.step():
                    await port.waits(self._deadline_ns())
                elif handshaking and self.state is HandshakeState.ESTABLISHED:
                    # The call waiting for the handshake (connect, establish) answers the guest
                    # before the next step: run at once, that step rarely moves anything, and
                    # after the guest it carries what the guest did next (one step fewer, the
                    # guest resumed sooner). The scheduler runs host tasks before guest tasks
                    # in each pass: one yield lets the waiter run, the second the guest it answered.
                    await yield_now()
                    await yield_now()
                elif self._settled():
                    await port.waits(self._deadline_ns())
        except (Cancelled, GeneratorExit):  # the store is closing
            self.abandon()
            raise
        except BaseException as e:  # a host bug: the guest sees a failure, not a hang
            log.exception("TLS connection task failed")
            self.fail_connection(TlsFailure("internal", f"TLS connection failed: host error: {type(e).__name__}: {e}"))
            self.release()
            raise
        self.release()

    def _settled(self) -> bool:
        """Whether the step that just moved moved everything there was: the socket is drained
        and the engine waits for its peer (or reads no more), a read is posted on the guest's
        plaintext stream (or it needs none), and nothing woke the task since. Another step would find nothing that would
        not also end the wait (the guest's next call sets ``wake``, the peer's data makes the
        socket readable)."""
        return (self.port.want_read and not self.wake.is_set and not self.finished and not self._sender_unwatched
                and (self.needs_input or not self.receiving))

    def release(self) -> None:
        """Everything ended: the streams and the connection's place in the limits go."""
        self.receiving = self.sending = False
        super().release()

    def abandon(self) -> None:
        """The store is going away: close every end, write no futures."""
        for end in (self.receiver, self.sender):
            if end is not None and not end.done:
                end.abandon()
        self.settled.set()
        self.release()

    # --- attaching plaintext ends (wasi-tls-host connection.receive/send) --------------

    def attach_receiver(self, receiver: PlaintextOut) -> None:
        self.receiver = receiver
        if not self.receiving:
            # Reading already stopped (the connection failed, or the peer is done).
            receiver.finish(Err(self.error_value(self.failure)) if self.failure is not None else Ok(None))
        self.wake.set()

    def attach_sender(self, sender: PlaintextIn) -> None:
        self.sender = sender
        if self.failure is not None or self.send_broken or self.closing:
            failure = self.failure or self.send_failure(during_handshake=False)
            sender.finish(Err(self.error_value(failure)))
        self.wake.set()

    def let_go(self, *, receiving: bool, sending: bool) -> None:
        """The guest gave up these directions before attaching an end to them (it dropped
        the connection): reading stops, sending ends with close_notify."""
        if receiving and self.receiver is None and self.receiving:
            self._stop_receiving()
        if sending and self.sender is None and not self.closing:
            self._close_sending()
        self.wake.set()

    # --- one step ---------------------------------------------------------------------

    def step(self) -> bool:
        """Move what can be moved now; True if anything did."""
        moved = self.send_pending()
        if self.receiving and self.needs_input and self.receive():
            self.needs_input = False
            moved = True
        if self.state is HandshakeState.RUNNING:
            moved = self.advance_handshake() or self._want_input() or moved
        elif self.failure is None:
            moved = self._decrypt() or moved
            if self.needs_input and self.receiving and not self.port.want_read and self.receive():
                # OpenSSL asked for more ciphertext only now (its plaintext ran out): the socket
                # is read in this step, not in one more step of its own that mostly finds it empty.
                self.needs_input = False
                moved = True
            moved = self._encrypt() or moved
        moved = self.send_pending() or moved
        if self.failure is not None and not self._ended_by_failure and self.state is not HandshakeState.RUNNING:
            # A failure met on the sending side (the guest dropped the outgoing ciphertext
            # while the host wrote to it) ends the connection as any failure does: reading
            # stops and its future says why, instead of waiting for a peer that may never speak.
            self._failed()
            moved = True
        if self.closing and self.sending and (not self.pending_out or self.send_broken):
            self._end_sending()
            moved = True
        return moved

    def _want_input(self) -> bool:
        """OpenSSL needs more ciphertext: True if that is news (the next step reads)."""
        wanted, self.needs_input = self.needs_input, True
        return not wanted

    # --- the handshake ------------------------------------------------------------------

    def _handshake_established(self) -> None:
        self.settled.set()

    def _handshake_failed(self) -> None:
        self.settled.set()
        self._failed()

    def abort_handshake(self, failure: TlsFailure) -> None:
        """The guest gave up the handshake (dropped it, cancelled the call waiting for it):
        the peer is told (user_canceled while records are plaintext)."""
        if self.state is HandshakeState.RUNNING:
            self.fail_handshake(failure, alert=ALERT_USER_CANCELED)
            self.wake.set()

    # --- plaintext ----------------------------------------------------------------------

    def _read_plaintext(self, view: memoryview) -> int:
        """Decrypt into ``view`` as many records as OpenSSL has; a close or failure after
        some bytes is kept for the next step."""
        got, size = 0, len(view)
        engine = self.engine
        while got < size:
            try:
                n = engine.read_into(view[got:got + min(size - got, _RECORD)])
            except (TlsClosed, TlsFailure) as e:
                if got == 0:
                    raise
                self._deferred = e
                break
            if not n:
                break
            got += n
        return got

    def _decrypt(self) -> bool:
        out = self.receiver
        if out is None or out.done or not self.receiving:
            return False
        try:
            if self._deferred is not None:
                deferred, self._deferred = self._deferred, None
                raise deferred
            n = out.writer.fill_nowait(self._read_plaintext)
        except StreamClosed:  # the guest dropped the plaintext stream: it reads no more
            out.finish(Ok(None))
            self._stop_receiving()
            return True
        except TlsClosed:
            out.finish(Ok(None))
            self._stop_receiving()
            return True
        except TlsFailure as failure:
            if failure.code == TRUNCATED:  # the peer's data ended: reading ends, sending may go on
                out.finish(Err(self.error_value(self.read_failure(failure))))
                self._stop_receiving()
            else:
                self.fail_connection(failure)
            return True
        if n:
            return True
        return out.writer.reader_waiting() and self._want_input()

    def _encrypt(self) -> bool:
        src = self.sender
        if src is None or src.done or src.ended or self.closing:
            return False
        if len(self.pending_out) >= OUTPUT_HIGH_WATER:
            # The guest's plaintext waits unread (and unwatched): the step's last send may make
            # room, and only another step would then take it.
            self._sender_unwatched = True
            return False
        if self.send_broken:
            src.finish(Err(self.error_value(self.send_failure(during_handshake=False))))
            self._close_sending()
            return True
        data = src.reader.read_nowait(WRITE_CHUNK, self.wake)
        # Plaintext taken leaves no read posted on the guest's stream (nothing would wake the
        # task for its next write or its end): one is posted below, or by the next step.
        self._sender_unwatched = bool(data)
        if data is None:
            src.ended = True
            self._close_sending()
            return True
        if not data:
            return False
        try:
            self.engine.write(data)
        except TlsFailure as failure:
            self.fail_connection(failure)
            return True
        if len(data) < WRITE_CHUNK and len(data) + len(self.pending_out) < _WATCH_BELOW:
            # The guest's write was taken whole and little waits to be sent: post the read for
            # its next write (or its end) now, not in one more step that finds nothing.
            more = src.reader.read_nowait(WRITE_CHUNK, self.wake)
            if more is None:
                self._sender_unwatched = False
                src.ended = True
                self._close_sending()
            elif more:
                try:
                    self.engine.write(more)  # a host writer had more: the next step goes on
                except TlsFailure as failure:
                    self.fail_connection(failure)
            else:
                self._sender_unwatched = False
        return True

    def _stop_receiving(self) -> None:
        self.receiving = False
        self.port.stop_receiving()

    def _close_sending(self) -> None:
        """Queue close_notify; the outgoing stream ends once it (and all before it) is taken."""
        if not self.closing:
            self.closing = True
            if self.failure is None and self.engine.handshake_done:
                self.engine.close_notify()

    def _end_sending(self) -> None:
        self.sending = False
        # The socket's FIN first, then the future: on a socket written directly, `ok` on the
        # send future means the socket sent everything (accept-socket's guests rely on it).
        self.port.close_outgoing()
        src = self.sender
        if src is not None and not src.done:
            if self.failure is not None:
                src.finish(Err(self.error_value(self.failure)))
            elif self.send_broken:
                src.finish(Err(self.error_value(self.send_failure(during_handshake=False))))
            else:
                src.finish(Ok(None))

    # --- failures -----------------------------------------------------------------------

    def fail_connection(self, failure: TlsFailure, alert: int | None = None) -> None:
        """End the connection: the handshake's failure while it runs, else the
        connection's; the peer gets OpenSSL's alert, both plaintext ends the failure."""
        if self.state is HandshakeState.RUNNING:
            self.fail_handshake(failure, alert)
            return
        if alert is not None:
            self.send_alert(alert)
        self.fail(failure)
        self._failed()

    def _failed(self) -> None:
        """Both plaintext ends answer the failure; reading stops; the outgoing stream ends
        once what is queued (the alert) was taken."""
        if self._ended_by_failure:
            return
        self._ended_by_failure = True
        assert self.failure is not None
        for end in (self.receiver, self.sender):
            if end is not None and not end.done:
                end.finish(Err(self.error_value(self.failure)))  # one error value each (a resource)
        if self.receiving:
            self._stop_receiving()
        self.closing = True


__all__ = ["PlaintextIn", "PlaintextOut", "StreamPort", "StreamTransport", "ended_stream", "resolved_future"]
