"""Running a planned component on wasmtime's core API.

``CoreComponent`` is a component taken apart (``plan.make_plan``) with its core modules
compiled. ``ComponentInstance`` performs the plan's steps in one ``wasmtime.Store``:
it creates a native trampoline for each lowered host function (``canon lower``: lift the
arguments straight out of the guest's flat values and linear memory, call the Python impl,
lower the result straight into memory through the guest's ``realloc``), instantiates the
core modules with raw C entry points, and calls lifted exports (``canon lift``) with
post-return. It keeps the component instance's handle table (own/borrow, lending, guest
resources and their destructors).

Host functions are the same ``binding.HostFunc`` impls as on the component backend, called
as ``impl(cx, *args)`` with the same Python values.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import logging
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from wasmtime import FuncType, Module, Store, ValType as CoreValType, WasmtimeError
from wasmtime import _bindings as raw
from wasmtime import _ffi as ffi

from ..binding import OUTGOING_VALUE_HOOKS, GuestExit, HostFunc, Interface, host_call_failure, interface_key, version_family
from ..resources import ResourceKind, drop_consumed_arguments
from ..scheduler import Cancelled, HostTask, Scheduler
from ..store import StoreState, state_of
from ..streams import UNSET, Future, Stream
from ..values import Err, Trap, WitError
from . import builtins, canon
from .concurrent import (
    BLOCKED, CallbackCode, CopyEnd, CopyState, ErrorContext, EventCode, ReadableFutureEnd, ReadableStreamEnd,
    Subtask, Task, Waitable, WaitableSet,
)
from .plan import Bag, Builtin, CoreExport, HostImport, Lifted, Lowered, Opts, Plan, ResourceBuiltin
from .types import (
    MAX_FLAT_PARAMS, DefinedResource, ErrorContextT, FuncT, FutureT, Handle, ImportedResource, ListT, Prim,
    ResourceT, StreamT, Tuple, align_to, same_type,
)

log = logging.getLogger("wasi_tls_host.runtime")

_CORE_TYPES = {"i32": CoreValType.i32, "i64": CoreValType.i64, "f32": CoreValType.f32, "f64": CoreValType.f64}
_ERR_P = ctypes.POINTER(ffi.wasmtime_error_t)
_TRAP_P = ctypes.POINTER(ffi.wasm_trap_t)
_EXTERN_FUNC = int(getattr(ffi.WASMTIME_EXTERN_FUNC, "value", ffi.WASMTIME_EXTERN_FUNC))
_EXTERN_MEMORY = int(getattr(ffi.WASMTIME_EXTERN_MEMORY, "value", ffi.WASMTIME_EXTERN_MEMORY))

# Raw C entry points (the wasmtime._bindings wrappers add a Python frame per call).
_func_call = raw._wasmtime_func_call_unchecked
_func_new = raw._wasmtime_func_new_unchecked
# Our own prototype of wasmtime_memory_data returning the address as an int (indexing the
# dll makes a new function object, so wasmtime-py's own prototype is left alone).
_mem_data = raw.dll["wasmtime_memory_data"]
_mem_data.restype = ctypes.c_void_p
_mem_data.argtypes = raw._wasmtime_memory_data.argtypes
_mem_size = raw._wasmtime_memory_data_size
_trap_new = raw._wasmtime_trap_new
_instance_new = raw._wasmtime_instance_new
_export_get = raw._wasmtime_instance_export_get


class LinkError(Exception):
    """The component cannot be linked against this host (missing import, bad signature)."""


def core_functype(params: list[str], results: list[str]) -> FuncType:
    return FuncType([_CORE_TYPES[p]() for p in params], [_CORE_TYPES[r]() for r in results])


@dataclass(eq=False)
class CoreComponent:
    """A component ready to instantiate on the core backend."""

    plan: Plan
    modules: list[Module]
    module_imports: list[list[tuple[str, str]]]
    digest: str
    functypes: dict[tuple[tuple[str, ...], tuple[str, ...]], FuncType] = field(default_factory=dict)


class BoundHost:
    """The host functions and resource kinds a component's imports resolve to."""

    def __init__(self, funcs: dict[int, HostFunc], problems: list[str], missing: list[str]) -> None:
        self.funcs = funcs
        self.specs: dict[int, LowerSpec] = {}
        self.problems = problems
        self.missing = missing


def bind(component: CoreComponent, interfaces: Iterable[Interface]) -> BoundHost:
    """Resolve imports to host functions; binds the plan's imported resources to kinds.

    An import matches a host interface of the same package and name whose version is in
    the same family (``0.2.3`` and ``0.2.8``; ``0.3.0``; a prerelease only itself), so a
    WASI 0.3 import never lands on the 0.2 implementation of the same name."""
    ifaces = list(interfaces)
    by_name = {interface_key(iface.name): iface for iface in ifaces}
    funcs: dict[int, HostFunc] = {}
    problems: list[str] = []
    missing: list[str] = []
    for res in component.plan.imported_resources:
        iface = by_name.get(interface_key(res.interface))
        kind = iface.resources.get(res.name) if iface is not None else None
        if kind is None:
            missing.append(f"resource {res.name} of {res.interface or 'the root'}" + _missing_version(res.interface, ifaces))
        res.kind = kind
    for hi in component.plan.host_imports:
        iface = by_name.get(interface_key(hi.interface))
        fn = iface.funcs.get(hi.name) if iface is not None else None
        if fn is None:
            missing.append((f"{hi.interface}#{hi.name}" if hi.interface else hi.name) + _missing_version(hi.interface, ifaces))
            continue
        problem = fn.check_signature(hi.type.signature())
        if problem:
            problems.append(problem)
            continue
        try:
            fn.note_ownership([(name, isinstance(t, Handle) and t.own) for name, t in hi.type.params])
        except Trap as e:
            problems.append(f"{fn.qualname}: {e}")
            continue
        funcs[id(hi)] = fn
    return BoundHost(funcs, problems, missing)


def _missing_version(name: str, interfaces: list[Interface]) -> str:
    """Why an import found no host interface, when the host has its name in another version."""
    base, _, version = name.partition("@")
    if not version:
        return ""
    have = sorted({iface.name.partition("@")[2] for iface in interfaces if iface.name.partition("@")[0] == base})
    if not have:
        package = base.split("/")[0]
        have_pkg = sorted({iface.name.partition("@")[2] for iface in interfaces if iface.name.split("/")[0] == package})
        if not have_pkg:
            return ""
        return f" (this host provides {package}@{', '.join(_family_text(v) for v in have_pkg)}; the component imports {name})"
    if "-" in version:
        return (f" (a release candidate or draft version: this host provides {base}@{', '.join(have)}, "
                f"and a prerelease matches only itself)")
    return f" (this host provides {base.split('/')[0]}@{', '.join(_family_text(v) for v in have)}; the component imports {name})"


