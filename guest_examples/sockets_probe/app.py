"""A wasi:sockets test and benchmark guest: `sockets_probe SUBCOMMAND ARGS...`.

Every subcommand prints deterministic lines on stdout for the tests to assert. It uses the
generated WIT bindings directly (not Python's socket module), so each call maps to one
wasi:sockets function. Pollables are dropped before their parents (the wasmtime CLI checks).
"""

import ipaddress
import sys

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import (
    instance_network,
    ip_name_lookup,
    monotonic_clock,
    network,
    poll,
    stdin,
    streams,
    tcp,
    tcp_create_socket,
    udp,
    udp_create_socket,
)
from wit_world.imports.network import (
    ErrorCode,
    IpAddressFamily,
    IpAddress_Ipv4,
    IpSocketAddress_Ipv4,
    IpSocketAddress_Ipv6,
    Ipv4SocketAddress,
    Ipv6SocketAddress,
)


def out(*parts):
    print(*parts, flush=True)


def code(e):
    v = e.value
    if isinstance(v, ErrorCode):
        return v.name.lower().replace("_", "-")
    if isinstance(v, streams.StreamError_Closed):
        return "closed"
    if isinstance(v, streams.StreamError_LastOperationFailed):
        return "last-operation-failed"
    return repr(v)


def attempt(fn, *args):
    """Result of a call as a word: 'ok', or the error code."""
    try:
        fn(*args)
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


def wait(pollable_owner):
    with pollable_owner.subscribe() as p:
        p.block()


def connect(net, host, port):
    sock = tcp_create_socket.create_tcp_socket(family_of(host))
    sock.start_connect(net, sockaddr(host, port))
    with sock.subscribe() as p:
        while True:
            try:
                inp, outp = sock.finish_connect()
                return sock, inp, outp
            except Err as e:
                if e.value != ErrorCode.WOULD_BLOCK:
                    raise
                p.block()


def listen(net, host, port):
    sock = tcp_create_socket.create_tcp_socket(family_of(host))
    sock.start_bind(net, sockaddr(host, port))
    sock.finish_bind()
    sock.start_listen()
    sock.finish_listen()
    return sock


def write_all(outp, data):
    view = memoryview(data)
    while view:
        chunk, view = view[:4096], view[4096:]
        outp.blocking_write_and_flush(bytes(chunk))


def read_all(inp):
    chunks = []
    while True:
        try:
            chunks.append(inp.blocking_read(65536))
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                return b"".join(chunks)
            raise


def close_all(*resources):
    for r in resources:
        r.__exit__(None, None, None)


# --- subcommands ------------------------------------------------------------------------


def cmd_echo_client(net, host, port, message):
    sock, inp, outp = connect(net, host, int(port))
    out("local", "ipv6" if sock.address_family() == IpAddressFamily.IPV6 else "ipv4", "remote", show_addr(sock.remote_address()))
    write_all(outp, message.encode())
    sock.shutdown(tcp.ShutdownType.SEND)
    out("echo:", read_all(inp).decode())
    close_all(inp, outp, sock)


def cmd_echo_server(net, host, port, clients):
    """Serve `clients` connections concurrently through one poll loop; echo with splice."""
    listener = listen(net, host, int(port))
    out("ready", show_addr(listener.local_address()))
    wanted = int(clients)
    served = 0
    accepted = 0
    open_clients = []  # (sock, inp, outp, pollable)
    most_open = 0
    listen_pollable = listener.subscribe()
    while served < wanted:
        pollables = [c[3] for c in open_clients]
        if accepted < wanted:
            pollables.append(listen_pollable)
        ready = poll.poll(pollables)
        done = []
        for i in ready:
            if i == len(open_clients):
                while accepted < wanted:
                    try:
                        client, inp, outp = listener.accept()
                    except Err as e:
                        if e.value != ErrorCode.WOULD_BLOCK:
                            # A client that reset while waiting: its failure, not the server's.
                            out("accept error", code(e))
                        break
                    accepted += 1
                    open_clients.append((client, inp, outp, inp.subscribe()))
                most_open = max(most_open, len(open_clients))
                continue
            client, inp, outp, _ = open_clients[i]
            try:
                outp.splice(inp, 65536)
                outp.blocking_flush()
            except Err as e:
                done.append(i)
        for i in sorted(done, reverse=True):
            client, inp, outp, p = open_clients.pop(i)
            close_all(p, inp, outp, client)
            served += 1
    close_all(listen_pollable, listener)
    out("served", served, "most-open", most_open)


