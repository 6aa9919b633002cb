"""``canon lower`` of host functions: the native bodies (trampolines) a guest calls.

A synchronous lower lifts the arguments straight out of the guest's flat values and linear
memory, calls the Python impl (running an ``async def`` one to completion on the store's
scheduler), and lowers the result straight into memory through the guest's ``realloc``. An
``async`` lower starts the impl's coroutine and returns RETURNED if it finished at once, or
a subtask whose SUBTASK event comes when it does.
"""

from __future__ import annotations

import gc
import sys
from typing import Any, Callable

from ..binding import OUTGOING_VALUE_HOOKS, HostFunc, host_call_failure
from ..resources import drop_consumed_arguments
from ..scheduler import Cancelled, HostTask, Scheduler
from ..values import Err, Trap, WitError
from . import canon, lift, native
from .concurrent import Subtask
from .table import ComponentState, _HandleEntry
from .types import FuncT, ListT, Prim, align_to


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


def load_spilled_arguments(m: canon.MemCx, args: Any, conv: Any, size: int, align: int) -> Any:
    """The arguments of a call whose parameters spill: a tuple at the pointer in ``args[0]``."""
    ptr = args[0].i32 & 0xFFFF_FFFF
    if ptr != align_to(ptr, align):
        raise Trap(f"argument pointer {ptr:#x} is misaligned")
    v = m.view()
    canon.check_range(v, ptr, size, "arguments")
    return conv.load(m, v, ptr)


def lift_flat_arguments(m: canon.MemCx, args: Any, readers: list[Callable[[Any], Any]],
                        param_convs: list[Any]) -> list[Any]:
    """The arguments of a call from its flat core values."""
    flat = [r(args[i]) for i, r in enumerate(readers)]
    pyargs = []
    i = 0
    for lift in param_convs:
        value, i = lift(m, flat, i)
        pyargs.append(value)
    return pyargs


def result_pointer(m: canon.MemCx, raw: Any, size: int, align: int) -> int:
    """The guest's pointer for a result stored in memory, checked."""
    ptr = raw.i32 & 0xFFFF_FFFF
    if ptr != align_to(ptr, align):
        raise Trap(f"result pointer {ptr:#x} is misaligned")
    m.check_range(ptr, size, "result")
    return ptr


class LowerSpec:
    """What a ``canon lower`` trampoline needs that does not depend on the instance (built
    once per imported function and component)."""

    def __init__(self, fn: HostFunc, ft: FuncT) -> None:
        self.fn = fn
        self.ft = ft
        self.core_type = ft.lower_core_type()
        self.returns_result = ft.result is not None and getattr(ft.result, "kind", "") == "result"
        self.nflat = len(ft.flat_params)
        self.readers = native.readers(ft.flat_params)
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
        self.result_writer = native.writer(ft.flat_results[0]) if ft.result is not None and not ft.results_spill else None


def make_trampoline(inst: ComponentState, spec: LowerSpec, m: canon.MemCx) -> Callable[[Any], int]:
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
            return native.trap_ptr(f"{qualname}: cannot call an import during realloc or post-return")
        m.forget()
        outer_borrows, m.borrows = m.borrows, None  # a nested call (from realloc) keeps its own
        pyargs: Any = []
        succeeded = False
        try:
            try:
                if spill_tuple is not None:
                    pyargs = load_spilled_arguments(m, args, spill_tuple, spill_size, spill_align)
                elif single_lift is not None:  # the common case, without a loop
                    pyargs = (single_lift(m, [r(args[i]) for i, r in enumerate(readers)], 0)[0],)
                else:
                    pyargs = lift_flat_arguments(m, args, readers, param_convs)
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
                        result_conv.store(m, result, result_pointer(m, args[nflat], result_size, result_align))
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
            return native.trap_ptr(host_call_failure(qualname, e, lambda code: setattr(state, "exit_code", code)))

    return tramp


