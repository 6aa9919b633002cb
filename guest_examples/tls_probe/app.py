"""A wasi:tls test and benchmark guest: `tls_probe SUBCOMMAND ARGS...`.

Each subcommand prints `key=value` lines on stdout for the tests to assert; TLS failures are
printed as `error=<the host's debug string>` (exit code 1), timeouts as `timeout`. The
bad-guest subcommands use the generated `wasi:tls/types` bindings directly so each step is
one WIT call.

    get HOST PORT PATH [NAME]      HTTP/1.0 GET; prints status, body bytes and sha256, end
    download HOST PORT [NAME]      read until the stream ends; prints bytes, sha256, end
    echo HOST PORT N SIZE [NAME]   N separate writes of SIZE bytes, then read them back
    connect HOST PORT [NAME]       handshake only
    stall HOST PORT MS             handshake with a MS clock timeout on the poll
    get-twice HOST PORT            future-client-streams.get after its result was taken
    use-after-drop HOST PORT       drop client-connection (and the socket), then use streams
    drop-future HOST PORT          drop the future mid-handshake, then connect again
    bench-handshake HOST PORT N [NAME]  N connect+handshake timings (microseconds)
    bench-download HOST PORT [NAME]  send a GET line, time the download (no digest)
    resume HOST PORT N [NAME]      N connections one after another, each: handshake (timed,
                                   microseconds), send a line, read it echoed, close (the
                                   line is a palindrome: a server echoing lines reversed, as
                                   openssl s_server -rev, echoes it too);
                                   reading after the handshake brings TLS 1.3 tickets, so
                                   the host can resume the next connection
"""

import hashlib
import sys

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import environment, exit, monotonic_clock, poll, streams
from wit_world.imports import wasi_tls_types as tls

from wasi_tls_client import TlsConnection, TlsError, connect, handshake, tcp_connect


def out(*parts):
    print(*parts, flush=True)


def stream_outcome(e):
    """A stream error as printed: `closed` or `error=<debug string>`."""
    if isinstance(e.value, streams.StreamError_Closed):
        return "closed"
    return "error=" + e.value.value.to_debug_string()


def read_to_end(rx, chunk=1 << 16, digest=True):
    """(bytes read, sha256 or None, how the stream ended) reading `rx` until it ends."""
    h = hashlib.sha256() if digest else None
    total = 0
    while True:
        try:
            data = rx.read(chunk)
        except Err as e:
            return total, (h.hexdigest() if h else None), stream_outcome(e)
        if data:
            total += len(data)
            if h:
                h.update(data)
            continue
        pollable = rx.subscribe()
        pollable.block()
        pollable.__exit__(None, None, None)


def name_arg(argv, index, host):
    return argv[index] if len(argv) > index else host


def cmd_connect(host, port, name):
    with connect(host, port, server_name=name, timeout=20):
        out("handshake=ok")


def cmd_get(host, port, path, name):
    with connect(host, port, server_name=name, timeout=20) as conn:
        conn.write_all(f"GET {path} HTTP/1.0\r\n\r\n".encode(), timeout=20)
        total, digest, end, head = read_response(conn)
    out(f"status={head.split(b' ', 2)[1].decode() if head else '-'}")
    out(f"body-bytes={total}")
    out(f"body-sha256={digest}")
    out(f"end={end}" if end == "closed" else end)


def read_response(conn):
    """Split the head off a response while hashing the body as it streams in."""
    h = hashlib.sha256()
    buffered = b""
    head = None
    total = 0
    while True:
        try:
            data = conn.rx.read(1 << 16)
        except Err as e:
            if head is None:
                head, _, body = buffered.partition(b"\r\n\r\n")
                h.update(body)
                total += len(body)
            return total, h.hexdigest(), stream_outcome(e), head
        if not data:
            pollable = conn.rx.subscribe()
            pollable.block()
            pollable.__exit__(None, None, None)
            continue
        if head is None:
            buffered += data
            if b"\r\n\r\n" in buffered:
                head, _, body = buffered.partition(b"\r\n\r\n")
                h.update(body)
                total += len(body)
        else:
            h.update(data)
            total += len(data)


