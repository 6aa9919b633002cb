"""``canon lower`` of host functions: the native bodies (trampolines) a guest calls.

A synchronous lower lifts the arguments straight out of the guest's flat values and linear
memory, calls the Python impl (running an ``async def`` one to completion on the store's
scheduler), and lowers the result straight into memory through the guest's ``realloc``. An
``async`` lower starts the impl's coroutine and returns RETURNED if it finished at once, or
a subtask whose SUBTASK event comes when it does.
"""

from __future__ import annotations

import gc
import struct
import sys
from typing import Any, Callable

from ..binding import OUTGOING_VALUE_HOOKS, HostFunc, host_call_failure
from ..resources import drop_consumed_arguments
from ..scheduler import Cancelled, HostTask, Scheduler, _AnyOf, _Yield
from ..values import Err, Ok, Trap, WitError
from . import canon, lift, native
from .concurrent import Subtask
from .table import ComponentState, _HandleEntry
from .types import (
    FuncT, FutureT, Handle, ImportedResource, ListT, Prim, StreamT, Tuple, ValType, Variant, align_to, contains_borrow,
)

_U8_PACK, _U16_PACK, _U32_PACK = struct.Struct("<B").pack_into, struct.Struct("<H").pack_into, struct.Struct("<I").pack_into
_U32_UNPACK = struct.Struct("<I").unpack_from


def _end_loans(m: canon.MemCx, strict: bool = True) -> None:
    """End the loan of guest memory views: any later use of the lent view raises, instead of
    reading memory that a later call may have grown or moved; a view derived from it (which
    cannot be revoked) is reported as the host bug it is."""
    lent, m.lent = m.lent, []
    for loan in lent:
        try:
            loan[1].release()
        except BufferError:
            pass  # a view exported from this one is alive: the check below sees it
    if not strict:
        return
    # A reference cycle (a traceback that held a slice, say) may keep a view a little
    # longer: collect once before blaming the host.
    if _views_alive(lent):
        gc.collect()
        if _views_alive(lent):
            raise Trap("the host kept a view of guest memory beyond the call")


def _views_alive(lent: list[tuple[Any, memoryview]]) -> bool:
    """Whether a view derived from a lent one is still alive (it keeps the array)."""
    for array, _ in lent:
        # References otherwise: the tuple in `lent`, `array`, getrefcount's argument.
        if sys.getrefcount(array) > 3:
            return True
    return False


def load_spilled_arguments(m: canon.MemCx, args: Any, conv: Any, size: int, align: int) -> Any:
    """The arguments of a call whose parameters spill: a tuple at the pointer in ``args[0]``."""
    return load_spilled_at(m, args[0].i32 & 0xFFFF_FFFF, conv, size, align)


def lift_flat_arguments(m: canon.MemCx, args: Any, readers: list[Callable[[Any], Any]],
                        param_convs: list[Any]) -> list[Any]:
    """The arguments of a call from its flat core values."""
    flat = [r(args[i]) for i, r in enumerate(readers)]
    pyargs = []
    i = 0
    for lift in param_convs:
        value, i = lift(m, flat, i)
        pyargs.append(value)
    return pyargs


def _flat_lift(inst: ComponentState, t: ValType, at: int) -> Callable[[canon.MemCx, list[int]], Any]:
    """How a synchronous lower lifts the parameter ``t`` from its flat values (as unsigned
    ints) starting at ``at``: a ``borrow`` of a host resource and a stream or future end
    take the usual case inline, as the async lower does (``_param_lift``); anything else,
    and any value the inline case does not take, goes through the type's converter, whose
    checks trap as ever."""
    general = canon.conv(t).lift_flat
    if isinstance(t, (StreamT, FutureT)):
        lift_end = inst.lift_async_end

        def lift_async_end(m: canon.MemCx, flat: list[int]) -> Any:
            return lift_end(flat[at], t)
        return lift_async_end
    rt = t.resource.resolve() if isinstance(t, Handle) and not t.own else None
    if isinstance(rt, ImportedResource) and rt.kind is not None:
        kind = rt.kind
        handles = inst.handles
        table = inst.state.table

        def lift_borrow(m: canon.MemCx, flat: list[int]) -> Any:
            h = flat[at]
            entry = handles[h] if 0 < h < len(handles) else None
            if entry is None or entry.key is not kind:
                return general(m, flat, at)[0]
            # inst.lend, inline (as in _param_lift and _field_load, to spare a Python frame per
            # borrow on every method call; keep the three equal)
            if entry.own:  # the handle is lent until the call returns
                entry.lends += 1
                if m.borrows is None:
                    m.borrows = [h]
                else:
                    m.borrows.append(h)
            return table.get(entry.rep, kind)
        return lift_borrow

    def lift_general(m: canon.MemCx, flat: list[int]) -> Any:
        return general(m, flat, at)[0]
    return lift_general


def _own_result_store(inst: ComponentState, t: ValType | None, current: Callable[[], memoryview],
                      general: Callable[[Any, int], None]) -> Callable[[Any, int], None] | None:
    """``store(value, retptr)`` of a ``result<own<T>, E>`` whose ``T`` is a host resource
    (what ``tcp-socket.create`` returns), for sync and async lowers alike: the ok case stored
    directly (``inst.new_own`` inline) into ``current()``'s view; a value of another shape,
    and the error case, through ``general``, the type's converter, whose checks say what is
    wrong. None for other types."""
    if not (isinstance(t, Variant) and t.kind == "result"):
        return None
    ok_type = t.cases[0][1]
    if not (isinstance(ok_type, Handle) and ok_type.own and isinstance(ok_type.resource.resolve(), ImportedResource)):
        return None
    kind = ok_type.resource.resolve().kind
    if kind is None:
        return None
    py_class = kind.py_class
    payload_at = t.payload_offset
    pack_disc = {1: _U8_PACK, 2: _U16_PACK, 4: _U32_PACK}[t.disc_size]
    table = inst.state.table
    add = inst.add

    def store_own(value: Any, retptr: int) -> None:
        if type(value) is Ok:
            value = value.value
        if isinstance(value, py_class):  # inst.new_own, inline
            h = add(_HandleEntry(kind, table.insert(value, kind), True))
            v = current()
            _U32_PACK(v, retptr + payload_at, h)
            pack_disc(v, retptr, 0)
        else:
            general(value, retptr)
    return store_own