def run_to_completion(inst: ComponentState, coro: Any, qualname: str) -> Any:
    """Run an async host function's coroutine until it returns (a synchronous caller)."""
    host_task = inst.scheduler.start(coro, qualname, observed=True)  # its error is read below
    if not host_task.done:
        inst.block_until(lambda: host_task.done, f"the guest called {qualname} synchronously")
    if host_task.error is not None:
        raise host_task.error
    return host_task.result


def make_async_trampoline(inst: ComponentState, spec: LowerSpec, m: canon.MemCx) -> Callable[[Any], int]:
    """The native body of ``canon lower ... async`` of a host function: lift the arguments,
    start the host coroutine and run it until it first waits; if it finished, store the
    result and return RETURNED, else return a new subtask (STARTED), whose SUBTASK event
    comes when the coroutine ends and its result is in guest memory."""
    fn = spec.fn
    ft = spec.ft
    masks = [canon.flat_i32_mask(t) for _, t in ft.params]
    if not ft.async_params_spill and all(mask is not None for mask in masks) and (ft.result is None or canon.int_store(ft.result)):
        return _plain_async_trampoline(inst, spec, m, masks)  # type: ignore[arg-type]
    impl = fn.impl
    qualname = fn.qualname
    state = inst.state
    spill = ft.async_params_spill
    readers = native.readers(["i32"] if spill else ft.all_flat_params)
    nparams = len(readers)
    param_convs = [canon.conv(t).lift_flat for _, t in ft.params]
    tuple_conv = canon.conv(ft.param_tuple) if spill and ft.param_tuple is not None else None
    tuple_size = ft.param_tuple.size if ft.param_tuple is not None else 0
    tuple_align = ft.param_tuple.align if ft.param_tuple is not None else 1
    has_result = ft.result is not None
    result_align = spec.result_align
    result_size = spec.result_size
    owned, kept = fn.owned, fn.kept
    scheduler: Scheduler | None = None  # the store's, looked up once (it is made on first use)

    def tramp(args: Any) -> int:
        nonlocal scheduler
        if not inst.may_leave:
            return native.trap_ptr(f"{qualname}: cannot call an import during realloc or post-return")
        m.forget()
        outer_borrows, m.borrows = m.borrows, None
        pyargs: Any = []
        lent: list[_HandleEntry] = []
        try:
            try:
                if tuple_conv is not None:
                    pyargs = list(load_spilled_arguments(m, args, tuple_conv, tuple_size, tuple_align))
                else:
                    pyargs = lift_flat_arguments(m, args, readers, param_convs)
                retptr = result_pointer(m, args[nparams], result_size, result_align) if has_result else 0
                lent = [inst.handles[h] for h in m.borrows or ()]
            finally:
                m.borrows = outer_borrows
            call = impl(state, *pyargs)
            if scheduler is None:
                scheduler = inst.scheduler
            if fn.is_async:
                finished, value, error = scheduler.first_step(call)
            else:  # a synchronous host function behind an async lower
                finished, value, error = True, call, None
            host_task: HostTask | None = None
            if not finished:
                host_task = scheduler.adopt(call, value, qualname, observed=True)  # on_done reads its error
                if host_task.done:  # it awaited something the scheduler cannot wait on
                    finished, value, error = True, host_task.result, host_task.error
            if finished:
                entries, lent = lent, []
                consumed, pyargs = pyargs, []
                try:
                    finish_host_call(inst, spec, m, value, error, retptr, None)
                finally:
                    if owned:
                        drop_consumed_arguments(consumed, owned, kept, error is None)
                    for entry in entries:
                        entry.lends -= 1
                args[0].i32 = Subtask.RETURNED
                return 0
            assert host_task is not None
            subtask = Subtask(qualname)
            subtask.host_task = host_task
            subtask.lenders = lent
            subtask.index = inst.add(subtask)
            lent, pyargs_kept, pyargs = [], pyargs, []

            def on_done(t: HostTask) -> None:
                if inst.closed or t.scheduler.closed:
                    return
                try:
                    subtask.resolve(finish_host_call(inst, spec, m, t.result, t.error, retptr, subtask))
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
            return native.trap_ptr(host_call_failure(qualname, e, lambda code: setattr(state, "exit_code", code)))

    return tramp