def _family_text(version: str) -> str:
    family = version_family(version)
    return family if "-" in version else family + ".x"


# --- native entry points -----------------------------------------------------------------

# Weak: each instance holds its own trampolines (``_tramps``), so one its embedder never
# closed can still be collected, store and all, instead of living on through this table.
_TRAMPOLINES: weakref.WeakValueDictionary[int, Callable[[Any], int]] = weakref.WeakValueDictionary()
# Trampoline ids: itertools.count is atomic under the GIL (instances are created on worker
# threads by run_async), and an id is never reused, so a stale callback finds nothing.
_env_ids = itertools.count(1)


def _trap_ptr(message: str) -> int:
    data = message.encode("utf-8", "replace")
    return ctypes.cast(_trap_new(data, len(data)), ctypes.c_void_p).value or 0


@ffi.wasmtime_func_unchecked_callback_t  # type: ignore[misc]
def _host_entry(env: Any, caller: Any, args: Any, nargs: int) -> int:
    tramp = _TRAMPOLINES.get(env or 0)
    if tramp is None:
        return _trap_ptr("host function called after its instance was closed")
    try:
        return tramp(args)
    except Exception as e:  # a bug in a built-in (resource.new/rep/drop): never unwind into wasm
        log.exception("core runtime built-in failed")
        return _trap_ptr(f"host error: {type(e).__name__}: {e}")


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _forget_trampoline(env: Any) -> None:
    if _TRAMPOLINES is not None:
        _TRAMPOLINES.pop(env or 0, None)


def _w32(slot: Any, x: Any) -> None:
    slot.i32 = x


def _w64(slot: Any, x: Any) -> None:
    slot.i64 = x


def _wf32(slot: Any, x: Any) -> None:
    slot.f32 = x


def _wf64(slot: Any, x: Any) -> None:
    slot.f64 = x


# One reader and one writer per core value type, built once (call_core uses them per call).
_READERS: dict[str, Callable[[Any], Any]] = {
    "i32": lambda v: v.i32 & 0xFFFF_FFFF,
    "i64": lambda v: v.i64 & 0xFFFF_FFFF_FFFF_FFFF,
    "f32": lambda v: v.f32,
    "f64": lambda v: v.f64,
}
_WRITERS: dict[str, Callable[[Any, Any], None]] = {"i32": _w32, "i64": _w64, "f32": _wf32, "f64": _wf64}


# ctypes array types of raw values by length, made once (making one per call is slow).
_RAW_ARRAYS = [ffi.wasmtime_val_raw_t * n for n in range(17)]


def _readers(flat: list[str]) -> list[Callable[[Any], Any]]:
    return [_READERS.get(t, _READERS["f64"]) for t in flat]


def _writer(t: str) -> Callable[[Any, Any], None]:
    return _WRITERS.get(t, _wf64)


def _writers(flat: list[str]) -> list[Callable[[Any, Any], None]]:
    return [_writer(t) for t in flat]


_I32x1_WRITERS, _I32x3_WRITERS, _I32_READERS = _writers(["i32"]), _writers(["i32"] * 3), _readers(["i32"])


class _HandleEntry:
    """A resource handle in a component instance's table (the spec's ``ResourceHandle``)."""

    __slots__ = ("key", "rep", "own", "lends", "scope")
    what = "resource handle"

    def __init__(self, key: Any, rep: int, own: bool, scope: Any = None) -> None:
        self.key = key
        self.rep = rep
        self.own = own
        self.lends = 0
        self.scope = scope


def _key(rt: ResourceT) -> Any:
    return rt.kind if isinstance(rt, ImportedResource) else rt


def _rname(rt: ResourceT) -> str:
    if isinstance(rt, ImportedResource):
        return rt.kind.name if rt.kind is not None else rt.name
    return "guest resource"