def result_pointer(m: canon.MemCx, raw: Any, size: int, align: int) -> int:
    """The guest's pointer for a result stored in memory, checked."""
    return checked_result_pointer(m, raw.i32 & 0xFFFF_FFFF, size, align)


def checked_result_pointer(m: canon.MemCx, ptr: int, size: int, align: int) -> int:
    """``ptr`` (unsigned), the guest's pointer for a result stored in memory, checked."""
    if ptr != align_to(ptr, align):
        raise Trap(f"result pointer {ptr:#x} is misaligned")
    m.check_range(ptr, size, "result")
    return ptr


class LowerSpec:
    """What a ``canon lower`` trampoline needs that does not depend on the instance (built
    once per imported function and component)."""

    def __init__(self, fn: HostFunc, ft: FuncT) -> None:
        self.fn = fn
        self.ft = ft
        self.core_type = ft.lower_core_type()
        self.returns_result = ft.result is not None and getattr(ft.result, "kind", "") == "result"
        self.nflat = len(ft.flat_params)
        self.readers = native.readers(ft.flat_params)
        self.param_convs = [canon.conv(t).lift_flat for _, t in ft.params]
        # list<u8> arguments lent as views of guest memory (see HostFunc.bytes_views).
        if fn.bytes_views and not ft.params_spill:
            for i, (_, t) in enumerate(ft.params):
                if isinstance(t, ListT) and isinstance(t.elem, Prim) and t.elem.name == "u8":
                    self.param_convs[i] = canon.lift_bytes_view_flat
        self.spill_tuple = canon.conv(ft.param_tuple) if ft.params_spill and ft.param_tuple is not None else None
        self.spill_align = ft.param_tuple.align if ft.param_tuple is not None else 1
        self.result_conv = canon.conv(ft.result) if ft.result is not None else None
        self.result_align = ft.result.align if ft.result is not None else 1
        self.result_size = ft.result.size if ft.result is not None else 0
        self.result_writer = native.writer(ft.flat_results[0]) if ft.result is not None and not ft.results_spill else None


def words_only(spec: LowerSpec) -> bool:
    """Whether a sync lower's core signature is integers only: its trampoline then takes its
    values as 64-bit words (``make_trampoline(..., words=True)``, a direct native callback)."""
    params, results = spec.core_type
    return all(t in ("i32", "i64") for t in (*params, *results))


