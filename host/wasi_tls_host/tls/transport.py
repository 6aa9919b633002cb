"""A TLS connection's engine and the ciphertext around it, whatever carries the bytes.

Three layers, after h11's sans-I/O split:

* ``engine.py``: OpenSSL on memory BIOs, bytes in and bytes out;
* this module: ``TlsTransport`` moves ciphertext between an engine and a
  ``CiphertextPort`` -- any byte source and sink that never waits -- keeps the connection's
  failure, and runs its handshake through the transitions of states.py (established only
  once the peer's code was checked; a deadline, our own alerts);
* the surfaces: ``p2.py`` over a pair of WASI 0.2 wasi:io streams, pumped inside guest
  calls and waited on through their pollables, and ``p3.py`` over WASI 0.3 streams, moved
  by one host task per connection. Both TLS packages (upstream ``wasi:tls`` and
  ``wasi-tls-host:tls``) in both versions use one of these.

The surfaces differ only in how bytes move and how one waits; what a connection says to
its peer, what it reports to the guest and when it counts as established are decided here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..wasi.sockets.registry import access_log
from .client_hello import ALERT_FATAL, alert_record
from .engine import CLOSED, CODE_MISMATCH, TRUNCATED, HandshakeInfo, TlsEngine, TlsFailure
from .identities import PublicIdentity
from .limits import TlsLimits, TlsUsage
from .states import Event, HandshakeState, Machine, StateMachine, detached

log = logging.getLogger("wasi_tls_host.tls")

# Ciphertext taken from the port per step, and how much encrypted output may wait for the
# port before plaintext is no longer taken from the guest (backpressure).
READ_CHUNK = 1 << 18
OUTPUT_HIGH_WATER = 1 << 20

ALERT_USER_CANCELED = 90

# The check a handshake runs before it counts as established: the peer's identity -> why it
# is refused, or None (code_identity.peer_code_check).
PeerCheck = Callable[[PublicIdentity | None], "str | None"]


class PortFailed(Exception):
    """The ciphertext's carrier broke (a reset, a dropped stream); ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CiphertextPort(Protocol):
    """Where a connection's ciphertext comes from and goes to. Never waits."""

    # The access-log record of the TCP connection beneath (accepted sockets), or None.
    record: Any

    def receive(self, limit: int) -> bytes | None:
        """Up to ``limit`` bytes the peer sent (b"" if none now); None once its data ended.
        Raises ``PortFailed`` if the carrier broke (reported as the end, with the reason)."""

    def send(self, data: bytearray) -> int:
        """How much of ``data`` was taken now (it may be kept as given: not changed
        afterwards). Raises ``PortFailed`` once nothing can be sent any more."""

    def close(self) -> None:
        """Let go of both directions (the socket beneath may close)."""


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


