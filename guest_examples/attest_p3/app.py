"""The attestation demo on WASI 0.3, written with the asyncio binding (wasi_tls_aio): a
client pins the code of the server it talks to (``expect_peer_code=``).

    attest_p3 serve HOST PORT COUNT [--expect-code DIGEST --client-ca SET]
    attest_p3 connect HOST PORT SERVER_NAME DIGEST [--identity NAME] [--send LINE]

``serve`` answers COUNT connections with its attested identity (``attested``: a key the host
made for this instance, certified with this component's digest), one line each, upper-cased;
with ``--expect-code`` it serves only clients attested for DIGEST (their certificates
verified against the embedder's client CA set SET). It prints ``listening PORT`` and, per
refused client, the binding's line on stderr.

``connect`` requires the server to be attested for DIGEST (``sha256:<hex>``) and prints one
``key=value`` line per fact, as the WASI 0.2 ``tls_client`` does for ``wasi-tls-host demo
attest``: ``server-code``, ``verification`` (``ok``, or ``code-mismatch: <the host's
reason>`` from ``CodeMismatchError``, then exit status 1) and ``reply``.
"""

import sys

from componentize_py_types import Err
from wasi_tls_aio import CodeMismatchError, TlsError, open_connection, start_server
from wit_world import exports


def options(args):
    """(positional arguments, {--flag: value})."""
    positional, flags = [], {}
    while args:
        if args[0].startswith("--"):
            flags[args[0]], args = args[1], args[2:]
        else:
            positional.append(args.pop(0))
    return positional, flags


async def serve(host, port, count, flags):
    served = 0

    async def answer(reader, writer):
        nonlocal served
        served += 1
        if served >= count:
            server.close()
        line = await reader.readline()
        writer.write(line.upper())
        writer.close()
        await writer.wait_closed()

    server = await start_server(answer, host, port, identity="attested", client_ca=flags.get("--client-ca"),
                                expect_peer_code=flags.get("--expect-code"))
    print("listening", server.sockets[0][1], flush=True)
    async with server:
        await server.serve_forever()


async def connect(host, port, server_name, digest, flags):
    try:
        reader, writer = await open_connection(host, port, server_hostname=server_name, expect_peer_code=digest,
                                               identity=flags.get("--identity"))
    except CodeMismatchError as e:
        print(f"verification={e}", flush=True)
        raise Err(None)  # wasi:cli/run's error: exit status 1
    except TlsError as e:
        print(f"error={e}", flush=True)
        raise Err(None)
    print(f"server-code={writer.get_extra_info('peer_code') or '-'}", flush=True)
    print("verification=ok", flush=True)
    writer.write(flags.get("--send", "hello, attested server").encode() + b"\n")
    await writer.drain()
    print(f"reply={(await reader.readline()).decode().strip()}", flush=True)
    writer.close()
    await writer.wait_closed()


class Run(exports.Run):
    async def run(self) -> None:
        (mode, host, port, *rest), flags = options(sys.argv[1:])
        if mode == "serve":
            await serve(host, int(port), int(rest[0]), flags)
        else:
            await connect(host, int(port), rest[0], rest[1], flags)
