"""Calling a component's exports with the same type-driven conversion as host functions."""

from __future__ import annotations

import ctypes
from typing import Any

from wasmtime import Store, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import Component, Func, Instance
from wasmtime.component import _types as wt
from wasmtime.component._enter import enter_wasm

from . import abi
from .binding import ALL_KINDS
from .store import state_of


def find_export(component: Component, engine: Any, prefix: str) -> str | None:
    """The export name starting with ``prefix`` (e.g. ``wasi:cli/run@0.2.``), if any."""
    for name in component.type.exports(engine):
        if name.startswith(prefix):
            return name
    return None


def get_func(store: Store, instance: Instance, path: list[str]) -> Func | None:
    index = None
    for name in path:
        index = instance.get_export_index(store, name, index)
        if index is None:
            return None
    return instance.get_func(store, index) if index is not None else None


def call(store: Store, func: Func, *args: Any) -> Any:
    """Call ``func`` with Python values; results use the rules of ``runtime.values``."""
    cx = state_of(store)
    cx.context = store._context()
    fty = func.type(store)
    params = fty.params
    if len(args) != len(params):
        raise TypeError(f"expected {len(params)} arguments, got {len(args)}")
    from .binding import OUTGOING_VALUE_HOOKS

    for hook in OUTGOING_VALUE_HOOKS:
        hook(f"export call {fty!r}", args)
    raw_args = (ffi.wasmtime_component_val_t * max(1, len(params)))()
    for i, ((_, ty), value) in enumerate(zip(params, args)):
        raw_args[i].kind = abi.KIND_BOOL
        abi.converters(ty, ALL_KINDS)[1](cx, value, raw_args[i])
    result_ty = fty.result
    result = ffi.wasmtime_component_val_t()
    enter_wasm(lambda: ffi.wasmtime_component_func_call(
        ctypes.byref(func._func), store._context(), raw_args, len(params),
        ctypes.byref(result) if result_ty is not None else None, 1 if result_ty is not None else 0,
    ))
    try:
        value = abi.converters(result_ty, ALL_KINDS)[0](cx, result) if result_ty is not None else None
    finally:
        if result_ty is not None:
            ffi.wasmtime_component_val_delete(ctypes.byref(result))
        for i in range(len(params)):
            ffi.wasmtime_component_val_delete(ctypes.byref(raw_args[i]))
    func.post_return(store)
    return value


__all__ = ["call", "find_export", "get_func", "WasmtimeError", "wt"]