class _BorrowScope:
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class ComponentInstance:
    """One instantiated component in one store."""

    def __init__(self, store: Store, component: CoreComponent, bound: BoundHost) -> None:
        self.store = store
        self.context = store._context()
        self.state: StoreState = state_of(store)
        self.component = component
        self.bound = bound
        # One table for resource handles and the async ABI's waitables, waitable sets and
        # error contexts, as in the spec (their indices share one space).
        self.handles: list[Any] = [None]
        self.free: list[int] = []
        self.may_enter = True
        self.may_leave = True  # false during realloc and post-return: built-ins trap
        self.current_task: Task | None = None
        self._no_task_storage = [0, 0]  # context.get/set outside any task (a core start function)
        self.backpressure = 0
        self.poisoned: str | None = None  # why the instance trapped (it cannot be entered again)
        self.closed = False
        self._envs: list[int] = []
        self._tramps: list[Callable[[Any], int]] = []
        self._core: dict[int, Any] = {}  # id(planned core item) -> ffi.wasmtime_extern_t
        self._instances: list[Any] = []
        self._memcx: dict[tuple[int, int], canon.MemCx] = {}
        self._checked: set[int] = set()
        self._exports: dict[int, ExportSpec] = {}  # id(Lifted) -> what calling it needs
        self._views: dict[int, tuple[int, int, memoryview]] = {}
        try:
            self._instantiate()
        except BaseException:
            self.close()
            raise

    # --- instantiation -----------------------------------------------------------------
    def _instantiate(self) -> None:
        comp = self.component
        for step in comp.plan.steps:
            if isinstance(step, Bag):
                self._instances.append(step)
                continue
            module = comp.modules[step.module]
            names = comp.module_imports[step.module]
            externs = (ffi.wasmtime_extern_t * max(1, len(names)))()
            instances, context, args = self._instances, self.context, step.args
            for i, (mod_name, import_name) in enumerate(names):
                arg_slot = args.get(mod_name)
                if arg_slot is None:
                    raise LinkError(f"core module import {mod_name}::{import_name} has no instantiation argument")
                source = instances[arg_slot]
                if isinstance(source, Bag):
                    externs[i] = self._core_item_from_slot(arg_slot, import_name)
                else:  # straight into the array: this loop runs ~4000 times for a Python guest
                    data = import_name.encode()
                    if not _export_get(context, ctypes.byref(source), data, len(data), ctypes.byref(externs[i])):  # externs[i] shares the array's memory
                        raise LinkError(f"core instance has no export {import_name!r}")
            inst = ffi.wasmtime_instance_t()
            trap = _TRAP_P()
            err = _instance_new(self.context, module.ptr(), externs, len(names), ctypes.byref(inst), ctypes.byref(trap))
            self._raise_if_failed(err, trap, "instantiating a core module")
            self._instances.append(inst)

    def _core_item_from_slot(self, slot: int, name: str) -> Any:
        inst = self._instances[slot]
        if isinstance(inst, Bag):
            item = inst.items.get(name)
            if item is None:
                raise LinkError(f"core instance has no export {name!r}")
            return self.core_item(item)
        ext = ffi.wasmtime_extern_t()
        data = name.encode()
        if not _export_get(self.context, ctypes.byref(inst), data, len(data), ctypes.byref(ext)):
            raise LinkError(f"core instance has no export {name!r}")
        return ext

    def core_item(self, item: Any) -> Any:
        """The wasmtime extern for a planned core item (created once per instance)."""
        ext = self._core.get(id(item))
        if ext is not None:
            return ext
        if isinstance(item, CoreExport):
            ext = self._core_item_from_slot(item.slot, item.name)
        elif isinstance(item, Lowered):
            ext = self._lower(item)
        elif isinstance(item, ResourceBuiltin):
            ext = self._builtin(item)
        elif isinstance(item, Builtin):
            ext = self._async_builtin(item)
        else:
            raise LinkError(f"unknown core item {item!r}")
        self._core[id(item)] = ext
        return ext

    def _new_func(self, params: list[str], results: list[str], tramp: Callable[[Any], int]) -> Any:
        env = next(_env_ids)
        _TRAMPOLINES[env] = tramp
        self._tramps.append(tramp)
        self._envs.append(env)
        # wasmtime ties a function type to the first engine it is used with: cache them per
        # component (which belongs to one engine), never globally.
        key = (tuple(params), tuple(results))
        fty = self.component.functypes.get(key)
        if fty is None:
            fty = self.component.functypes[key] = core_functype(params, results)
        func = ffi.wasmtime_func_t()
        _func_new(self.context, fty.ptr(), _host_entry, env, _forget_trampoline, ctypes.byref(func))
        ext = ffi.wasmtime_extern_t()
        ext.kind = _EXTERN_FUNC
        ext.of.func = func
        return ext

    def memcx(self, opts: Opts) -> canon.MemCx:
        key = (id(opts.memory), id(opts.realloc), opts.encoding)
        m = self._memcx.get(key)  # type: ignore[arg-type]
        if m is None:
            memory = realloc = None
            if opts.memory is not None:
                ext = self.core_item(opts.memory)
                if ext.kind != _EXTERN_MEMORY:
                    raise LinkError("canon option (memory) is not a memory")
                memory = ext.of.memory
            if opts.realloc is not None:
                realloc = self._checked_func(opts.realloc, ["i32", "i32", "i32", "i32"], ["i32"], "realloc")
            m = canon.MemCx(self, memory, realloc, opts.encoding)
            self._memcx[key] = m  # type: ignore[index]
        return m

    def _checked_func(self, item: Any, params: list[str], results: list[str], what: str) -> Any:
        """A core function whose type must be exactly ``params -> results`` (the calls into
        it are unchecked, so a wrong type would be undefined behaviour, not a trap)."""
        ext = self.core_item(item)
        if ext.kind != _EXTERN_FUNC:
            raise LinkError(f"{what} is not a function")
        func = ext.of.func
        if id(item) not in self._checked:
            fty = FuncType._from_ptr(ffi.wasmtime_func_type(self.context, ctypes.byref(func)), None)
            actual = ([str(p) for p in fty.params], [str(r) for r in fty.results])
            if actual != (params, results):
                raise LinkError(f"{what} has core type {actual}, expected {(params, results)}")
            self._checked.add(id(item))
        return func

    # --- memory and calls into the guest ---------------------------------------------------
    def memory_view(self, memory: Any) -> memoryview:
        """A view of ``memory`` as it is now (base and size re-read on every call; the view
        object is reused while neither changed)."""
        ref = ctypes.byref(memory)
        size = _mem_size(self.context, ref)
        base = _mem_data(self.context, ref)
        cached = self._views.get(id(memory))
        if cached is not None and cached[0] == base and cached[1] == size:
            return cached[2]
        view = memoryview((ctypes.c_ubyte * size).from_address(base)).cast("B") if size else memoryview(bytearray())  # type: ignore[operator]
        self._views[id(memory)] = (base, size, view)
        return view

    def memory_base(self, memory: Any) -> int:
        cached = self._views.get(id(memory))
        return cached[0] if cached is not None else 0

    def call_core(self, func: Any, args: list[Any], writers: list[Callable[[Any, Any], None]],
                  readers: list[Callable[[Any], Any]]) -> list[Any]:
        """Call a core function with raw values: ``writers``/``readers`` convert its params
        and results (built once per signature: ``_writers``/``_readers``)."""
        n = max(len(writers), len(readers), 1)
        raw_vals = _RAW_ARRAYS[n]() if n < len(_RAW_ARRAYS) else (ffi.wasmtime_val_raw_t * n)()
        for i, (write, x) in enumerate(zip(writers, args)):
            write(raw_vals[i], x)
        trap = _TRAP_P()
        err = _func_call(self.context, ctypes.byref(func), raw_vals, n, ctypes.byref(trap))
        if err or trap:
            self._raise_if_failed(err, trap, None)
        return [read(raw_vals[i]) for i, read in enumerate(readers)]

    def call_realloc(self, func: Any, align: int, size: int) -> int:
        raw_vals = (ffi.wasmtime_val_raw_t * 4)()
        raw_vals[2].i32 = align
        raw_vals[3].i32 = size
        trap = _TRAP_P()
        may_leave, self.may_leave = self.may_leave, False
        try:
            err = _func_call(self.context, ctypes.byref(func), raw_vals, 4, ctypes.byref(trap))
        finally:
            self.may_leave = may_leave
        self._raise_if_failed(err, trap, None)
        return raw_vals[0].i32 & 0xFFFF_FFFF

    def _raise_if_failed(self, err: Any, trap: Any, what: str | None) -> None:
        if not err and not trap:
            return
        error = WasmtimeError._from_ptr(err) if err else None
        message = str(error) if error is not None else _trap_message(trap)
        raise WasmtimeError(f"{what}: {message}" if what else message)

    # --- handle table -----------------------------------------------------------------------
    def add(self, entry: Any) -> int:
        if self.free:
            h = self.free.pop()
            self.handles[h] = entry
            return h
        if len(self.handles) >= 1 << 28:
            raise Trap("handle table full")
        self.handles.append(entry)
        return len(self.handles) - 1

    def get(self, h: int) -> Any:
        entry = self.handles[h] if 0 < h < len(self.handles) else None
        if entry is None:
            raise Trap(f"unknown handle index {h}")
        return entry

    def remove(self, h: int) -> Any:
        entry = self.get(h)
        self.handles[h] = None
        self.free.append(h)
        return entry

    def take_own(self, h: int, rt: ResourceT) -> Any:
        """THE place where the host takes over an ``own`` handle passed to it.

        The guest's handle is gone after this; for a host resource the Python object leaves
        the store's table and belongs to the called function (the component backend's
        ``ResourceTable.take``). When the call returns, the trampoline drops it unless the
        function keeps it (``resources.drop_consumed_arguments``, as on the component backend).
        """
        entry = self.get(h)
        key = _key(rt)
        if entry.key is not key:
            raise Trap(f"handle index {h} is not a {_rname(rt)}")
        if not entry.own:
            raise Trap(f"handle index {h} is borrowed, but an own handle is required")
        if entry.lends:
            raise Trap(f"handle index {h} is lent out and cannot be moved")
        self.remove(h)
        if isinstance(rt, ImportedResource):
            return self.state.table.take(entry.rep, rt.kind)
        return GuestResource(rt, entry.rep)

    def lend(self, m: canon.MemCx, h: int, rt: ResourceT) -> Any:
        """A ``borrow`` argument: the handle stays the guest's, lent for this call."""
        entry = self.get(h)
        if entry.key is not _key(rt):
            raise Trap(f"handle index {h} is not a {_rname(rt)}")
        if entry.own:
            entry.lends += 1
            if m.borrows is None:
                m.borrows = []
            m.borrows.append(h)
        if isinstance(rt, ImportedResource):
            return self.state.table.get(entry.rep, rt.kind)
        return entry.rep

    def end_lends(self, m: canon.MemCx) -> None:
        borrows, m.borrows = m.borrows, None
        for h in borrows or ():
            entry = self.handles[h] if h < len(self.handles) else None
            if entry is not None and entry.lends:
                entry.lends -= 1

    def new_own(self, rt: ResourceT, obj: Any) -> int:
        if isinstance(rt, ImportedResource):
            kind: ResourceKind = rt.kind
            if not isinstance(obj, kind.py_class):
                raise Trap(f"expected a {kind.name} ({kind.py_class.__name__}), got {obj!r}")
            rep = self.state.table.insert(obj, kind)
            return self.add(_HandleEntry(kind, rep, True))
        if isinstance(obj, GuestResource) and obj.resource is rt:
            return self.add(_HandleEntry(rt, obj.rep, True))
        raise Trap(f"expected a handle of this component's own resource, got {obj!r}")

    def new_borrow(self, m: canon.MemCx, rt: ResourceT, obj: Any) -> int:
        scope = m.borrow_scope
        if scope is None:
            raise Trap("host functions cannot return borrowed handles")
        if isinstance(rt, ImportedResource):
            rep = self.state.table.insert(obj, rt.kind)
            scope.count += 1
            m.temp_reps.append((rep, rt.kind))
            return self.add(_HandleEntry(rt.kind, rep, False, scope))
        if isinstance(obj, GuestResource) and obj.resource is rt:
            scope.count += 1
            return self.add(_HandleEntry(rt, obj.rep, False, scope))
        raise Trap(f"expected a handle of this component's own resource, got {obj!r}")

    def _builtin(self, item: ResourceBuiltin) -> Any:
        rt = item.resource
        key = _key(rt)
        if item.op == "new":
            if not isinstance(rt, DefinedResource):
                raise LinkError("resource.new of a resource the component does not define")

            def new(args: Any) -> int:
                try:
                    args[0].i32 = self.add(_HandleEntry(rt, args[0].i32 & 0xFFFF_FFFF, True))
                    return 0
                except Trap as e:
                    return _trap_ptr(f"resource.new: {e}")
            return self._new_func(["i32"], ["i32"], new)
        if item.op == "rep":
            if not isinstance(rt, DefinedResource):
                raise LinkError("resource.rep of a resource the component does not define")

            def rep(args: Any) -> int:
                try:
                    entry = self.get(args[0].i32 & 0xFFFF_FFFF)
                    if entry.key is not key:
                        raise Trap(f"handle index {args[0].i32 & 0xFFFF_FFFF} is not of this resource type")
                    args[0].i32 = entry.rep
                    return 0
                except Trap as e:
                    return _trap_ptr(f"resource.rep: {e}")
            return self._new_func(["i32"], ["i32"], rep)
        dtor = None
        if isinstance(rt, DefinedResource) and rt.dtor is not None:
            dtor = self._checked_func(rt.dtor, ["i32"], [], "resource destructor")

        def drop(args: Any) -> int:
            h = args[0].i32 & 0xFFFF_FFFF
            try:
                self.drop_handle(h, key, dtor)
                return 0
            except GuestExit as e:
                self.state.exit_code = e.code
                return _trap_ptr(f"guest exited with code {e.code}")
            except WasmtimeError as e:
                return _trap_ptr(f"resource destructor trapped: {e}")
            except Trap as e:
                return _trap_ptr(f"resource.drop: {e}")
        return self._new_func(["i32"], [], drop)

    def drop_handle(self, h: int, key: Any, dtor: Any) -> None:
        entry = self.get(h)
        if entry.key is not key:
            raise Trap(f"handle index {h} is not of the dropped resource type")
        if entry.lends:
            raise Trap(f"handle index {h} is lent out and cannot be dropped")
        self.remove(h)
        if not entry.own:
            if entry.scope is not None:
                entry.scope.count -= 1
            return
        if isinstance(key, ResourceKind):
            self.state.table.drop(entry.rep)
        elif dtor is not None:
            self.call_core(dtor, [entry.rep], _I32x1_WRITERS, [])

    # --- the async ABI: built-ins, waiting, streams and futures crossing ------------------------
    def _async_builtin(self, item: Builtin) -> Any:
        params, results, body = builtins.make(self, item)
        readers = _readers(params)
        writers = [_writer(t) for t in results]
        op = item.op
        state = self.state

        def tramp(args: Any) -> int:
            try:
                out = body([r(args[i]) for i, r in enumerate(readers)])
                for i, w in enumerate(writers):
                    w(args[i], out[i])
                return 0
            except Trap as e:
                message = str(e)
                return _trap_ptr(message if message.startswith(op) else f"{op}: {message}")
            except Exception as e:  # a call into the guest (realloc) trapped, or a host bug
                return _trap_ptr(host_call_failure(f"canon {op}", e, lambda code: setattr(state, "exit_code", code)))

        return self._new_func(params, results, tramp)

    @property
    def scheduler(self) -> Scheduler:
        return self.state.scheduler

    def block_until(self, done: Callable[[], bool], what: str) -> None:
        """Run the store's host work until ``done()``; the current task blocks meanwhile
        (only ``async`` functions may: a synchronous one traps, as the spec says)."""
        scheduler = self.scheduler
        scheduler.run_ready()
        if done():
            return
        task = self.current_task
        if task is not None and not task.ft.is_async and task.state != Task.RESOLVED:
            raise Trap(f"cannot block a synchronous task before returning ({what})")
        scheduler.wait_until(done, what)

    def wait_for_event(self, wset: WaitableSet, cancellable: bool) -> tuple[int, int, int]:
        task = self.current_task
        if task is not None and task.deliver_pending_cancel(cancellable):
            return (EventCode.TASK_CANCELLED, 0, 0)
        wset.num_waiting += 1
        try:
            self.block_until(wset.has_pending_event, "the guest waits on a waitable set")
        finally:
            wset.num_waiting -= 1
        return wset.get_pending_event()

    def wait_sync(self, w: Waitable) -> None:
        """A synchronous read, write, cancel or call waits for its own event."""
        w.has_sync_waiter = True
        try:
            self.block_until(w.has_pending_event, f"the guest waits for its {w.what} synchronously")
        finally:
            w.has_sync_waiter = False

    def finish_copy(self, e: CopyEnd, async_: bool, op: str) -> list[Any]:
        """The end of ``stream_copy``/``future_copy``: a host on the other side may complete
        the copy at once (it runs now); otherwise wait (sync) or report BLOCKED (async)."""
        if not e.has_pending_event():
            self.scheduler.run_ready()
        if not e.has_pending_event():
            if not async_:
                self.wait_sync(e)
            else:
                return [BLOCKED]
        _, _, payload = e.get_pending_event()
        return [payload]

    def cancel_subtask(self, subtask: Subtask) -> None:
        """Ask the host function behind ``subtask`` to stop (its coroutine gets Cancelled)."""
        host_task = subtask.host_task
        if host_task is not None and not host_task.done:
            host_task.cancel()

    def context_storage(self) -> list[int]:
        task = self.current_task
        return task.storage if task is not None else self._no_task_storage

    def same_lift_options(self, m: canon.MemCx | None, task_mem: canon.MemCx) -> bool:
        """``LiftOptions.equal`` of task.return's options and the lift's: the same memory
        instance and string encoding."""
        memory = m.memory if m is not None else None
        encoding = m.encoding if m is not None else "utf8"
        return _same_memory(memory, task_mem.memory) and encoding == task_mem.encoding

    def lift_async_end(self, h: int, t: StreamT | FutureT) -> Stream | Future:
        """A readable end leaves the guest's table (``lift_async_value``): ownership moves."""
        is_stream = isinstance(t, StreamT)
        kind = "stream" if is_stream else "future"
        e = self.get(h)
        if not isinstance(e, ReadableStreamEnd if is_stream else ReadableFutureEnd):
            raise Trap(f"handle index {h} is not the readable end of a {kind} (it is a {getattr(e, 'what', 'resource handle')})")
        if not same_type(e.shared.t, t.elem):
            raise Trap(f"the {kind} at handle index {h} has another element type than {t.signature()}")
        if e.state == CopyState.DONE:
            raise Trap("cannot lift stream after being notified that the writable end dropped" if is_stream
                       else "cannot lift future after previous read succeeded")
        if e.state != CopyState.IDLE:
            raise Trap(f"cannot remove busy {kind} (a copy is in progress)")
        if e.wset is not None:
            raise Trap(f"cannot lift {kind} while it's in a waitable set")
        self.remove(h)
        return e.shared

    def lower_async_end(self, value: Any, t: StreamT | FutureT) -> int:
        is_stream = isinstance(t, StreamT)
        if not isinstance(value, Stream if is_stream else Future):
            raise Trap(f"expected a {'Stream' if is_stream else 'Future'} for {t.signature()}, got {value!r}")
        if value.t is UNSET:
            value.t = t.elem  # a host-made stream or future learns its element type here
        elif not same_type(value.t, t.elem):
            raise Trap(f"a {'stream' if is_stream else 'future'} of another element type cannot cross as {t.signature()}")
        return self.add(ReadableStreamEnd(value) if is_stream else ReadableFutureEnd(value))

    def lift_error_context(self, h: int) -> ErrorContext:
        e = self.get(h)
        if not isinstance(e, ErrorContext):
            raise Trap(f"handle index {h} is not an error context")
        return e

    def lower_error_context(self, value: Any) -> int:
        if not isinstance(value, ErrorContext):
            value = ErrorContext(str(value))
        return self.add(value)

    # --- canon lower --------------------------------------------------------------------------
    def _lower(self, item: Lowered) -> Any:
        hi: HostImport = item.target
        spec = self.bound.specs.get(id(hi))
        if spec is None:
            fn = self.bound.funcs.get(id(hi))
            if fn is None:
                raise LinkError(f"the component needs an import this host does not provide: {hi.interface}#{hi.name}")
            spec = self.bound.specs[id(hi)] = LowerSpec(fn, hi.type)
        m = self.memcx(item.opts)
        if item.opts.async_:
            params, results = hi.type.async_lower_core_type()
            return self._new_func(params, results, make_async_trampoline(self, spec, m))
        params, results = spec.core_type
        return self._new_func(params, results, make_trampoline(self, spec, m))

    def finish_host_call(self, spec: LowerSpec, m: canon.MemCx, host_task: HostTask, retptr: int, subtask: Subtask | None) -> int:
        """An async host call ended: its result goes to the guest's result pointer; returns
        the subtask state to report. Failures other than a WIT error trap the guest."""
        fn = spec.fn
        error = host_task.error
        if error is None:
            result = host_task.result
        elif isinstance(error, WitError):
            if not spec.returns_result:
                raise Trap(f"{fn.qualname}: error {error.payload!r} from a function that returns no result")
            result = Err(error.payload)
        elif isinstance(error, Cancelled):
            if subtask is not None and subtask.cancellation_requested:
                return Subtask.CANCELLED_BEFORE_RETURNED
            raise Trap(f"{fn.qualname}: the host call was cancelled")
        else:
            raise Trap(host_call_failure(fn.qualname, error if isinstance(error, Exception) else Exception(repr(error)),
                                         lambda code: setattr(self.state, "exit_code", code)))
        if OUTGOING_VALUE_HOOKS:
            for hook in OUTGOING_VALUE_HOOKS:
                hook(fn.qualname, result)
        if spec.result_conv is not None:
            m.forget()
            canon.check_range(m.view(), retptr, spec.result_size, "result")
            spec.result_conv.store(m, result, retptr)
            m.forget()
        return Subtask.RETURNED

    # --- canon lift -------------------------------------------------------------------------------
    def call_export(self, lifted: Lifted, args: tuple[Any, ...]) -> Any:
        """Call a lifted export with Python values (``canon lift``): synchronously, or, for
        an ``async`` lift, through task.return and (with a callback) the event loop that
        runs until the task exits, with host work run while it waits."""
        ft = lifted.type
        if len(args) != len(ft.params):
            raise TypeError(f"expected {len(ft.params)} arguments, got {len(args)}")
        if self.closed:
            raise WasmtimeError("the component instance is closed")
        if self.poisoned is not None:
            raise WasmtimeError(f"cannot enter component instance: it trapped before ({self.poisoned})")
        if not self.may_enter:
            raise WasmtimeError("cannot enter component instance: it is already running (reentrance)")
        spec = self._exports.get(id(lifted))
        if spec is None:
            spec = self._exports[id(lifted)] = ExportSpec(self, lifted)
        opts, func, post, callback, m = lifted.opts, spec.func, spec.post, spec.callback, spec.m
        if ft.is_async and self.backpressure > 0:
            raise WasmtimeError("cannot enter component instance: it has backpressure set "
                                "(backpressure.inc without backpressure.dec) and no task runs that could clear it")
        scope = _BorrowScope()
        m.borrow_scope = scope
        m.temp_reps = []
        task = Task(ft, opts, m)
        outer_task, self.current_task = self.current_task, task
        self.may_enter = False
        try:
            try:
                flat: list[Any] = []
                if ft.params_spill:
                    tup = ft.param_tuple
                    assert tup is not None
                    ptr = m.realloc(tup.align, tup.size)
                    canon.conv(tup).store(m, tuple(args), ptr)
                    flat = [ptr]
                else:
                    for lower, x in zip(spec.param_lowers, args):
                        lower(m, x, flat)
            except Trap as e:  # the embedder's values do not fit the export's types
                raise TypeError(str(e)) from None
            m.forget()
            try:
                out = self.call_core(func, flat, spec.writers, spec.readers)
                m.forget()
                if opts.async_:
                    if callback is not None:
                        self._event_loop(task, callback, out[0])
                    if task.state != Task.RESOLVED:
                        raise Trap("the async export exited without calling task.return (or task.cancel)")
                    value = task.result
                else:
                    value = self._lift_result(ft, m, out)
            except Trap as e:
                raise WasmtimeError(str(e)) from None
            if post is not None:
                self.may_leave = False
                try:
                    self.call_core(post, out, spec.post_writers, [])
                finally:
                    self.may_leave = True
            if scope.count:
                raise WasmtimeError("borrow handles still remain at the end of the call")
            # Host work the guest's last steps made ready (the end of a stream it dropped, an
            # alert to a peer) runs now, not at some later call that may never come.
            if ft.is_async or self.state.has_scheduler:
                self.scheduler.run_ready()
            return value
        except WasmtimeError as e:
            # A trap takes the instance out, as in wasmtime: its state may be half-updated.
            self.poisoned = _trap_summary(str(e))
            raise
        finally:
            self.may_enter = True
            self.current_task = outer_task
            m.borrow_scope = None
            for rep, kind in m.temp_reps:
                try:
                    self.state.table.take(rep, kind)
                except Trap:
                    pass
            m.forget()

    def _lift_result(self, ft: FuncT, m: canon.MemCx, out: list[Any]) -> Any:
        if ft.result is None:
            return None
        c = canon.conv(ft.result)
        try:
            if ft.results_spill:
                ptr = out[0]
                if ptr != align_to(ptr, ft.result.align):
                    raise Trap(f"result pointer {ptr:#x} is misaligned")
                v = m.view()
                canon.check_range(v, ptr, ft.result.size, "result")
                return c.load(m, v, ptr)
            value, _ = c.lift_flat(m, out, 0)
            return value
        except Trap as e:
            raise Trap(f"lifting the result: {e}") from None

    def _event_loop(self, task: Task, callback: Any, packed: int) -> None:
        """The ``async callback`` loop of ``canon_lift``: EXIT ends it, YIELD lets host work
        run, WAIT waits for an event of the given waitable set; each event goes to the
        callback. Once the task has returned its value, a wait nothing can end stops the
        loop instead of trapping (its remaining work could never finish)."""
        scheduler = self.scheduler
        while True:
            code, si = packed & 0xF, packed >> 4
            if code == CallbackCode.EXIT:
                task.exited = True
                return
            if code == CallbackCode.YIELD:
                if task.deliver_pending_cancel(True):
                    event: tuple[int, int, int] = (EventCode.TASK_CANCELLED, 0, 0)
                else:
                    scheduler.run_ready()
                    scheduler.poll(block=False)
                    scheduler.run_ready()
                    event = (EventCode.NONE, 0, 0)
            elif code == CallbackCode.WAIT:
                wset = self.get(si)
                if not isinstance(wset, WaitableSet):
                    raise Trap(f"the callback returned WAIT on handle index {si}, which is not a waitable set")
                if task.state == Task.RESOLVED and not wset.has_pending_event():
                    scheduler.run_ready()
                    if not wset.has_pending_event() and not scheduler.poll(block=False) and not wset.has_pending_event():
                        return  # returned, and nothing can ever wake it: done
                event = self.wait_for_event(wset, True)
            else:
                raise Trap(f"unsupported callback code: {code}")
            packed = self.call_core(callback, list(event), _I32x3_WRITERS, _I32_READERS)[0]

    def lookup_export(self, path: list[str]) -> Lifted | None:
        node: Any = self.component.plan.exports
        for name in path:
            if not isinstance(node, dict) or name not in node:
                return None
            node = node[name]
        return node if isinstance(node, Lifted) else None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for env in self._envs:
            _TRAMPOLINES.pop(env, None)
        self._envs.clear()
        self._tramps.clear()
        # Each MemCx points back here: without this the cycle would keep the store (its
        # linear memories, the mapped module files) alive until a GC pass.
        self._memcx.clear()
        self._exports.clear()  # each holds a MemCx too
        self._views.clear()


