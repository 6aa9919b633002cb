"""The host's side of the async ABI: one scheduler per store, on the guest's thread.

WASI 0.3 and wasi:tls 0.3 are written as ordinary ``async def`` functions. Their coroutines
do not run on asyncio: the ``Scheduler`` steps them itself, whenever the guest calls a
built-in (so a host producer can complete a ``stream.read`` before the call returns) and
while the guest waits (``waitable-set.wait``, the callback event loop, a synchronous call
to an async import). A coroutine suspends on one of four things:

* ``readable(fd)`` / ``writable(fd)``: a descriptor becomes ready (one ``poll`` of the
  kernel for everything that waits, so a waiting guest uses no CPU);
* ``sleep_until(ns)``: a ``time.monotonic_ns`` deadline;
* an ``Event`` another coroutine or the Canonical ABI sets (a stream's reader arrived);
* another ``HostTask`` (``await task``);
* ``any_of(...)`` of descriptors and ``Event``s: whichever comes first (a producer waiting on
  its socket that must also hear of its reader going away).

Every wait also watches the store's interrupt descriptor, so an embedder can stop a guest
that waits forever (``Interruptor``), and a wait that nothing can ever end is reported as a
deadlock instead of hanging.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
import time
import weakref
from collections import deque
from typing import Any, Callable, Coroutine, Generator, Iterator

from .values import Trap, WitError

log = logging.getLogger("wasi_tls_host.runtime")

_POLL_IN = select.POLLIN | select.POLLPRI
_POLL_OUT = select.POLLOUT
MAX_POLL_MS = 2**31 - 1  # the longest timeout select.poll accepts
# How often a guest task resumed inline (``resume_inline``) looks at descriptors without a
# due timer: a guest busy with host work that completes at once still sees a socket that
# became ready within this time, without a poll (a syscall and a poll object) per event.
INLINE_POLL_INTERVAL_NS = 500_000


class _Wait:
    """What a suspended coroutine waits for (yielded to the scheduler)."""

    __slots__ = ()

    def __await__(self) -> Iterator[Any]:
        # What a generator yielding itself once would do, without making a generator: the
        # awaiting coroutine hands it to the scheduler, and its next step ends the await.
        return iter((self,))


class _Fd(_Wait):
    __slots__ = ("fd", "write")

    def __init__(self, fd: int, write: bool) -> None:
        self.fd, self.write = fd, write


class _Until(_Wait):
    __slots__ = ("deadline",)

    def __init__(self, deadline: int) -> None:
        self.deadline = deadline


class _Yield(_Wait):
    __slots__ = ()


class _Parked(_Wait):
    """Yielded by a task that is queued already (``Scheduler.resume_inline``)."""

    __slots__ = ()


_PARKED = _Parked()


class _AnyOf(_Wait):
    __slots__ = ("waits",)

    def __init__(self, waits: tuple[Any, ...]) -> None:
        self.waits = waits


def readable(fd: int) -> _Wait:
    """Suspend until ``fd`` is readable (or has an error or hang-up to report)."""
    return _Fd(fd, False)


def writable(fd: int) -> _Wait:
    return _Fd(fd, True)


def sleep_until(deadline_ns: int) -> _Wait:
    return _Until(deadline_ns)


_YIELD = _Yield()  # it holds nothing: one for every yield


def yield_now() -> _Wait:
    """Let every other ready coroutine run once before this one goes on."""
    return _YIELD


def any_of(*waits: Any) -> _Wait:
    """Suspend until the first of ``waits`` (``readable``/``writable`` descriptors,
    ``sleep_until`` deadlines, ``Event``s, other ``any_of``s) is met; the others are
    forgotten then. The coroutine is not told which: it looks again at what it waits for."""
    for wait in waits:  # the usual case: nothing to flatten, nothing to refuse
        kind = type(wait)
        if kind is not _Fd and kind is not _Until and kind is not Event:
            break
    else:
        return _AnyOf(waits)
    flat: list[Any] = []
    for wait in waits:
        if isinstance(wait, _AnyOf):
            flat.extend(wait.waits)
        elif isinstance(wait, (_Fd, _Until, Event)):
            flat.append(wait)
        else:
            raise TypeError(f"any_of() waits on descriptors, deadlines and Events, not {wait!r}")
    return _AnyOf(tuple(flat))


def _deadline_passed(waiting: Any, now: int) -> bool:
    """Whether a timer that fell due is still what its task waits for (not a stale entry)."""
    if isinstance(waiting, _Until):
        return True
    return isinstance(waiting, _AnyOf) and any(isinstance(w, _Until) and w.deadline <= now for w in waiting.waits)


class Event:
    """A flag coroutines wait on; ``set`` wakes them all. Re-armed with ``clear``."""

    __slots__ = ("is_set", "_waiters", "_callbacks")

    def __init__(self) -> None:
        self.is_set = False
        self._waiters: list[HostTask] = []
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        if self.is_set:
            return
        self.is_set = True
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for task in waiters:
                # task.scheduler._make_ready(task), inline for a task waiting on this alone
                if task.done or task._queued:
                    continue
                if type(task._waiting) is _AnyOf:
                    task.scheduler._make_ready(task)
                    continue
                task._queued = True
                task._waiting = None
                scheduler = task.scheduler
                (scheduler._guest_ready if task.guest else scheduler._ready).append(task)
        callbacks = self._callbacks
        if callbacks:
            self._callbacks = []
            for callback in callbacks:
                callback()

    def clear(self) -> None:
        self.is_set = False

    def has_waiters(self) -> bool:
        """Whether a task or a callback waits for the event."""
        return bool(self._waiters or self._callbacks)

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once) when the event is next set, or now if it is."""
        if self.is_set:
            callback()
        else:
            self._callbacks.append(callback)

    def __await__(self) -> Generator[Any, None, None]:
        while not self.is_set:
            yield self


