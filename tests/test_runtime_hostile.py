"""A hostile WAT guest against the runtime's Canonical ABI (guest_examples/wat/hostile.wat).

Each export hands the host one kind of bad value. Each must trap with a message that names
the cause, never read or write outside the guest's memory, and leave the host able to run
later calls and instances. The causes are this host's own wording on the core runtime; the
component runtime (wasmtime's checks) must trap too.
"""

from __future__ import annotations

from typing import Any

import pytest
from wasmtime import WasmtimeError

from wasi_tls_host import GuestError, Host
from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.runtime.resources import HostResource

pytestmark = pytest.mark.hostile  # the hostile suite: pytest -m hostile

hostile = Interface("wasi-tls-host:test/hostile")
REENTER: list[Any] = []  # the guest instance the "reenter" host function calls back into


class Res(HostResource):
    def __init__(self, value: int) -> None:
        self.value = value


hostile.resource("res", Res)


@hostile.func("[constructor]res")
def res_new(cx: object, v: int) -> Res:
    return Res(v)


@hostile.func("[method]res.get")
def res_get(cx: object, r: Res) -> int:
    return r.value


@hostile.func("take-bytes")
def take_bytes(cx: object, data: bytes) -> int:
    return len(data)


KEPT: list[Any] = []  # what "keep-bytes" holds on to after its call (a host bug on purpose)


@hostile.func("keep-bytes", bytes_views=True)
def keep_bytes(cx: object, data: Any) -> int:
    KEPT.append(data if KEEP_MODE[0] == "view" else memoryview(data))  # "derived": a view of the view
    return len(data)


KEEP_MODE = ["view"]


@hostile.func("give-bytes")
def give_bytes(cx: object, n: int) -> bytes:
    return bytes(n)


@hostile.func("give-words")
def give_words(cx: object, n: int) -> list[int]:
    return list(range(n))


@hostile.func("take-string")
def take_string(cx: object, s: str) -> int:
    return len(s)


@hostile.func("take-option")
def take_option(cx: object, o: int | None) -> int:
    return 0 if o is None else o


@hostile.func("take-flags")
def take_flags(cx: object, f: set[str]) -> int:
    return len(f)


DTOR_CALLS: list[int] = []


@hostile.func("reenter")
def reenter(cx: object) -> None:
    DTOR_CALLS.append(1)
    if REENTER:
        REENTER[0].call("ping")


# export -> the cause the core runtime must name
CASES = {
    "oob-list": r"list<u8> at 0xfffa with 10 bytes is out of bounds \(memory is 65536 bytes\)",
    "wrap-list": r"list<u8> at 0xfffffff0 with 32 bytes is out of bounds",
    "bad-utf8": r"string at 0x64 is not valid UTF-8",
    "bad-option": r"discriminant 5 is out of range for a option with 2 cases",
    "realloc-oob": r"realloc returned an out-of-bounds pointer 0xffff0000 for 16 bytes",
    "realloc-misaligned": r"realloc returned a misaligned pointer 0x3e9 \(alignment 4\)",
    "retptr-oob": r"result at 0xfffffffc with 8 bytes is out of bounds",
    "unknown-handle": r"unknown handle index 77",
    "double-drop": r"unknown handle index 1",
    "reentrant-dtor": r"cannot enter component instance: it is already running",
}
# export -> the cause wasmtime's component API names (the component runtime, wasmtime 49)
COMPONENT_CASES = {
    "oob-list": r"list pointer/length out of bounds of memory",
    "wrap-list": r"list pointer/length out of bounds of memory",
    "bad-utf8": r"invalid utf-8 sequence",
    "bad-option": r"discriminant 5 out of range",
    "realloc-oob": r"realloc return: beyond end of memory",
    "realloc-misaligned": r"realloc return: result not aligned",
    "retptr-oob": r"pointer out of bounds",
    "unknown-handle": r"unknown handle index 77",
    "double-drop": r"unknown handle index 1",
}
# wasmtime's component API lets the host call back into a running instance; the spec (and
# the core runtime) do not.
CORE_ONLY = {"reentrant-dtor"}
assert set(COMPONENT_CASES) == set(CASES) - CORE_ONLY


@pytest.fixture(scope="module")
def hostile_host(runtime: str) -> Host:
    return Host(interfaces=[hostile], runtime=runtime)


