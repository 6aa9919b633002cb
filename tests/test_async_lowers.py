"""Async lowers of host functions with the parameter and result shapes WASI 0.3 uses, each
trampoline built for its signature (``lower.make_async_trampoline``), against a WAT guest
(``guest_examples/wat/async_lowers.wat``): 64-bit and signed integers and floats arrive as
their types say, a ``borrow`` argument stays lent until the subtask resolves (the guest
cannot drop it meanwhile, and can once it has the event), an ``own`` argument is taken and
dropped after the call, ``result<own<T>, E>`` and ``result<_, E>`` land at the pointer in
both cases, and bad handles and results trap with the function's name.
"""

from __future__ import annotations

from typing import Any

import pytest
from wasmtime import WasmtimeError

from wasi_tls_host import Host
from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.runtime.resources import HostResource
from wasi_tls_host.runtime.scheduler import yield_now
from wasi_tls_host.runtime.values import Err, Ok, WitError

lowers = Interface("wasi-tls-host:test/async-lowers")
SEEN: list[Any] = []
DROPPED: list[int] = []
ANSWER: dict[str, Any] = {}  # what a function returns instead of its usual value


class Res(HostResource):
    def __init__(self, value: int) -> None:
        self.value = value

    def drop(self) -> None:
        DROPPED.append(self.value)


lowers.resource("res", Res)


@lowers.func("[constructor]res")
def res_new(cx: object, v: int) -> Res:
    return Res(v)


@lowers.func("[method]res.get")
def res_get(cx: object, r: Res) -> int:
    return r.value


@lowers.func("[method]res.wait")
async def res_wait(cx: object, r: Res, n: int) -> int:
    await yield_now()  # the subtask holds the loan across a wait
    return r.value + n


@lowers.func("[static]res.take")
async def res_take(cx: object, r: Res, fail: int) -> Any:
    await yield_now()
    SEEN.append(("take", r.value))
    if fail:
        raise WitError("worse")
    return ANSWER.get("take", Res(r.value * 2))


@lowers.func("check")
async def check(cx: object, n: int, how: str) -> None:
    SEEN.append(("check", how))
    if n == 0:
        raise WitError(how)
    return ANSWER.get("check")


@lowers.func("wide")
async def wide(cx: object, x: int, y: int) -> int:
    await yield_now()
    if "inspect" in ANSWER:
        ANSWER.pop("inspect")(cx)
    SEEN.append(("wide", x, y))
    return ANSWER.get("wide", x)


@lowers.func("floats")
async def floats(cx: object, x: float, y: float) -> float:
    SEEN.append(("floats", x, y))
    return x * y


@pytest.fixture(scope="module")
def lowers_host():
    with Host(interfaces=[lowers], runtime="core") as host:
        yield host


@pytest.fixture(scope="module")
def component(lowers_host: Host, guest_path):
    return lowers_host.load(guest_path("async_lowers"))


@pytest.fixture
def guest(lowers_host: Host, component):
    SEEN.clear()
    DROPPED.clear()
    ANSWER.clear()
    with lowers_host.instantiate(component) as g:
        yield g


def test_wide_signed_and_float_arguments_arrive_as_their_types_say(guest) -> None:
    assert guest.call("wide", 2**64 - 1, -5, 64) == 2**64 - 1
    assert guest.call("floats", 1.5, 0.25) == 0.375
    assert SEEN == [("wide", 2**64 - 1, -5), ("floats", 1.5, 0.25)]
    assert [h for h in guest.core.handles if h is not None] == []


@pytest.mark.parametrize(("answer", "cause"), [
    (2**64, r"wide.*expected a u64 \(an integer in \[0, 18446744073709551615\]\), got 18446744073709551616"),
    ("7", r"wide.*expected a u64 .*got '7'"),
])
def test_a_wide_result_out_of_its_range_traps_where_the_guest_waits(guest, answer: Any, cause: str) -> None:
    ANSWER["wide"] = answer
    with pytest.raises(WasmtimeError, match=cause):
        guest.call("wide", 1, 1, 64)


def test_a_result_pointer_into_memory_the_guest_grew_is_in_range(guest) -> None:
    """The guest grew its memory after the runtime last looked at it (waitable-set.wait wrote
    its event): the result pointer in the new page is checked against the memory as it is."""
    assert guest.call("grown", 7) == 8
    assert SEEN == [("wide", 7, 0), ("wide", 8, 0)]


