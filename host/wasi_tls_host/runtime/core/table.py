"""One component instance's own state (the spec's ``ComponentInstance``): its handle table,
which holds resource handles and the async ABI's waitables, waitable sets and error contexts
in one index space, its reentrance and backpressure flags, and the task running in it.

A component and each component it instantiates have their own (``ComponentState``); the
core runtime's ``ComponentInstance`` (instance.py) is the outermost one and also runs the
core modules of all of them in one store, so the methods that call into wasm go through it.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from ..records import Fields
from ..resources import ResourceKind
from ..scheduler import Event, Scheduler
from ..store import StoreState
from ..streams import UNSET, Future, Stream
from ..values import Trap
from . import canon
from .concurrent import (
    CopyState, ErrorContext, EventCode, ReadableFutureEnd, ReadableStreamEnd, Subtask, Task,
    Waitable, WaitableSet,
)
from .types import DefinedResource, FutureT, ImportedResource, ResourceT, StreamT, same_type

if TYPE_CHECKING:
    from .instance import ComponentInstance

_IDLE = CopyState.IDLE  # (an enum member read through its class costs a descriptor call)


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


class GuestResource(Fields):
    """An ``own`` handle of a resource the guest defines, held by the host."""

    resource: DefinedResource
    rep: int

    _fields = ("resource", "rep")

    def __init__(self, resource: DefinedResource, rep: int) -> None:
        self.resource = resource
        self.rep = rep


class ComponentState:
    """The handle table and flags of one component instance (see the module's docstring)."""

    def __init__(self, runner: ComponentInstance, cid: int, parent: ComponentState | None) -> None:
        self.runner = runner
        self.cid = cid
        self.parent = parent
        # The instances that (transitively) instantiate this one: fixed at creation, and read
        # on every entry (``run_core``), so computed once (without ``self``: no cycle).
        self.ancestors: tuple[ComponentState, ...] = (parent, *parent.ancestors) if parent is not None else ()
        # One table for resource handles and the async ABI's waitables, waitable sets and
        # error contexts, as in the spec (their indices share one space).
        self.handles: list[Any] = [None]
        # Indices free again, the last freed taken first. A deque: an async call's subtask
        # takes an index and its drop gives it back on every round trip, and a list going
        # from one entry to none and back reallocates its items each time.
        self.free: deque[int] = deque()
        self.may_enter = True
        self.may_leave = True  # false during realloc and post-return: built-ins trap
        self.current_task: Task | None = None
        self._no_task_storage = [0, 0]  # context.get/set outside any task (a core start function)
        self.backpressure = 0
        self.poisoned: str | None = None  # why the instance trapped (it cannot be entered again)
        # The task whose core code may not interleave with another's (CanonicalABI
        # exclusive_thread); tasks waiting to enter (backpressure, the exclusive lock) wait
        # on enter_gate. Each release sets the gate and puts a fresh one in its place: every
        # waiter wakes once, checks again and waits on the new gate if still held back (a gate
        # that stayed set would let a waiter spin).
        self.exclusive: Task | None = None
        self.enter_gate = Event()
        self.waiting_to_enter = 0
        self.live_tasks = 0
        self._scheduler: Scheduler | None = None  # (see ``scheduler``)

    @property
    def state(self) -> StoreState:
        return self.runner.state

    @property
    def closed(self) -> bool:
        return self.runner.closed

    # --- what goes through the runner (one store, one set of core instances) -----------------
    def memcx(self, opts: Any) -> canon.MemCx:
        return self.runner.memcx_for(opts, self)

    def memory_view(self, memory: Any) -> memoryview:
        return self.runner.memory_view(memory)

    def memory_base(self, memory: Any) -> int:
        return self.runner.memory_base(memory)

    def call_core(self, func: Any, args: list[Any], params: list[str], results: list[str]) -> list[Any]:
        return self.runner.call_core(func, args, params, results)

    def call_realloc(self, func: Any, align: int, size: int) -> int:
        may_leave, self.may_leave = self.may_leave, False
        try:
            return self.runner.raw_realloc(func, align, size)
        finally:
            self.may_leave = may_leave

    def release_exclusive(self) -> None:
        self.exclusive = None
        self.open_gate()

    def open_gate(self) -> None:
        """Wake the tasks waiting to enter (backpressure or the exclusive lock was released).
        A gate nobody waits at stays as it is (a callback task releases its lock at every
        wait: no new Event each time)."""
        gate = self.enter_gate
        if gate.has_waiters():
            self.enter_gate = Event()
            gate.set()

    def has_other_tasks(self) -> bool:
        return self.live_tasks > 0

    def run_core(self, task: Task, caller: ComponentState | None, call: Callable[..., Any], *args: Any) -> Any:
        """Run core code of ``task`` in this instance: enter it (and the ancestors the caller
        is not already in, CanonicalABI ``enter_from``), make ``task`` current, ``call(*args)``
        (``runner.call_core`` or ``runner.call_callback``), leave."""
        # Built per call, not kept: a tuple on the instance holding the instance itself would
        # be a reference cycle, and the store (its memories, mapped code) would wait for a GC pass.
        entering = self.self_and_ancestors() if caller is None else self.entering_set(caller)
        for st in entering:
            if not st.may_enter:
                raise Trap("cannot enter component instance: it is already running (reentrance)")
        for st in entering:
            st.may_enter = False
        entered = self.runner.entered
        entered.append(entering)
        outer, self.current_task = self.current_task, task
        self.live_tasks += 1
        try:
            return call(*args)
        finally:
            self.live_tasks -= 1
            self.current_task = outer
            entered.pop()
            for st in entering:
                st.may_enter = True

    # --- reentrance (CanonicalABI.md, "Component Instances") --------------------------------
    def self_and_ancestors(self) -> tuple[ComponentState, ...]:
        return (self, *self.ancestors)

    def entering_set(self, caller: ComponentState | None) -> tuple[ComponentState, ...]:
        if caller is None:
            return (self, *self.ancestors)
        outer = caller.self_and_ancestors()
        return tuple(st for st in (self, *self.ancestors) if st not in outer)

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
        return GuestResource(rt, entry.rep)  # type: ignore[arg-type]

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
            scope.num_borrows += 1
            scope.temp_reps.append((rep, rt.kind))
            return self.add(_HandleEntry(rt.kind, rep, False, scope))
        if isinstance(obj, GuestResource) and obj.resource is rt:
            if isinstance(rt, DefinedResource) and rt.cid == self.cid:
                return obj.rep  # lent to its own implementer: the rep is all it can use (lower_borrow)
            scope.num_borrows += 1
            return self.add(_HandleEntry(rt, obj.rep, False, scope))
        raise Trap(f"expected a handle of this component's own resource, got {obj!r}")

    def drop_handle(self, h: int, key: Any, dtor: Any) -> None:
        entry = self.get(h)
        if entry.key is not key:
            raise Trap(f"handle index {h} is not of the dropped resource type")
        if entry.lends:
            raise Trap(f"handle index {h} is lent out and cannot be dropped")
        self.remove(h)
        if not entry.own:
            if entry.scope is not None:
                entry.scope.num_borrows -= 1
            return
        if isinstance(key, ResourceKind):
            self.state.table.drop(entry.rep)
        elif dtor is not None:
            self.call_core(dtor, [entry.rep], ["i32"], [])

    # --- the async ABI: waiting, streams and futures crossing --------------------------------
    @property
    def scheduler(self) -> Scheduler:
        # Asked by every drop of a stream or future end: kept once made (a store's scheduler
        # is made on first use and never replaced).
        scheduler = self._scheduler
        if scheduler is None:
            scheduler = self._scheduler = self.state.scheduler
        return scheduler

    def block_until(self, done: Callable[[], bool], what: str) -> None:
        """Run the store's work until ``done()``; the current task blocks meanwhile (only
        ``async`` functions may: a synchronous one, or a start function, traps, as the spec
        says). While it waits, the instances on the stack may be entered again, as when the
        spec's thread suspends (their flags are restored when the wait ends)."""
        scheduler = self.scheduler
        scheduler.run_ready()
        if done():
            return
        task = self.current_task
        if task is None or (not task.ft.is_async and task.state != Task.RESOLVED):
            raise Trap(f"cannot block a synchronous task before returning ({what})")
        self.runner.wait_leaving_stack(done, what)

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

    def cancel_subtask(self, subtask: Subtask) -> None:
        """Ask the callee behind ``subtask`` to stop: a host function's coroutine gets
        Cancelled; another component's task TASK_CANCELLED (or ends, if it had not started)."""
        if subtask.callee_task is not None:
            subtask.callee_task.request_cancellation()
            driver = subtask.host_task
            if driver is not None and not driver.done:
                # A task waiting in its event loop hears of it at once (as the spec resumes
                # it inside request_cancellation, entering from the caller), so a prompt
                # task.cancel resolves it now.
                subtask.callee_task.resume_caller = self
                try:
                    self.scheduler.run_now(driver)
                finally:
                    subtask.callee_task.resume_caller = None
            return
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
        # The usual case first (an idle readable end of t's element type, in no set); anything
        # else gets the checks below and their traps.
        handles = self.handles
        e = handles[h] if 0 < h < len(handles) else None
        if (type(e) is (ReadableStreamEnd if type(t) is StreamT else ReadableFutureEnd) and e.state is _IDLE
                and e.wset is None and (e.shared.t is t.elem or same_type(e.shared.t, t.elem))):
            handles[h] = None  # self.remove(h), inline
            self.free.append(h)
            return e.shared
        return self._lift_async_end_checked(h, t)

    def _lift_async_end_checked(self, h: int, t: StreamT | FutureT) -> Stream | Future:
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
        # The usual case first (a host-made end crossing for the first time, or an end of
        # t's own element type); anything else gets the checks below and their traps.
        is_stream = type(t) is StreamT
        if type(value) is (Stream if is_stream else Future):
            vt = value.t
            if vt is UNSET:
                value.t = vt = t.elem
            if vt is t.elem or same_type(vt, t.elem):
                return self.add(ReadableStreamEnd(value) if is_stream else ReadableFutureEnd(value))
        return self._lower_async_end_checked(value, t)

    def _lower_async_end_checked(self, value: Any, t: StreamT | FutureT) -> int:
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


def _same_memory(a: Any, b: Any) -> bool:
    """Whether two ``wasmtime_memory_t`` values name one memory instance (the structs are
    copies: compare the store and the indices, not the Python objects or their padding)."""
    if a is None or b is None:
        return a is b
    return _memory_id(a) == _memory_id(b)


def _memory_id(memory: Any) -> tuple[int, ...]:
    anon = getattr(memory, "_anon_1", None)
    if anon is None:  # another wasmtime-py layout: every field that is not padding
        return tuple(getattr(memory, name) for name, *_ in memory._fields_)
    return (anon.store_id, getattr(anon, "__private1"), getattr(memory, "__private2"))


__all__ = ["ComponentState", "GuestResource"]