@dataclass(eq=False)
class GuestResource:
    """An ``own`` handle of a resource the guest defines, held by the host."""

    resource: DefinedResource
    rep: int


def _end_loans(m: canon.MemCx, strict: bool = True) -> None:
    """End the loan of guest memory views: any later use of the lent view raises, instead of
    reading memory that a later call may have grown or moved; a view derived from it (which
    cannot be revoked) is reported as the host bug it is."""
    lent, m.lent = m.lent, []
    for loan in lent:
        try:
            loan[1].release()
        except BufferError:
            pass  # a view exported from this one is alive: the check below sees it
    if not strict:
        return
    # A reference cycle (a traceback that held a slice, say) may keep a view a little
    # longer: collect once before blaming the host.
    if _views_alive(lent):
        gc.collect()
        if _views_alive(lent):
            raise Trap("the host kept a view of guest memory beyond the call")


def _views_alive(lent: list[tuple[Any, memoryview]]) -> bool:
    """Whether a view derived from a lent one is still alive (it keeps the array)."""
    for array, _ in lent:
        # References otherwise: the tuple in `lent`, `array`, getrefcount's argument.
        if sys.getrefcount(array) > 3:
            return True
    return False


def _trap_summary(message: str) -> str:
    """The trap's cause in one line (without the wasm backtrace)."""
    _, sep, cause = message.rpartition("Caused by:")
    text = cause if sep else message
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else message