class TlsTransport:
    """One connection: its engine, its port, what waits to be sent, how it failed, and its
    handshake's states (``begin_handshake``). A surface subclasses it for its lifetime
    rules (``closed``, ``release``) and reacts to the handshake's end
    (``_handshake_established``, ``_handshake_failed``)."""

    def __init__(self, engine: TlsEngine, port: CiphertextPort, usage: TlsUsage | None = None) -> None:
        self.engine = engine
        self.port = port
        self.usage = usage
        self.pending_out = bytearray()
        self.bytes_sent = 0  # ciphertext, for the embedder's statistics
        self.bytes_received = 0
        self.failure: TlsFailure | None = None
        # Why the carrier failed, kept apart from ``failure``: when a peer sends an alert and
        # then resets the connection, the alert (already buffered) is the cause to report,
        # and the reset only explains an otherwise bare "end of data".
        self.transport_error: str | None = None
        self.send_broken = False
        self.closed = False
        # The handshake (begin_handshake): its states, the embedder's deadline and hook,
        # the check of the peer's code, a side's own words for some failures.
        self.states: StateMachine[HandshakeState] | None = None
        self.deadline: HandshakeDeadline | None = None
        self.on_handshake: Callable[[HandshakeInfo], None] | None = None
        self.peer_check: PeerCheck | None = None
        self.reword: Callable[[TlsFailure], TlsFailure] | None = None
        self.peer: PublicIdentity | None = None  # the peer's chain, decoded once
        # Whether the guest may ask for the peer's chain once established (then it is decoded
        # at establishment, while the connection is sure to hold it).
        self.offers_peer = True
        self.handshake_started_ns: int | None = None  # begin_handshake's moment, for HandshakeInfo.handshake_ms

    # --- lifetime ---------------------------------------------------------------------

    def release(self) -> None:
        """The connection is over: the port goes (its socket may close) and the connection
        leaves the guest's limits."""
        if not self.closed:
            self.closed = True
            self.port.close()
            if self.usage is not None:
                self.usage.closed(self.port)

    # --- failures ---------------------------------------------------------------------

    def fail(self, failure: TlsFailure) -> TlsFailure:
        """The connection failed: later calls report ``failure`` (or the first one), and what
        OpenSSL queued on failing (its alert) is sent now, before anyone closes the socket."""
        if self.failure is None:
            self.failure = detached(self.explain(failure))
        self.send_pending()
        return detached(self.failure)

    def explain(self, failure: TlsFailure) -> TlsFailure:
        """Add the carrier's reason to failures that only say the data ended."""
        if self.transport_error and failure.code in (CLOSED, TRUNCATED) and self.transport_error not in failure.message:
            return TlsFailure(failure.code, f"{failure.message} ({self.transport_error})")
        return failure

    def _transport_failed(self, reason: str) -> None:
        if self.transport_error is None:
            self.transport_error = reason

    def send_failure(self, during_handshake: bool) -> TlsFailure:
        """The failure to report once sending is impossible: the peer's own last word if it
        sent one before going away (an alert waiting in the socket: that is why it closed),
        else the carrier's."""
        if self.failure is not None:
            return detached(self.failure)
        if not during_handshake:  # a handshake has already read all there is
            self.receive()
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

    # --- moving bytes -----------------------------------------------------------------

    def pump(self) -> bool:
        """Send and receive what can be moved now; True if any ciphertext arrived."""
        self.send_pending()
        received = self.receive()
        if received:
            self.send_pending()  # the engine may have answered (handshake, key update)
        return received

    def send_pending(self) -> bool:
        """Hand what the engine has queued to the port, as much as it takes now; True if
        anything moved."""
        out = self.engine.take_output()
        if out:
            self.pending_out += out
        if self.send_broken:
            self.pending_out.clear()  # nowhere to send it any more
            return bool(out)
        if not self.pending_out or self.closed:
            return bool(out)
        data, self.pending_out = self.pending_out, bytearray()  # the port may keep ``data``
        try:
            taken = self.port.send(data)
        except PortFailed as e:
            self._transport_failed(e.reason)
            self.send_broken = True
            return True
        if taken < len(data):
            self.pending_out = data[taken:]
        self.bytes_sent += taken
        return bool(out) or taken > 0

    def receive(self) -> bool:
        """Feed the engine what the port has now (up to READ_CHUNK); True if anything came,
        the end of the peer's data included."""
        if self.engine.input_ended or self.closed:
            return False
        received = 0
        try:
            while received < READ_CHUNK:
                data = self.port.receive(READ_CHUNK - received)
                if data is None:
                    self.engine.feed_eof()
                    return True
                if not data:
                    break
                self.engine.feed(data)
                received += len(data)
                self.bytes_received += len(data)
        except PortFailed as e:
            # A reset or other carrier error: the engine sees the end (and reports any alert
            # it had already received); we remember why the data ended.
            self._transport_failed(e.reason)
            self.engine.feed_eof()
            return True
        return received > 0

    # --- the handshake ------------------------------------------------------------------

    def begin_handshake(self, machine: Machine[HandshakeState], *, deadline: HandshakeDeadline | None = None,
                        on_handshake: Callable[[HandshakeInfo], None] | None = None, peer_check: PeerCheck | None = None,
                        reword: Callable[[TlsFailure], TlsFailure] | None = None) -> None:
        """The handshake starts, seen by a resource whose states ``machine`` gives (an
        incoming-server-hello's, a future-client-streams', ...)."""
        self.states = StateMachine(machine)
        self.handshake_started_ns = time.monotonic_ns()
        self.deadline, self.on_handshake, self.peer_check, self.reword = deadline, on_handshake, peer_check, reword

    @property
    def state(self) -> HandshakeState:
        assert self.states is not None
        return self.states.state

    def advance_handshake(self) -> bool:
        """Run the handshake as far as the ciphertext already fed in allows (the surface
        moves the bytes); True once it is no longer running."""
        if self.state is not HandshakeState.RUNNING:
            return True
        try:
            if not self.engine.advance_handshake():
                if self.failure is not None:
                    raise detached(self.failure)
                if self.deadline is not None and self.deadline.passed():
                    self.fail_handshake(self.deadline.failure(), alert=ALERT_USER_CANCELED)
                    return True
                if self.send_broken:  # no way forward: our next flight cannot go out
                    raise self.send_failure(during_handshake=True)
                return False
            self.send_pending()  # our final flight now, not at the first write
            if self.send_broken:  # OpenSSL is done, but the peer never gets our last flight
                raise self.send_failure(during_handshake=True)
            self._establish()
        except TlsFailure as failure:
            self.fail_handshake(failure)
        return True

    def _establish(self) -> None:
        """The ESTABLISH transition, once the peer's code is what the guest expects: before
        it no call answers for a peer that is about to be refused, and the embedder's hook
        sees only connections that happen."""
        assert self.states is not None
        logged = self.port.record is not None and access_log.isEnabledFor(logging.INFO)
        if self.offers_peer or self.peer_check is not None or self.on_handshake is not None or logged:
            # Decoded only when something reads it (about 0.1-0.2 ms): a surface that offers
            # the guest no peer certificate (upstream's connector) leaves it to the checks
            # and hooks here.
            chain = self.engine.peer_chain()
            self.peer = PublicIdentity(chain) if chain else None
        if self.peer_check is not None:
            problem = self.peer_check(self.peer)
            if problem is not None:
                raise TlsFailure(CODE_MISMATCH, problem)
        self.states.advance(Event.ESTABLISH)
        if self.usage is not None:
            self.usage.handshake_ended(self.port)
        # Built only when someone reads it (the embedder's hook, the access log): it costs
        # about 0.15 ms, a tenth of a handshake.
        if self.on_handshake is not None or logged:
            info = self.engine.info(self.peer.der_chain if self.peer is not None else [])
            if self.handshake_started_ns is not None:
                info.handshake_ms = (time.monotonic_ns() - self.handshake_started_ns) / 1e6
            if self.on_handshake is not None:
                try:
                    self.on_handshake(info)
                except Exception:
                    log.exception("on_handshake hook failed")
            if logged:
                self._note_access(info)
        self._handshake_established()

    def fail_handshake(self, failure: TlsFailure, alert: int | None = None) -> None:
        """End the handshake: the peer gets OpenSSL's alert (or ``alert``, while records are
        plaintext), later calls answer ``failure``."""
        assert self.states is not None
        if self.reword is not None:
            failure = self.reword(failure)
        if alert is not None:
            self.send_alert(alert)
        else:
            self.send_pending()  # deliver OpenSSL's alert to the peer, if any
        failure = self.fail(failure)
        if self.peer is None:  # the chain is worth seeing when it did not verify
            chain = self.engine.peer_chain()
            self.peer = PublicIdentity(chain) if chain else None
        self.states.advance(Event.FAIL, failure)
        self._note_access(None)
        log.info("TLS handshake (%s) failed: %s", "server" if self.engine.server_side else self.engine.server_name, failure)
        self._handshake_failed()

    def _handshake_established(self) -> None:
        """A surface's reaction to the ESTABLISH transition."""

    def _handshake_failed(self) -> None:
        """A surface's reaction to the FAIL transition."""

    def _note_access(self, info: HandshakeInfo | None) -> None:
        """Tell the access log's record of the TCP connection beneath (accepted sockets
        have one) what the handshake negotiated (``info``), or why it failed (None)."""
        record = self.port.record
        if record is None or not access_log.isEnabledFor(logging.INFO):
            return
        if info is not None:
            client = self.peer.leaf.subject.rfc4514_string() if self.engine.server_side and self.peer is not None else "-"
            record.annotate(sni=self.engine.requested_server_name() or "-", alpn=info.alpn.decode("ascii", "replace") if info.alpn else "-",
                            version=info.protocol_name, suite=info.cipher or "-", client=client, tls="ok")
            record.handshake_done()
        else:
            assert self.states is not None
            record.annotate(tls=f"failed: {self.states.failure}")


__all__ = ["ALERT_USER_CANCELED", "CiphertextPort", "HandshakeDeadline", "OUTPUT_HIGH_WATER", "PeerCheck", "PortFailed", "READ_CHUNK",
           "TlsTransport"]
