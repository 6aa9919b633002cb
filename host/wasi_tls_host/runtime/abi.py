"""Conversion between wasmtime's C values and Python values, driven by WIT types.

wasmtime-py converts values by inspecting Python types at run time (guessing whether a
``result`` or ``option`` needs a tag) and copies ``list<u8>`` byte by byte. Here converters
are built once per host function from the function's type, so nesting such as
``option<result<result<T, E>>>`` is always lowered as the type says, and byte lists move
with two strided copies instead of a Python loop.

Each converter is a closure: ``lift(cx, val) -> object`` reads a
``wasmtime_component_val_t`` that wasmtime owns (we never free argument contents: the C API
drops them after the call), and ``lower(cx, obj, dst)`` fills a value that wasmtime takes
ownership of. ``cx`` is the per-store ``StoreState`` (resource table and context pointer).

Every ``lower`` writes ``dst.kind`` last, after everything that can fail: wasmtime frees the
destination by its kind even when the call fails, so a kind written over a half-built
payload would make it free garbage.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, Callable

from wasmtime import WasmtimeError
from wasmtime import _bindings as _raw
from wasmtime import _ffi as ffi
from wasmtime.component import _types as wt

from .values import ConversionError, Err, Ok, Some, Trap, Variant

if TYPE_CHECKING:
    from .resources import ResourceKind
    from .store import StoreState

Lift = Callable[["StoreState", Any], Any]
Lower = Callable[["StoreState", Any, Any], None]

VAL_SIZE = ctypes.sizeof(ffi.wasmtime_component_val_t)
# Offset of the payload union inside wasmtime_component_val_t (the kind byte comes first).
PAYLOAD_OFFSET = ffi.wasmtime_component_val_t.of.offset
_U8_KIND = ffi.WASMTIME_COMPONENT_U8.value

_K = ffi  # short alias for kind constants below
KIND_BOOL = _K.WASMTIME_COMPONENT_BOOL
KIND_S8, KIND_U8 = _K.WASMTIME_COMPONENT_S8, _K.WASMTIME_COMPONENT_U8
KIND_S16, KIND_U16 = _K.WASMTIME_COMPONENT_S16, _K.WASMTIME_COMPONENT_U16
KIND_S32, KIND_U32 = _K.WASMTIME_COMPONENT_S32, _K.WASMTIME_COMPONENT_U32
KIND_S64, KIND_U64 = _K.WASMTIME_COMPONENT_S64, _K.WASMTIME_COMPONENT_U64
KIND_F32, KIND_F64 = _K.WASMTIME_COMPONENT_F32, _K.WASMTIME_COMPONENT_F64
KIND_CHAR, KIND_STRING = _K.WASMTIME_COMPONENT_CHAR, _K.WASMTIME_COMPONENT_STRING
KIND_LIST, KIND_RECORD = _K.WASMTIME_COMPONENT_LIST, _K.WASMTIME_COMPONENT_RECORD
KIND_TUPLE, KIND_VARIANT = _K.WASMTIME_COMPONENT_TUPLE, _K.WASMTIME_COMPONENT_VARIANT
KIND_ENUM, KIND_OPTION = _K.WASMTIME_COMPONENT_ENUM, _K.WASMTIME_COMPONENT_OPTION
KIND_RESULT, KIND_FLAGS = _K.WASMTIME_COMPONENT_RESULT, _K.WASMTIME_COMPONENT_FLAGS
KIND_RESOURCE = _K.WASMTIME_COMPONENT_RESOURCE

_byte_p = ctypes.POINTER(ctypes.c_uint8)


def snake(name: str) -> str:
    return name.replace("-", "_")


def new_name(text: str | bytes) -> ffi.wasm_byte_vec_t:
    """A wasm_name_t holding a copy of ``text`` (wasmtime takes ownership)."""
    data = text.encode() if isinstance(text, str) else text
    vec = ffi.wasm_byte_vec_t()
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), ctypes.cast(ctypes.c_char_p(data), _byte_p))
    return vec


def read_name(vec: ffi.wasm_byte_vec_t) -> str:
    return ctypes.string_at(vec.data, vec.size).decode()


# --- list<u8> fast path ------------------------------------------------------------------

_U8_KINDS: dict[int, bytes] = {}


def _u8_kinds(n: int) -> bytes:
    kinds = _U8_KINDS.get(n)
    if kinds is None:
        kinds = bytes([_U8_KIND]) * n
        if n <= 1 << 20:
            _U8_KINDS[n] = kinds
    return kinds


def lift_bytes(vallist: Any) -> bytes:
    """Bytes of a ``list<u8>`` value: one strided check and one strided copy out of
    wasmtime's value array."""
    n = vallist.size
    if n == 0:
        return b""
    view = memoryview((ctypes.c_char * (n * VAL_SIZE)).from_address(ctypes.addressof(vallist.data.contents))).cast("B")
    if view[0::VAL_SIZE] != _u8_kinds(n):
        raise Trap("a list arrived whose elements are not u8: the component imports this function with another signature")
    return bytes(view[PAYLOAD_OFFSET::VAL_SIZE])


