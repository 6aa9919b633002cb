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

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ok(Generic[T]):
    value: T = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Err(Generic[T]):
    value: T = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Some(Generic[T]):
    value: T


@dataclass(frozen=True, slots=True)
class Variant:
    tag: str
    payload: Any = None


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
