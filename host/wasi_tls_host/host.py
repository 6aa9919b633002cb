"""The embedder's API: wire the host into a wasmtime Linker, give stores WASI state, run
guests. It follows wasmtime-py's habits (``Engine``, ``Linker``, ``Store``) and adds the
things an embedder of this host needs: a compiled-component cache, clean exit codes, and
``run_async`` for asyncio programs.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Union

from wasmtime import Engine, ExitTrap, Store, WasmtimeError

from .provenance import CodeEvidence, CodePolicy, ProvenanceError
from .runtime import binding
from .runtime.binding import Interface, version_family
from .runtime.cache import FROM_ENVIRONMENT, CacheSize, ComponentCache, resolve_max_size
from .runtime.engine import CONCURRENCY_OFF, engine_config
from .runtime.limits import EpochTicker, RunGuard, format_bytes
from .runtime.records import ValueFields
from .runtime.core.instance import BoundHost, ComponentInstance, CoreComponent, LinkError, bind
from .runtime.core.loader import CoreModuleCache
from .runtime.core.types import Malformed, Refused, Unsupported
from .runtime.store import StoreState, attach, detach, state_of
from .runtime.values import ConversionError, Err, Trap
from .wasi import interfaces as wasi_interfaces
from .wasi import sockets
from .wasi.context import WasiConfig, WasiCtx
from .wasi.p3.pumps import finish_output

log = logging.getLogger("wasi_tls_host")

# The backends a Host can run components on: "core" is this host's own Canonical ABI over
# wasmtime's core API (bytes move straight between linear memory and Python); "component"
# is wasmtime-py's component API (the reference; also the fallback for what "core" lacks).
RUNTIMES = ("core", "component")
DEFAULT_RUNTIME = "core"

if TYPE_CHECKING:
    # wasmtime's component API is the component runtime's: loaded when that runtime is used
    # (importing it is ~15 ms of every start on the core runtime).
    from wasmtime.component import Component, Instance, Linker

    from .runtime import exports

AnyComponent = Union["Component", CoreComponent]


def is_wasmtime_component(value: object) -> bool:
    """Whether ``value`` is a component compiled for the component runtime (none can exist
    before wasmtime.component is imported)."""
    module = sys.modules.get("wasmtime.component")
    return module is not None and isinstance(value, module.Component)


def _imports_only_0_2(component: CoreComponent) -> bool:
    return all(version_family(hi.interface.partition("@")[2]) == "0.2" for hi in component.plan.host_imports)


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


RUN_RETURNED_ERR = "the guest's wasi:cli/run returned an error"
ASYNC_ON_COMPONENT_RUNTIME = ("the component uses the Component Model's async ABI (WASI 0.3 guests do), which only "
                              "the core runtime runs; wasmtime-py's component runtime does not (--runtime core, the default)")


class RunResult(ValueFields):
    """How a run ended: the exit status, the trap's message if it trapped, else why it failed
    when it neither trapped nor chose its exit status (run returned err)."""

    _fields = ("exit_code", "trap", "error")

    def __init__(self, exit_code: int, trap: str | None = None, error: str | None = None) -> None:
        self.exit_code = exit_code
        self.trap = trap
        self.error = error

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
        self.closed = False
        self.ctx = set_wasi(self.store, config)
        self.limits = config.limits
        self.limits.apply_to_store(self.store)
        self.guard: RunGuard | None = None
        # Set before anything that may fail and close() this half-made instance.
        self._exports: dict[str, exports.ExportFunc] = {}
        self.core: ComponentInstance | None = None  # the core runtime's instance, or
        self.instance: Instance | None = None  # the component runtime's
        if host.ticker is not None:
            self.guard = RunGuard(config.limits.timeout, self.ctx.interrupt)
            self.guard.install(self.store)
            host.ticker.register(self.guard)
        self._attest(host, component, config)
        host._instances.add(self)
        try:
            if isinstance(component, CoreComponent):
                self.core = ComponentInstance(self.store, component, host.bind(component))
            else:
                self.instance = host.linker.instantiate(self.store, component)
        except (WasmtimeError, LinkError) as e:
            self.close()
            raise GuestError(self._describe_instantiation_error(str(e))) from None

    def _describe_instantiation_error(self, message: str) -> str:
        if "exceeds memory limits" in message and self.limits.max_memory is not None:
            return (f"the component needs more memory than its limit of {format_bytes(self.limits.max_memory)} "
                    f"(max_memory, --max-memory): {message.strip()}")
        if "exceeds table limits" in message and self.limits.max_table_elements is not None:
            return (f"the component needs larger tables than its limit of {self.limits.max_table_elements} elements "
                    f"(max_table_elements, --max-table-elements): {message.strip()}")
        return describe_link_error(message)

    def _attest(self, host: Host, component: AnyComponent, config: WasiConfig) -> None:
        """Give the instance its code-bound identity source if the embedder preopened an
        attestation CA (the certificate is issued on first use)."""
        ca = getattr(config.tls, "attest_ca", None)
        if ca is None:
            return
        evidence = host.evidence(component)
        if evidence is None:
            self.close()
            raise GuestError("an attested identity needs the component's bytes: load it with Host.load (or pass a path or bytes)")
        from .tls.attested import InstanceAttestation

        try:
            evidence.sha512  # taken now if the load left it for later: a file changed since is refused here
        except ProvenanceError as e:
            self.close()
            raise GuestError(str(e)) from None
        self.ctx.attestation = InstanceAttestation(ca, evidence, config)

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
                result = self.core.call_export(lifted, args)
            except TypeError as e:
                raise GuestError(f"calling {name}: {e}") from None
            except WasmtimeError:
                self._finish_output()  # what it wrote before it trapped or exited still goes out
                raise
            failure = self._finish_output()
            if failure is not None:
                raise WasmtimeError(failure)
            return result
        assert self.instance is not None
        from .runtime import exports

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
        from .runtime import exports

        assert is_wasmtime_component(self.component) and self.instance is not None
        run_iface = exports.find_export(self.component, self.host.engine, "wasi:cli/run@0.2.")
        if run_iface is None:
            raise GuestError("the component does not export wasi:cli/run (use --invoke for other components)")
        func = exports.get_func(self.store, self.instance, [run_iface, "run"])
        if func is None:
            raise GuestError(f"{run_iface} has no run function")
        return self._outcome(lambda: exports.call(self.store, func))

    def _run_core(self, core: ComponentInstance) -> RunResult:
        # A WASI 0.3 command's run is an async function: call_export runs its event loop.
        exported = core.component.plan.exports
        run_iface = next((n for prefix in ("wasi:cli/run@0.3.", "wasi:cli/run@0.2.") for n in exported if n.startswith(prefix)), None)
        if run_iface is None:
            raise GuestError("the component does not export wasi:cli/run (use --invoke for other components)")
        lifted = core.lookup_export([run_iface, "run"])
        if lifted is None:
            raise GuestError(f"{run_iface} has no run function")
        return self._outcome(lambda: core.call_export(lifted, ()))

    def _outcome(self, call_run: Callable[[], Any]) -> RunResult:
        """Call ``wasi:cli/run`` (either runtime) and turn its outcome into an exit code."""
        outcome = self._run_outcome(call_run)
        failure = self._finish_output()
        if failure is not None and outcome.trap is None:
            return RunResult(1, trap=failure)
        return outcome

    def _run_outcome(self, call_run: Callable[[], Any]) -> RunResult:
        try:
            result = call_run()
        except ExitTrap as e:
            return RunResult(e.code)
        except WasmtimeError as e:
            code = self.state.exit_code  # wasi:cli/exit unwinds the guest with a trap
            if code is not None:
                return RunResult(code)
            return RunResult(1, trap=str(e))
        return RunResult(1, error=RUN_RETURNED_ERR) if isinstance(result, Err) else RunResult(0)

    def _finish_output(self) -> str | None:
        """Write out what the guest gave its WASI 0.3 output streams before it returned or
        exited (the stream may still be open); the reason if the store's interrupt or
        timeout ended that first. Nothing if the guest was closed during the call (a host
        function may close it): its streams went with it, and the call's own trap says why."""
        if self.closed:
            return None
        try:
            finish_output(self.state)
        except Trap as e:
            return str(e)
        return None

    def interrupt(self, reason: str = "interrupted by the embedder") -> None:
        """Stop the guest from any thread: a wait it is in traps at once, and code that
        computes without waiting traps at its next epoch tick (engines built by ``Host``)."""
        if self.guard is not None:
            self.guard.stop(reason)
        else:
            self.ctx.interrupt(reason)

    # --- server operation (thread-safe; see cli/serve.py) -------------------------------
    def stop_accepting(self) -> None:
        """Graceful stop: the guest's listeners accept nothing more (its accept sees
        would-block); connections already accepted go on."""
        sockets.stop_accepting(self.ctx)

    def open_connections(self) -> int:
        return sockets.open_connections(self.ctx)

    def is_listening(self) -> bool:
        return sockets.is_listening(self.ctx)

    def close(self) -> None:
        self.closed = True
        self.host._instances.discard(self)  # a closed guest is not live (reload_identities)
        if self.guard is not None and self.host.ticker is not None:
            self.host.ticker.unregister(self.guard)
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
        cache_max_size: CacheSize = FROM_ENVIRONMENT,
        interfaces: Iterable[Interface] | None = None,
        policy: CodePolicy | None = None,
        trust_compiled: Iterable[Any] = (),
        engine_label: str | None = None,
        epoch_interruption: bool | None = None,
        runtime: str = DEFAULT_RUNTIME,
    ) -> None:
        """``cache_dir``: the compiled-component cache (default ``$WASI_TLS_HOST_CACHE`` or
        ``~/.cache/wasi-tls-host/components``); ``cache_max_size``: bytes it may hold, least
        recently used entries evicted past it (None: no limit; default
        ``$WASI_TLS_HOST_CACHE_MAX_SIZE`` or 1 GiB).
        ``epoch_interruption``: whether ``engine`` was built with
        ``Config.epoch_interruption`` (needed to stop guests that compute without waiting,
        and for ``GuestLimits.timeout`` to reach them). Default: True for the engine this
        class builds when none is given, False for an embedder's engine."""
        cache_max_size = resolve_max_size(cache_max_size)  # ValueError before anything starts
        if engine is None:
            epochs = epoch_interruption is not False
            engine = Engine(engine_config(epoch_interruption=epochs))
            concurrency_off = True
        else:
            epochs = bool(epoch_interruption)
            concurrency_off = False  # the embedder's engine: its settings are not known here
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        self.runtime = runtime
        self.engine = engine
        # Pins and signers every component must satisfy before it is compiled (load may
        # give another policy); what was established about each component, for attestation.
        self.policy = policy
        self._evidence: weakref.WeakKeyDictionary[AnyComponent, CodeEvidence] = weakref.WeakKeyDictionary()
        # Keys trusted to vouch for artifacts compiled elsewhere (provenance/precompiled.py);
        # engine_label names this engine's configuration in what they sign.
        self.trust_compiled = list(trust_compiled)
        self.engine_label = engine_label or ("epoch-interruption" if epochs else "default") + (f",{CONCURRENCY_OFF}" if concurrency_off else "")
        self.epoch_interruption = epochs
        self.ticker: EpochTicker | None = EpochTicker(self.engine) if epochs else None
        # This host's interfaces unless the embedder names them. Loaded as needed: the TLS
        # interfaces (pyOpenSSL, about 150 ms) only for a component that imports one, and the
        # component runtime's linker only for that runtime (see bind and linker).
        self._interfaces = None if interfaces is None else list(interfaces)
        self._linker: Linker | None = None
        self._linker_lock = threading.Lock()
        # Keyed by the component itself (weakly): an id() could be reused by a later one.
        self._checked: weakref.WeakKeyDictionary[Component, list[str]] = weakref.WeakKeyDictionary()
        # Epoch checks change the compiled code, and wasmtime refuses artifacts compiled
        # under another concurrency setting: artifacts of different settings must not mix.
        self.cache = ComponentCache(self.engine, cache_dir, enabled=use_cache,
                                    engine_tag="-".join(["epochs"] * epochs + [CONCURRENCY_OFF] * concurrency_off),
                                    max_size=cache_max_size)
        self.core_cache = CoreModuleCache(self.cache)
        self._bound: weakref.WeakKeyDictionary[CoreComponent, BoundHost] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._instances: weakref.WeakSet[GuestInstance] = weakref.WeakSet()
        self.sources_remembered = 0  # loads that took a file's digest from the cache, unread
        self.closed = False

    @property
    def interfaces(self) -> list[Interface]:
        """Every interface this host serves (loads the TLS ones if they are not yet)."""
        if self._interfaces is None:
            self._interfaces = all_interfaces()
        return self._interfaces

    @property
    def linker(self) -> Linker:
        """wasmtime's component linker with this host's interfaces (the component runtime)."""
        with self._linker_lock:
            if self._linker is None:
                from wasmtime.component import Linker

                linker = Linker(self.engine)
                add_to_linker(linker, self.interfaces)
                self._linker = linker
            return self._linker

    def close(self) -> None:
        """Release the compiled components this host keeps (each cached artifact stays
        mapped, its file descriptor open, until then). Guests already instantiated run on;
        loading or instantiating afterwards raises GuestError."""
        with self._lock:
            self.closed = True
            self.core_cache.close()
            self.cache.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> None:
        if self.closed:
            raise GuestError("this Host is closed: create a new one to load or instantiate components")

    def reload_identities(self) -> list[str]:
        """Certificate rotation for every live guest of this host: identities loaded from
        files are read again (``TlsConfig.reload_identities``); one line per identity."""
        configs = {id(c): c for g in list(self._instances) if (c := g.ctx.tls) is not None}
        return [line for config in configs.values() for line in config.reload_identities()]

    def load(self, source: str | Path | bytes, policy: CodePolicy | None = None, precompiled: tuple[bytes, bytes] | None = None) -> AnyComponent:
        """Read and compile a component (or take it from the cache).

        ``policy`` (default: the host's) is checked on the bytes before anything else: a
        component that is not pinned or not signed as required raises ProvenanceError
        (DigestMismatch, SignatureError) and is never compiled.
        ``precompiled`` is (artifact, signature file) made elsewhere: used only if a key in
        ``trust_compiled`` vouches for it for this component, wasmtime, engine and platform;
        otherwise the component is compiled here.
        """
        path: Path | None = None
        identity: os.stat_result | None = None  # of the file, taken before its bytes were read
        policy = policy or self.policy
        if isinstance(source, (str, Path)):
            path = Path(source)
            if policy is None and precompiled is None:
                known = self._load_known(path)
                if known is not None:
                    return known
            try:
                with open(path, "rb") as f:
                    identity = os.fstat(f.fileno())
                    wasm = f.read()
            except FileNotFoundError:
                raise GuestError(f"{path}: no such file") from None
            except OSError as e:
                raise GuestError(f"{path}: {e.strerror}") from None
        else:
            wasm = bytes(source)
        evidence = policy.check(wasm, path) if policy is not None else CodeEvidence.of(wasm, path=path)
        if wasm[:4] != b"\0asm":
            raise GuestError("not a WebAssembly binary (no \\0asm header)")
        if wasm[4:8] == b"\x01\0\0\0":
            raise GuestError(
                "this is a core WebAssembly module, not a component; turn it into one with "
                "`wasm-tools component new MODULE.wasm --adapt wasi_snapshot_preview1=ADAPTER.wasm`"
            )
        sha256_hex = evidence.digest.removeprefix("sha256:")  # hashed once for evidence and caches
        with self._lock:
            self._require_open()
            # An artifact compiled elsewhere is a component-runtime artifact: it runs there.
            component: AnyComponent | None = self._load_precompiled(evidence.digest, precompiled) if precompiled else None
            if component is None and self.runtime == "core":
                try:
                    component = self.core_cache.load(wasm, sha256_hex)
                except Refused as e:
                    raise GuestError(f"this host cannot run the component: it uses {e}") from None
                except Unsupported as e:
                    log.info("the core runtime does not support %s: running this component on the component runtime", e)
                except (Malformed, WasmtimeError) as e:
                    raise GuestError(f"invalid component: {e}") from None
            try:
                component = component or self.cache.load(wasm, sha256_hex)
            except WasmtimeError as e:
                if "component model async" in str(e):
                    raise GuestError(ASYNC_ON_COMPONENT_RUNTIME) from None
                raise GuestError(f"invalid component: {e}") from None
            self._evidence[component] = evidence
        if identity is not None and self.cache.enabled:
            self.cache.auth.remember_digest(identity, sha256_hex)
        return component

    def _load_known(self, path: Path) -> CoreComponent | None:
        """The component in ``path`` without reading it: when the file's identity has a
        remembered digest (runtime/artifact_auth.py) whose compiled modules are in the cache.
        (Reading and hashing an 18 MB guest was a sixth of a cached start.)"""
        if self.runtime != "core" or not self.cache.enabled:
            return None
        try:
            identity = os.stat(path)
        except OSError:
            return None  # the full path below says why
        sha256_hex = self.cache.auth.remembered_digest(identity)
        if sha256_hex is None:
            return None
        with self._lock:
            self._require_open()
            try:
                component = self.core_cache.load_cached(sha256_hex)
            except (Malformed, WasmtimeError):
                return None
            if component is not None:
                self.sources_remembered += 1
                self._evidence[component] = CodeEvidence("sha256:" + sha256_hex, None, (), path)
        return component

    def _load_precompiled(self, component_digest: str, precompiled: tuple[bytes, bytes]) -> Component | None:
        from wasmtime.component import Component

        from .provenance import precompiled as pre
        from .runtime.cache import WASMTIME_VERSION

        artifact, signature = precompiled
        try:
            pre.verify_artifact(component_digest, artifact, signature, pre.Target(WASMTIME_VERSION, self.engine_label), self.trust_compiled)
            return Component.deserialize(self.engine, artifact)
        except (pre.ArtifactRefused, WasmtimeError) as e:
            log.warning("not using the pre-compiled artifact, compiling here: %s", e)
            return None

    def evidence(self, component: AnyComponent) -> CodeEvidence | None:
        """What the last ``load`` of this component established (digests, signers)."""
        return self._evidence.get(component)

    def instantiate(self, component: AnyComponent | str | Path | bytes, config: WasiConfig | None = None) -> GuestInstance:
        self._require_open()
        if not (isinstance(component, CoreComponent) or is_wasmtime_component(component)):
            component = self.load(component)
        self.check(component)
        return GuestInstance(self, component, config or WasiConfig())

    def bind(self, component: CoreComponent) -> BoundHost:
        """The host functions a core-backend component's imports resolve to (cached)."""
        bound = self._bound.get(component)
        if bound is None:
            if self._interfaces is None:
                # WASI's interfaces first: a component that imports nothing else binds
                # without loading the TLS ones (their names are disjoint, so the result is
                # the same as against all of them), and one importing only WASI 0.2 without
                # the 0.3 surfaces. Something missing is looked for (and reported) in all.
                bound = bind(component, wasi_interfaces(wasi_0_3=not _imports_only_0_2(component)))
                if bound.missing:
                    bound = bind(component, self.interfaces)
            else:
                bound = bind(component, self._interfaces)
            self._bound[component] = bound
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
                from .runtime import exports

                # wasmtime-py compiles async components, but its linker cannot serve them.
                asynchronous = exports.async_function(component, self.engine)
                problems = ([f"{ASYNC_ON_COMPONENT_RUNTIME} ({asynchronous} is async)"] if asynchronous
                            else binding.check_imports(component, self.engine, self.interfaces))
                self._checked[component] = problems
            if problems and problems[0].startswith(ASYNC_ON_COMPONENT_RUNTIME):
                raise GuestError(problems[0])
        if problems:
            raise GuestError(f"the component's imports do not match this host: {problems[0]}"
                             + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))

    def run(self, component: AnyComponent | str | Path | bytes, config: WasiConfig | None = None) -> RunResult:
        with self.instantiate(component, config) as guest:
            return guest.run()

    async def run_async(self, component: AnyComponent | str | Path | bytes, config: WasiConfig | None = None) -> RunResult:
        """Run a command guest on a worker thread. Cancelling the task stops the guest (see
        ``GuestInstance.interrupt``: at once in a wait, within an epoch tick when computing)
        and closes its store once the worker has unwound."""
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
    if "Caused by:" in message:  # a start function trapped: its cause is the line to act on
        return f"could not instantiate the component: {first.rstrip(':')} trapped: {trap_cause(message)}"
    return f"could not instantiate the component: {first}"