def lower_bytes(data: bytes | bytearray | memoryview, dst: Any) -> None:
    """Fill ``dst`` with a ``list<u8>``: two strided writes straight into wasmtime's array."""
    n = len(data)
    raw = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(ctypes.byref(raw), n)
    if n:
        view = memoryview(
            (ctypes.c_char * (n * VAL_SIZE)).from_address(ctypes.addressof(raw.data.contents))
        ).cast("B")
        view[0::VAL_SIZE] = _u8_kinds(n)
        view[PAYLOAD_OFFSET::VAL_SIZE] = data
    dst.kind = KIND_LIST
    dst.of.list = raw


# --- type signatures ----------------------------------------------------------------------

_PRIMITIVES = (wt.Bool, wt.S8, wt.U8, wt.S16, wt.U16, wt.S32, wt.U32, wt.S64, wt.U64, wt.F32, wt.F64, wt.Char, wt.String)


def signature(ty: Any) -> str:
    """A canonical text form of a WIT type: two imports of one host function must agree on
    it, since the converters built for one are applied to the other's values."""
    if isinstance(ty, _PRIMITIVES):
        return type(ty).__name__.lower()
    if isinstance(ty, wt.ListType):
        return f"list<{signature(ty.element)}>"
    if isinstance(ty, wt.TupleType):
        return "tuple<" + ",".join(signature(e) for e in ty.elements) + ">"
    if isinstance(ty, wt.RecordType):
        return "record{" + ",".join(f"{n}:{signature(t)}" for n, t in ty.fields) + "}"
    if isinstance(ty, wt.VariantType):
        return "variant{" + ",".join(n if t is None else f"{n}({signature(t)})" for n, t in ty.cases) + "}"
    if isinstance(ty, wt.EnumType):
        return "enum{" + ",".join(ty.names) + "}"
    if isinstance(ty, wt.FlagsType):
        return "flags{" + ",".join(ty.names) + "}"
    if isinstance(ty, wt.OptionType):
        return f"option<{signature(ty.payload)}>"
    if isinstance(ty, wt.ResultType):
        ok, err = ty.ok, ty.err
        return f"result<{signature(ok) if ok else '_'},{signature(err) if err else '_'}>"
    if isinstance(ty, (wt.OwnType, wt.BorrowType)):
        # Which resource is not part of the signature: an import's resource types are the
        # component's own until instantiation binds them to the host's, and each handle's
        # resource type is checked when it is converted anyway.
        return "own" if isinstance(ty, wt.OwnType) else "borrow"
    return type(ty).__name__


def func_signature(fty: Any) -> str:
    params = ",".join(signature(t) for _, t in fty.params)
    result = fty.result
    return f"({params})->{signature(result) if result is not None else '()'}"


def value_kind(ty: Any) -> int | None:
    """The ``kind`` byte a value of this type carries (None for types we do not check)."""
    table = [
        (wt.Bool, KIND_BOOL), (wt.S8, KIND_S8), (wt.U8, KIND_U8), (wt.S16, KIND_S16), (wt.U16, KIND_U16),
        (wt.S32, KIND_S32), (wt.U32, KIND_U32), (wt.S64, KIND_S64), (wt.U64, KIND_U64), (wt.F32, KIND_F32),
        (wt.F64, KIND_F64), (wt.Char, KIND_CHAR), (wt.String, KIND_STRING), (wt.ListType, KIND_LIST),
        (wt.RecordType, KIND_RECORD), (wt.TupleType, KIND_TUPLE), (wt.VariantType, KIND_VARIANT),
        (wt.EnumType, KIND_ENUM), (wt.OptionType, KIND_OPTION), (wt.ResultType, KIND_RESULT),
        (wt.FlagsType, KIND_FLAGS), (wt.OwnType, KIND_RESOURCE), (wt.BorrowType, KIND_RESOURCE),
    ]
    for cls, kind in table:
        if isinstance(ty, cls):
            return int(kind.value)
    return None


