"""Python shapes of WIT values that have no obvious Python type.

The conversion rules (see ``abi.py``) are driven by the function's WIT type, so host code
never has to guess how wasmtime-py would tag a value:

* ``result<T, E>``: return the ok payload plainly, ``Ok(x)`` or ``Err(e)``; raise
  ``WitError(e)`` to return the error case of the function's own result. A nested
  ``result`` inside a ``result`` must be spelled out with ``Ok``/``Err``.
* ``option<T>``: ``None`` or the payload; ``Some(x)`` only where ``T`` is itself an option.
* ``variant``: ``Variant(tag, payload)``; ``enum``: the case name; ``flags``: a set of names.
* ``record``: a ``dict`` keyed by snake_case field names (lowering also accepts any object
  with those attributes); ``tuple``: ``tuple``; ``list<u8>``: ``bytes``.
* resources: the host's Python objects; the runtime maps them to and from handles.
"""

from __future__ import annotations

from typing import Any, Generic, NoReturn, TypeVar

T = TypeVar("T")


class _Frozen:
    """Immutable value classes, written out instead of ``@dataclass(frozen=True,
    slots=True)``: that decoration compiles each class's methods from source text and then
    builds the class a second time for its slots, about 2 ms per class when the command starts
    (these four are imported by every run). Equal when of the same class with equal fields,
    hashable, pickled by their fields, as the dataclasses were."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._values())

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"cannot delete field {name!r}")


class Ok(_Frozen, Generic[T]):
    __slots__ = ("value",)
    value: T

    def __init__(self, value: T = None) -> None:  # type: ignore[assignment]
        object.__setattr__(self, "value", value)


class Err(_Frozen, Generic[T]):
    __slots__ = ("value",)
    value: T

    def __init__(self, value: T = None) -> None:  # type: ignore[assignment]
        object.__setattr__(self, "value", value)


class Some(_Frozen, Generic[T]):
    __slots__ = ("value",)
    value: T

    def __init__(self, value: T) -> None:
        object.__setattr__(self, "value", value)


class Variant(_Frozen):
    __slots__ = ("tag", "payload")
    tag: str
    payload: Any

    def __init__(self, tag: str, payload: Any = None) -> None:
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "payload", payload)


class WitError(Exception):
    """Raised by a host function to return the error case of its ``result`` type."""

    def __init__(self, payload: Any) -> None:
        super().__init__(payload)
        self.payload = payload


class Trap(Exception):
    """Raised by a host function to trap the guest with a message a person can act on."""


class ConversionError(Trap):
    """A Python value does not fit the WIT type it is converted to (the component runtime's
    conversions, runtime/abi.py)."""
