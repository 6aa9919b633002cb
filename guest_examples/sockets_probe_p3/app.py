"""The WASI 0.3 counterpart of sockets_probe: `sockets_probe_p3 SUBCOMMAND ARGS...`.

Every subcommand prints deterministic lines on stdout for the tests to assert. It uses the
generated bindings of wasi:sockets@0.3.0 directly: async connect, listen as a stream of
sockets, send taking a stream, receive giving one, UDP send and receive, name lookups.
"""

import asyncio
import ipaddress
import re
import sys

import wit_world
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import ip_name_lookup
from wit_world.imports.wasi_sockets_types import (
    IpAddressFamily,
    IpAddress_Ipv4,
    IpSocketAddress_Ipv4,
    IpSocketAddress_Ipv6,
    Ipv4SocketAddress,
    Ipv6SocketAddress,
    TcpSocket,
    UdpSocket,
)

CHUNK = 1 << 20
PATTERN = bytes(range(256)) * (CHUNK // 256)


def out(*parts):
    print(*parts, flush=True)


def code(e):
    """An error code as its WIT name: ErrorCode_ConnectionRefused -> connection-refused."""
    v = e.value if isinstance(e, Err) else e
    name = type(v).__name__.partition("_")[2]
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower() or repr(v)


def result_word(result):
    """An Ok/Err result (a future's value) as a word."""
    return "ok" if not isinstance(result, Err) else code(result)


def attempt(fn, *args):
    """Result of a call as a word: 'ok', or the error code."""
    try:
        fn(*args)
        return "ok"
    except Err as e:
        return code(e)


async def attempt_async(coro):
    try:
        await coro
        return "ok"
    except Err as e:
        return code(e)


def sockaddr(host, port):
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return IpSocketAddress_Ipv4(Ipv4SocketAddress(port, tuple(ip.packed)))
    words = tuple(int.from_bytes(ip.packed[i:i + 2], "big") for i in range(0, 16, 2))
    return IpSocketAddress_Ipv6(Ipv6SocketAddress(port, 0, words, 0))


def family_of(host):
    return IpAddressFamily.IPV4 if ipaddress.ip_address(host).version == 4 else IpAddressFamily.IPV6


def show_addr(a):
    if isinstance(a, IpSocketAddress_Ipv4):
        return "%s:%d" % (".".join(map(str, a.value.address)), a.value.port)
    return "[%s]:%d" % (ipaddress.IPv6Address(b"".join(w.to_bytes(2, "big") for w in a.value.address)), a.value.port)


def port_of(a):
    return a.value.port


async def connect(host, port):
    sock = TcpSocket.create(family_of(host))
    await sock.connect(sockaddr(host, port))
    return sock


def listen(host, port):
    sock = TcpSocket.create(family_of(host))
    sock.bind(sockaddr(host, port))
    return sock, sock.listen()


async def read_all(data, count_only=False):
    """Everything a receive stream delivers until it ends: the bytes (or their count)."""
    chunks, total = [], 0
    with data:
        while not data.writer_dropped:
            chunk = await data.read(CHUNK)
            total += len(chunk)
            if not count_only:
                chunks.append(chunk)
    return total if count_only else b"".join(chunks)


async def send_all(sock, payload):
    """Send `payload` and close the stream (FIN); the send future's result as a word."""
    tx, rx = wit_world.byte_stream()
    done = sock.send(rx)
    with tx:
        await tx.write_all(payload)
    return result_word(await done.read())


# --- subcommands ------------------------------------------------------------------------


async def cmd_echo_client(host, port, message):
    sock = await connect(host, int(port))
    out("local", "ipv6" if sock.get_address_family() == IpAddressFamily.IPV6 else "ipv4",
        "remote", show_addr(sock.get_remote_address()))
    data, received = sock.receive()
    sent, echoed = await asyncio.gather(send_all(sock, message.encode()), read_all(data))
    out("echo:", echoed.decode())
    out("send", sent, "receive", result_word(await received.read()))
    sock.__exit__(None, None, None)


async def serve_one(sock):
    """Echo what the client sends until it closes its side, then close ours."""
    with sock:
        data, received = sock.receive()
        tx, rx = wit_world.byte_stream()
        sent = sock.send(rx)
        with tx, data:
            while not data.writer_dropped:
                chunk = await data.read(65536)
                if chunk:
                    await tx.write_all(chunk)
        await sent.read()
        await received.read()


async def cmd_echo_server(host, port, clients):
    """Serve `clients` connections concurrently, each echoed by its own task."""
    listener, incoming = listen(host, int(port))
    out("ready", show_addr(listener.get_local_address()))
    wanted, tasks, most_open = int(clients), [], 0
    with listener, incoming:
        while len(tasks) < wanted:
            accepted = await incoming.read(1)
            if not accepted:
                break
            tasks.append(asyncio.ensure_future(serve_one(accepted[0])))
            most_open = max(most_open, sum(1 for t in tasks if not t.done()))
    await asyncio.gather(*tasks)
    out("served", len(tasks), "most-open", most_open)


async def cmd_download(host, port):
    sock = await connect(host, int(port))
    with sock:
        data, received = sock.receive()
        total = await read_all(data, count_only=True)
        out("bytes", total, "end", result_word(await received.read()))


async def cmd_upload(host, port, nbytes):
    """Send `nbytes` (a repeated pattern) and close the sending side."""
    sock = await connect(host, int(port))
    with sock:
        left = int(nbytes)
        tx, rx = wit_world.byte_stream()
        done = sock.send(rx)
        with tx:
            while left > 0:
                n = min(left, CHUNK)
                await tx.write_all(PATTERN[:n] if n < CHUNK else PATTERN)
                left -= n
        out("sent", nbytes, "end", result_word(await done.read()))


async def cmd_connect(host, port):
    try:
        sock = await connect(host, int(port))
    except Err as e:
        out("connect error", code(e))
        return
    out("connected")
    sock.__exit__(None, None, None)


async def cmd_bind(host, port):
    try:
        sock, incoming = listen(host, int(port))
    except Err as e:
        out("bind error", code(e))
        return
    out("listening", show_addr(sock.get_local_address()))
    incoming.__exit__(None, None, None)
    sock.__exit__(None, None, None)


async def cmd_churn(host, port, count):
    for _ in range(int(count)):
        sock = await connect(host, int(port))
        sock.__exit__(None, None, None)
    out("churned", count)


async def cmd_hoard(count):
    """Create up to `count` TCP sockets, keeping them all open; report where it stopped."""
    held = []
    try:
        while len(held) < int(count):
            held.append(TcpSocket.create(IpAddressFamily.IPV4))
        out("holding", len(held))
    except Err as e:
        out("holding", len(held), "then", code(e))
    for s in held:
        s.__exit__(None, None, None)
    TcpSocket.create(IpAddressFamily.IPV4).__exit__(None, None, None)
    out("after closing: created one more")


async def cmd_reset(host, port):
    """Read until the stream ends; report how it ended (a peer reset is the future's err),
    then how a send on the reset connection ends."""
    sock = await connect(host, int(port))
    with sock:
        data, received = sock.receive()
        total = await read_all(data, count_only=True)
        out("read", total, "then", result_word(await received.read()))
        out("send", await send_all(sock, b"x" * 100_000))


async def cmd_udp_echo(host, port, count):
    sock = UdpSocket.create(family_of(host))
    with sock:
        sock.bind(sockaddr(host, int(port)))
        out("ready", show_addr(sock.get_local_address()))
        for _ in range(int(count)):
            data, source = await sock.receive()
            await sock.send(data, source)
        out("udp echoed", count)


async def cmd_udp_client(host, port, *messages):
    local = "::1" if ":" in host else "127.0.0.1"
    sock = UdpSocket.create(family_of(host))
    with sock:
        sock.bind(sockaddr(local, 0))
        sock.connect(sockaddr(host, int(port)))
        out("remote", show_addr(sock.get_remote_address()))
        for message in messages:
            await sock.send(message.encode(), None)
            data, source = await sock.receive()
            out("reply:", data.decode(), "from", show_addr(source))


async def cmd_lookup(name):
    try:
        addresses = await ip_name_lookup.resolve_addresses(name)
    except Err as e:
        out("error", code(e))
        return
    for a in addresses:
        if isinstance(a, IpAddress_Ipv4):
            out("address", ".".join(map(str, a.value)))
        else:
            out("address", str(ipaddress.IPv6Address(b"".join(w.to_bytes(2, "big") for w in a.value))))


async def cmd_states(host):
    """Wrong-state calls, address checks and socket options, on sockets of its own (a
    listener, a client of it, a port nobody listens on): the same lines on any host."""
    fam = family_of(host)
    other = sockaddr("::1" if fam == IpAddressFamily.IPV4 else "127.0.0.1", 0)
    unspecified = "0.0.0.0" if fam == IpAddressFamily.IPV4 else "::"
    multicast = "224.0.0.1" if fam == IpAddressFamily.IPV4 else "ff02::1"

    s = TcpSocket.create(fam)
    out("local-address-unbound", attempt(s.get_local_address))
    out("remote-address-unbound", attempt(s.get_remote_address))
    out("is-listening-unbound", s.get_is_listening())
    out("backlog-zero", attempt(s.set_listen_backlog_size, 0))
    out("backlog-set", attempt(s.set_listen_backlog_size, 16), attempt(s.set_listen_backlog_size, 2**64 - 1))
    out("keepalive", attempt(s.set_keep_alive_enabled, True), s.get_keep_alive_enabled(),
        attempt(s.set_keep_alive_enabled, False), s.get_keep_alive_enabled())
    out("keepidle", attempt(s.set_keep_alive_idle_time, 0), attempt(s.set_keep_alive_idle_time, 42_000_000_000),
        s.get_keep_alive_idle_time(), attempt(s.set_keep_alive_idle_time, 1), s.get_keep_alive_idle_time())
    out("keepintvl", attempt(s.set_keep_alive_interval, 0), attempt(s.set_keep_alive_interval, 7_000_000_000),
        s.get_keep_alive_interval())
    out("keepcnt", attempt(s.set_keep_alive_count, 0), attempt(s.set_keep_alive_count, 4), s.get_keep_alive_count(),
        attempt(s.set_keep_alive_count, 2**32 - 1))
    out("hoplimit", attempt(s.set_hop_limit, 0), attempt(s.set_hop_limit, 42), s.get_hop_limit())
    out("rcvbuf", attempt(s.set_receive_buffer_size, 0), attempt(s.set_receive_buffer_size, 0x10000),
        s.get_receive_buffer_size())
    out("sndbuf", attempt(s.set_send_buffer_size, 0), attempt(s.set_send_buffer_size, 0x10000),
        s.get_send_buffer_size())
    out("bind-wrong-family", attempt(s.bind, other))
    out("bind-multicast", attempt(s.bind, sockaddr(multicast, 0)))
    out("bind", attempt(s.bind, sockaddr(host, 0)))
    out("bind-twice", attempt(s.bind, sockaddr(host, 0)))
    out("remote-address-bound", attempt(s.get_remote_address))
    incoming = s.listen()
    out("is-listening", s.get_is_listening())
    out("listen-twice", attempt(s.listen))
    out("backlog-listening", attempt(s.set_listen_backlog_size, 32))
    port = port_of(s.get_local_address())
    out("connect-listening", await attempt_async(s.connect(sockaddr(host, port))))

    c = TcpSocket.create(fam)
    out("connect", await attempt_async(c.connect(sockaddr(host, port))))
    (a,) = await incoming.read(1)
    out("accepted-family-same", a.get_address_family() == fam, "accepted-remote-is-client",
        show_addr(a.get_remote_address()) == show_addr(c.get_local_address()))
    out("connect-connected", await attempt_async(c.connect(sockaddr(host, port))))
    out("bind-connected", attempt(c.bind, sockaddr(host, 0)))
    out("listen-connected", attempt(c.listen))
    out("backlog-connected", attempt(c.set_listen_backlog_size, 8))
    out("send", await send_all(c, b"hello"), "send-again", await send_all(c, b"again"))
    data, received = a.receive()
    out("received", (await read_all(data)).decode(), result_word(await received.read()))
    again, again_received = a.receive()
    out("receive-again", await read_all(again), result_word(await again_received.read()))
    for r in (a, c):
        r.__exit__(None, None, None)
    incoming.__exit__(None, None, None)
    s.__exit__(None, None, None)

    u = TcpSocket.create(fam)
    out("send-unconnected", await send_all(u, b"x"))
    data, received = u.receive()
    out("receive-unconnected", await read_all(data), result_word(await received.read()))
    out("connect-wrong-family", await attempt_async(u.connect(other)))
    out("connect-port-zero", await attempt_async(u.connect(sockaddr(host, 0))))
    out("connect-unspecified", await attempt_async(u.connect(sockaddr(unspecified, port))))
    out("connect-refused", await attempt_async(u.connect(sockaddr(host, port))))
    out("connect-after-failure", await attempt_async(u.connect(sockaddr(host, port))))
    out("options-after-failure", attempt(u.get_keep_alive_enabled), attempt(u.get_local_address))
    u.__exit__(None, None, None)

    d = UdpSocket.create(fam)
    out("udp-local-address-unbound", attempt(d.get_local_address))
    out("udp-remote-address-unconnected", attempt(d.get_remote_address))
    out("udp-disconnect-unconnected", attempt(d.disconnect))
    out("udp-bind-wrong-family", attempt(d.bind, other))
    out("udp-bind", attempt(d.bind, sockaddr(host, 0)), "udp-bind-twice", attempt(d.bind, sockaddr(host, 0)))
    out("udp-hoplimit", attempt(d.set_unicast_hop_limit, 0), attempt(d.set_unicast_hop_limit, 9), d.get_unicast_hop_limit())
    out("udp-rcvbuf", attempt(d.set_receive_buffer_size, 0), attempt(d.set_receive_buffer_size, 0x10000),
        d.get_receive_buffer_size())
    out("udp-send-no-address", await attempt_async(d.send(b"x", None)))
    out("udp-send-port-zero", await attempt_async(d.send(b"x", sockaddr(host, 0))))
    out("udp-send-too-large", await attempt_async(d.send(b"x" * 65536, sockaddr(host, 9))))
    e = UdpSocket.create(fam)
    e.bind(sockaddr(host, 0))
    peer = e.get_local_address()
    out("udp-connect-port-zero", attempt(d.connect, sockaddr(host, 0)))
    out("udp-connect", attempt(d.connect, peer), show_addr(d.get_remote_address()) == show_addr(peer))
    out("udp-send-other-address", await attempt_async(d.send(b"x", sockaddr(host, port_of(peer) ^ 1))))
    out("udp-send-connected", await attempt_async(d.send(b"ping", None)), await attempt_async(d.send(b"pong", peer)))
    first, source = await e.receive()
    second, _ = await e.receive()
    out("udp-received", first.decode(), second.decode(), show_addr(source) == show_addr(d.get_local_address()))
    out("udp-disconnect", attempt(d.disconnect), attempt(d.get_remote_address))
    for r in (d, e):
        r.__exit__(None, None, None)

    fresh = UdpSocket.create(fam)
    out("udp-receive-unbound", await attempt_async(fresh.receive()))
    fresh.__exit__(None, None, None)
    out("done")


COMMANDS = {
    "echo-client": cmd_echo_client,
    "echo-server": cmd_echo_server,
    "download": cmd_download,
    "upload": cmd_upload,
    "connect": cmd_connect,
    "bind": cmd_bind,
    "churn": cmd_churn,
    "hoard": cmd_hoard,
    "reset": cmd_reset,
    "udp-echo": cmd_udp_echo,
    "udp-client": cmd_udp_client,
    "lookup": cmd_lookup,
    "states": cmd_states,
}


class Run(exports.Run):
    async def run(self) -> None:
        args = sys.argv[1:]
        if not args or args[0] not in COMMANDS:
            out("usage: sockets_probe_p3", "|".join(COMMANDS))
            raise Err(None)
        try:
            await COMMANDS[args[0]](*args[1:])
        except Err as e:
            out("unexpected error", code(e))
            raise Err(None)
