"""Every state of the host's TLS resources, and which calls each state answers.

The rules of this file (after h11's ``_state.py``):

* Everything that decides whether a TLS resource call is valid lives here: one enum of
  states per resource, one transition table per resource, and one ``require`` that rejects
  a call in the wrong state (``would-block`` while the state can still change on its own,
  ``invalid-state`` when it cannot, the recorded failure in a failed state).
* Resource classes (``server.py``, ``client.py``, ``connection.py``, ``wasi_tls.py``,
  ``transport.py``, and their WASI 0.3 forms, ``*_p3.py``) keep one ``StateMachine`` each
  and change it only through ``advance``. The 0.3 forms use the same tables: where a 0.2
  call answers ``would-block``, the 0.3 call (``async``) waits for the state to change.
* This file moves no bytes and knows nothing of OpenSSL or of which package (upstream
  ``wasi:tls`` or ``wasi-tls-host:tls``) is calling; it does not know the WIT error types.

Resources and their machines (``CALLS`` says which calls each state answers):

=============================  ===========================  =================================
resource                        machine                      ends when
=============================  ===========================  =================================
wasi-tls-host incoming-client-  ``CLIENT_HELLO``             accept/reject consume it
hello (server)
wasi-tls-host incoming-server-  ``HANDSHAKE``                finish consumes it (FINISHED)
hello, incoming-client-exchange
wasi:tls future-client-streams  ``HANDSHAKE``                get takes the outcome (FINISHED)
wasi-tls-host connection,       ``CONNECTION``               the guest drops it
wasi:tls client-connection
wasi:tls 0.3 connector          ``CONNECTOR``                connect consumes it
wasi:tls 0.3 connect's          ``HANDSHAKE`` (``CONNECT``)  it is established or fails
handshake
=============================  ===========================  =================================

(``HANDSHAKE`` is one set of transitions, ``_HANDSHAKE_TRANSITIONS``; each resource seeing a
handshake has its own ``calls``.)

The resources the guest only fills in (outgoing-client-hello, outgoing-server-hello, wasi:tls
client-handshake) have one state, answer every call until a consuming call takes them, and
so need no machine.

A consuming (``[static]``) call takes the guest's handle, so no call can reach a resource
after it; the states after one (ANSWERED, FINISHED) exist so the transport and the limits see
the resource's end, and so a host bug that reuses the object fails loudly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, Mapping, TypeVar


class ClientHelloState(enum.Enum):
    """A server's incoming client hello: the host reads the client's first flight."""

    READING = "reading"      # bytes of the ClientHello still to come
    RECEIVED = "received"    # parsed; the guest may look at it and answer
    FAILED = "failed"        # malformed, too big, peer gone, deadline passed (alert sent)
    ANSWERED = "answered"    # accept or reject consumed it


class HandshakeState(enum.Enum):
    """A handshake run by OpenSSL (either side) until its streams are handed out."""

    RUNNING = "running"
    ESTABLISHED = "established"
    FAILED = "failed"        # the failure is recorded; the transport is closed
    FINISHED = "finished"    # finish/get handed out the connection (or the failure)


class ConnectionState(enum.Enum):
    OPEN = "open"
    OUTPUT_CLOSED = "output-closed"  # close-output sent close_notify


class Event(enum.Enum):
    HELLO_COMPLETE = "hello-complete"
    FAIL = "fail"
    ACCEPT = "accept"
    REJECT = "reject"
    ESTABLISH = "establish"
    FINISH = "finish"
    CLOSE_OUTPUT = "close-output"
    SEND = "send"
    RECEIVE = "receive"
    CONNECT = "connect"


S = TypeVar("S", bound=enum.Enum)


@dataclass(frozen=True)
class Machine(Generic[S]):
    """One resource's states: ``transitions[state][event] -> next state``; ``calls[name]``
    is the set of states in which that call is answered."""

    resource: str
    initial: S
    transitions: Mapping[S, Mapping[Event, S]]
    calls: Mapping[str, frozenset[S]]
    # States that change on their own (more bytes, the peer, a deadline): a call that is not
    # answered in one would block, rather than being a mistake.
    pending: frozenset[S] = frozenset()
    # States that answer every unanswered call with the failure that caused them.
    failed: frozenset[S] = frozenset()
    # What a call refused as invalid-state needed, for the message (when the state's name
    # alone does not say it).
    hints: Mapping[str, str] = field(default_factory=dict)

    def answer(self, state: S, call: str) -> str:
        """How ``call`` in ``state`` is answered: "ok", "would-block", "failure" or
        "invalid-state" (the tests generate their cases from this)."""
        if state in self.calls[call]:
            return "ok"
        if state in self.pending:
            return "would-block"
        if state in self.failed:
            return "failure"
        return "invalid-state"


_H, _CH, _C = HandshakeState, ClientHelloState, ConnectionState
_HELLO_ANY = frozenset(_CH) - {_CH.ANSWERED}

CLIENT_HELLO: Machine[ClientHelloState] = Machine(
    resource="incoming-client-hello",
    initial=_CH.READING,
    transitions={
        _CH.READING: {Event.HELLO_COMPLETE: _CH.RECEIVED, Event.FAIL: _CH.FAILED, Event.REJECT: _CH.ANSWERED},
        _CH.RECEIVED: {Event.ACCEPT: _CH.ANSWERED, Event.FAIL: _CH.FAILED, Event.REJECT: _CH.ANSWERED},
        _CH.FAILED: {Event.REJECT: _CH.ANSWERED, Event.FAIL: _CH.FAILED},
        _CH.ANSWERED: {},
    },
    calls={
        "subscribe": _HELLO_ANY,
        "server-name": frozenset({_CH.RECEIVED}),
        "alpn-ids": frozenset({_CH.RECEIVED}),
        "protocol-versions": frozenset({_CH.RECEIVED}),
        "cipher-suites": frozenset({_CH.RECEIVED}),
        "signature-schemes": frozenset({_CH.RECEIVED}),
        "accept": frozenset({_CH.RECEIVED}),
        "reject": _HELLO_ANY,
    },
    pending=frozenset({_CH.READING}),
    failed=frozenset({_CH.FAILED}),
)

_HANDSHAKE_TRANSITIONS: Mapping[HandshakeState, Mapping[Event, HandshakeState]] = {
    _H.RUNNING: {Event.ESTABLISH: _H.ESTABLISHED, Event.FAIL: _H.FAILED},
    # FAIL from ESTABLISHED: the host refuses a peer after OpenSSL accepted it (its code
    # claim does not match what the guest expects: tls/code_identity.py).
    _H.ESTABLISHED: {Event.FINISH: _H.FINISHED, Event.FAIL: _H.FAILED},
    _H.FAILED: {Event.FAIL: _H.FAILED, Event.FINISH: _H.FINISHED},
    _H.FINISHED: {},
}
_LIVE = frozenset({_H.RUNNING, _H.ESTABLISHED, _H.FAILED})
_ESTABLISHED = frozenset({_H.ESTABLISHED})


def _handshake(resource: str, calls: Mapping[str, frozenset[HandshakeState]], *, failure_answers: bool = True) -> Machine[HandshakeState]:
    """A resource that sees one handshake run (the transitions above): calls not answered
    yet would block while it runs; with ``failure_answers`` a failed one answers them with
    its failure."""
    return Machine(resource=resource, initial=_H.RUNNING, transitions=_HANDSHAKE_TRANSITIONS, calls=calls,
                   pending=frozenset({_H.RUNNING}), failed=frozenset({_H.FAILED}) if failure_answers else frozenset())


# wasi-tls-host incoming-server-hello (client side; both package versions).
SERVER_HELLO = _handshake("incoming-server-hello", {
    "subscribe": _LIVE,
    "protocol-version": _ESTABLISHED,
    "cipher-suite": _ESTABLISHED,
    "alpn-id": _ESTABLISHED,
    # The chain is worth seeing when verification failed too (the guest can show why).
    "server-chain": frozenset({_H.ESTABLISHED, _H.FAILED}),
    "verification": _ESTABLISHED,
    "finish": _ESTABLISHED,
})

# wasi-tls-host incoming-client-exchange (server side; both package versions).
CLIENT_EXCHANGE = _handshake("incoming-client-exchange", {"subscribe": _LIVE, "client-identity": _ESTABLISHED, "finish": _ESTABLISHED})

# Upstream wasi:tls 0.2 future-client-streams: ``get`` answers once with the outcome, success
# or failure (FINISHED after), then ``invalid-state`` (WIT: ``some(err)``).
FUTURE_CLIENT_STREAMS = _handshake("future-client-streams", {"subscribe": frozenset(_H), "get": frozenset({_H.ESTABLISHED, _H.FAILED})},
                                   failure_answers=False)

# Upstream wasi:tls 0.3 connect: the handshake the static async connect waits for; it
# answers ok once established, else the failure.
CONNECT = _handshake("connect", {"connect": _ESTABLISHED})


class ConnectorState(enum.Enum):
    """Upstream wasi:tls 0.3 connector: send and receive set up its streams (each once, in
    either order); connect consumes it."""

    NEW = "new"
    SENDING = "sending"
    RECEIVING = "receiving"
    READY = "ready"
    CONNECTED = "connected"


_K = ConnectorState
CONNECTOR: Machine[ConnectorState] = Machine(
    resource="connector",
    initial=_K.NEW,
    transitions={
        _K.NEW: {Event.SEND: _K.SENDING, Event.RECEIVE: _K.RECEIVING},
        _K.SENDING: {Event.RECEIVE: _K.READY},
        _K.RECEIVING: {Event.SEND: _K.READY},
        _K.READY: {Event.CONNECT: _K.CONNECTED},
        _K.CONNECTED: {},
    },
    calls={
        "send": frozenset({_K.NEW, _K.RECEIVING}),
        "receive": frozenset({_K.NEW, _K.SENDING}),
        "connect": frozenset({_K.READY}),
    },
    hints={
        "send": "send was already called on this connector (each connector sends one stream)",
        "receive": "receive was already called on this connector (each connector receives one stream)",
        "connect": "connect needs send and receive to be set up first",
    },
)

_OPEN = frozenset(_C)
CONNECTION: Machine[ConnectionState] = Machine(
    resource="connection",
    initial=_C.OPEN,
    transitions={
        _C.OPEN: {Event.CLOSE_OUTPUT: _C.OUTPUT_CLOSED},
        _C.OUTPUT_CLOSED: {Event.CLOSE_OUTPUT: _C.OUTPUT_CLOSED},  # close_notify is sent once
    },
    calls={
        "protocol-version": _OPEN, "cipher-suite": _OPEN, "alpn-id": _OPEN, "server-name": _OPEN,
        "peer-identity": _OPEN, "resumed": _OPEN, "close-output": _OPEN,
    },
)


class WrongState(Exception):
    """A call the resource's state does not answer: ``code`` is "would-block" or
    "invalid-state"; the message says what the guest should do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


