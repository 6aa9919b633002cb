"""Records and tuples whose leaves are all integers (socket addresses, say) are loaded from
guest memory by one ``struct`` unpack of their whole layout (``canon._packed_ints``): the
value must be exactly what the per-field converters give, padding and signs included, and
any other record keeps the per-field load."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from wasi_tls_host.runtime.core import canon
from wasi_tls_host.runtime.core.types import Prim, Record, Tuple, ValType
from wasi_tls_host.runtime.values import Trap

U8, U16, U32, U64, S8, S16, S32, S64 = (Prim(n) for n in ("u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64"))

IPV4 = Record([("port", U16), ("address", Tuple([U8] * 4))])
IPV6 = Record([("port", U16), ("flow-info", U32), ("address", Tuple([U16] * 8)), ("scope-id", U32)])
# Padding between fields and inside nested ones, signed fields, a tuple of records.
PADDED = Record([("a", U8), ("b", U64), ("c", S8), ("d", Tuple([S16, U8, S32])), ("e", Tuple([IPV4, S64]))])


class _Memory:
    """The part of MemCx the converters use here: a view of a plain buffer."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)

    def view(self) -> memoryview:
        return memoryview(self.buffer)


def _per_field(t: ValType, v: memoryview, ptr: int) -> Any:
    """The value as the per-field converters build it (the reference)."""
    if isinstance(t, Prim):
        return canon.conv(t).load(None, v, ptr)  # type: ignore[arg-type]
    if isinstance(t, Record):
        return {name.replace("-", "_"): _per_field(ft, v, ptr + off) for (name, ft), off in zip(t.fields, t.offsets)}
    assert isinstance(t, Tuple)
    return tuple(_per_field(et, v, ptr + off) for et, off in zip(t.elems, t.offsets))


@pytest.mark.parametrize(("t", "value"), [
    (IPV4, {"port": 443, "address": (127, 0, 0, 1)}),
    (IPV6, {"port": 65535, "flow_info": 0xFFFF_FFFF, "address": (0x2001, 0xDB8, 0, 0, 0, 0, 0, 1), "scope_id": 7}),
    (PADDED, {"a": 255, "b": 2**64 - 1, "c": -128, "d": (-32768, 9, -(2**31)),
              "e": ({"port": 1, "address": (1, 2, 3, 4)}, -(2**63))}),
])
def test_an_integer_record_loads_as_its_fields_would(t: ValType, value: Any) -> None:
    assert canon._packed_ints(t) is not None  # type: ignore[arg-type]  # the specialised load is the one used
    mem = _Memory(256)
    canon.conv(t).store(mem, value, 8)  # type: ignore[arg-type]
    v = mem.view()
    loaded = canon.conv(t).load(mem, v, 8)  # type: ignore[arg-type]
    assert loaded == value
    assert loaded == _per_field(t, v, 8)
    assert _shape(loaded) == _shape(value)  # tuples stay tuples, records dicts


def _shape(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _shape(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_shape(v) for v in x)
    return type(x)


def test_a_record_with_other_fields_keeps_the_per_field_load() -> None:
    for t in (Record([("n", U32), ("flag", Prim("bool"))]), Tuple([U8, Prim("string")]), Record([("x", Prim("f32"))])):
        assert canon._packed_ints(t) is None


def test_an_integer_record_past_the_end_of_memory_fails_as_before() -> None:
    mem = _Memory(16)
    with pytest.raises(struct.error):
        canon.conv(IPV6).load(mem, mem.view(), 4)  # type: ignore[arg-type]


def _store_per_field(t: ValType, mem: _Memory, value: Any, ptr: int) -> None:
    """The value stored as the per-field converters store it (the reference)."""
    if isinstance(t, Prim):
        canon.conv(t).store(mem, value, ptr)  # type: ignore[arg-type]
        return
    if isinstance(t, Record):
        for (name, ft), off in zip(t.fields, t.offsets):
            key = name.replace("-", "_")
            _store_per_field(ft, mem, value[key] if isinstance(value, dict) else getattr(value, key), ptr + off)
        return
    assert isinstance(t, Tuple)
    for et, off, x in zip(t.elems, t.offsets, value):
        _store_per_field(et, mem, x, ptr + off)


class _Address:
    """A record value given as an object's attributes (as the embedder's record classes are)."""

    def __init__(self, port: Any, address: Any) -> None:
        self.port, self.address = port, address


@pytest.mark.parametrize(("t", "value"), [
    (IPV4, {"port": 443, "address": (127, 0, 0, 1)}),
    (IPV4, _Address(8443, (10, 0, 0, 2))),
    (IPV6, {"port": 65535, "flow_info": 0xFFFF_FFFF, "address": (0x2001, 0xDB8, 0, 0, 0, 0, 0, 1), "scope_id": 7, "extra": 1}),
    (PADDED, {"a": 255, "b": 2**64 - 1, "c": -128, "d": (-32768, 9, -(2**31)),
              "e": ({"port": 1, "address": (1, 2, 3, 4)}, -(2**63))}),
])
def test_an_integer_record_stores_as_its_fields_would(t: ValType, value: Any) -> None:
    assert canon.packed_store_leaves(t) is not None  # type: ignore[arg-type]  # the one-pack store is the one used
    packed, reference = _Memory(256), _Memory(256)
    packed.buffer[:] = reference.buffer[:] = bytes(range(256))  # padding keeps what was there
    canon.conv(t).store(packed, value, 8)  # type: ignore[arg-type]
    _store_per_field(t, reference, value, 8)
    assert packed.buffer == reference.buffer


@pytest.mark.parametrize(("value", "message"), [
    ({"port": 443, "address": (127, 0, 0, 256)}, r"expected a u8 \(an integer in \[0, 255\]\), got 256"),
    ({"port": True, "address": (127, 0, 0, 1)}, r"expected a u16 .*got True"),
    ({"port": -1, "address": (127, 0, 0, 1)}, r"expected a u16 .*got -1"),
    ({"port": 443, "address": (127, 0, 0, "1")}, r"expected a u8 .*got '1'"),
    ({"port": 443}, r"record value is missing field 'address'"),
    (_Address(443, (1, 2, 3)), r"expected a tuple of 4 values"),
])
def test_an_integer_record_with_a_bad_field_traps_as_its_fields_would(value: Any, message: str) -> None:
    with pytest.raises(Trap, match=message):
        canon.conv(IPV4).store(_Memory(64), value, 8)  # type: ignore[arg-type]


def test_an_integer_record_given_as_a_list_is_stored_as_before() -> None:
    mem = _Memory(64)
    canon.conv(IPV4).store(mem, {"port": 80, "address": [192, 168, 0, 1]}, 8)  # type: ignore[arg-type]
    assert canon.conv(IPV4).load(mem, mem.view(), 8) == {"port": 80, "address": (192, 168, 0, 1)}  # type: ignore[arg-type]
