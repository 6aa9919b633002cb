"""The drop built-ins of stream and future ends (``stream.drop-*``, ``future.drop-*``), each
its own native callback with a fast path for an idle end of its element type: every other
case still goes the checked way and traps with its cause."""

from __future__ import annotations

import pytest
from wasmtime import WasmtimeError, wat2wasm

from wasi_tls_host import Host, WasiConfig

DROPS_WAT = """
(component
  (type $ST (stream u8))
  (type $SU32 (stream u32))
  (type $FT (future u32))
  (core func $ws-new (canon waitable-set.new))
  (core func $ws-drop (canon waitable-set.drop))
  (core func $join (canon waitable.join))
  (core func $stream-new (canon stream.new $ST))
  (core func $drop-readable (canon stream.drop-readable $ST))
  (core func $drop-writable (canon stream.drop-writable $ST))
  (core func $drop32-readable (canon stream.drop-readable $SU32))
  (core func $future-new (canon future.new $FT))
  (core func $future-drop-readable (canon future.drop-readable $FT))
  (core func $future-drop-writable (canon future.drop-writable $FT))
  (core module $Main
    (import "h" "ws-new" (func $ws-new (result i32)))
    (import "h" "ws-drop" (func $ws-drop (param i32)))
    (import "h" "join" (func $join (param i32 i32)))
    (import "h" "stream-new" (func $stream-new (result i64)))
    (import "h" "drop-readable" (func $drop-readable (param i32)))
    (import "h" "drop-writable" (func $drop-writable (param i32)))
    (import "h" "drop32-readable" (func $drop32-readable (param i32)))
    (import "h" "future-new" (func $future-new (result i64)))
    (import "h" "future-drop-readable" (func $future-drop-readable (param i32)))
    (import "h" "future-drop-writable" (func $future-drop-writable (param i32)))
    (func $lo (param i64) (result i32) (i32.wrap_i64 (local.get 0)))
    (func $hi (param i64) (result i32) (i32.wrap_i64 (i64.shr_u (local.get 0) (i64.const 32))))
    ;; an end joined to a set leaves it when dropped: the set can be dropped after
    (func (export "joined") (result i32)
      (local $pair i64) (local $ws i32)
      (local.set $pair (call $stream-new))
      (local.set $ws (call $ws-new))
      (call $join (call $lo (local.get $pair)) (local.get $ws))
      (call $drop-readable (call $lo (local.get $pair)))
      (call $drop-writable (call $hi (local.get $pair)))
      (call $ws-drop (local.get $ws))
      (i32.const 1))
    ;; the handle index goes back to the table: the next stream's ends reuse it
    (func (export "reused") (result i32)
      (local $pair i64) (local $next i64)
      (local.set $pair (call $stream-new))
      (call $drop-readable (call $lo (local.get $pair)))
      (call $drop-writable (call $hi (local.get $pair)))
      (local.set $next (call $stream-new))
      (call $drop-readable (call $lo (local.get $next)))
      (call $drop-writable (call $hi (local.get $next)))
      (i32.eq (call $lo (local.get $next)) (call $hi (local.get $pair))))
    (func (export "twice") (result i32)
      (local $pair i64)
      (local.set $pair (call $stream-new))
      (call $drop-readable (call $lo (local.get $pair)))
      (call $drop-readable (call $lo (local.get $pair)))
      (i32.const 1))
    (func (export "other-type") (result i32)
      (call $drop32-readable (call $lo (call $stream-new)))
      (i32.const 1))
    (func (export "other-end") (result i32)
      (call $drop-writable (call $lo (call $stream-new)))
      (i32.const 1))
    (func (export "future-readable") (result i32)
      (call $future-drop-readable (call $lo (call $future-new)))
      (i32.const 1))
    (func (export "future-unwritten") (result i32)
      (call $future-drop-writable (call $hi (call $future-new)))
      (i32.const 1)))
  (core instance $main (instantiate $Main (with "h" (instance
    (export "ws-new" (func $ws-new)) (export "ws-drop" (func $ws-drop)) (export "join" (func $join))
    (export "stream-new" (func $stream-new)) (export "drop-readable" (func $drop-readable))
    (export "drop-writable" (func $drop-writable)) (export "drop32-readable" (func $drop32-readable))
    (export "future-new" (func $future-new)) (export "future-drop-readable" (func $future-drop-readable))
    (export "future-drop-writable" (func $future-drop-writable))))))
  (func (export "joined") (result u32) (canon lift (core func $main "joined")))
  (func (export "reused") (result u32) (canon lift (core func $main "reused")))
  (func (export "twice") (result u32) (canon lift (core func $main "twice")))
  (func (export "other-type") (result u32) (canon lift (core func $main "other-type")))
  (func (export "other-end") (result u32) (canon lift (core func $main "other-end")))
  (func (export "future-readable") (result u32) (canon lift (core func $main "future-readable")))
  (func (export "future-unwritten") (result u32) (canon lift (core func $main "future-unwritten"))))
"""


@pytest.fixture(scope="module")
def drops() -> tuple[Host, bytes]:
    with Host(runtime="core") as host:
        yield host, host.load(bytes(wat2wasm(DROPS_WAT)))


@pytest.mark.parametrize("export, left", [("joined", []), ("reused", []), ("future-readable", ["WritableFutureEnd"])])
def test_an_idle_end_is_dropped_and_leaves_its_set(drops, export: str, left: list[str]) -> None:
    host, component = drops
    with host.instantiate(component, WasiConfig()) as g:
        assert g.call(export) == 1
        assert [type(h).__name__ for h in g.core.handles if h is not None] == left


@pytest.mark.parametrize("export, cause", [
    ("twice", r"stream.drop-readable: unknown handle index \d+"),
    ("other-type", r"stream.drop-readable: the readable end of a stream at index \d+ has another element type"),
    ("other-end", r"stream.drop-writable: handle index \d+ is not a writable end of a stream \(it is a readable end of a stream\)"),
    ("future-unwritten", r"cannot drop future write end without first writing a value"),
])
def test_a_drop_the_fast_path_does_not_take_traps_with_its_cause(drops, export: str, cause: str) -> None:
    host, component = drops
    with host.instantiate(component, WasiConfig()) as g, pytest.raises(WasmtimeError, match=cause):
        g.call(export)