def test_a_waiting_call_task_and_subtask_have_every_attribute(guest) -> None:
    """The async lower makes a waiting call's host task and subtask inline (no __init__ runs):
    each has every attribute its class's own constructor gives."""
    from wasi_tls_host.runtime.core.concurrent import Subtask
    from wasi_tls_host.runtime.scheduler import HostTask

    seen: dict[str, Any] = {}

    def inspect(cx: Any) -> None:
        task = cx.scheduler._stepping  # the task of this very call
        slots = [n for cls in type(task).__mro__ for n in getattr(cls, "__slots__", ()) if n != "__weakref__"]
        seen["missing"] = [n for n in slots if not hasattr(task, n)]
        seen["is_host_task"] = isinstance(task, HostTask)
        seen["subtask"] = sorted(vars(task.subtask))
        seen["state"] = task.subtask.state

    ANSWER["inspect"] = inspect
    assert guest.call("wide", 5, 0, 64) == 5
    assert seen == {"missing": [], "is_host_task": True, "subtask": sorted(vars(Subtask("x"))), "state": Subtask.STARTED}


def test_a_result_lands_right_when_the_guest_grew_and_moved_its_memory_while_the_call_waited(guest_path) -> None:
    """The guest grows its memory by 64 pages between the call's start (STARTED) and its
    end, on an engine that reserves nothing ahead (the memory moves when it grows): the
    result is stored in the memory where it is then."""
    from wasmtime import Engine

    from wasi_tls_host.runtime.engine import engine_config

    config = engine_config()
    config.memory_reservation = 0
    config.memory_reservation_for_growth = 0
    config.memory_guard_size = 0
    SEEN.clear()
    with Host(interfaces=[lowers], runtime="core", engine=Engine(config), epoch_interruption=True) as host, \
            host.instantiate(guest_path("async_lowers")) as g:
        assert g.call("wide", 5, 0, 64) == 5
        (memory,) = g.core._memories.values()
        base = memory.base
        assert g.call("grown-while-waiting", 2**40 + 3) == 2**40 + 3
        assert memory.base != base  # it moved
        assert g.call("grown-while-waiting", 9) == 9  # and again, from the grown memory's size
    assert SEEN == [("wide", 5, 0), ("wide", 2**40 + 3, 0), ("wide", 9, 0)]


def test_a_misaligned_result_pointer_traps_before_the_host_function_runs(guest) -> None:
    with pytest.raises(WasmtimeError, match=r"wide.*result pointer 0x44 is misaligned"):
        guest.call("wide", 1, 1, 68)
    assert SEEN == []


def test_a_borrow_stays_lent_until_the_subtask_resolves(guest) -> None:
    assert guest.call("lend", 40, 2, 0) == 42  # dropped after the event: the loan had ended
    assert DROPPED == [40]
    assert [h for h in guest.core.handles if h is not None] == []


def test_dropping_a_borrowed_handle_while_the_call_is_pending_traps(guest) -> None:
    with pytest.raises(WasmtimeError, match=r"handle index 1 is lent out and cannot be dropped"):
        guest.call("lend", 40, 2, 1)


def test_a_borrow_of_an_unknown_handle_traps_before_the_host_function_runs(guest) -> None:
    with pytest.raises(WasmtimeError, match=r"res\.wait: unknown handle index 99"):
        guest.call("lend", 40, 2, 2)


def test_an_own_argument_is_taken_and_an_own_result_lands_at_the_pointer(guest) -> None:
    assert guest.call("take", 21, 0) == 42  # the new res, through its handle
    assert SEEN == [("take", 21)]
    assert DROPPED == [21]  # the argument was consumed and not kept
    assert guest.call("take", 5, 1) == 1001  # err(worse)
    assert DROPPED == [21, 5]


def test_an_own_result_that_is_no_resource_traps(guest) -> None:
    ANSWER["take"] = "not a res"
    with pytest.raises(WasmtimeError, match=r"res\.take: expected a .*#res \(Res\), got 'not a res'"):
        guest.call("take", 3, 0)


def test_a_forged_own_handle_traps(guest) -> None:
    with pytest.raises(WasmtimeError, match=r"res\.take: unknown handle index 99"):
        guest.call("forged-own")


@pytest.mark.parametrize(("n", "how", "answer", "stored"), [
    (1, 0, None, 0x00), (0, 0, None, 0x10), (0, 1, None, 0x11), (2, 0, Ok(None), 0x00), (2, 0, Err("worse"), 0x11),
])
def test_a_unit_result_stores_ok_or_its_error(guest, n: int, how: int, answer: Any, stored: int) -> None:
    if answer is not None:
        ANSWER["check"] = answer
    assert guest.call("check", n, how) == stored  # discriminant * 16 + the error's case (bad = 0)
    assert SEEN == [("check", ["bad", "worse"][how])]


def test_an_enum_argument_out_of_range_traps_before_the_host_function_runs(guest) -> None:
    with pytest.raises(WasmtimeError, match=r"check: discriminant 2 is out of range for a enum with 2 cases"):
        guest.call("check", 1, 2)
    assert SEEN == []
