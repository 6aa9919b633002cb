"""The runtime layer against a hand-written WAT component (no guest language in between).

The component re-exports host functions, so the values the guest received can be read back
exactly, and runs fixed handle scenarios (two borrows in one call, use after drop, ...).
"""

from __future__ import annotations

import gc

import pytest
from wasmtime import Engine, WasmtimeError

from conftest import open_fds
from wasi_tls_host import GuestError, Host, WitError
from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.runtime.engine import engine_config
from wasi_tls_host.runtime.resources import HostResource
from wasi_tls_host.runtime.values import Err, Ok

probe = Interface("wasi-tls-host:test/probe")
DROPPED: list[int] = []


class Thing(HostResource):
    def __init__(self, value: int) -> None:
        self.value = value

    def drop(self) -> None:
        DROPPED.append(self.value)


probe.resource("thing", Thing)
CONSUMED: list[Thing] = []


@probe.func("[constructor]thing")
def thing_new(cx, v: int) -> Thing:
    return Thing(v)


@probe.func("[method]thing.get")
def thing_get(cx, thing: Thing) -> int:
    return thing.value


@probe.func("sum")
def thing_sum(cx, a: Thing, b: Thing) -> int:
    return a.value + b.value


@probe.func("sum-list")
def thing_sum_list(cx, things: list[Thing]) -> int:
    return sum(t.value for t in things)


@probe.func("consume")
def thing_consume(cx, thing: Thing) -> int:
    CONSUMED.append(thing)
    return thing.value


@probe.func("echo")
def echo(cx, data: bytes) -> bytes:
    return data


NESTED = [None, Ok(Ok((1, 2))), Ok(Err(5)), Err(None)]


@probe.func("nested")
def nested(cx, k: int):
    return NESTED[k]


@probe.func("fail")
def fail(cx, k: int) -> int:
    if k == 99:
        raise RuntimeError("the host function broke on purpose")
    if k:
        raise WitError(k)
    return 0


@pytest.fixture(scope="module")
def probe_host(runtime: str) -> Host:
    return Host(interfaces=[probe], runtime=runtime)


@pytest.fixture
def guest(probe_host: Host, guest_path):
    with probe_host.instantiate(guest_path("runtime_probe")) as g:
        yield g


def test_two_borrows_in_one_call(guest) -> None:
    # wasmtime 50.0.1 (not 49 or 51) traps here ("BUG: deferred host scope has no call context",
    # resources.rs:328) on an engine with concurrency support; runtime.engine turns it off.
    assert guest.call("two-borrows", 20, 22) == 42
    assert len(guest.state.table) == 0


def test_a_list_of_two_borrows_in_one_call(guest) -> None:
    # poll(list<borrow<pollable>>) is this shape: on wasmtime 50 it trapped the same way.
    assert guest.call("borrow-list", 20, 22) == 42
    assert len(guest.state.table) == 0


def test_an_embedder_engine_from_engine_config_takes_two_borrows(runtime: str, guest_path) -> None:
    with Host(Engine(engine_config()), interfaces=[probe], runtime=runtime, epoch_interruption=True) as host:
        with host.instantiate(guest_path("runtime_probe")) as g:
            assert g.call("two-borrows", 1, 2) == 3


def test_dropped_handles_run_destructors_and_empty_the_table(guest) -> None:
    DROPPED.clear()
    assert guest.call("churn", 500) == sum(range(500))
    assert sorted(DROPPED) == list(range(500))
    assert len(guest.state.table) == 0


def test_use_after_drop_traps_with_handle_message(guest) -> None:
    with pytest.raises(WasmtimeError, match="unknown handle index"):
        guest.call("use-after-drop")


def test_use_after_move_traps_and_host_keeps_the_object(guest) -> None:
    CONSUMED.clear()
    with pytest.raises(WasmtimeError, match="unknown handle index"):
        guest.call("use-after-move")
    assert [t.value for t in CONSUMED] == [9]


def test_forged_handle_traps(guest) -> None:
    with pytest.raises(WasmtimeError, match="unknown handle index 4242"):
        guest.call("forged-handle")


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 4096, 65536, 1 << 20])
def test_list_u8_round_trip(guest, size: int) -> None:
    data = bytes((i * 7 + size) % 256 for i in range(size))
    assert guest.call("echo", data) == data


@pytest.mark.parametrize("k", range(len(NESTED)))
def test_nested_option_result_shapes(guest, k: int) -> None:
    # The export lifts with the same type-driven rules, so each case must come back intact.
    assert guest.call("nested", k) == NESTED[k]


def test_wit_error_becomes_err_case(guest) -> None:
    assert guest.call("fail", 0) == Ok(0)
    assert guest.call("fail", 7) == Err(7)


def test_host_exception_traps_with_function_name_and_next_instance_runs(probe_host: Host, guest_path) -> None:
    with probe_host.instantiate(guest_path("runtime_probe")) as g:
        with pytest.raises(WasmtimeError) as info:
            g.call("fail", 99)
        message = str(info.value)
        assert "wasi-tls-host:test/probe#fail" in message
        assert "RuntimeError: the host function broke on purpose" in message
    with probe_host.instantiate(guest_path("runtime_probe")) as g:
        assert g.call("two-borrows", 1, 2) == 3


