"""Drives this project's TLS resources into a given state and calls their methods, for the
state-table tests; and waits in a given way while a peer vanishes.

    tls_states hello PORT wait|now CALL...            server: incoming-client-hello
    tls_states exchange PORT wait|now CALL...         server: incoming-client-exchange
    tls_states connection PORT CALL...                server: connection (once established)
    tls_states server-hello PORT wait|now CALL...     client of 127.0.0.1:PORT, name localhost
    tls_states two PORT                               server: two clients' hellos at once
    tls_states vanish PORT STAGE MODE                 server; STAGE: before-hello,
        mid-handshake, after-data, while-writing; MODE: poll (with a 5 s timer), block
        (pollable.block), blocking-read, blocking-flush

Each call prints `CALL=ANSWER`: `ok`, or the error code (`would-block`, `invalid-state`,
`closed`, ...). `vanish` prints `outcome=CODE` (or `outcome=timer` if its own 5 s timer
fired first) and `ms=N`, the time it waited.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import (
    client,
    environment,
    identities,
    instance_network,
    monotonic_clock,
    network,
    poll,
    server,
    streams,
    tcp_create_socket,
)
from wit_world.imports import wasi_tls_host_tls_types as tls_types

TIMER_NS = 5_000_000_000


def say(line):
    print(line, flush=True)


def code_of(e):
    value = e.value
    if isinstance(value, tls_types.Error):
        return value.code.name.lower().replace("_", "-")
    if isinstance(value, streams.StreamError_Closed):
        return "stream-closed"
    if isinstance(value, streams.StreamError_LastOperationFailed):
        code = tls_types.error_code_of(value.value)
        return code.name.lower().replace("_", "-") if code is not None else "io: " + value.value.to_debug_string()
    return repr(value)


def attempt(fn, *args):
    try:
        return "ok", fn(*args)
    except Err as e:
        return code_of(e), None


def wait(pollable):
    """poll([pollable, 5 s timer]); False if only the timer fired."""
    timer = monotonic_clock.subscribe_duration(TIMER_NS)
    ready = poll.poll([pollable, timer])
    timer.__exit__(None, None, None)
    return 0 in ready


def listen(port):
    sock = tcp_create_socket.create_tcp_socket(network.IpAddressFamily.IPV4)
    addr = network.IpSocketAddress_Ipv4(network.Ipv4SocketAddress(port, (127, 0, 0, 1)))
    sock.start_bind(instance_network.instance_network(), addr)
    sock.finish_bind()
    sock.start_listen()
    sock.finish_listen()
    say(f"listening on 127.0.0.1:{port}")
    return sock


def accept_tcp(sock):
    while True:
        try:
            return sock.accept()
        except Err as e:
            if e.value != network.ErrorCode.WOULD_BLOCK:
                raise
            poll.poll([sock.subscribe()])


def connect_tcp(port):
    sock = tcp_create_socket.create_tcp_socket(network.IpAddressFamily.IPV4)
    remote = network.IpSocketAddress_Ipv4(network.Ipv4SocketAddress(port, (127, 0, 0, 1)))
    sock.start_connect(instance_network.instance_network(), remote)
    while True:
        try:
            rx, tx = sock.finish_connect()
            return sock, rx, tx
        except Err as e:
            if e.value != network.ErrorCode.WOULD_BLOCK:
                raise
            poll.poll([sock.subscribe()])


def identity():
    return identities.preopened_identities().all()[0]


def hello_calls(hello):
    return {
        "subscribe": lambda: hello.subscribe(),
        "server-name": hello.server_name,
        "alpn-ids": hello.alpn_ids,
        "protocol-versions": hello.protocol_versions,
        "cipher-suites": hello.cipher_suites,
        "signature-schemes": hello.signature_schemes,
        "accept": lambda: server.IncomingClientHello.accept(hello, server.OutgoingServerHello(identity())),
        "reject": lambda: server.IncomingClientHello.reject(hello, 40),
    }


def run_calls(table, calls):
    for call in calls:
        answer, _ = attempt(table[call])
        say(f"{call}={answer}")


def established_exchange(sock):
    _, rx, tx = accept_tcp(sock)
    hello = server.accept(rx, tx)
    wait(hello.subscribe())
    exchange = server.IncomingClientHello.accept(hello, server.OutgoingServerHello(identity()))
    return exchange


def cmd_hello(port, when, calls):
    sock = listen(port)
    _, rx, tx = accept_tcp(sock)
    hello = server.accept(rx, tx)
    if when == "wait":
        wait(hello.subscribe())
    run_calls(hello_calls(hello), calls)


def cmd_exchange(port, when, calls):
    exchange = established_exchange(listen(port))
    if when == "wait":
        wait(exchange.subscribe())
    run_calls({
        "subscribe": lambda: exchange.subscribe(),
        "client-identity": exchange.client_identity,
        "finish": lambda: server.IncomingClientExchange.finish(exchange),
    }, calls)


def cmd_connection(port, calls):
    exchange = established_exchange(listen(port))
    wait(exchange.subscribe())
    conn, rx, tx = server.IncomingClientExchange.finish(exchange)
    run_calls({
        "protocol-version": conn.protocol_version,
        "cipher-suite": conn.cipher_suite,
        "alpn-id": conn.alpn_id,
        "server-name": conn.server_name,
        "peer-identity": conn.peer_identity,
        "resumed": conn.resumed,
        "close-output": conn.close_output,
    }, calls)


def cmd_server_hello(port, when, calls):
    sock, rx, tx = connect_tcp(port)
    hs = client.OutgoingClientHello.connect(client.OutgoingClientHello("localhost"), rx, tx)
    if when == "wait":
        wait(hs.subscribe())
    run_calls({
        "subscribe": lambda: hs.subscribe(),
        "protocol-version": hs.protocol_version,
        "cipher-suite": hs.cipher_suite,
        "alpn-id": hs.alpn_id,
        "server-chain": hs.server_chain,
        "verification": hs.verification,
        "finish": lambda: client.IncomingServerHello.finish(hs),
    }, calls)


def cmd_two(port):
    """Two clients at once; prints how each hello answers server-name."""
    sock = listen(port)
    _, rx1, tx1 = accept_tcp(sock)
    first = server.accept(rx1, tx1)
    _, rx2, tx2 = accept_tcp(sock)
    second = server.accept(rx2, tx2)
    wait(second.subscribe())
    say(f"first={attempt(first.server_name)[0]}")
    say(f"second={attempt(second.server_name)[0]}")


def wait_by(mode, pollable):
    """Wait as ``mode`` says; False if the 5 s timer fired first."""
    if mode == "poll":
        return wait(pollable)
    pollable.block()
    return True


def cmd_vanish(port, stage, mode):
    sock = listen(port)
    _, rx, tx = accept_tcp(sock)
    started = monotonic_clock.now()
    outcome = vanish(rx, tx, stage, mode)
    say(f"outcome={outcome}")
    say(f"ms={(monotonic_clock.now() - started) // 1_000_000}")


def vanish(rx, tx, stage, mode):
    hello = server.accept(rx, tx)
    if stage == "before-hello":
        if not wait_by(mode, hello.subscribe()):
            return "timer"
        return attempt(hello.server_name)[0]
    wait(hello.subscribe())
    exchange = server.IncomingClientHello.accept(hello, server.OutgoingServerHello(identity()))
    if stage == "mid-handshake":
        if not wait_by(mode, exchange.subscribe()):
            return "timer"
        return attempt(exchange.client_identity)[0]
    wait(exchange.subscribe())
    conn, prx, ptx = server.IncomingClientExchange.finish(exchange)
    say("established")
    if stage == "after-data":
        got = b""
        while not got:
            got = prx.blocking_read(100)
        say(f"got={got.decode()}")
        while True:
            if mode == "poll":
                if not wait(prx.subscribe()):
                    return "timer"
                answer, data = attempt(prx.read, 65536)
            else:
                answer, data = attempt(prx.blocking_read, 65536)
            if answer != "ok":
                return answer
    chunk = b"x" * 65536
    while True:  # while-writing: until the peer's disappearance stops us
        answer, permit = attempt(ptx.check_write)
        if answer != "ok":
            return answer
        if permit == 0:
            if mode == "poll" and not wait(ptx.subscribe()):
                return "timer"
            if mode != "poll":
                ptx.subscribe().block()
            continue
        answer, _ = attempt(ptx.write, chunk[:permit])
        if answer != "ok":
            return answer
        if mode == "blocking-flush":
            answer, _ = attempt(ptx.blocking_flush)
            if answer != "ok":
                return answer


class Run(exports.Run):
    def run(self) -> None:
        argv = environment.get_arguments()[1:]
        command, port, rest = argv[0], int(argv[1]), argv[2:]
        if command == "hello":
            cmd_hello(port, rest[0], rest[1:])
        elif command == "exchange":
            cmd_exchange(port, rest[0], rest[1:])
        elif command == "connection":
            cmd_connection(port, rest)
        elif command == "server-hello":
            cmd_server_hello(port, rest[0], rest[1:])
        elif command == "two":
            cmd_two(port)
        elif command == "vanish":
            cmd_vanish(port, rest[0], rest[1])
        else:
            raise SystemExit(f"unknown command {command}")