def make_trampoline(inst: ComponentState, spec: LowerSpec, m: canon.MemCx, words: bool = False) -> Callable[..., int]:
    """The native body of one ``canon lower``: lift, call, lower, with every failure a trap
    that names the function. With ``words`` (``words_only``), a direct trampoline
    (native.RETIRED) taking its values as unsigned 64-bit words (``native.ENTRY_U64``): no
    ctypes object and no reader call per value, no shared entry's lookup."""
    fn = spec.fn
    ft = spec.ft
    impl = fn.impl
    qualname = fn.qualname
    state = inst.state
    returns_result = spec.returns_result
    nflat = spec.nflat
    readers = spec.readers
    param_convs = spec.param_convs
    spill_tuple = spec.spill_tuple
    spill_align = spec.spill_align
    spill_size = ft.param_tuple.size if ft.param_tuple is not None else 0
    result_conv = spec.result_conv
    result_spill = ft.results_spill
    result_align = spec.result_align
    result_size = spec.result_size
    result_writer = spec.result_writer
    # Per parameter, its lift from the flat values (unless a list<u8> is lent as a view:
    # then the converters, in lift_flat_arguments).
    flat_lifts = None
    if not ft.params_spill and all(c is not canon.lift_bytes_view_flat for c in param_convs):
        flat_lifts = []
        at = 0
        for _, t in ft.params:
            flat_lifts.append(_flat_lift(inst, t, at))
            at += len(t.flat)
    single_lift = flat_lifts[0] if flat_lifts is not None and len(flat_lifts) == 1 else None
    fills = fn.fills
    is_async = fn.is_async

    owned, kept = fn.owned, fn.kept
    ends_store = _ends_result_store(inst, ft, m)
    own_store = None
    if result_spill and result_conv is not None:
        store_converted = result_conv.store
        own_store = _own_result_store(inst, ft.result, m.view, lambda value, retptr: store_converted(m, value, retptr))
    flat_end = ft.result if isinstance(ft.result, (StreamT, FutureT)) and not result_spill else None
    lower_end = inst.lower_async_end
    w = native.U64_STRIDE
    # With words: each flat parameter's word and the mask that makes it the unsigned value
    # its reader gives (native.READERS), the result pointer's word, and the flat result's mask.
    word_masks = [(i * w, _WORD_MASKS[t]) for i, t in enumerate(ft.flat_params)] if words else []
    retptr_word = nflat * w
    result_mask = _WORD_MASKS[ft.flat_results[0]] if words and ft.result is not None and not result_spill else 0

    def tramp(args: Any) -> int:
        if not inst.may_leave:
            return native.trap_ptr(f"{qualname}: cannot call an import during realloc or post-return")
        m.forget()
        outer_borrows, m.borrows = m.borrows, None  # a nested call (from realloc) keeps its own
        pyargs: Any = []
        succeeded = False
        try:
            try:
                if words:  # the flat values as their readers give them, from the words
                    if spill_tuple is not None:
                        pyargs = load_spilled_at(m, args[0] & 0xFFFF_FFFF, spill_tuple, spill_size, spill_align)
                    else:
                        flat = [args[at] & mask for at, mask in word_masks]
                        if single_lift is not None:
                            pyargs = (single_lift(m, flat),)
                        elif flat_lifts is not None:
                            pyargs = [lift(m, flat) for lift in flat_lifts]
                        else:
                            pyargs = []
                            i = 0
                            for lift_param in param_convs:
                                value, i = lift_param(m, flat, i)
                                pyargs.append(value)
                elif spill_tuple is not None:
                    pyargs = load_spilled_arguments(m, args, spill_tuple, spill_size, spill_align)
                elif single_lift is not None:  # the common case, without a loop
                    pyargs = (single_lift(m, [r(args[i]) for i, r in enumerate(readers)]),)
                elif flat_lifts is not None:
                    flat = [r(args[i]) for i, r in enumerate(readers)]
                    pyargs = [lift(m, flat) for lift in flat_lifts]
                else:
                    pyargs = lift_flat_arguments(m, args, readers, param_convs)
                returned = False
                try:
                    if fills and not OUTGOING_VALUE_HOOKS:  # audited values must be seen as bytes
                        result = impl(state, *pyargs, fill=canon.Filler(m))
                    else:
                        result = impl(state, *pyargs)
                    if is_async:  # an async import called synchronously: the task blocks
                        result = run_to_completion(inst, result, qualname)
                    returned = True
                except WitError as e:
                    if not returns_result:
                        raise Trap(f"error {e.payload!r} from a function that returns no result") from e
                    result = Err(e.payload)
                except BaseException:
                    if m.lent:
                        _end_loans(m, strict=False)  # the traceback may still hold a view
                    raise
                if m.lent:
                    _end_loans(m)
                if OUTGOING_VALUE_HOOKS:
                    for hook in OUTGOING_VALUE_HOOKS:
                        hook(qualname, result)
                if words:
                    if flat_end is not None:  # future<...> (send), directly
                        args[0] = lower_end(result, flat_end)
                    elif result_conv is not None:
                        if result_spill:
                            retptr = checked_result_pointer(m, args[retptr_word] & 0xFFFF_FFFF, result_size, result_align)
                            if ends_store is not None:  # tuple<stream, future> (receive), directly
                                ends_store(result, retptr)
                            elif own_store is not None:  # result<own<T>, E> (create), directly
                                own_store(result, retptr)
                            else:
                                result_conv.store(m, result, retptr)
                        else:
                            out = []
                            result_conv.lower_flat(m, result, out)
                            args[0] = out[0] & result_mask
                elif ends_store is not None:  # tuple<stream, future> (receive), directly
                    ends_store(result, result_pointer(m, args[nflat], result_size, result_align))
                elif flat_end is not None:  # future<...> (send), directly
                    result_writer(args[0], lower_end(result, flat_end))  # type: ignore[misc]
                elif own_store is not None:  # result<own<T>, E> (create), directly
                    own_store(result, result_pointer(m, args[nflat], result_size, result_align))
                elif result_conv is not None:
                    if result_spill:
                        result_conv.store(m, result, result_pointer(m, args[nflat], result_size, result_align))
                    else:
                        out: list[Any] = []
                        result_conv.lower_flat(m, result, out)
                        result_writer(args[0], out[0])  # type: ignore[misc]
                # Kept arguments live on in the result only once the guest has it.
                succeeded = returned
            finally:
                if owned:
                    drop_consumed_arguments(pyargs, owned, kept, succeeded)
                if m.borrows:
                    inst.end_lends(m)
                m.borrows = outer_borrows
            return 0
        except Exception as e:
            return native.trap_ptr(host_call_failure(qualname, e, lambda code: setattr(state, "exit_code", code)))

    if not words:
        return tramp
    runner = inst.runner
    interrupted = native.interrupted

    def direct_tramp(env: Any, caller: Any, args: Any, nargs: int) -> int:
        # As the shared entry (native.host_entry) would: an instance closed refuses the call.
        if not inst.may_leave and runner.closed_:
            return native.trap_ptr(native.CLOSED_MESSAGE)
        try:
            return tramp(args)
        except BaseException as e:  # noqa: BLE001 - see callback_guard (tramp traps every Exception itself)
            return interrupted(e)
    return direct_tramp


def _ends_result_store(inst: ComponentState, ft: FuncT, m: canon.MemCx) -> Callable[[Any, int], None] | None:
    """``store(value, retptr)`` of a result that is a tuple of stream and future ends (what
    ``receive`` returns: ``tuple<stream<u8>, future<result<_, E>>>``): each end goes into
    the table and its index into memory, without the tuple's and each end's converter; a
    value of another shape goes through the converter, whose checks say what is wrong."""
    t = ft.result
    if not (ft.results_spill and isinstance(t, Tuple) and t.elems
            and all(isinstance(et, (StreamT, FutureT)) for et in t.elems)):
        return None
    elems = list(zip(t.elems, t.offsets))
    n = len(elems)
    general = canon.conv(t).store
    lower_end = inst.lower_async_end

    def store_ends(value: Any, retptr: int) -> None:
        if type(value) is not tuple or len(value) != n:
            general(m, value, retptr)
            return
        for end, (et, offset) in zip(value, elems):  # one after the other, as the converter does
            h = lower_end(end, et)
            _U32_PACK(m.view(), retptr + offset, h)
    return store_ends


