"""Timings of ``wasi_tls_aio`` taken inside a WASI 0.3 guest, for benchmarks/bench_tls_p3.py
(the 0.3 counterpart of ``tls_probe``'s bench modes):

    tls_probe_p3 bench-handshake HOST PORT N [NAME]
        N connections one after another, each TCP connect + TLS handshake verifying NAME
        (default HOST), timed from before the connect to the established connection, then
        closed with close_notify; prints ``handshake-us=T1,T2,...`` (microseconds)
    tls_probe_p3 bench-download HOST PORT [NAME]
        connects, sends ``GET / HTTP/1.0`` and reads to the server's close_notify in 64 KiB
        reads, counting; prints ``bytes=N`` and ``download-us=T`` (from before the connect)

Its world has only upstream's ``wasi:tls@0.3.0-draft`` client, so ``open_connection`` goes
through upstream's connector, over wasi:sockets 0.3. A TLS failure prints ``tls error:
MESSAGE`` and the run fails.
"""

import sys
import time

from componentize_py_types import Err
from wasi_tls_aio import TlsError, open_connection
from wit_world import exports


def microseconds_since(start):
    return (time.perf_counter_ns() - start) // 1000


async def bench_handshake(host, port, count, name):
    timings = []
    for _ in range(count):
        start = time.perf_counter_ns()
        reader, writer = await open_connection(host, port, server_hostname=name)
        timings.append(microseconds_since(start))
        writer.close()
        await writer.wait_closed()
    print("handshake-us=" + ",".join(map(str, timings)), flush=True)


async def bench_download(host, port, name):
    start = time.perf_counter_ns()
    reader, writer = await open_connection(host, port, server_hostname=name)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    await writer.drain()
    total = 0
    while chunk := await reader.read(65536):
        total += len(chunk)
    took = microseconds_since(start)
    writer.close()
    await writer.wait_closed()
    print(f"bytes={total}", flush=True)
    print(f"download-us={took}", flush=True)


class Run(exports.Run):
    async def run(self) -> None:
        mode, host, port, *rest = sys.argv[1:]
        try:
            if mode == "bench-handshake":
                await bench_handshake(host, int(port), int(rest[0]), rest[1] if len(rest) > 1 else host)
            elif mode == "bench-download":
                await bench_download(host, int(port), rest[0] if rest else host)
            else:
                print(f"unknown mode {mode!r}: bench-handshake or bench-download", flush=True)
                raise Err(None)
        except TlsError as e:
            print(f"tls error: {e}", flush=True)
            raise Err(None)
