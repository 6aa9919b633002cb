"""The async ABI's ``canon`` built-ins (CanonicalABI.md, "Canonical Definitions"), one
function each, as the spec defines them, over the state of ``concurrent.py``.

``make(inst, item)`` gives a planned ``Builtin`` its core signature and body; the body
takes the raw core values and returns the results (or raises ``Trap``, whose message the
trampoline turns into the guest's trap). Trap messages start with what wasmtime says for
the same misuse (the spec's tests match on them), then say more where it helps.
"""

from __future__ import annotations

import struct
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from ..binding import host_call_failure
from ..streams import CopyResult, Future, Stream
from ..values import Trap
from . import canon, native
from .concurrent import (
    BLOCKED, END_CLASSES, CopyEnd, CopyState, ErrorContext, EventCode, GuestBuffer, ReadableFutureEnd,
    ReadableStreamEnd, Subtask, Task, Waitable, WaitableSet, WritableFutureEnd, WritableStreamEnd, buffer_facts,
)
from .plan import Builtin
from .types import MAX_FLAT_PARAMS, FutureT, StreamT, align_to, same_type

if TYPE_CHECKING:
    from .instance import ComponentInstance

# (core params, core results, body(args) -> list of results)
Made = tuple[list[str], list[str], Callable[[list[int]], list[Any]]]

_SYNC_WAITER = "waitable cannot be used synchronously while added to a waitable set"
_NO_RESULTS: list[Any] = []  # never changed: the trampoline only reads a body's results
_PENDING_CANCEL = Task.PENDING_CANCEL
_IDLE = CopyState.IDLE
_CANCELLED_EVENT = (int(EventCode.TASK_CANCELLED), 0, 0)


def make(inst: ComponentInstance, item: Builtin) -> Made:
    factory = _FACTORIES.get(item.op)
    if factory is None:
        raise Trap(f"canon {item.op} is not implemented")
    return factory(inst, item)


def _guard(inst: ComponentInstance, op: str) -> None:
    if not inst.may_leave:
        if inst.closed:  # closing clears may_leave (see native.RETIRED)
            raise Trap(f"{op}: {native.CLOSED_MESSAGE}")
        raise Trap(f"{op}: cannot leave the component instance during realloc or post-return")


def trap_for(inst: ComponentInstance, op: str, e: Exception) -> int:
    """The guest's trap (its address) for a built-in's failure: a ``Trap`` says what the
    guest did wrong (prefixed with the built-in's name); anything else is a call into the
    guest (realloc) that trapped, or a host bug."""
    if isinstance(e, Trap):
        message = str(e)
        return native.trap_ptr(message if message.startswith(op) else f"{op}: {message}")
    state = inst.state
    return native.trap_ptr(host_call_failure(f"canon {op}", e, lambda code: setattr(state, "exit_code", code)))


def direct(body: Callable[..., int]) -> Callable[..., int]:
    """Mark a built-in's body as a direct trampoline: it takes ``(env, caller, args, nargs)``
    (``args`` its i32 arguments, unsigned, value i at ``args[i * native.I32_STRIDE]``), checks
    ``may_leave`` first and turns every exception into a trap itself (see native.RETIRED).
    The built-ins on an async call's round trip are written so: one Python frame a call.
    One that sets ``u64_args`` gets its values as unsigned 64-bit words instead
    (``native.ENTRY_U64``, value i at ``args[i * native.U64_STRIDE]``)."""
    body.direct = True  # type: ignore[attr-defined]
    return body


def _table_get(inst: ComponentInstance, i: int, cls: type | tuple[type, ...], what: str) -> Any:
    e = inst.get(i)
    if not isinstance(e, cls):
        raise Trap(f"handle index {i} is not a {what} (it is a {getattr(e, 'what', 'resource handle')})")
    return e


def _table_remove(inst: ComponentInstance, i: int, cls: type | tuple[type, ...], what: str) -> Any:
    e = _table_get(inst, i, cls, what)
    inst.remove(i)
    return e


def _current_task(inst: ComponentInstance, op: str) -> Task:
    task = inst.current_task
    if task is None:
        raise Trap(f"{op}: no task is running in this component instance")
    return task


# --- tasks ------------------------------------------------------------------------------------------


