"""``canon lift``: a call into a lifted function, from the host (an export call) or from
another component of the same store (``canon lower`` of a lifted function: the fused
adapter, with Python values in between), run as a task (CanonicalABI.md ``canon_lift``).

``start_call`` enters the callee, lowers the arguments, and runs its core function on the
caller's stack; a task lifted ``async`` with a callback then lives on as a coroutine on the
store's scheduler: each WAIT suspends it until an event arrives in the waitable set, each
YIELD until the next turn, and each event goes to the callback, until EXIT. ``on_resolve``
hears of the value when the task returns it (``task.return``) or of ``None`` when it is
cancelled; a task may go on running after that.

This host has one wasm stack per store, so a task that blocks (``waitable-set.wait``, a
synchronous call) runs other work on top of itself until what it waits for has happened;
while it waits, the instances it entered may be entered again (as when the spec's thread
suspends), and a wait nothing can end is a deadlock trap.
"""

from __future__ import annotations

import ctypes
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from .. import callback_guard
from ..scheduler import _PARKED, Event, HostTask, yield_now
from ..values import Trap
from . import canon, native
from .concurrent import CallbackCode, EventCode, Subtask, Task, WaitableSet
from .types import align_to

if TYPE_CHECKING:
    from .plan import Lifted
    from .table import ComponentState

OnResolve = Callable[[Any], None]


class CallSetup:
    """What a call of one lifted function needs, checked once per function and instance."""

    def __init__(self, callee: ComponentState, lifted: Lifted) -> None:
        ft, opts = lifted.type, lifted.opts
        runner = callee.runner
        if opts.async_:
            self.params, self.results = ft.async_lift_core_type(opts.callback is not None)
        else:
            self.params, self.results = ft.lift_core_type()
        self.func = runner.checked_func(lifted.core_func, self.params, self.results, "lifted export")
        self.post = runner.checked_func(opts.post_return, self.results, [], "post-return") if opts.post_return is not None else None
        self.callback = (runner.checked_func(opts.callback, ["i32", "i32", "i32"], ["i32"], "callback")
                         if opts.callback is not None else None)
        self.callback_addr = ctypes.addressof(self.callback) if self.callback is not None else 0
        self.callback_arg = native.word_arg(self.callback_addr)  # for native.func_call_premade
        self.m = callee.memcx(opts)
        self.ft, self.opts = ft, opts
        self.param_conv = canon.conv(ft.param_tuple) if ft.params_spill and ft.param_tuple is not None else None
        self.param_convs = [canon.conv(t) for _, t in ft.params]


class ArgumentsRefused(Trap):
    """The embedder's argument values do not fit the export's types (not a guest trap)."""


def start_call(callee: ComponentState, lifted: Lifted, args: tuple[Any, ...], caller: ComponentState | None,
               on_resolve: OnResolve, name: str = "", on_start: Callable[[], None] | None = None) -> tuple[Task, HostTask]:
    """Start a task calling ``lifted`` in ``callee``: its first part (up to the first wait)
    runs now. Raises ``Trap`` if the callee cannot be entered."""
    if callee.poisoned is not None:
        raise Trap(f"cannot enter component instance: it trapped before ({callee.poisoned})")
    if callee.closed:
        raise Trap("cannot enter component instance: it is closed")
    if caller is not None and caller is not callee and (
            callee in caller.self_and_ancestors() or caller in callee.self_and_ancestors()):
        # The spec would allow this "donut" call; wasmtime, and the spec's tests, trap on a
        # call between a component and one it (transitively) instantiates, either way, for now.
        raise Trap("cannot enter component instance: a component and one it instantiates may not call each other (yet)")
    for st in callee.entering_set(caller):
        if not st.may_enter:
            raise Trap("cannot enter component instance: it is already running (reentrance)")
    setup = callee.runner.call_setup(callee, lifted)
    task = Task(setup.ft, setup.opts, setup.m, on_resolve)
    task.state = Task.INITIAL
    task.on_start = on_start
    driver = callee.scheduler.start(_drive(callee, setup, task, args, caller), name or "guest task", guest=True, observed=True)
    return task, driver


