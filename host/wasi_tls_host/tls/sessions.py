"""Client-side session resumption: the sessions (tickets) servers gave a guest's TLS clients.

Each guest instance has its own ``ClientSessions``, never shared with another guest (a ticket
links the connections that use it, and says where its holder went). It is a bounded LRU
keyed by ``SessionKey``: server name, port, version bounds and the client identity presented;
the trust anchors are the guest's own ``TlsConfig``, one per instance. Both client APIs use it
(``wasi:tls`` upstream and ``wasi-tls-host:tls/client``); ``TlsConfig(resumption=False)``
(``--no-resumption``) turns it off.

* A TLS 1.3 ticket is used once (RFC 8446 appendix C.4: reuse lets observers link
  connections): taking it removes it, and the resumed connection brings fresh ones. A
  TLS 1.2 session is offered until it expires, as OpenSSL and browsers do.
* A session expires at its lifetime: the ticket's lifetime hint (the server's limit, at most
  seven days in TLS 1.3), else OpenSSL's session timeout. pyOpenSSL reads neither, so they
  come from the session's DER form (``i2d_SSL_SESSION``, the ``timeout`` [2] and
  ``ticket_lifetime_hint`` [9] fields of OpenSSL's ``SSL_SESSION_ASN1``).
* With memory BIOs a TLS 1.3 ticket arrives after the handshake and OpenSSL processes it
  inside a read. pyOpenSSL binds no new-session callback (``SSL_CTX_sess_set_new_cb`` is not
  in its private bindings either), but OpenSSL replaces the connection's ``SSL_SESSION`` with
  a new object for each ticket: after every read the engine compares the current session
  pointer (the private binding ``SSL_get_session``) with the one it holds.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from ..runtime.store import PerStore
from ..wasi.socket_streams import SocketInput
from .config import TlsConfig
from .engine import TlsEngine

log = logging.getLogger("wasi_tls_host.tls")

# Servers (keys) remembered per guest, and sessions kept per server (OpenSSL servers send two
# TLS 1.3 tickets per handshake: a few let parallel connections each resume).
MAX_SERVERS = 256
SESSIONS_PER_SERVER = 4
# RFC 8446 §4.6.1: no ticket lives longer than seven days, whatever its hint says.
MAX_LIFETIME = 7 * 24 * 3600


@dataclass(frozen=True)
class SessionKey:
    """Which connections may resume a session: same name, port, versions and identity."""

    server_name: str
    port: int | None  # None: the ciphertext streams are not a socket's
    versions: tuple[int, int]
    identity: bytes | None  # SHA-256 of the client certificate presented, if any


@dataclass
class _Kept:
    session: SSL.Session
    expires_ns: int
    single_use: bool  # TLS 1.3


def _der_items(data: bytes, at: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(tag, start, length) of each DER element in data[at:end] (one-byte tags)."""
    while at + 2 <= end:
        tag, length = data[at], data[at + 1]
        at += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[at:at + size], "big")
            at += size
        yield tag, at, length
        at += length


def session_lifetime(session: SSL.Session) -> int | None:
    """Seconds the session may be used from when it was made: the ticket's lifetime hint,
    else the session's timeout (None if neither can be read)."""
    size = _lib.i2d_SSL_SESSION(session._session, _ffi.NULL)
    if size <= 0:
        return None
    buffer = _ffi.new("unsigned char[]", size)
    _lib.i2d_SSL_SESSION(session._session, _ffi.new("unsigned char **", buffer))
    der = bytes(_ffi.buffer(buffer, size))
    fields: dict[int, int] = {}
    for tag, at, length in _der_items(der, 0, len(der)):
        if tag != 0x30:  # SEQUENCE
            return None
        for field_tag, field_at, field_length in _der_items(der, at, at + length):
            if field_tag in (0xA2, 0xA9):  # [2] timeout, [9] ticket lifetime hint: INTEGER inside
                for int_tag, int_at, int_length in _der_items(der, field_at, field_at + field_length):
                    if int_tag == 0x02:
                        fields[field_tag] = int.from_bytes(der[int_at:int_at + int_length], "big")
        break
    return fields.get(0xA9) or fields.get(0xA2)


