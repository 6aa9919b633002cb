"""`https_get_upstream_p3 HOST PORT`: wasi_tls_aio.open_connection in a guest whose world has
only the upstream wasi:tls@0.3.0-draft client (as for wasmtime -Sp3 -Stls): prints the
status line and the response's size, or `tls error: MESSAGE` (and the run fails)."""

import sys

from componentize_py_types import Err
from wasi_tls_aio import TlsError, open_connection
from wit_world import exports


class Run(exports.Run):
    async def run(self) -> None:
        host, port = sys.argv[1], int(sys.argv[2])
        try:
            reader, writer = await open_connection(host, port)
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            print("status", (await reader.readline()).decode().strip(), flush=True)
            rest = 0
            while chunk := await reader.read(65536):  # counted as it comes, not held whole
                rest += len(chunk)
            print("rest", rest, "bytes", flush=True)
            writer.close()
            await writer.wait_closed()
        except TlsError as e:
            print(f"tls error: {e}", flush=True)
            raise Err(None)