def _has_backpressure(callee: ComponentState, task: Task) -> bool:
    return callee.backpressure > 0 or (task.needs_exclusive() and callee.exclusive is not None)


async def _drive(callee: ComponentState, setup: CallSetup, task: Task, args: tuple[Any, ...],
                 caller: ComponentState | None) -> None:
    ft = setup.ft
    if ft.is_async:
        # Backpressure: wait to enter (CanonicalABI Task.enter_implicit_thread).
        while _has_backpressure(callee, task) and task.state == Task.INITIAL:
            callee.waiting_to_enter += 1
            try:
                await callee.enter_gate
            finally:
                callee.waiting_to_enter -= 1
        if task.state != Task.INITIAL:
            return  # cancelled before it started
    task.state = Task.STARTED
    if task.on_start is not None:
        task.on_start()
    exclusive = ft.is_async and task.needs_exclusive()
    if exclusive:
        callee.exclusive = task
    try:
        m = setup.m
        try:
            flat = _lower_args(setup, task, args)
        except Trap as e:
            if caller is None and not isinstance(e, ArgumentsRefused):
                raise ArgumentsRefused(str(e)) from None
            raise
        out = callee.run_core(task, caller, callee.runner.call_core, setup.func, flat, setup.params, setup.results)
        if not setup.opts.async_:
            value = _lift_result(ft, m, out)
            task.return_(value)
            if setup.post is not None:
                callee.may_leave = False
                try:
                    callee.call_core(setup.post, out, setup.results, [])
                finally:
                    callee.may_leave = True
            if task.num_borrows:
                raise Trap("borrow handles still remain at the end of the call")
        elif setup.callback is not None:
            await _event_loop(callee, setup, task, out[0], exclusive)
            if task.state != Task.RESOLVED:
                raise Trap("the async export exited without calling task.return (or task.cancel)")
        elif task.state != Task.RESOLVED:
            raise Trap("the async export exited without calling task.return (or task.cancel)")
        task.exited = True
    finally:
        if exclusive and callee.exclusive is task:
            callee.release_exclusive()
        for rep, kind in task.temp_reps:
            try:
                callee.state.table.take(rep, kind)
            except Trap:
                pass


def _lower_args(setup: CallSetup, task: Task, args: tuple[Any, ...]) -> list[Any]:
    m = setup.m
    m.borrow_scope = task
    try:
        flat: list[Any] = []
        if setup.param_conv is not None:
            tup = setup.ft.param_tuple
            ptr = m.realloc(tup.align, tup.size)
            setup.param_conv.store(m, tuple(args), ptr)
            flat = [ptr]
        else:
            for c, x in zip(setup.param_convs, args):
                c.lower_flat(m, x, flat)
        return flat
    finally:
        m.borrow_scope = None
        m.forget()


def _lift_result(ft: Any, m: canon.MemCx, out: list[Any]) -> Any:
    if ft.result is None:
        return None
    c = canon.conv(ft.result)
    m.forget()
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


# The callback's codes and the events it is given, as plain ints (read once per event).
_EXIT, _YIELD, _WAIT = int(CallbackCode.EXIT), int(CallbackCode.YIELD), int(CallbackCode.WAIT)
_CANCELLED_EVENT = (int(EventCode.TASK_CANCELLED), 0, 0)
_NO_EVENT = (int(EventCode.NONE), 0, 0)
_PENDING_CANCEL = Task.PENDING_CANCEL
_SUBTASK_EVENT, _RETURNED = int(EventCode.SUBTASK), Subtask.RETURNED