def run_to_completion(inst: ComponentState, coro: Any, qualname: str) -> Any:
    """Run an async host function's coroutine until it returns (a synchronous caller)."""
    host_task = inst.scheduler.start(coro, qualname, observed=True)  # its error is read below
    if not host_task.done:
        inst.block_until(lambda: host_task.done, f"the guest called {qualname} synchronously")
    if host_task.error is not None:
        raise host_task.error
    return host_task.result


# How an async lower reads a flat core value from its 64-bit word (native.host_entry_u64):
# an i32 is the low half, an i64 the word, a float its bits.
_WORD_MASKS = {"i32": 0xFFFF_FFFF, "i64": 0xFFFF_FFFF_FFFF_FFFF, "f32": 0xFFFF_FFFF, "f64": 0xFFFF_FFFF_FFFF_FFFF}
_U32_BITS, _U64_BITS = struct.Struct("<I").pack, struct.Struct("<Q").pack
_F32_OF_BITS, _F64_OF_BITS = struct.Struct("<f").unpack, struct.Struct("<d").unpack
_FLOAT_OF_BITS: dict[str, Callable[[int], float]] = {
    "f32": lambda bits: _F32_OF_BITS(_U32_BITS(bits))[0],
    "f64": lambda bits: _F64_OF_BITS(_U64_BITS(bits))[0],
}
# Parameters lifted from their word by a mask alone (CanonicalABI lift_flat_unsigned).
_MASK_LIFTS = {"u8": 0xFF, "u16": 0xFFFF, "u32": 0xFFFF_FFFF, "u64": 0xFFFF_FFFF_FFFF_FFFF}


def _mask_lift(t: ValType) -> int | None:
    return _MASK_LIFTS.get(t.name) if isinstance(t, Prim) else None


def _param_lift(inst: ComponentState, t: ValType, at: int) -> Callable[[canon.MemCx, Any], Any] | None:
    """How an async lower lifts the parameter ``t`` whose flat values start at word ``at``
    of its arguments: None for an unsigned integer (a mask does it), else ``lift(m, args)``.
    A ``borrow`` of a host resource (the ``self`` of nearly every WASI 0.3 method) and an
    enum take the usual case inline; any other type, and any value the inline case does not
    take (an unknown or wrong handle, an enum case out of range), go through the type's
    converter, whose checks trap as ever."""
    if _mask_lift(t) is not None:
        return None
    general = canon.conv(t).lift_flat
    w = native.U64_STRIDE
    if isinstance(t, Variant) and t.kind == "enum":
        names = [name for name, _ in t.cases]
        ncases = len(names)

        def lift_enum(m: canon.MemCx, args: Any) -> Any:
            d = args[at] & 0xFFFF_FFFF
            if d < ncases:
                return names[d]
            return general(m, [d], 0)[0]
        return lift_enum
    rt = t.resource.resolve() if isinstance(t, Handle) and not t.own else None
    if isinstance(rt, ImportedResource) and rt.kind is not None:
        kind = rt.kind
        handles = inst.handles
        table = inst.state.table

        def lift_borrow(m: canon.MemCx, args: Any) -> Any:
            h = args[at] & 0xFFFF_FFFF
            entry = handles[h] if 0 < h < len(handles) else None
            if entry is None or entry.key is not kind:
                return general(m, [h], 0)[0]
            if entry.own:  # inst.lend, inline (keep equal to _flat_lift's): lent until the call resolves
                entry.lends += 1
                if m.borrows is None:
                    m.borrows = [h]
                else:
                    m.borrows.append(h)
            return table.get(entry.rep, kind)
        return lift_borrow
    words = [(at + j * w, _WORD_MASKS[ct], _FLOAT_OF_BITS.get(ct)) for j, ct in enumerate(t.flat)]

    def lift_words(m: canon.MemCx, args: Any) -> Any:
        flat = [args[i] & mask if f is None else f(args[i] & mask) for i, mask, f in words]
        return general(m, flat, 0)[0]
    return lift_words


def _result_store(inst: ComponentState, spec: LowerSpec, m: canon.MemCx) -> Callable[[Any, int], None]:
    """``store(value, retptr)`` of an async lower's result, specialised for the shapes WASI
    0.3 returns (integers, ``result<_, E>``, ``result<own<T>, E>``) where the value is the
    usual one; anything else goes through the type's converter, whose checks say what is
    wrong with a bad value. ``retptr`` was checked (aligned, in range) when the call began,
    and a linear memory never shrinks."""
    t = spec.ft.result
    conv = spec.result_conv
    mem_state = m.mem_state
    mem_size = native.mem_size_premade
    # Its arguments as ctypes objects made once (the store's context and the memory's struct,
    # kept by mem_state, stay where they are for the instance's life).
    context_arg, memory_arg = mem_state.size_args if mem_state is not None else (None, None)

    def general(value: Any, retptr: int) -> None:
        m.forget()
        conv.store(m, value, retptr)  # type: ignore[union-attr]
        m.forget()

    def store_nothing(value: Any, retptr: int) -> None:
        pass

    if t is None:
        return store_nothing
    if mem_state is None:
        return general

    def current() -> memoryview:
        size = mem_size(context_arg, memory_arg)  # mem_state.current(), inline
        if size != mem_state.size:
            mem_state.grew(size)
        return mem_state.view  # type: ignore[no-any-return]

    ints = canon.int_store(t)
    if ints is not None:
        pack, lo, hi = ints

        def store_int(value: Any, retptr: int) -> None:
            if type(value) is int and lo <= value <= hi:
                size = mem_size(context_arg, memory_arg)  # current(), inline: the common case
                if size != mem_state.size:
                    mem_state.grew(size)
                pack(mem_state.view, retptr, value)
            else:
                general(value, retptr)
        store_int.int_shape = ints  # type: ignore[attr-defined]  # (on_done stores an int inline)
        return store_int

    if isinstance(t, Variant) and t.kind == "result":
        ok_type = t.cases[0][1]
        pack_disc = {1: _U8_PACK, 2: _U16_PACK, 4: _U32_PACK}[t.disc_size]
        if ok_type is None:
            def store_unit(value: Any, retptr: int) -> None:
                if value is None or (type(value) is Ok and value.value is None):
                    pack_disc(current(), retptr, 0)
                else:
                    general(value, retptr)
            return store_unit
        own_store = _own_result_store(inst, t, current, general)
        if own_store is not None:
            return own_store
    return general


