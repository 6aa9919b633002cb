"""A guest that misuses the async ABI (``guest_examples/wat/async_hostile.wat``): every
misuse traps with the spec's cause (wasmtime's words where the spec's tests use them), the
trapped instance refuses further calls, and a fresh instance of the same component works,
with nothing left behind in the store.
"""

from __future__ import annotations

import pytest
from wasmtime import WasmtimeError

from test_async_abi import probe
from wasi_tls_host import Host

pytestmark = pytest.mark.hostile  # the hostile suite: pytest -m hostile

MISUSES = {
    "wait-on-non-set": r"waitable-set.wait: handle index \d+ is not a waitable set \(it is a readable end of a stream\)",
    "wait-on-unknown-set": r"unknown handle index 4242",
    "read-out-of-range": r"stream.read: buffer at 0xfffa with 100 bytes is out of bounds",
    "read-misaligned": r"stream.read: buffer pointer 0x2 is not 4-byte aligned",
    "second-read": r"stream.read: cannot have concurrent operations active on a future/stream",
    "write-after-reader-dropped": r"cannot write to stream after being notified that the readable end dropped",
    "drop-busy-stream": r"cannot remove busy stream",
    "cancel-idle": r"stream.cancel-read: there is no read in progress to cancel",
    "return-twice": r"task.return: the task has already returned",
    "never-return": r"exited without calling task.return",
    "future-write-twice": r"future.write: cannot have concurrent operations active on a future/stream",
    "future-drop-unwritten": r"cannot drop future write end without first writing a value",
    "drop-nonempty-set": r"waitable-set.drop: the set still holds 1 waitable",
    "sync-use-of-joined": r"waitable cannot be used synchronously while added to a waitable set",
    "drop-running-subtask": r"cannot drop a subtask which has not yet resolved",
    "wait-forever": r"deadlock detected: event loop cannot make further progress",
    "bad-code": r"unsupported callback code: 5",
    "wait-non-set-cb": r"the callback returned WAIT on handle index \d+, which is not a waitable set",
}


@pytest.fixture(scope="module")
def hostile_host() -> Host:
    return Host(interfaces=[probe], runtime="core")


@pytest.mark.parametrize("export", list(MISUSES))
def test_misuse_traps_with_its_cause_and_poisons_only_that_instance(hostile_host: Host, guest_path, export: str) -> None:
    component = hostile_host.load(guest_path("async_hostile"))
    with hostile_host.instantiate(component) as g:
        with pytest.raises(WasmtimeError, match=MISUSES[export]):
            g.call(export)
        with pytest.raises(WasmtimeError, match="cannot enter component instance: it trapped before"):
            g.call("join-two-sets")
    with hostile_host.instantiate(component) as fresh:
        assert fresh.call("join-two-sets") == 7
        assert fresh.state.scheduler.pending == 0


def test_joining_a_second_set_moves_the_waitable(hostile_host: Host, guest_path) -> None:
    # Not a misuse: the spec moves it; the event arrives on the second set only.
    with hostile_host.instantiate(guest_path("async_hostile")) as g:
        assert g.call("join-two-sets") == 7
        assert [h for h in g.core.handles if h is not None] == []


def test_backpressure_keeps_new_async_calls_out(hostile_host: Host, guest_path) -> None:
    with hostile_host.instantiate(guest_path("async_hostile")) as g:
        assert g.call("backpressure-on") == 0
        with pytest.raises(WasmtimeError, match="cannot enter component instance: it has backpressure set"):
            g.call("join-two-sets")
