"""A TLS peer on CPython's ``ssl`` module, run as its own process by the interop matrix.

It takes the Go peer's flags (``gotls/main.go``) and prints the same JSON lines, so both
are driven and read alike:

    python pyssl_peer.py -mode server -cert C -key K [-cert2 C -key2 K -cert2-names a,b] [-ca CA]
        [-client-auth none|request|verify-if-given|require] [-min 1.2] [-max 1.3]
        [-alpn a,b] [-groups X25519|P-256|P-384] [-tickets=true] [-then echo|close|truncate|http]
        [-bytes N] [-timeout 10s] [-listen 127.0.0.1:0]
    python pyssl_peer.py -mode client -connect HOST:PORT [-server-name N] [-ca CA]
        [-cert C -key K] [-min/-max] [-alpn a,b] [-groups G] [-tickets=true] [-count N]
        [-send LINE] [-read-to-end] [-then close|truncate] [-timeout 10s]

Standard library only: it runs with any Python 3 that has ``ssl``.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
from typing import Any

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
GROUPS = {"X25519": "X25519", "P-256": "prime256v1", "P-384": "secp384r1"}
BOOLEAN_FLAGS = {"read-to-end"}
_out = threading.Lock()


def emit(record: dict[str, Any]) -> None:
    with _out:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


def usage(message: str) -> None:
    sys.stderr.write(f"pyssl_peer: {message}\n")
    sys.exit(2)


def parse(argv: list[str]) -> dict[str, str]:
    """Go-style flags: ``-name value``, ``-name=value``, and the boolean ``-read-to-end``."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            usage(f"unexpected argument {arg!r}")
        name = arg.lstrip("-")
        if "=" in name:
            name, value = name.split("=", 1)
        elif name in BOOLEAN_FLAGS:
            value = "true"
        elif i + 1 < len(argv):
            i += 1
            value = argv[i]
        else:
            usage(f"-{name} needs a value")
        flags[name] = value
        i += 1
    return flags


def seconds(text: str) -> float:
    return float(text[:-1]) if text.endswith("s") else float(text)