def _field_load(inst: ComponentState, t: ValType) -> Callable[[canon.MemCx, memoryview, int], Any]:
    """``load(m, v, ptr)`` of one spilled parameter (see ``_spilled_loader``)."""
    general = canon.conv(t).load
    rt = t.resource.resolve() if isinstance(t, Handle) and not t.own else None
    if not (isinstance(rt, ImportedResource) and rt.kind is not None):
        return general
    kind = rt.kind
    handles = inst.handles
    table = inst.state.table

    def load_borrow(m: canon.MemCx, v: memoryview, ptr: int) -> Any:
        h = _U32_UNPACK(v, ptr)[0]
        entry = handles[h] if 0 < h < len(handles) else None
        if entry is None or entry.key is not kind:
            return general(m, v, ptr)
        if entry.own:  # inst.lend, inline (keep equal to _flat_lift's): lent until the call resolves
            entry.lends += 1
            if m.borrows is None:
                m.borrows = [h]
            else:
                m.borrows.append(h)
        return table.get(entry.rep, kind)
    return load_borrow


def _spilled_loader(inst: ComponentState, tuple_t: Tuple) -> Callable[[canon.MemCx, memoryview, int], list[Any]]:
    """``load(m, v, ptr)`` of spilled parameters (the tuple at ``ptr``, checked by the
    caller) as a list: a ``borrow`` of a host resource (the ``self`` of a WASI method) read
    and lent inline, as ``_param_lift`` does from a word; every other field by its type's
    converter. A handle the inline case does not take goes through the converter too, whose
    checks trap as ever."""
    fields: list[tuple[int, Callable[[canon.MemCx, memoryview, int], Any]]] = []
    for t, offset in zip(tuple_t.elems, tuple_t.offsets):
        fields.append((offset, _field_load(inst, t)))

    def load(m: canon.MemCx, v: memoryview, ptr: int) -> list[Any]:
        return [f(m, v, ptr + offset) for offset, f in fields]
    return load


def load_spilled_at(m: canon.MemCx, ptr: int, conv: Any, size: int, align: int) -> Any:
    """The arguments of a call whose parameters spill: a tuple at ``ptr``."""
    if ptr != align_to(ptr, align):
        raise Trap(f"argument pointer {ptr:#x} is misaligned")
    v = m.view()
    canon.check_range(v, ptr, size, "arguments")
    return conv.load(m, v, ptr)


_new_object = object.__new__


class _HostCall(HostTask):
    """The task of an async lower's coroutine that did not finish at once, carrying what its
    end needs: its subtask, the result pointer and the arguments it keeps (one done-callback
    per signature reads them, instead of a closure made per call)."""

    __slots__ = ("subtask", "retptr", "args_kept")


