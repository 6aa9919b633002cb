"""``wasi-tls-host run GUEST [ARGS...]``: run a component (wasi:cli/run, or --invoke an export)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from typing import Iterator

from wasmtime import WasmtimeError

from ..host import DEFAULT_RUNTIME, RUNTIMES, GuestInstance, Host
from ..wasi.context import WasiConfig
from .invoke import format_value, parse_invoke
from . import options_identities, options_server, options_tls, provenance, startup
from .errors import UsageError, print_error, print_line
from .options import OPTION_GROUPS
from .serve import serve


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"--env wants KEY=VALUE, got {text!r}")
    return key, value if sep else os.environ.get(key, "")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    run = sub.add_parser("run", help="run a component (wasi:cli/run, or --invoke an export)")
    run.add_argument("guest", help="the component (.wasm)")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the guest")
    run.add_argument("--env", action="append", type=_env_pair, default=[], metavar="KEY=VALUE", help="set a guest environment variable (KEY alone copies the host's)")
    run.add_argument("--inherit-env", action="store_true", help="give the guest the host's whole environment")
    run.add_argument("--invoke", metavar="'name(args)'", help="call this export instead of wasi:cli/run and print its result")
    run.add_argument("--no-cache", action="store_true", help="do not read or write the compiled-component cache")
    run.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME, help="core: this host's own Canonical ABI on wasmtime's core API (fast); component: wasmtime's component API")
    for add_arguments, _ in OPTION_GROUPS:
        add_arguments(run)
    options_server.add_arguments(run)
    return run


def wasi_config(args: argparse.Namespace) -> WasiConfig:
    """The guest's configuration from the command line (raises UsageError)."""
    config = WasiConfig(args=[os.path.basename(args.guest), *args.args])
    config.stdin, config.stdout, config.stderr = "inherit", "inherit", "inherit"
    if args.inherit_env:
        config.inherit_env()
    config.env.update(dict(args.env))
    for _, apply in OPTION_GROUPS:
        apply(args, config)
    options_server.apply(args, config)
    provenance.apply_attestation(args, config)
    return config


SIGINT_REASON = "interrupted (SIGINT)"


@contextlib.contextmanager
def _sigint_stops(guest: GuestInstance) -> Iterator[None]:
    """While an export runs on this (main) thread, Ctrl-C stops it like an embedder's
    interrupt: at once in a wait, at the next epoch tick when computing. (A KeyboardInterrupt
    raised inside a host callback would be swallowed by ctypes.) ``wasi:cli/run`` guests run
    under serve.py, which handles signals itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: guest.interrupt(SIGINT_REASON))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def command(args: argparse.Namespace) -> int:
    held = startup.hold()  # what came during start-up (installed by main)
    if args.workers > 1 and startup.worker_number() is None:
        from .workers import Supervisor

        # Read once here: workers start from these bytes (and passphrases), kept across a
        # SIGHUP that fails to load a file.
        sources = options_identities.read_sources(args.identity)
        ticket_keys = options_tls.read_ticket_keys(args)
        startup.resume_collection()
        return Supervisor(args.workers, args.argv, args.allow_listen, sources, held, ticket_keys).run()
    config = wasi_config(args)
    try:
        host = Host(use_cache=not args.no_cache, runtime=args.runtime, policy=provenance.code_policy(args), trust_compiled=provenance.public_keys(args.trust_compiled))
    except ValueError as e:  # $WASI_TLS_HOST_CACHE_MAX_SIZE
        raise UsageError(str(e)) from None
    component = host.load(provenance.guest_source(args), precompiled=provenance.precompiled_artifact(args))
    if args.invoke:
        held.release()  # an export call is not operated by signals: they act as usual
        name, call_args = parse_invoke(args.invoke)
        config.args = [os.path.basename(args.guest)]
        with host.instantiate(component, config) as guest, _sigint_stops(guest):
            startup.resume_collection()  # started: what runs from here collects as usual
            try:
                value = guest.call(name, *call_args)
            except WasmtimeError:
                if guest.guard is not None and guest.guard.reason == SIGINT_REASON:
                    raise KeyboardInterrupt from None
                if guest.state.exit_code is not None:  # wasi:cli/exit: its status, as for run
                    return guest.state.exit_code
                raise
            print(format_value(value))
        return 0
    with host.instantiate(component, config) as guest:
        startup.resume_collection()
        result, decided = serve(host, guest, args.graceful_timeout, held)
    if decided is not None:
        return decided  # a signal ended it: the status says how (see cli/serve.py)
    assert result is not None  # only a signal keeps the guest from running
    if result.trap:
        detail = result.trap.strip() if args.verbose else result.trap_cause
        print_error(f"the guest trapped: {detail}")
        if not args.verbose:
            print_line("(run with -v to see the wasm backtrace)")
    elif result.error:
        print_error(str(result.error))
    return result.exit_code