def cmd_udp_echo(net, host, port, count):
    sock = udp_create_socket.create_udp_socket(family_of(host))
    sock.start_bind(net, sockaddr(host, int(port)))
    sock.finish_bind()
    incoming, outgoing = sock.stream(None)
    out("ready", show_addr(sock.local_address()))
    echoed = 0
    with incoming.subscribe() as readable:
        while echoed < int(count):
            readable.block()
            for d in incoming.receive(16):
                while outgoing.check_send() == 0:
                    wait(outgoing)
                outgoing.send([udp.OutgoingDatagram(d.data, d.remote_address)])
                echoed += 1
    close_all(incoming, outgoing, sock)
    out("udp echoed", echoed)


def cmd_udp_client(net, host, port, *messages):
    local = "::1" if ":" in host else "127.0.0.1"
    sock = udp_create_socket.create_udp_socket(family_of(host))
    sock.start_bind(net, sockaddr(local, 0))
    sock.finish_bind()
    incoming, outgoing = sock.stream(sockaddr(host, int(port)))
    out("remote", show_addr(sock.remote_address()))
    for message in messages:
        while outgoing.check_send() == 0:
            wait(outgoing)
        sent = outgoing.send([udp.OutgoingDatagram(message.encode(), None)])
        with incoming.subscribe() as readable, monotonic_clock.subscribe_duration(5_000_000_000) as timer:
            got = []
            while not got:
                ready = poll.poll([readable, timer])
                if 1 in ready and 0 not in ready:
                    break
                got = incoming.receive(1)
        out("sent", sent, "reply:", got[0].data.decode() if got else "timeout", "from", show_addr(got[0].remote_address) if got else "-")
    close_all(incoming, outgoing, sock)


def cmd_lookup(net, name):
    try:
        stream = ip_name_lookup.resolve_addresses(net, name)
    except Err as e:
        out("error", code(e))
        return
    with stream.subscribe() as p:
        while True:
            try:
                addr = stream.resolve_next_address()
            except Err as e:
                if e.value == ErrorCode.WOULD_BLOCK:
                    p.block()
                    continue
                out("error", code(e))
                break
            if addr is None:
                break
            if isinstance(addr, IpAddress_Ipv4):
                out("address", ".".join(map(str, addr.value)))
            else:
                out("address", str(ipaddress.IPv6Address(b"".join(w.to_bytes(2, "big") for w in addr.value))))
    close_all(stream)


def cmd_connect(net, host, port):
    try:
        sock, inp, outp = connect(net, host, int(port))
    except Err as e:
        out("connect error", code(e))
        return
    out("connected")
    close_all(inp, outp, sock)


def cmd_bind(net, host, port):
    try:
        sock = listen(net, host, int(port))
    except Err as e:
        out("bind error", code(e))
        return
    out("listening", show_addr(sock.local_address()))
    close_all(sock)


def cmd_churn(net, host, port, count):
    for _ in range(int(count)):
        sock, inp, outp = connect(net, host, int(port))
        close_all(inp, outp, sock)
    out("churned", count)


def cmd_hoard(net, count):
    """Create up to `count` TCP sockets, keeping them all open; report where it stopped."""
    held = []
    try:
        while len(held) < int(count):
            held.append(tcp_create_socket.create_tcp_socket(IpAddressFamily.IPV4))
        out("holding", len(held))
    except Err as e:
        out("holding", len(held), "then", code(e))
    close_all(*held)
    again = tcp_create_socket.create_tcp_socket(IpAddressFamily.IPV4)
    out("after closing: created one more")
    close_all(again)


def cmd_download(net, host, port):
    sock, inp, outp = connect(net, host, int(port))
    total = 0
    with inp.subscribe() as readable:
        while True:
            try:
                data = inp.read(1 << 20)
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                raise
            if data:
                total += len(data)
            else:
                readable.block()
    close_all(inp, outp, sock)
    out("bytes", total)


def cmd_drain_stdin(net):
    inp = stdin.get_stdin()
    total = 0
    while True:
        try:
            total += len(inp.blocking_read(1 << 20))
        except Err:
            break
    out("bytes", total)


def cmd_reset(net, host, port):
    """Read until the stream ends; report how it ended (peer reset -> a stream error)."""
    sock, inp, outp = connect(net, host, int(port))
    total = 0
    while True:
        try:
            total += len(inp.blocking_read(65536))
        except Err as e:
            detail = ""
            if isinstance(e.value, streams.StreamError_LastOperationFailed):
                detail = e.value.value.to_debug_string()
            out("read", total, "then", code(e), detail)
            break
    # Writing to the reset connection fails too, without harming the host.
    try:
        outp.blocking_write_and_flush(b"x" * 100)
        outp.blocking_write_and_flush(b"x" * 100)
        out("write ok")
    except Err as e:
        out("write", code(e))
    close_all(inp, outp, sock)


