"""Running a planned component on wasmtime's core API.

``CoreComponent`` is a component taken apart (``plan.make_plan``) with its core modules
compiled. ``ComponentInstance`` performs the plan's steps in one ``wasmtime.Store``: it
instantiates the core modules with raw C entry points, gives each ``canon`` item a native
body (``lower.py`` for imports, ``builtins.py`` for the async ABI's built-ins, here the
resource built-ins), and calls lifted exports (``lift.py``). The outermost component and
each component it instantiates keep their own handle table and flags (``table.py``); this
class is the outermost one's, and runs the core code of all of them.

Host functions are the same ``binding.HostFunc`` impls as on the component backend, called
as ``impl(cx, *args)`` with the same Python values.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from collections import deque
from typing import Any, Callable, Iterable

from wasmtime import FuncType, Module, Store, WasmtimeError
from wasmtime import _ffi as ffi

from .. import callback_guard
from ..binding import GuestExit, HostFunc, Interface, interface_key, version_family
from ..records import Fields
from ..store import StoreState, state_of
from ..values import Trap
from . import builtins, canon, lift, native
from .lower import LowerSpec, make_async_trampoline, make_c2c_trampoline, make_trampoline, words_only
from .plan import Bag, Builtin, CoreExport, Lifted, Lowered, Opts, Plan, ResourceBuiltin
from .table import ComponentState, GuestResource, _HandleEntry, _key
from .types import DefinedResource, Handle

log = logging.getLogger("wasi_tls_host.runtime")


class MemoryState:
    """One linear memory as last seen: its address, size and a view of all of it. A linear
    memory never shrinks and moves only when it grows, so while its size is the same the
    view stays valid: one call into wasmtime (the size) per fresh view, not two."""

    __slots__ = ("addr", "base", "context_addr", "memory", "size", "size_args", "view")

    def __init__(self, context_addr: int, memory: Any) -> None:
        self.context_addr = context_addr
        self.memory = memory  # keeps the struct at ``addr`` alive
        self.addr = ctypes.addressof(memory)
        # The size getter's arguments as ctypes objects made once (native.mem_size_premade).
        self.size_args = (native.word_arg(context_addr), native.word_arg(self.addr))
        self.base = 0
        self.size = -1
        self.view: memoryview = memoryview(bytearray())

    def current(self) -> memoryview:
        size = native.mem_size_premade(*self.size_args)
        if size != self.size:
            self.grew(size)
        return self.view

    def grew(self, size: int) -> None:
        base = native.mem_data(self.context_addr, self.addr) or 0
        self.view = memoryview((ctypes.c_ubyte * size).from_address(base)).cast("B") if size else memoryview(bytearray())  # type: ignore[operator]
        self.base, self.size = base, size


class LinkError(Exception):
    """The component cannot be linked against this host (missing import, bad signature)."""


class CoreComponent(Fields):
    """A component ready to instantiate on the core backend."""

    plan: Plan
    modules: list[Module]
    module_imports: list[list[tuple[str, str]]]
    digest: str
    functypes: dict[tuple[tuple[str, ...], tuple[str, ...]], FuncType]

    _fields = ("plan", "modules", "module_imports", "digest", "functypes")

    def __init__(self, plan: Plan, modules: list[Module], module_imports: list[list[tuple[str, str]]], digest: str, functypes: dict[tuple[tuple[str, ...], tuple[str, ...]], FuncType] | None = None) -> None:
        self.plan = plan
        self.modules = modules
        self.module_imports = module_imports
        self.digest = digest
        self.functypes = {} if functypes is None else functypes


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


class ComponentInstance(ComponentState):
    """One instantiated component in one store (the outermost component instance)."""

    def __init__(self, store: Store, component: CoreComponent, bound: BoundHost) -> None:
        self.store = store
        self.context = store._context()
        self.context_addr: int = ctypes.cast(self.context, ctypes.c_void_p).value or 0
        self.context_arg = native.word_arg(self.context_addr)  # for native.func_call_premade
        self.frames: list[native.CallFrame] = []  # free call frames (call_callback, raw_realloc, lift._event_loop)
        self.state_: StoreState = state_of(store)
        self.component = component
        self.bound = bound
        self.closed_ = False
        super().__init__(self, 0, None)
        # The component instances it holds: itself, and one per nested instantiation.
        self.components: list[ComponentState] = [self]
        for cid, parent in enumerate(component.plan.component_parents[1:], start=1):
            self.components.append(ComponentState(self, cid, self.components[parent] if parent is not None else None))
        # The entering sets of the calls on the stack (a deque: pushed and popped on every call
        # into the guest, where a list going from one entry to none and back reallocates).
        self.entered: deque[tuple[ComponentState, ...]] = deque()
        self._envs: list[int] = []
        self._tramps: list[Callable[[Any], int]] = []
        self._direct: dict[int, Any] = {}  # env -> the native callback of a direct trampoline
        self._core: dict[int, Any] = {}  # id(planned core item) -> ffi.wasmtime_extern_t
        self._instances: list[Any] = []
        self._memcx: dict[tuple[int, int, int, str], canon.MemCx] = {}
        self._setups: dict[tuple[int, int], lift.CallSetup] = {}
        self._checked: set[int] = set()
        self._memories: dict[int, MemoryState] = {}
        try:
            self._instantiate()
        except BaseException:
            self.close()
            raise

    @property
    def state(self) -> StoreState:  # type: ignore[override]
        return self.state_

    @property
    def closed(self) -> bool:  # type: ignore[override]
        return self.closed_

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
                    if not native.export_get(context, ctypes.byref(source), data, len(data), ctypes.byref(externs[i])):  # externs[i] shares the array's memory
                        raise LinkError(f"core instance has no export {import_name!r}")
            inst = ffi.wasmtime_instance_t()
            trap = native.TRAP_P()
            err = native.instance_new(self.context, module.ptr(), externs, len(names), ctypes.byref(inst), ctypes.byref(trap))
            native.raise_if_failed(err, trap, "instantiating a core module")
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
        if not native.export_get(self.context, ctypes.byref(inst), data, len(data), ctypes.byref(ext)):
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

    def _new_func(self, params: list[str], results: list[str], tramp: Callable[..., int], i32_args: bool = False,
                  u64_args: bool = False, direct: bool = False) -> Any:
        """A core function whose body is ``tramp(args)``; with ``i32_args`` (all parameters
        and results i32), ``args`` is a pointer to i32s (``native.host_entry_i32``); with
        ``u64_args``, to 64-bit words (``native.host_entry_u64``). With ``direct`` (and one
        of those), ``tramp(env, caller, args, nargs)`` is the native callback itself (see
        ``native.RETIRED``): it must check ``may_leave`` of its instance before anything
        else and turn every exception into a trap."""
        env = next(native.env_ids)
        entry_addr = None
        if direct:
            assert i32_args or u64_args
            thunk = (native.ENTRY_U32 if i32_args else native.ENTRY_U64)(tramp)
            self._direct[env] = thunk
            # Its code address (read from it: ctypes.cast would tie it into a reference cycle).
            entry_addr = ctypes.c_void_p.from_buffer(thunk).value
        else:
            native.TRAMPOLINES[env] = weakref.ref(tramp)
            self._tramps.append(tramp)
            self._envs.append(env)
        # wasmtime ties a function type to the first engine it is used with: cache them per
        # component (which belongs to one engine), never globally.
        key = (tuple(params), tuple(results))
        fty = self.component.functypes.get(key)
        if fty is None:
            fty = self.component.functypes[key] = native.core_functype(params, results)
        func = ffi.wasmtime_func_t()
        if i32_args:
            assert all(t == "i32" for t in (*params, *results))
            native.func_new_any(self.context_addr, ctypes.cast(fty.ptr(), ctypes.c_void_p), entry_addr or native.HOST_ENTRY_I32_ADDR,
                                env, native.FORGET_TRAMPOLINE_ADDR, ctypes.addressof(func))
        elif u64_args:
            native.func_new_any(self.context_addr, ctypes.cast(fty.ptr(), ctypes.c_void_p), entry_addr or native.HOST_ENTRY_U64_ADDR,
                                env, native.FORGET_TRAMPOLINE_ADDR, ctypes.addressof(func))
        else:
            native.func_new(self.context, fty.ptr(), native.host_entry, env, native.forget_trampoline, ctypes.byref(func))
        ext = ffi.wasmtime_extern_t()
        ext.kind = native.EXTERN_FUNC
        ext.of.func = func
        return ext

    def memcx_for(self, opts: Opts, st: ComponentState) -> canon.MemCx:
        key = (st.cid, id(opts.memory), id(opts.realloc), opts.encoding)
        m = self._memcx.get(key)
        if m is None:
            memory = realloc = None
            if opts.memory is not None:
                ext = self.core_item(opts.memory)
                if ext.kind != native.EXTERN_MEMORY:
                    raise LinkError("canon option (memory) is not a memory")
                memory = ext.of.memory
            if opts.realloc is not None:
                realloc = self.checked_func(opts.realloc, ["i32", "i32", "i32", "i32"], ["i32"], "realloc")
            m = canon.MemCx(st, memory, realloc, opts.encoding)
            self._memcx[key] = m
        return m

    def checked_func(self, item: Any, params: list[str], results: list[str], what: str) -> Any:
        """A core function whose type must be exactly ``params -> results`` (the calls into
        it are unchecked, so a wrong type would be undefined behaviour, not a trap)."""
        ext = self.core_item(item)
        if ext.kind != native.EXTERN_FUNC:
            raise LinkError(f"{what} is not a function")
        func = ext.of.func
        if id(item) not in self._checked:
            fty = FuncType._from_ptr(ffi.wasmtime_func_type(self.context, ctypes.byref(func)), None)
            actual = ([str(p) for p in fty.params], [str(r) for r in fty.results])
            if actual != (params, results):
                raise LinkError(f"{what} has core type {actual}, expected {(params, results)}")
            self._checked.add(id(item))
        return func

    def call_setup(self, callee: ComponentState, lifted: Lifted) -> lift.CallSetup:
        key = (callee.cid, id(lifted))
        setup = self._setups.get(key)
        if setup is None:
            setup = self._setups[key] = lift.CallSetup(callee, lifted)
        return setup

    # --- memory and calls into the guest ---------------------------------------------------
    def memory_state(self, memory: Any) -> MemoryState:
        """The one ``MemoryState`` of ``memory`` (each ``MemCx`` of it holds it)."""
        st = self._memories.get(id(memory))
        if st is None:
            st = self._memories[id(memory)] = MemoryState(self.context_addr, memory)
        return st

    def memory_view(self, memory: Any) -> memoryview:
        return self.memory_state(memory).current()

    def memory_size_seen(self, memory: Any) -> int:
        """The size of ``memory`` when a view of it was last made (a lower bound of its
        size now: a linear memory never shrinks), without a call into wasmtime."""
        st = self._memories.get(id(memory))
        return max(st.size, 0) if st is not None else 0

    def memory_base(self, memory: Any) -> int:
        st = self._memories.get(id(memory))
        return st.base if st is not None else 0

    def call_core(self, func: Any, args: list[Any], params: list[str], results: list[str]) -> list[Any]:
        n = max(len(params), len(results), 1)
        raw_vals = native.RAW_ARRAYS[n]() if n < len(native.RAW_ARRAYS) else (ffi.wasmtime_val_raw_t * n)()
        writers, readers = native.WRITERS, native.READERS
        for i, (t, x) in enumerate(zip(params, args)):
            writers[t](raw_vals[i], x)
        trap = native.TRAP_P()
        err = native.func_call(self.context, ctypes.byref(func), raw_vals, n, ctypes.byref(trap))
        if err or trap:
            callback_guard.raise_pending()
            native.raise_if_failed(err, trap, None)
        return [readers[t](raw_vals[i]) for i, t in enumerate(results)]

    def call_callback(self, func_addr: int, code: int, p1: int, p2: int) -> int:
        """Call an async lift's callback (its address: ``CallSetup.callback_addr``) with an
        event: the packed code it returns. This runs once per event: one call frame from the
        pool, arguments packed in one go, no per-value ctypes objects."""
        frames = self.frames
        frame = frames.pop() if frames else native.CallFrame()
        try:
            view = frame.view
            native.PACK_CALLBACK_ARGS(view, 0, code, p1, p2, 0)
            # _call_frame(func_addr, frame, 3), inline: once per event
            err = native.func_call(self.context_addr, func_addr, frame.addr, 3, frame.trap_addr)
            result, trap = native.FRAME_RESULT_AND_TRAP(view, 0)
            if err or trap:
                callback_guard.raise_pending()
                native.raise_if_failed(err, frame.trap(), None)
            return result  # type: ignore[no-any-return]
        finally:
            frames.append(frame)

    def raw_realloc(self, func: Any, align: int, size: int) -> int:
        frames = self.frames
        frame = frames.pop() if frames else native.CallFrame()
        try:
            native.PACK_REALLOC_ARGS(frame.view, 0, align, size, 0)
            return self._call_frame(ctypes.addressof(func), frame, 4)
        finally:
            frames.append(frame)

    def _call_frame(self, func_addr: int, frame: native.CallFrame, n: int) -> int:
        """Call the function at ``func_addr`` with the ``n`` arguments packed in ``frame``:
        its one i32 result."""
        err = native.func_call(self.context_addr, func_addr, frame.addr, n, frame.trap_addr)
        result, trap = native.FRAME_RESULT_AND_TRAP(frame.view, 0)
        if err or trap:
            callback_guard.raise_pending()
            native.raise_if_failed(err, frame.trap(), None)
        return result  # type: ignore[no-any-return]

    # --- waiting with guest code on the stack ---------------------------------------------
    def wait_leaving_stack(self, done: Callable[[], bool], what: str) -> None:
        """Wait (running the store's work) with every instance on the stack open to entry,
        as the spec's suspended threads leave them, then close them again."""
        frames = list(self.entered)
        for entering in frames:
            for st in entering:
                st.may_enter = True
        try:
            # With guest code below on the stack, tasks that only yield cannot be waiting for
            # anything but it: a livelock after a while (2 s), not a hang.
            self.scheduler.wait_until(done, what, livelock_after=2.0 if frames else None)
        finally:
            for entering in frames:
                for st in entering:
                    st.may_enter = False

    def yield_stack(self) -> None:
        """``thread.yield``: let every ready task (guest or host) run once, then go on."""
        frames = list(self.entered)
        for entering in frames:
            for st in entering:
                st.may_enter = True
        try:
            scheduler = self.scheduler
            scheduler.run_ready(guests=True)
            scheduler.poll(block=False)
            scheduler.run_ready(guests=True)
        finally:
            for entering in frames:
                for st in entering:
                    st.may_enter = False

    def wait_for_host_call(self, done: Callable[[], bool]) -> None:
        """The embedder waits for its export call (nothing of the guest on the stack)."""
        self.scheduler.wait_until(done, "the export call waits for the guest's task")

    # --- canon items ----------------------------------------------------------------------
    def _builtin(self, item: ResourceBuiltin) -> Any:
        """``resource.new/rep/drop`` on the table of the component instance that defines them."""
        st = self.components[item.cid]
        rt = item.resource
        key = _key(rt)
        if item.op == "new":
            if not isinstance(rt, DefinedResource):
                raise LinkError("resource.new of a resource the component does not define")

            def new(args: Any) -> int:
                try:
                    args[0].i32 = st.add(_HandleEntry(rt, args[0].i32 & 0xFFFF_FFFF, True))
                    return 0
                except Trap as e:
                    return native.trap_ptr(f"resource.new: {e}")
            return self._new_func(["i32"], ["i32"], new)
        if item.op == "rep":
            if not isinstance(rt, DefinedResource):
                raise LinkError("resource.rep of a resource the component does not define")

            def rep(args: Any) -> int:
                try:
                    entry = st.get(args[0].i32 & 0xFFFF_FFFF)
                    if entry.key is not key:
                        raise Trap(f"handle index {args[0].i32 & 0xFFFF_FFFF} is not of this resource type")
                    args[0].i32 = entry.rep
                    return 0
                except Trap as e:
                    return native.trap_ptr(f"resource.rep: {e}")
            return self._new_func(["i32"], ["i32"], rep)
        dtor = None
        if isinstance(rt, DefinedResource) and rt.dtor is not None:
            dtor = self.checked_func(rt.dtor, ["i32"], [], "resource destructor")

        def drop(args: Any) -> int:
            h = args[0].i32 & 0xFFFF_FFFF
            try:
                st.drop_handle(h, key, dtor)
                return 0
            except GuestExit as e:
                self.state.exit_code = e.code
                return native.trap_ptr(f"guest exited with code {e.code}")
            except WasmtimeError as e:
                return native.trap_ptr(f"resource destructor trapped: {e}")
            except Trap as e:
                return native.trap_ptr(f"resource.drop: {e}")
        return self._new_func(["i32"], [], drop)

    def _async_builtin(self, item: Builtin) -> Any:
        st = self.components[item.cid]
        params, results, body = builtins.make(st, item)
        readers = native.readers(params)
        writers = [native.writer(t) for t in results]
        op = item.op
        if getattr(body, "direct", False):  # the built-in is its own native callback
            wide = getattr(body, "u64_args", False)
            return self._new_func(params, results, body, i32_args=not wide, u64_args=wide, direct=True)

        def failed(e: Exception) -> int:
            return builtins.trap_for(st, op, e)

        n_in = len(params)
        # The common shape without per-argument reader calls: up to three i32 arguments and
        # at most one i32 result (stream.read/write, the drops, ...).
        plain = all(t == "i32" for t in params) and n_in <= 3 and (results == [] or results == ["i32"])
        has_result = bool(results)

        # Plain ones are direct trampolines (native.RETIRED) taking their arguments as i32s
        # (native.ENTRY_U32, unsigned): value i at [i * k]. After the instance closed, each refuses.
        k = native.I32_STRIDE
        interrupted = native.interrupted
        if plain:
            k2 = 2 * k

            def tramp(env: Any, caller: Any, args: Any, nargs: int) -> int:
                if not st.may_leave and self.closed_:
                    return native.trap_ptr(native.CLOSED_MESSAGE)
                try:
                    try:
                        # The argument list by count, not by a comprehension (a frame of its
                        # own); unsigned already (native.ENTRY_U32).
                        if n_in == 1:
                            out = body([args[0]])
                        elif n_in == 2:
                            out = body([args[0], args[k]])
                        elif n_in == 0:
                            out = body([])
                        else:
                            out = body([args[0], args[k], args[k2]])
                        if has_result:
                            args[0] = out[0]
                        return 0
                    except Exception as e:  # noqa: BLE001 - failed() turns every failure into the guest's trap
                        return failed(e)
                except BaseException as e:  # noqa: BLE001 - see callback_guard (and a failure of failed())
                    return interrupted(e)
        else:
            def tramp(args: Any) -> int:  # type: ignore[misc]
                try:
                    out = body([r(args[i]) for i, r in enumerate(readers)])
                    for i, w in enumerate(writers):
                        w(args[i], out[i])
                    return 0
                except Exception as e:  # noqa: BLE001 - failed() turns every failure into the guest's trap
                    return failed(e)

        return self._new_func(params, results, tramp, i32_args=plain, direct=plain)

    def _lower(self, item: Lowered) -> Any:
        st = self.components[item.cid]
        m = st.memcx(item.opts)
        target = item.target
        if isinstance(target, Lifted):
            callee = self.components[target.cid]
            params, results = target.type.async_lower_core_type() if item.opts.async_ else target.type.lower_core_type()
            return self._new_func(params, results, make_c2c_trampoline(st, m, item.opts.async_, callee, target))
        spec = self.bound.specs.get(id(target))
        if spec is None:
            fn = self.bound.funcs.get(id(target))
            if fn is None:
                raise LinkError(f"the component needs an import this host does not provide: {target.interface}#{target.name}")
            spec = self.bound.specs[id(target)] = LowerSpec(fn, target.type)
        if item.opts.async_:
            params, results = target.type.async_lower_core_type()
            tramp = make_async_trampoline(st, spec, m)
            return self._new_func(params, results, tramp, u64_args=True, direct=True)
        params, results = spec.core_type
        if words_only(spec):  # (every WASI signature: handles, pointers, lengths, integers)
            return self._new_func(params, results, make_trampoline(st, spec, m, words=True), u64_args=True, direct=True)
        return self._new_func(params, results, make_trampoline(st, spec, m))

    # --- canon lift -------------------------------------------------------------------------------
    def call_export(self, lifted: Lifted, args: tuple[Any, ...]) -> Any:
        """Call a lifted export with Python values (see ``lift.py``). Raises ``TypeError`` for
        values that do not fit its types and ``WasmtimeError`` for a trap; a trapped instance
        cannot be entered again."""
        ft = lifted.type
        if len(args) != len(ft.params):
            raise TypeError(f"expected {len(ft.params)} arguments, got {len(args)}")
        if self.closed:
            raise WasmtimeError("the component instance is closed")
        callee = self.components[lifted.cid]
        try:
            return lift.call_from_host(callee, lifted, args)
        except lift.ArgumentsRefused as e:  # the embedder's values do not fit the export's types
            raise TypeError(str(e)) from None
        except (Trap, WasmtimeError) as e:
            if str(e).startswith("cannot enter component instance"):
                raise WasmtimeError(str(e)) from None
            # A trap takes the instance out, as in wasmtime: its state may be half-updated.
            callee.poisoned = _trap_summary(str(e))
            raise WasmtimeError(str(e)) from None

    def lookup_export(self, path: list[str]) -> Lifted | None:
        node: Any = self.component.plan.exports
        for name in path:
            if not isinstance(node, dict) or name not in node:
                return None
            node = node[name]
        return node if isinstance(node, Lifted) else None

    def close(self) -> None:
        if self.closed_:
            return
        self.closed_ = True
        for env in self._envs:
            native.TRAMPOLINES.pop(env, None)
        self._envs.clear()
        self._tramps.clear()
        # Direct trampolines refuse every call from now on; wasmtime may still make one while
        # the store lives, so their callbacks stay until it frees the functions, and the store
        # is no longer this instance's to keep (see native.RETIRED).
        for st in self.components:
            st.may_leave = False
        native.RETIRED.update(self._direct)
        self._direct = {}
        self.store = None  # type: ignore[assignment]
        # Each MemCx points back here: without this the cycle would keep the store (its
        # linear memories, the mapped module files) alive until a GC pass.
        self._memcx.clear()
        self._setups.clear()
        self._memories.clear()
        self.frames.clear()
        self.components.clear()
        # (``entered`` is left as it is: the calls on the stack, if it closed during one, pop
        # their entries as they return, and it is empty then.)
        self.runner = None  # type: ignore[assignment]  # it was itself: a cycle only a GC pass would break


def _trap_summary(message: str) -> str:
    """The trap's cause in one line (without the wasm backtrace)."""
    _, sep, cause = message.rpartition("Caused by:")
    text = cause if sep else message
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else message


__all__ = ["BoundHost", "ComponentInstance", "CoreComponent", "GuestResource", "LinkError", "bind"]
