"""Declaring WIT interfaces in Python and wiring them into a wasmtime component Linker.

An ``Interface`` collects host functions under their canonical WIT names
(``[method]input-stream.read``) and the resource types they use. ``define(linker, ...)``
registers them with one native callback of our own instead of wasmtime-py's generic one, so
argument and result conversion uses the type-driven converters of ``abi.py`` (built once per
function) and a failure becomes a trap whose message names the function and the cause.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import struct
import types
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from typing import TYPE_CHECKING

from wasmtime import WasmtimeError
from wasmtime import _ffi as ffi

from . import callback_guard
from .records import ValueFields
from .resources import ResourceKind, drop_consumed_arguments
from .store import StoreState, state_for_context, state_for_context_or_none
from .values import Err, Trap, WitError

if TYPE_CHECKING:
    from wasmtime.component import Linker
    from wasmtime.component import _types as wt

    from . import abi
else:
    # The component runtime's value conversions and wasmtime-py's component types: loaded
    # by _component_api when that runtime is used (the core runtime needs neither, and
    # wasmtime.component is ~15 ms of every start).
    abi = wt = None


def _component_api() -> None:
    global abi, wt
    if abi is None:
        from wasmtime.component import _types as wt_module

        from . import abi as abi_module

        abi, wt = abi_module, wt_module

log = logging.getLogger("wasi_tls_host.runtime")

# Every resource kind any interface defines: converters resolve resource types against these.
ALL_KINDS: list[ResourceKind] = []

# The WIT signature of each host function, generated from real components built against wit/
# (tests/test_signatures.py checks it is current). Host functions are linked untyped, so
# without this the first component to import a function would decide its signature.
SIGNATURES_FILE = Path(__file__).with_name("signatures.json")
KNOWN_SIGNATURES: dict[str, str] = json.loads(SIGNATURES_FILE.read_text()) if SIGNATURES_FILE.exists() else {}

# Audit hooks: each is called as hook(function_name, value) with every value a host
# function returns to a guest, before it is lowered (tests use this to prove that no key
# material ever crosses into a guest). Empty in normal runs, so it costs one check per call.
OUTGOING_VALUE_HOOKS: list[Callable[[str, Any], None]] = []


def version_family(version: str) -> str:
    """The versions an import of ``version`` may be served by (semver compatibility):
    ``0.2.3`` -> ``0.2``, ``1.4.0`` -> ``1``; a prerelease (``0.3.0-rc-2026-03-15``,
    ``0.2.0-draft``) only by itself."""
    if "-" in version or "+" in version:
        return version
    parts = version.split(".")
    return parts[0] if parts[0] != "0" else ".".join(parts[:2])


def interface_key(name: str) -> str:
    """``wasi:io/streams@0.2.8`` -> ``wasi:io/streams@0.2``: what imports are matched by."""
    base, _, version = name.partition("@")
    return f"{base}@{version_family(version)}" if version else base


class GuestExit(Exception):
    """Raised by ``wasi:cli/exit``: unwinds the guest and records its exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def host_call_failure(qualname: str, e: Exception, record_exit: Callable[[int], None]) -> str:
    """The trap message for a host function ``qualname`` that raised ``e`` (either runtime):
    ``wasi:cli/exit`` records its code; a Trap or a failed call into the guest names the
    function; anything else is a host bug, logged with its traceback. Call it from the
    ``except`` block."""
    if isinstance(e, GuestExit):
        record_exit(e.code)
        return f"guest exited with code {e.code}"
    if isinstance(e, (Trap, WasmtimeError)):  # WasmtimeError: a call into the guest (realloc) trapped
        return f"{qualname}: {e}"
    if isinstance(e, struct.error):  # a bounded view of guest memory refused an access
        return f"{qualname}: out-of-bounds memory access ({e})"
    log.exception("host function %s failed", qualname)
    return f"{qualname}: host error: {type(e).__name__}: {e}"



def _positional_names(impl: Any) -> list[str] | None:
    """The positional parameters of a plain function or bound method, read from its code
    object (``inspect.signature`` costs ~50 us, paid for every host function a guest imports
    at each start); None for anything else (wrapped, partial, callable object)."""
    func, skip = (impl.__func__, 1) if isinstance(impl, types.MethodType) else (impl, 0)
    while isinstance(func, types.FunctionType) and hasattr(func, "__wrapped__") and not hasattr(func, "__signature__"):
        func = func.__wrapped__  # functools.wraps: the wrapped function's parameters, as inspect says
    if not isinstance(func, types.FunctionType) or hasattr(func, "__signature__"):
        return None
    code = func.__code__
    return list(code.co_varnames[skip:code.co_argcount])  # co_argcount counts positional-only ones too


CO_COROUTINE = 0x80  # inspect.CO_COROUTINE: the code flag of an ``async def`` function