def _task_return(inst: ComponentInstance, item: Builtin) -> Made:
    result_t = item.type
    opts = item.opts
    flat = result_t.flat if result_t is not None else []
    spill = len(flat) > MAX_FLAT_PARAMS
    params = ["i32"] if spill else list(flat)
    m = inst.memcx(opts) if opts is not None else None
    c = canon.conv(result_t) if result_t is not None else None
    # The options matter only where the value needs them (as wasmtime checks, and the spec's
    # tests expect: a task.return without a memory may end a lift that has one).
    needs_memory = result_t is not None and (spill or _uses_memory(result_t))

    def task_return(args: list[int]) -> list[Any]:
        _guard(inst, "task.return")
        task = _current_task(inst, "task.return")
        if not task.opts.async_:
            raise Trap("task.return: the current task was not lifted async (it returns its value by returning)")
        if not same_type(result_t, task.ft.result):
            raise Trap("task.return: invalid `task.return` signature and/or options for current task "
                       f"(result type {result_t.signature() if result_t else 'none'}, the export returns "
                       f"{task.ft.result.signature() if task.ft.result else 'none'})")
        if needs_memory and not inst.same_lift_options(m, task.mem):
            raise Trap("task.return: invalid `task.return` signature and/or options for current task "
                       "(its memory or string encoding differs from the export's)")
        value = None
        if c is not None:
            assert m is not None
            m.forget()
            if spill:
                ptr = args[0] & 0xFFFF_FFFF
                if ptr != align_to(ptr, result_t.align):
                    raise Trap(f"task.return: result pointer {ptr:#x} is misaligned")
                v = m.view()
                canon.check_range(v, ptr, result_t.size, "task.return result")
                value = c.load(m, v, ptr)
            else:
                value, _ = c.lift_flat(m, [a for a in args], 0)
        task.return_(value)
        return []

    return params, [], task_return


def _uses_memory(t: Any) -> bool:
    """Whether lifting a value of type ``t`` reads memory (strings and lists)."""
    from .types import ListT, Prim, Record, Tuple, Variant

    if isinstance(t, ListT) or (isinstance(t, Prim) and t.name == "string"):
        return True
    if isinstance(t, Record):
        return any(_uses_memory(ft) for _, ft in t.fields)
    if isinstance(t, Tuple):
        return any(_uses_memory(et) for et in t.elems)
    if isinstance(t, Variant):
        return any(ct is not None and _uses_memory(ct) for _, ct in t.cases)
    return False


def _task_cancel(inst: ComponentInstance, item: Builtin) -> Made:
    def task_cancel(args: list[int]) -> list[Any]:
        _guard(inst, "task.cancel")
        task = _current_task(inst, "task.cancel")
        if not task.opts.async_:
            raise Trap("task.cancel: the current task was not lifted async")
        task.cancel()
        return []

    return [], [], task_cancel


def _context_get(inst: ComponentInstance, item: Builtin) -> Made:
    i = item.index
    runner, interrupted, closed = inst.runner, native.interrupted, native.CLOSED_MESSAGE

    # Direct (a guest's async runtime asks for its task's context around every wait): as the
    # plain trampoline, only a closed instance refuses it (realloc may use it).
    @direct
    def context_get(env: Any, caller: Any, args: Any, nargs: int) -> int:
        try:
            try:
                if not inst.may_leave and runner.closed_:
                    return native.trap_ptr(closed)
                task = inst.current_task  # inst.context_storage(), inline
                args[0] = (task.storage if task is not None else inst._no_task_storage)[i]
                return 0
            except Exception as e:  # noqa: BLE001 - every failure is the guest's trap
                return trap_for(inst, "context.get", e)
        except BaseException as e:  # noqa: BLE001 - see callback_guard
            return interrupted(e)

    return [], ["i32"], context_get


def _context_set(inst: ComponentInstance, item: Builtin) -> Made:
    i = item.index
    runner, interrupted, closed = inst.runner, native.interrupted, native.CLOSED_MESSAGE

    @direct
    def context_set(env: Any, caller: Any, args: Any, nargs: int) -> int:
        try:
            try:
                if not inst.may_leave and runner.closed_:
                    return native.trap_ptr(closed)
                task = inst.current_task  # inst.context_storage(), inline
                (task.storage if task is not None else inst._no_task_storage)[i] = args[0]  # (unsigned: ENTRY_U32)
                return 0
            except Exception as e:  # noqa: BLE001 - every failure is the guest's trap
                return trap_for(inst, "context.set", e)
        except BaseException as e:  # noqa: BLE001 - see callback_guard
            return interrupted(e)

    return ["i32"], [], context_set


def _backpressure(delta: int) -> Callable[[ComponentInstance, Builtin], Made]:
    def factory(inst: ComponentInstance, item: Builtin) -> Made:
        def backpressure(args: list[int]) -> list[Any]:
            inst.backpressure += delta
            if inst.backpressure >= 2**16:
                raise Trap("backpressure.inc: backpressure counter overflow (65536 increments)")
            if inst.backpressure < 0:
                inst.backpressure = 0
                raise Trap("backpressure.dec: backpressure counter underflow (more decrements than increments)")
            if inst.backpressure == 0:
                inst.open_gate()
            return []

        return [], [], backpressure

    return factory


