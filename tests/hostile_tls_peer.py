"""A TLS "server" that misbehaves, for the interop matrix's fault tests: it says it listens
as the matrix's own peers do ({"event":"listening","addr":...}), then, per connection:

    crash    read the ClientHello, then exit with status 3 (the process is gone)
    hang     read the ClientHello and never answer (the connection stays open)
    garbage  read the ClientHello, answer with bytes that are not TLS, keep the line open
    nostart  exit at once, before listening

    python hostile_tls_peer.py MODE
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time


def main() -> int:
    mode = sys.argv[1]
    if mode == "nostart":
        print("cannot start: told not to", file=sys.stderr)
        return 1
    listener = socket.create_server(("127.0.0.1", 0))
    print(json.dumps({"event": "listening", "addr": "127.0.0.1:%d" % listener.getsockname()[1]}), flush=True)
    kept = []
    while True:
        conn, _ = listener.accept()
        conn.recv(4096)
        if mode == "crash":
            os._exit(3)
        if mode == "garbage":
            conn.sendall(os.urandom(16) + b"\r\nHTTP/1.1 400 Bad Request\r\n\r\n" * 8)
        kept.append(conn)
        if mode == "hang":
            time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
