"""wasi:cli@0.3.0 (environment, exit, stdin/stdout/stderr as streams, terminal-*, types): a
thin surface over the same state WASI 0.2's ``wasi/cli.py`` serves, the store's ``WasiCtx``
(arguments, environment, its stdio engines and their configuration)."""

from __future__ import annotations

from ...runtime.binding import GuestExit, Interface
from ...runtime.store import StoreState
from ...runtime.streams import Future, Stream
from ...runtime.values import Err
from ..cli import TerminalInput, TerminalOutput
from ..io import StreamClosed as SinkClosed
from .pumps import read_via_stream, write_via_stream

types_iface = Interface("wasi:cli/types@0.3.0")
environment_iface = Interface("wasi:cli/environment@0.3.0")
exit_iface = Interface("wasi:cli/exit@0.3.0")
stdin_iface = Interface("wasi:cli/stdin@0.3.0")
stdout_iface = Interface("wasi:cli/stdout@0.3.0")
stderr_iface = Interface("wasi:cli/stderr@0.3.0")
terminal_input_iface = Interface("wasi:cli/terminal-input@0.3.0")
terminal_output_iface = Interface("wasi:cli/terminal-output@0.3.0")
terminal_stdin_iface = Interface("wasi:cli/terminal-stdin@0.3.0")
terminal_stdout_iface = Interface("wasi:cli/terminal-stdout@0.3.0")
terminal_stderr_iface = Interface("wasi:cli/terminal-stderr@0.3.0")

terminal_input_iface.resource("terminal-input", TerminalInput)
terminal_output_iface.resource("terminal-output", TerminalOutput)


def error_code(e: Exception) -> str:
    """wasi:cli/types.error-code for a failed stdio engine: a sink that is closed (a broken
    pipe) is ``pipe``, anything else ``io`` (as wasmtime reports them)."""
    return "pipe" if isinstance(e, SinkClosed) else "io"


@environment_iface.func("get-environment")
def get_environment(cx: StoreState) -> list[tuple[str, str]]:
    return cx.wasi.env


@environment_iface.func("get-arguments")
def get_arguments(cx: StoreState) -> list[str]:
    return cx.wasi.args


@environment_iface.func("get-initial-cwd")
def get_initial_cwd(cx: StoreState) -> str | None:
    return cx.wasi.cwd


@exit_iface.func("exit")
def exit_(cx: StoreState, status: object) -> None:
    raise GuestExit(1 if isinstance(status, Err) else 0)


@exit_iface.func("exit-with-code")
def exit_with_code(cx: StoreState, status_code: int) -> None:
    raise GuestExit(status_code)


@stdin_iface.func("read-via-stream")
def stdin_read_via_stream(cx: StoreState) -> tuple[Stream, Future]:
    return read_via_stream(cx, cx.wasi.stdin, error_code)


@stdout_iface.func("write-via-stream")
def stdout_write_via_stream(cx: StoreState, data: Stream) -> Future:
    return write_via_stream(cx, data, cx.wasi.shared_stdout(), error_code)


@stderr_iface.func("write-via-stream")
def stderr_write_via_stream(cx: StoreState, data: Stream) -> Future:
    return write_via_stream(cx, data, cx.wasi.shared_stderr(), error_code)


@terminal_stdin_iface.func("get-terminal-stdin")
def get_terminal_stdin(cx: StoreState) -> TerminalInput | None:
    return TerminalInput() if cx.wasi.stdin_is_terminal else None


@terminal_stdout_iface.func("get-terminal-stdout")
def get_terminal_stdout(cx: StoreState) -> TerminalOutput | None:
    return TerminalOutput() if cx.wasi.stdout_is_terminal else None


@terminal_stderr_iface.func("get-terminal-stderr")
def get_terminal_stderr(cx: StoreState) -> TerminalOutput | None:
    return TerminalOutput() if cx.wasi.stderr_is_terminal else None


INTERFACES = (
    types_iface, environment_iface, exit_iface, stdin_iface, stdout_iface, stderr_iface,
    terminal_input_iface, terminal_output_iface,
    terminal_stdin_iface, terminal_stdout_iface, terminal_stderr_iface,
)