# --- converter construction --------------------------------------------------------------


def _int_conv(field: str, kind: Any, lo: int, hi: int) -> tuple[Lift, Lower]:
    def lift(cx: StoreState, v: Any) -> int:
        return getattr(v.of, field)  # type: ignore[no-any-return]

    def lower(cx: StoreState, x: Any, dst: Any) -> None:
        if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
            raise ConversionError(f"expected an integer in [{lo}, {hi}], got {x!r}")
        dst.kind = kind
        setattr(dst.of, field, x)

    return lift, lower


def _resource_kind(rt: Any, kinds: list[ResourceKind]) -> ResourceKind:
    for kind in kinds:
        if kind.wasmtime_type == rt:
            return kind
    raise WasmtimeError("function uses a resource type that this host did not define")


def converters(ty: wt.ValType, kinds: list[ResourceKind]) -> tuple[Lift, Lower]:
    """Build (lift, lower) for a wasmtime-py ValType; lifting checks each value's kind."""
    lift, lower = _converters(ty, kinds)
    kind = value_kind(ty)
    if kind is None:
        return lift, lower
    expected = kind

    def lift_checked(cx: StoreState, v: Any) -> Any:
        # Host functions are linked untyped: a component may declare an import with other
        # types than the host's converters expect. Never read a union as the wrong member.
        if v.kind != expected:
            raise Trap(f"a value of kind {v.kind} arrived where the host expects kind {expected}: "
                       "the component imports this function with another signature")
        return lift(cx, v)

    return lift_checked, lower


def _converters(ty: wt.ValType, kinds: list[ResourceKind]) -> tuple[Lift, Lower]:
    if isinstance(ty, wt.Bool):

        def lift_bool(cx: StoreState, v: Any) -> bool:
            return bool(v.of.boolean)

        def lower_bool(cx: StoreState, x: Any, dst: Any) -> None:
            dst.kind = KIND_BOOL
            dst.of.boolean = bool(x)

        return lift_bool, lower_bool
    if isinstance(ty, wt.U8):
        return _int_conv("u8", KIND_U8, 0, 0xFF)
    if isinstance(ty, wt.S8):
        return _int_conv("s8", KIND_S8, -0x80, 0x7F)
    if isinstance(ty, wt.U16):
        return _int_conv("u16", KIND_U16, 0, 0xFFFF)
    if isinstance(ty, wt.S16):
        return _int_conv("s16", KIND_S16, -0x8000, 0x7FFF)
    if isinstance(ty, wt.U32):
        return _int_conv("u32", KIND_U32, 0, 0xFFFF_FFFF)
    if isinstance(ty, wt.S32):
        return _int_conv("s32", KIND_S32, -(2**31), 2**31 - 1)
    if isinstance(ty, wt.U64):
        return _int_conv("u64", KIND_U64, 0, 2**64 - 1)
    if isinstance(ty, wt.S64):
        return _int_conv("s64", KIND_S64, -(2**63), 2**63 - 1)
    if isinstance(ty, (wt.F32, wt.F64)):
        field, fkind = ("f32", KIND_F32) if isinstance(ty, wt.F32) else ("f64", KIND_F64)

        def lift_float(cx: StoreState, v: Any) -> float:
            return float(getattr(v.of, field))

        def lower_float(cx: StoreState, x: Any, dst: Any) -> None:
            dst.kind = fkind
            setattr(dst.of, field, float(x))

        return lift_float, lower_float
    if isinstance(ty, wt.Char):

        def lift_char(cx: StoreState, v: Any) -> str:
            return chr(v.of.character)

        def lower_char(cx: StoreState, x: Any, dst: Any) -> None:
            if not isinstance(x, str) or len(x) != 1:
                raise ConversionError(f"expected a single character, got {x!r}")
            dst.kind = KIND_CHAR
            dst.of.character = ord(x)

        return lift_char, lower_char
    if isinstance(ty, wt.String):

        def lift_string(cx: StoreState, v: Any) -> str:
            return read_name(v.of.string)

        def lower_string(cx: StoreState, x: Any, dst: Any) -> None:
            if not isinstance(x, str):
                raise ConversionError(f"expected a string, got {type(x).__name__}")
            name = new_name(x.encode("utf-8", "surrogateescape"))
            dst.kind = KIND_STRING
            dst.of.string = name

        return lift_string, lower_string
    if isinstance(ty, wt.ListType):
        return _list_converters(ty, kinds)
    if isinstance(ty, wt.TupleType):
        return _tuple_converters(ty, kinds)
    if isinstance(ty, wt.RecordType):
        return _record_converters(ty, kinds)
    if isinstance(ty, wt.OptionType):
        return _option_converters(ty, kinds)
    if isinstance(ty, wt.ResultType):
        return _result_converters(ty, kinds)
    if isinstance(ty, wt.VariantType):
        return _variant_converters(ty, kinds)
    if isinstance(ty, wt.EnumType):
        return _enum_converters(ty)
    if isinstance(ty, wt.FlagsType):
        return _flags_converters(ty)
    if isinstance(ty, (wt.OwnType, wt.BorrowType)):
        return _resource_converters(ty, kinds)
    raise WasmtimeError(f"WIT type {type(ty).__name__} is not supported by this host")


