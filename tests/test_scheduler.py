"""The store's scheduler of host coroutines and the host ends of streams, driven directly
(no guest): ``any_of`` and a producer that must hear of its reader going away."""

from __future__ import annotations

import socket
import time
import weakref
from typing import Callable, Iterator

import pytest

from wasi_tls_host.runtime import scheduler as scheduler_module
from wasi_tls_host.runtime.scheduler import Event, Scheduler, any_of, readable, sleep_until, yield_now
from wasi_tls_host.runtime.streams import StreamClosed, StreamReader, new_stream


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_any_of_resumes_on_the_event_and_forgets_the_descriptor(pair) -> None:
    a, _ = pair
    scheduler = Scheduler()
    event = Event()

    async def waiter() -> str:
        await any_of(readable(a.fileno()), event)
        return "woken"

    task = scheduler.start(waiter())
    assert not task.done
    event.set()
    scheduler.run_ready()
    assert task.result == "woken"
    assert scheduler._readers == {}  # not left waiting on the socket


def test_any_of_resumes_on_the_descriptor_and_forgets_the_event(pair) -> None:
    a, b = pair
    scheduler = Scheduler()
    event = Event()

    async def waiter() -> bytes:
        await any_of(readable(a.fileno()), event)
        return a.recv(10)

    task = scheduler.start(waiter())
    b.send(b"data")
    scheduler.wait_until(lambda: task.done, "the test waits")
    assert task.result == b"data"
    assert event._waiters == []


def test_any_of_resumes_at_the_deadline_and_forgets_the_descriptor(pair) -> None:
    # What a WASI 0.2 engine's pollable waits on (descriptors and a deadline) is one wait.
    a, _ = pair
    scheduler = Scheduler()

    async def waiter() -> str:
        await any_of(readable(a.fileno()), sleep_until(time.monotonic_ns() + 20_000_000))
        return "woken"

    task = scheduler.start(waiter())
    assert not task.done
    scheduler.wait_until(lambda: task.done, "the test waits")
    assert task.result == "woken" and scheduler._readers == {}


def test_a_deadline_left_behind_by_any_of_wakes_nothing(pair) -> None:
    a, b = pair
    scheduler = Scheduler()
    event = Event()

    async def waiter() -> str:
        await any_of(readable(a.fileno()), sleep_until(time.monotonic_ns() + 10_000_000))
        await event  # the first wait's deadline passes while the task waits here
        return "woken by the event"

    task = scheduler.start(waiter())
    b.send(b"x")
    scheduler.wait_until(lambda: task._waiting is event, "the test waits")
    time.sleep(0.02)
    scheduler.poll(block=False)
    scheduler.run_ready()
    assert not task.done
    event.set()
    scheduler.run_ready()
    assert task.result == "woken by the event"


def test_any_of_takes_descriptors_deadlines_and_events_only() -> None:
    with pytest.raises(TypeError, match="descriptors, deadlines and Events"):
        any_of(object())


def test_fill_waiting_for_its_source_ends_when_the_reader_drops_the_stream(pair) -> None:
    """A socket receiver parked on its socket (no data yet) hears at once that the reader
    dropped the stream, instead of holding the socket until the peer sends something."""
    a, _ = pair
    scheduler = Scheduler()
    stream, writer = new_stream()
    reader = StreamReader(stream, is_bytes=True)
    outcome: list[str] = []

    async def produce() -> None:
        try:
            await writer.fill(a.recv_into, lambda: readable(a.fileno()))
        except StreamClosed:
            outcome.append("reader gone")

    async def consume() -> None:
        await reader.read(100)

    scheduler.start(consume())  # a read is pending: the producer tries recv, gets nothing, waits
    producer = scheduler.start(produce())
    assert not producer.done
    reader.close()
    scheduler.run_ready()
    assert producer.done and outcome == ["reader gone"]
    assert scheduler._readers == {}


