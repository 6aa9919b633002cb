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

from ..binding import OUTGOING_VALUE_HOOKS, GuestExit, HostFunc, Interface, host_call_failure
from ..resources import ResourceKind, drop_consumed_arguments
from ..store import StoreState, state_of
from ..values import Err, Trap, WitError
from . import canon
from .plan import Bag, CoreExport, HostImport, Lifted, Lowered, Opts, Plan, ResourceBuiltin
from .types import DefinedResource, FuncT, Handle, ImportedResource, ListT, Prim, ResourceT, align_to

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
    """Resolve imports to host functions; binds the plan's imported resources to kinds."""
    by_name = {iface.name.split("@")[0]: iface for iface in interfaces}
    funcs: dict[int, HostFunc] = {}
    problems: list[str] = []
    missing: list[str] = []
    for res in component.plan.imported_resources:
        iface = by_name.get(res.interface.split("@")[0])
        kind = iface.resources.get(res.name) if iface is not None else None
        if kind is None:
            missing.append(f"resource {res.name} of {res.interface or 'the root'}")
        res.kind = kind
    for hi in component.plan.host_imports:
        iface = by_name.get(hi.interface.split("@")[0])
        fn = iface.funcs.get(hi.name) if iface is not None else None
        if fn is None:
            missing.append(f"{hi.interface}#{hi.name}" if hi.interface else hi.name)
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


def _readers(flat: list[str]) -> list[Callable[[Any], Any]]:
    return [_READERS.get(t, _READERS["f64"]) for t in flat]


def _writer(t: str) -> Callable[[Any, Any], None]:
    return _WRITERS.get(t, _wf64)