def _list_converters(ty: wt.ListType, kinds: list[ResourceKind]) -> tuple[Lift, Lower]:
    element = ty.element
    if isinstance(element, wt.U8):

        def lift_u8s(cx: StoreState, v: Any) -> bytes:
            return lift_bytes(v.of.list)

        def lower_u8s(cx: StoreState, x: Any, dst: Any) -> None:
            if not isinstance(x, (bytes, bytearray, memoryview)):
                raise ConversionError(f"expected bytes for list<u8>, got {type(x).__name__}")
            lower_bytes(x, dst)

        return lift_u8s, lower_u8s
    elem_lift, elem_lower = converters(element, kinds)

    def lift_list(cx: StoreState, v: Any) -> list[Any]:
        lst = v.of.list
        return [elem_lift(cx, lst.data[i]) for i in range(lst.size)]

    def lower_list(cx: StoreState, x: Any, dst: Any) -> None:
        items = list(x)
        raw = ffi.wasmtime_component_vallist_t()
        ffi.wasmtime_component_vallist_new_uninit(ctypes.byref(raw), len(items))
        _fill(cx, [elem_lower] * len(items), items, [raw.data[i] for i in range(len(items))])
        dst.kind = KIND_LIST
        dst.of.list = raw

    return lift_list, lower_list


def _fill(cx: StoreState, lowers: list[Lower], values: list[Any], slots: list[Any]) -> None:
    """Lower values into freshly allocated (uninitialised) slots, keeping them valid on error."""
    for slot in slots:
        slot.kind = KIND_BOOL
        slot.of.boolean = False
    for lower, value, slot in zip(lowers, values, slots):
        lower(cx, value, slot)


def _tuple_converters(ty: wt.TupleType, kinds: list[ResourceKind]) -> tuple[Lift, Lower]:
    convs = [converters(e, kinds) for e in ty.elements]
    lifts = [c[0] for c in convs]
    lowers = [c[1] for c in convs]
    n = len(convs)

    def lift_tuple(cx: StoreState, v: Any) -> tuple[Any, ...]:
        t = v.of.tuple
        return tuple(lifts[i](cx, t.data[i]) for i in range(n))

    def lower_tuple(cx: StoreState, x: Any, dst: Any) -> None:
        if not isinstance(x, (tuple, list)) or len(x) != n:
            raise ConversionError(f"expected a tuple of {n} values, got {x!r}")
        raw = ffi.wasmtime_component_valtuple_t()
        ffi.wasmtime_component_valtuple_new_uninit(ctypes.byref(raw), n)
        _fill(cx, lowers, list(x), [raw.data[i] for i in range(n)])
        dst.kind = KIND_TUPLE
        dst.of.tuple = raw

    return lift_tuple, lower_tuple


