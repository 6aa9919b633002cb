"""TLS on WASI 0.2 wasi:io streams: the surface both 0.2 packages (upstream
``wasi:tls@0.2.0-draft`` and ``wasi-tls-host:tls@0.1.0``) are built on.

All progress happens inside guest calls: a read, a write, or a pollable's readiness check
"pumps" (sends pending ciphertext as far as the output permits, feeds whatever ciphertext
is waiting) and never blocks. Waiting is delegated to the ciphertext streams' own
pollables, so a TLS stream sleeps in the kernel exactly like the socket beneath it.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

from ..runtime.resources import HostResource
from ..wasi.io import CallbackPollable, InputStream, OutputStream, Pollable, StreamClosed, StreamFailed, Waits
from .engine import HandshakeInfo, TlsClosed, TlsEngine, TlsFailure
from .limits import TlsUsage
from .states import CONNECTION, SERVER_HELLO, ConnectionState, Event, HandshakeState, Machine, StateMachine, detached
from .transport import ALERT_USER_CANCELED, OUTPUT_HIGH_WATER, HandshakeDeadline, PeerCheck, PortFailed, TlsTransport


class WasiIoPort:
    """Ciphertext over a pair of wasi:io streams: read from the guest's input stream,
    written to its output stream; waited on through their pollables."""

    def __init__(self, ciphertext_in: InputStream, ciphertext_out: OutputStream) -> None:
        self.cin = ciphertext_in
        self.cout = ciphertext_out
        self.cin_ready = ciphertext_in.subscribe()
        self.cout_ready = ciphertext_out.subscribe()
        self.record = getattr(ciphertext_in, "record", None)  # accepted sockets only
        self.closed = False

    def receive(self, limit: int) -> bytes | None:
        try:
            return self.cin.read(limit)
        except StreamClosed:
            return None
        except StreamFailed as e:
            raise PortFailed(f"reading from the transport failed: {e}") from None

    def send(self, data: bytearray) -> int:
        try:
            permit = self.cout.check_write()
            if not permit:
                return 0
            chunk = bytes(data[:permit])
            self.cout.write(chunk)
            self.cout.flush()
            return len(chunk)
        except StreamClosed:
            raise PortFailed("the transport's output stream is closed") from None
        except StreamFailed as e:
            raise PortFailed(f"writing to the transport failed: {e}") from None

    def send_whole(self, data: bytes) -> bool:
        """All of ``data`` if the output takes it whole now (an alert before closing: half
        a record would be garbage); whether it did."""
        try:
            if self.cout.check_write() < len(data):
                return False
            self.cout.write(data)
            self.cout.flush()
            return True
        except (StreamClosed, StreamFailed):
            return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for resource in (self.cin_ready, self.cout_ready, self.cin, self.cout):
                resource.drop()

    def add_waits(self, waits: Waits, *, output: bool, input: bool) -> None:
        """Wait for the output to take more (``output``) and for input (``input``)."""
        if output:
            self.cout_ready.add_waits(waits)
        if input:
            self.cin_ready.add_waits(waits)


class Role(enum.Enum):
    """Who uses a transport: the handshake resource until its end, then the connection and
    its two plaintext streams (each until the guest drops it)."""

    HANDSHAKE = "handshake"
    CONNECTION = "connection"
    INPUT = "input"
    OUTPUT = "output"


_AFTER_HANDSHAKE = frozenset({Role.CONNECTION, Role.INPUT, Role.OUTPUT})


class WasiIoTransport(TlsTransport):
    """A connection over wasi:io streams.

    Its lifetime follows the resources' states, with no counting: it starts used by the
    handshake resource; ``hand_over`` (the transition that ends a handshake with a
    connection) gives it to the connection and the two plaintext streams; ``let_go`` removes
    one of those when the guest drops it; ``close`` (the last one gone, or a failed
    handshake) drops the ciphertext streams, so their socket closes then, not at a GC pass.
    """

    port: WasiIoPort

    def __init__(self, engine: TlsEngine, port: WasiIoPort, usage: TlsUsage | None = None) -> None:
        super().__init__(engine, port, usage)
        self.users: set[Role] = {Role.HANDSHAKE}

    def hand_over(self) -> None:
        """The handshake resource ends with an established connection."""
        assert self.users == {Role.HANDSHAKE}, self.users
        self.users = set(_AFTER_HANDSHAKE)

    def let_go(self, role: Role) -> None:
        if role in self.users:
            if self.users == {role}:
                self.send_pending()  # the last word (close_notify, an alert) goes out if the stream takes it now
            self.users.discard(role)
            if not self.users:
                self.release()

    def close(self) -> None:
        """End the connection now (a failed handshake): later users see it closed."""
        if self.users:
            self.send_pending()  # what is queued (an alert) goes out if the stream takes it now
            self.users.clear()
            self.release()

    def _handshake_failed(self) -> None:
        self.close()

    def add_waits(self, waits: Waits, *, want_input: bool) -> None:
        if self.closed:
            waits.soon()  # nothing left to wait for: the next check reports the end
            return
        port = self.port
        if self.pending_out or not port.cout_ready.ready():
            port.add_waits(waits, output=True, input=False)
        elif not want_input:
            waits.soon()
        if want_input:
            if self.engine.input_ended:
                waits.soon()  # the end of input is there to be reported, not awaited
            else:
                port.add_waits(waits, output=False, input=True)

    def flushed(self) -> bool:
        """Every ciphertext byte so far was handed on and the ciphertext stream flushed it."""
        if self.send_broken or self.closed:
            return True
        return not self.pending_out and self.port.cout_ready.ready()


class TlsInputStream(InputStream):
    """Decrypted bytes from the peer."""

    # Ciphertext pumps per read or readiness check: enough for any record, and a peer that
    # floods us with records that carry no data cannot keep one guest call busy for long.
    MAX_PUMPS = 16

    def __init__(self, transport: WasiIoTransport) -> None:
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

    def _take(self, n: int) -> list[bytes] | None:
        """Up to n bytes of plaintext as the records they came in (the buffered one first,
        then those OpenSSL already holds); [] if none yet; None at the end (StreamClosed
        and StreamFailed are raised here, a failure after some bytes the next time)."""
        deferred = self._deferred_failure
        if deferred is not None and not self._buffer:
            self._deferred_failure = None
            failure = self.transport.read_failure(deferred)
            raise StreamFailed(str(failure), failure.code, "tls")
        self._fill()
        if not self._buffer:
            if self._closed:
                raise StreamClosed()
            return []
        first, self._buffer = self._buffer[:n], self._buffer[n:]
        return [first] if self._buffer or len(first) == n else self._record_list(first, n)

    def read(self, n: int) -> bytes:
        parts = self._take(n)
        return b"".join(parts) if parts else b""

    def read_into(self, n: int, fill: Any) -> Any:
        """``read`` with the plaintext copied once, straight into the guest's buffer (see
        ``InputStream.read_into``), without joining the records first."""
        parts = self._take(n)
        if not parts:
            return b""
        view = fill(sum(len(p) for p in parts))
        at = 0
        for part in parts:
            view[at:at + len(part)] = part
            at += len(part)
        return fill.done(at)

    def _record_list(self, chunk: bytes, n: int) -> list[bytes]:
        """Add records OpenSSL has already received, up to n bytes: one call from the guest
        then moves several records (each call costs more than a record's decryption)."""
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

    def __init__(self, transport: WasiIoTransport) -> None:
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
    """An established connection (either package); its streams are separate resources.
    The peer's chain is the handshake's, decoded once."""

    def __init__(self, transport: WasiIoTransport) -> None:
        self.transport = transport
        self.peer = transport.peer
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


class PendingHandshake(HostResource):
    """A handshake in progress (either side), as a resource; ``poll`` advances it without
    blocking. Its states are its transport's (``TlsTransport.begin_handshake``, with this
    class's ``machine``); the transport is the handshake's until the FINISH transition hands
    it to the connection; a failed handshake closes it (after our alert, if any, went out);
    dropping the resource before either lets it go."""

    machine: Machine[HandshakeState] = SERVER_HELLO
    # A side's own words for some of OpenSSL's failures (e.g. a server's missing client
    # certificate): a plain function, so the transport keeps no reference back to here.
    reword: Callable[[TlsFailure], TlsFailure] | None = None

    def __init__(self, transport: WasiIoTransport, on_handshake: Callable[[HandshakeInfo], None] | None = None,
                 *, deadline: HandshakeDeadline | None = None, peer_check: PeerCheck | None = None) -> None:
        self.transport = transport
        transport.begin_handshake(self.machine, deadline=deadline, on_handshake=on_handshake, peer_check=peer_check,
                                  reword=type(self).reword)

    @property
    def states(self) -> Any:
        return self.transport.states

    @property
    def state(self) -> HandshakeState:
        return self.transport.state

    @property
    def failure(self) -> TlsFailure | None:
        failure = self.transport.states.failure if self.transport.states is not None else None
        return failure if isinstance(failure, TlsFailure) else None

    @property
    def deadline(self) -> HandshakeDeadline | None:
        return self.transport.deadline

    def poll(self) -> bool:
        """True once the handshake is no longer running."""
        t = self.transport
        if t.state is not HandshakeState.RUNNING:
            return True
        t.pump()
        while not t.advance_handshake():
            if not t.pump():
                return False
        return True

    def fail(self, failure: TlsFailure, alert: int | None = None) -> None:
        self.transport.fail_handshake(failure, alert)

    def require(self, call: str) -> None:
        """Advance, then answer ``call`` as the state table says (states.WrongState or the
        handshake's TlsFailure when it is not answered)."""
        self.poll()
        self.transport.states.require(call)

    def finish(self, call: str = "finish") -> WasiIoTransport:
        """The FINISH transition: the transport now belongs to the connection and streams."""
        self.require(call)
        self.transport.states.advance(Event.FINISH)
        self.transport.hand_over()
        return self.transport

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


__all__ = ["PendingHandshake", "Role", "TlsConnection", "TlsInputStream", "TlsOutputStream", "WasiIoPort", "WasiIoTransport"]