class _HandleEntry:
    __slots__ = ("key", "rep", "own", "lends", "scope")

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
        self.handles: list[_HandleEntry | None] = [None]
        self.free: list[int] = []
        self.may_enter = True
        self.closed = False
        self._envs: list[int] = []
        self._tramps: list[Callable[[Any], int]] = []
        self._core: dict[int, Any] = {}  # id(planned core item) -> ffi.wasmtime_extern_t
        self._instances: list[Any] = []
        self._memcx: dict[tuple[int, int], canon.MemCx] = {}
        self._checked: set[int] = set()
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

    def call_core(self, func: Any, args: list[Any], params: list[str], results: list[str]) -> list[Any]:
        n = max(len(params), len(results), 1)
        raw_vals = (ffi.wasmtime_val_raw_t * n)()
        for i, (t, x) in enumerate(zip(params, args)):
            _writer(t)(raw_vals[i], x)
        trap = _TRAP_P()
        err = _func_call(self.context, ctypes.byref(func), raw_vals, n, ctypes.byref(trap))
        self._raise_if_failed(err, trap, None)
        return [r(raw_vals[i]) for i, r in enumerate(_readers(results))]

    def call_realloc(self, func: Any, align: int, size: int) -> int:
        raw_vals = (ffi.wasmtime_val_raw_t * 4)()
        raw_vals[2].i32 = align
        raw_vals[3].i32 = size
        trap = _TRAP_P()
        err = _func_call(self.context, ctypes.byref(func), raw_vals, 4, ctypes.byref(trap))
        self._raise_if_failed(err, trap, None)
        return raw_vals[0].i32 & 0xFFFF_FFFF

    def _raise_if_failed(self, err: Any, trap: Any, what: str | None) -> None:
        if not err and not trap:
            return
        error = WasmtimeError._from_ptr(err) if err else None
        message = str(error) if error is not None else _trap_message(trap)
        raise WasmtimeError(f"{what}: {message}" if what else message)

    # --- handle table -----------------------------------------------------------------------
    def _add(self, entry: _HandleEntry) -> int:
        if self.free:
            h = self.free.pop()
            self.handles[h] = entry
            return h
        if len(self.handles) >= 1 << 28:
            raise Trap("handle table full")
        self.handles.append(entry)
        return len(self.handles) - 1

    def _entry(self, h: int) -> _HandleEntry:
        entry = self.handles[h] if 0 < h < len(self.handles) else None
        if entry is None:
            raise Trap(f"unknown handle index {h}")
        return entry

    def _remove(self, h: int) -> _HandleEntry:
        entry = self._entry(h)
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
        entry = self._entry(h)
        key = _key(rt)
        if entry.key is not key:
            raise Trap(f"handle index {h} is not a {_rname(rt)}")
        if not entry.own:
            raise Trap(f"handle index {h} is borrowed, but an own handle is required")
        if entry.lends:
            raise Trap(f"handle index {h} is lent out and cannot be moved")
        self._remove(h)
        if isinstance(rt, ImportedResource):
            return self.state.table.take(entry.rep, rt.kind)
        return GuestResource(rt, entry.rep)

    def lend(self, m: canon.MemCx, h: int, rt: ResourceT) -> Any:
        """A ``borrow`` argument: the handle stays the guest's, lent for this call."""
        entry = self._entry(h)
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
            return self._add(_HandleEntry(kind, rep, True))
        if isinstance(obj, GuestResource) and obj.resource is rt:
            return self._add(_HandleEntry(rt, obj.rep, True))
        raise Trap(f"expected a handle of this component's own resource, got {obj!r}")

    def new_borrow(self, m: canon.MemCx, rt: ResourceT, obj: Any) -> int:
        scope = m.borrow_scope
        if scope is None:
            raise Trap("host functions cannot return borrowed handles")
        if isinstance(rt, ImportedResource):
            rep = self.state.table.insert(obj, rt.kind)
            scope.count += 1
            m.temp_reps.append((rep, rt.kind))
            return self._add(_HandleEntry(rt.kind, rep, False, scope))
        if isinstance(obj, GuestResource) and obj.resource is rt:
            scope.count += 1
            return self._add(_HandleEntry(rt, obj.rep, False, scope))
        raise Trap(f"expected a handle of this component's own resource, got {obj!r}")

    def _builtin(self, item: ResourceBuiltin) -> Any:
        rt = item.resource
        key = _key(rt)
        if item.op == "new":
            if not isinstance(rt, DefinedResource):
                raise LinkError("resource.new of a resource the component does not define")

            def new(args: Any) -> int:
                try:
                    args[0].i32 = self._add(_HandleEntry(rt, args[0].i32 & 0xFFFF_FFFF, True))
                    return 0
                except Trap as e:
                    return _trap_ptr(f"resource.new: {e}")
            return self._new_func(["i32"], ["i32"], new)
        if item.op == "rep":
            if not isinstance(rt, DefinedResource):
                raise LinkError("resource.rep of a resource the component does not define")

            def rep(args: Any) -> int:
                try:
                    entry = self._entry(args[0].i32 & 0xFFFF_FFFF)
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
        entry = self._entry(h)
        if entry.key is not key:
            raise Trap(f"handle index {h} is not of the dropped resource type")
        if entry.lends:
            raise Trap(f"handle index {h} is lent out and cannot be dropped")
        self._remove(h)
        if not entry.own:
            if entry.scope is not None:
                entry.scope.count -= 1
            return
        if isinstance(key, ResourceKind):
            self.state.table.drop(entry.rep)
        elif dtor is not None:
            self.call_core(dtor, [entry.rep], ["i32"], [])

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
        params, results = spec.core_type
        return self._new_func(params, results, make_trampoline(self, spec, m))

    # --- canon lift -------------------------------------------------------------------------------
    def call_export(self, lifted: Lifted, args: tuple[Any, ...]) -> Any:
        ft = lifted.type
        if len(args) != len(ft.params):
            raise TypeError(f"expected {len(ft.params)} arguments, got {len(args)}")
        if self.closed:
            raise WasmtimeError("the component instance is closed")
        if not self.may_enter:
            raise WasmtimeError("cannot enter the component instance: it is already running (reentrance)")
        params, results = ft.lift_core_type()
        func = self._checked_func(lifted.core_func, params, results, "lifted export")
        post = None
        if lifted.opts.post_return is not None:
            post = self._checked_func(lifted.opts.post_return, results, [], "post-return")
        m = self.memcx(lifted.opts)
        scope = _BorrowScope()
        m.borrow_scope = scope
        m.temp_reps = []
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
                    for (_, t), x in zip(ft.params, args):
                        canon.conv(t).lower_flat(m, x, flat)
            except Trap as e:  # the embedder's values do not fit the export's types
                raise TypeError(str(e)) from None
            m.forget()
            out = self.call_core(func, flat, params, results)
            m.forget()
            try:
                value = None
                if ft.result is not None:
                    c = canon.conv(ft.result)
                    if ft.results_spill:
                        ptr = out[0]
                        if ptr != align_to(ptr, ft.result.align):
                            raise Trap(f"result pointer {ptr:#x} is misaligned")
                        v = m.view()
                        canon.check_range(v, ptr, ft.result.size, "result")
                        value = c.load(m, v, ptr)
                    else:
                        value, _ = c.lift_flat(m, out, 0)
            except Trap as e:
                raise WasmtimeError(f"lifting the result: {e}") from None
            if post is not None:
                self.call_core(post, out, results, [])
            if scope.count:
                raise WasmtimeError("borrow handles still remain at the end of the call")
            return value
        finally:
            self.may_enter = True
            m.borrow_scope = None
            for rep, kind in m.temp_reps:
                try:
                    self.state.table.take(rep, kind)
                except Trap:
                    pass
            m.forget()

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


def _trap_message(trap: Any) -> str:
    from wasmtime import Trap as WasmTrap

    return str(WasmTrap._from_ptr(trap))


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

    owned, kept = fn.owned, fn.kept

    def tramp(args: Any) -> int:
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


__all__ = ["BoundHost", "ComponentInstance", "CoreComponent", "GuestResource", "LinkError", "bind"]