def _same_memory(a: Any, b: Any) -> bool:
    """Whether two ``wasmtime_memory_t`` values name one memory instance (the structs are
    copies: compare the store and the index, not the Python objects)."""
    if a is None or b is None:
        return a is b
    return bytes(a) == bytes(b)


def _trap_message(trap: Any) -> str:
    from wasmtime import Trap as WasmTrap

    return str(WasmTrap._from_ptr(trap))


class ExportSpec:
    """What calling one lifted export needs that does not change between calls (built at
    its first call, per instance): its checked core functions and value converters."""

    def __init__(self, inst: ComponentInstance, lifted: Lifted) -> None:
        ft, opts = lifted.type, lifted.opts
        if opts.async_:
            params, results = ft.async_lift_core_type(opts.callback is not None)
        else:
            params, results = ft.lift_core_type()
        self.func = inst._checked_func(lifted.core_func, params, results, "lifted export")
        self.post = self.callback = None
        if opts.post_return is not None:
            self.post = inst._checked_func(opts.post_return, results, [], "post-return")
        if opts.callback is not None:
            self.callback = inst._checked_func(opts.callback, ["i32", "i32", "i32"], ["i32"], "callback")
        self.m = inst.memcx(opts)
        self.writers, self.readers = _writers(params), _readers(results)
        self.post_writers = _writers(results)
        self.param_lowers = [canon.conv(t).lower_flat for _, t in ft.params]


