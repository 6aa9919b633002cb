"""Bases for the small record classes every start imports, written as plain classes instead of
dataclasses: ``@dataclass`` compiles each class's methods from source text when the module is
imported (about half a millisecond a class, twice that frozen), which for the records on the
start-up path was a tenth of a cached ``wasi-tls-host run``. Each subclass writes its
``__init__`` and names its constructor's fields in ``_fields`` (in order); these bases give what
the dataclass decorator gave from them.

* ``Fields``: ``repr`` by fields, equality by identity (``@dataclass(eq=False)``);
* ``ValueFields``: equal when of the same class with equal fields, unhashable (``@dataclass``);
* ``FrozenFields``: also immutable and hashable, pickled by its fields (``@dataclass(frozen=True)``).

Among them the embedder's records on the start-up path (``WasiConfig``, ``GuestLimits``,
``NetworkPolicy``, ``Preopen``, ``RunResult``...): with none left, a run no longer imports
``dataclasses`` and ``inspect`` (with ``ast``, ``dis`` and ``tokenize``), which with the
decorator's work was about 15 ms of a cached start. ``_replace`` stands in for
``dataclasses.replace``.
"""

from __future__ import annotations

from reprlib import recursive_repr
from typing import Any, ClassVar, NoReturn


class Fields:
    __slots__: tuple[str, ...] = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _hidden: ClassVar[frozenset[str]] = frozenset()  # fields left out of repr (secrets)

    @recursive_repr()
    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields if n not in self._hidden)
        return f"{type(self).__qualname__}({shown})"

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self._fields)

    def _replace(self, **changes: Any) -> Any:
        """A new record of the same class with ``changes`` to its fields (``dataclasses.replace``);
        its ``__init__`` checks them as for any record."""
        return type(self)(**{**{n: getattr(self, n) for n in self._fields}, **changes})


class ValueFields(Fields):
    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable: compared by value, never hashed


class FrozenFields(ValueFields):
    """Its ``__init__`` sets each field with ``object.__setattr__``."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._values())

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._values())

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")