def context(flags: dict[str, str], server: bool, cert: str | None, key: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    if "min" in flags:
        ctx.minimum_version = VERSIONS[flags["min"]]
    if "max" in flags:
        ctx.maximum_version = VERSIONS[flags["max"]]
    if cert:
        ctx.load_cert_chain(cert, key)
    if flags.get("ca"):
        ctx.load_verify_locations(flags["ca"])
    if flags.get("alpn"):
        ctx.set_alpn_protocols(flags["alpn"].split(","))
    if flags.get("groups"):
        ctx.set_ecdh_curve(GROUPS[flags["groups"].split(",")[0]])
    if flags.get("tickets", "true") == "false":
        ctx.options |= ssl.OP_NO_TICKET
        if server:
            ctx.num_tickets = 0
    if server:
        auth = flags.get("client-auth", "none")
        ctx.verify_mode = {"none": ssl.CERT_NONE, "request": ssl.CERT_OPTIONAL, "verify-if-given": ssl.CERT_OPTIONAL,
                           "require": ssl.CERT_REQUIRED}[auth]
    return ctx


def describe(record: dict[str, Any], conn: ssl.SSLSocket) -> None:
    record["version"] = conn.version()
    cipher = conn.cipher()
    record["suite"] = cipher[0] if cipher else None
    record["alpn"] = conn.selected_alpn_protocol() or ""
    record["resumed"] = bool(conn.session_reused)
    peer = conn.getpeercert()
    if peer:
        record["peer_subject"] = ",".join(f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn)


def ending(error: BaseException | None) -> str:
    return "close_notify" if error is None else f"{type(error).__name__}: {error}"


def serve_one(raw: socket.socket, ctx: ssl.SSLContext, flags: dict[str, str], names: dict[str, str]) -> None:
    timeout = seconds(flags.get("timeout", "10s"))
    raw.settimeout(timeout)
    record: dict[str, Any] = {"event": "connection", "side": "server", "ok": False, "peer": "%s:%d" % raw.getpeername()}
    started = time.monotonic()
    try:
        # suppress_ragged_eofs=False: an end without close_notify is an error, not b"".
        conn = ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
    except (OSError, ssl.SSLError) as e:
        record["error"] = f"{type(e).__name__}: {e}"
        emit(record)
        raw.close()
        return
    record["handshake_ms"] = round((time.monotonic() - started) * 1000, 3)
    record["ok"] = True
    record["server_name"] = names.get(record["peer"], "")
    describe(record, conn)
    emit(record)
    then = flags.get("then", "echo")
    try:
        if then in ("close", "truncate"):
            conn.sendall(b"x" * int(flags.get("bytes", "1000")))
            if then == "close":
                conn.unwrap().close()
            return
        if then == "http":
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n")
            conn.unwrap().close()
            return
        error: BaseException | None = None
        buffered = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buffered += chunk
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    conn.sendall(line + b"\n")
        except (OSError, ssl.SSLError) as e:
            error = e
        emit({"event": "end", "side": "server", "peer": record["peer"], "ok": True, "end": ending(error)})
    except (OSError, ssl.SSLError):
        pass
    finally:
        conn.close()


def server(flags: dict[str, str]) -> None:
    ctx = context(flags, True, flags.get("cert"), flags.get("key"))
    names: dict[str, str] = {}  # peer address -> the server name it sent
    second = context(flags, True, flags["cert2"], flags.get("key2")) if flags.get("cert2") else None
    second_names = set(flags.get("cert2-names", "").split(",")) - {""}

    def on_sni(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        try:
            peer = "%s:%d" % sock.getpeername()  # type: ignore[attr-defined]
            names[peer] = name or ""
        except OSError:
            pass
        if second is not None and name in second_names:
            sock.context = second

    ctx.sni_callback = on_sni
    host, port = flags.get("listen", "127.0.0.1:0").rsplit(":", 1)
    listener = socket.create_server((host, int(port)))
    emit({"event": "listening", "addr": "%s:%d" % listener.getsockname()[:2]})
    while True:
        raw, _ = listener.accept()
        threading.Thread(target=serve_one, args=(raw, ctx, flags, names), daemon=True).start()


def client(flags: dict[str, str]) -> int:
    host, port = flags["connect"].rsplit(":", 1)
    name = flags.get("server-name") or host
    ctx = context(flags, False, flags.get("cert"), flags.get("key"))
    if not flags.get("ca"):
        ctx.load_default_certs()
    timeout = seconds(flags.get("timeout", "10s"))
    session = None
    failed = False
    for _ in range(int(flags.get("count", "1"))):
        record: dict[str, Any] = {"event": "connection", "side": "client", "ok": False, "peer": flags["connect"]}
        try:
            raw = socket.create_connection((host, int(port)), timeout=timeout)
        except OSError as e:
            record["error"] = f"{type(e).__name__}: {e}"
            emit(record)
            failed = True
            continue
        started = time.monotonic()
        try:
            conn = ctx.wrap_socket(raw, server_hostname=name, session=session, suppress_ragged_eofs=False)
        except (OSError, ssl.SSLError) as e:
            raw.close()
            record["error"] = f"{type(e).__name__}: {e}"
            emit(record)
            failed = True
            continue
        record["handshake_ms"] = round((time.monotonic() - started) * 1000, 3)
        record["ok"] = True
        describe(record, conn)
        try:
            if flags.get("send"):
                conn.sendall(flags["send"].encode() + b"\n")
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                record["reply"] = reply.decode(errors="replace").rstrip("\n")
            if flags.get("read-to-end") == "true":
                received, error = 0, None
                try:
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        received += len(chunk)
                except (OSError, ssl.SSLError) as e:
                    error = e
                record["received"], record["end"] = received, ending(error)
            if flags.get("tickets", "true") != "false":
                session = conn.session
            if flags.get("then", "close") == "close":
                conn.unwrap().close()
            else:
                conn.close()  # SSLSocket.close sends no close_notify: a truncation
        except (OSError, ssl.SSLError) as e:
            record["ok"] = False
            record["error"] = f"{type(e).__name__}: {e}"
            failed = True
            conn.close()
        emit(record)
    return 1 if failed else 0


def main() -> int:
    flags = parse(sys.argv[1:])
    mode = flags.get("mode")
    if mode == "server":
        server(flags)
        return 0
    if mode == "client":
        return client(flags)
    usage("-mode must be server or client")
    return 2


if __name__ == "__main__":
    sys.exit(main())