class LowerSpec:
    """What a ``canon lower`` trampoline needs that does not depend on the instance (built
    once per imported function and component)."""

    def __init__(self, fn: HostFunc, ft: FuncT) -> None:
        self.fn = fn
        self.ft = ft
        self.core_type = ft.lower_core_type()
        self.returns_result = ft.result is not None and getattr(ft.result, "kind", "") == "result"
        self.nflat = len(ft.flat_params)
        self.readers = _readers(ft.flat_params)
        self.param_convs = [canon.conv(t).lift_flat for _, t in ft.params]
        # list<u8> arguments lent as views of guest memory (see HostFunc.bytes_views).
        if fn.bytes_views and not ft.params_spill:
            for i, (_, t) in enumerate(ft.params):
                if isinstance(t, ListT) and isinstance(t.elem, Prim) and t.elem.name == "u8":
                    self.param_convs[i] = canon.lift_bytes_view_flat
        self.spill_tuple = canon.conv(ft.param_tuple) if ft.params_spill and ft.param_tuple is not None else None
        self.spill_align = ft.param_tuple.align if ft.param_tuple is not None else 1
        self.result_conv = canon.conv(ft.result) if ft.result is not None else None
        self.result_align = ft.result.align if ft.result is not None else 1
        self.result_size = ft.result.size if ft.result is not None else 0
        self.result_writer = _writer(ft.flat_results[0]) if ft.result is not None and not ft.results_spill else None