def _thread_yield(inst: ComponentInstance, item: Builtin) -> Made:
    cancellable = item.flag

    def thread_yield(args: list[int]) -> list[Any]:
        _guard(inst, "thread.yield")
        task = inst.current_task
        if task is not None and task.deliver_pending_cancel(cancellable):
            return [1]
        inst.runner.yield_stack()  # other tasks (and host work) get a turn
        return [0]

    return [], ["i32"], thread_yield


def _thread_index(inst: ComponentInstance, item: Builtin) -> Made:
    def thread_index(args: list[int]) -> list[Any]:
        return [1]  # each task has its implicit thread only (thread.new-indirect is refused at load)

    return [], ["i32"], thread_index


# --- waitables ---------------------------------------------------------------------------------------


def _unpack_event(inst: ComponentInstance, m: canon.MemCx, ptr: int, event: tuple[int, int, int]) -> list[Any]:
    code, p1, p2 = event
    if ptr & 3:
        raise Trap(f"event pointer {ptr:#x} is not 4-byte aligned")
    v = m.view()
    if ptr + 8 > len(v):
        canon.check_range(v, ptr, 8, "event")
    _EVENT_PAYLOADS(v, ptr, p1 & 0xFFFF_FFFF, p2 & 0xFFFF_FFFF)
    return [int(code)]


_EVENT_PAYLOADS = struct.Struct("<II").pack_into


def _waitable_set_new(inst: ComponentInstance, item: Builtin) -> Made:
    def waitable_set_new(args: list[int]) -> list[Any]:
        _guard(inst, "waitable-set.new")
        return [inst.add(WaitableSet())]

    return [], ["i32"], waitable_set_new


def _waitable_set_wait(inst: ComponentInstance, item: Builtin) -> Made:
    cancellable = item.flag
    assert item.opts is not None
    m = inst.memcx(item.opts)
    mem_state, mem_size = m.mem_state, native.mem_size_premade
    handles = inst.handles
    store_state = inst.state

    def wait(si: int, ptr: int) -> int:
        if not inst.may_leave:
            _guard(inst, "waitable-set.wait")
        wset = handles[si] if 0 < si < len(handles) else None
        if type(wset) is not WaitableSet:
            wset = _table_get(inst, si, WaitableSet, "waitable set")
        task = inst.current_task
        if task is not None and task.state == _PENDING_CANCEL and task.deliver_pending_cancel(cancellable):
            event: tuple[int, int, int] = _CANCELLED_EVENT
        else:
            # inst.wait_for_event, with block_until's first step inline: the ready host work
            # runs, and an event it (or anything before) gave the set ends the wait at once.
            wset.num_waiting += 1
            try:
                (store_state._scheduler or store_state.scheduler).run_ready()
                if not wset.ready:
                    inst.block_until(wset.has_pending_event, "the guest waits on a waitable set")
            finally:
                wset.num_waiting -= 1
            event = wset.get_pending_event()
        # _unpack_event(inst, m, ptr, event), inline: once per event
        code, p1, p2 = event
        if ptr & 3:
            raise Trap(f"event pointer {ptr:#x} is not 4-byte aligned")
        m.forget()  # the guest may have grown its memory while it waited
        if mem_state is not None:  # m.view(), inline: mem_state.current()
            size = mem_size(*mem_state.size_args)
            if size != mem_state.size:
                mem_state.grew(size)
            v = mem_state.view
        else:
            v = m.view()  # (traps: no memory)
        if ptr + 8 > len(v):
            canon.check_range(v, ptr, 8, "event")
        _EVENT_PAYLOADS(v, ptr, p1 & 0xFFFF_FFFF, p2 & 0xFFFF_FFFF)
        return int(code)

    # Its own native callback, as the other built-ins of a round trip (the wait itself stays
    # a function of its own: it may block, running the store's work under it).
    k, interrupted = native.I32_STRIDE, native.interrupted

    @direct
    def waitable_set_wait(env: Any, caller: Any, args: Any, nargs: int) -> int:
        try:
            try:
                args[0] = wait(args[0], args[k])
                return 0
            except Exception as e:  # noqa: BLE001 - every failure is the guest's trap
                return trap_for(inst, "waitable-set.wait", e)
        except BaseException as e:  # noqa: BLE001 - see callback_guard
            return interrupted(e)

    return ["i32", "i32"], ["i32"], waitable_set_wait