def test_a_pass_in_which_every_task_only_yielded_ends_run_ready() -> None:
    """A coroutine that yields again and again (polling something) is stepped once per
    run_ready when nothing else made progress, so the caller gets to poll descriptors and
    timers; one that another task wakes meanwhile keeps running in the same call."""
    scheduler = Scheduler()
    steps = {"spinner": 0}
    event = Event()

    async def spinner() -> None:
        while True:
            steps["spinner"] += 1
            await yield_now()

    async def waiter() -> str:
        await event
        return "woken"

    spinning = scheduler.spawn(spinner())
    scheduler.run_ready()
    assert steps["spinner"] == 1  # was 1024: a yield never counted as "only yielders left"

    waiting = scheduler.start(waiter())

    async def setter() -> None:
        event.set()

    scheduler.spawn(setter())
    scheduler.run_ready()
    assert waiting.result == "woken"  # the setter's pass made progress: the call went on to the waiter
    spinning.coro.close()


def test_timer_entries_of_finished_tasks_do_not_pile_up() -> None:
    # Each TLS connection's handshake deadlines leave two entries that fall due 30 s later;
    # a server taking hundreds of short connections a second kept thousands of them.
    from wasi_tls_host.runtime.scheduler import TIMER_PRUNE_MIN

    scheduler = Scheduler()
    far = time.monotonic_ns() + 3600 * 10**9

    async def deadline() -> None:
        await sleep_until(far)

    waiting = scheduler.start(deadline())  # a live wait is kept through every pruning
    for _ in range(4 * TIMER_PRUNE_MIN):
        scheduler.start(deadline()).cancel()
    assert len(scheduler._timers) <= TIMER_PRUNE_MIN
    assert any(ref() is waiting for _, _, ref in scheduler._timers)
    waiting.cancel()


def test_a_cancelled_timer_wait_frees_what_its_coroutine_held_at_once() -> None:
    # A TLS connection's handshake-deadline task is cancelled when the handshake ends; its
    # timer entry stays in the heap until the deadline (30 s by default). It used to hold the
    # task, whose Cancelled carries the coroutine's frames: the whole connection (its OpenSSL
    # object and buffers) lived on until then, about 60 KiB per connection in the 0.3 soak.
    from conftest import without_gc

    class Connection:
        pass

    scheduler = Scheduler()
    connection = Connection()
    held = weakref.ref(connection)

    async def deadline(of: Connection) -> None:
        await sleep_until(time.monotonic_ns() + 3600 * 10**9)

    async def until_event_or_deadline(of: Connection, event: Event) -> Connection:
        await any_of(event, sleep_until(time.monotonic_ns() + 3600 * 10**9))
        return of

    with without_gc():
        task = scheduler.start(deadline(connection))
        del connection
        task.cancel()
        assert task.done
        del task
        assert held() is None
        # A task that finished otherwise (its result: the connection) is not kept either.
        connection, event = Connection(), Event()
        held = weakref.ref(connection)
        task = scheduler.start(until_event_or_deadline(connection, event))
        del connection
        event.set()
        scheduler.run_ready()
        assert task.done and held() is not None
        del task
        assert held() is None
    scheduler.close()


def _wait_order(inline: bool, first: str, timer: bool = False) -> tuple[list[str], object]:
    """Guest tasks g1 and g2 wait on events that one host task sets (``first``'s first),
    with ``timer`` after a deadline that has passed when g1 waits (a WASI 0.3 clock wait of
    1 ns); g1 waits either inline (``resume_inline``, as a callback task's event loop does)
    or by suspending: the order in which everything runs must not depend on it."""
    scheduler = Scheduler()
    order: list[str] = []
    events = {"g1": Event(), "g2": Event()}
    how: list[object] = []

    async def host() -> None:
        if timer:
            await sleep_until(time.monotonic_ns())
        order.append("host")
        events[first].set()
        events["g2" if first == "g1" else "g1"].set()

    async def g2() -> None:
        await events["g2"]
        order.append("g2")

    async def g1() -> None:
        await yield_now()  # resumed by run_ready from here on, as an event loop is
        if timer:
            scheduler.start(host(), "host")  # runs until it sleeps
        else:
            scheduler.spawn(host(), "host")
        if inline:
            wait = scheduler.resume_inline(events["g1"])
            how.append(wait)
            if wait is not None:
                await wait
        else:
            await events["g1"]
        order.append("g1")

    scheduler.start(g2(), "g2", guest=True)
    scheduler.start(g1(), "g1", guest=True)
    for _ in range(5):
        scheduler.run_ready(guests=True)
        scheduler.poll(block=False)  # as wait_until does between passes
    assert not scheduler.pending
    return order, how[0] if how else "suspended"