def make_trampoline(inst: ComponentInstance, spec: LowerSpec, m: canon.MemCx) -> Callable[[Any], int]:
    """The native body of one ``canon lower``: lift, call, lower, with every failure a trap
    that names the function."""
    fn = spec.fn
    ft = spec.ft
    impl = fn.impl
    qualname = fn.qualname
    state = inst.state
    returns_result = spec.returns_result
    nflat = spec.nflat
    readers = spec.readers
    param_convs = spec.param_convs
    spill_tuple = spec.spill_tuple
    spill_align = spec.spill_align
    spill_size = ft.param_tuple.size if ft.param_tuple is not None else 0
    result_conv = spec.result_conv
    result_spill = ft.results_spill
    result_align = spec.result_align
    result_size = spec.result_size
    result_writer = spec.result_writer
    single_lift = param_convs[0] if len(param_convs) == 1 and not ft.params_spill else None
    fills = fn.fills
    is_async = fn.is_async

    owned, kept = fn.owned, fn.kept

    def tramp(args: Any) -> int:
        if not inst.may_leave:
            return _trap_ptr(f"{qualname}: cannot call an import during realloc or post-return")
        m.forget()
        outer_borrows, m.borrows = m.borrows, None  # a nested call (from realloc) keeps its own
        pyargs: Any = []
        succeeded = False
        try:
            try:
                if spill_tuple is not None:
                    ptr = args[0].i32 & 0xFFFF_FFFF
                    if ptr != align_to(ptr, spill_align):
                        raise Trap(f"argument pointer {ptr:#x} is misaligned")
                    v = m.view()
                    canon.check_range(v, ptr, spill_size, "arguments")
                    pyargs = spill_tuple.load(m, v, ptr)
                else:
                    flat = [r(args[i]) for i, r in enumerate(readers)]
                    if single_lift is not None:
                        pyargs = (single_lift(m, flat, 0)[0],)
                    else:
                        pyargs = []
                        i = 0
                        for lift in param_convs:
                            value, i = lift(m, flat, i)
                            pyargs.append(value)
                returned = False
                try:
                    if fills and not OUTGOING_VALUE_HOOKS:  # audited values must be seen as bytes
                        result = impl(state, *pyargs, fill=canon.Filler(m))
                    else:
                        result = impl(state, *pyargs)
                    if is_async:  # an async import called synchronously: the task blocks
                        result = run_to_completion(inst, result, qualname)
                    returned = True
                except WitError as e:
                    if not returns_result:
                        raise Trap(f"error {e.payload!r} from a function that returns no result") from e
                    result = Err(e.payload)
                except BaseException:
                    if m.lent:
                        _end_loans(m, strict=False)  # the traceback may still hold a view
                    raise
                if m.lent:
                    _end_loans(m)
                if OUTGOING_VALUE_HOOKS:
                    for hook in OUTGOING_VALUE_HOOKS:
                        hook(qualname, result)
                if result_conv is not None:
                    if result_spill:
                        retptr = args[nflat].i32 & 0xFFFF_FFFF
                        if retptr != align_to(retptr, result_align):
                            raise Trap(f"result pointer {retptr:#x} is misaligned")
                        canon.check_range(m.view(), retptr, result_size, "result")
                        result_conv.store(m, result, retptr)
                    else:
                        out: list[Any] = []
                        result_conv.lower_flat(m, result, out)
                        result_writer(args[0], out[0])  # type: ignore[misc]
                # Kept arguments live on in the result only once the guest has it.
                succeeded = returned
            finally:
                if owned:
                    drop_consumed_arguments(pyargs, owned, kept, succeeded)
                if m.borrows:
                    inst.end_lends(m)
                m.borrows = outer_borrows
            return 0
        except Exception as e:
            return _trap_ptr(host_call_failure(qualname, e, lambda code: setattr(state, "exit_code", code)))

    return tramp