def _waitable_set_poll(inst: ComponentInstance, item: Builtin) -> Made:
    cancellable = item.flag
    assert item.opts is not None
    m = inst.memcx(item.opts)

    def waitable_set_poll(args: list[int]) -> list[Any]:
        _guard(inst, "waitable-set.poll")
        wset = _table_get(inst, args[0] & 0xFFFF_FFFF, WaitableSet, "waitable set")
        inst.scheduler.run_ready()
        inst.scheduler.poll(block=False)
        inst.scheduler.run_ready()
        task = inst.current_task
        if task is not None and task.deliver_pending_cancel(cancellable):
            event: tuple[int, int, int] = (EventCode.TASK_CANCELLED, 0, 0)
        elif not wset.has_pending_event():
            event = (EventCode.NONE, 0, 0)
        else:
            event = wset.get_pending_event()
        m.forget()
        return _unpack_event(inst, m, args[1] & 0xFFFF_FFFF, event)

    return ["i32", "i32"], ["i32"], waitable_set_poll


def _waitable_set_drop(inst: ComponentInstance, item: Builtin) -> Made:
    def waitable_set_drop(args: list[int]) -> list[Any]:
        _guard(inst, "waitable-set.drop")
        i = args[0] & 0xFFFF_FFFF
        wset = _table_get(inst, i, WaitableSet, "waitable set")
        if wset.num_waiting:
            raise Trap("cannot drop waitable set with waiters")
        wset.drop()
        inst.remove(i)
        return []

    return ["i32"], [], waitable_set_drop


def _waitable_join(inst: ComponentInstance, item: Builtin) -> Made:
    handles = inst.handles  # the table's list (entries are replaced in place, never the list)
    k, interrupted = native.I32_STRIDE, native.interrupted

    @direct
    def waitable_join(env: Any, caller: Any, args: Any, nargs: int) -> int:
        try:
            try:
                if not inst.may_leave:
                    _guard(inst, "waitable.join")
                wi, si = args[0], args[k]
                # The table lookups inline (this runs on every async call a guest waits for);
                # anything unexpected goes through _table_get for its message.
                try:  # (an index past the table is unknown; index 0 holds None)
                    w = handles[wi]
                except IndexError:
                    w = None
                if not isinstance(w, Waitable):
                    w = _table_get(inst, wi, Waitable, "waitable")
                if w.has_sync_waiter:
                    raise Trap(f"waitable.join: {_SYNC_WAITER}")
                if si == 0:
                    old = w.wset
                    if old is not None:  # w.join(None), inline: a guest leaves the set after each wait
                        old.elems.discard(w)
                        old.ready.pop(w, None)
                        w.wset = None
                    return 0
                try:
                    wset = handles[si]
                except IndexError:
                    wset = None
                if type(wset) is not WaitableSet:
                    wset = _table_get(inst, si, WaitableSet, "waitable set")
                if w.wset is None and w.pending_event is None:  # w.join(wset), inline: a new call's subtask
                    w.wset = wset
                    wset.elems.add(w)
                else:
                    w.join(wset)
                return 0
            except Exception as e:  # noqa: BLE001 - every failure is the guest's trap
                return trap_for(inst, "waitable.join", e)
        except BaseException as e:  # noqa: BLE001 - see callback_guard
            return interrupted(e)

    return ["i32", "i32"], [], waitable_join


# --- subtasks ---------------------------------------------------------------------------------------


def _subtask_cancel(inst: ComponentInstance, item: Builtin) -> Made:
    async_ = item.flag

    def subtask_cancel(args: list[int]) -> list[Any]:
        _guard(inst, "subtask.cancel")
        i = args[0] & 0xFFFF_FFFF
        subtask = _table_get(inst, i, Subtask, "subtask")
        if subtask.resolve_delivered():
            raise Trap("subtask.cancel: the subtask has already resolved and its result was delivered")
        if subtask.cancellation_requested:
            raise Trap("subtask.cancel: cancellation was already requested for this subtask")
        if subtask.wset is not None and not async_:
            raise Trap(f"subtask.cancel: {_SYNC_WAITER}")
        if not subtask.resolved():
            subtask.cancellation_requested = True
            inst.cancel_subtask(subtask)
            if not subtask.resolved():
                if not async_:
                    inst.wait_sync(subtask)
                else:
                    return [BLOCKED]
        code, index, payload = subtask.get_pending_event()
        return [subtask.state]

    return ["i32"], ["i32"], subtask_cancel


