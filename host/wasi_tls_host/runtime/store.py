"""Per-store host state, found from the context pointer wasmtime passes to host functions."""

from __future__ import annotations

import ctypes
import weakref
from typing import Any, Callable, Generic, TypeVar

from wasmtime import Store

from .resources import ResourceTable
from .scheduler import Scheduler
from .values import Trap


class StoreState:
    """What the host keeps for one wasmtime Store: its resource table and its WASI context.

    ``context`` is the raw ``wasmtime_context_t`` pointer of the call in progress; resource
    conversions need it.
    """

    def __init__(self, wasi: Any) -> None:
        self.wasi = wasi
        self.table = ResourceTable()
        self.context: Any = None
        self.exit_code: int | None = None
        self.closed = False
        self._scheduler: Scheduler | None = None

    @property
    def scheduler(self) -> Scheduler:
        """The store's host-coroutine scheduler (the async ABI's host side), made on first
        use; its waits watch the WASI context's interrupt descriptor."""
        scheduler = self._scheduler
        if scheduler is None:
            interruptor = getattr(self.wasi, "interruptor", None)
            if interruptor is not None:
                scheduler = Scheduler(interruptor.notifier.fd, interruptor.check, interruptor.notifier.clear)
            else:
                scheduler = Scheduler()
            self._scheduler = scheduler
        return scheduler

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._scheduler is not None:
                self._scheduler.close()  # host coroutines release what they hold first
            self.table.close()
            close = getattr(self.wasi, "close", None)
            if close is not None:
                close()


_STATES: dict[int, StoreState] = {}


def context_key(context: Any) -> int:
    return ctypes.cast(context, ctypes.c_void_p).value or 0


def attach(store: Store, wasi: Any) -> StoreState:
    """Give ``store`` host state; it is closed (resources dropped) with ``detach`` or GC."""
    key = context_key(store._context())
    old = _STATES.get(key)
    if old is not None:
        old.close()
    state = StoreState(wasi)
    _STATES[key] = state
    weakref.finalize(store, _forget, key, state)
    return state


def detach(store: Store) -> None:
    key = context_key(store._context())
    state = _STATES.get(key)
    if state is not None:
        _forget(key, state)


def _forget(key: int, state: StoreState) -> None:
    if _STATES.get(key) is state:
        del _STATES[key]
    state.close()


def state_of(store: Store) -> StoreState:
    state = _STATES.get(context_key(store._context()))
    if state is None:
        raise LookupError("this store has no wasi-tls-host state: call attach() first")
    return state


def state_for_context(context: Any) -> StoreState:
    state = _STATES.get(context_key(context))
    if state is None:
        raise Trap("host function called from a store that has no wasi-tls-host state")
    return state


def state_for_context_or_none(context: Any) -> StoreState | None:
    return _STATES.get(context_key(context))


T = TypeVar("T")


class PerStore(Generic[T]):
    """One ``T`` per store (guest instance), made by ``factory`` when first asked for and
    gone with the store's state: ``of(cx)`` in a host function."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._items: weakref.WeakKeyDictionary[StoreState, T] = weakref.WeakKeyDictionary()

    def of(self, cx: StoreState) -> T:
        item = self._items.get(cx)
        if item is None:
            item = self._items[cx] = self._factory()
        return item
