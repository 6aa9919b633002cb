"""A WASI 0.3 TCP echo server: `echo_server_p3 PORT [--host H] [--count N] [--splice] [--linger MS]`.

Listens on H:PORT (default 127.0.0.1), prints `listening on ADDR`, and echoes every
connection concurrently (one asyncio task each) until the client closes its side. With
`--count N` it stops after N connections (0, the default: until the host stops it; a graceful
stop ends the listen stream, and the server finishes the connections it has). With
`--splice` the receive stream goes straight into send (the host moves the bytes) instead of
through the guest. Prints `served N` at the end, `--linger MS` milliseconds after the last
connection finished (as a server that saves its state on its way out).
"""

import asyncio
import ipaddress
import sys

import wit_world
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import monotonic_clock
from wit_world.imports.wasi_sockets_types import (
    IpAddressFamily,
    IpSocketAddress_Ipv4,
    IpSocketAddress_Ipv6,
    Ipv4SocketAddress,
    Ipv6SocketAddress,
    TcpSocket,
)


def sockaddr(host, port):
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return IpSocketAddress_Ipv4(Ipv4SocketAddress(port, tuple(ip.packed)))
    words = tuple(int.from_bytes(ip.packed[i:i + 2], "big") for i in range(0, 16, 2))
    return IpSocketAddress_Ipv6(Ipv6SocketAddress(port, 0, words, 0))


def show_addr(a):
    if isinstance(a, IpSocketAddress_Ipv4):
        return "%s:%d" % (".".join(map(str, a.value.address)), a.value.port)
    return "[%s]:%d" % (ipaddress.IPv6Address(b"".join(w.to_bytes(2, "big") for w in a.value.address)), a.value.port)


async def echo(sock, splice):
    with sock:
        data, received = sock.receive()
        if splice:
            await sock.send(data).read()
        else:
            tx, rx = wit_world.byte_stream()
            sent = sock.send(rx)
            with tx, data:
                while not data.writer_dropped:
                    chunk = await data.read(65536)
                    if chunk:
                        await tx.write_all(chunk)
            await sent.read()
        await received.read()


async def serve(host, port, count, splice, linger_ms):
    ip = ipaddress.ip_address(host)
    listener = TcpSocket.create(IpAddressFamily.IPV4 if ip.version == 4 else IpAddressFamily.IPV6)
    listener.bind(sockaddr(host, port))
    incoming = listener.listen()
    print("listening on", show_addr(listener.get_local_address()), flush=True)
    tasks = set()
    served = 0
    with listener, incoming:
        while count == 0 or served < count:
            accepted = await incoming.read(1)
            if not accepted:
                break  # the host stopped the listener (graceful stop)
            served += 1
            task = asyncio.ensure_future(echo(accepted[0], splice))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    if linger_ms:  # componentize-py's asyncio has no timers (asyncio.sleep): the clock's own wait
        await monotonic_clock.wait_for(linger_ms * 1_000_000)
    print("served", served, flush=True)


class Run(exports.Run):
    async def run(self) -> None:
        args = sys.argv[1:]
        if not args or not args[0].isdigit():
            print("usage: echo_server_p3 PORT [--host H] [--count N] [--splice] [--linger MS]", flush=True)
            raise Err(None)
        host, count, splice, linger_ms = "127.0.0.1", 0, False, 0
        rest = args[1:]
        while rest:
            flag = rest.pop(0)
            if flag == "--host":
                host = rest.pop(0)
            elif flag == "--count":
                count = int(rest.pop(0))
            elif flag == "--splice":
                splice = True
            elif flag == "--linger":
                linger_ms = int(rest.pop(0))
        try:
            await serve(host, int(args[0]), count, splice, linger_ms)
        except Err as e:
            print("error", type(e.value).__name__, flush=True)
            raise Err(None)