def _record_converters(ty: wt.RecordType, kinds: list[ResourceKind]) -> tuple[Lift, Lower]:
    fields = [(name, snake(name), *converters(fty, kinds)) for name, fty in ty.fields]
    n = len(fields)

    def lift_record(cx: StoreState, v: Any) -> dict[str, Any]:
        r = v.of.record
        return {fields[i][1]: fields[i][2](cx, r.data[i].val) for i in range(n)}

    def lower_record(cx: StoreState, x: Any, dst: Any) -> None:
        get = x.__getitem__ if isinstance(x, dict) else (lambda k: getattr(x, k))
        try:
            values = [get(f[1]) for f in fields]
        except (KeyError, AttributeError) as e:
            raise ConversionError(f"record value is missing field {e}") from None
        raw = ffi.wasmtime_component_valrecord_t()
        ffi.wasmtime_component_valrecord_new_uninit(ctypes.byref(raw), n)
        entries = [raw.data[i] for i in range(n)]
        for entry, f in zip(entries, fields):
            entry.name = new_name(f[0])
        _fill(cx, [f[3] for f in fields], values, [e.val for e in entries])
        dst.kind = KIND_RECORD
        dst.of.record = raw

    return lift_record, lower_record


def _boxed(cx: StoreState, lower: Lower, x: Any) -> Any:
    tmp = ffi.wasmtime_component_val_t()
    tmp.kind = KIND_BOOL  # a valid value even if lowering fails half way
    lower(cx, x, tmp)
    return ffi.wasmtime_component_val_new(ctypes.byref(tmp))


def _option_converters(ty: wt.OptionType, kinds: list[ResourceKind]) -> tuple[Lift, Lower]:
    payload_ty = ty.payload
    p_lift, p_lower = converters(payload_ty, kinds)
    wrapped = isinstance(payload_ty, wt.OptionType)

    def lift_option(cx: StoreState, v: Any) -> Any:
        p = v.of.option
        if not p:
            return None
        value = p_lift(cx, p.contents)
        return Some(value) if wrapped else value

    def lower_option(cx: StoreState, x: Any, dst: Any) -> None:
        if x is None:
            dst.kind = KIND_OPTION
            dst.of.option = None
            return
        if wrapped:
            if not isinstance(x, Some):
                raise ConversionError("option<option<T>> needs Some(...) for the outer case")
            x = x.value
        elif isinstance(x, Some):
            x = x.value
        boxed = _boxed(cx, p_lower, x)
        dst.kind = KIND_OPTION
        dst.of.option = boxed

    return lift_option, lower_option


def _result_converters(ty: wt.ResultType, kinds: list[ResourceKind]) -> tuple[Lift, Lower]:
    ok_ty, err_ty = ty.ok, ty.err
    ok_c = converters(ok_ty, kinds) if ok_ty is not None else None
    err_c = converters(err_ty, kinds) if err_ty is not None else None

    def lift_result(cx: StoreState, v: Any) -> Any:
        r = v.of.result
        conv = ok_c if r.is_ok else err_c
        payload = conv[0](cx, r.val.contents) if conv is not None and r.val else None
        return Ok(payload) if r.is_ok else Err(payload)

    def lower_result(cx: StoreState, x: Any, dst: Any) -> None:
        if isinstance(x, Err):
            is_ok, conv, payload = False, err_c, x.value
        else:
            is_ok, conv, payload = True, ok_c, (x.value if isinstance(x, Ok) else x)
        boxed = _boxed(cx, conv[1], payload) if conv is not None else None
        dst.kind = KIND_RESULT
        dst.of.result.is_ok = is_ok
        dst.of.result.val = boxed

    return lift_result, lower_result


def _variant_converters(ty: wt.VariantType, kinds: list[ResourceKind]) -> tuple[Lift, Lower]:
    cases = {name: (converters(cty, kinds) if cty is not None else None) for name, cty in ty.cases}

    def lift_variant(cx: StoreState, v: Any) -> Variant:
        tag = read_name(v.of.variant.discriminant)
        conv = cases[tag]
        p = v.of.variant.val
        return Variant(tag, conv[0](cx, p.contents) if conv is not None and p else None)

    def lower_variant(cx: StoreState, x: Any, dst: Any) -> None:
        if not isinstance(x, Variant) or x.tag not in cases:
            raise ConversionError(f"expected Variant with a tag in {sorted(cases)}, got {x!r}")
        conv = cases[x.tag]
        boxed = _boxed(cx, conv[1], x.payload) if conv is not None else None
        dst.kind = KIND_VARIANT
        dst.of.variant.discriminant = new_name(x.tag)
        dst.of.variant.val = boxed

    return lift_variant, lower_variant


