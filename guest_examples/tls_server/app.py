"""A TLS server guest on this project's server API (wasi-tls-host:tls/server).

    tls_server PORT [--count N] [--mode echo|alpn|http] [--alpn h2,http/1.1]
               [--client-auth none|optional|required] [--tls 1.2|1.3] [--identity NAME]
               [--concurrent] [--expect-code sha256:HEX] [--suites 0x1301,0xc02f,...]
    tls_server identities [NAME ...] [--host HOST ...]     inspect the preopened store
    tls_server attested                                    print this instance's code identity

Every connection is a small state machine (ClientHello -> exchange -> established ->
flushing) driven by one event loop over wasi:io/poll. Without ``--concurrent`` the loop
accepts the next client only when the previous one is done; with it, all at once.

* identity: the one named by ``--identity``, else the first valid for the client's SNI, else
  the first preopened one.
* ``--expect-code``: require a client identity attested for that component (mutual TLS).
* ALPN: the first of ``--alpn`` (server preference) the client offered; a client that
  offered ALPN ids but none of ours is refused with no_application_protocol.
* modes: ``echo`` echoes until the client's close_notify; ``alpn`` answers one line
  ``alpn=<id>`` and closes; ``http`` answers one HTTP/1.x request with a plain-text body
  (lines may end in CRLF or a bare LF, as HTTP servers accept; headers are limited to
  ``MAX_REQUEST`` bytes).

Whatever a client does (resets, half-closes, sends garbage), only its own connection ends:
every call that can fail for a connection's sake is checked, and ``serve`` ends a connection
whose step still fails instead of the server. Each event is one printed line (tests assert
on them).
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import (
    environment,
    exit,
    identities,
    instance_network,
    network,
    poll,
    server,
    tcp_create_socket,
)

from tls_host_errors import describe, error_text, stream_error, would_block

ALERT_HANDSHAKE_FAILURE = 40
ALERT_NO_APPLICATION_PROTOCOL = 120
VERSIONS = {"1.2": 0x0303, "1.3": 0x0304}
MAX_REQUEST = 64 * 1024  # bytes of a request head: far above what clients send


def say(line):
    print(line, flush=True)


def drop(*resources):
    for resource in resources:
        if resource is not None:
            resource.__exit__(None, None, None)


def text(alpn):
    return alpn.decode("ascii", "replace") if alpn else "-"


def end_of_head(request):
    """Whether an HTTP request head is complete: an empty line, after CRLF or bare LF."""
    return b"\n\n" in request or b"\n\r\n" in request


class Options:
    def __init__(self, argv):
        self.port = int(argv[0])
        self.count = 1
        self.mode = "echo"
        self.alpn = None
        self.client_auth = "none"
        self.versions = None
        self.identity = None
        self.concurrent = False
        self.expect_code = None
        self.suites = None
        i = 1
        while i < len(argv):
            flag = argv[i]
            if flag == "--concurrent":
                self.concurrent = True
                i += 1
                continue
            value = argv[i + 1]
            i += 2
            if flag == "--count":
                self.count = int(value)
            elif flag == "--mode":
                self.mode = value
            elif flag == "--alpn":
                self.alpn = [p.encode() for p in value.split(",") if p]
            elif flag == "--client-auth":
                self.client_auth = value
            elif flag == "--tls":
                self.versions = VERSIONS[value]
            elif flag == "--identity":
                self.identity = value
            elif flag == "--expect-code":
                self.expect_code = value
            elif flag == "--suites":
                self.suites = [int(n, 16) for n in value.split(",") if n]
            else:
                raise SystemExit(f"unknown option {flag}")
        if self.alpn is None:
            # HTTP/2 framing is not spoken here, so the http mode only offers http/1.1.
            self.alpn = [b"http/1.1"] if self.mode == "http" else [b"h2", b"http/1.1"]


class Identities:
    """Chooses a preopened identity for a ClientHello; handles are looked up once per name."""

    def __init__(self, opts):
        self.store = identities.preopened_identities()
        self.fixed = None
        if opts.identity is not None:
            self.fixed = self.store.find_by_name(opts.identity)
            if self.fixed is None:
                say(f"identity {opts.identity} was not preopened")
                exit.exit(Err(None))
        everything = self.store.all()
        self.default = everything[0] if everything else None
        drop(*everything[1:])
        self.by_sni = {}

    def names(self):
        everything = self.store.all()
        names = [i.name() for i in everything]
        drop(*everything)
        return names

    def choose(self, sni):
        if self.fixed is not None:
            return self.fixed
        if not sni:
            return self.default
        if sni not in self.by_sni:
            matches = self.store.find_by_host_name(sni)
            self.by_sni[sni] = matches[0] if matches else None
            drop(*matches[1:])
        return self.by_sni[sni] or self.default


class Client:
    """One accepted connection's progress; ``step`` runs it until it has to wait."""

    def __init__(self, number, opts, chooser, sock, rx, tx):
        self.number = number
        self.opts = opts
        self.chooser = chooser
        self.sock = sock
        self.hello = server.accept(rx, tx)
        self.exchange = None
        self.conn = self.rx = self.tx = None
        self.ready = self.hello.subscribe()  # what the connection waits on now
        self.writable = None
        self.state = "hello"
        self.sni = None
        self.identity_name = None
        self.outbox = b""
        self.request = b""
        self.echoed = 0
        self.peer_done = False

    def log(self, line):
        say(f"#{self.number} {line}")

    def pollable(self):
        if self.state == "established" and self.outbox:
            return self.writable
        if self.state == "flushing":
            return self.writable
        return self.ready

    def step(self):
        """Advance as far as possible without waiting; True once the connection is over."""
        while self.state != "done":
            handler = getattr(self, "_" + self.state)
            if not handler():
                return False
        self.close()
        return True

    # --- states: each returns True when it made progress, False when it must wait -----

    def _hello(self):
        hello = self.hello
        try:
            sni = hello.server_name()
        except Err as e:
            if would_block(e):
                return False
            self.log(f"rejected: {describe(e.value)}")
            self.state = "done"
            return True
        self.sni = sni
        offered = hello.alpn_ids()
        identity = self.chooser.choose(sni)
        if identity is None:
            self.log(f"rejected: no identity preopened (sni={sni or '-'})")
            self.hello = None
            server.IncomingClientHello.reject(hello, ALERT_HANDSHAKE_FAILURE)
            self.state = "done"
            return True
        chosen = next((p for p in self.opts.alpn if p in offered), None)
        if offered and chosen is None:
            self.log(f"rejected: no common ALPN protocol (client offered {', '.join(text(p) for p in offered)})")
            self.hello = None
            server.IncomingClientHello.reject(hello, ALERT_NO_APPLICATION_PROTOCOL)
            self.state = "done"
            return True
        answer = server.OutgoingServerHello(identity)
        if chosen is not None:
            answer.set_alpn_id(chosen)
        try:
            if self.opts.versions is not None:
                answer.set_protocol_versions(self.opts.versions, self.opts.versions)
            if self.opts.suites is not None:
                answer.set_cipher_suites(self.opts.suites)
        except Err as e:  # e.g. outside the host's TLS profile
            self.log(f"answer refused: {describe(e.value)}")
            drop(answer)
            self.hello = None
            server.IncomingClientHello.reject(hello, ALERT_HANDSHAKE_FAILURE)
            self.state = "done"
            return True
        if self.opts.client_auth != "none":
            answer.request_client_identity(self.opts.client_auth == "required")
        if self.opts.expect_code is not None:
            answer.expect_peer_code(self.opts.expect_code)
        self.identity_name = identity.name()
        drop(self.ready)
        self.ready = None
        self.hello = None  # consumed by accept
        try:
            self.exchange = server.IncomingClientHello.accept(hello, answer)
        except Err as e:
            self.log(f"handshake failed: {describe(e.value)}")
            self.state = "done"
            return True
        self.ready = self.exchange.subscribe()
        self.state = "exchange"
        return True

    def _exchange(self):
        try:
            peer = self.exchange.client_identity()
        except Err as e:
            if would_block(e):
                return False
            self.log(f"handshake failed: {describe(e.value)}")
            self.state = "done"
            return True
        subject = peer.subject() if peer is not None else "-"
        code = peer.code_identity() if peer is not None else None
        if code is not None:
            subject += f" code={code.digest}"
        drop(peer, self.ready)
        self.ready = None
        exchange, self.exchange = self.exchange, None
        self.conn, self.rx, self.tx = server.IncomingClientExchange.finish(exchange)
        self.ready = self.rx.subscribe()
        self.writable = self.tx.subscribe()
        conn = self.conn
        alpn = conn.alpn_id()
        self.log(
            f"connection sni={conn.server_name() or '-'} identity={self.identity_name} version=0x{conn.protocol_version():04x} "
            f"suite=0x{conn.cipher_suite():04x} alpn={text(alpn)} client={subject}"
        )
        if self.opts.mode == "alpn":
            self.outbox = f"alpn={text(alpn)}\n".encode()
            self.peer_done = True  # no need to read: answer and close
        self.state = "established"
        return True

    def _established(self):
        if self.outbox:
            try:
                n = self.tx.check_write()
                if n == 0:
                    return False
                self.tx.write(self.outbox[:n])
            except Err as e:
                self.log(f"write error: {stream_error(e)}")
                self.state = "done"
                return True
            self.outbox = self.outbox[n:]
            return True
        if self.peer_done:
            try:
                self.tx.flush()
            except Err as e:  # the client reset or went away: this connection is over
                self.log(f"write error: {stream_error(e)}")
                self.state = "done"
                return True
            self.state = "flushing"
            return True
        try:
            data = self.rx.read(65536)
        except Err as e:
            reason = stream_error(e)
            if reason is not None:
                self.log(f"read error: {reason}")
                self.state = "done"
                return True
            self.peer_done = True  # close_notify from the client
            return True
        if not data:
            return False
        if self.opts.mode == "http":
            self.request += data
            if not end_of_head(self.request) and len(self.request) > MAX_REQUEST:
                self.log(f"request refused: no end of the request head within {MAX_REQUEST} bytes")
                self.outbox = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                self.peer_done = True
            elif end_of_head(self.request):
                first = self.request.split(b"\n", 1)[0].rstrip(b"\r").decode("ascii", "replace")
                body = f"identity={self.identity_name} sni={self.sni or '-'} alpn={text(self.conn.alpn_id())}\n".encode()
                self.outbox = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                self.log(f"request {first}")
                self.peer_done = True
        else:
            self.echoed += len(data)
            self.outbox = data
        return True

    def _flushing(self):
        try:
            if self.tx.check_write() == 0:
                return False
        except Err as e:
            self.log(f"write error: {stream_error(e)}")
            self.state = "done"
            return True
        self.conn.close_output()  # close_notify: the client sees a clean end of data
        self.log(f"closed echoed={self.echoed}")
        self.state = "done"
        return True

    def close(self):
        drop(self.ready, self.writable, self.rx, self.tx, self.conn, self.exchange, self.hello, self.sock)
        self.ready = self.writable = self.rx = self.tx = self.conn = self.exchange = self.hello = self.sock = None