def _plain_async_trampoline(inst: ComponentState, spec: LowerSpec, m: canon.MemCx, masks: list[int]) -> Callable[[Any], int]:
    """``make_async_trampoline`` for a function whose parameters are integers of at most 32
    bits (each lifted by a mask of its flat i32) and whose result, if any, is an integer
    stored with a range check: the same steps without the general lifting and lowering
    (no memory is read, no handle is lent, no argument is owned), and a coroutine that
    finishes on its first step never becomes a task."""
    fn = spec.fn
    impl = fn.impl
    qualname = fn.qualname
    is_async = fn.is_async
    state = inst.state
    nparams = len(masks)
    mask0 = masks[0] if masks else 0
    has_result = spec.ft.result is not None
    pack, lo, hi = canon.int_store(spec.ft.result) or (None, 0, 0)
    result_size, result_align = spec.result_size, spec.result_align
    mem_state = m.mem_state
    runner = inst.runner
    mem_size = native.mem_size
    k = native.I32_STRIDE  # the arguments come as i32s (native.host_entry_i32): value i at [i * k]
    retptr_at = nparams * k
    scheduler: Scheduler | None = None
    returned = Subtask.RETURNED
    started = Subtask.STARTED

    def store(value: Any, retptr: int) -> None:
        if OUTGOING_VALUE_HOOKS:
            for hook in OUTGOING_VALUE_HOOKS:
                hook(qualname, value)
        if not has_result:
            return
        if type(value) is int and lo <= value <= hi and mem_state is not None:
            size = mem_size(mem_state.context_addr, mem_state.addr)  # mem_state.current(), inline
            if size != mem_state.size:
                mem_state.grew(size)
            pack(mem_state.view, retptr, value)  # type: ignore[misc]
        else:  # the general path: its check says what is wrong with the value
            m.forget()
            spec.result_conv.store(m, value, retptr)  # type: ignore[union-attr]
            m.forget()

    def tramp(args: Any) -> int:
        nonlocal scheduler
        if not inst.may_leave:
            return native.trap_ptr(f"{qualname}: cannot call an import during realloc or post-return")
        try:
            retptr = 0
            if has_result:
                retptr = args[retptr_at] & 0xFFFF_FFFF
                if retptr & (result_align - 1):
                    raise Trap(f"result pointer {retptr:#x} is misaligned")
                if mem_state is None or retptr + result_size > mem_state.size:
                    m.check_range(retptr, result_size, "result")
            if nparams == 1:
                call = impl(state, args[0] & mask0)
            else:
                call = impl(state, *[args[i * k] & masks[i] for i in range(nparams)])
            if scheduler is None:
                scheduler = inst.scheduler
            if not is_async:  # a synchronous host function behind an async lower
                store(call, retptr)
                args[0] = returned
                return 0
            if scheduler.closed:
                call.close()
                raise Trap("the store is closed: no more host work can start")
            try:
                waiting = call.send(None)
            except StopIteration as e:
                scheduler.progress += 1
                store(e.value, retptr)
                args[0] = returned
                return 0
            except BaseException as e:  # noqa: BLE001 - the call's own failure, handled as finish_host_call does
                scheduler.progress += 1
                if isinstance(e, Cancelled):
                    e.__traceback__ = None
                finish_host_call(inst, spec, m, None, e, retptr, None)
                args[0] = returned
                return 0
            host_task = scheduler.adopt(call, waiting, qualname, observed=True)  # on_done reads its error
            if host_task.done:  # it awaited something the scheduler cannot wait on
                finish_host_call(inst, spec, m, host_task.result, host_task.error, retptr, None)
                args[0] = returned
                return 0
            subtask = Subtask(qualname)
            subtask.host_task = host_task
            subtask.index = index = inst.add(subtask)

            def on_done(t: HostTask) -> None:
                if runner.closed_ or t.scheduler.closed:
                    return
                if t.error is None:
                    try:
                        store(t.result, retptr)
                    except Trap as e:  # it traps where the guest waits: say whose result it was
                        raise Trap(f"{qualname}: {e}") from None
                    subtask.state = returned
                else:
                    subtask.resolve(finish_host_call(inst, spec, m, t.result, t.error, retptr, subtask))
                subtask.set_pending_event(subtask.event)

            host_task._callbacks.append(on_done)
            args[0] = started | (index << 4)
            return 0
        except Exception as e:
            return native.trap_ptr(host_call_failure(qualname, e, lambda code: setattr(state, "exit_code", code)))

    tramp.i32_args = True  # type: ignore[attr-defined]
    return tramp