def cmd_download(host, port, name, digest=True, request=None):
    with connect(host, port, server_name=name, timeout=20) as conn:
        start = monotonic_clock.now()
        if request:
            conn.write_all(request, timeout=20)
        total, sha, end = read_to_end(conn.rx, 1 << 20, digest)
        elapsed = monotonic_clock.now() - start
    out(f"bytes={total}")
    if digest:
        out(f"sha256={sha}")
    else:
        out(f"elapsed-ns={elapsed}")
    out(f"end={end}" if end == "closed" else end)


def cmd_echo(host, port, count, size, name):
    with connect(host, port, server_name=name, timeout=20) as conn:
        sent = hashlib.sha256()
        for i in range(count):
            piece = bytes([i % 251]) * size
            sent.update(piece)
            conn.write_all(piece, timeout=20)
        got = hashlib.sha256()
        total = 0
        while total < count * size:
            data = conn.read(1 << 16, timeout=20)
            if not data:
                break
            got.update(data)
            total += len(data)
    out(f"writes={count}")
    out(f"echoed={total}")
    out(f"match={sent.hexdigest() == got.hexdigest()}")


def cmd_stall(host, port, ms):
    """Handshake against a peer that never answers; a clock timeout must end the wait."""
    sock, rx, tx = tcp_connect(host, port)
    future = tls.ClientHandshake.finish(tls.ClientHandshake(host, rx, tx))
    start = monotonic_clock.now()
    ready = future.subscribe()
    timer = monotonic_clock.subscribe_duration(ms * 1_000_000)
    which = poll.poll([ready, timer])
    elapsed_ms = (monotonic_clock.now() - start) // 1_000_000
    outcome = future.get()
    for resource in (timer, ready, future, sock):
        resource.__exit__(None, None, None)
    out("timeout" if which == [1] else f"ready={which}")
    out(f"pending={outcome is None}")
    out(f"waited-enough={elapsed_ms >= ms}")


def finished_future(host, port):
    """(socket, future) once the handshake has an outcome."""
    sock, rx, tx = tcp_connect(host, port)
    future = tls.ClientHandshake.finish(tls.ClientHandshake(host, rx, tx))
    pollable = future.subscribe()
    pollable.block()
    pollable.__exit__(None, None, None)
    return sock, future


def cmd_get_twice(host, port):
    sock, future = finished_future(host, port)
    first = future.get()
    out(f"first={type(first.value.value).__name__}" if first is not None else "first=none")
    second = future.get()
    out(f"second={'err' if isinstance(second, Err) else repr(second)}")
    third = future.get()
    out(f"third={'err' if isinstance(third, Err) else repr(third)}")
    if first is not None and not isinstance(first.value, Err):
        connection, rx, tx = first.value.value
        for resource in (rx, tx, connection):
            resource.__exit__(None, None, None)
    future.__exit__(None, None, None)
    sock.__exit__(None, None, None)


def attempt_write(tx, data):
    try:
        permit = tx.check_write()
        tx.write(data[:permit])
        tx.flush()
        return "ok"
    except Err as e:
        return stream_outcome(e)


def read_exactly(rx, n):
    """`n` bytes from `rx` as printed: the bytes, or how the stream ended first."""
    data = b""
    while len(data) < n:
        try:
            chunk = rx.read(n - len(data))
        except Err as e:
            return f"{data!r} then {stream_outcome(e)}"
        if not chunk:
            pollable = rx.subscribe()
            pollable.block()
            pollable.__exit__(None, None, None)
        data += chunk
    return repr(data)


def cmd_use_after_drop(host, port):
    """Drop the client-connection and then the TCP socket while keeping the TLS streams.

    The streams own the connection's state on this host, so they keep working; once they
    are dropped too, the socket must be closed (no leak). Run against an echo server.
    """
    sock, future = finished_future(host, port)
    connection, rx, tx = future.get().value.value
    future.__exit__(None, None, None)
    connection.__exit__(None, None, None)
    out(f"write-after-connection-drop={attempt_write(tx, b'ping')}")
    out(f"read-after-connection-drop={read_exactly(rx, 4)}")
    sock.__exit__(None, None, None)
    out(f"write-after-socket-drop={attempt_write(tx, b'pong')}")
    out(f"read-after-socket-drop={read_exactly(rx, 4)}")
    rx.__exit__(None, None, None)
    tx.__exit__(None, None, None)
    out("done")


