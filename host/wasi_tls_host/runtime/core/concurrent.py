"""The runtime state of the Component Model's async ABI (CanonicalABI.md, "Runtime State"):
what a component instance's handle table holds besides resource handles.

Class names follow the spec's reference definitions (``Task``, ``Subtask``, ``Waitable``,
``WaitableSet``, ``ReadableStreamEnd``, ...), so a reader can hold the spec beside the
code; the built-ins that use them are in ``builtins.py``. One difference of substance: this
host runs every guest task on the embedder's thread with one wasm stack, so a task blocks
by running the store's scheduler (``runtime/scheduler.py``) until what it waits for has
happened, instead of switching stacks.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..streams import MAX_BUFFER_LENGTH, Future, ReadableBuffer, Stream, WritableBuffer
from ..values import Trap
from . import canon
from .types import Prim, ValType

if TYPE_CHECKING:
    from ..scheduler import HostTask
    from .instance import _HandleEntry

BLOCKED = 0xFFFF_FFFF


class EventCode(IntEnum):
    NONE = 0
    SUBTASK = 1
    STREAM_READ = 2
    STREAM_WRITE = 3
    FUTURE_READ = 4
    FUTURE_WRITE = 5
    TASK_CANCELLED = 6


class CallbackCode(IntEnum):
    EXIT = 0
    YIELD = 1
    WAIT = 2


EventTuple = tuple[int, int, int]


class Waitable:
    """Something ``waitable-set.wait`` can wait on; holds at most one pending event, a
    closure computed when the event is delivered (the spec's ``pending_event``)."""

    key: Any = None  # never a resource handle: resource built-ins refuse it by this
    what = "waitable"

    def __init__(self) -> None:
        self.pending_event: Callable[[], EventTuple] | None = None
        self.wset: WaitableSet | None = None
        self.has_sync_waiter = False

    def set_pending_event(self, pending_event: Callable[[], EventTuple]) -> None:
        self.pending_event = pending_event
        wset = self.wset
        if wset is not None:
            wset.ready[self] = None
            if wset.notify is not None:
                wset.notify.set()

    def has_pending_event(self) -> bool:
        return self.pending_event is not None

    def get_pending_event(self) -> EventTuple:
        pending_event = self.pending_event
        assert pending_event is not None
        self.pending_event = None
        if self.wset is not None:
            self.wset.ready.pop(self, None)
        return pending_event()

    def clear_pending_event(self) -> None:
        """Forget the pending event undelivered (a cancel supersedes it)."""
        self.pending_event = None
        if self.wset is not None:
            self.wset.ready.pop(self, None)

    def join(self, wset: WaitableSet | None) -> None:
        if self.wset is not None:
            self.wset.elems.discard(self)
            self.wset.ready.pop(self, None)
        self.wset = wset
        if wset is not None:
            wset.elems.add(self)
            if self.pending_event is not None:
                wset.ready[self] = None
                if wset.notify is not None:
                    wset.notify.set()

    def drop(self) -> None:
        self.join(None)


class WaitableSet:
    """The spec's ``WaitableSet``, with the waitables that have an event kept apart so a
    wait finds one in O(1)."""

    key: Any = None
    what = "waitable set"

    def __init__(self) -> None:
        self.elems: set[Waitable] = set()
        self.ready: dict[Waitable, None] = {}  # insertion-ordered: events in arrival order
        self.num_waiting = 0
        self.notify: Any = None  # an Event a task's event loop waits on, set when an event arrives

    def has_pending_event(self) -> bool:
        return bool(self.ready)

    def get_pending_event(self) -> EventTuple:
        waitable = next(iter(self.ready))
        # waitable.get_pending_event(), inline: it is in this set's ready ones
        pending_event = waitable.pending_event
        waitable.pending_event = None
        del self.ready[waitable]
        return pending_event()  # type: ignore[misc, no-any-return]

    def drop(self) -> None:
        if self.elems:
            raise Trap(f"waitable-set.drop: the set still holds {len(self.elems)} waitable(s)")
        if self.num_waiting:
            raise Trap("waitable-set.drop: a task is waiting on this set")


class ErrorContext:
    key: Any = None
    what = "error context"

    def __init__(self, message: str) -> None:
        self.message = message


# --- tasks and subtasks --------------------------------------------------------------------------


class Task:
    """One call of a lifted export (``canon lift``), from the host or another component:
    its state, result, context slots, and who to tell when it resolves."""

    INITIAL, STARTED, PENDING_CANCEL, CANCEL_DELIVERED, RESOLVED = range(1, 6)

    def __init__(self, ft: Any, opts: Any, mem: Any, on_resolve: Callable[[Any], None] | None = None) -> None:
        self.ft = ft
        self.opts = opts
        self.mem = mem  # the lift's MemCx (task.return must use the same memory)
        self.on_resolve = on_resolve  # called with the value, or None when cancelled
        self.on_start: Callable[[], None] | None = None  # called when it gets past backpressure
        self.state = Task.STARTED
        self.num_borrows = 0  # borrow handles given to it, not yet dropped
        self.temp_reps: list[tuple[int, Any]] = []  # host objects in the store's table for those borrows
        self.storage = [0, 0]
        self.result: Any = None
        self.has_result = False
        self.exited = False
        self.waiting_cancellably = False  # in the event loop (WAIT/YIELD): cancellation can reach it
        self.wake: Any = None  # the driver's Event, set when cancellation is delivered
        self.resume_caller: Any = None  # the instance resuming it now, if not the host (cancellation)

    def needs_exclusive(self) -> bool:
        """Whether its core code must not interleave with another such task's in the same
        instance (sync-lifted or callback-lifted async functions; CanonicalABI Task)."""
        return not self.opts.async_ or self.opts.callback is not None

    def _resolve(self, value: Any) -> None:
        self.state = Task.RESOLVED
        if self.on_resolve is not None:
            self.on_resolve(value)

    def return_(self, value: Any) -> None:
        if self.state == Task.RESOLVED:
            raise Trap("task.return: the task has already returned or been cancelled")
        if self.num_borrows > 0:
            raise Trap(f"borrow handles still remain at the end of the call ({self.num_borrows} given to this task, not dropped)")
        self.result, self.has_result = value, True
        self._resolve(value)

    def cancel(self) -> None:
        if self.state != Task.CANCEL_DELIVERED:
            raise Trap("task.cancel: the task was not asked to cancel (no TASK_CANCELLED was delivered)")
        if self.num_borrows > 0:
            raise Trap(f"borrow handles still remain at the end of the call ({self.num_borrows} given to this task, not dropped)")
        self._resolve(None)

    def request_cancellation(self) -> None:
        """The caller cancels (``subtask.cancel``): a task not yet started ends at once; one
        waiting in its event loop gets TASK_CANCELLED now; any other at its next cancellable
        wait."""
        if self.state == Task.INITIAL:
            self.state = Task.CANCEL_DELIVERED
            self._resolve(None)
        elif self.state == Task.STARTED:
            self.state = Task.PENDING_CANCEL
            if self.waiting_cancellably and self.wake is not None:
                self.wake.set()

    def deliver_pending_cancel(self, cancellable: bool) -> bool:
        if cancellable and self.state == Task.PENDING_CANCEL:
            self.state = Task.CANCEL_DELIVERED
            return True
        return False


_SUBTASK_EVENT = int(EventCode.SUBTASK)


class Subtask(Waitable):
    """A call the guest made to an async import (``canon lower ... async``) that did not
    finish at once: the host coroutine runs on, and its result lands in guest memory."""

    what = "subtask"
    STARTING, STARTED, RETURNED, CANCELLED_BEFORE_STARTED, CANCELLED_BEFORE_RETURNED = range(5)

    def __init__(self, name: str) -> None:
        # (lower.make_async_trampoline makes a host call's subtask inline: the same attributes)
        self.pending_event = None  # Waitable.__init__, inline: one subtask per async call
        self.wset = None
        self.has_sync_waiter = False
        self.name = name
        self.state = Subtask.STARTED  # host callees take their arguments at once
        # The handle entries lent to the call (a list, once there are any); None once its
        # resolution was delivered.
        self.lenders: Sequence[_HandleEntry] | None = ()
        self.cancellation_requested = False
        self.host_task: HostTask | None = None  # a host function's coroutine, or
        self.callee_task: Task | None = None  # another component's task
        self.index = 0

    def resolved(self) -> bool:
        return self.state >= Subtask.RETURNED

    def resolve(self, state: int) -> None:
        assert not self.resolved()
        self.state = state

    def deliver_resolve(self) -> None:
        for h in self.lenders or ():
            h.lends -= 1
        self.lenders = None

    def resolve_delivered(self) -> bool:
        return self.lenders is None

    def event(self) -> EventTuple:
        state = self.state
        if state >= Subtask.RETURNED:
            lenders = self.lenders
            if lenders is not None:  # resolved, not yet delivered: deliver_resolve(), inline
                for h in lenders:
                    h.lends -= 1
                self.lenders = None
        return (_SUBTASK_EVENT, self.index, state)

    def drop(self) -> None:
        if self.lenders is not None:  # not resolve_delivered()
            raise Trap(f"subtask.drop: the call to {self.name} has not resolved (or its result was not yet delivered)")
        if self.wset is not None:
            self.join(None)


# --- stream and future ends ----------------------------------------------------------------------


class CopyState(IntEnum):
    IDLE = 1
    COPYING = 2
    CANCELLING_COPY = 3
    DONE = 4


# Looked up once: an enum member read through its class costs a descriptor call (every drop
# and lift of an end asks ``copying``).
_COPYING, _CANCELLING = CopyState.COPYING, CopyState.CANCELLING_COPY
_IDLE = CopyState.IDLE


class CopyEnd(Waitable):
    readable = True
    is_stream = True

    def __init__(self, shared: Stream | Future) -> None:
        # Waitable.__init__, inline (an end is made for every stream or future that crosses)
        self.pending_event: Callable[[], EventTuple] | None = None
        self.wset: WaitableSet | None = None
        self.has_sync_waiter = False
        self.state = _IDLE
        self.shared = shared
        # A stream copy's buffer after the other end copied into or out of part of it: the
        # copy is still open (more may come) until its event is delivered or it is cancelled.
        self.open_copy: GuestBuffer | None = None

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"{'readable' if self.readable else 'writable'} end of a {'stream' if self.is_stream else 'future'}"

    def copying(self) -> bool:
        state = self.state  # (identity tests: a set lookup would hash the enum member in Python)
        return state is _COPYING or state is _CANCELLING

    def drop(self) -> None:
        if self.copying():
            raise Trap(f"cannot drop the {self.what} while a copy is in progress (cancel it first)")
        self.shared.drop()
        Waitable.drop(self)


class ReadableStreamEnd(CopyEnd):
    pass


class WritableStreamEnd(CopyEnd):
    readable = False


class ReadableFutureEnd(CopyEnd):
    is_stream = False


class WritableFutureEnd(CopyEnd):
    readable = False
    is_stream = False

    def drop(self) -> None:
        if self.state != CopyState.DONE:
            raise Trap("cannot drop the writable end of a future before a value was written (or the reader dropped it)")
        CopyEnd.drop(self)


END_CLASSES: dict[tuple[bool, bool], type[CopyEnd]] = {
    (True, True): ReadableStreamEnd, (True, False): WritableStreamEnd,
    (False, True): ReadableFutureEnd, (False, False): WritableFutureEnd,
}


# --- guest memory as a buffer --------------------------------------------------------------------


class GuestBuffer(ReadableBuffer, WritableBuffer):
    """A region of a guest's linear memory (the spec's ``{Readable,Writable}BufferGuestImpl``):
    range and alignment are checked when it is made, and the memory's address is looked up
    again on every access (a call into the guest may move it)."""

    def __init__(self, t: ValType | None, m: canon.MemCx, ptr: int, length: int,
                 facts: tuple[bool, int, int, Any] | None = None) -> None:
        if length > MAX_BUFFER_LENGTH:
            raise Trap(f"buffer length {length} is over the limit of {MAX_BUFFER_LENGTH}")
        self.t = t
        self.m = m
        self.ptr = ptr
        self.length = length
        self.progress = 0
        # What the element type implies, worked out once per built-in (``buffer_facts``)
        # rather than on every copy: a WASI 0.3 guest makes a buffer per stream read/write.
        is_bytes, size, align, self.conv = facts if facts is not None else buffer_facts(t)
        self.is_bytes = is_bytes
        if t is not None:
            self.size = size
            if length > 0:
                if ptr & (align - 1):
                    raise Trap(f"buffer pointer {ptr:#x} is not {align}-byte aligned")
                # Against the size last seen first (a linear memory never shrinks): no call
                # into wasmtime when the buffer lies inside it.
                st = m.mem_state
                if st is None or ptr + length * size > st.size:
                    m.check_range(ptr, length * size, "buffer")

    def read(self, n: int) -> Any:
        assert n <= self.length - self.progress  # (self.remain())
        start = self.ptr
        self.progress += n
        if self.t is None:
            return [None] * n
        self.ptr += n * self.size
        v = self.m.view()
        if self.is_bytes:
            return bytes(v[start:start + n])
        load = self.conv.load  # type: ignore[union-attr]
        return [load(self.m, v, start + i * self.size) for i in range(n)]

    def write(self, values: Any) -> None:
        n = len(values)
        assert n <= self.length - self.progress  # (self.remain())
        start = self.ptr
        self.progress += n
        if self.t is None:
            return
        self.ptr += n * self.size
        if self.is_bytes:
            self.m.view()[start:start + n] = values
            return
        store = self.conv.store  # type: ignore[union-attr]
        for i, value in enumerate(values):
            store(self.m, value, start + i * self.size)

    def view(self, k: int) -> memoryview:
        return self.m.view()[self.ptr:self.ptr + k]

    def advance(self, k: int) -> None:
        self.ptr += k
        self.progress += k


def buffer_facts(t: ValType | None) -> tuple[bool, int, int, Any]:
    """``(is_bytes, size, align, conv)`` of a ``GuestBuffer`` of ``t`` elements (conv None for
    bytes and for no element type)."""
    if t is None:
        return False, 0, 1, None
    is_bytes = isinstance(t, Prim) and t.name == "u8"
    return is_bytes, t.size, t.align, None if is_bytes else canon.conv(t)


__all__ = [
    "BLOCKED", "CallbackCode", "buffer_facts", "CopyEnd", "CopyState", "END_CLASSES", "ErrorContext", "EventCode", "GuestBuffer",
    "ReadableFutureEnd", "ReadableStreamEnd", "Subtask", "Task", "Waitable", "WaitableSet", "WritableFutureEnd",
    "WritableStreamEnd",
]
