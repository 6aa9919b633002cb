"""The embedder's API: wire the host into a wasmtime Linker, give stores WASI state, run
guests. It follows wasmtime-py's habits (``Engine``, ``Linker``, ``Store``) and adds the
things an embedder of this host needs: a compiled-component cache, clean exit codes, and
``run_async`` for asyncio programs.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from wasmtime import Engine, ExitTrap, Store, WasmtimeError
from wasmtime.component import Component, Instance, Linker

from .runtime import binding, exports
from .runtime.binding import Interface
from .runtime.cache import ComponentCache
from .runtime.core.instance import BoundHost, ComponentInstance, CoreComponent, LinkError, bind
from .runtime.core.loader import CoreModuleCache
from .runtime.core.types import Malformed, Unsupported
from .runtime.store import StoreState, attach, detach, state_of
from .runtime.abi import ConversionError
from .runtime.values import Err
from .wasi import interfaces as wasi_interfaces
from .wasi.context import WasiConfig, WasiCtx

log = logging.getLogger("wasi_tls_host")

# The backends a Host can run components on: "core" is this host's own Canonical ABI over
# wasmtime's core API (bytes move straight between linear memory and Python); "component"
# is wasmtime-py's component API (the reference; also the fallback for what "core" lacks).
RUNTIMES = ("core", "component")
DEFAULT_RUNTIME = "core"

AnyComponent = Component | CoreComponent


def all_interfaces() -> list[Interface]:
    from .tls import interfaces as tls_interfaces

    return [*wasi_interfaces(), *tls_interfaces()]


def add_to_linker(linker: Linker, interfaces: Iterable[Interface] | None = None) -> None:
    """Define this host's WASI (and TLS) interfaces in ``linker`` (like ``add_wasip2``)."""
    binding.define(linker, all_interfaces() if interfaces is None else interfaces)


def set_wasi(store: Store, config: WasiConfig) -> WasiCtx:
    """Give ``store`` a WASI context built from ``config`` (like ``Store.set_wasi``)."""
    ctx = WasiCtx(config)
    attach(store, ctx)
    return ctx


class GuestError(Exception):
    """A guest could not be loaded, linked or run; the message is meant for people."""


@dataclass
class RunResult:
    exit_code: int
    trap: str | None = None

    @property
    def trap_cause(self) -> str | None:
        """The trap's cause without the wasm backtrace (the line a person acts on)."""
        return trap_cause(self.trap) if self.trap else None


def trap_cause(message: str) -> str:
    _, sep, cause = message.rpartition("Caused by:")
    return " ".join(line.strip() for line in cause.strip().splitlines()) if sep else message.strip()


