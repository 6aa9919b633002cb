"""The WASI 0.3 counterpart of the ``tls_server`` example, written with the asyncio-style
binding (``wasi_tls_aio.start_server``): the same arguments and answers.

    tls_server_p3 PORT [--count N] [--mode echo|alpn|http] [--alpn h2,http/1.1]
                  [--identity NAME] [--client-auth none|required] [--concurrent]

Connections are always served concurrently (``--concurrent`` is accepted for the 0.2
example's command lines); ``--count 0`` serves until the process is stopped, ``--count N``
stops once N connections that sent a ClientHello have ended, however they ended.

* identity: the one named by ``--identity``; else, per connection from the ClientHello, the
  first preopened identity valid for the client's SNI, or the first preopened one when the
  client sent no SNI. A name no identity is valid for is refused with a fatal
  unrecognized_name alert (RFC 6066 section 3 lets a server choose this), where the 0.2
  example falls back to its first identity.
* ALPN: the first of ``--alpn`` (server preference) the client offered; a client that
  offered only others gets no_application_protocol (the binding does this, RFC 7301).
* modes: ``echo`` echoes until the client's close_notify; ``alpn`` answers one line
  ``alpn=<id>`` and closes; ``http`` answers one HTTP/1.x request with a plain-text body
  (lines may end in CRLF or a bare LF; a head over ``MAX_REQUEST`` bytes gets 431).

Whatever a client does (resets, half-closes, sends garbage), only its own connection ends:
each handler catches its connection's errors and closes its writer, and the binding ends a
connection whose handshake fails without touching the others. Each event is one printed
line (tests assert on them).
"""

import asyncio
import sys

from componentize_py_types import Err
from wasi_tls_aio import TlsError, start_server
from wit_world import exports
from wit_world.imports import identities

MAX_REQUEST = 64 * 1024  # bytes of a request head: far above what clients send
CHUNK = 1 << 16
UNSUPPORTED = ("--tls", "--suites", "--expect-code")  # 0.2 options the binding has no way to set


def say(line):
    print(line, flush=True)


def end_of_head(request):
    """Whether an HTTP request head is complete: an empty line, after CRLF or bare LF."""
    return b"\n\n" in request or b"\n\r\n" in request


class Options:
    def __init__(self, argv):
        self.port = int(argv[0])
        self.count = 1
        self.mode = "echo"
        self.alpn = None
        self.identity = None
        self.client_auth = "none"
        i = 1
        while i < len(argv):
            flag = argv[i]
            if flag == "--concurrent":
                i += 1
                continue
            if flag in UNSUPPORTED:
                raise ValueError(f"{flag} is not available in the 0.3 example (the asyncio binding does not set it); use tls_server")
            if i + 1 >= len(argv):
                raise ValueError(f"{flag} needs a value")
            value = argv[i + 1]
            i += 2
            if flag == "--count":
                self.count = int(value)
            elif flag == "--mode":
                if value not in ("echo", "alpn", "http"):
                    raise ValueError(f"--mode is echo, alpn or http, not {value!r}")
                self.mode = value
            elif flag == "--alpn":
                self.alpn = [p for p in value.split(",") if p]
            elif flag == "--identity":
                self.identity = value
            elif flag == "--client-auth":
                if value not in ("none", "required"):
                    raise ValueError("--client-auth is none or required here (the binding has no optional client certificates)")
                self.client_auth = value
            else:
                raise ValueError(f"unknown option {flag}")
        if self.alpn is None:
            # HTTP/2 framing is not spoken here, so the http mode only offers http/1.1.
            self.alpn = ["http/1.1"] if self.mode == "http" else ["h2", "http/1.1"]


class Identities:
    """The preopened identities' names, and the one to use for a client's SNI (looked up
    once per name)."""

    def __init__(self, fixed):
        self.store = identities.preopened_identities()
        everything = self.store.all()
        self.names = [i.name() for i in everything]
        for i in everything:
            i.__exit__(None, None, None)
        if fixed is not None and fixed not in self.names:
            raise ValueError(f"identity {fixed} was not preopened")
        self.fixed = fixed
        self.by_sni = {}

    def choose(self, sni):
        if self.fixed is not None:
            return self.fixed
        if not sni:
            return self.names[0] if self.names else None
        if sni not in self.by_sni:
            matches = self.store.find_by_host_name(sni)
            self.by_sni[sni] = matches[0].name() if matches else None
            for i in matches:
                i.__exit__(None, None, None)
        return self.by_sni[sni]