def finish_host_call(inst: ComponentState, spec: LowerSpec, m: canon.MemCx, result: Any, error: BaseException | None,
                     retptr: int, subtask: Subtask | None) -> int:
    """An async host call ended with ``result`` or ``error``: the result goes to the
    guest's result pointer; returns the subtask state to report. Failures other than a WIT
    error trap the guest."""
    fn = spec.fn
    if error is not None:
        if isinstance(error, WitError):
            if not spec.returns_result:
                raise Trap(f"{fn.qualname}: error {error.payload!r} from a function that returns no result")
            result = Err(error.payload)
        elif isinstance(error, Cancelled):
            if subtask is not None and subtask.cancellation_requested:
                return Subtask.CANCELLED_BEFORE_RETURNED
            raise Trap(f"{fn.qualname}: the host call was cancelled")
        else:
            raise Trap(host_call_failure(fn.qualname, error if isinstance(error, Exception) else Exception(repr(error)),
                                         lambda code: setattr(inst.state, "exit_code", code)))
    if OUTGOING_VALUE_HOOKS:
        for hook in OUTGOING_VALUE_HOOKS:
            hook(fn.qualname, result)
    if spec.result_conv is not None:
        m.forget()
        try:
            m.check_range(retptr, spec.result_size, "result")
            spec.result_conv.store(m, result, retptr)
        except Trap as e:
            if subtask is None:  # the trampoline's own failure: it names the function
                raise
            raise Trap(f"{fn.qualname}: {e}") from None  # it traps where the guest waits
        m.forget()
    return Subtask.RETURNED