def _subtask_drop(inst: ComponentInstance, item: Builtin) -> Made:
    handles, free = inst.handles, inst.free
    interrupted = native.interrupted

    @direct
    def subtask_drop(env: Any, caller: Any, args: Any, nargs: int) -> int:
        try:
            try:
                if not inst.may_leave:
                    _guard(inst, "subtask.drop")
                i = args[0]
                try:  # (an index past the table is unknown; index 0 holds None)
                    subtask = handles[i]
                except IndexError:
                    subtask = None
                if type(subtask) is not Subtask:
                    subtask = _table_get(inst, i, Subtask, "subtask")
                if subtask.lenders is not None:  # not subtask.resolve_delivered()
                    raise Trap("cannot drop a subtask which has not yet resolved")
                wset = subtask.wset
                if wset is not None:  # subtask.drop(), the check just made; its join(None), inline
                    wset.elems.discard(subtask)
                    wset.ready.pop(subtask, None)
                    subtask.wset = None
                handles[i] = None  # inst.remove(i), the entry being known
                free.append(i)
                return 0
            except Exception as e:  # noqa: BLE001 - every failure is the guest's trap
                return trap_for(inst, "subtask.drop", e)
        except BaseException as e:  # noqa: BLE001 - see callback_guard
            return interrupted(e)

    return ["i32"], [], subtask_drop


# --- streams and futures ---------------------------------------------------------------------------


def _new(is_stream: bool) -> Callable[[ComponentInstance, Builtin], Made]:
    op = "stream.new" if is_stream else "future.new"
    readable_cls, writable_cls = END_CLASSES[(is_stream, True)], END_CLASSES[(is_stream, False)]
    make_shared: type[Stream | Future] = Stream if is_stream else Future

    def factory(inst: ComponentInstance, item: Builtin) -> Made:
        t = item.type.elem
        interrupted = native.interrupted

        # Its own native callback (its i64 result as a 64-bit word): a WASI 0.3 guest makes
        # a stream or future for every send and every call that returns one.
        @direct
        def new(env: Any, caller: Any, args: Any, nargs: int) -> int:
            try:
                try:
                    if not inst.may_leave:
                        _guard(inst, op)
                    shared = make_shared(t)
                    ri = inst.add(readable_cls(shared))
                    wi = inst.add(writable_cls(shared))
                    args[0] = ri | (wi << 32)
                    return 0
                except Exception as e:  # noqa: BLE001 - every failure is the guest's trap
                    return trap_for(inst, op, e)
            except BaseException as e:  # noqa: BLE001 - see callback_guard
                return interrupted(e)

        new.u64_args = True  # type: ignore[attr-defined]  # (native.ENTRY_U64: the result is an i64)
        return [], ["i64"], new

    return factory


def _end_for_copy(inst: ComponentInstance, i: int, cls: type[CopyEnd], t: StreamT | FutureT, op: str, async_: bool) -> CopyEnd:
    handles = inst.handles  # the table lookup inline (every copy); anything unexpected via _table_get
    e = handles[i] if 0 < i < len(handles) else None
    if type(e) is not cls:
        e = _table_get(inst, i, cls, _end_name(cls))
    if not same_type(e.shared.t, t.elem) and not (e.shared.t is None and t.elem is None):
        raise Trap(f"{op}: the {_end_name(cls)} at index {i} has another element type")
    if e.state != CopyState.IDLE:
        raise Trap(_busy_message(e, op))
    if e.wset is not None and not async_:
        raise Trap(f"{op}: {_SYNC_WAITER}")
    return e


def _end_name(cls: type[CopyEnd]) -> str:
    return f"{'readable' if cls.readable else 'writable'} end of a {'stream' if cls.is_stream else 'future'}"


def _busy_message(e: CopyEnd, op: str) -> str:
    kind = "stream" if e.is_stream else "future"
    if e.state == CopyState.DONE:
        if e.is_stream:
            return (f"cannot read from stream after being notified that the writable end dropped" if e.readable
                    else "cannot write to stream after being notified that the readable end dropped")
        return ("cannot read from future after previous read succeeded" if e.readable
                else "cannot write to future after previous write succeeded or readable end dropped")
    return f"{op}: cannot have concurrent operations active on a future/stream (this {kind} end already has a copy in progress)"


