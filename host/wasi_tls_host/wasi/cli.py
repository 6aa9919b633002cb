"""wasi:cli (environment, exit, stdin/stdout/stderr, terminal-*)."""

from __future__ import annotations

from ..runtime.binding import GuestExit, Interface
from ..runtime.resources import HostResource
from ..runtime.store import StoreState
from ..runtime.values import Err
from .io import InputStream, OutputStream

environment_iface = Interface("wasi:cli/environment@0.2.8")
exit_iface = Interface("wasi:cli/exit@0.2.8")
stdin_iface = Interface("wasi:cli/stdin@0.2.8")
stdout_iface = Interface("wasi:cli/stdout@0.2.8")
stderr_iface = Interface("wasi:cli/stderr@0.2.8")
terminal_input_iface = Interface("wasi:cli/terminal-input@0.2.8")
terminal_output_iface = Interface("wasi:cli/terminal-output@0.2.8")
terminal_stdin_iface = Interface("wasi:cli/terminal-stdin@0.2.8")
terminal_stdout_iface = Interface("wasi:cli/terminal-stdout@0.2.8")
terminal_stderr_iface = Interface("wasi:cli/terminal-stderr@0.2.8")


class TerminalInput(HostResource):
    pass


class TerminalOutput(HostResource):
    pass


terminal_input_iface.resource("terminal-input", TerminalInput)
terminal_output_iface.resource("terminal-output", TerminalOutput)


@environment_iface.func("get-environment")
def get_environment(cx: StoreState) -> list[tuple[str, str]]:
    return cx.wasi.env


@environment_iface.func("get-arguments")
def get_arguments(cx: StoreState) -> list[str]:
    return cx.wasi.args


@environment_iface.func("initial-cwd")
def initial_cwd(cx: StoreState) -> str | None:
    return cx.wasi.cwd


@exit_iface.func("exit")
def exit_(cx: StoreState, status: object) -> None:
    raise GuestExit(1 if isinstance(status, Err) else 0)


@exit_iface.func("exit-with-code")
def exit_with_code(cx: StoreState, status_code: int) -> None:
    raise GuestExit(status_code)


@stdin_iface.func("get-stdin")
def get_stdin(cx: StoreState) -> InputStream:
    return cx.wasi.shared_stdin()


@stdout_iface.func("get-stdout")
def get_stdout(cx: StoreState) -> OutputStream:
    return cx.wasi.shared_stdout()


@stderr_iface.func("get-stderr")
def get_stderr(cx: StoreState) -> OutputStream:
    return cx.wasi.shared_stderr()


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
    environment_iface, exit_iface, stdin_iface, stdout_iface, stderr_iface,
    terminal_input_iface, terminal_output_iface,
    terminal_stdin_iface, terminal_stdout_iface, terminal_stderr_iface,
)
