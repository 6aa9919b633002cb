"""The Canonical ABI (CanonicalABI.md) between Python values and a guest's linear memory and
flat core values, compiled once per WIT type into closures.

Python shapes are those of ``runtime.values`` (the component backend's converters produce
the same), so interface modules cannot tell the backends apart.

Safety rules, kept by construction:

* A guest pointer is only ever dereferenced through a ``memoryview`` of the memory's current
  extent (``MemCx.view``): struct reads/writes past it raise, and every slice copy checks
  ``ptr + len`` explicitly first (slices would silently truncate). Pointers and lengths are
  unsigned Python ints, so ``ptr + len`` cannot wrap.
* ``MemCx.view`` is dropped after every call into the guest (``realloc``), so no base
  address survives a call that may grow (and move) the memory.
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING, Any, Callable

from ..values import Err, Ok, Some, Trap
from ..values import Variant as VariantValue
from .types import ErrorContextT, Flags, FutureT, Handle, ListT, Prim, Record, StreamT, Tuple, ValType, Variant, align_to, types_in

if TYPE_CHECKING:
    from .instance import ComponentInstance

MAX_STRING_BYTES = (1 << 31) - 1

_U8, _S8 = struct.Struct("<B"), struct.Struct("<b")
_U16, _S16 = struct.Struct("<H"), struct.Struct("<h")
_U32, _S32 = struct.Struct("<I"), struct.Struct("<i")
_U64, _S64 = struct.Struct("<Q"), struct.Struct("<q")
_F32, _F64 = struct.Struct("<f"), struct.Struct("<d")
_PTR_LEN = struct.Struct("<II")
_U32_PACK = _U32.pack_into


class MemCx:
    """One (component instance, canon options) pair: memory, realloc, string encoding.

    ``view()`` gives a view of the memory as it is now; ``realloc`` calls into the guest and
    forgets the view, so the next access re-reads the base address and size.
    """

    def __init__(self, inst: ComponentInstance, memory: Any, realloc: Any, encoding: str) -> None:
        self.inst = inst
        self.memory = memory  # ffi.wasmtime_memory_t or None
        self.realloc_func = realloc  # ffi.wasmtime_func_t or None
        self.encoding = encoding
        self._view: memoryview | None = None
        # The memory's state, shared by every MemCx of the same memory (instance.MemoryState).
        self.mem_state: Any = inst.runner.memory_state(memory) if memory is not None else None
        self.borrows: list[int] | None = None
        self.base = 0  # the memory's address when view() last looked
        self.lent: list[tuple[Any, memoryview]] = []  # views of guest memory lent this call
        # While a call's arguments are lowered: the task they are lent to (``Task``; borrow
        # handles given to the guest are counted there and undone when it ends).
        self.borrow_scope: Any = None

    def view(self) -> memoryview:
        v = self._view
        if v is None:
            st = self.mem_state
            if st is None:
                raise Trap("the canon options give no memory, but this value needs one")
            v = self._view = st.current()
            self.base = st.base
        return v

    def forget(self) -> None:
        self._view = None

    def check_range(self, ptr: int, size: int, what: str) -> None:
        """Trap unless ``size`` bytes at ``ptr`` are inside the memory; a range inside the
        size last seen needs no call into wasmtime (a linear memory never shrinks)."""
        st = self.mem_state
        if st is not None and ptr + size <= st.size:
            return
        check_range(self.view(), ptr, size, what)

    def realloc(self, align: int, size: int) -> int:
        if self.realloc_func is None:
            raise Trap("the canon options give no realloc, but this value needs one")
        self._view = None
        ptr = self.inst.call_realloc(self.realloc_func, align, size)
        if ptr != align_to(ptr, align):
            raise Trap(f"realloc returned a misaligned pointer {ptr:#x} (alignment {align})")
        v = self.view()
        if ptr + size > len(v):
            raise Trap(f"realloc returned an out-of-bounds pointer {ptr:#x} for {size} bytes (memory is {len(v)} bytes)")
        return ptr


def check_range(v: memoryview, ptr: int, size: int, what: str) -> None:
    if ptr + size > len(v):
        raise Trap(f"{what} at {ptr:#x} with {size} bytes is out of bounds (memory is {len(v)} bytes)")


Load = Callable[[MemCx, memoryview, int], Any]
Store = Callable[[MemCx, Any, int], None]
LiftFlat = Callable[[MemCx, list, int], tuple]
LowerFlat = Callable[[MemCx, Any, list], None]


class Conv:
    """The four conversions of one type."""

    __slots__ = ("load", "store", "lift_flat", "lower_flat")

    def __init__(self, t: ValType, load: Load, store: Store, lift_flat: LiftFlat, lower_flat: LowerFlat) -> None:
        self.load, self.store, self.lift_flat, self.lower_flat = load, store, lift_flat, lower_flat


# Conversions built per type object (each entry holds its type, so an id is never reused
# while it is here); a plan's entries go with the plan (``forget``, at Host.close()).
_CACHE: dict[int, tuple[ValType, Conv]] = {}


def conv(t: ValType) -> Conv:
    hit = _CACHE.get(id(t))
    if hit is not None and hit[0] is t:
        return hit[1]
    c = _build(t)
    _CACHE[id(t)] = (t, c)
    return c


def forget(root: Any) -> int:
    """Drop the conversions of every type reachable from ``root`` (a plan whose components
    are closed); how many were dropped. A type used again later is simply converted anew."""
    dropped = 0
    for t in types_in(root):
        hit = _CACHE.get(id(t))
        if hit is not None and hit[0] is t:
            del _CACHE[id(t)]
            dropped += 1
    return dropped


def _int_checked(lo: int, hi: int, name: str) -> Callable[[Any], int]:
    def check(x: Any) -> int:
        if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
            raise Trap(f"expected a {name} (an integer in [{lo}, {hi}]), got {x!r}")
        return x
    return check


_INT_SPECS: dict[str, tuple[struct.Struct, int, int, int]] = {
    "u8": (_U8, 0, 0xFF, 0), "s8": (_S8, -0x80, 0x7F, 8), "u16": (_U16, 0, 0xFFFF, 0), "s16": (_S16, -0x8000, 0x7FFF, 16),
    "u32": (_U32, 0, 0xFFFF_FFFF, 0), "s32": (_S32, -(2**31), 2**31 - 1, 32),
    "u64": (_U64, 0, 2**64 - 1, 0), "s64": (_S64, -(2**63), 2**63 - 1, 64),
}


def int_store(t: ValType | None) -> tuple[Callable[..., None], int, int] | None:
    """``(pack_into, lo, hi)`` of an integer type (stored as is after a range check), else None."""
    if isinstance(t, Prim) and t.name in _INT_SPECS:
        st, lo, hi, _ = _INT_SPECS[t.name]
        return st.pack_into, lo, hi
    return None


def _build(t: ValType) -> Conv:
    if isinstance(t, Prim):
        return _prim(t)
    if isinstance(t, ListT):
        return _list(t)
    if isinstance(t, (Record, Tuple)):
        return _record(t)
    if isinstance(t, Variant):
        return _variant(t)
    if isinstance(t, Flags):
        return _flags(t)
    if isinstance(t, Handle):
        return _handle(t)
    if isinstance(t, (StreamT, FutureT, ErrorContextT)):
        return _async_value(t)
    raise Trap(f"unsupported type {t!r}")


def _prim(t: Prim) -> Conv:
    name = t.name
    if name in _INT_SPECS:
        st, lo, hi, signed_bits = _INT_SPECS[name]
        check = _int_checked(lo, hi, name)
        unpack, pack = st.unpack_from, st.pack_into
        mask = (1 << (64 if name[1:] == "64" else 32)) - 1
        width_mask = hi - lo if lo else hi

        def load(m: MemCx, v: memoryview, ptr: int) -> int:
            return unpack(v, ptr)[0]  # type: ignore[no-any-return]

        def store(m: MemCx, x: Any, ptr: int) -> None:
            pack(m.view(), ptr, check(x))

        if signed_bits:
            sign = 1 << (signed_bits - 1)
            full = 1 << signed_bits

            def lift_flat(m: MemCx, vals: list, i: int) -> tuple:
                x = vals[i] & width_mask
                return (x - full if x & sign else x), i + 1
        else:
            def lift_flat(m: MemCx, vals: list, i: int) -> tuple:
                return vals[i] & width_mask, i + 1

        def lower_flat(m: MemCx, x: Any, out: list) -> None:
            out.append(check(x) & mask)

        return Conv(t, load, store, lift_flat, lower_flat)
    if name == "bool":
        def load_b(m: MemCx, v: memoryview, ptr: int) -> bool:
            return bool(v[ptr])

        def store_b(m: MemCx, x: Any, ptr: int) -> None:
            m.view()[ptr] = 1 if x else 0

        def lift_b(m: MemCx, vals: list, i: int) -> tuple:
            return bool(vals[i]), i + 1

        def lower_b(m: MemCx, x: Any, out: list) -> None:
            out.append(1 if x else 0)

        return Conv(t, load_b, store_b, lift_b, lower_b)
    if name in ("f32", "f64"):
        st = _F32 if name == "f32" else _F64

        def load_f(m: MemCx, v: memoryview, ptr: int) -> float:
            return st.unpack_from(v, ptr)[0]  # type: ignore[no-any-return]

        def store_f(m: MemCx, x: Any, ptr: int) -> None:
            st.pack_into(m.view(), ptr, float(x))

        def lift_f(m: MemCx, vals: list, i: int) -> tuple:
            return float(vals[i]), i + 1

        def lower_f(m: MemCx, x: Any, out: list) -> None:
            out.append(float(x))

        return Conv(t, load_f, store_f, lift_f, lower_f)
    if name == "char":
        def to_char(c: int) -> str:
            if c >= 0x110000 or 0xD800 <= c <= 0xDFFF:
                raise Trap(f"invalid char code point {c:#x}")
            return chr(c)

        def from_char(x: Any) -> int:
            if not isinstance(x, str) or len(x) != 1:
                raise Trap(f"expected a char (one character), got {x!r}")
            return ord(x)

        def load_c(m: MemCx, v: memoryview, ptr: int) -> str:
            return to_char(_U32.unpack_from(v, ptr)[0])

        def store_c(m: MemCx, x: Any, ptr: int) -> None:
            _U32.pack_into(m.view(), ptr, from_char(x))

        def lift_c(m: MemCx, vals: list, i: int) -> tuple:
            return to_char(vals[i] & 0xFFFF_FFFF), i + 1

        def lower_c(m: MemCx, x: Any, out: list) -> None:
            out.append(from_char(x))

        return Conv(t, load_c, store_c, lift_c, lower_c)
    if name == "string":
        return _ptr_len(t, lift_string, lower_string)
    raise Trap(f"unsupported primitive {name}")


def lift_string(m: MemCx, v: memoryview, ptr: int, n: int) -> str:
    enc = m.encoding
    if enc == "utf8":
        check_range(v, ptr, n, "string")
        try:
            return str(v[ptr:ptr + n], "utf-8")
        except UnicodeDecodeError as e:
            raise Trap(f"string at {ptr:#x} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if enc == "latin1+utf16" and not n & (1 << 31):
        check_range(v, ptr, n, "string")
        return str(v[ptr:ptr + n], "latin-1")
    n &= ~(1 << 31)
    if ptr & 1:
        raise Trap(f"UTF-16 string pointer {ptr:#x} is not 2-byte aligned")
    check_range(v, ptr, 2 * n, "string")
    try:
        return str(v[ptr:ptr + 2 * n], "utf-16-le")
    except UnicodeDecodeError as e:
        raise Trap(f"string at {ptr:#x} is not valid UTF-16 ({e.reason})") from None


def lower_string(m: MemCx, x: Any) -> tuple[int, int]:
    if not isinstance(x, str):
        raise Trap(f"expected a string, got {type(x).__name__}")
    enc = m.encoding
    if enc == "utf8":
        data = x.encode("utf-8", "surrogateescape")
        align, units, tag = 1, len(data), 0
    else:
        tag = 0
        if enc == "latin1+utf16":
            try:
                data = x.encode("latin-1")
                align, units = 2, len(data)
            except UnicodeEncodeError:
                data = x.encode("utf-16-le", "surrogatepass")
                align, units, tag = 2, len(data) // 2, 1 << 31
        else:
            data = x.encode("utf-16-le", "surrogatepass")
            align, units = 2, len(data) // 2
    if len(data) > MAX_STRING_BYTES:
        raise Trap("string too long for the Canonical ABI")
    # realloc is called even for an empty string, as the spec does: adapters count on it.
    ptr = m.realloc(align, len(data))
    v = m.view()
    v[ptr:ptr + len(data)] = data
    return ptr, units | tag


def _ptr_len(t: ValType, lift: Callable[[MemCx, memoryview, int, int], Any], lower: Callable[[MemCx, Any], tuple[int, int]]) -> Conv:
    """The converters of a value held as (pointer, length): a string or a list, given how
    to lift it from and lower it into guest memory."""

    def load(m: MemCx, v: memoryview, ptr: int) -> Any:
        p, n = _PTR_LEN.unpack_from(v, ptr)
        return lift(m, v, p, n)

    def store(m: MemCx, x: Any, ptr: int) -> None:
        p, n = lower(m, x)
        _PTR_LEN.pack_into(m.view(), ptr, p, n)

    def lift_flat(m: MemCx, vals: list, i: int) -> tuple:
        return lift(m, m.view(), vals[i] & 0xFFFF_FFFF, vals[i + 1] & 0xFFFF_FFFF), i + 2

    def lower_flat(m: MemCx, x: Any, out: list) -> None:
        out.extend(lower(m, x))

    return Conv(t, load, store, lift_flat, lower_flat)


def _list(t: ListT) -> Conv:
    elem = t.elem
    if isinstance(elem, Prim) and elem.name == "u8":
        return _ptr_len(t, lift_bytes, lower_bytes)
    ec = conv(elem)
    esize, ealign = elem.size, elem.align
    eload, estore = ec.load, ec.store

    def lift_list(m: MemCx, v: memoryview, ptr: int, n: int) -> list:
        if ptr != align_to(ptr, ealign):
            raise Trap(f"list pointer {ptr:#x} is not {ealign}-byte aligned")
        check_range(v, ptr, n * esize, "list")
        return [eload(m, v, ptr + i * esize) for i in range(n)]

    def lower_list(m: MemCx, x: Any) -> tuple[int, int]:
        items = list(x)
        n = len(items)
        if n * esize > MAX_STRING_BYTES:
            raise Trap("list too long for the Canonical ABI")
        ptr = m.realloc(ealign, n * esize)
        for i, item in enumerate(items):
            estore(m, item, ptr + i * esize)
        return ptr, n

    return _ptr_len(t, lift_list, lower_list)


def lift_bytes_view_flat(m: MemCx, vals: list, i: int) -> tuple:
    """A ``list<u8>`` argument as a view of guest memory (no copy): only for impls that
    declared ``bytes_views``. The view's exporter is a ctypes array made for this loan
    alone (recorded in ``m.lent``), so when the call returns the trampoline can release the
    view and see whether anything still refers to the array (a view derived from it)."""
    v, ptr, n = m.view(), vals[i] & 0xFFFF_FFFF, vals[i + 1] & 0xFFFF_FFFF
    check_range(v, ptr, n, "list<u8>")
    array = (ctypes.c_ubyte * n).from_address(m.base + ptr)
    view = memoryview(array).cast("B")
    m.lent.append((array, view))
    return view, i + 2


class Filled:
    """A ``list<u8>`` already in guest memory (made by ``Filler``): lowered as is."""

    __slots__ = ("ptr", "n")

    def __init__(self, ptr: int, n: int) -> None:
        self.ptr, self.n = ptr, n

    def __len__(self) -> int:
        return self.n


class Filler:
    """Lets a host function write a ``list<u8>`` result straight into guest memory.

    ``fill(k)`` calls the guest's realloc for k bytes and lends a view of them (revoked when
    the call returns, like ``lift_bytes_view_flat``); ``fill.done(count)`` says how many
    were written.
    """

    def __init__(self, m: MemCx) -> None:
        self.m = m
        self.ptr = -1
        self.size = 0

    def __call__(self, k: int) -> memoryview:
        m = self.m
        if self.ptr < 0:
            self.ptr, self.size = m.realloc(1, k), k
        elif k > self.size:  # a retry (nothing was read) may reuse the block, not grow it
            raise Trap(f"fill({k}) after fill({self.size})")
        else:
            m.view()  # re-reads the base address
        ptr = self.ptr
        array = (ctypes.c_ubyte * k).from_address(m.base + ptr)
        view = memoryview(array).cast("B")
        m.lent.append((array, view))
        return view

    def done(self, count: int) -> Filled:
        """The list is the first ``count`` bytes of the block. Callers ask ``fill`` for what
        they will write: a shorter count (a race) leaves the block's tail unused, since
        realloc cannot be trusted to shrink (componentize-py's aborted when asked to)."""
        if not 0 <= count <= self.size or self.ptr < 0:
            raise Trap(f"fill.done({count}) after fill({self.size})")
        return Filled(self.ptr, count)


def lift_bytes(m: MemCx, v: memoryview, ptr: int, n: int) -> bytes:
    check_range(v, ptr, n, "list<u8>")
    return bytes(v[ptr:ptr + n])


def lower_bytes(m: MemCx, x: Any) -> tuple[int, int]:
    if isinstance(x, Filled):
        return x.ptr, x.n
    if not isinstance(x, (bytes, bytearray, memoryview)):
        raise Trap(f"expected bytes for list<u8>, got {type(x).__name__}")
    n = len(x)
    ptr = m.realloc(1, n)  # even for n == 0, as the spec does
    m.view()[ptr:ptr + n] = x
    return ptr, n


def _record(t: Record | Tuple) -> Conv:
    is_record = isinstance(t, Record)
    types = [ft for _, ft in t.fields] if isinstance(t, Record) else t.elems
    names = [n.replace("-", "_") for n, _ in t.fields] if isinstance(t, Record) else []
    convs = [conv(ft) for ft in types]
    offsets = t.offsets
    parts = list(zip(convs, offsets))
    n = len(convs)

    def values_of(x: Any) -> Any:
        if type(x) is tuple and len(x) == n and not is_record:  # a tuple as it is (no copy)
            return x
        if is_record:
            try:
                if isinstance(x, dict):
                    return [x[k] for k in names]
                return [getattr(x, k) for k in names]
            except (KeyError, AttributeError) as e:
                raise Trap(f"record value is missing field {e}") from None
        if not isinstance(x, (tuple, list)) or len(x) != n:
            raise Trap(f"expected a tuple of {n} values, got {x!r}")
        return list(x)

    def make(values: list) -> Any:
        return dict(zip(names, values)) if is_record else tuple(values)

    def load(m: MemCx, v: memoryview, ptr: int) -> Any:
        return make([c.load(m, v, ptr + off) for c, off in parts])

    packed = _packed_ints(t)
    if packed is not None:
        # Integers only, at any depth (a socket address): one unpack of the whole layout,
        # then the nesting rebuilt, instead of a converter call per field.
        unpack, build = packed

        def load(m: MemCx, v: memoryview, ptr: int) -> Any:  # noqa: F811 - the specialised load
            return build(unpack(v, ptr))

    field_stores = [(c.store, off) for c, off in parts]

    def store(m: MemCx, x: Any, ptr: int) -> None:
        values = x if type(x) is tuple and len(x) == n and not is_record else values_of(x)
        for (store_field, off), value in zip(field_stores, values):
            store_field(m, value, ptr + off)

    if packed is not None:
        # Integers only (a socket address): one pack of the whole layout when every leaf is
        # a plain int in range; any other value goes through the fields' stores, whose
        # checks trap as ever (having written the same bytes before the bad field).
        pack_leaves = packed_store_leaves(t)
        assert pack_leaves is not None
        store_fields = store

        def store(m: MemCx, x: Any, ptr: int) -> None:  # noqa: F811 - the specialised store
            if not pack_leaves(m, x, ptr):
                store_fields(m, x, ptr)

    def lift_flat(m: MemCx, vals: list, i: int) -> tuple:
        out = []
        for c in convs:
            value, i = c.lift_flat(m, vals, i)
            out.append(value)
        return make(out), i

    def lower_flat(m: MemCx, x: Any, out: list) -> None:
        for c, value in zip(convs, values_of(x)):
            c.lower_flat(m, value, out)

    return Conv(t, load, store, lift_flat, lower_flat)


def _int_leaves(t: ValType, base: int, fmt: list[str], at: list[int]) -> Callable[[tuple], Any] | None:
    """Appends the struct codes of ``t``'s integers (``base`` bytes into the value) to
    ``fmt``; ``at`` is [bytes described so far, integers so far]. Returns how to rebuild
    ``t`` from the unpacked integers, or None if ``t`` holds anything but integers, records
    and tuples."""
    if isinstance(t, Prim):
        spec = _INT_SPECS.get(t.name)
        if spec is None:
            return None
        if base > at[0]:
            fmt.append(f"{base - at[0]}x")  # padding
        i = at[1]
        fmt.append(spec[0].format[-1])
        at[0], at[1] = base + t.size, i + 1
        return lambda vals: vals[i]
    if isinstance(t, (Record, Tuple)):
        types = [ft for _, ft in t.fields] if isinstance(t, Record) else t.elems
        first = at[1]
        parts = []
        for ft, off in zip(types, t.offsets):
            part = _int_leaves(ft, base + off, fmt, at)
            if part is None:
                return None
            parts.append(part)
        if isinstance(t, Tuple) and all(isinstance(ft, Prim) for ft in types):
            end = at[1]
            return lambda vals: vals[first:end]  # (a slice of the unpacked tuple: a tuple)
        if isinstance(t, Record):
            names = [n.replace("-", "_") for n, _ in t.fields]
            return lambda vals: {name: part(vals) for name, part in zip(names, parts)}
        return lambda vals: tuple([part(vals) for part in parts])
    return None


def _leaf_getter(t: ValType) -> Callable[[Any, list], bool] | None:
    """``put(x, out)``: appends the integer leaves of a value ``x`` of ``t`` to ``out`` in
    ``_int_leaves``' order (a record's fields by name, from a dict or attributes, as
    ``values_of`` takes them; a tuple as a tuple of its length), True; False for a value of
    another shape (the caller stores it field by field, whose checks say what is wrong).
    None if ``t`` holds anything but integers, records and tuples."""
    if isinstance(t, Prim):
        if t.name not in _INT_SPECS:
            return None

        def put_int(x: Any, out: list) -> bool:
            out.append(x)
            return True
        return put_int
    if not isinstance(t, (Record, Tuple)):
        return None
    types = [ft for _, ft in t.fields] if isinstance(t, Record) else t.elems
    puts = [_leaf_getter(ft) for ft in types]
    if any(p is None for p in puts):
        return None
    n = len(types)
    all_prims = all(isinstance(ft, Prim) for ft in types)
    if isinstance(t, Record):
        names = [name.replace("-", "_") for name, _ in t.fields]

        def put_record(x: Any, out: list) -> bool:
            if type(x) is dict:
                if len(x) < n:
                    return False
                values = [x.get(k, _MISSING) for k in names]
            else:
                values = [getattr(x, k, _MISSING) for k in names]
            if all_prims:
                out.extend(values)
                return True
            for put, value in zip(puts, values):
                if not put(value, out):  # type: ignore[misc]
                    return False
            return True
        return put_record

    def put_tuple(x: Any, out: list) -> bool:
        if type(x) is not tuple or len(x) != n:
            return False
        if all_prims:
            out.extend(x)
            return True
        for put, value in zip(puts, x):
            if not put(value, out):  # type: ignore[misc]
                return False
        return True
    return put_tuple


_MISSING = object()  # a record field the value lacks (never an int: the fields' stores say so)


def packed_store_leaves(t: Record | Tuple) -> Callable[[MemCx, Any, int], bool] | None:
    """``store(m, x, ptr)`` of a record or tuple of integers at any depth by one
    ``pack_into`` per run of adjacent fields (padding between runs is left as it was, as
    the fields' stores leave it): False, having written nothing, unless every leaf is a
    plain ``int`` (no bool) in its range. None for other types."""
    put = _leaf_getter(t)
    if put is None:
        return None
    leaves = _leaf_layout(t, 0)
    runs: list[tuple[int, Callable[..., None], int, int]] = []  # (offset, pack_into, first leaf, end leaf)
    start = 0
    for i in range(1, len(leaves) + 1):
        if i == len(leaves) or leaves[i][0] != leaves[i - 1][0] + _INT_SPECS[leaves[i - 1][1]][0].size:
            fmt = "<" + "".join(_INT_SPECS[name][0].format[-1] for _, name in leaves[start:i])
            runs.append((leaves[start][0], struct.Struct(fmt).pack_into, start, i))
            start = i
    ranges = [(_INT_SPECS[name][1], _INT_SPECS[name][2]) for _, name in leaves]
    nleaves = len(leaves)
    single = runs[0][1] if len(runs) == 1 else None

    def store(m: MemCx, x: Any, ptr: int) -> bool:
        values: list = []
        if not put(x, values) or len(values) != nleaves:
            return False
        for value, (lo, hi) in zip(values, ranges):
            if type(value) is not int or not lo <= value <= hi:
                return False
        v = m.view()
        if single is not None:
            single(v, ptr, *values)
        else:
            for off, pack, first, end in runs:
                pack(v, ptr + off, *values[first:end])
        return True
    return store


def _leaf_layout(t: ValType, base: int) -> list[tuple[int, str]]:
    """(offset, integer type name) of each of ``t``'s leaves, in ``_int_leaves``' order."""
    if isinstance(t, Prim):
        return [(base, t.name)]
    types = [ft for _, ft in t.fields] if isinstance(t, Record) else t.elems  # type: ignore[union-attr]
    return [leaf for ft, off in zip(types, t.offsets) for leaf in _leaf_layout(ft, base + off)]  # type: ignore[union-attr]


def _packed_ints(t: Record | Tuple) -> tuple[Callable[[memoryview, int], tuple], Callable[[tuple], Any]] | None:
    """``(unpack_from, build)`` of a record or tuple whose leaves are all integers, else None."""
    fmt: list[str] = ["<"]
    build = _int_leaves(t, 0, fmt, [0, 0])
    if build is None:
        return None
    return struct.Struct("".join(fmt)).unpack_from, build


def _coerce_in(have: str, want: str) -> Callable[[Any], Any] | None:
    """Read a joined flat slot of type ``have`` as a case's ``want`` (CanonicalABI lift_flat_variant)."""
    if have == want:
        return None
    if want == "i32" and have == "i64":
        return lambda x: x & 0xFFFF_FFFF
    if want == "f32" and have == "i32":
        return lambda x: _F32.unpack(_U32.pack(x & 0xFFFF_FFFF))[0]
    if want == "f32" and have == "i64":
        return lambda x: _F32.unpack(_U32.pack(x & 0xFFFF_FFFF))[0]
    if want == "f64" and have == "i64":
        return lambda x: _F64.unpack(_U64.pack(x & 0xFFFF_FFFF_FFFF_FFFF))[0]
    return None


def _coerce_out(have: str, slot: str) -> Callable[[Any], Any] | None:
    if have == slot:
        return None
    if have == "f32":
        return lambda x: _U32.unpack(_F32.pack(x))[0]
    if have == "f64":
        return lambda x: _U64.unpack(_F64.pack(x))[0]
    return None  # i32 into an i64 slot: the same unsigned int


def _variant(t: Variant) -> Conv:
    cases = t.cases
    kind = t.kind
    names = [n for n, _ in cases]
    index = {n: i for i, n in enumerate(names)}
    convs = [conv(ct) if ct is not None else None for _, ct in cases]
    disc = {1: _U8, 2: _U16, 4: _U32}[t.disc_size]
    payload_offset = t.payload_offset
    slots = t.flat[1:]
    ncases = len(cases)
    nested_option = kind == "option" and isinstance(cases[1][1], Variant) and cases[1][1].kind == "option"
    # Per case: how to read its flat payload out of the joined slots, and write it back.
    ins, outs = [], []
    for _, ct in cases:
        flat = ct.flat if ct is not None else []
        ins.append([_coerce_in(slots[j], ft) for j, ft in enumerate(flat)])
        outs.append([_coerce_out(ft, slots[j]) for j, ft in enumerate(flat)])

    def make(i: int, payload: Any) -> Any:
        if kind == "option":
            if i == 0:
                return None
            return Some(payload) if nested_option else payload
        if kind == "result":
            return Ok(payload) if i == 0 else Err(payload)
        if kind == "enum":
            return names[i]
        return VariantValue(names[i], payload)

    def split(x: Any) -> tuple[int, Any]:
        if kind == "option":
            if x is None:
                return 0, None
            if nested_option:
                if not isinstance(x, Some):
                    raise Trap("option<option<T>> needs Some(...) for the outer case")
                return 1, x.value
            return 1, (x.value if isinstance(x, Some) else x)
        if kind == "result":
            if isinstance(x, Err):
                return 1, x.value
            return 0, (x.value if isinstance(x, Ok) else x)
        if kind == "enum":
            if isinstance(x, VariantValue) and x.payload is None:  # a bare case name from --invoke
                x = x.tag
            i = index.get(x) if isinstance(x, str) else None
            if i is None:
                raise Trap(f"{x!r} is not a case of enum {names}")
            return i, None
        if not isinstance(x, VariantValue) or x.tag not in index:
            raise Trap(f"expected Variant with a tag in {names}, got {x!r}")
        return index[x.tag], x.payload

    def case_of(d: int) -> int:
        if d >= ncases:
            raise Trap(f"discriminant {d} is out of range for a {kind} with {ncases} cases")
        return d

    def load(m: MemCx, v: memoryview, ptr: int) -> Any:
        i = case_of(disc.unpack_from(v, ptr)[0])
        c = convs[i]
        return make(i, c.load(m, v, ptr + payload_offset) if c is not None else None)

    case_stores = [c.store if c is not None else None for c in convs]
    pack_disc = disc.pack_into
    is_result = kind == "result"
    plain_option = kind == "option" and not nested_option

    def store(m: MemCx, x: Any, ptr: int) -> None:
        # split(x), inline for an Ok/Err of a result and a plain option's value
        tx = type(x)
        if is_result and tx is Ok:
            i, payload = 0, x.value
        elif is_result and tx is Err:
            i, payload = 1, x.value
        elif plain_option and (x is None or not isinstance(x, Some)):
            i, payload = (0, None) if x is None else (1, x)
        else:
            i, payload = split(x)
        case_store = case_stores[i]
        if case_store is not None:
            case_store(m, payload, ptr + payload_offset)
        pack_disc(m.view(), ptr, i)

    def lift_flat(m: MemCx, vals: list, i: int) -> tuple:
        ci = case_of(vals[i] & 0xFFFF_FFFF)
        c = convs[ci]
        end = i + 1 + len(slots)
        if c is None:
            return make(ci, None), end
        fix = ins[ci]
        raw = vals[i + 1:i + 1 + len(fix)]
        if any(fix):
            raw = [f(x) if f is not None else x for f, x in zip(fix, raw)]
        value, _ = c.lift_flat(m, raw, 0)
        return make(ci, value), end

    def lower_flat(m: MemCx, x: Any, out: list) -> None:
        ci, payload = split(x)
        c = convs[ci]
        out.append(ci)
        flat: list = []
        if c is not None:
            c.lower_flat(m, payload, flat)
            fix = outs[ci]
            if any(fix):
                flat = [f(v) if f is not None else v for f, v in zip(fix, flat)]
        out.extend(flat)
        out.extend([0] * (len(slots) - len(flat)))

    return Conv(t, load, store, lift_flat, lower_flat)


def _flags(t: Flags) -> Conv:
    names = t.names
    n = len(names)
    bit = {name: i for i, name in enumerate(names)}
    nwords = len(t.flat)

    def to_set(bits: int) -> set[str]:
        # Bits beyond the type's flags are ignored, as the spec's unpack_flags_from_int does.
        return {names[i] for i in range(n) if bits >> i & 1}

    def to_bits(x: Any) -> int:
        bits = 0
        for name in x:
            if name not in bit:
                raise Trap(f"unknown flag {name!r}")
            bits |= 1 << bit[name]
        return bits

    st = {1: _U8, 2: _U16}.get(t.size)

    def load(m: MemCx, v: memoryview, ptr: int) -> set[str]:
        if st is not None:
            return to_set(st.unpack_from(v, ptr)[0])
        bits = 0
        for w in range(nwords):
            bits |= _U32.unpack_from(v, ptr + 4 * w)[0] << (32 * w)
        return to_set(bits)

    def store(m: MemCx, x: Any, ptr: int) -> None:
        bits = to_bits(x)
        if st is not None:
            st.pack_into(m.view(), ptr, bits)
            return
        for w in range(nwords):
            _U32.pack_into(m.view(), ptr + 4 * w, bits >> (32 * w) & 0xFFFF_FFFF)

    def lift_flat(m: MemCx, vals: list, i: int) -> tuple:
        bits = 0
        for w in range(nwords):
            bits |= (vals[i + w] & 0xFFFF_FFFF) << (32 * w)
        return to_set(bits), i + nwords

    def lower_flat(m: MemCx, x: Any, out: list) -> None:
        bits = to_bits(x)
        out.extend(bits >> (32 * w) & 0xFFFF_FFFF for w in range(nwords))

    return Conv(t, load, store, lift_flat, lower_flat)


def _handle(t: Handle) -> Conv:
    res = t.resource
    own = t.own

    def lift(m: MemCx, h: int) -> Any:
        inst = m.inst
        rt = res.resolve()
        if own:
            return inst.take_own(h, rt)
        return inst.lend(m, h, rt)

    def lower(m: MemCx, x: Any) -> int:
        rt = res.resolve()
        if own:
            return m.inst.new_own(rt, x)
        return m.inst.new_borrow(m, rt, x)

    c = _by_index(t, lift, lower)
    if own:
        def store_own(m: MemCx, x: Any, ptr: int) -> None:  # c.store, with lower() inline (a frame less)
            h = m.inst.new_own(res.resolve(), x)
            _U32_PACK(m.view(), ptr, h)
        c.store = store_own
    return c


def _by_index(t: ValType, lift: Callable[[MemCx, int], Any], lower: Callable[[MemCx, Any], int]) -> Conv:
    """The converters of a value that crosses as an i32 index into the handle table."""

    def load(m: MemCx, v: memoryview, ptr: int) -> Any:
        return lift(m, _U32.unpack_from(v, ptr)[0])

    def store(m: MemCx, x: Any, ptr: int) -> None:
        h = lower(m, x)
        _U32_PACK(m.view(), ptr, h)

    def lift_flat(m: MemCx, vals: list, i: int) -> tuple:
        return lift(m, vals[i] & 0xFFFF_FFFF), i + 1

    def lower_flat(m: MemCx, x: Any, out: list) -> None:
        out.append(lower(m, x))

    return Conv(t, load, store, lift_flat, lower_flat)


def _async_value(t: StreamT | FutureT | ErrorContextT) -> Conv:
    """A stream or future crosses as the index of its readable end (ownership moves), an
    error context as its index (CanonicalABI lift_async_value / lower_stream / ...)."""
    if isinstance(t, ErrorContextT):
        def lift(m: MemCx, h: int) -> Any:
            return m.inst.lift_error_context(h)

        def lower(m: MemCx, x: Any) -> int:
            return m.inst.lower_error_context(x)
    else:
        def lift(m: MemCx, h: int) -> Any:
            return m.inst.lift_async_end(h, t)

        def lower(m: MemCx, x: Any) -> int:
            return m.inst.lower_async_end(x, t)

        c = _by_index(t, lift, lower)

        def store_end(m: MemCx, x: Any, ptr: int) -> None:  # c.store, with lower() inline (a frame less)
            h = m.inst.lower_async_end(x, t)
            _U32_PACK(m.view(), ptr, h)
        c.store = store_end
        return c

    return _by_index(t, lift, lower)


__all__ = ["Conv", "MemCx", "check_range", "conv", "lift_bytes", "lift_string", "lower_bytes", "lower_string"]
