"""`https_get_p3 HOST PORT [PATH] [SERVER_NAME]`: an HTTPS GET with the asyncio-style binding
(wasi_tls_aio) on WASI 0.3. Prints the negotiated version and ALPN, the status line and the
body's length (read with readexactly when the response has a Content-Length); a TLS failure
prints `tls error: CODE: MESSAGE` and the run ends with an error (exit code 1)."""

import asyncio
import sys

from componentize_py_types import Err
from wasi_tls_aio import TlsError, open_connection
from wit_world import exports


async def get(host, port, path, name):
    reader, writer = await open_connection(host, port, server_hostname=name, alpn=["http/1.1"])
    print("version", writer.get_extra_info("version"), "alpn", writer.get_extra_info("alpn"), flush=True)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {name or host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    print("status", (await reader.readline()).decode().strip(), flush=True)
    length = None
    while line := (await reader.readuntil(b"\r\n")).strip():
        key, _, value = line.decode().partition(":")
        if key.lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length) if length is not None else b""
    body += await reader.read()  # to the end: close_notify, else an error
    print("body", len(body), "bytes", flush=True)
    writer.close()
    await writer.wait_closed()


class Run(exports.Run):
    async def run(self) -> None:
        host, port = sys.argv[1], int(sys.argv[2])
        path = sys.argv[3] if len(sys.argv) > 3 else "/"
        name = sys.argv[4] if len(sys.argv) > 4 else None
        try:
            await get(host, port, path, name)
        except TlsError as e:
            print(f"tls error: {e}", flush=True)
            raise Err(None)  # wasi:cli/run's error: the host exits 1 (sys.exit panics in an async run)
        except asyncio.IncompleteReadError as e:
            print(f"incomplete: {len(e.partial)} of {e.expected} bytes", flush=True)
            raise Err(None)