@pytest.mark.parametrize("timer", [False, True], ids=["host work ready", "timer due"])
@pytest.mark.parametrize("first", ["g1", "g2"])
def test_a_guest_task_resumed_inline_runs_in_the_order_a_suspended_one_would(first: str, timer: bool) -> None:
    """With a timer: the due timer is taken inside the inline resume (no suspension for a
    clock wait that has passed), in the order a poll between passes would give."""
    inline, how = _wait_order(True, first, timer)
    suspended, _ = _wait_order(False, first, timer)
    assert inline == suspended == ["host", first, "g2" if first == "g1" else "g1"]
    if first == "g1":
        assert how is None  # woken first: it went on inside the same step
    else:
        assert how is not None  # woken behind g2: it waited for its turn


def _inline_resumes(scheduler: Scheduler, until: Callable[[int], bool]) -> int:
    """A guest task that waits inline (``resume_inline``) again and again for an event a
    host task sets at once, as a callback event loop making host calls does; how many times."""
    count = [0]

    async def host(event: Event) -> None:
        event.set()

    async def guest() -> None:
        await yield_now()  # resumed by run_ready from here on, as an event loop is
        while not until(count[0]):
            event = Event()
            scheduler.spawn(host(event), "host")
            wait = scheduler.resume_inline(event)
            assert wait is None  # woken inline every time: no suspension
            count[0] += 1

    task = scheduler.start(guest(), "guest", guest=True)
    scheduler.run_ready(guests=True)
    assert task.done and task.error is None
    return count[0]


def test_an_inline_resume_polls_descriptors_only_when_due(pair, monkeypatch) -> None:
    """A guest with a socket open (as every WASI 0.3 guest with sockets has) resumed inline
    does not build a poll object and make a syscall for every event."""
    a, _ = pair
    monkeypatch.setattr(scheduler_module, "INLINE_POLL_INTERVAL_NS", 60 * 10**9)
    scheduler = Scheduler()
    polls: list[bool] = []
    poll = scheduler.poll
    scheduler.poll = lambda block: polls.append(block) or poll(block)  # type: ignore[method-assign]

    async def reader() -> None:
        await readable(a.fileno())

    scheduler.start(reader())
    scheduler.poll(block=False)
    polls.clear()
    assert _inline_resumes(scheduler, lambda n: n == 200) == 200
    assert polls == []
    scheduler.close()


def test_an_inline_resume_still_sees_a_descriptor_and_a_timer_in_time(pair) -> None:
    a, b = pair
    scheduler = Scheduler()
    woken: list[str] = []

    async def reader() -> None:
        await readable(a.fileno())
        woken.append("socket")

    async def sleeper() -> None:
        await sleep_until(time.monotonic_ns() + 5_000_000)
        woken.append("timer")

    scheduler.start(reader())
    scheduler.start(sleeper())
    b.send(b"x")
    deadline = time.monotonic() + 10
    _inline_resumes(scheduler, lambda n: len(woken) == 2 or time.monotonic() > deadline)
    assert sorted(woken) == ["socket", "timer"]
    scheduler.close()