class ClientSessions:
    """One guest's sessions, least recently used servers forgotten first."""

    def __init__(self, max_servers: int = MAX_SERVERS, per_server: int = SESSIONS_PER_SERVER) -> None:
        self.max_servers = max_servers
        self.per_server = per_server
        self._servers: OrderedDict[SessionKey, list[_Kept]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._servers.values())

    def take(self, key: SessionKey) -> SSL.Session | None:
        """The newest live session for ``key`` (a TLS 1.3 one is removed: used once)."""
        kept = self._servers.get(key)
        if kept is None:
            return None
        now = time.monotonic_ns()
        kept[:] = [k for k in kept if k.expires_ns > now]
        if not kept:
            del self._servers[key]
            return None
        self._servers.move_to_end(key)
        newest = kept[-1]
        if newest.single_use:
            kept.pop()
            if not kept:
                del self._servers[key]
        return newest.session

    def keep(self, key: SessionKey, session: SSL.Session, *, single_use: bool) -> None:
        lifetime = min(session_lifetime(session) or 0, MAX_LIFETIME)
        if lifetime <= 0:
            return  # a session that cannot be resumed, or whose lifetime is unknown
        entry = _Kept(session, time.monotonic_ns() + lifetime * 1_000_000_000, single_use)
        kept = self._servers.setdefault(key, [])
        if not single_use:
            kept.clear()  # a TLS 1.2 session replaces the server's earlier ones (it is reusable)
        kept.append(entry)
        del kept[:-self.per_server]
        self._servers.move_to_end(key)
        while len(self._servers) > self.max_servers:
            self._servers.popitem(last=False)


# The client sessions of the guest instance a host function runs in: sessions_of(cx).
sessions_of = PerStore(ClientSessions).of


def remote_port(stream: Any) -> int | None:
    """The peer's port when ``stream`` reads from a connected socket (a wasi:io stream of
    one, or anything that says its ``remote_port``: a 0.3 connection's ``StreamPort``)."""
    if not isinstance(stream, SocketInput):
        port = getattr(stream, "remote_port", None)
        return port if isinstance(port, int) else None
    try:
        return int(stream.shared.sock.getpeername()[1])
    except (OSError, IndexError):
        return None


class ClientEngine(TlsEngine):
    """A client engine that offers a kept session and keeps those the server gives it (with
    ``sessions``; None: resumption is off), and logs each handshake at INFO (``-v``)."""

    def __init__(self, context: SSL.Context, server_name: str, sessions: ClientSessions | None, key: SessionKey | None) -> None:
        super().__init__(context, server_side=False, server_name=server_name)
        self.sessions = sessions if key is not None else None
        self.key = key  # None: no sessions, and no log line that would show the port
        # The session last seen on this connection, held: see _watch.
        self._held: SSL.Session | None = None
        if self.sessions is not None:
            assert key is not None
            self._held = self.sessions.take(key)
            if self._held is not None:
                self.conn.set_session(self._held)

    def advance_handshake(self) -> bool:
        if self.handshake_done:
            return True
        if not super().advance_handshake():
            return False
        if self.sessions is not None:
            if self.protocol_version() == 0x0304:
                # Not resumable yet: its tickets come later (_watch). Held, so that its
                # address is not reused by the session a ticket brings.
                self._held = self.conn.get_session()
            else:
                self._watch()
        if log.isEnabledFor(logging.INFO):
            port = f":{self.key.port}" if self.key is not None and self.key.port is not None else ""
            log.info("TLS client %s%s: %s %s, %s", self.server_name, port, self.conn.get_protocol_version_name(),
                     self.cipher_name(), "resumed a session" if self.resumed() else "full handshake")
        return True

    def _plaintext(self, receive: Any, arg: Any) -> Any:
        try:
            return super()._plaintext(receive, arg)
        finally:
            if self.sessions is not None and self.handshake_done:
                self._watch()

    def _watch(self) -> None:
        """Keep the connection's session if it is one not seen before (a new ticket)."""
        current = _lib.SSL_get_session(self.conn._ssl)
        if current == _ffi.NULL or (self._held is not None and current == self._held._session):
            return
        session = self.conn.get_session()
        if session is None or self.sessions is None:
            return
        # Held while the connection lives: a freed session's address could come back as the
        # next ticket's, which would then look already seen.
        self._held = session
        self.sessions.keep(self.key, session, single_use=self.protocol_version() == 0x0304)


def client_engine(cx: Any, config: TlsConfig, server_name: str, ciphertext_in: Any,
                  versions: tuple[int, int] | None = None, identity: Any = None) -> ClientEngine:
    """The engine of a guest's new client connection to ``server_name`` whose ciphertext
    comes from ``ciphertext_in`` (a wasi:io input stream, a 0.3 ``StreamPort``): the config's context for these versions and client
    identity (a PrivateIdentity), with the guest's sessions unless resumption is off."""
    versions = versions or config.version_bounds()
    context = config.client_context(versions, identity)
    if not config.resumption and not log.isEnabledFor(logging.INFO):
        # Nothing reads the key (2-3 us of a client's handshake): no sessions, no log line.
        return ClientEngine(context, server_name, None, None)
    key = SessionKey(server_name.lower(), remote_port(ciphertext_in), versions,
                     identity.public.fingerprint if identity is not None else None)
    return ClientEngine(context, server_name, sessions_of(cx) if config.resumption else None, key)