def is_async_function(impl: Any) -> bool:
    """What Python 3.11's ``inspect.iscoroutinefunction(impl)`` says: an ``async def``
    function, or a bound method or ``functools.partial`` of one, told by its code's flags.
    Every host function is asked at import; ``inspect`` (with ``ast``, ``dis`` and
    ``tokenize``) is ~5 ms of a start that nothing else on a run's path needs."""
    while isinstance(impl, types.MethodType):
        impl = impl.__func__
    while isinstance(impl, functools.partial):
        impl = impl.func
    return isinstance(impl, types.FunctionType) and bool(impl.__code__.co_flags & CO_COROUTINE)


class HostFunc(ValueFields):
    """One host function of an interface: its implementation and how it crosses."""

    _fields = ("interface", "name", "impl", "lifts", "lower", "returns_result", "prepared", "signature", "keeps", "owned",
               "kept", "noted", "bytes_views", "fills", "is_async")

    def __init__(self, interface: str, name: str, impl: Callable[..., Any], lifts: list[abi.Lift] | None = None,
                 lower: abi.Lower | None = None, returns_result: bool = False, prepared: bool = False, signature: str = "",
                 keeps: tuple[str, ...] = (), owned: tuple[int, ...] = (), kept: frozenset[int] = frozenset(), noted: bool = False,
                 bytes_views: bool = False, fills: bool = False, is_async: bool = False) -> None:
        self.interface = interface
        self.name = name
        self.impl = impl
        self.lifts = lifts
        self.lower = lower
        self.returns_result = returns_result
        self.prepared = prepared
        # The WIT signature this host serves (from signatures.json, or the first importer's).
        self.signature = signature
        # Names of the own<T> parameters the function keeps (stores in what it returns); every
        # other consumed argument is dropped when the call returns (drop_consumed_arguments).
        self.keeps = keeps
        self.owned = owned  # indices of the own<T> parameters
        self.kept = kept  # indices of the kept ones
        self.noted = noted  # owned and kept are set (note_ownership)
        # The impl accepts a list<u8> argument as a memoryview of guest memory, valid only
        # during the call (the core runtime then skips a copy; the component runtime gives bytes).
        self.bytes_views = bytes_views
        # The impl accepts a ``fill=`` keyword (core runtime only): ``fill(k)`` allocates k bytes
        # in the guest and returns a view to write them into; the impl then returns
        # ``fill.done(count)`` in place of the ``list<u8>`` it would return.
        self.fills = fills
        # The impl is an ``async def`` (a WIT ``async func``, core runtime only): its coroutine
        # runs on the store's scheduler, and a guest calling it async gets a subtask.
        self.is_async = is_async

    @property
    def qualname(self) -> str:
        return f"{self.interface}#{self.name}"

    def prepare(self, fty: Any) -> None:
        """Build the converters from the function's type (once per host function).

        The signature is checked before anything is assigned: a host function is shared by
        every component and store, so a guest importing it with a foreign type must not
        leave its converters behind for the next caller."""
        _component_api()
        signature = abi.func_signature(fty)
        if self.signature and signature != self.signature:
            raise Trap(f"imported as {signature}, but this host serves it as {self.signature}")
        lifts = [abi.converters(t, ALL_KINDS)[0] for _, t in fty.params]
        result = fty.result
        lower = abi.converters(result, ALL_KINDS)[1] if result is not None else None
        self.note_ownership([(name, isinstance(t, wt.OwnType)) for name, t in fty.params])
        self.lifts, self.lower, self.returns_result = lifts, lower, isinstance(result, wt.ResultType)
        self.signature = signature
        self.prepared = True

    def note_ownership(self, params: list[tuple[str, bool]]) -> None:
        """Record which parameters (name, is own<T>) are consumed and which of those the
        function keeps; every runtime backend calls this once, then applies
        ``drop_consumed_arguments(args, self.owned, self.kept, succeeded)`` after each call."""
        # The names come from the implementation, not from the guest: parameter names are
        # no part of a signature, so an importer could rename them, and this host function
        # (shared by every component and store) must not take its ownership from that.
        names = self._param_names() or [name for name, _ in params]
        owned = tuple(i for i, (_, is_own) in enumerate(params) if is_own)
        kept = frozenset(i for i in owned if i < len(names) and names[i].replace("_", "-") in self.keeps)
        if len(kept) != len(self.keeps):
            raise Trap(f"declared to keep {self.keeps}, but its own<T> parameters are {[names[i] for i in owned if i < len(names)]}")
        if self.noted and (owned, kept) != (self.owned, self.kept):
            raise Trap(f"imported with own<T> parameters at {owned}, but this host serves them at {self.owned}")
        self.owned, self.kept, self.noted = owned, kept, True

    def _param_names(self) -> list[str]:
        """The WIT parameters' names as the implementation spells them (after the store)."""
        names = _positional_names(self.impl)
        if names is not None:
            return names[1:]
        import inspect  # what _positional_names cannot read (rare: inspect loads only for it)

        try:
            parameters = list(inspect.signature(self.impl).parameters.values())[1:]
        except (TypeError, ValueError):
            return []
        return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def check(self, fty: Any) -> str | None:
        """Why a guest's import of this function cannot be served, or None if it can."""
        _component_api()
        return self.check_signature(abi.func_signature(fty))

    def check_signature(self, signature: str) -> str | None:
        """``check`` for a signature already in text form (the core backend's types)."""
        if not self.signature:
            # Converters are built at the first call (resource types are bound then); until
            # then the first importer's signature is the one every later importer must use.
            self.signature = signature
            return None
        if signature != self.signature:
            return f"{self.qualname} is imported as {signature}, but this host implements {self.signature}"
        return None


