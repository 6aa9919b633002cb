"""Calling a component's exports with the same type-driven conversion as host functions."""

from __future__ import annotations

import ctypes
from typing import Any

from wasmtime import Store
from wasmtime import _ffi as ffi
from wasmtime.component import Component, Func, Instance
from wasmtime.component import _types as wt
from wasmtime.component._enter import enter_wasm

from . import abi, callback_guard
from .binding import ALL_KINDS, OUTGOING_VALUE_HOOKS
from .store import state_of


def find_export(component: Component, engine: Any, prefix: str) -> str | None:
    """The export name starting with ``prefix`` (e.g. ``wasi:cli/run@0.2.``), if any."""
    for name in component.type.exports(engine):
        if name.startswith(prefix):
            return name
    return None


def async_function(component: Component, engine: Any) -> str | None:
    """The name of an import or export that is an ``async`` function, if the component has
    one (a WASI 0.3 guest's ``run`` and clock waits are): wasmtime-py compiles such a
    component, but its linker cannot serve it."""
    for kind, items in (("import", component.type.imports(engine)), ("export", component.type.exports(engine))):
        for name, item in items.items():
            ty = item.ty if hasattr(item, "ty") else item
            funcs = ty.exports(engine).items() if isinstance(ty, wt.ComponentInstanceType) else [("", ty)]
            for func_name, func in funcs:
                fty = func.ty if hasattr(func, "ty") else func
                if isinstance(fty, wt.FuncType) and ffi.wasmtime_component_func_type_async(fty.ptr()):
                    return f"{kind} {name}#{func_name}" if func_name else f"{kind} {name}"
    return None


def get_func(store: Store, instance: Instance, path: list[str]) -> Func | None:
    index = None
    for name in path:
        index = instance.get_export_index(store, name, index)
        if index is None:
            return None
    return instance.get_func(store, index) if index is not None else None


class ExportFunc:
    """An export with its converters built once, for repeated calls from the embedder."""

    def __init__(self, store: Store, func: Func) -> None:
        self.func = func
        fty = func.type(store)
        self.description = repr(fty)
        self.lowers = [abi.converters(ty, ALL_KINDS)[1] for _, ty in fty.params]
        result_ty = fty.result
        self.lift = abi.converters(result_ty, ALL_KINDS)[0] if result_ty is not None else None

    def __call__(self, store: Store, *args: Any) -> Any:
        """Call with Python values; results use the rules of ``runtime.values``."""
        cx = state_of(store)
        context = store._context()
        cx.context = context
        n = len(self.lowers)
        if len(args) != n:
            raise TypeError(f"expected {n} arguments, got {len(args)}")
        for hook in OUTGOING_VALUE_HOOKS:
            hook(f"export call {self.description}", args)
        raw_args = (ffi.wasmtime_component_val_t * max(1, n))()
        lowered = 0
        try:
            for lower, value in zip(self.lowers, args):
                raw_args[lowered].kind = abi.KIND_BOOL
                lower(cx, value, raw_args[lowered])
                lowered += 1
            result = ffi.wasmtime_component_val_t()
            has_result = self.lift is not None
            try:
                enter_wasm(lambda: ffi.wasmtime_component_func_call(
                    ctypes.byref(self.func._func), context, raw_args, n,
                    ctypes.byref(result) if has_result else None, 1 if has_result else 0,
                ))
            except Exception:  # a trap or error: a BaseException behind it goes first
                callback_guard.raise_pending()
                raise
            try:
                value = self.lift(cx, result) if self.lift is not None else None
            finally:
                if has_result:
                    ffi.wasmtime_component_val_delete(ctypes.byref(result))
        finally:
            for i in range(lowered):
                ffi.wasmtime_component_val_delete(ctypes.byref(raw_args[i]))
        self.func.post_return(store)
        return value


def call(store: Store, func: Func, *args: Any) -> Any:
    """Call ``func`` once with Python values (see ``ExportFunc`` for repeated calls)."""
    return ExportFunc(store, func)(store, *args)


__all__ = ["ExportFunc", "call", "find_export", "get_func"]
