"""Async lowers of host functions with plain integer parameters and results (the core
runtime builds each async lower for its signature, ``lower.make_async_trampoline``; unsigned
ones are lifted by masks alone), against a WAT guest
(``guest_examples/wat/async_plain.wat``) that passes the result pointer it is told to: the
arguments arrive masked or signed as their types say, the result lands at the pointer, and
every check of the general trampoline still holds (a bad pointer traps before the host
function runs; a result out of its type's range, a WIT error without a result type and a
host failure trap with the function's name).
"""

from __future__ import annotations

from typing import Any

import pytest
from wasmtime import WasmtimeError

from wasi_tls_host import Host
from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.runtime.scheduler import yield_now
from wasi_tls_host.runtime.values import WitError

plain = Interface("wasi-tls-host:test/async-plain")
SEEN: list[tuple[str, int]] = []
ANSWER: dict[str, Any] = {}  # what a function returns instead of its argument


@plain.func("echo-u8")
async def echo_u8(cx, x: int) -> int:
    SEEN.append(("echo-u8", x))
    return ANSWER.get("echo-u8", x)


@plain.func("echo-s32")
async def echo_s32(cx, x: int) -> int:
    SEEN.append(("echo-s32", x))
    return x


@plain.func("later-u16")
async def later_u16(cx, x: int) -> int:
    await yield_now()
    SEEN.append(("later-u16", x))
    return ANSWER.get("later-u16", x)


@plain.func("sync-add")
def sync_add(cx, a: int, b: int) -> int:
    SEEN.append(("sync-add", a + b))
    return a + b


@plain.func("no-result")
async def no_result(cx, x: int) -> None:
    SEEN.append(("no-result", x))
    if x == 0:
        raise WitError("refused")
    if x == 1:
        raise ValueError("the host function failed")


@pytest.fixture(scope="module")
def plain_host():
    with Host(interfaces=[plain], runtime="core") as host:
        yield host


@pytest.fixture(scope="module")
def component(plain_host: Host, guest_path):
    return plain_host.load(guest_path("async_plain"))


@pytest.fixture
def guest(plain_host: Host, component):
    SEEN.clear()
    ANSWER.clear()
    with plain_host.instantiate(component) as g:
        yield g


def test_arguments_are_lifted_by_their_types_and_results_land_at_the_pointer(guest) -> None:
    assert guest.call("echo-u8", 0x1FF, 64) == 0xFF  # a u8 is the low 8 bits of its i32
    assert guest.call("echo-s32", -5, 68) == 0xFFFF_FFFB  # an s32 keeps its sign
    assert guest.call("later-u16", 0x1_2345, 72) == 0x2345  # through a subtask and its event
    assert guest.call("sync-add", 2, 3) == 5  # an async func implemented by a plain def
    assert guest.call("no-result", 7) == 2  # RETURNED, nothing stored
    assert SEEN == [("echo-u8", 0xFF), ("echo-s32", -5), ("later-u16", 0x2345), ("sync-add", 5), ("no-result", 7)]
    assert [h for h in guest.core.handles if h is not None] == []  # every subtask and set dropped


@pytest.mark.parametrize(("retptr", "cause"), [
    (66, r"echo-s32.*result pointer 0x42 is misaligned"),
    (0xFFFF_FFF0, r"echo-s32.*result at 0xfffffff0 with 4 bytes is out of bounds"),
])
def test_a_bad_result_pointer_traps_before_the_host_function_runs(guest, retptr: int, cause: str) -> None:
    with pytest.raises(WasmtimeError, match=cause):
        guest.call("echo-s32", 1, retptr)
    assert SEEN == []


@pytest.mark.parametrize(("export", "args", "answer", "cause"), [
    ("echo-u8", (1, 64), 300, r"echo-u8.*expected a u8 \(an integer in \[0, 255\]\), got 300"),  # finished at once
    ("later-u16", (1, 64), -1, r"later-u16.*expected a u16 \(an integer in \[0, 65535\]\), got -1"),  # finished later
    ("later-u16", (1, 64), True, r"later-u16.*expected a u16 \(an integer in \[0, 65535\]\), got True"),
    ("sync-add", (0xFFFF_FFFF, 1), None, r"sync-add.*expected a u32 \(an integer in \[0, 4294967295\]\), got 4294967296"),
])
def test_a_result_out_of_its_range_traps(guest, export: str, args: tuple[int, ...], answer: Any, cause: str) -> None:
    if answer is not None:
        ANSWER[export] = answer
    with pytest.raises(WasmtimeError, match=cause):
        guest.call(export, *args)


@pytest.mark.parametrize(("x", "cause"), [
    (0, r"no-result: error 'refused' from a function that returns no result"),
    (1, r"no-result.*the host function failed"),
])
def test_a_failure_of_a_function_without_a_result_traps(guest, x: int, cause: str) -> None:
    with pytest.raises(WasmtimeError, match=cause):
        guest.call("no-result", x)


def test_a_wait_runs_the_ready_host_work_before_it_takes_an_event_already_pending(guest) -> None:
    """waitable-set.wait runs the ready host work first even when the set has an event
    already (its inline step keeps the order of the general wait): the third call, made
    after the first wait, has finished when the second wait returns the second call's."""
    assert guest.call("pending-order") == 3
    assert SEEN == [("later-u16", 1), ("later-u16", 2), ("later-u16", 3)]
    assert [h for h in guest.core.handles if h is not None] == []
