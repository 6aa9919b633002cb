"""`accept_socket_misuse_p3 PORT` (on 127.0.0.1): a WASI 0.3 guest that hands ``accept-socket`` sockets
it may not take (tests/test_tls_server_p3_accept_socket.py), one line each:

    receive-taken   a connection whose ``receive`` the guest called first
    send-taken      a connection whose ``send`` the guest called first
    unconnected     a socket never connected
    listening       the listening socket itself

then ``served``: a third connection given over properly, whose hello is rejected with an
alert (112) that the guest waits to see sent, so the host still serves after the misuse. Each
misuse prints ``NAME error CODE: MESSAGE`` (or ``NAME accepted`` if the host took it); the
guest then drops everything it held."""

import ipaddress
import sys

import wit_world
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import server as tls_server
from wit_world.imports.server import IncomingClientHello
from wit_world.imports.wasi_sockets_types import IpAddressFamily, IpSocketAddress_Ipv4, Ipv4SocketAddress, TcpSocket

from wasi_tls_aio import _tls_error


def misuse(name, sock):
    try:
        hello, sent, _peer = tls_server.accept_socket(sock)
    except Err as e:
        print(name, "error", _tls_error(e), flush=True)
        return
    hello.__exit__(None, None, None)
    sent.__exit__(None, None, None)
    print(name, "accepted", flush=True)


class Run(exports.Run):
    async def run(self) -> None:
        host, port = "127.0.0.1", int(sys.argv[1])
        listener = TcpSocket.create(IpAddressFamily.IPV4)
        listener.bind(IpSocketAddress_Ipv4(Ipv4SocketAddress(port, tuple(ipaddress.ip_address(host).packed))))
        incoming = listener.listen()
        print("listening on", port, flush=True)
        with listener, incoming:
            [first] = await incoming.read(1)
            with first:
                data, received = first.receive()
                with data, received:
                    misuse("receive-taken", first)
            [second] = await incoming.read(1)
            with second:
                tx, rx = wit_world.byte_stream()
                sending = second.send(rx)
                with tx, sending:
                    misuse("send-taken", second)
            with TcpSocket.create(IpAddressFamily.IPV4) as unconnected:
                misuse("unconnected", unconnected)
            misuse("listening", listener)
            [third] = await incoming.read(1)
            with third:
                hello, sent, _peer = tls_server.accept_socket(third)
                IncomingClientHello.reject(hello, 112)
                with sent:
                    ended = await sent.read()
                print("served", "ok" if not isinstance(ended, Err) else ended, flush=True)
