"""Fetch an https:// URL given on the command line; print the status, headers and a digest
of the body (guest_examples/common/http_summary, shared with https_get_p3). Uses the upstream
wasi:tls client through guest_examples/common/wasi_tls_client.

    wasi-tls-host run --allow-connect 'localhost:*' --allow-dns --trust ca.pem \\
        https_get.wasm https://localhost:8443/
"""

import sys
from urllib.parse import urlsplit

from componentize_py_types import Err
from http_summary import summary
from wit_world import exports
from wit_world.imports import environment, exit

from wasi_tls_client import TlsError, connect


def fetch(url: str) -> int:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        print(f"usage: https_get https://HOST[:PORT]/PATH (got {url!r})", file=sys.stderr)
        return 2
    host, port = parts.hostname, parts.port or 443
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        with connect(host, port, timeout=30) as conn:
            request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: wasi-tls-host-https-get\r\nConnection: close\r\n\r\n"
            conn.write_all(request.encode())
            response = conn.read_all(timeout=60)
    except (TlsError, ConnectionError, TimeoutError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    for line in summary(response):
        print(line)
    return 0


class Run(exports.Run):
    def run(self) -> None:
        argv = environment.get_arguments()
        code = fetch(argv[1]) if len(argv) > 1 else fetch("")
        if code:
            exit.exit(Err(None))