class _CountingPoller:
    """The scheduler's poll object, counting the kernel polls (and what they returned)."""

    def __init__(self, poller: object) -> None:
        self.poller, self.calls, self.events = poller, 0, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.poller, name)

    def poll(self, timeout: object = None) -> list[tuple[int, int]]:
        self.calls += 1
        events = self.poller.poll(timeout)  # type: ignore[attr-defined]
        self.events += len(events)
        return events


def test_a_descriptor_no_longer_waited_on_is_no_longer_polled(pair) -> None:
    """The poll object is kept across waits: a socket whose waiter left (its ``any_of``
    ended on the event) must leave it too, or once the socket is readable every later wait
    would return at once for it (a waiting guest spinning on the CPU)."""
    a, b = pair
    scheduler = Scheduler()
    event = Event()
    counting = scheduler._poller = _CountingPoller(scheduler._poller)  # type: ignore[assignment]

    async def either() -> None:
        await any_of(readable(a.fileno()), event)

    async def sleeper() -> None:
        await sleep_until(time.monotonic_ns() + 30_000_000)

    waiter = scheduler.start(either())
    scheduler.poll(block=False)  # the socket is registered (nothing to read yet)
    assert not waiter.done and counting.calls == 1
    b.send(b"x")  # readable from now on: nobody reads it
    event.set()  # the waiter ends on the event instead
    scheduler.run_ready()
    assert waiter.done and scheduler._readers == {}
    counting.calls = counting.events = 0
    sleeping = scheduler.start(sleeper())
    scheduler.wait_until(lambda: sleeping.done, "the test's sleeper")
    assert counting.events == 0 and counting.calls <= 3  # slept in the kernel: no wake for the socket
    scheduler.close()


def test_a_descriptor_number_closed_and_reused_is_polled_as_the_new_socket() -> None:
    scheduler = Scheduler()
    a, b = socket.socketpair()
    number = a.fileno()

    async def reader(sock: socket.socket) -> bytes:
        await readable(sock.fileno())
        return sock.recv(10)

    first = scheduler.start(reader(a))
    scheduler.poll(block=False)  # registered
    scheduler.forget_fd(number)
    a.close()
    b.close()
    scheduler.run_ready()
    assert first.done
    c, d = socket.socketpair()  # the lowest numbers free: those just closed
    try:
        assert number in (c.fileno(), d.fileno())
        new = c if c.fileno() == number else d
        second = scheduler.start(reader(new))
        (d if new is c else c).send(b"new")
        deadline = time.monotonic() + 10
        while not second.done and time.monotonic() < deadline:
            scheduler.poll(block=False)
            scheduler.run_ready()
        assert second.done and second.result == b"new"
    finally:
        c.close()
        d.close()
    scheduler.close()


def test_schedulers_that_polled_descriptors_leave_no_descriptor_open(pair) -> None:
    from conftest import open_fds, without_gc

    a, b = pair
    b.send(b"x")
    with without_gc():
        before = open_fds()
        for _ in range(20):
            scheduler = Scheduler()

            async def reader() -> None:
                await readable(a.fileno())

            scheduler.start(reader())
            scheduler.start(reader())
            scheduler.poll(block=False)
            scheduler.run_ready()
            scheduler.start(reader())
            scheduler.close()
        assert open_fds() == before


def test_a_done_callback_added_beside_a_shared_one_leaves_the_shared_one_alone() -> None:
    """An async lower's task starts with a tuple of one callback made once per signature
    (no closure or list per call): a callback added later goes to that task alone."""
    scheduler = Scheduler()
    heard: list[tuple[str, str]] = []
    shared = (lambda t: heard.append(("shared", t.name)),)

    async def quick() -> None:
        await yield_now()

    tasks = [scheduler.start(quick(), name) for name in ("a", "b")]
    for task in tasks:
        task._callbacks = shared
    tasks[0].add_done_callback(lambda t: heard.append(("own", t.name)))
    scheduler.run_ready()
    assert len(shared) == 1
    assert heard == [("shared", "a"), ("own", "a"), ("shared", "b")]
    scheduler.close()