def make_async_trampoline(inst: ComponentState, spec: LowerSpec, m: canon.MemCx) -> Callable[[Any], int]:
    """The native body of ``canon lower ... async`` of a host function: lift the arguments,
    start the host coroutine and run it until it first waits; if it finished, store the
    result and return RETURNED, else return a new subtask (STARTED), whose SUBTASK event
    comes when the coroutine ends and its result is in guest memory.

    Built per signature: the arguments come as 64-bit words (``native.host_entry_u64``);
    parameters that are unsigned integers are lifted by a mask, others by their type's
    converter (which checks handles, lends borrows and reads strings and lists); the result
    is stored by ``_result_store``. A coroutine that finishes on its first step never
    becomes a task."""
    fn = spec.fn
    ft = spec.ft
    impl = fn.impl
    qualname = fn.qualname
    is_async = fn.is_async
    state = inst.state
    w = native.U64_STRIDE  # value i is the word at [i * w]
    spill = ft.async_params_spill
    flat_types = ["i32"] if spill else ft.all_flat_params
    masks = [] if spill else [_mask_lift(t) for _, t in ft.params]
    # Unsigned integers only: no memory is read, no handle lent, no argument owned.
    ints_only = not spill and all(mask is not None for mask in masks)
    mask0 = masks[0] if ints_only and masks else 0
    nparams = len(masks)
    # Per parameter: its first word, the mask of that word, and its lift (None: the mask alone).
    plan = []
    at = 0
    for _, t in ([] if spill else ft.params):
        plan.append((at, _WORD_MASKS[t.flat[0]] if t.flat else 0, _param_lift(inst, t, at)))
        at += len(t.flat) * w
    spilled = _spilled_loader(inst, ft.param_tuple) if spill and ft.param_tuple is not None else None
    tuple_size = ft.param_tuple.size if ft.param_tuple is not None else 0
    tuple_align = ft.param_tuple.align if ft.param_tuple is not None else 1
    lends = any(contains_borrow(t) for _, t in ft.params)
    owned, kept = fn.owned, fn.kept
    has_result = ft.result is not None
    result_size, result_align = spec.result_size, spec.result_align
    retptr_at = len(flat_types) * w
    mem_state = m.mem_state
    runner = inst.runner
    store_result = _result_store(inst, spec, m)
    # An integer result (store_int) is stored inline where a call that waited ends.
    int_pack, int_lo, int_hi = getattr(store_result, "int_shape", (None, 0, -1))
    size_args = mem_state.size_args if mem_state is not None else (None, None)
    mem_size = native.mem_size_premade
    scheduler: Scheduler | None = None  # the store's, looked up once (it is made on first use)
    returned = Subtask.RETURNED
    started = Subtask.STARTED
    handles, free = inst.handles, inst.free  # the table's lists (changed in place, never replaced)

    def store(value: Any, retptr: int) -> None:
        if OUTGOING_VALUE_HOOKS:
            for hook in OUTGOING_VALUE_HOOKS:
                hook(qualname, value)
        store_result(value, retptr)

    def lift_args(args: Any) -> list[Any]:
        m.forget()
        if spilled is not None:  # load_spilled_at, inline, with the specialised loader
            ptr = args[0] & 0xFFFF_FFFF
            if ptr & (tuple_align - 1):
                raise Trap(f"argument pointer {ptr:#x} is misaligned")
            v = m.view()
            canon.check_range(v, ptr, tuple_size, "arguments")
            return spilled(m, v, ptr)
        return [args[at] & mask if lift is None else lift(m, args) for at, mask, lift in plan]

    def on_done(t: _HostCall) -> None:
        """The end of a call's coroutine: its result into guest memory, the SUBTASK event."""
        subtask, retptr, pyargs_kept = t.subtask, t.retptr, t.args_kept
        t.subtask, t.args_kept = None, ()  # (the subtask refers to the task: no cycle left)
        if runner.closed_ or t.scheduler.closed:
            return
        try:
            if t.error is None:
                value = t.result
                if type(value) is int and int_lo <= value <= int_hi and not OUTGOING_VALUE_HOOKS:
                    # store_result(value, retptr), inline for an integer in its range (store_int)
                    size = mem_size(*size_args)
                    if size != mem_state.size:  # (the guest grew its memory meanwhile: it may have moved)
                        mem_state.grew(size)
                    int_pack(mem_state.view, retptr, value)  # type: ignore[misc]
                else:
                    try:
                        if OUTGOING_VALUE_HOOKS:
                            store(value, retptr)
                        else:
                            store_result(value, retptr)
                    except Trap as e:  # it traps where the guest waits: say whose result it was
                        raise Trap(f"{qualname}: {e}") from None
                subtask.state = returned
            else:
                subtask.resolve(finish_host_call(inst, spec, m, t.result, t.error, retptr, subtask))
        finally:
            if owned:
                drop_consumed_arguments(pyargs_kept, owned, kept, t.error is None)
        # subtask.set_pending_event(subtask.event), inline: once per call that waited
        subtask.pending_event = subtask.event
        wset = subtask.wset
        if wset is not None:
            wset.ready[subtask] = None
            notify = wset.notify
            if notify is not None and not notify.is_set:
                waiters = notify._waiters
                if len(waiters) == 1 and not notify._callbacks:
                    # notify.set(), inline for its one waiter (the guest task waiting on the
                    # set): once per call that waited
                    notify.is_set = True
                    task = waiters.pop()  # (Event.set gives it a new list: nobody else holds this one)
                    if task.done or task._queued:
                        pass
                    elif type(task._waiting) is _AnyOf:
                        task.scheduler._make_ready(task)
                    else:
                        task._queued = True
                        task._waiting = None
                        scheduler_of = task.scheduler
                        (scheduler_of._guest_ready if task.guest else scheduler_of._ready).append(task)
                else:
                    notify.set()

    only_on_done = (on_done,)

    def tramp(env: Any, caller: Any, args: Any, nargs: int) -> int:  # a direct trampoline (native.RETIRED)
        nonlocal scheduler
        if not inst.may_leave:
            if runner.closed_:
                return native.trap_ptr(native.CLOSED_MESSAGE)
            return native.trap_ptr(f"{qualname}: cannot call an import during realloc or post-return")
        pyargs: Any = ()
        lent: Any = ()  # the handle entries lent to this call (a list once there are any)
        try:
            try:
                retptr = 0
                if has_result:
                    retptr = args[retptr_at] & 0xFFFF_FFFF
                    if retptr & (result_align - 1):
                        raise Trap(f"result pointer {retptr:#x} is misaligned")
                    if mem_state is None or retptr + result_size > mem_state.size:
                        m.forget()  # the guest may have grown its memory since the view was made
                        m.check_range(retptr, result_size, "result")
                if ints_only:
                    if nparams == 1:
                        call = impl(state, args[0] & mask0)
                    else:
                        call = impl(state, *[args[i * w] & masks[i] for i in range(nparams)])
                else:
                    if lends:
                        outer_borrows, m.borrows = m.borrows, None  # a nested call (from realloc) keeps its own
                        try:
                            pyargs = lift_args(args)
                            lent = [inst.handles[h] for h in m.borrows or ()]
                        finally:
                            if m.borrows and not lent:  # a later argument failed: the earlier loans end
                                inst.end_lends(m)
                            m.borrows = outer_borrows
                    else:
                        pyargs = lift_args(args)
                    call = impl(state, *pyargs)
                if scheduler is None:
                    scheduler = inst.scheduler
                host_task: HostTask | None = None
                error: BaseException | None = None
                value: Any = None
                if not is_async:  # a synchronous host function behind an async lower
                    value = call
                elif scheduler.closed:
                    call.close()
                    raise Trap("the store is closed: no more host work can start")
                else:
                    try:
                        waiting = call.send(None)
                    except StopIteration as e:
                        scheduler.progress += 1
                        if not lent and not owned:  # the usual case, in short: stored, RETURNED
                            if OUTGOING_VALUE_HOOKS:
                                for hook in OUTGOING_VALUE_HOOKS:
                                    hook(qualname, e.value)
                            store_result(e.value, retptr)
                            args[0] = returned
                            return 0
                        value = e.value
                    except BaseException as e:  # noqa: BLE001 - the call's own failure, handled as finish_host_call does
                        scheduler.progress += 1
                        if isinstance(e, Cancelled):
                            e.__traceback__ = None
                        error = e
                    else:
                        # scheduler.adopt(call, waiting, qualname, observed=True), inline
                        # and HostTask.__init__, inline (no Python frame for the class's call):
                        # every slot set here (tests/test_async_lowers.py checks this list)
                        host_task = _new_object(_HostCall)
                        host_task.scheduler, host_task.coro, host_task.name = scheduler, call, qualname
                        host_task.guest, host_task.done, host_task.result, host_task.error = False, False, None, None
                        host_task.observed = True  # on_done reads its error
                        host_task._joiners = host_task._callbacks = ()
                        host_task._waiting = None
                        scheduler._tasks.add(host_task)
                        if type(waiting) is _Yield:
                            host_task._queued = True
                            scheduler._ready.append(host_task)
                        else:
                            host_task._queued = False
                            scheduler._suspend(host_task, waiting)
                            if host_task.done:  # it awaited something the scheduler cannot wait on
                                value, error, host_task = host_task.result, host_task.error, None
                if host_task is None:  # finished: the result is in memory before the guest sees RETURNED
                    entries, lent = lent, ()
                    consumed, pyargs = pyargs, ()
                    try:
                        if error is None:
                            store(value, retptr)
                        else:
                            finish_host_call(inst, spec, m, None, error, retptr, None)
                    finally:
                        if owned:
                            drop_consumed_arguments(consumed, owned, kept, error is None)
                        for entry in entries:
                            entry.lends -= 1
                    args[0] = returned
                    return 0
                # Subtask(qualname), inline (no Python frame for the class's call): its
                # attributes as Subtask.__init__ sets them, with the host task
                subtask = _new_object(Subtask)
                subtask.pending_event, subtask.wset, subtask.has_sync_waiter = None, None, False
                subtask.name, subtask.state, subtask.lenders = qualname, started, ()
                subtask.cancellation_requested, subtask.host_task, subtask.callee_task = False, host_task, None
                if lent:
                    subtask.lenders, lent = lent, ()
                if free:  # inst.add(subtask), inline for a handle index free again (the usual case)
                    index = free.pop()
                    handles[index] = subtask
                else:
                    index = inst.add(subtask)
                subtask.index = index
                host_task.subtask, host_task.retptr, host_task.args_kept = subtask, retptr, pyargs
                pyargs = ()
                host_task._callbacks = only_on_done  # host_task.add_done_callback(on_done), inline: it has none
                args[0] = started | (index << 4)
                return 0
            except Exception as e:
                for entry in lent:
                    entry.lends -= 1
                if owned and pyargs:
                    drop_consumed_arguments(pyargs, owned, kept, False)
                return native.trap_ptr(host_call_failure(qualname, e, lambda code: setattr(state, "exit_code", code)))
        except BaseException as e:  # noqa: BLE001 - see callback_guard (and a failure of the above)
            return native.interrupted(e)

    # What this signature got (reported by benchmarks/bench_async_lowers.py).
    inline = all(lift is None or lift.__name__ != "lift_words" for _, _, lift in plan)
    tramp.lifting = ("masks" if ints_only else "spilled" if spill else  # type: ignore[attr-defined]
                     "inline" if inline else "converter")
    tramp.storing = store_result.__name__  # type: ignore[attr-defined]
    return tramp


