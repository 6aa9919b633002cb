"""A TLS client guest on this project's client API (wasi-tls-host:tls/client).

    tls_client ADDRESS PORT [--server-name NAME] [--alpn h2,http/1.1] [--tls 1.2|1.3]
               [--identity NAME] [--expect-code sha256:HEX] [--send LINE] [--timeout SECONDS]
               [--connections N] [--read-to-end] [--end close|truncate]

Connects over wasi:sockets to ADDRESS (an IPv4 literal), verifies the server as NAME
(default: ADDRESS), and prints one ``key=value`` line per fact: the server chain's subjects,
the host's verification verdict, the negotiated version, suite and ALPN id, whether the
handshake resumed an earlier session, the handshake's microseconds as the guest measured
them (``handshake-us``, from the ClientHello to the established connection), with ``--send``
the server's one-line reply, and with ``--read-to-end`` the bytes read until the server ended
the stream (``received``) and how it ended (``end=close_notify`` or ``end=<code>: <message>``).
``--end truncate`` drops the connection without close_notify (default: close_notify).
``--connections N`` does all that N times, one connection after another (the second can
resume the first's session: a TLS 1.3 ticket arrives after the handshake, so use ``--send``).
A failure prints ``error=<code>: <message>`` and exits with status 1. Every wait is bounded
by ``--timeout`` (default 10 s, for each connection).
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import (
    client,
    environment,
    exit,
    identities,
    instance_network,
    monotonic_clock,
    network,
    poll,
    tcp_create_socket,
)

from tls_host_errors import describe, stream_error, would_block

VERSIONS = {"1.2": 0x0303, "1.3": 0x0304}


def say(line):
    print(line, flush=True)


def fail(line):
    say(f"error={line}")
    exit.exit(Err(None))




class Deadline:
    def __init__(self, seconds):
        self.at = monotonic_clock.now() + int(seconds * 1e9)

    def wait(self, pollable, what):
        timer = monotonic_clock.subscribe_instant(self.at)
        try:
            if 0 not in poll.poll([pollable, timer]):
                fail(f"timeout: waiting for {what}")
        finally:
            timer.__exit__(None, None, None)


def tls_call(getter, pollable, deadline, what):
    """Call ``getter`` until it stops failing with would-block."""
    while True:
        try:
            return getter()
        except Err as e:
            if not would_block(e):
                raise
        deadline.wait(pollable, what)


def connect_tcp(address, port, deadline):
    parts = tuple(int(p) for p in address.split("."))
    sock = tcp_create_socket.create_tcp_socket(network.IpAddressFamily.IPV4)
    remote = network.IpSocketAddress_Ipv4(network.Ipv4SocketAddress(port, parts))
    sock.start_connect(instance_network.instance_network(), remote)
    ready = sock.subscribe()
    while True:
        try:
            rx, tx = sock.finish_connect()
            break
        except Err as e:
            if e.value != network.ErrorCode.WOULD_BLOCK:
                fail(f"connect: {e.value.name.lower().replace('_', '-')}")
        deadline.wait(ready, "the TCP connection")
    ready.__exit__(None, None, None)
    return sock, rx, tx


def read_line(rx, deadline):
    """The peer's first line (without the newline), or None at a clean end of data."""
    ready = rx.subscribe()
    data = b""
    try:
        while b"\n" not in data:
            try:
                chunk = rx.read(4096)
            except Err as e:
                reason = stream_error(e)
                if reason is not None:
                    fail(f"{reason}")
                return data.decode(errors="replace") if data else None
            if not chunk:
                deadline.wait(ready, "the reply")
            data += chunk
    finally:
        ready.__exit__(None, None, None)
    return data.split(b"\n", 1)[0].decode(errors="replace")


def write_all(tx, data, deadline):
    ready = tx.subscribe()
    try:
        while data:
            n = tx.check_write()
            if n == 0:
                deadline.wait(ready, "room to write")
                continue
            tx.write(data[:n])
            data = data[n:]
        tx.flush()
        while tx.check_write() == 0:
            deadline.wait(ready, "the flush")
    finally:
        ready.__exit__(None, None, None)


def main(argv):
    address, port = argv[0], int(argv[1])
    opts = {"--server-name": address, "--timeout": "10", "--connections": "1", "--end": "close"}
    i = 2
    while i < len(argv):
        if argv[i] == "--read-to-end":
            opts[argv[i]] = "yes"
            i += 1
            continue
        opts[argv[i]] = argv[i + 1]
        i += 2
    for _ in range(int(opts["--connections"])):
        connection(address, port, opts)


def read_to_end(rx, deadline):
    """(bytes read, how the stream ended) reading until the server ends it."""
    ready = rx.subscribe()
    total = 0
    try:
        while True:
            try:
                chunk = rx.read(65536)
            except Err as e:
                return total, stream_error(e) or "close_notify"
            if not chunk:
                deadline.wait(ready, "the end of the stream")
            total += len(chunk)
    finally:
        ready.__exit__(None, None, None)


def connection(address, port, opts):
    deadline = Deadline(float(opts["--timeout"]))

    hello = client.OutgoingClientHello(opts["--server-name"])
    if "--alpn" in opts:
        hello.set_alpn_ids([p.encode() for p in opts["--alpn"].split(",")])
    if "--tls" in opts:
        version = VERSIONS[opts["--tls"]]
        hello.set_protocol_versions(version, version)
    if "--expect-code" in opts:
        hello.expect_peer_code(opts["--expect-code"])
    if "--identity" in opts:
        store = identities.preopened_identities()
        identity = store.find_by_name(opts["--identity"])
        if identity is None:
            fail(f"access-denied: identity {opts['--identity']} was not preopened")
        hello.set_client_identity(identity)
        say(f"client-identity={identity.public_identity().subject()}")

    sock, rx, tx = connect_tcp(address, port, deadline)
    started = monotonic_clock.now()
    handshake = client.OutgoingClientHello.connect(hello, rx, tx)
    ready = handshake.subscribe()
    try:
        chain = tls_call(handshake.server_chain, ready, deadline, "the handshake")
        say(f"chain={' | '.join(c.subject() for c in chain) or '-'}")
        code = chain[0].code_identity() if chain else None
        say(f"server-code={code.digest if code is not None else '-'}")
    except Err as e:
        say(f"chain=- ({describe(e.value)})")
    try:
        handshake.verification()
        say("verification=ok")
    except Err as e:
        say(f"verification={describe(e.value)}")
        fail(describe(e.value))
    say(f"version=0x{handshake.protocol_version():04x}")
    say(f"suite=0x{handshake.cipher_suite():04x}")
    alpn = handshake.alpn_id()
    say(f"alpn={alpn.decode() if alpn else '-'}")
    ready.__exit__(None, None, None)
    conn, prx, ptx = client.IncomingServerHello.finish(handshake)
    say(f"handshake-us={(monotonic_clock.now() - started) // 1000}")
    say(f"resumed={str(conn.resumed()).lower()}")

    if "--send" in opts:
        try:
            write_all(ptx, opts["--send"].encode() + b"\n", deadline)
        except Err as e:
            fail(stream_error(e) or "closed")
        reply = read_line(prx, deadline)
        say(f"reply={reply if reply is not None else '-'}")
    if "--read-to-end" in opts:
        received, end = read_to_end(prx, deadline)
        say(f"received={received}")
        say(f"end={end}")
    if opts["--end"] != "truncate":
        conn.close_output()
    for resource in (prx, ptx, conn, sock):
        resource.__exit__(None, None, None)
    say("done")


class Run(exports.Run):
    def run(self) -> None:
        main(environment.get_arguments()[1:])