def _stream_copy(is_read: bool) -> Callable[[ComponentInstance, Builtin], Made]:
    op = "stream.read" if is_read else "stream.write"
    cls = ReadableStreamEnd if is_read else WritableStreamEnd
    event_code = EventCode.STREAM_READ if is_read else EventCode.STREAM_WRITE

    def factory(inst: ComponentInstance, item: Builtin) -> Made:
        stream_t = item.type
        opts = item.opts
        assert opts is not None
        async_ = opts.async_
        m = inst.memcx(opts)
        elem = stream_t.elem
        facts = buffer_facts(elem)
        handles = inst.handles  # the table's list (entries are replaced in place, never the list)

        def stream_copy(i: int, ptr: int, length: int) -> int:
            # _end_for_copy(...), inline for an idle end of this very element type (the usual
            # case); anything else gets its checks and their traps.
            e = handles[i] if 0 < i < len(handles) else None
            if type(e) is not cls or e.state is not _IDLE or (e.wset is not None and not async_) or not (
                    e.shared.t is elem or same_type(e.shared.t, elem)):
                e = _end_for_copy(inst, i, cls, stream_t, op, async_)
            m._view = None  # m.forget()
            buffer = GuestBuffer(elem, m, ptr, length, facts)

            def stream_event(result: CopyResult, reclaim_buffer: Callable[[], None]) -> tuple[int, int, int]:
                reclaim_buffer()
                e.open_copy = None
                e.state = CopyState.DONE if result == CopyResult.DROPPED else CopyState.IDLE
                return (event_code, i, int(result) | (buffer.progress << 4))

            def on_copy(reclaim_buffer: Callable[[], None]) -> None:
                e.open_copy = buffer  # progress, but the copy stays open until its event is delivered
                e.set_pending_event(partial(stream_event, CopyResult.COMPLETED, reclaim_buffer))

            def on_copy_done(result: CopyResult) -> None:
                e.open_copy = None
                e.set_pending_event(partial(stream_event, result, _nothing))

            e.state = CopyState.COPYING
            shared = e.shared
            assert isinstance(shared, Stream)
            if is_read:
                shared.read(inst, buffer, on_copy, on_copy_done)
            else:
                shared.write(inst, buffer, on_copy, on_copy_done)
            return _finish_copy(inst, e, async_)

        # Its own native callback (as the other built-ins of a round trip): a WASI 0.3 guest
        # reads or writes a stream for every socket and TLS transfer.
        k, interrupted = native.I32_STRIDE, native.interrupted

        @direct
        def stream_copy_entry(env: Any, caller: Any, args: Any, nargs: int) -> int:
            try:
                try:
                    if not inst.may_leave:
                        _guard(inst, op)
                    args[0] = stream_copy(args[0], args[k], args[2 * k])
                    return 0
                except Exception as e:  # noqa: BLE001 - every failure is the guest's trap
                    return trap_for(inst, op, e)
            except BaseException as e:  # noqa: BLE001 - see callback_guard
                return interrupted(e)

        return ["i32", "i32", "i32"], ["i32"], stream_copy_entry

    return factory


def _finish_copy(inst: ComponentInstance, e: CopyEnd, async_: bool) -> int:
    """The end of a stream or future copy (``ComponentState.finish_copy``, its result as an
    int): a host on the other side may complete the copy at once (the ready host tasks run
    now, if there are any); otherwise wait (sync) or report BLOCKED (async)."""
    if e.pending_event is None:
        scheduler = inst._scheduler or inst.scheduler
        if scheduler._ready:  # scheduler.run_ready(): it steps the ready host tasks alone
            scheduler.run_ready()
        if e.pending_event is None:
            if not async_:
                inst.wait_sync(e)
            else:
                return BLOCKED
    return e.get_pending_event()[2]


def _future_copy(is_read: bool) -> Callable[[ComponentInstance, Builtin], Made]:
    op = "future.read" if is_read else "future.write"
    cls = ReadableFutureEnd if is_read else WritableFutureEnd
    event_code = EventCode.FUTURE_READ if is_read else EventCode.FUTURE_WRITE

    def factory(inst: ComponentInstance, item: Builtin) -> Made:
        future_t = item.type
        opts = item.opts
        assert opts is not None
        async_ = opts.async_
        m = inst.memcx(opts)
        elem = future_t.elem
        facts = buffer_facts(elem)
        handles = inst.handles

        def future_copy(i: int, ptr: int) -> int:
            # _end_for_copy(...), inline for the usual case (as stream_copy's)
            e = handles[i] if 0 < i < len(handles) else None
            if type(e) is not cls or e.state is not _IDLE or (e.wset is not None and not async_) or not (
                    e.shared.t is elem or same_type(e.shared.t, elem)):
                e = _end_for_copy(inst, i, cls, future_t, op, async_)
            m._view = None  # m.forget()
            buffer = GuestBuffer(elem, m, ptr, 1, facts)

            def future_event(result: CopyResult) -> tuple[int, int, int]:
                e.state = CopyState.DONE if result in (CopyResult.DROPPED, CopyResult.COMPLETED) else CopyState.IDLE
                return (event_code, i, int(result))

            def on_copy_done(result: CopyResult) -> None:
                e.set_pending_event(partial(future_event, result))

            e.state = CopyState.COPYING
            shared = e.shared
            assert isinstance(shared, Future)
            if is_read:
                shared.read(inst, buffer, on_copy_done)
            else:
                shared.write(inst, buffer, on_copy_done)
            return _finish_copy(inst, e, async_)

        k, interrupted = native.I32_STRIDE, native.interrupted

        @direct
        def future_copy_entry(env: Any, caller: Any, args: Any, nargs: int) -> int:
            try:
                try:
                    if not inst.may_leave:
                        _guard(inst, op)
                    args[0] = future_copy(args[0], args[k])
                    return 0
                except Exception as e:  # noqa: BLE001 - every failure is the guest's trap
                    return trap_for(inst, op, e)
            except BaseException as e:  # noqa: BLE001 - see callback_guard
                return interrupted(e)

        return ["i32", "i32"], ["i32"], future_copy_entry

    return factory