E = TypeVar("E", bound=BaseException)


def detached(failure: E) -> E:
    """A copy of ``failure`` with no traceback, cause or context, to keep or to raise.

    A failure a resource keeps must never be an exception that was raised, nor be raised
    itself: its traceback holds the frames it passed through, whose locals hold the resource
    (a reference cycle only the garbage collector frees, with an OpenSSL connection and its
    buffers in it: abandoned handshakes piled up that way).
    """
    copy = BaseException.__new__(type(failure), *failure.args)
    copy.__dict__.update(failure.__dict__)
    return copy


class StateMachine(Generic[S]):
    """The current state of one resource, changed only through its machine's table."""

    __slots__ = ("machine", "state", "failure")

    def __init__(self, machine: Machine[S]) -> None:
        self.machine = machine
        self.state: S = machine.initial
        # What ended it, in a failed state (a TlsFailure, or any exception the caller raises).
        self.failure: Exception | None = None

    def __repr__(self) -> str:
        return f"<{self.machine.resource} {self.state.value}>"

    def advance(self, event: Event, failure: Exception | None = None) -> S:
        """Take ``event``'s transition; a missing one is a bug of the host, not the guest's."""
        following = self.machine.transitions[self.state].get(event)
        if following is None:
            raise RuntimeError(f"{self.machine.resource}: no transition for {event.value} in state {self.state.value}")
        if failure is not None and self.failure is None:
            self.failure = detached(failure)
        self.state = following
        return following

    def require(self, call: str) -> None:
        """Return if ``call`` is answered in the current state; raise ``WrongState`` (or the
        recorded failure) if not. The one place a wrong-state call is rejected."""
        answer = self.machine.answer(self.state, call)
        if answer == "ok":
            return
        resource = self.machine.resource
        if answer == "would-block":
            raise WrongState("would-block", f"{resource}.{call}: not ready yet ({self.state.value}): wait on subscribe()")
        if answer == "failure" and self.failure is not None:
            raise detached(self.failure)
        hint = self.machine.hints.get(call)
        if hint is not None:
            raise WrongState("invalid-state", f"{resource}.{call}: {hint} (the {resource} is {self.state.value})")
        raise WrongState("invalid-state", f"{resource}.{call} is not valid once the {resource} is {self.state.value}")