def make_c2c_trampoline(caller: ComponentState, m: canon.MemCx, async_: bool, callee: ComponentState, lifted: Any) -> Callable[[Any], int]:
    """``canon lower`` of another component's lifted export (the fused adapter): the
    arguments are lifted out of the caller into Python values and lowered into the callee by
    its task (``lift.start_call``), the result the other way. Synchronously, the caller waits
    for the value; ``async``, it gets RETURNED at once or a subtask (STARTING while the
    callee holds it back, STARTED once it has the arguments)."""
    ft = lifted.type
    what = "a call to another component's export"
    if async_:
        spill = ft.async_params_spill
        flat_params = ["i32"] if spill else ft.all_flat_params
    else:
        spill = ft.params_spill
        flat_params = list(ft.flat_params)
    readers = native.readers(flat_params)
    nparams = len(readers)
    param_convs = [canon.conv(t).lift_flat for _, t in ft.params]
    tuple_conv = canon.conv(ft.param_tuple) if spill and ft.param_tuple is not None else None
    tuple_size = ft.param_tuple.size if ft.param_tuple is not None else 0
    tuple_align = ft.param_tuple.align if ft.param_tuple is not None else 1
    result_conv = canon.conv(ft.result) if ft.result is not None else None
    result_size = ft.result.size if ft.result is not None else 0
    result_align = ft.result.align if ft.result is not None else 1
    result_by_ptr = ft.result is not None and (async_ or ft.results_spill)
    result_writer = native.writer(ft.flat_results[0]) if result_conv is not None and not result_by_ptr else None
    state = caller.state

    def lift_args(args: Any) -> list[Any]:
        if tuple_conv is not None:
            return list(load_spilled_arguments(m, args, tuple_conv, tuple_size, tuple_align))
        return lift_flat_arguments(m, args, readers, param_convs)

    def store_result(value: Any, retptr: int) -> None:
        assert result_conv is not None
        m.forget()
        result_conv.store(m, value, retptr)
        m.forget()

    def sync_tramp(args: Any) -> int:
        if not caller.may_leave:
            return native.trap_ptr(f"{what}: cannot call an import during realloc or post-return")
        m.forget()
        outer_borrows, m.borrows = m.borrows, None
        try:
            try:
                pyargs = lift_args(args)
                retptr = result_pointer(m, args[nparams], result_size, result_align) if result_by_ptr else 0
            finally:
                lent, m.borrows = m.borrows, outer_borrows
            if ft.is_async and caller.current_task is None:
                # A start function runs with no task to block: an async callee could block it.
                raise Trap("cannot block a synchronous task before returning (a start function calls an async function)")
            result: list[Any] = []
            try:
                task, driver = lift.start_call(callee, lifted, tuple(pyargs), caller, result.append, what)
                if not driver.done and task.state != task.RESOLVED:
                    caller.block_until(lambda: driver.done or task.state == task.RESOLVED, f"the guest called {what} synchronously")
                if driver.done and driver.error is not None:
                    raise driver.error
            finally:
                for h in lent or ():
                    entry = caller.handles[h] if h < len(caller.handles) else None
                    if entry is not None and entry.lends:
                        entry.lends -= 1
            if result_conv is not None:
                if result_by_ptr:
                    store_result(result[0], retptr)
                else:
                    out: list[Any] = []
                    m.forget()
                    result_conv.lower_flat(m, result[0], out)
                    result_writer(args[0], out[0])  # type: ignore[misc]
            return 0
        except Exception as e:
            return native.trap_ptr(host_call_failure(what, e, lambda code: setattr(state, "exit_code", code)))

    def async_tramp(args: Any) -> int:
        if not caller.may_leave:
            return native.trap_ptr(f"{what}: cannot call an import during realloc or post-return")
        m.forget()
        outer_borrows, m.borrows = m.borrows, None
        try:
            try:
                pyargs = lift_args(args)
                retptr = result_pointer(m, args[nparams], result_size, result_align) if result_conv is not None else 0
            finally:
                lent_handles, m.borrows = m.borrows, outer_borrows
            subtask = Subtask(what)
            subtask.lenders = [caller.handles[h] for h in lent_handles or ()]
            subtask.state = Subtask.STARTING

            def on_start() -> None:
                subtask.state = Subtask.STARTED
                if subtask.index:
                    subtask.set_pending_event(subtask.event)

            def on_resolve(value: Any) -> None:
                if value is None and subtask.cancellation_requested:
                    subtask.state = (Subtask.CANCELLED_BEFORE_STARTED if subtask.state == Subtask.STARTING
                                     else Subtask.CANCELLED_BEFORE_RETURNED)
                else:
                    if result_conv is not None:
                        store_result(value, retptr)
                    subtask.state = Subtask.RETURNED
                if subtask.index:
                    subtask.set_pending_event(subtask.event)

            task, driver = lift.start_call(callee, lifted, tuple(pyargs), caller, on_resolve, what, on_start)
            if driver.done and driver.error is not None:
                raise driver.error
            if subtask.resolved():
                subtask.deliver_resolve()
                args[0].i32 = Subtask.RETURNED
                return 0
            subtask.callee_task = task
            subtask.host_task = driver
            subtask.index = caller.add(subtask)

            def on_driver_done(t: HostTask) -> None:
                if t.error is not None and not isinstance(t.error, Cancelled) and not caller.closed:
                    raise t.error  # the callee trapped: so does everything on the stack

            driver.add_done_callback(on_driver_done)
            args[0].i32 = subtask.state | (subtask.index << 4)
            return 0
        except Exception as e:
            return native.trap_ptr(host_call_failure(what, e, lambda code: setattr(state, "exit_code", code)))

    return async_tramp if async_ else sync_tramp


__all__ = ["LowerSpec", "finish_host_call", "make_async_trampoline", "make_c2c_trampoline", "make_trampoline", "run_to_completion"]
