"""Configuration an embedder gives a guest (``WasiConfig``) and the per-store state built
from it (``WasiCtx``): arguments, environment, stdio, preopened directories, network policy.

A ``WasiConfig`` is plain data and can serve many stores; a ``WasiCtx`` owns live host
objects (stdio threads, descriptors) and is closed with its store.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Callable, Union

from ..runtime.limits import GuestLimits
from ..runtime.records import ValueFields
from .io import (
    BytesInput,
    ClosedInput,
    FdOutput,
    InputStream,
    Interruptor,
    OutputStream,
    SinkOutput,
    start_reader_thread,
)
from .sockets.registry import SocketRegistry

# What a guest's stdin may be: "inherit" (the host's), None (closed at once), bytes, or a
# factory for any InputStream.
StdinSpec = Union[str, None, bytes, Callable[[], InputStream]]
# What stdout/stderr may be: "inherit", None (discarded), a bytearray to append to, a
# binary file, a callable taking bytes, or a factory for any OutputStream.
StdoutSpec = Union[str, None, bytearray, BinaryIO, Callable[[bytes], Any]]


class WasiConfig(ValueFields):
    """What a guest gets: its arguments, environment, stdio, directories, network, TLS policy
    and limits (every argument is optional; lists and dicts given are used as they are)."""

    _fields = ("args", "env", "cwd", "stdin", "stdout", "stderr", "preopens", "network", "tls", "limits", "whole_lines")

    def __init__(self, args: list[str] | None = None, env: dict[str, str] | None = None, cwd: str | None = None,
                 stdin: StdinSpec = None, stdout: StdoutSpec = None, stderr: StdoutSpec = None, preopens: list[Any] | None = None,
                 network: Any = None, tls: Any = None, limits: GuestLimits | None = None, whole_lines: bool = False) -> None:
        self.args: list[str] = [] if args is None else args
        self.env: dict[str, str] = {} if env is None else env
        self.cwd = cwd
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        # Preopened directories (wasi_tls_host.wasi.filesystem.Preopen objects).
        self.preopens: list[Any] = [] if preopens is None else preopens
        # Which network operations are allowed (wasi_tls_host.wasi.sockets.NetworkPolicy);
        # None denies everything.
        self.network = network
        # TLS policy (wasi_tls_host.tls.TlsConfig): trust anchors, versions. None = defaults
        # (the system's trust store).
        self.tls = tls
        # What the guest may consume: memory, tables, wall-clock time, sockets
        # (wasi_tls_host.runtime.limits.GuestLimits; the defaults are generous).
        self.limits: GuestLimits = GuestLimits() if limits is None else limits
        # Inherited stdout/stderr get whole lines, one write each (a partial line waits for its
        # newline, even across flushes): for several processes sharing one pipe (--workers).
        self.whole_lines = whole_lines

    def inherit_stdio(self) -> WasiConfig:
        self.stdin, self.stdout, self.stderr = "inherit", "inherit", "inherit"
        return self

    def inherit_env(self) -> WasiConfig:
        self.env = dict(os.environ) | self.env
        return self


class _SharedStdin(InputStream):
    """One handle on the store's stdin; dropping a handle leaves stdin open for the others."""

    def __init__(self, inner: InputStream) -> None:
        self.inner = inner

    def read(self, n: int) -> bytes:
        return self.inner.read(n)

    def skip(self, n: int) -> int:
        return self.inner.skip(n)

    def subscribe(self) -> Any:
        return self.inner.subscribe()


class _SharedOutput(OutputStream):
    def __init__(self, inner: OutputStream) -> None:
        super().__init__()
        self.inner = inner
        self.takes_views = inner.takes_views

    def _check_write(self) -> int:
        return self.inner.check_write()

    def _write(self, data: bytes) -> None:
        self.inner.check_write()
        self.inner.write(data)

    def _flush(self) -> None:
        self.inner.flush()

    def subscribe(self) -> Any:
        return self.inner.subscribe()


def _make_stdin(spec: StdinSpec) -> InputStream:
    if spec is None:
        return ClosedInput()
    if spec == "inherit":
        return start_reader_thread(0)  # fd 0 itself: sys.stdin may be replaced (pytest, IDEs)
    if isinstance(spec, (bytes, bytearray)):
        return BytesInput(bytes(spec))
    if callable(spec):
        return spec()
    raise TypeError(f"stdin must be 'inherit', None, bytes or a stream factory, not {spec!r}")


def _make_output(spec: StdoutSpec, inherit_fd: int, whole_lines: bool = False) -> OutputStream:
    if spec is None:
        return SinkOutput(None)
    if spec == "inherit":
        return FdOutput(inherit_fd, whole_lines)
    if isinstance(spec, bytearray):
        return SinkOutput(spec.extend, takes_views=True)
    if hasattr(spec, "write"):
        file = spec

        def write(data: bytes) -> None:
            file.write(data)  # type: ignore[union-attr]
            file.flush()  # type: ignore[union-attr]

        return SinkOutput(write)
    if callable(spec):
        return SinkOutput(spec)
    raise TypeError(f"stdout/stderr must be 'inherit', None, a bytearray, a file or a callable, not {spec!r}")


class WasiCtx:
    """The live WASI state of one store."""

    def __init__(self, config: WasiConfig) -> None:
        self.config = config
        self.args = list(config.args)
        self.env = list(config.env.items())
        self.cwd = config.cwd
        self.interruptor = Interruptor()
        seed = os.urandom(16)  # (the random module is not needed for it: ~1 ms of a start)
        self.insecure_seed = (int.from_bytes(seed[:8], "little"), int.from_bytes(seed[8:], "little"))
        self.stdin = _make_stdin(config.stdin)
        self.stdout = _make_output(config.stdout, 1, config.whole_lines)
        self.stderr = _make_output(config.stderr, 2, config.whole_lines)
        self.stdin_is_terminal = config.stdin == "inherit" and _isatty(0)
        self.stdout_is_terminal = config.stdout == "inherit" and _isatty(1)
        self.stderr_is_terminal = config.stderr == "inherit" and _isatty(2)
        # WASI 0.3's write-via-stream pumps into stdout and stderr (wasi/p3/pumps.py): what
        # they hold is written out before the store closes.
        self.output_pumps: set[Any] = set()
        # Filled by the filesystem and sockets modules from config.preopens / config.network.
        self.preopens: list[Any] = list(config.preopens)
        self.network = config.network
        self.tls = config.tls
        # Every socket the guest opens (both WASI versions); closed with the store.
        self.sockets = SocketRegistry(getattr(config.limits, "max_sockets", None))
        self._on_close: list[Callable[[], None]] = [self.sockets.close_all]

    def shared_stdin(self) -> InputStream:
        return _SharedStdin(self.stdin)

    def shared_stdout(self) -> OutputStream:
        return _SharedOutput(self.stdout)

    def shared_stderr(self) -> OutputStream:
        return _SharedOutput(self.stderr)

    def interrupt(self, reason: str = "interrupted by the embedder") -> None:
        """Make the guest's current or next wait trap with ``reason`` (thread-safe)."""
        self.interruptor.interrupt(reason)

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def close(self) -> None:
        for callback in reversed(self._on_close):
            try:
                callback()
            except Exception:
                pass
        self._on_close.clear()
        for stream in (self.stdin, self.stdout, self.stderr):
            stream.drop()
        self.interruptor.close()


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False