def finish_host_call(inst: ComponentState, spec: LowerSpec, m: canon.MemCx, result: Any, error: BaseException | None,
                     retptr: int, subtask: Subtask | None) -> int:
    """An async host call ended with ``result`` or ``error``: the result goes to the
    guest's result pointer; returns the subtask state to report. Failures other than a WIT
    error trap the guest."""
    fn = spec.fn
    if error is not None:
        if isinstance(error, WitError):
            if not spec.returns_result:
                raise Trap(f"{fn.qualname}: error {error.payload!r} from a function that returns no result")
            result = Err(error.payload)
        elif isinstance(error, Cancelled):
            if subtask is not None and subtask.cancellation_requested:
                return Subtask.CANCELLED_BEFORE_RETURNED
            raise Trap(f"{fn.qualname}: the host call was cancelled")
        else:
            raise Trap(host_call_failure(fn.qualname, error if isinstance(error, Exception) else Exception(repr(error)),
                                         lambda code: setattr(inst.state, "exit_code", code)))
    if OUTGOING_VALUE_HOOKS:
        for hook in OUTGOING_VALUE_HOOKS:
            hook(fn.qualname, result)
    if spec.result_conv is not None:
        m.forget()
        try:
            m.check_range(retptr, spec.result_size, "result")
            spec.result_conv.store(m, result, retptr)
        except Trap as e:
            if subtask is None:  # the trampoline's own failure: it names the function
                raise
            raise Trap(f"{fn.qualname}: {e}") from None  # it traps where the guest waits
        m.forget()
    return Subtask.RETURNED