class GuestInstance:
    """One instantiated component in its own store."""

    def __init__(self, host: Host, component: AnyComponent, config: WasiConfig) -> None:
        self.host = host
        self.component = component
        self.store = Store(host.engine)
        self.ctx = set_wasi(self.store, config)
        self._exports: dict[str, exports.ExportFunc] = {}
        self.core: ComponentInstance | None = None  # the core runtime's instance, or
        self.instance: Instance | None = None  # the component runtime's
        try:
            if isinstance(component, CoreComponent):
                self.core = ComponentInstance(self.store, component, host.bind(component))
            else:
                self.instance = host.linker.instantiate(self.store, component)
        except (WasmtimeError, LinkError) as e:
            self.close()
            raise GuestError(describe_link_error(str(e))) from None

    @property
    def runtime(self) -> str:
        return "core" if self.core is not None else "component"

    @property
    def state(self) -> StoreState:
        return state_of(self.store)

    def call(self, name: str, *args: Any) -> Any:
        """Call an export by name; ``a#b`` reaches function ``b`` inside instance ``a``."""
        if self.core is not None:
            lifted = self.core.lookup_export(name.split("#"))
            if lifted is None:
                raise GuestError(f"the component has no export named {name!r}")
            try:
                return self.core.call_export(lifted, args)
            except TypeError as e:
                raise GuestError(f"calling {name}: {e}") from None
        assert self.instance is not None
        export = self._exports.get(name)
        if export is None:
            path = name.split("#") if "#" in name else [name]
            func = exports.get_func(self.store, self.instance, path)
            if func is None:
                raise GuestError(f"the component has no export named {name!r}")
            export = self._exports[name] = exports.ExportFunc(self.store, func)
        try:
            return export(self.store, *args)
        except (TypeError, ConversionError) as e:
            raise GuestError(f"calling {name}: {e}") from None

    def run(self) -> RunResult:
        """Call ``wasi:cli/run`` and turn its outcome into an exit code."""
        if self.core is not None:
            return self._run_core(self.core)
        assert isinstance(self.component, Component) and self.instance is not None
        run_iface = exports.find_export(self.component, self.host.engine, "wasi:cli/run@0.2.")
        if run_iface is None:
            raise GuestError("the component does not export wasi:cli/run (use --invoke for other components)")
        func = exports.get_func(self.store, self.instance, [run_iface, "run"])
        if func is None:
            raise GuestError(f"{run_iface} has no run function")
        try:
            result = exports.call(self.store, func)
        except ExitTrap as e:
            return RunResult(e.code)
        except WasmtimeError as e:
            code = self.state.exit_code
            if code is not None:
                return RunResult(code)
            return RunResult(1, trap=str(e))
        return RunResult(1 if isinstance(result, Err) else 0)

    def _run_core(self, core: ComponentInstance) -> RunResult:
        run_iface = next((n for n in core.component.plan.exports if n.startswith("wasi:cli/run@0.2.")), None)
        if run_iface is None:
            raise GuestError("the component does not export wasi:cli/run (use --invoke for other components)")
        lifted = core.lookup_export([run_iface, "run"])
        if lifted is None:
            raise GuestError(f"{run_iface} has no run function")
        try:
            result = core.call_export(lifted, ())
        except WasmtimeError as e:
            code = self.state.exit_code
            if code is not None:
                return RunResult(code)
            return RunResult(1, trap=str(e))
        return RunResult(1 if isinstance(result, Err) else 0)

    def interrupt(self, reason: str = "interrupted by the embedder") -> None:
        self.ctx.interrupt(reason)

    def close(self) -> None:
        if self.core is not None:
            self.core.close()
        detach(self.store)

    def __enter__(self) -> GuestInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Host:
    """An engine, a linker with every interface of this host, and a component cache."""

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        cache_dir: Path | None = None,
        use_cache: bool = True,
        interfaces: Iterable[Interface] | None = None,
        runtime: str = DEFAULT_RUNTIME,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        self.runtime = runtime
        self.engine = engine or Engine()
        self.linker = Linker(self.engine)
        self.interfaces = all_interfaces() if interfaces is None else list(interfaces)
        add_to_linker(self.linker, self.interfaces)
        # Keyed by the component itself (weakly): an id() could be reused by a later one.
        self._checked: weakref.WeakKeyDictionary[Component, list[str]] = weakref.WeakKeyDictionary()
        self.cache = ComponentCache(self.engine, cache_dir, enabled=use_cache)
        self.core_cache = CoreModuleCache(self.cache)
        self._bound: weakref.WeakKeyDictionary[CoreComponent, BoundHost] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def load(self, source: str | Path | bytes) -> AnyComponent:
        if isinstance(source, (str, Path)):
            path = Path(source)
            try:
                wasm = path.read_bytes()
            except FileNotFoundError:
                raise GuestError(f"{path}: no such file") from None
            except OSError as e:
                raise GuestError(f"{path}: {e.strerror}") from None
        else:
            wasm = bytes(source)
        if wasm[:4] != b"\0asm":
            raise GuestError("not a WebAssembly binary (no \\0asm header)")
        if wasm[4:8] == b"\x01\0\0\0":
            raise GuestError(
                "this is a core WebAssembly module, not a component; turn it into one with "
                "`wasm-tools component new MODULE.wasm --adapt wasi_snapshot_preview1=ADAPTER.wasm`"
            )
        with self._lock:
            if self.runtime == "core":
                try:
                    return self.core_cache.load(wasm)
                except Unsupported as e:
                    log.info("the core runtime does not support %s: running this component on the component runtime", e)
                except Malformed as e:
                    raise GuestError(f"invalid component: {e}") from None
                except WasmtimeError as e:
                    raise GuestError(f"invalid component: {e}") from None
            try:
                return self.cache.load(wasm)
            except WasmtimeError as e:
                raise GuestError(f"invalid component: {e}") from None

    def instantiate(self, component: AnyComponent | str | Path | bytes, config: WasiConfig | None = None) -> GuestInstance:
        if not isinstance(component, (Component, CoreComponent)):
            component = self.load(component)
        self.check(component)
        return GuestInstance(self, component, config or WasiConfig())

    def bind(self, component: CoreComponent) -> BoundHost:
        """The host functions a core-backend component's imports resolve to (cached)."""
        bound = self._bound.get(component)
        if bound is None:
            bound = self._bound[component] = bind(component, self.interfaces)
        return bound

    def check(self, component: AnyComponent) -> None:
        """Refuse a component that imports a host function with another signature."""
        if isinstance(component, CoreComponent):
            bound = self.bind(component)
            if bound.missing:
                raise GuestError(f"the component needs an import this host does not provide: {bound.missing[0]}")
            problems = bound.problems
        else:
            problems = self._checked.get(component)
            if problems is None:
                problems = binding.check_imports(component, self.engine, self.interfaces)
                self._checked[component] = problems
        if problems:
            raise GuestError(f"the component's imports do not match this host: {problems[0]}"
                             + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))

    def run(self, component: AnyComponent | str | Path | bytes, config: WasiConfig | None = None) -> RunResult:
        with self.instantiate(component, config) as guest:
            return guest.run()

    async def run_async(self, component: AnyComponent | str | Path | bytes, config: WasiConfig | None = None) -> RunResult:
        """Run a command guest on a worker thread. Cancelling the task interrupts the guest at
        its next wait (a guest computing without waiting stops at its next wait) and closes
        its store once the worker has unwound."""
        import asyncio  # here, not at the top: it costs the CLI ~50 ms of start-up

        guest = await asyncio.to_thread(self.instantiate, component, config)
        worker = asyncio.ensure_future(asyncio.to_thread(guest.run))
        try:
            return await asyncio.shield(worker)
        except asyncio.CancelledError:
            guest.interrupt("cancelled by the embedder")
            worker.add_done_callback(lambda _: guest.close())
            raise
        finally:
            if worker.done():
                guest.close()


def describe_link_error(message: str) -> str:
    """Turn wasmtime's instantiation errors into one actionable line."""
    first = message.strip().splitlines()[0] if message.strip() else message
    if "matching implementation was not found" in message or "was not found" in message:
        return f"the component needs an import this host does not provide: {first}"
    return f"could not instantiate the component: {first}"
