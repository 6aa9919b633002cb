"""`tls_echo_server_p3 [--plain] HOST PORT COUNT NAME... [--client-ca SET]`: a TLS line echo
server written with the asyncio-style binding (wasi_tls_aio.start_server) on WASI 0.3. The
identity is chosen per connection by SNI among the preopened NAMEs (`default` when the client
sent none or another name); with no NAMEs every connection is served as `default`, as a
server with one certificate is (nothing is asked of the ClientHello but its ALPN ids, for the
choice of protocol). Each line comes back upper-cased, with the negotiated version and
ALPN first. With `--client-ca SET` clients must present a certificate from the embedder's
client CA set SET (`--client-ca SET=CA.pem`), and the first line also carries that
certificate as `get_extra_info("peercert")` gives it (JSON). After COUNT connections it
closes the server (serve_forever returns at once, the listener is closed) and waits for
the handlers.

`--plain` (what the interop matrix runs): lines come back as they were, with no first line,
and each connection is reported on stdout: `#N connection version=V alpn=ID|-`, then
`#N closed` (the client's close_notify) or `#N read error: MESSAGE`."""

import json
import sys

from wasi_tls_aio import start_server
from wit_world import exports


class Run(exports.Run):
    async def run(self) -> None:
        args = sys.argv[1:]
        plain = bool(args) and args[0] == "--plain"
        if plain:
            args = args[1:]
        client_ca = None
        if "--client-ca" in args:
            at = args.index("--client-ca")
            client_ca = args[at + 1]
            del args[at:at + 2]
        host, port, count, names = args[0], int(args[1]), int(args[2]), set(args[3:])
        served = 0

        def select_identity(hello):
            return hello.server_name if hello.server_name in names else "default"

        async def echo(reader, writer):
            nonlocal served
            served += 1
            number = served
            if served >= count:
                server.close()
            version, alpn = writer.get_extra_info("version"), writer.get_extra_info("alpn")
            if plain:
                print(f"#{number} connection version={version} alpn={alpn or '-'}", flush=True)
            else:
                first = f"{version} {alpn}"
                if client_ca is not None:
                    peercert = dict(writer.get_extra_info("peercert"))
                    del peercert["der"]
                    first += " " + json.dumps(peercert)
                writer.write(first.encode() + b"\n")
            try:
                async for line in reader:
                    writer.write(line if plain else line.upper())
                    await writer.drain()
            except Exception as e:
                if not plain:
                    raise
                print(f"#{number} read error: {e}", flush=True)
                writer.close()
                return
            if plain:
                print(f"#{number} closed", flush=True)
            writer.close()
            await writer.wait_closed()

        chooses = {"select_identity": select_identity} if names else {"identity": "default"}
        server = await start_server(echo, host, port, alpn=["echo", "http/1.1"], client_ca=client_ca, **chooses)
        print("listening", server.sockets[0][1], flush=True)
        async with server:
            await server.serve_forever()
        print("closed after", served, flush=True)
