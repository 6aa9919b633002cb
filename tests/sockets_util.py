"""Helpers for the wasi:sockets tests: loopback-only policies, CPython peers on threads, and
a guest running on a thread whose stdout lines can be awaited."""

from __future__ import annotations

import socket
import threading
from typing import Callable

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.host import RunResult
from wasi_tls_host.wasi.sockets import NetworkPolicy

TIMEOUT = 20.0
# How long a server waits for the guest to connect: the guest's component may be compiled
# first (a cold cache on a loaded CI machine: a minute for an 18 MB componentize-py guest).
ACCEPT_TIMEOUT = 180.0


def loopback_policy() -> NetworkPolicy:
    return (
        NetworkPolicy()
        .allow_connect("127.0.0.1:*").allow_connect("[::1]:*")
        .allow_listen("127.0.0.1:*").allow_listen("[::1]:*")
        .allow_dns()
    )


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class GuestThread:
    """Runs a guest on a thread; ``wait_for(text)`` waits until stdout contains ``text``."""

    def __init__(self, host: Host, wasm: object, args: list[str], policy: NetworkPolicy | None) -> None:
        self._cond = threading.Condition()
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        config = WasiConfig(args=["sockets_probe", *args], stdout=self._out, stderr=self.stderr, network=policy)
        self.guest = host.instantiate(wasm, config)  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self._run, name="guest", daemon=True)
        self.thread.start()

    def _out(self, data: bytes) -> None:
        with self._cond:
            self.stdout += data
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self.result = self.guest.run()
        except BaseException as e:  # reported by join()
            self.error = e
        finally:
            self.guest.close()
            with self._cond:
                self._cond.notify_all()

    @property
    def out(self) -> str:
        with self._cond:
            return self.stdout.decode()

    def _has_line(self, text: str) -> bool:
        complete = self.stdout.decode().rpartition("\n")[0]  # print() may arrive in pieces
        return text in complete

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        """Wait for a complete stdout line containing ``text``."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._has_line(text) or not self.thread.is_alive(), timeout)
            found = self._has_line(text)
        assert ok and found, f"guest never printed {text!r}; stdout={self.out!r} stderr={self.stderr.decode()!r}"
        return self.out

    def stop(self) -> None:
        """Interrupt the guest if it still runs (a failed test must not leave it behind)."""
        if self.thread.is_alive():
            self.guest.interrupt("stopped by the test")
            self.thread.join(TIMEOUT)

    def __enter__(self) -> GuestThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def join(self, timeout: float = TIMEOUT) -> RunResult:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.guest.interrupt("test timeout")
            self.thread.join(5)
            raise AssertionError(f"guest did not finish in {timeout} s; stdout={self.out!r}")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class ServerThread:
    """A CPython TCP server on loopback running ``handle(conn)`` for each connection.

    A test that fails before ``close()`` leaves it open: ``close_leftovers()`` (an autouse
    fixture in conftest.py) closes its listener then, instead of the garbage collector
    finding it in a later test (an unraisable ResourceWarning there)."""

    open_servers: set[ServerThread] = set()

    @classmethod
    def close_leftovers(cls) -> int:
        """Close the listener of every server a test left open; how many there were."""
        leftovers = list(cls.open_servers)
        for server in leftovers:
            server.listener.close()
            cls.open_servers.discard(server)
        return len(leftovers)

    def __init__(self, handle: Callable[[socket.socket], None], family: int = socket.AF_INET, connections: int = 1) -> None:
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(128)
        self.listener.settimeout(ACCEPT_TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.errors: list[BaseException] = []
        self._handle, self._connections = handle, connections
        self.thread = threading.Thread(target=self._serve, name="cpython-server", daemon=True)
        self.thread.start()
        ServerThread.open_servers.add(self)

    def _serve(self) -> None:
        try:
            for _ in range(self._connections):
                conn, _ = self.listener.accept()
                with conn:
                    conn.settimeout(TIMEOUT)
                    self._handle(conn)
        except BaseException as e:
            self.errors.append(e)
        finally:
            # A client arriving after this is refused at once; with the listener left open
            # the kernel would queue it and the guest would wait for an echo forever.
            self.listener.close()

    def close(self) -> None:
        self.thread.join(TIMEOUT)
        if self.thread.is_alive():
            # Still in accept(): the guest never connected. shutdown() wakes accept().
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.thread.join(TIMEOUT)
        self.listener.close()
        ServerThread.open_servers.discard(self)
        assert not self.thread.is_alive(), "server thread did not finish"
        if self.errors:
            raise self.errors[0]


def echo_until_eof(conn: socket.socket) -> None:
    data = bytearray()
    while chunk := conn.recv(65536):
        data += chunk
    conn.sendall(data)


class AcceptAndClose:
    """A CPython listener on 127.0.0.1 that accepts connections on a thread and closes each
    at once, counting them (``with AcceptAndClose() as server: ... server.port``)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="accept-and-close", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.close()
            self.accepted += 1

    def __enter__(self) -> AcceptAndClose:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.listener.close()


def eof_or_reset(conn: socket.socket) -> bytes:
    """What a connection the other side closed gives: b"" at its FIN, or b"" for a reset."""
    try:
        return conn.recv(10)
    except ConnectionResetError:
        return b""