async def _event_loop(callee: ComponentState, setup: CallSetup, task: Task, packed: int, exclusive: bool) -> None:
    """The ``async callback`` loop of ``canon_lift`` (see the module's docstring)."""
    wake = task.wake = Event()
    # Its waiters in a deque: the task registers on every wait and the completion takes it
    # off (lower's on_done), and a list going from one entry to none and back reallocates
    # its items each time. (Event.set puts a fresh list in its place: replaced below.)
    wake_waiters = wake._waiters = deque()  # type: ignore[assignment]
    runner = callee.runner
    call_callback = runner.call_callback
    scheduler = callee.scheduler
    check_interrupt, monotonic_ns = scheduler._check_interrupt, time.monotonic_ns
    # What the callback's call needs (callee.run_core and runner.call_callback, inline below):
    # the instances it enters when the host resumes it, and the call's ctypes arguments.
    entering = callee.self_and_ancestors()
    alone = callee if len(entering) == 1 else None  # the usual case: no enclosing component instance
    entered = runner.entered
    context_arg, callback_arg, nargs = runner.context_arg, setup.callback_arg, native.ARG_COUNTS[3]
    func_call, pack_args, result_and_trap = native.func_call_premade, native.PACK_CALLBACK_ARGS, native.FRAME_RESULT_AND_TRAP
    # The task's own call frame: its calls never overlap (a call made meanwhile, such as a
    # realloc from a built-in the callback calls, takes one from the pool).
    frame = native.CallFrame()
    view, frame_arg, trap_arg = frame.view, frame.addr_arg, frame.trap_arg
    while True:
        code, si = packed & 0xF, packed >> 4
        if exclusive and callee.exclusive is task:  # other tasks may run while this one waits
            callee.exclusive = None  # callee.release_exclusive(), the gate opened only if someone waits
            gate = callee.enter_gate
            if gate._waiters or gate._callbacks:  # gate.has_waiters(), inline: once per event
                callee.open_gate()
        if code == _EXIT:
            return
        if code == _YIELD:
            task.waiting_cancellably = True
            await yield_now()
            task.waiting_cancellably = False
            event: tuple[int, int, int] = _CANCELLED_EVENT if task.deliver_pending_cancel(True) else _NO_EVENT
        elif code == _WAIT:
            handles = callee.handles
            try:  # (an index past the table is unknown; index 0 holds None)
                wset = handles[si]
            except IndexError:
                wset = None
            if type(wset) is not WaitableSet:
                callee.get(si)  # an unknown index traps as such
                raise Trap(f"the callback returned WAIT on handle index {si}, which is not a waitable set")
            ready = wset.ready
            wset.num_waiting += 1
            wset.notify = wake
            task.waiting_cancellably = True
            try:
                while True:
                    if task.state == _PENDING_CANCEL and task.deliver_pending_cancel(True):
                        event = _CANCELLED_EVENT
                        break
                    if ready:
                        # wset.get_pending_event(), inline: once per event
                        waitable = next(iter(ready))
                        pending_event = waitable.pending_event
                        waitable.pending_event = None
                        del ready[waitable]
                        if type(waitable) is Subtask and waitable.lenders == ():
                            # Subtask.event(), inline for a call that lent no handles: the
                            # round trip's event
                            event = (_SUBTASK_EVENT, waitable.index, waitable.state)
                            if waitable.state >= _RETURNED:
                                waitable.lenders = None  # its resolution is delivered
                        else:
                            event = pending_event()
                        break
                    wake.is_set = False  # wake.clear()
                    # Host work that completes the wait runs now when nothing else is ready,
                    # and the event goes straight to the callback (no suspension, no step).
                    me = scheduler._resuming
                    host_ready = scheduler._ready
                    if not host_ready or me is None or me is not scheduler._stepping or scheduler._guest_ready:
                        wait = scheduler.resume_inline(wake)
                        if wait is not None:
                            await wait
                        continue
                    # scheduler.resume_inline(wake), inline for its usual case (host work ready,
                    # no other guest task ready): once per event. Keep the two equal.
                    check_interrupt()
                    if scheduler._readers or scheduler._writers or scheduler._timers:
                        now = monotonic_ns()
                        timers = scheduler._timers
                        if now >= scheduler._inline_poll_at or (timers and timers[0][0] <= now):
                            scheduler.poll(block=False)
                    me._waiting = wake
                    if wake._waiters is not wake_waiters:  # Event.set replaced it (the deque may still hold the task)
                        wake_waiters = wake._waiters = deque()  # type: ignore[assignment]
                    wake_waiters.append(me)
                    for _ in range(len(host_ready)):
                        other = host_ready.popleft()
                        other._queued = False
                        scheduler._stepping = other
                        try:
                            waiting = other.coro.send(None)
                        except StopIteration as e:
                            scheduler._stepping = me
                            if other._joiners:
                                scheduler._finish(other, e.value, None)
                                continue
                            # scheduler._finish(other, e.value, None), inline for a task nobody
                            # awaits (an async lower's call that completes a wait)
                            scheduler.progress += 1
                            other.done = True
                            other.result = e.value
                            other._waiting = None
                            scheduler._tasks.discard(other)
                            callbacks = other._callbacks
                            if callbacks:
                                other._callbacks = ()
                                for callback in callbacks:
                                    callback(other)
                            continue
                        except BaseException as e:  # noqa: BLE001 - the task's own failure, as in Scheduler._step
                            scheduler._stepping = me
                            scheduler._finish(other, None, e)
                            continue
                        scheduler._stepping = me
                        scheduler._suspend(other, waiting)
                    guest_ready = scheduler._guest_ready
                    if guest_ready and guest_ready[0] is me:  # the event woke it first: it goes on now
                        guest_ready.popleft()
                        me._queued = False
                    elif me._queued:
                        await _PARKED  # woken behind another guest task: it runs in its turn
                    else:
                        scheduler._unwait(me)
                        await wake
            finally:
                task.waiting_cancellably = False
                wset.num_waiting -= 1
                if wset.notify is wake:
                    wset.notify = None
        else:
            raise Trap(f"unsupported callback code: {code}")
        if exclusive:
            while callee.exclusive is not None and callee.exclusive is not task:
                await callee.enter_gate
            callee.exclusive = task
        if task.resume_caller is not None:  # another instance resumes it (cancellation)
            packed = callee.run_core(task, task.resume_caller, call_callback, setup.callback_addr, *event)
            continue
        # callee.run_core(task, None, call_callback, ...) and call_callback, inline: once per event
        if alone is not None:
            if not alone.may_enter:
                raise Trap("cannot enter component instance: it is already running (reentrance)")
            alone.may_enter = False
        else:
            for st in entering:
                if not st.may_enter:
                    raise Trap("cannot enter component instance: it is already running (reentrance)")
            for st in entering:
                st.may_enter = False
        entered.append(entering)
        outer, callee.current_task = callee.current_task, task
        callee.live_tasks += 1
        try:
            code, p1, p2 = event
            pack_args(view, 0, code, p1, p2, 0)
            err = func_call(context_arg, callback_arg, frame_arg, nargs, trap_arg)
            packed, trap = result_and_trap(view, 0)
            if err or trap:
                callback_guard.raise_pending()
                native.raise_if_failed(err, frame.trap(), None)
        finally:
            callee.live_tasks -= 1
            callee.current_task = outer
            entered.pop()
            if alone is not None:
                alone.may_enter = True
            else:
                for st in entering:
                    st.may_enter = True


