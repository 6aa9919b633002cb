"""Host resource types and the per-store table that maps handles' reps to Python objects.

wasmtime keeps the guest's handle table and rejects handles the guest does not hold. This
table adds the host's half: each rep names one live Python object of one resource kind. A rep
is never reused within a store, so a rep that outlived its object (a bug, or a child resource
whose parent's state is gone) is reported as stale instead of silently naming another object.
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import Any, Collection, Iterable, Sequence

from .records import Fields
from .values import Trap

log = logging.getLogger("wasi_tls_host.runtime")

_next_type_id = itertools.count(1)


class ResourceKind(Fields):
    """One WIT resource implemented by the host (e.g. ``wasi:io/streams#input-stream``)."""

    _fields = ("name", "py_class", "type_id")

    def __init__(self, name: str, py_class: type, type_id: int | None = None) -> None:
        self.name = name
        self.py_class = py_class
        self.type_id: int = next(_next_type_id) if type_id is None else type_id

    @functools.cached_property
    def wasmtime_type(self) -> Any:
        """Its type for wasmtime's component API (the component runtime only: made on first
        use, so the core runtime does not load wasmtime.component)."""
        from wasmtime.component import ResourceType

        return ResourceType.host(self.type_id)


class HostResource:
    """Base for Python objects handed to guests as resources.

    ``drop`` runs exactly when the object's last owner lets go: when the guest drops its
    handle, when the store is closed, or when a host function that consumed it as an
    ``own`` argument returns without keeping it (see ``drop_consumed_arguments``). It must
    release OS resources and be safe to call twice. Nothing waits for the garbage collector.
    """

    def drop(self) -> None:
        pass


class ResourceTable:
    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, ResourceKind]] = {}
        self._next_rep = 1

    def __len__(self) -> int:
        return len(self._entries)

    def insert(self, obj: Any, kind: ResourceKind) -> int:
        rep = self._next_rep
        if rep > 0xFFFF_FFFF:
            raise Trap("resource table exhausted: more than 2**32 handles created in one store")
        self._next_rep = rep + 1
        self._entries[rep] = (obj, kind)
        return rep

    def _lookup(self, rep: int, kind: ResourceKind) -> Any:
        entry = self._entries.get(rep)
        if entry is None:
            raise Trap(f"{kind.name} handle (rep {rep}) is stale: its host object is gone")
        obj, actual = entry
        if actual is not kind:
            raise Trap(f"handle (rep {rep}) is a {actual.name}, not a {kind.name}")
        return obj

    def get(self, rep: int, kind: ResourceKind) -> Any:
        return self._lookup(rep, kind)

    def take(self, rep: int, kind: ResourceKind) -> Any:
        """Remove and return an object whose ownership moves into the host."""
        obj = self._lookup(rep, kind)
        del self._entries[rep]
        return obj

    def drop(self, rep: int) -> None:
        entry = self._entries.pop(rep, None)
        if entry is not None:
            _drop_quietly(entry[0], entry[1].name)

    def close(self) -> None:
        """Drop every object still in the table (the store is going away)."""
        entries, self._entries = self._entries, {}
        for obj, kind in reversed(list(entries.values())):
            _drop_quietly(obj, kind.name)


def drop_consumed_arguments(args: Sequence[Any], owned: Iterable[int], kept: Collection[int], call_succeeded: bool) -> None:
    """The ownership rule for ``own<T>`` arguments, in one place for every runtime backend.

    wasmtime hands an ``own`` argument's handle to the host for good (the guest's handle is
    gone, and the resource destructor will never run for it), so after the call the host
    function is its only owner. When the call returns, each consumed argument is dropped
    unless the function declared that it keeps it (``Interface.func(..., keeps=...)``: it
    stored the object in something it returned) and the call succeeded. A call that failed
    (error result or trap) kept nothing. ``args`` may be shorter than the parameter list
    when lifting failed part-way: the arguments already taken are dropped all the same.
    """
    for index in owned:
        if index < len(args) and not (call_succeeded and index in kept):
            obj = args[index]
            _drop_quietly(obj, type(obj).__name__)


def _drop_quietly(obj: Any, name: str) -> None:
    drop = getattr(obj, "drop", None)
    if drop is None:
        return
    try:
        drop()
    except Exception:  # a destructor must not take the host down
        log.exception("dropping %s failed", name)
