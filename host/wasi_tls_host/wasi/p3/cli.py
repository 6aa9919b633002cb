"""wasi:cli@0.3.0 (environment, exit, stdin/stdout/stderr as streams, terminal-*, types): a
thin surface over the same state WASI 0.2's ``wasi/cli.py`` serves, the store's ``WasiCtx``
(arguments, environment, its stdio engines and their configuration)."""

from __future__ import annotations

from ...runtime.binding import Interface
from ...runtime.store import StoreState
from ...runtime.streams import Future, Stream
from .. import cli as p2
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

terminal_input_iface.resource("terminal-input", p2.TerminalInput)
terminal_output_iface.resource("terminal-output", p2.TerminalOutput)


def error_code(e: Exception) -> str:
    """wasi:cli/types.error-code for a failed stdio engine: a sink that is closed (a broken
    pipe) is ``pipe``, anything else ``io`` (as wasmtime reports them)."""
    return "pipe" if isinstance(e, SinkClosed) else "io"


# What 0.3 does as 0.2 does is served by the same functions.
environment_iface.func("get-environment")(p2.get_environment)
environment_iface.func("get-arguments")(p2.get_arguments)
environment_iface.func("get-initial-cwd")(p2.initial_cwd)
exit_iface.func("exit")(p2.exit_)
exit_iface.func("exit-with-code")(p2.exit_with_code)
terminal_stdin_iface.func("get-terminal-stdin")(p2.get_terminal_stdin)
terminal_stdout_iface.func("get-terminal-stdout")(p2.get_terminal_stdout)
terminal_stderr_iface.func("get-terminal-stderr")(p2.get_terminal_stderr)


@stdin_iface.func("read-via-stream")
def stdin_read_via_stream(cx: StoreState) -> tuple[Stream, Future]:
    return read_via_stream(cx, cx.wasi.stdin, error_code)


@stdout_iface.func("write-via-stream")
def stdout_write_via_stream(cx: StoreState, data: Stream) -> Future:
    return write_via_stream(cx, data, cx.wasi.shared_stdout(), error_code)


@stderr_iface.func("write-via-stream")
def stderr_write_via_stream(cx: StoreState, data: Stream) -> Future:
    return write_via_stream(cx, data, cx.wasi.shared_stderr(), error_code)


INTERFACES = (
    types_iface, environment_iface, exit_iface, stdin_iface, stdout_iface, stderr_iface,
    terminal_input_iface, terminal_output_iface,
    terminal_stdin_iface, terminal_stdout_iface, terminal_stderr_iface,
)