class Counter:
    """Connections numbered in the order their ClientHello arrived; ``finished`` completes
    once ``count`` of them have ended, however they ended (never for count 0)."""

    def __init__(self, count):
        self.count = count
        self.started = 0
        self.ended = 0
        self.finished = asyncio.get_event_loop().create_future()

    def begin(self):
        self.started += 1
        return self.started

    def end(self):
        self.ended += 1
        if self.count and self.ended >= self.count and not self.finished.done():
            self.finished.set_result(None)


async def answer_http(reader, writer, log, identity, sni):
    request = b""
    while not end_of_head(request):
        if len(request) > MAX_REQUEST:
            log(f"request refused: no end of the request head within {MAX_REQUEST} bytes")
            writer.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            return
        data = await reader.read(CHUNK)
        if not data:
            log("closed before a whole request")
            return
        request += data
    first = request.split(b"\n", 1)[0].rstrip(b"\r").decode("ascii", "replace")
    body = f"identity={identity} sni={sni or '-'} alpn={writer.get_extra_info('alpn') or '-'}\n".encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    log(f"request {first}")


async def echo(reader, writer):
    echoed = 0
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
        echoed += len(data)
    return echoed


async def serve(opts):
    chooser = Identities(opts.identity)
    counter = Counter(opts.count)
    # The binding runs select_identity and then the handler in one task per connection, which
    # ends however the connection ends (refused, failed handshake, answered): it carries the
    # connection's number and identity to the handler, and its end counts the connection.
    chosen = {}  # task -> (number, identity, sni)

    def ended(task):
        chosen.pop(task, None)
        counter.end()

    def select_identity(hello):
        number = counter.begin()
        task = asyncio.current_task()
        task.add_done_callback(ended)
        name = chooser.choose(hello.server_name)
        if name is None:
            say(f"#{number} rejected: no identity for sni={hello.server_name or '-'} (unrecognized_name)")
            return None
        chosen[task] = (number, name, hello.server_name)
        return name

    async def handle(reader, writer):
        number, identity, sni = chosen.pop(asyncio.current_task())

        def log(line):
            say(f"#{number} {line}")

        echoed = 0
        try:
            log(f"connection sni={sni or '-'} identity={identity} version={writer.get_extra_info('version')} "
                f"cipher={writer.get_extra_info('cipher')[0]} alpn={writer.get_extra_info('alpn') or '-'}")
            if opts.mode == "http":
                await answer_http(reader, writer, log, identity, sni)
            elif opts.mode == "alpn":
                writer.write(f"alpn={writer.get_extra_info('alpn') or '-'}\n".encode())
            else:
                echoed = await echo(reader, writer)
            writer.close()
            await writer.wait_closed()  # close_notify: the client sees a clean end of data
            log(f"closed echoed={echoed}")
        except (ConnectionError, Err, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            # The client reset, went away or broke TLS: this connection is over, not the server.
            log(f"connection error: {e}")
            try:
                writer.close()
                await writer.wait_closed()
            except (ConnectionError, Err):
                pass

    server = await start_server(handle, "127.0.0.1", opts.port, select_identity=select_identity, alpn=opts.alpn,
                                require_client_cert=opts.client_auth == "required")
    say(f"listening on 127.0.0.1:{server.sockets[0][1]} identities={','.join(chooser.names) or '-'}")
    serving = asyncio.ensure_future(server.serve_forever())
    await counter.finished
    server.close()
    await serving
    await server.wait_closed()
    say(f"served {counter.ended}")


class Run(exports.Run):
    async def run(self) -> None:
        try:
            opts = Options(sys.argv[1:])
            await serve(opts)
        except (ValueError, IndexError) as e:
            say(f"usage error: {e}")
            raise Err(None)  # wasi:cli/run's error: the host exits 1
        except TlsError as e:
            say(f"tls error: {e}")
            raise Err(None)
        except ConnectionError as e:  # the listening socket
            say(f"cannot serve: {e}")
            raise Err(None)
