"""`tls_echo_server_p3 HOST PORT COUNT NAME...`: a TLS line echo server written with the
asyncio-style binding (wasi_tls_aio.start_server) on WASI 0.3. The identity is chosen per
connection by SNI among the preopened NAMEs (`default` when the client sent none or another
name); each line comes back upper-cased, with the negotiated version and ALPN first. After
COUNT connections it closes the server (serve_forever returns at once, the listener is
closed) and waits for the handlers."""

import sys

from wasi_tls_aio import start_server
from wit_world import exports


class Run(exports.Run):
    async def run(self) -> None:
        host, port, count, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), set(sys.argv[4:])
        served = 0

        def select_identity(hello):
            return hello.server_name if hello.server_name in names else "default"

        async def echo(reader, writer):
            nonlocal served
            served += 1
            if served >= count:
                server.close()
            writer.write(f"{writer.get_extra_info('version')} {writer.get_extra_info('alpn')}\n".encode())
            async for line in reader:
                writer.write(line.upper())
                await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await start_server(echo, host, port, select_identity=select_identity, alpn=["echo", "http/1.1"])
        print("listening", server.sockets[0][1], flush=True)
        async with server:
            await server.serve_forever()
        print("closed after", served, flush=True)