def listen(port):
    sock = tcp_create_socket.create_tcp_socket(network.IpAddressFamily.IPV4)
    addr = network.IpSocketAddress_Ipv4(network.Ipv4SocketAddress(port, (127, 0, 0, 1)))
    sock.start_bind(instance_network.instance_network(), addr)
    sock.finish_bind()
    sock.set_listen_backlog_size(1024)
    sock.start_listen()
    sock.finish_listen()
    return sock


def advance(client):
    """``client.step()``; an error no state expected ends that connection, never the server."""
    try:
        return client.step()
    except Err as e:
        client.log(f"connection error: {error_text(e)}")
        client.close()
        return True


def serve(opts):
    chooser = Identities(opts)
    sock = listen(opts.port)
    say(f"listening on 127.0.0.1:{opts.port} identities={','.join(chooser.names()) or '-'}")
    incoming = sock.subscribe()
    active = []
    accepted = 0
    forever = opts.count == 0
    while forever or accepted < opts.count or active:
        # Accept everything that is waiting (one at a time unless --concurrent).
        while (forever or accepted < opts.count) and (opts.concurrent or not active):
            try:
                peer, rx, tx = sock.accept()
            except Err as e:
                if e.value != network.ErrorCode.WOULD_BLOCK:
                    # One connection's failure (reset before accept, over the host's socket
                    # limit) is not the server's: say so and keep serving.
                    say(f"accept failed: {e.value.name.lower().replace('_', '-')}; still serving")
                break
            accepted += 1
            client = Client(accepted, opts, chooser, peer, rx, tx)
            if not advance(client):
                active.append(client)
        waiting = [c.pollable() for c in active]
        listening = (forever or accepted < opts.count) and (opts.concurrent or not active)
        if listening:
            waiting.append(incoming)
        if not waiting:
            break
        ready = poll.poll(waiting)
        finished = set()
        for index in ready:
            if index < len(active) and advance(active[index]):
                finished.add(index)
        if finished:
            active = [c for i, c in enumerate(active) if i not in finished]
    say(f"served {accepted}")