def cmd_states(net, host, port, dead_port):
    """Wrong-state calls and socket options; `port` has a listener, `dead_port` has none."""
    port, dead_port = int(port), int(dead_port)
    fam = family_of(host)
    other = sockaddr("::1" if fam == IpAddressFamily.IPV4 else "127.0.0.1", 0)
    new = lambda: tcp_create_socket.create_tcp_socket(fam)

    s = new()
    with s.subscribe() as p:
        out("unbound-pollable-ready", p.ready())
    out("listen-unbound", attempt(s.start_listen))
    out("finish-bind-not-started", attempt(s.finish_bind))
    out("finish-connect-not-started", attempt(s.finish_connect))
    out("finish-listen-not-started", attempt(s.finish_listen))
    out("local-address-unbound", attempt(s.local_address))
    out("remote-address-unbound", attempt(s.remote_address))
    out("shutdown-unconnected", attempt(s.shutdown, tcp.ShutdownType.BOTH))
    out("bind-wrong-family", attempt(s.start_bind, net, other))
    out("connect-wrong-family", attempt(s.start_connect, net, other))
    out("connect-port-zero", attempt(s.start_connect, net, sockaddr(host, 0)))
    out("connect-unspecified", attempt(s.start_connect, net, sockaddr("0.0.0.0" if fam == IpAddressFamily.IPV4 else "::", port)))
    out("backlog-zero", attempt(s.set_listen_backlog_size, 0))
    out("backlog-set", attempt(s.set_listen_backlog_size, 16))
    out("keepalive-set", attempt(s.set_keep_alive_enabled, True), s.keep_alive_enabled())
    out("keepidle-zero", attempt(s.set_keep_alive_idle_time, 0))
    out("keepidle-set", attempt(s.set_keep_alive_idle_time, 30_000_000_000), s.keep_alive_idle_time())
    out("keepidle-round", attempt(s.set_keep_alive_idle_time, 1_500_000_000), s.keep_alive_idle_time())
    out("keepintvl-set", attempt(s.set_keep_alive_interval, 7_000_000_000), s.keep_alive_interval())
    out("keepcnt-zero", attempt(s.set_keep_alive_count, 0))
    out("keepcnt-set", attempt(s.set_keep_alive_count, 4), s.keep_alive_count())
    out("hoplimit-zero", attempt(s.set_hop_limit, 0))
    out("hoplimit-set", attempt(s.set_hop_limit, 42), s.hop_limit())
    out("rcvbuf-zero", attempt(s.set_receive_buffer_size, 0))
    out("sndbuf-zero", attempt(s.set_send_buffer_size, 0))
    out("rcvbuf-set", attempt(s.set_receive_buffer_size, 65536), s.receive_buffer_size() >= 65536)
    out("sndbuf-set", attempt(s.set_send_buffer_size, 65536), s.send_buffer_size() >= 65536)

    out("bind", attempt(s.start_bind, net, sockaddr(host, 0)))
    out("bind-concurrent", attempt(s.start_bind, net, sockaddr(host, 0)))
    out("connect-during-bind", attempt(s.start_connect, net, sockaddr(host, port)))
    out("local-address-bind-in-progress", attempt(s.local_address))
    out("finish-bind", attempt(s.finish_bind))
    out("finish-bind-again", attempt(s.finish_bind))
    out("bind-twice", attempt(s.start_bind, net, sockaddr(host, 0)))
    out("accept-before-listen", attempt(s.accept))
    out("is-listening-bound", s.is_listening())
    out("listen", attempt(s.start_listen))
    out("listen-concurrent", attempt(s.start_listen))
    out("accept-listen-in-progress", attempt(s.accept))
    out("finish-listen", attempt(s.finish_listen))
    out("is-listening", s.is_listening())
    out("listen-twice", attempt(s.start_listen))
    out("connect-listening", attempt(s.start_connect, net, sockaddr(host, port)))
    out("accept-nothing-pending", attempt(s.accept))
    with s.subscribe() as p:
        out("listener-pollable-ready-idle", p.ready())
    out("backlog-listening", attempt(s.set_listen_backlog_size, 32))
    # A client of our own listener: accept works, and the pollable becomes ready for it.
    c, cin, cout = connect(net, host, s.local_address().value.port)
    with s.subscribe() as p:
        p.block()
        out("listener-pollable-ready-pending", p.ready())
    a, ain, aout = s.accept()
    out("accepted-family-same", a.address_family() == fam, "keepalive-inherited", a.keep_alive_enabled())
    out("accepted-remote-is-client", show_addr(a.remote_address()) == show_addr(c.local_address()))
    close_all(ain, aout, a, cin, cout, c, s)

    s = new()
    out("connect", attempt(s.start_connect, net, sockaddr(host, port)))
    out("connect-concurrent", attempt(s.start_connect, net, sockaddr(host, port)))
    out("listen-connecting", attempt(s.start_listen))
    out("backlog-connecting", attempt(s.set_listen_backlog_size, 8))
    with s.subscribe() as p:
        p.block()
        out("connect-pollable-ready", p.ready())
    inp, outp = s.finish_connect()
    out("finish-connect-again", attempt(s.finish_connect))
    out("connect-connected", attempt(s.start_connect, net, sockaddr(host, port)))
    out("bind-connected", attempt(s.start_bind, net, sockaddr(host, 0)))
    out("listen-connected", attempt(s.start_listen))
    out("accept-connected", attempt(s.accept))
    out("shutdown-send", attempt(s.shutdown, tcp.ShutdownType.SEND))
    out("shutdown-send-again", attempt(s.shutdown, tcp.ShutdownType.SEND))
    out("write-after-shutdown", attempt(outp.check_write))
    out("blocking-write-after-shutdown", attempt(outp.blocking_write_and_flush, b"late"))
    out("shutdown-receive", attempt(s.shutdown, tcp.ShutdownType.RECEIVE))
    out("read-after-shutdown", attempt(inp.read, 10))
    close_all(inp, outp, s)

    s = new()
    out("connect-refused-start", attempt(s.start_connect, net, sockaddr(host, dead_port)))
    with s.subscribe() as p:
        p.block()
    out("connect-refused-finish", attempt(s.finish_connect))
    out("connect-after-failure", attempt(s.start_connect, net, sockaddr(host, port)))
    out("finish-after-failure", attempt(s.finish_connect))
    close_all(s)

    u = udp_create_socket.create_udp_socket(fam)
    out("udp-stream-unbound", attempt(u.stream, None))
    out("udp-local-address-unbound", attempt(u.local_address))
    out("udp-bind-wrong-family", attempt(u.start_bind, net, other))
    out("udp-finish-bind-not-started", attempt(u.finish_bind))
    out("udp-bind", attempt(u.start_bind, net, sockaddr(host, 0)), attempt(u.finish_bind))
    out("udp-bind-twice", attempt(u.start_bind, net, sockaddr(host, 0)))
    out("udp-remote-address-unconnected", attempt(u.remote_address))
    out("udp-hoplimit-zero", attempt(u.set_unicast_hop_limit, 0))
    out("udp-hoplimit-set", attempt(u.set_unicast_hop_limit, 9), u.unicast_hop_limit())
    out("udp-stream-port-zero", attempt(u.stream, sockaddr(host, 0)))
    incoming, outgoing = u.stream(None)
    out("udp-receive-empty", len(incoming.receive(4)))
    out("udp-check-send", outgoing.check_send() > 0)
    out("udp-send-no-address", attempt(outgoing.send, [udp.OutgoingDatagram(b"x", None)]))
    out("udp-send-empty", outgoing.send([]))
    close_all(incoming, outgoing, u)
    out("done")


COMMANDS = {
    "echo-client": cmd_echo_client,
    "echo-server": cmd_echo_server,
    "udp-echo": cmd_udp_echo,
    "udp-client": cmd_udp_client,
    "lookup": cmd_lookup,
    "connect": cmd_connect,
    "bind": cmd_bind,
    "churn": cmd_churn,
    "download": cmd_download,
    "hoard": cmd_hoard,
    "drain-stdin": cmd_drain_stdin,
    "reset": cmd_reset,
    "states": cmd_states,
}


class Run(exports.Run):
    def run(self) -> None:
        args = sys.argv[1:]
        if not args or args[0] not in COMMANDS:
            out("usage: sockets_probe", "|".join(COMMANDS))
            raise SystemExit(2)
        net = instance_network.instance_network()
        try:
            COMMANDS[args[0]](net, *args[1:])
        except Err as e:
            out("unexpected error", code(e))
            raise SystemExit(1)