def _nothing() -> None:
    pass


def _cancel_copy(is_stream: bool, is_read: bool) -> Callable[[ComponentInstance, Builtin], Made]:
    cls = END_CLASSES[(is_stream, is_read)]
    op = f"{'stream' if is_stream else 'future'}.cancel-{'read' if is_read else 'write'}"

    def factory(inst: ComponentInstance, item: Builtin) -> Made:
        t = item.type
        async_ = item.flag

        def cancel_copy(args: list[int]) -> list[Any]:
            _guard(inst, op)
            i = args[0] & 0xFFFF_FFFF
            e = _table_get(inst, i, cls, _end_name(cls))
            if not same_type(e.shared.t, t.elem) and not (e.shared.t is None and t.elem is None):
                raise Trap(f"{op}: the {_end_name(cls)} at index {i} has another element type")
            if e.state != CopyState.COPYING or e.has_sync_waiter:
                raise Trap(f"{op}: there is no {'read' if is_read else 'write'} in progress to cancel")
            if e.wset is not None and not async_:
                raise Trap(f"{op}: {_SYNC_WAITER}")
            e.state = CopyState.CANCELLING_COPY
            if e.open_copy is not None and e.open_copy.remain() > 0 and e.has_pending_event():
                # The other end copied part of the buffer, which could still take more: the
                # cancel ends the copy with that progress, as CANCELLED (as wasmtime does, and
                # the spec's cancel-stream test expects), not as the COMPLETED of the progress.
                e.clear_pending_event()
            if not e.has_pending_event():
                e.shared.cancel()
                if not e.has_pending_event():
                    if not async_:
                        inst.wait_sync(e)
                    else:
                        return [BLOCKED]
            code, index, payload = e.get_pending_event()
            return [payload]

        return ["i32"], ["i32"], cancel_copy

    return factory


def _drop_end(is_stream: bool, is_read: bool) -> Callable[[ComponentInstance, Builtin], Made]:
    cls = END_CLASSES[(is_stream, is_read)]
    op = f"{'stream' if is_stream else 'future'}.drop-{'readable' if is_read else 'writable'}"
    # The states in which an end goes at once: not copying, and a future's writable end
    # only once its value was written (or its reader dropped).
    droppable = (CopyState.DONE,) if cls is WritableFutureEnd else (CopyState.IDLE, CopyState.DONE)

    def factory(inst: ComponentInstance, item: Builtin) -> Made:
        t = item.type
        elem = t.elem
        handles, free = inst.handles, inst.free  # the table's lists (changed in place, never replaced)
        interrupted = native.interrupted

        def drop_checked(i: int) -> None:
            e = _table_get(inst, i, cls, _end_name(cls))
            if not same_type(e.shared.t, t.elem) and not (e.shared.t is None and t.elem is None):
                raise Trap(f"{op}: the {_end_name(cls)} at index {i} has another element type")
            if e.copying():  # wasmtime's words: a readable end is "removed", a writable one "dropped"
                raise Trap(f"cannot {'remove' if is_read else 'drop'} busy {'stream' if is_stream else 'future'} "
                           f"({op} while a copy is in progress)")
            if isinstance(e, WritableFutureEnd) and e.state != CopyState.DONE:
                raise Trap("cannot drop future write end without first writing a value")
            e.drop()
            inst.remove(i)

        # Its own native callback (a direct trampoline, as the round trip's built-ins): a
        # WASI 0.3 guest drops two or three ends per socket call.
        @direct
        def drop(env: Any, caller: Any, args: Any, nargs: int) -> int:
            try:
                try:
                    if not inst.may_leave:
                        _guard(inst, op)
                    i = args[0]
                    try:  # (an index past the table is unknown; index 0 holds None)
                        e = handles[i]
                    except IndexError:
                        e = None
                    if type(e) is cls and e.state in droppable and (e.shared.t is elem or same_type(e.shared.t, elem)):
                        # drop_checked(i), inline for an idle end of this very element type
                        e.shared.drop()
                        wset = e.wset
                        if wset is not None:  # Waitable.drop(): it leaves its set
                            wset.elems.discard(e)
                            wset.ready.pop(e, None)
                            e.wset = None
                        handles[i] = None  # inst.remove(i), the entry being known
                        free.append(i)
                    else:
                        drop_checked(i)
                    # A host task at the other end (a socket's sender or receiver) hears of it
                    # now and lets go of what it holds, before the guest's next call.
                    scheduler = inst._scheduler or inst.scheduler
                    if scheduler._ready:  # scheduler.run_ready(): it steps the ready host tasks alone
                        scheduler.run_ready()
                    return 0
                except Exception as e:  # noqa: BLE001 - every failure is the guest's trap
                    return trap_for(inst, op, e)
            except BaseException as e:  # noqa: BLE001 - see callback_guard
                return interrupted(e)

        return ["i32"], [], drop

    return factory


