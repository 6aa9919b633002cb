"""What a case asks of each side, and what each side says happened.

A case is one TLS client against one TLS server. ``ServerSpec`` and ``ClientSpec`` are the
two halves of what the case's feature asks for (certificates, versions, ALPN, client
authentication, groups, how the connection ends); every peer and every guest runner turns
them into its own flags. What comes back is one ``Seen`` per connection, from whichever side
reported it: fields a side cannot report stay None, and a feature's judge reads the facts
it needs from the side that has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .pki import Credentials

Version = Literal["1.2", "1.3"]
# What a server does once the handshake is done: echo lines until the client ends the
# connection; send ``payload`` bytes and end with close_notify ("close") or without it
# ("truncate"); answer one HTTP/1.x request ("http").
Behaviour = Literal["echo", "close", "truncate", "http"]
ClientAuth = Literal["none", "optional", "required"]

PAYLOAD = 1000  # bytes a "close"/"truncate" server sends
LINE = "level"  # what clients send: a palindrome, so a server that echoes reversed (s_server -rev) echoes it too
GROUP_NAMES = ("X25519", "P-256", "P-384")
SNI_NAME = "b.test"  # the second server name of the "sni" feature


@dataclass(frozen=True)
class ServerSpec:
    version: Version
    cert: Credentials
    sni_cert: Credentials | None = None  # a second certificate, for the server name it names
    alpn: tuple[str, ...] = ()  # accepted, in preference order; () accepts no ALPN
    client_auth: ClientAuth = "none"  # client certificates are verified against the run's CA
    groups: tuple[str, ...] = ()  # accepted key exchange groups; () the implementation's default
    behaviour: Behaviour = "echo"
    tickets: bool = True


@dataclass(frozen=True)
class ClientSpec:
    version: Version
    server_name: str  # sent as SNI and verified
    alpn: tuple[str, ...] = ()  # offered
    identity: Credentials | None = None  # a client certificate to present when asked
    groups: tuple[str, ...] = ()
    connections: int = 1
    send: str | None = LINE  # a line to send after the handshake (its reply is read back)
    read_to_end: bool = False  # read until the server ends the stream (and say how it ended)
    ending: Literal["close", "truncate"] = "close"  # how the client ends: close_notify or a bare TCP close
    resumption: bool = True


@dataclass
class Seen:
    """One connection as one side saw it (None: that side does not say)."""

    ok: bool  # the handshake completed (and, on a client, the server was verified)
    error: str | None = None  # why not, or what went wrong afterwards, in the side's words
    version: str | None = None  # "1.2" or "1.3"
    alpn: str | None = None  # "" when none was agreed
    resumed: bool | None = None
    server_name: str | None = None  # the SNI a server received
    peer_subject: str | None = None  # a server: the client certificate's subject ("" for none)
    reply: str | None = None  # a client: the server's answer to LINE
    received: int | None = None  # a client reading to the end: bytes received
    end: str | None = None  # how the stream ended: "close_notify" or the error
    handshake_ms: float | None = None


@dataclass
class Observation:
    """What one side reported for a case: its connections, and its raw words for details."""

    connections: list[Seen] = field(default_factory=list)
    exit_code: int | None = None
    timed_out: bool = False
    output: str = ""
    problem: str | None = None  # the side broke (crashed, hung, broke its contract): why

    @property
    def first(self) -> Seen | None:
        return self.connections[0] if self.connections else None

    def excerpt(self, limit: int = 300) -> str:
        """The last ``limit`` characters of the side's output, on one line."""
        text = " | ".join(line.strip() for line in self.output.splitlines() if line.strip())
        return text if len(text) <= limit else "..." + text[-limit:]


def version_name(value: str | int | None) -> str | None:
    """"1.2"/"1.3" from the spellings sides use: TLSv1.3, 0x0304, 772, TLS1.3, 1.3."""
    if value is None:
        return None
    if isinstance(value, int):
        return {0x0303: "1.2", 0x0304: "1.3"}.get(value)
    text = value.strip()
    for prefix in ("0x", "0X"):
        if text.startswith(prefix):
            return {0x0303: "1.2", 0x0304: "1.3"}.get(int(text, 16))
    for known in ("1.3", "1.2", "1.1", "1.0"):
        if text.endswith(known) or text.endswith(known.replace(".", "_")):
            return known
    return None