def run_to_completion(inst: ComponentInstance, coro: Any, qualname: str) -> Any:
    """Run an async host function's coroutine until it returns (a synchronous caller)."""
    host_task = inst.scheduler.start(coro, qualname)
    if not host_task.done:
        inst.block_until(lambda: host_task.done, f"the guest called {qualname} synchronously")
    if host_task.error is not None:
        raise host_task.error
    return host_task.result


def make_async_trampoline(inst: ComponentInstance, spec: LowerSpec, m: canon.MemCx) -> Callable[[Any], int]:
    """The native body of ``canon lower ... async`` of a host function: lift the arguments,
    start the host coroutine and run it until it first waits; if it finished, store the
    result and return RETURNED, else return a new subtask (STARTED), whose SUBTASK event
    comes when the coroutine ends and its result is in guest memory."""
    fn = spec.fn
    ft = spec.ft
    impl = fn.impl
    qualname = fn.qualname
    state = inst.state
    spill = ft.async_params_spill
    readers = _readers(["i32"] if spill else ft.all_flat_params)
    nparams = len(readers)
    param_convs = [canon.conv(t).lift_flat for _, t in ft.params]
    tuple_conv = canon.conv(ft.param_tuple) if spill and ft.param_tuple is not None else None
    tuple_size = ft.param_tuple.size if ft.param_tuple is not None else 0
    tuple_align = ft.param_tuple.align if ft.param_tuple is not None else 1
    has_result = ft.result is not None
    result_align = spec.result_align
    result_size = spec.result_size
    owned, kept = fn.owned, fn.kept

    def tramp(args: Any) -> int:
        if not inst.may_leave:
            return _trap_ptr(f"{qualname}: cannot call an import during realloc or post-return")
        m.forget()
        outer_borrows, m.borrows = m.borrows, None
        pyargs: Any = []
        lent: list[_HandleEntry] = []
        try:
            try:
                if tuple_conv is not None:
                    ptr = args[0].i32 & 0xFFFF_FFFF
                    if ptr != align_to(ptr, tuple_align):
                        raise Trap(f"argument pointer {ptr:#x} is misaligned")
                    v = m.view()
                    canon.check_range(v, ptr, tuple_size, "arguments")
                    pyargs = list(tuple_conv.load(m, v, ptr))
                else:
                    flat = [r(args[i]) for i, r in enumerate(readers)]
                    i = 0
                    for lift in param_convs:
                        value, i = lift(m, flat, i)
                        pyargs.append(value)
                retptr = 0
                if has_result:
                    retptr = args[nparams].i32 & 0xFFFF_FFFF
                    if retptr != align_to(retptr, result_align):
                        raise Trap(f"result pointer {retptr:#x} is misaligned")
                    canon.check_range(m.view(), retptr, result_size, "result")
                lent = [inst.handles[h] for h in m.borrows or ()]
            finally:
                m.borrows = outer_borrows
            call = impl(state, *pyargs)
            if not fn.is_async:  # a synchronous host function behind an async lower
                async def done_now(value: Any = call) -> Any:
                    return value
                call = done_now()
            host_task = inst.scheduler.start(call, qualname)
            if host_task.done:
                entries, lent = lent, []
                consumed, pyargs = pyargs, []
                try:
                    inst.finish_host_call(spec, m, host_task, retptr, None)
                finally:
                    if owned:
                        drop_consumed_arguments(consumed, owned, kept, host_task.error is None)
                    for entry in entries:
                        entry.lends -= 1
                args[0].i32 = Subtask.RETURNED
                return 0
            subtask = Subtask(qualname)
            subtask.host_task = host_task
            subtask.lenders = lent
            subtask.index = inst.add(subtask)
            lent, pyargs_kept, pyargs = [], pyargs, []

            def on_done(t: HostTask) -> None:
                if inst.closed or t.scheduler.closed:
                    return
                try:
                    subtask.resolve(inst.finish_host_call(spec, m, t, retptr, subtask))
                finally:
                    if owned:
                        drop_consumed_arguments(pyargs_kept, owned, kept, t.error is None)
                subtask.set_pending_event(subtask.event)

            host_task.add_done_callback(on_done)
            args[0].i32 = Subtask.STARTED | (subtask.index << 4)
            return 0
        except Exception as e:
            for entry in lent:
                entry.lends -= 1
            if owned and pyargs:
                drop_consumed_arguments(pyargs, owned, kept, False)
            return _trap_ptr(host_call_failure(qualname, e, lambda code: setattr(state, "exit_code", code)))

    return tramp


__all__ = ["BoundHost", "ComponentInstance", "CoreComponent", "GuestResource", "LinkError", "bind"]