def make_c2c_trampoline(caller: ComponentState, m: canon.MemCx, async_: bool, callee: ComponentState, lifted: Any) -> Callable[[Any], int]:
    """``canon lower`` of another component's lifted export (the fused adapter): the
    arguments are lifted out of the caller into Python values and lowered into the callee by
    its task (``lift.start_call``), the result the other way. Synchronously, the caller waits
    for the value; ``async``, it gets RETURNED at once or a subtask (STARTING while the
    callee holds it back, STARTED once it has the arguments)."""
    ft = lifted.type
    what = "a call to another component's export"
    if async_:
        spill = ft.async_params_spill
        flat_params = ["i32"] if spill else ft.all_flat_params
    else:
        spill = ft.params_spill
        flat_params = list(ft.flat_params)
    readers = native.readers(flat_params)
    nparams = len(readers)
    param_convs = [canon.conv(t).lift_flat for _, t in ft.params]
    tuple_conv = canon.conv(ft.param_tuple) if spill and ft.param_tuple is not None else None
    tuple_size = ft.param_tuple.size if ft.param_tuple is not None else 0
    tuple_align = ft.param_tuple.align if ft.param_tuple is not None else 1
    result_conv = canon.conv(ft.result) if ft.result is not None else None
    result_size = ft.result.size if ft.result is not None else 0
    result_align = ft.result.align if ft.result is not None else 1
    result_by_ptr = ft.result is not None and (async_ or ft.results_spill)
    result_writer = native.writer(ft.flat_results[0]) if result_conv is not None and not result_by_ptr else None
    state = caller.state

    def lift_args(args: Any) -> list[Any]:
        if tuple_conv is not None:
            return list(load_spilled_arguments(m, args, tuple_conv, tuple_size, tuple_align))
        return lift_flat_arguments(m, args, readers, param_convs)

    def store_result(value: Any, retptr: int) -> None:
        assert result_conv is not None
        m.forget()
        result_conv.store(m, value, retptr)
        m.forget()

    def sync_tramp(args: Any) -> int:
        if not caller.may_leave:
            return native.trap_ptr(f"{what}: cannot call an import during realloc or post-return")
        m.forget()
        outer_borrows, m.borrows = m.borrows, None
        try:
            try:
                pyargs = lift_args(args)
                retptr = result_pointer(m, args[nparams], result_size, result_align) if result_by_ptr else 0
            finally:
                lent, m.borrows = m.borrows, outer_borrows
            if ft.is_async and caller.current_task is None:
                # A start function runs with no task to block: an async callee could block it.
                raise Trap("cannot block a synchronous task before returning (a start function calls an async function)")
            result: list[Any] = []
            try:
                task, driver = lift.start_call(callee, lifted, tuple(pyargs), caller, result.append, what)
                if not driver.done and task.state != task.RESOLVED:
                    caller.block_until(lambda: driver.done or task.state == task.RESOLVED, f"the guest called {what} synchronously")
                if driver.done and driver.error is not None:
                    raise driver.error
            finally:
                for h in lent or ():
                    entry = caller.handles[h] if h < len(caller.handles) else None
                    if entry is not None and entry.lends:
                        entry.lends -= 1
            if result_conv is not None:
                if result_by_ptr:
                    store_result(result[0], retptr)
                else:
                    out: list[Any] = []
                    m.forget()
                    result_conv.lower_flat(m, result[0], out)
                    result_writer(args[0], out[0])  # type: ignore[misc]
            return 0
        except Exception as e:
            return native.trap_ptr(host_call_failure(what, e, lambda code: setattr(state, "exit_code", code)))

    def async_tramp(args: Any) -> int:
        if not caller.may_leave:
            return native.trap_ptr(f"{what}: cannot call an import during realloc or post-return")
        m.forget()
        outer_borrows, m.borrows = m.borrows, None
        try:
            try:
                pyargs = lift_args(args)
                retptr = result_pointer(m, args[nparams], result_size, result_align) if result_conv is not None else 0
            finally:
                lent_handles, m.borrows = m.borrows, outer_borrows
            subtask = Subtask(what)
            subtask.lenders = [caller.handles[h] for h in lent_handles or ()]
            subtask.state = Subtask.STARTING

            def on_start() -> None:
                subtask.state = Subtask.STARTED
                if subtask.index:
                    subtask.set_pending_event(subtask.event)

            def on_resolve(value: Any) -> None:
                if value is None and subtask.cancellation_requested:
                    subtask.state = (Subtask.CANCELLED_BEFORE_STARTED if subtask.state == Subtask.STARTING
                                     else Subtask.CANCELLED_BEFORE_RETURNED)
                else:
                    if result_conv is not None:
                        store_result(value, retptr)
                    subtask.state = Subtask.RETURNED
                if subtask.index:
                    subtask.set_pending_event(subtask.event)

            task, driver = lift.start_call(callee, lifted, tuple(pyargs), caller, on_resolve, what, on_start)
            if driver.done and driver.error is not None:
                raise driver.error
            if subtask.resolved():
                subtask.deliver_resolve()
                args[0].i32 = Subtask.RETURNED
                return 0
            subtask.callee_task = task
            subtask.host_task = driver
            subtask.index = caller.add(subtask)

            def on_driver_done(t: HostTask) -> None:
                if t.error is not None and not isinstance(t.error, Cancelled) and not caller.closed:
                    raise t.error  # the callee trapped: so does everything on the stack

            driver.add_done_callback(on_driver_done)
            args[0].i32 = subtask.state | (subtask.index << 4)
            return 0
        except Exception as e:
            return native.trap_ptr(host_call_failure(what, e, lambda code: setattr(state, "exit_code", code)))

    return async_tramp if async_ else sync_tramp


__all__ = ["LowerSpec", "finish_host_call", "make_async_trampoline", "make_c2c_trampoline", "make_trampoline", "run_to_completion"]
