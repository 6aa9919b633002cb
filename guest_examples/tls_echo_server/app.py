"""A TLS echo server: picks its identity by the client's SNI among the identities the host
preopened, answers one connection at a time, echoes what it reads until the client closes.

    wasi-tls-host run --allow-listen 127.0.0.1:8443 \\
        --identity a=a.pem,a.key --identity b=b.pem,b.key tls_echo_server.wasm 8443 [COUNT]
"""

import sys

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import environment, identities, instance_network, network, poll, server, streams, tcp_create_socket

from tls_host_errors import error_text


def listen(port):
    sock = tcp_create_socket.create_tcp_socket(network.IpAddressFamily.IPV4)
    addr = network.IpSocketAddress_Ipv4(network.Ipv4SocketAddress(port, (127, 0, 0, 1)))
    sock.start_bind(instance_network.instance_network(), addr)
    sock.finish_bind()
    sock.start_listen()
    sock.finish_listen()
    return sock


def accept(sock):
    """The next connection. One that fails before it is accepted (a client that reset while
    waiting, the host's socket limit) is reported, and the server waits for the next."""
    while True:
        try:
            return sock.accept()
        except Err as e:
            if e.value != network.ErrorCode.WOULD_BLOCK:
                print(f"accept failed: {error_text(e)}; still serving", flush=True)
            with sock.subscribe() as incoming:
                poll.poll([incoming])


def wait_ready(getter, pollable):
    while True:
        try:
            return getter()
        except Err as e:
            if e.value.code.name != "WOULD_BLOCK":
                raise
            poll.poll([pollable])


def serve_one(store, rx, tx):
    hello = server.accept(rx, tx)
    try:
        sni = wait_ready(hello.server_name, hello.subscribe())
    except Err as e:
        print(f"rejected: {e.value.code.name.lower()}: {e.value.message}", flush=True)
        hello.__exit__(None, None, None)  # closes the connection (the client got an alert)
        return
    matches = store.find_by_host_name(sni) if sni else []
    identity = matches[0] if matches else store.all()[0]
    answer = server.OutgoingServerHello(identity)
    offered = hello.alpn_ids()
    for proto in (b"h2", b"http/1.1"):
        if proto in offered:
            answer.set_alpn_id(proto)
            break
    try:
        exchange = server.IncomingClientHello.accept(hello, answer)
        wait_ready(exchange.client_identity, exchange.subscribe())
        conn, prx, ptx = server.IncomingClientExchange.finish(exchange)
    except Err as e:
        print(f"handshake failed: {e.value.code.name.lower()}: {e.value.message}", flush=True)
        return
    alpn = conn.alpn_id()
    print(f"connection sni={sni} identity={identity.name()} version=0x{conn.protocol_version():04x} alpn={alpn.decode() if alpn else '-'}", flush=True)
    try:
        total = echo(prx, ptx)
        ptx.blocking_flush()
        conn.close_output()  # close_notify: the client sees a clean end of data
        print(f"echoed {total} bytes", flush=True)
    except Err as e:
        # The client went away (reset, truncation, an alert): this connection is over, the
        # server is not.
        print(f"connection error: {error_text(e)}", flush=True)
    finally:
        for resource in (prx, ptx, conn):
            resource.__exit__(None, None, None)


def echo(prx, ptx):
    """Echo until the client's close_notify; a stream error ends it with Err."""
    total = 0
    while True:
        try:
            data = prx.blocking_read(65536)
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                return total
            raise
        total += len(data)
        view = data
        while view:
            n = ptx.check_write()
            if n == 0:
                with ptx.subscribe() as writable:
                    poll.poll([writable])
                continue
            ptx.write(view[:n])
            view = view[n:]


class Run(exports.Run):
    def run(self) -> None:
        argv = environment.get_arguments()
        port = int(argv[1])
        count = int(argv[2]) if len(argv) > 2 else 1
        store = identities.preopened_identities()
        sock = listen(port)
        print(f"listening on 127.0.0.1:{port}", flush=True)
        for _ in range(count):
            client, rx, tx = accept(sock)
            serve_one(store, rx, tx)
            client.__exit__(None, None, None)