def cmd_drop_future(host, port):
    sock, rx, tx = tcp_connect(host, port)
    future = tls.ClientHandshake.finish(tls.ClientHandshake(host, rx, tx))
    future.__exit__(None, None, None)  # mid-handshake: the ClientHello is out, no answer yet
    sock.__exit__(None, None, None)
    out("dropped")
    # The host must be unharmed: a new connection in the same instance works.
    with connect(host, port, timeout=20):
        out("reconnect=ok")
    # Dropping a handshake that was never finished releases its streams too.
    sock, rx, tx = tcp_connect(host, port)
    tls.ClientHandshake(host, rx, tx).__exit__(None, None, None)
    sock.__exit__(None, None, None)
    out("unfinished-handshake-dropped")


def cmd_bench_handshake(host, port, count, name):
    """Per connection: TCP connect + handshake, and the handshake alone (microseconds)."""
    totals, handshakes = [], []
    for _ in range(count):
        start = monotonic_clock.now()
        sock, rx, tx = tcp_connect(host, port)
        connected = monotonic_clock.now()
        connection, plain_rx, plain_tx = handshake(rx, tx, name)
        done = monotonic_clock.now()
        totals.append((done - start) // 1000)
        handshakes.append((done - connected) // 1000)
        TlsConnection(sock, connection, plain_rx, plain_tx, name).close()
    out("handshake-us=" + ",".join(str(t) for t in totals))
    out("tls-only-us=" + ",".join(str(t) for t in handshakes))


def cmd_resume(host, port, count, name):
    handshakes = []
    for _ in range(count):
        sock, rx, tx = tcp_connect(host, port)
        start = monotonic_clock.now()
        connection, plain_rx, plain_tx = handshake(rx, tx, name)
        handshakes.append((monotonic_clock.now() - start) // 1000)
        with TlsConnection(sock, connection, plain_rx, plain_tx, name) as conn:
            conn.write_all(b"level\n", timeout=20)
            line = b""
            while not line.endswith(b"\n"):
                data = conn.read(64, timeout=20)
                if not data:
                    break
                line += data
            if line != b"level\n":
                out(f"error=echoed {line!r}")
                return 1
    out(f"connections={count}")
    out("handshake-us=" + ",".join(str(t) for t in handshakes))
    return 0


def main(argv):
    cmd, args = argv[1], argv[2:]
    host = args[0] if args else ""
    port = int(args[1]) if len(args) > 1 else 0
    if cmd == "connect":
        cmd_connect(host, port, name_arg(args, 2, host))
    elif cmd == "get":
        cmd_get(host, port, args[2], name_arg(args, 3, host))
    elif cmd == "download":
        cmd_download(host, port, name_arg(args, 2, host))
    elif cmd == "bench-download":
        cmd_download(host, port, name_arg(args, 2, host), digest=False, request=b"GET / HTTP/1.0\r\n\r\n")
    elif cmd == "echo":
        cmd_echo(host, port, int(args[2]), int(args[3]), name_arg(args, 4, host))
    elif cmd == "stall":
        cmd_stall(host, port, int(args[2]))
    elif cmd == "get-twice":
        cmd_get_twice(host, port)
    elif cmd == "use-after-drop":
        cmd_use_after_drop(host, port)
    elif cmd == "drop-future":
        cmd_drop_future(host, port)
    elif cmd == "bench-handshake":
        cmd_bench_handshake(host, port, int(args[2]), name_arg(args, 3, host))
    elif cmd == "resume":
        return cmd_resume(host, port, int(args[2]), name_arg(args, 3, host))
    else:
        out(f"unknown subcommand {cmd!r}")
        return 2
    return 0


class Run(exports.Run):
    def run(self) -> None:
        argv = environment.get_arguments()
        try:
            code = main(argv)
        except TlsError as e:
            out(f"error={e}")
            code = 1
        except (ConnectionError, TimeoutError) as e:
            out(f"{type(e).__name__}={e}")
            code = 1
        if code:
            exit.exit(Err(None))