class Interface(ValueFields):
    """A WIT interface implemented by the host, e.g. ``Interface("wasi:io/streams@0.2.8")``."""

    _fields = ("name", "funcs", "resources")

    def __init__(self, name: str, funcs: dict[str, HostFunc] | None = None, resources: dict[str, ResourceKind] | None = None) -> None:
        self.name = name
        self.funcs: dict[str, HostFunc] = {} if funcs is None else funcs
        self.resources: dict[str, ResourceKind] = {} if resources is None else resources

    def resource(self, wit_name: str, py_class: type) -> ResourceKind:
        kind = ResourceKind(f"{interface_key(self.name)}#{wit_name}", py_class)
        self.resources[wit_name] = kind
        ALL_KINDS.append(kind)
        return kind

    def func(self, wit_name: str, *, keeps: Iterable[str] = (), bytes_views: bool = False, fills: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@iface.func("[method]input-stream.read")``; the impl gets the
        ``StoreState`` first, then the WIT parameters as Python values. ``keeps`` names the
        ``own<T>`` parameters the function keeps when it succeeds; the others are dropped
        when it returns (``drop_consumed_arguments``). With ``bytes_views=True`` a
        ``list<u8>`` argument may arrive as a memoryview of guest memory that is released
        when the call returns (the impl must not keep it). With ``fills=True`` the core
        runtime passes ``fill=`` (see ``HostFunc.fills``)."""

        def register(impl: Callable[..., Any]) -> Callable[..., Any]:
            if wit_name in self.funcs:
                raise ValueError(f"{self.name}: {wit_name} defined twice")
            fn = HostFunc(interface_key(self.name), wit_name, impl, keeps=tuple(keeps), bytes_views=bytes_views, fills=fills,
                          is_async=is_async_function(impl))
            fn.signature = KNOWN_SIGNATURES.get(fn.qualname, "")
            self.funcs[wit_name] = fn
            return impl

        return register

    def share(self, other: Interface, *names: str) -> None:
        """Serve ``names`` with ``other``'s implementations: for another version of an
        interface whose functions did not change (their resources are this interface's)."""
        for name in names:
            fn = other.funcs[name]
            self.func(name, keeps=fn.keeps, bytes_views=fn.bytes_views, fills=fn.fills)(fn.impl)


# Native callbacks look their Python target up by index: wasmtime keeps only the index.
_FUNCS: dict[int, HostFunc] = {}
_DTORS: dict[int, ResourceKind] = {}
_next_index = 1


def _register(table: dict[int, Any], value: Any) -> int:
    global _next_index
    idx = _next_index
    _next_index += 1
    table[idx] = value
    return idx


def _error_ptr(message: str) -> int:
    err = WasmtimeError(message)
    return ctypes.cast(err._consume(), ctypes.c_void_p).value or 0


@ffi.wasmtime_component_func_callback_t  # type: ignore[misc]
def _call_host(idx: int, context: Any, ty_raw: Any, args: Any, nargs: int, results: Any, nresults: int) -> int:
    fn = _FUNCS[idx or 0]
    if nresults:
        # wasmtime drops the result slot even when we fail: keep it a valid value until the
        # lowering has completed.
        results[0].kind = abi.KIND_BOOL
        results[0].of.boolean = False
    try:
        cx = state_for_context(context)
        cx.context = context
        if not fn.prepared:
            fn.prepare(wt.FuncType._from_ptr(ty_raw, owner=fn))  # borrowed pointer: not freed
        lifts = fn.lifts
        assert lifts is not None
        if nargs != len(lifts):
            raise Trap(f"called with {nargs} arguments, the host expects {len(lifts)}")
        pyargs: list[Any] = []
        succeeded = False
        try:
            for i, lift in enumerate(lifts):
                pyargs.append(lift(cx, args[i]))
            returned = False
            try:
                result = fn.impl(cx, *pyargs)
                returned = True
            except WitError as e:
                if not fn.returns_result:
                    raise Trap(f"error {e.payload!r} from a function that returns no result") from e
                result = Err(e.payload)
            if OUTGOING_VALUE_HOOKS:
                for hook in OUTGOING_VALUE_HOOKS:
                    hook(fn.qualname, result)
            if fn.lower is not None:
                fn.lower(cx, result, results[0])
            # Kept arguments live on in the result only once the guest has it.
            succeeded = returned
        finally:
            if fn.owned:
                drop_consumed_arguments(pyargs, fn.owned, fn.kept, succeeded)
        return 0
    except Exception as e:
        return _error_ptr(host_call_failure(fn.qualname, e, lambda code: setattr(cx, "exit_code", code)))
    except BaseException as e:  # see callback_guard: raised again when wasm returns
        callback_guard.keep(e)
        return _error_ptr(f"interrupted: {type(e).__name__}")


@ffi.wasmtime_component_resource_destructor_t  # type: ignore[misc]
def _drop_resource(idx: int, context: Any, rep: int) -> int:
    kind = _DTORS[idx or 0]
    try:
        cx = state_for_context_or_none(context)
        if cx is not None:
            cx.table.drop(rep)
        return 0
    except Exception as e:
        log.exception("dropping %s failed", kind.name)
        return _error_ptr(f"dropping {kind.name}: {e}")
    except BaseException as e:  # see callback_guard
        callback_guard.keep(e)
        return _error_ptr(f"interrupted: {type(e).__name__}")


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _finalize(idx: int) -> None:
    # Linkers may outlive this module's globals at interpreter exit.
    if _FUNCS is not None:
        _FUNCS.pop(idx or 0, None)
    if _DTORS is not None:
        _DTORS.pop(idx or 0, None)


def _imported_host_funcs(component: Any, engine: Any, interfaces: Iterable[Interface]) -> Iterator[tuple[HostFunc, Any]]:
    """(host function, the function type the component imports it with), for each import."""
    _component_api()
    by_name = {interface_key(iface.name): iface for iface in interfaces}
    for import_name, extern in component.type.imports(engine).items():
        iface = by_name.get(interface_key(import_name))
        ty = extern.ty
        if iface is None or not isinstance(ty, wt.ComponentInstanceType):
            continue
        for item_name, item in ty.exports(engine).items():
            fn = iface.funcs.get(item_name)
            item_ty = item.ty
            if fn is not None and isinstance(item_ty, wt.FuncType):
                yield fn, item_ty


def check_imports(component: Any, engine: Any, interfaces: Iterable[Interface]) -> list[str]:
    """Problems with how ``component`` imports this host's functions (empty if none).

    Host functions are registered untyped, so wasmtime accepts any signature a component
    declares for them; this compares each imported function's type with the one the host
    serves (a hostile or mis-built guest otherwise gets its values refused at run time).
    """
    problems = []
    for fn, fty in _imported_host_funcs(component, engine, interfaces):
        problem = fn.check(fty)
        if problem:
            problems.append(problem)
    return problems


def collect_signatures(component: Any, engine: Any, interfaces: Iterable[Interface]) -> dict[str, str]:
    """Signatures of every host function ``component`` imports (to refresh signatures.json)."""
    return {fn.qualname: abi.func_signature(fty) for fn, fty in _imported_host_funcs(component, engine, interfaces)}


def define(linker: Linker, interfaces: Iterable[Interface]) -> None:
    """Add the interfaces' resources and functions to ``linker``."""
    _component_api()  # _call_host uses it
    with linker.root() as root:
        for iface in interfaces:
            with root.add_instance(iface.name) as inst:
                for res_name, kind in iface.resources.items():
                    idx = _register(_DTORS, kind)
                    name = res_name.encode()
                    err = ffi.wasmtime_component_linker_instance_add_resource(
                        inst.ptr(), ctypes.create_string_buffer(name), len(name),
                        kind.wasmtime_type.ptr(), _drop_resource, idx, _finalize,
                    )
                    if err:
                        raise WasmtimeError._from_ptr(err)
                for fn_name, fn in iface.funcs.items():
                    idx = _register(_FUNCS, fn)
                    name = fn_name.encode()
                    err = ffi.wasmtime_component_linker_instance_add_func(
                        inst.ptr(), ctypes.create_string_buffer(name), len(name),
                        _call_host, idx, _finalize,
                    )
                    if err:
                        raise WasmtimeError._from_ptr(err)


__all__ = ["ALL_KINDS", "OUTGOING_VALUE_HOOKS", "GuestExit", "HostFunc", "Interface", "StoreState", "check_imports", "collect_signatures", "define"]