@pytest.mark.parametrize("export", sorted(CASES))
def test_each_hostile_value_traps_with_its_cause(hostile_host: Host, guest_path, runtime: str, export: str) -> None:
    if runtime != "core" and export in CORE_ONLY:
        pytest.skip("the component runtime allows this")
    with hostile_host.instantiate(guest_path("hostile")) as g:
        REENTER[:] = [g]
        assert g.call("ok-bytes") == 100
        with pytest.raises(WasmtimeError) as info:
            g.call(export)
        expected = CASES[export] if runtime == "core" else COMPONENT_CASES[export]
        assert _matches(expected, str(info.value)), str(info.value)
    # The host is unharmed: a fresh instance works.
    with hostile_host.instantiate(guest_path("hostile")) as g:
        assert g.call("ping") == 1
        assert g.call("ok-bytes") == 100


def test_memory_grown_by_realloc_is_used_at_its_new_size(hostile_host: Host, guest_path) -> None:
    # realloc grows the memory by 1 MiB each time; the host lowers into the new extent.
    with hostile_host.instantiate(guest_path("hostile")) as g:
        for n in (70_000, 900_000, 1_000_000):
            assert g.call("grow-and-give", n) == n


def test_a_lent_view_of_guest_memory_dies_with_the_call(guest_path) -> None:
    host = Host(interfaces=[hostile], runtime="core")
    with host.instantiate(guest_path("hostile")) as g:
        KEPT.clear()
        KEEP_MODE[0] = "view"
        assert g.call("keep-view") == 16
        with pytest.raises(ValueError, match="released"):
            bytes(KEPT[0])  # reading it later would read memory the guest may have moved
        # A view derived from the lent one cannot be revoked: the call traps instead.
        KEEP_MODE[0] = "derived"
        with pytest.raises(WasmtimeError, match="the host kept a view of guest memory beyond the call"):
            g.call("keep-view")
        KEPT.clear()


def test_a_borrow_used_after_its_call_traps(guest_path) -> None:
    host = Host(interfaces=[hostile], runtime="core")  # the component API cannot lend host objects
    with host.instantiate(guest_path("hostile")) as g:
        assert g.call("keep-borrow", Res(3)) == 0
        assert len(g.state.table) == 0  # the lent object left the table when the call ended
        with pytest.raises(WasmtimeError, match=r"unknown handle index 1"):
            g.call("use-kept")


def test_a_guest_resource_has_its_rep_and_its_destructor_runs(hostile_host: Host, guest_path) -> None:
    REENTER.clear()  # the destructor only reports to the host this time
    DTOR_CALLS.clear()
    with hostile_host.instantiate(guest_path("hostile")) as g:
        assert g.call("own-resource", 0x1234_5678) == 0x1234_5678
    assert DTOR_CALLS == [1]


def test_flag_bits_beyond_the_type_are_ignored(hostile_host: Host, guest_path) -> None:
    # The spec's unpack_flags_from_int reads only the type's bits (wasmtime does the same).
    with hostile_host.instantiate(guest_path("hostile")) as g:
        assert g.call("bad-flags") == 3


def test_trap_names_the_host_function(guest_path) -> None:
    host = Host(interfaces=[hostile], runtime="core")
    with host.instantiate(guest_path("hostile")) as g:
        with pytest.raises(WasmtimeError, match="wasi-tls-host:test/hostile#take-string: string at 0x64"):
            g.call("bad-utf8")


def _matches(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_a_construct_neither_runtime_runs_is_refused_with_both_reasons(guest_path, caplog) -> None:
    # The core runtime falls back to the component runtime for what it does not run (one log
    # line); re-exporting an imported instance is refused there too: one GuestError, saying why.
    with caplog.at_level("INFO", logger="wasi_tls_host"):
        with pytest.raises(GuestError, match="reexport of an imported function which is not implemented"):
            Host(runtime="core").load(guest_path("reexport"))
    lines = [r.getMessage() for r in caplog.records if "core runtime" in r.getMessage()]
    assert lines == ["the core runtime does not support re-exporting imported instance env: "
                     "running this component on the component runtime"]


def test_a_component_calling_its_own_export_runs_on_the_core_runtime(guest_path) -> None:
    with Host(runtime="core").instantiate(guest_path("self_call")) as g:
        assert g.runtime == "core"
        assert g.call("four") == 4


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.mknod, (self.marker,))


def test_a_tampered_cached_plan_is_refused_not_run(tmp_path, guest_path) -> None:
    import pickle

    wasm = guest_path("hostile")
    cache = tmp_path / "cache"
    Host(interfaces=[hostile], runtime="core", cache_dir=cache).load(wasm)
    [plan] = cache.glob("*.plan")
    marker = tmp_path / "pwned"
    plan.write_bytes(pickle.dumps(_Evil(str(marker))))
    host = Host(interfaces=[hostile], runtime="core", cache_dir=cache)
    with host.instantiate(wasm) as g:
        assert g.call("ping") == 1
    assert not marker.exists()
    assert host.cache.compiled == 1  # refused, so compiled again