def call_from_host(callee: ComponentState, lifted: Lifted, args: tuple[Any, ...]) -> Any:
    """An export call from the embedder: the value, once the task has exited (a command's
    ``run`` also finishes what it does after returning). Raises ``Trap`` on a trap."""
    if lifted.type.is_async and callee.backpressure > 0 and not callee.has_other_tasks():
        raise Trap("cannot enter component instance: it has backpressure set "
                   "(backpressure.inc without backpressure.dec) and no task runs that could clear it")
    result: list[Any] = []
    task, driver = start_call(callee, lifted, args, None, result.append, "export call")

    def finished() -> bool:
        if driver.done:
            return True
        # Returned, and nothing could ever run it again: the rest of its work is abandoned.
        return task.state == Task.RESOLVED and not callee.scheduler.has_work()

    if not driver.done:
        callee.runner.wait_for_host_call(finished)
    if driver.done and driver.error is not None:
        raise driver.error
    if task.state != Task.RESOLVED:
        raise Trap("the export call ended without a value")
    # Host work the guest's last steps made ready (the end of a stream it dropped, an alert
    # for a peer) runs now, not at some later call that may never come.
    callee.scheduler.run_ready()
    return result[0] if result else task.result


__all__ = ["ArgumentsRefused", "CallSetup", "call_from_host", "start_call"]