class Cancelled(BaseException):
    """Thrown into a host coroutine whose work is no longer wanted (the guest cancelled the
    subtask, dropped the stream, or the store is closing). A BaseException, like asyncio's
    CancelledError, so that ``except Exception`` in host code does not swallow it."""


class HostTask:
    """One host coroutine driven by a ``Scheduler``."""

    __slots__ = ("scheduler", "coro", "name", "guest", "observed", "done", "result", "error", "_joiners", "_callbacks", "_waiting",
                 "_queued", "__weakref__")

    def __init__(self, scheduler: Scheduler, coro: Coroutine[Any, Any, Any], name: str, guest: bool = False) -> None:
        self.scheduler = scheduler
        self.coro = coro
        self.name = name
        # A guest task's event loop: it runs guest code, so it is resumed only where the guest
        # is waiting (or at the top), never in the middle of a built-in call.
        self.guest = guest
        self.observed = False  # its creator reads ``error`` itself (else a failure is logged)
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        # Who awaits it and whom to tell when it ends: a list once there is one (most host
        # calls have one callback and no joiner: no list made for nobody).
        self._joiners: list[HostTask] | tuple[()] = ()
        # (a tuple made once may stand for one callback: it is replaced, never changed)
        self._callbacks: list[Callable[[HostTask], None]] | tuple[Callable[[HostTask], None], ...] = ()
        self._waiting: Any = None  # what it is suspended on
        self._queued = False

    def add_done_callback(self, callback: Callable[[HostTask], None]) -> None:
        if self.done:
            callback(self)
        elif type(self._callbacks) is list:
            self._callbacks.append(callback)
        else:
            self._callbacks = [*self._callbacks, callback]

    def cancel(self) -> None:
        """Throw ``Cancelled`` into the coroutine at once (it may clean up; it may even go
        on, but then it must finish by itself)."""
        if self.done:
            return
        self.scheduler._unwait(self)
        self.scheduler._step(self, throw=Cancelled())

    def __await__(self) -> Generator[Any, None, Any]:
        while not self.done:
            yield self
        if self.error is not None:
            raise self.error
        return self.result

    def __repr__(self) -> str:
        return f"<HostTask {self.name} {'done' if self.done else 'pending'}>"


TIMER_PRUNE_MIN = 1024  # timer entries before the first look for those of finished tasks