def test_closing_the_store_drops_live_resources(probe_host: Host, guest_path) -> None:
    DROPPED.clear()
    g = probe_host.instantiate(guest_path("runtime_probe"))
    # two-borrows drops its own things; build a leak by consuming nothing and closing early.
    g.call("two-borrows", 5, 6)
    g.close()
    gc.collect()
    assert sorted(DROPPED) == [5, 6]


def test_component_cache_avoids_recompiling(tmp_path, guest_path, runtime: str) -> None:
    wasm = guest_path("runtime_probe").read_bytes()
    first = Host(interfaces=[probe], cache_dir=tmp_path, runtime=runtime)
    first.load(wasm)
    assert first.cache.compiled == 1
    artifacts = sorted(tmp_path.glob("*.cwasm"))
    # One artifact for the component, or one per core module (runtime_probe has two).
    assert len(artifacts) == (1 if runtime == "component" else 2)
    assert all(("-core-" in a.name) == (runtime == "core") for a in artifacts)
    second = Host(interfaces=[probe], cache_dir=tmp_path, runtime=runtime)
    with second.instantiate(wasm) as g:
        assert g.call("two-borrows", 2, 3) == 5
    assert second.cache.compiled == 0
    # A corrupt artifact is recompiled, not fatal.
    corrupt = tmp_path / "corrupt.tmp"
    corrupt.write_bytes(b"garbage")
    corrupt.replace(artifacts[0])  # the cache itself only ever replaces files atomically
    third = Host(interfaces=[probe], cache_dir=tmp_path, runtime=runtime)
    with third.instantiate(wasm) as g:
        assert g.call("two-borrows", 3, 4) == 7
    assert third.cache.compiled == 1


def test_closing_the_host_releases_its_mapped_artifacts(tmp_path, guest_path, runtime: str, no_gc) -> None:
    """A component loaded from the disk cache maps its file; the host holds those descriptors
    until closed, not until a GC pass. A guest made before the close runs on."""
    wasm = guest_path("runtime_probe").read_bytes()
    with Host(interfaces=[probe], cache_dir=tmp_path, runtime=runtime) as compiling:
        compiling.load(wasm)  # fills the disk cache
    before = open_fds()
    host = Host(interfaces=[probe], cache_dir=tmp_path, runtime=runtime)
    guest = host.instantiate(wasm)
    assert host.cache.compiled == 0 and open_fds() > before  # loaded from the disk cache: mapped
    host.close()
    assert guest.call("two-borrows", 2, 3) == 5
    guest.close()
    del guest  # its store (memories, mapped code) goes with the last reference, not at a GC pass
    assert open_fds() <= before
    with pytest.raises(GuestError, match="this Host is closed"):
        host.instantiate(wasm)


def test_closing_the_host_frees_the_conversions_of_its_components_types(tmp_path, guest_path) -> None:
    """The core runtime builds each type's conversions once and keeps them by type; a closed
    host lets go of its components' (a long-lived embedder loading many components would
    otherwise keep every type it ever saw)."""
    from wasi_tls_host.runtime.core import canon
    from wasi_tls_host.runtime.core.types import types_in

    host = Host(interfaces=[probe], cache_dir=tmp_path, runtime="core")
    component = host.load(guest_path("runtime_probe"))
    with host.instantiate(component) as g:
        assert g.call("two-borrows", 2, 3) == 5
    ids = {id(t) for t in types_in(component.plan)}
    assert ids & canon._CACHE.keys()  # converted while the guest ran
    host.close()
    assert not ids & canon._CACHE.keys()


def test_a_guest_never_closed_is_still_collected(probe_host: Host, guest_path) -> None:
    """Closing is the way to free a guest at once; one its embedder forgot must at least go
    at a GC pass, store and memories included, not live on through host tables."""
    import weakref

    guest = probe_host.instantiate(guest_path("runtime_probe"))
    assert guest.call("two-borrows", 2, 3) == 5
    store = weakref.ref(guest.store)
    del guest
    gc.collect()
    assert store() is None


@pytest.mark.parametrize("bad", [Ok(Ok(("not a number", 2))), Ok(Err("not a number")), Ok(Ok((1, 2, 3)))])
def test_a_result_the_host_cannot_lower_traps_and_harms_nothing(guest, bad) -> None:
    # The nested value fails to lower half way through (inside option<result<result<..>>>):
    # the guest traps with the reason, and wasmtime is never handed a half-built value.
    NESTED.append(bad)
    try:
        with pytest.raises(WasmtimeError, match="wasi-tls-host:test/probe#nested"):
            guest.call("nested", len(NESTED) - 1)
    finally:
        NESTED.pop()


def test_after_lowering_failures_the_next_instance_runs(probe_host: Host, guest_path) -> None:
    for _ in range(20):
        with probe_host.instantiate(guest_path("runtime_probe")) as g:
            NESTED.append(Ok(Ok(("x", 1))))
            try:
                with pytest.raises(WasmtimeError):
                    g.call("nested", len(NESTED) - 1)
            finally:
                NESTED.pop()
    with probe_host.instantiate(guest_path("runtime_probe")) as g:
        assert g.call("nested", 1) == NESTED[1]
