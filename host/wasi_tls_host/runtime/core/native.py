"""The wasmtime C entry points the core runtime calls directly, and the one native callback
every trampoline goes through (``host_entry``): wasmtime keeps an integer, the trampoline is
found by it, so a trampoline whose instance is gone is refused instead of called.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import struct
import weakref
from typing import Any, Callable

from wasmtime import FuncType, ValType as CoreValType, WasmtimeError
from wasmtime import _bindings as raw
from wasmtime import _ffi as ffi

from .. import callback_guard

log = logging.getLogger("wasi_tls_host.runtime")

CORE_TYPES = {"i32": CoreValType.i32, "i64": CoreValType.i64, "f32": CoreValType.f32, "f64": CoreValType.f64}
ERR_P = ctypes.POINTER(ffi.wasmtime_error_t)
TRAP_P = ctypes.POINTER(ffi.wasm_trap_t)
EXTERN_FUNC = int(getattr(ffi.WASMTIME_EXTERN_FUNC, "value", ffi.WASMTIME_EXTERN_FUNC))
EXTERN_MEMORY = int(getattr(ffi.WASMTIME_EXTERN_MEMORY, "value", ffi.WASMTIME_EXTERN_MEMORY))

# Raw C entry points (the wasmtime._bindings wrappers add a Python frame per call).
# The two called on every crossing take plain addresses: ctypes then converts each argument
# in C, where the typed pointer arguments of wasmtime-py's prototypes go through a type
# check and a dictionary lookup each (a measurable part of an async host call's round trip).
# ``func_call`` returns the error's address (or None): ``raise_if_failed`` takes it.
func_call = raw.dll["wasmtime_func_call_unchecked"]
func_call.restype = ctypes.c_void_p
func_call.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
# The same entry point without argtypes, for the call made on every event (an async lift's
# callback): called only with arguments made once by ``word_arg`` (the context, the
# function, a call frame's addresses, the argument count), which ctypes passes as they are,
# where each int argument of ``func_call`` goes through a conversion (about a quarter of a
# microsecond a call). A plain int given to it would be passed as a C int: never call it
# with one.
func_call_premade = raw.dll["wasmtime_func_call_unchecked"]
func_call_premade.restype = ctypes.c_void_p
_AT_ZERO = ctypes.c_char.from_address(0)  # never read: the base of word_arg's offsets


def word_arg(value: int) -> Any:
    """``value`` (an address or a size, ``0 <= value < 2**63``) as an argument of a function
    without argtypes (``func_call_premade``, ``mem_size_premade``), made once: ``byref`` at
    offset ``value`` from address 0, a ready ctypes argument that each call copies as the
    machine word it holds. (A ``c_void_p`` object there would be converted on every call: a
    new argument object and a search of ctypes' table of formats, per argument.) Pointers
    and ``size_t`` are both one 64-bit integer register on the platforms wasmtime-py runs on."""
    return ctypes.byref(_AT_ZERO, value)


ARG_COUNTS = [word_arg(n) for n in range(5)]  # the count argument of func_call_premade
func_new = raw._wasmtime_func_new_unchecked
# Our own prototypes of wasmtime_memory_data(_size) returning the address and size as ints
# (indexing the dll makes a new function object, so wasmtime-py's own prototype is left
# alone), through a PyDLL handle of the same library: two getters that never run guest
# code, so they keep the GIL (no release and re-take on every fresh view of guest memory).
_dll_keeping_gil = ctypes.PyDLL(raw.dll._name)
mem_data = _dll_keeping_gil["wasmtime_memory_data"]
mem_data.restype = ctypes.c_void_p
mem_data.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
mem_size = _dll_keeping_gil["wasmtime_memory_data_size"]
mem_size.restype = ctypes.c_size_t
mem_size.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
# The same getter without argtypes, for the size asked when an async call's result is
# stored: called only with ``word_arg`` arguments made once (as ``func_call_premade``).
mem_size_premade = _dll_keeping_gil["wasmtime_memory_data_size"]
mem_size_premade.restype = ctypes.c_size_t
trap_new = raw._wasmtime_trap_new
instance_new = raw._wasmtime_instance_new
export_get = raw._wasmtime_instance_export_get


def core_functype(params: list[str], results: list[str]) -> FuncType:
    return FuncType([CORE_TYPES[p]() for p in params], [CORE_TYPES[r]() for r in results])


# --- native entry points -----------------------------------------------------------------

# Weak: each instance holds its own trampolines (``_tramps``), so one its embedder never
# closed can still be collected, store and all, instead of living on through this table.
# A plain dict of weak references (not a WeakValueDictionary, whose ``get`` is a Python
# frame on every call into the host): an entry goes when its instance closes or wasmtime
# frees the function (``forget_trampoline``).
TRAMPOLINES: dict[int, weakref.ref[Callable[[Any], int]]] = {}
# Trampoline ids: itertools.count is atomic under the GIL (instances are created on worker
# threads by run_async), and an id is never reused, so a stale callback finds nothing.
env_ids = itertools.count(1)


def trap_ptr(message: str) -> int:
    data = message.encode("utf-8", "replace")
    return ctypes.cast(trap_new(data, len(data)), ctypes.c_void_p).value or 0


def _make_entry(callback_type: Any) -> Any:
    @callback_type  # type: ignore[misc]
    def host_entry(env: Any, caller: Any, args: Any, nargs: int) -> int:
        ref = TRAMPOLINES.get(env or 0)
        tramp = ref() if ref is not None else None
        if tramp is None:
            return trap_ptr(CLOSED_MESSAGE)
        try:
            return tramp(args)
        except Exception as e:  # a bug in a built-in (resource.new/rep/drop): never unwind into wasm
            log.exception("core runtime built-in failed")
            return trap_ptr(f"host error: {type(e).__name__}: {e}")
        except BaseException as e:  # see callback_guard: raised again when wasm returns
            callback_guard.keep(e)
            return trap_ptr(f"interrupted: {type(e).__name__}")
    return host_entry


# The trampoline gets the raw values as ``wasmtime_val_raw_t`` (``args[i].i32``, ``.i64``, ...).
host_entry = _make_entry(ffi.wasmtime_func_unchecked_callback_t)
# The trampoline gets the raw values as i32s (``args[4 * i]`` is value i's i32, read and
# written as a plain int): for functions of i32s only, a ctypes object less per access.
I32_STRIDE = ctypes.sizeof(ffi.wasmtime_val_raw_t) // 4
ENTRY_I32 = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t)
host_entry_i32 = _make_entry(ENTRY_I32)
# The direct trampolines of built-ins taking i32s (see below) get them as unsigned 32-bit
# values: their handle indices and pointers need no mask (an i32 result written back is
# taken modulo 2**32, as by ENTRY_I32).
ENTRY_U32 = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_size_t)
# The trampoline gets the raw values as unsigned 64-bit words (``args[2 * i]`` is value i's
# i64, or its i32 in the low half, or its float's bits): any core signature, read and
# written as plain ints (an async lower's arguments, the status written to ``args[0]``).
U64_STRIDE = ctypes.sizeof(ffi.wasmtime_val_raw_t) // 8
ENTRY_U64 = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t)
host_entry_u64 = _make_entry(ENTRY_U64)

# Direct entries: the functions on an async call's round trip (async lowers, the i32
# built-ins) each get a native callback of their own (an ``ENTRY_I32``/``ENTRY_U64`` of the
# trampoline itself, which takes ``(env, caller, args, nargs)`` and turns every exception
# into a trap), without the shared entry's frame and lookups. Their lifetime: while the
# instance is open it holds them (a cycle through it, so an instance never closed is still
# collected, store and all, at a GC pass). Closing it clears ``may_leave`` in each of its
# component instances, which every direct trampoline checks first: a call that still comes
# (wasm on the stack while it closed) traps with CLOSED_MESSAGE. Since wasmtime may make such
# a call as long as the store lives, closing moves the callbacks here, until wasmtime frees
# the function (``forget_trampoline``); the closed instance lets go of its store, so that
# this table never keeps one alive.
RETIRED: dict[int, Any] = {}
CLOSED_MESSAGE = "host function called after its instance was closed"


def interrupted(e: BaseException) -> int:
    """A BaseException reached a direct trampoline: kept to raise when wasm returns (see
    ``callback_guard``), the guest trapped meanwhile."""
    callback_guard.keep(e)
    return trap_ptr(f"interrupted: {type(e).__name__}")

# wasmtime_func_new_unchecked taking either entry (as an address).
func_new_any = raw.dll["wasmtime_func_new_unchecked"]
func_new_any.restype = None
func_new_any.argtypes = [ctypes.c_void_p] * 6
HOST_ENTRY_I32_ADDR = ctypes.cast(host_entry_i32, ctypes.c_void_p).value
HOST_ENTRY_U64_ADDR = ctypes.cast(host_entry_u64, ctypes.c_void_p).value
FORGET_TRAMPOLINE_ADDR = None  # set below, once forget_trampoline exists


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def forget_trampoline(env: Any) -> None:
    if TRAMPOLINES is not None:
        TRAMPOLINES.pop(env or 0, None)
    if RETIRED is not None:  # (module globals may be gone at interpreter exit)
        RETIRED.pop(env or 0, None)


FORGET_TRAMPOLINE_ADDR = ctypes.cast(forget_trampoline, ctypes.c_void_p).value


def _w32(slot: Any, x: Any) -> None:
    slot.i32 = x


def _w64(slot: Any, x: Any) -> None:
    slot.i64 = x


def _wf32(slot: Any, x: Any) -> None:
    slot.f32 = x


def _wf64(slot: Any, x: Any) -> None:
    slot.f64 = x


# One reader and one writer per core value type, built once (call_core uses them per call).
READERS: dict[str, Callable[[Any], Any]] = {
    "i32": lambda v: v.i32 & 0xFFFF_FFFF,
    "i64": lambda v: v.i64 & 0xFFFF_FFFF_FFFF_FFFF,
    "f32": lambda v: v.f32,
    "f64": lambda v: v.f64,
}
WRITERS: dict[str, Callable[[Any, Any], None]] = {"i32": _w32, "i64": _w64, "f32": _wf32, "f64": _wf64}


# ctypes array types of raw values by length, made once (making one per call is slow).
RAW_ARRAYS = [ffi.wasmtime_val_raw_t * n for n in range(17)]

# A call frame for the calls that run on every event or copy (a callback, realloc): four raw
# values and the trap slot in one buffer, passed to ``func_call`` by address (an int costs
# ctypes far less to convert than a ``byref``), and filled and read with ``struct`` through
# a view (cheaper than a ctypes object per value).
FRAME_VALUES = 4
_FRAME_TRAP = FRAME_VALUES * ctypes.sizeof(ffi.wasmtime_val_raw_t)
_FRAME_SIZE = _FRAME_TRAP + ctypes.sizeof(ctypes.c_void_p)
_FrameBuffer = ctypes.c_ubyte * _FRAME_SIZE
_RAW_SIZE = ctypes.sizeof(ffi.wasmtime_val_raw_t)


class CallFrame:
    """One reusable call frame (see above). Frames are taken from a pool per call, so a
    call made while another runs (a callback calling into the host, which calls realloc)
    has its own."""

    __slots__ = ("addr", "addr_arg", "buffer", "trap_addr", "trap_arg", "view")

    def __init__(self) -> None:
        self.buffer = _FrameBuffer()
        self.view = memoryview(self.buffer).cast("B")
        self.addr = ctypes.addressof(self.buffer)
        self.trap_addr = self.addr + _FRAME_TRAP
        # The two addresses as ctypes arguments of func_call_premade.
        self.addr_arg = word_arg(self.addr)
        self.trap_arg = word_arg(self.trap_addr)

    def trap(self) -> Any:
        """The trap the call left (a ``wasm_trap_t`` pointer; NULL if none)."""
        return ctypes.cast(ctypes.c_void_p.from_buffer(self.buffer, _FRAME_TRAP).value, TRAP_P)


# Three i32 arguments (a callback's event code and payloads) and a cleared trap slot.
PACK_CALLBACK_ARGS = struct.Struct(f"<I{_RAW_SIZE - 4}xI{_RAW_SIZE - 4}xI{_FRAME_TRAP - 2 * _RAW_SIZE - 4}xQ").pack_into
# realloc's four i32 arguments (old pointer 0, old size 0, align, size) and a cleared trap slot.
PACK_REALLOC_ARGS = struct.Struct(f"<{_RAW_SIZE * 2}xI{_RAW_SIZE - 4}xI{_FRAME_TRAP - 3 * _RAW_SIZE - 4}xQ").pack_into
FRAME_RESULT_AND_TRAP = struct.Struct(f"<I{_FRAME_TRAP - 4}xQ").unpack_from


def readers(flat: list[str]) -> list[Callable[[Any], Any]]:
    return [READERS.get(t, READERS["f64"]) for t in flat]


def writer(t: str) -> Callable[[Any, Any], None]:
    return WRITERS.get(t, _wf64)


def trap_message(trap: Any) -> str:
    from wasmtime import Trap as WasmTrap

    return str(WasmTrap._from_ptr(trap))


def raise_if_failed(err: Any, trap: Any, what: str | None) -> None:
    """Turn a failed wasmtime call's error or trap into a ``WasmtimeError``."""
    if not err and not trap:
        return
    error = WasmtimeError._from_ptr(err if isinstance(err, ERR_P) else ctypes.cast(err, ERR_P)) if err else None
    message = str(error) if error is not None else trap_message(trap)
    raise WasmtimeError(f"{what}: {message}" if what else message)