def _enum_converters(ty: wt.EnumType) -> tuple[Lift, Lower]:
    names = set(ty.names)

    def lift_enum(cx: StoreState, v: Any) -> str:
        return read_name(v.of.enumeration)

    def lower_enum(cx: StoreState, x: Any, dst: Any) -> None:
        if isinstance(x, Variant) and x.payload is None:  # a bare case name from --invoke
            x = x.tag
        if x not in names:
            raise ConversionError(f"{x!r} is not a case of enum {sorted(names)}")
        dst.kind = KIND_ENUM
        dst.of.enumeration = new_name(x)

    return lift_enum, lower_enum


def _flags_converters(ty: wt.FlagsType) -> tuple[Lift, Lower]:
    order = ty.names

    def lift_flags(cx: StoreState, v: Any) -> set[str]:
        f = v.of.flags
        return {read_name(f.data[i]) for i in range(f.size)}

    def lower_flags(cx: StoreState, x: Any, dst: Any) -> None:
        chosen = [name for name in order if name in x]
        if len(chosen) != len(set(x)):
            raise ConversionError(f"unknown flags {sorted(set(x) - set(order))}")
        raw = ffi.wasmtime_component_valflags_t()
        ffi.wasmtime_component_valflags_new_uninit(ctypes.byref(raw), len(chosen))
        for i, name in enumerate(chosen):
            raw.data[i] = new_name(name)
        dst.kind = KIND_FLAGS
        dst.of.flags = raw

    return lift_flags, lower_flags


_RESOURCE_HOST_P = ctypes.POINTER(ffi.wasmtime_component_resource_host_t)
_RESOURCE_ANY_P = ctypes.POINTER(ffi.wasmtime_component_resource_any_t)
# The raw ctypes entry points: every handle crossing calls four of them, and the Python
# wrappers around them in wasmtime._bindings add a frame each.
_any_to_host = _raw._wasmtime_component_resource_any_to_host
_host_to_any = _raw._wasmtime_component_resource_host_to_any
_host_new = _raw._wasmtime_component_resource_host_new
_host_rep = _raw._wasmtime_component_resource_host_rep
_host_type = _raw._wasmtime_component_resource_host_type
_host_delete = _raw._wasmtime_component_resource_host_delete


def _resource_converters(ty: Any, kinds: list[ResourceKind]) -> tuple[Lift, Lower]:
    kind = _resource_kind(ty.ty, kinds)
    owned = isinstance(ty, wt.OwnType)
    type_id = kind.type_id
    take_or_get = "take" if owned else "get"

    def lift_resource(cx: StoreState, v: Any) -> Any:
        host = _RESOURCE_HOST_P()
        err = _any_to_host(cx.context, v.of.resource, ctypes.byref(host))
        if err:
            raise Trap(f"{kind.name}: {WasmtimeError._from_ptr(err)}")
        try:
            rep = _host_rep(host)
            actual = _host_type(host)
        finally:
            _host_delete(host)
        if actual != type_id:
            raise Trap(f"handle passed as {kind.name} is a different resource type")
        return getattr(cx.table, take_or_get)(rep, kind)

    def lower_resource(cx: StoreState, x: Any, dst: Any) -> None:
        if not owned:
            raise ConversionError("host functions cannot return borrowed handles")
        if not isinstance(x, kind.py_class):
            raise ConversionError(f"expected a {kind.name} ({kind.py_class.__name__}), got {x!r}")
        rep = cx.table.insert(x, kind)
        host = _host_new(True, rep, type_id)
        anyp = _RESOURCE_ANY_P()
        try:
            err = _host_to_any(cx.context, host, ctypes.byref(anyp))
        finally:
            _host_delete(host)
        if err:
            cx.table.take(rep, kind)
            raise Trap(f"{kind.name}: {WasmtimeError._from_ptr(err)}")
        dst.of.resource = anyp
        dst.kind = KIND_RESOURCE

    return lift_resource, lower_resource

