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

from typing import Any, Generic, TypeVar

from .records import FrozenFields

T = TypeVar("T")

# Written out, not ``@dataclass(frozen=True, slots=True)`` (see records.py): that decorator
# also builds each class a second time for its slots, about 2 ms a class at every start.


class Ok(FrozenFields, Generic[T]):
    __slots__ = _fields = ("value",)
    value: T

    def __init__(self, value: T = None) -> None:  # type: ignore[assignment]
        object.__setattr__(self, "value", value)


class Err(FrozenFields, Generic[T]):
    __slots__ = _fields = ("value",)
    value: T

    def __init__(self, value: T = None) -> None:  # type: ignore[assignment]
        object.__setattr__(self, "value", value)


class Some(FrozenFields, Generic[T]):
    __slots__ = _fields = ("value",)
    value: T

    def __init__(self, value: T) -> None:
        object.__setattr__(self, "value", value)


class Variant(FrozenFields):
    __slots__ = _fields = ("tag", "payload")
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
