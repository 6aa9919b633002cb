"""Fetch an https:// URL given on the command line, as the WASI 0.2 ``https_get`` does, with
the asyncio-style binding (wasi_tls_aio) on WASI 0.3; print the negotiated TLS version and
ALPN protocol, then the status, headers and a digest of the body (the 0.2 guest's lines).

    wasi-tls-host run --allow-connect 'localhost:*' --allow-dns --trust ca.pem \\
        https_get_p3.wasm https://localhost:8443/ [--server-name NAME]

``--server-name`` verifies the server as NAME (and sends it as SNI) instead of the URL's
host. The body is read to the server's close_notify: a peer that ends without one is a
``TlsError`` (``truncated``). A failure prints ``error: TYPE: MESSAGE`` on stderr (a TLS
failure: ``error: TlsError: CODE: MESSAGE``) and the run ends with exit status 1.
"""

import sys
from urllib.parse import urlsplit

from componentize_py_types import Err
from http_summary import summary
from wasi_tls_aio import TlsError, open_connection
from wit_world import exports


async def fetch(url: str, server_name: str | None) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"usage: https_get_p3 https://HOST[:PORT]/PATH [--server-name NAME] (got {url!r})")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    reader, writer = await open_connection(parts.hostname, parts.port or 443, server_hostname=server_name, alpn=["http/1.1"])
    print(f"version: {writer.get_extra_info('version')}", flush=True)
    print(f"alpn: {writer.get_extra_info('alpn') or '-'}", flush=True)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: wasi-tls-host-https-get\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()  # to the end: close_notify, else a TlsError
    writer.close()
    await writer.wait_closed()
    for line in summary(response):
        print(line, flush=True)


class Run(exports.Run):
    async def run(self) -> None:
        args = sys.argv[1:]
        server_name = None
        if "--server-name" in args[:-1]:
            at = args.index("--server-name")
            server_name = args[at + 1]
            del args[at:at + 2]
        try:
            await fetch(args[0] if args else "", server_name)
        except (TlsError, ConnectionError, TimeoutError, ValueError) as e:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            raise Err(None)  # wasi:cli/run's error: the host exits 1 (sys.exit panics in an async run)