# --- error contexts --------------------------------------------------------------------------------


def _error_context_new(inst: ComponentInstance, item: Builtin) -> Made:
    assert item.opts is not None
    m = inst.memcx(item.opts)

    def error_context_new(args: list[int]) -> list[Any]:
        _guard(inst, "error-context.new")
        m.forget()
        message = canon.lift_string(m, m.view(), args[0] & 0xFFFF_FFFF, args[1] & 0xFFFF_FFFF)
        return [inst.add(ErrorContext(message))]

    return ["i32", "i32"], ["i32"], error_context_new


def _error_context_debug_message(inst: ComponentInstance, item: Builtin) -> Made:
    assert item.opts is not None
    m = inst.memcx(item.opts)

    def error_context_debug_message(args: list[int]) -> list[Any]:
        _guard(inst, "error-context.debug-message")
        e = _table_get(inst, args[0] & 0xFFFF_FFFF, ErrorContext, "error context")
        ptr = args[1] & 0xFFFF_FFFF
        if ptr != align_to(ptr, 4):
            raise Trap(f"error-context.debug-message: pointer {ptr:#x} is not 4-byte aligned")
        m.forget()
        canon.check_range(m.view(), ptr, 8, "error-context.debug-message")
        string_ptr, units = canon.lower_string(m, e.message)
        canon._PTR_LEN.pack_into(m.view(), ptr, string_ptr, units)
        return []

    return ["i32", "i32"], [], error_context_debug_message


def _error_context_drop(inst: ComponentInstance, item: Builtin) -> Made:
    def error_context_drop(args: list[int]) -> list[Any]:
        _guard(inst, "error-context.drop")
        _table_remove(inst, args[0] & 0xFFFF_FFFF, ErrorContext, "error context")
        return []

    return ["i32"], [], error_context_drop


_FACTORIES: dict[str, Callable[[ComponentInstance, Builtin], Made]] = {
    "task.return": _task_return,
    "task.cancel": _task_cancel,
    "context.get": _context_get,
    "context.set": _context_set,
    "backpressure.inc": _backpressure(1),
    "backpressure.dec": _backpressure(-1),
    "thread.yield": _thread_yield,
    "thread.index": _thread_index,
    "waitable-set.new": _waitable_set_new,
    "waitable-set.wait": _waitable_set_wait,
    "waitable-set.poll": _waitable_set_poll,
    "waitable-set.drop": _waitable_set_drop,
    "waitable.join": _waitable_join,
    "subtask.cancel": _subtask_cancel,
    "subtask.drop": _subtask_drop,
    "stream.new": _new(True),
    "stream.read": _stream_copy(True),
    "stream.write": _stream_copy(False),
    "stream.cancel-read": _cancel_copy(True, True),
    "stream.cancel-write": _cancel_copy(True, False),
    "stream.drop-readable": _drop_end(True, True),
    "stream.drop-writable": _drop_end(True, False),
    "future.new": _new(False),
    "future.read": _future_copy(True),
    "future.write": _future_copy(False),
    "future.cancel-read": _cancel_copy(False, True),
    "future.cancel-write": _cancel_copy(False, False),
    "future.drop-readable": _drop_end(False, True),
    "future.drop-writable": _drop_end(False, False),
    "error-context.new": _error_context_new,
    "error-context.debug-message": _error_context_debug_message,
    "error-context.drop": _error_context_drop,
}

__all__ = ["make"]