def attested():
    """Print this instance's own code-bound identity as the guest sees it."""
    try:
        mine = identities.attested_identity()
    except Err as e:
        say(f"attested=error {describe(e.value)}")
        return
    public = mine.public_identity()
    code = public.code_identity()
    say(f"attested={mine.name()} subject={public.subject()} names={','.join(public.subject_alt_names()) or '-'}")
    if code is None:
        say("code=none")
    else:
        say(f"code={code.digest} code-hash={bytes(code.code_hash).hex()} config-hash={bytes(code.configuration_hash).hex()}")
        say(f"authority={bytes(code.authority_hash).hex() or '-'} debug={code.debug}")
        say(f"configuration={code.configuration}")
    drop(public, mine)


def inspect(args):
    """Print what the preopened store answers, for tests of what a guest can reach."""
    store = identities.preopened_identities()
    everything = store.all()
    say(f"all={','.join(i.name() for i in everything) or '-'}")
    i = 0
    while i < len(args):
        if args[i] == "--host":
            found = store.find_by_host_name(args[i + 1])
            say(f"host {args[i + 1]}={','.join(x.name() for x in found) or '-'}")
            i += 2
            continue
        found = store.find_by_name(args[i])
        say(f"name {args[i]}={found.name() if found is not None else 'none'}")
        i += 1


class Run(exports.Run):
    def run(self) -> None:
        argv = environment.get_arguments()[1:]
        if argv and argv[0] == "identities":
            inspect(argv[1:])
        elif argv and argv[0] == "attested":
            attested()
        else:
            serve(Options(argv))