class Scheduler:
    """Runs host coroutines for one store (see the module's docstring)."""

    def __init__(self, interrupt_fd: int | None = None, check_interrupt: Callable[[], None] | None = None,
                 clear_wake: Callable[[], None] | None = None) -> None:
        self._ready: deque[HostTask] = deque()
        self._guest_ready: deque[HostTask] = deque()
        self._readers: dict[int, list[HostTask]] = {}
        self._writers: dict[int, list[HostTask]] = {}
        # (deadline, sequence, task) as a heap. An entry stays when its task stops waiting on
        # it (it is skipped when it falls due), so it holds the task weakly: a finished task,
        # whose error may carry the frames of everything its coroutine referenced (a TLS
        # connection's whole transport, for a cancelled handshake deadline), is freed now,
        # not when a deadline long past its use comes (live tasks are held by ``_tasks``).
        self._timers: list[tuple[int, int, weakref.ref[HostTask]]] = []
        self._timer_seq = itertools.count()
        self._prune_timers_at = TIMER_PRUNE_MIN
        self._inline_poll_at = 0  # monotonic_ns when resume_inline next polls descriptors
        self._interrupt_fd = interrupt_fd
        # One poll object for the store's life, kept equal to the descriptors waited on (and
        # the interrupt descriptor) before each poll: only those whose waiters came or went
        # since the last poll (``_changed``) are looked at, not every descriptor every time
        # (a server with many connections waits often). A poll object holds descriptor
        # numbers, not descriptors: nothing to close, and a number closed and reused by a
        # new socket is polled as that socket (an epoll set would still hold the old file).
        self._poller = select.poll()
        self._poll_masks: dict[int, int] = {}  # what _poller has registered
        self._changed: set[int] = set()  # descriptors whose waiters may have come or gone
        if interrupt_fd is not None:
            self._poller.register(interrupt_fd, _POLL_IN)
            self._poll_masks[interrupt_fd] = _POLL_IN
        self._check_interrupt = check_interrupt or (lambda: None)
        self._clear_wake = clear_wake or (lambda: None)
        self._tasks: set[HostTask] = set()
        self._stepping: HostTask | None = None
        self._resuming: HostTask | None = None  # the guest task run_ready is stepping now
        self.closed = False
        # Counts steps that were more than a yield (a task finished or waits on something),
        # and kernel events: a wait seeing only yields for long has livelocked.
        self.progress = 0

    # --- tasks ------------------------------------------------------------------------------
    def _new_task(self, coro: Coroutine[Any, Any, Any], name: str, guest: bool = False) -> HostTask:
        if self.closed:
            coro.close()
            raise Trap("the store is closed: no more host work can start")
        task = HostTask(self, coro, name or getattr(coro, "__qualname__", "host task"), guest)
        self._tasks.add(task)
        return task

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> HostTask:
        """Start a coroutine: it runs at the next ``run_ready`` (soon: every built-in call
        and every wait runs the ready ones)."""
        task = self._new_task(coro, name)
        self._make_ready(task)
        return task

    def start(self, coro: Coroutine[Any, Any, Any], name: str = "", guest: bool = False, observed: bool = False) -> HostTask:
        """Run a new coroutine now, until it first suspends (or finishes). ``observed``: the
        caller reads the task's ``error`` itself."""
        task = self._new_task(coro, name, guest)
        task.observed = observed
        self._step(task)
        return task

    def first_step(self, coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any, BaseException | None]:
        """Run a new coroutine until it first suspends, without making a task for it yet:
        (finished, its value or what it waits on, its error). One that suspends becomes a
        task with ``adopt``; most host calls finish here (no task, no queue)."""
        if self.closed:
            coro.close()
            raise Trap("the store is closed: no more host work can start")
        try:
            waiting = coro.send(None)
        except StopIteration as e:
            self.progress += 1
            return True, e.value, None
        except BaseException as e:  # noqa: BLE001 - the call's own failure: its caller reads it
            self.progress += 1
            if isinstance(e, Cancelled):
                e.__traceback__ = None
            return True, None, e
        return False, waiting, None

    def adopt(self, coro: Coroutine[Any, Any, Any], waiting: Any, name: str, observed: bool = False) -> HostTask:
        """The task of a coroutine that ``first_step`` ran and that now waits on ``waiting``."""
        task = HostTask(self, coro, name, False)
        task.observed = observed
        self._tasks.add(task)
        if type(waiting) is _Yield:  # _suspend's first case, inline: the usual one here
            task._queued = True
            self._ready.append(task)
        else:
            self._suspend(task, waiting)
        return task

    def _make_ready(self, task: HostTask) -> None:
        if not task.done and not task._queued:
            waiting = task._waiting
            if type(waiting) is _AnyOf:
                self._forget_waits(task, waiting.waits)
            task._queued = True
            task._waiting = None
            (self._guest_ready if task.guest else self._ready).append(task)

    def _step(self, task: HostTask, throw: BaseException | None = None) -> None:
        outer = self._stepping
        self._stepping = task
        try:
            waiting = task.coro.throw(throw) if throw is not None else task.coro.send(None)
        except StopIteration as e:
            self._finish(task, e.value, None)
            return
        except BaseException as e:  # the task's own failure: its awaiter or callback sees it
            self._finish(task, None, e)
            return
        finally:
            self._stepping = outer
        self._suspend(task, waiting)

    def _suspend(self, task: HostTask, waiting: Any) -> None:
        if type(waiting) is _Yield:  # no progress; ready again at once (_make_ready, inline)
            if not task._queued:
                task._queued = True
                task._waiting = None
                (self._guest_ready if task.guest else self._ready).append(task)
            return
        task._waiting = waiting
        self.progress += 1
        kind = type(waiting)  # (the wait classes of this module have no subclasses)
        if kind is _Fd:
            table = self._writers if waiting.write else self._readers
            tasks = table.get(waiting.fd)
            if tasks is None:
                table[waiting.fd] = [task]
                self._changed.add(waiting.fd)
            else:
                tasks.append(task)
        elif kind is _AnyOf:  # (before the isinstance tests: a TLS transport's every wait)
            waits = waiting.waits
            # (any_of holds descriptors, deadlines and Events only)
            for w in waits:
                wkind = type(w)
                if wkind is not _Fd and wkind is not _Until and w.is_set:  # an Event met already
                    self._make_ready(task)
                    return
            for w in waits:
                wkind = type(w)
                if wkind is _Fd:
                    table = self._writers if w.write else self._readers
                    tasks = table.get(w.fd)
                    if tasks is None:  # (as for a lone _Fd: the poll object changes only for a new one)
                        table[w.fd] = [task]
                        self._changed.add(w.fd)
                    else:
                        tasks.append(task)
                elif wkind is _Until:  # (a handshake's deadline: a few waits per connection)
                    self._add_timer(w.deadline, task)
                else:  # an Event
                    w._waiters.append(task)
        elif kind is _Until:
            timers = self._timers
            if len(timers) < self._prune_timers_at:  # self._add_timer(...), inline: no pruning due
                heapq.heappush(timers, (waiting.deadline, next(self._timer_seq), weakref.ref(task)))
            else:
                self._add_timer(waiting.deadline, task)
        elif kind is _Parked:
            task._waiting = None  # queued already (resume_inline)
        elif isinstance(waiting, Event):
            if waiting.is_set:
                self._make_ready(task)
            else:
                waiting._waiters.append(task)
        elif isinstance(waiting, HostTask):
            if waiting.done:
                self._make_ready(task)
            elif waiting._joiners:
                waiting._joiners.append(task)  # type: ignore[union-attr]
            else:
                waiting._joiners = [task]
        else:
            self._finish(task, None, Trap(f"host coroutine {task.name} awaited {waiting!r}, which this scheduler cannot wait on"))
            task.coro.close()

    def _add_timer(self, deadline: int, task: HostTask) -> None:
        timers = self._timers
        if len(timers) >= self._prune_timers_at:
            # Entries of finished tasks stay until they fall due (30 s for a handshake
            # deadline): a stream of short connections piles them up, two per connection.
            # Dropped once they could be half the heap: each entry is looked at O(1) times.
            timers[:] = [entry for entry in timers if (t := entry[2]()) is not None and not t.done]
            heapq.heapify(timers)
            self._prune_timers_at = max(TIMER_PRUNE_MIN, 2 * len(timers))
        heapq.heappush(timers, (deadline, next(self._timer_seq), weakref.ref(task)))

    def _unwait(self, task: HostTask) -> None:
        """Forget what ``task`` is suspended on (it is about to be resumed another way)."""
        waiting, task._waiting = task._waiting, None
        if isinstance(waiting, (_Fd, Event)):
            self._forget_waits(task, (waiting,))
        elif isinstance(waiting, _AnyOf):
            self._forget_waits(task, waiting.waits)
        elif isinstance(waiting, HostTask):
            if task in waiting._joiners:
                waiting._joiners.remove(task)  # type: ignore[union-attr]
        # timers: a stale heap entry is skipped when it fires (the task is not waiting on it)
        if task._queued:
            task._queued = False
            try:
                (self._guest_ready if task.guest else self._ready).remove(task)
            except ValueError:
                pass

    def _forget_waits(self, task: HostTask, waits: tuple[Any, ...]) -> None:
        for wait in waits:
            kind = type(wait)  # (the wait classes of this module have no subclasses)
            if kind is Event or (kind is not _Fd and isinstance(wait, Event)):
                waiters = wait._waiters
                if waiters and task in waiters:
                    waiters.remove(task)
            elif kind is _Fd:
                table = self._writers if wait.write else self._readers
                tasks = table.get(wait.fd)
                if tasks and task in tasks:
                    tasks.remove(task)
                    if not tasks:
                        del table[wait.fd]
                        self._changed.add(wait.fd)
            # (a deadline's timer entry stays: it is checked against what the task waits on)

    def _finish(self, task: HostTask, result: Any, error: BaseException | None) -> None:
        self.progress += 1
        task.done = True
        if error is not None and isinstance(error, (Cancelled, WitError)):
            # Nobody reads where a cancellation or a WIT error result (a value for the guest)
            # went through, and the traceback would hold the coroutine's frames (all they
            # reference) and ``_step``'s (a cycle back to the task), as would the exception
            # it replaced (``raise ... from None`` keeps it as the context): without them, a
            # task that failed so frees what it held now, not at a GC pass.
            error.__traceback__ = None
            error.__context__ = None
        task.result, task.error = result, error
        task._waiting = None
        self._tasks.discard(task)
        joiners = task._joiners
        if joiners:
            task._joiners = ()
            for joiner in joiners:
                self._make_ready(joiner)
        callbacks = task._callbacks
        if callbacks:
            task._callbacks = ()
            for callback in callbacks:
                callback(task)
        if error is not None and not callbacks and not joiners and not task.observed and not isinstance(error, Cancelled):
            # Nobody will look at it: a background task's failure is logged, not lost.
            log.error("host task %s failed: %s: %s", task.name, type(error).__name__, error)

    # --- running ------------------------------------------------------------------------------
    def run_ready(self, guests: bool = False) -> None:
        """Step every coroutine that is ready now (and those they make ready), once each
        per pass; a coroutine that yields goes to the next pass. Guest tasks' event loops
        only with ``guests`` (where the guest is waiting)."""
        queues = (self._ready, self._guest_ready) if guests else (self._ready,)
        for _ in range(1024):  # bounded: each pass makes progress or stops
            if not any(queues):
                return
            before = self.progress  # a yield is no progress; every other suspension or end is
            for _ in range(len(self._ready)):
                task = self._ready.popleft()
                task._queued = False
                self._step(task)
            if guests:
                guest_ready = self._guest_ready
                outer = self._resuming
                try:
                    for _ in range(len(guest_ready)):
                        task = guest_ready.popleft()
                        task._queued = False
                        self._resuming = task
                        self._step(task)
                finally:
                    self._resuming = outer
            if self.progress == before:
                return  # every task stepped only yielded: the caller polls, then comes back

    def resume_inline(self, event: Event) -> Any:
        """The guest task being resumed by ``run_ready`` would now wait for ``event``: when
        no other guest task is ready, run the pass of host work that ``run_ready`` would run
        next (after polling descriptors and timers, as its caller would) with the task
        registered as waiting on ``event``, so that a host completion reaches it without a
        suspension and another step. Returns None if the task goes on now (``event`` woke
        it, and it is the first guest task to run, as it would be in ``run_ready``); else
        what to await: ``event`` still, or a parked wait when the event came but another
        guest task was made ready first (it then runs in its turn)."""
        task = self._resuming
        if event.is_set:
            return None
        if task is None or task is not self._stepping or self._guest_ready:
            return event
        ready = self._ready
        if not ready:
            # Nothing ready: run_ready's caller would poll next. A timer already due (a WASI
            # 0.3 clock wait that has passed) is taken now, as that poll would, and the work
            # it readies runs inline; anything else (nothing due) is waited for there.
            timers = self._timers
            if not timers or timers[0][0] > time.monotonic_ns():
                return event
            self._check_interrupt()
            self.poll(block=False)
            if self._guest_ready or not ready:
                return event
        else:
            self._check_interrupt()
            if self._readers or self._writers or self._timers:
                # Descriptors every INLINE_POLL_INTERVAL_NS, timers when the first is due: as
                # run_ready's caller polls between passes, not before each.
                now = time.monotonic_ns()
                timers = self._timers
                if now >= self._inline_poll_at or (timers and timers[0][0] <= now):
                    self.poll(block=False)
        task._waiting = event
        event._waiters.append(task)
        for _ in range(len(ready)):
            other = ready.popleft()
            other._queued = False
            # self._step(other), inline: once per host completion a waiting guest task takes
            self._stepping = other
            try:
                waiting = other.coro.send(None)
            except StopIteration as e:
                self._stepping = task
                if other._joiners:
                    self._finish(other, e.value, None)
                    continue
                # self._finish(other, e.value, None), inline for a task nobody awaits (an
                # async lower's call that completes a wait): once per such call
                self.progress += 1
                other.done = True
                other.result = e.value
                other._waiting = None
                self._tasks.discard(other)
                callbacks = other._callbacks
                if callbacks:
                    other._callbacks = ()
                    for callback in callbacks:
                        callback(other)
                continue
            except BaseException as e:  # noqa: BLE001 - the task's own failure, as in _step
                self._stepping = task
                self._finish(other, None, e)
                continue
            self._stepping = task
            self._suspend(other, waiting)
        guest_ready = self._guest_ready
        if guest_ready and guest_ready[0] is task:
            guest_ready.popleft()
            task._queued = False
            return None
        if task._queued:
            return _PARKED  # woken behind another guest task: it runs in its turn
        self._unwait(task)
        return event

    def run_now(self, task: HostTask) -> None:
        """Step ``task`` now if it is ready (e.g. a guest task told of its cancellation,
        which the spec resumes at once)."""
        if task._queued:
            self._unwait(task)
            self._step(task)

    def has_work(self) -> bool:
        """Whether anything could still make progress: a ready coroutine, or one waiting on
        a descriptor or a timer."""
        return bool(self._ready or self._guest_ready or self._readers or self._writers or self._timers)

    def wait_until(self, done: Callable[[], bool], what: str, livelock_after: float | None = None) -> None:
        """Run host work and guest tasks, sleeping in the kernel between events, until
        ``done()``. Traps if the store is interrupted, or if nothing could ever make
        ``done()`` true; with ``livelock_after``, also when for that many seconds nothing
        happened but tasks yielding."""
        last_progress, since = self.progress, time.monotonic()
        while True:
            self._check_interrupt()
            self.run_ready(guests=True)
            if done():
                return
            if livelock_after is not None:
                if self.progress != last_progress:
                    last_progress, since = self.progress, time.monotonic()
                elif time.monotonic() - since > livelock_after:
                    raise Trap(f"deadlock detected: event loop cannot make further progress ({what}, and the tasks "
                               "that could run only yield: they wait for a task below them on the stack, which this "
                               "host cannot interleave with them, as it runs one wasm stack per store)")
            if not self.poll(block=True):
                raise Trap(f"deadlock detected: event loop cannot make further progress ({what}, "
                           "and no host work is pending that could end the wait)")

    def poll(self, block: bool) -> bool:
        """Wait for descriptors and timers (at most until the next deadline; not at all
        unless ``block``) and make their tasks ready. False if there was nothing to wait
        for (no descriptor, no timer, no ready task)."""
        if self._ready or self._guest_ready:
            block = False
        now = time.monotonic_ns()
        self._inline_poll_at = now + INLINE_POLL_INTERVAL_NS
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, ref = heapq.heappop(timers)
            task = ref()
            if task is None:
                continue
            waiting = task._waiting
            if type(waiting) is _Until and not task.done and not task._queued:
                # _make_ready(task), inline for a task waiting on its deadline alone (a WASI
                # 0.3 clock wait): once per wait that ends so
                task._queued = True
                task._waiting = None
                (self._guest_ready if task.guest else self._ready).append(task)
            elif _deadline_passed(waiting, now):
                self._make_ready(task)
        if self._ready or self._guest_ready:
            block = False
        if not self._readers and not self._writers and not timers:
            return bool(self._ready or self._guest_ready)
        poller = self._poller
        readers, writers = self._readers, self._writers
        if self._changed:
            self._update_poller()
        timeout_ms: float | None = 0
        if block:
            if timers:
                wait = max(0.0, (timers[0][0] - time.monotonic_ns()) / 1e6)
                # Rounding up: no early spin. poll() takes a C int: a later deadline is
                # slept towards in steps of about 24 days (a timer not due yet just waits on).
                timeout_ms = min(int(wait) + (1 if wait % 1 else 0), MAX_POLL_MS)
            else:
                timeout_ms = None
        events = poller.poll(timeout_ms)
        if events:
            self.progress += 1
        for fd, mask in events:
            if fd == self._interrupt_fd:
                self._clear_wake()  # a wake() (not an interrupt): look again
                continue
            hangup = mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL)
            if mask & _POLL_IN or hangup:
                tasks = readers.pop(fd, None)
                if tasks is not None:
                    self._changed.add(fd)
                    for task in tasks:
                        self._make_ready(task)
            if mask & _POLL_OUT or hangup:
                tasks = writers.pop(fd, None)
                if tasks is not None:
                    self._changed.add(fd)
                    for task in tasks:
                        self._make_ready(task)
        now = time.monotonic_ns()
        while timers and timers[0][0] <= now:
            _, _, ref = heapq.heappop(timers)
            task = ref()
            if task is not None and _deadline_passed(task._waiting, now):
                self.progress += 1
                self._make_ready(task)
        return True

    def _update_poller(self) -> None:
        """Register with the poll object what is waited on of each descriptor in ``_changed``."""
        readers, writers, masks, poller = self._readers, self._writers, self._poll_masks, self._poller
        for fd in self._changed:
            want = (_POLL_IN if fd in readers or fd == self._interrupt_fd else 0) | (_POLL_OUT if fd in writers else 0)
            have = masks.get(fd, 0)
            if want == have:
                continue
            if not want:
                poller.unregister(fd)
                del masks[fd]
            else:
                poller.register(fd, want)  # (registering again replaces the mask)
                masks[fd] = want
        self._changed.clear()

    def forget_fd(self, fd: int) -> None:
        """A descriptor is being closed: its waiters are woken (they will see the error)."""
        for table in (self._readers, self._writers):
            tasks = table.pop(fd, None)
            if tasks is not None:
                self._changed.add(fd)
                for task in tasks:
                    self._make_ready(task)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def close(self) -> None:
        """Cancel every coroutine (their ``finally`` blocks release what they hold)."""
        if self.closed:
            return
        self.closed = True
        for _ in range(3):  # a cancelled task may start another; give those their turn
            tasks = list(self._tasks)
            if not tasks:
                break
            for task in tasks:
                if not task.done:
                    self._unwait(task)
                    try:
                        task.coro.close()
                    except BaseException as e:  # noqa: BLE001 - a coroutine refusing to close
                        log.warning("host task %s did not close cleanly: %s", task.name, e)
                    self._finish(task, None, Cancelled())
        self._ready.clear()
        self._guest_ready.clear()
        self._readers.clear()
        self._writers.clear()
        self._timers.clear()
        for fd in self._poll_masks:
            self._poller.unregister(fd)
        self._poll_masks.clear()
        self._changed.clear()


__all__ = ["Cancelled", "Event", "HostTask", "Scheduler", "any_of", "readable", "sleep_until", "writable", "yield_now"]
