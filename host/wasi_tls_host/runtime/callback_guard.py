"""What a native callback does with a BaseException: nothing may escape one.

ctypes prints an exception that escapes a callback and returns whatever was in the return
slot; wasmtime takes that word for a trap or error pointer and frees it (heap corruption,
"free(): invalid size", far from the cause). So every callback this package gives wasmtime
turns any exception into a trap. An ``Exception`` is the trap's message; a BaseException
(KeyboardInterrupt landing in the callback, a scheduler ``Cancelled`` passing through a
host function) is kept per thread and raised again when the wasm call that made the
callback returns, as wasmtime-py does with its own ``LAST_EXCEPTION``.
"""

from __future__ import annotations

import threading


class _Pending(threading.local):
    exception: BaseException | None = None


_PENDING = _Pending()


def keep(e: BaseException) -> None:
    """Remember ``e`` (not an ``Exception``) to raise once wasm returns on this thread."""
    if _PENDING.exception is None:
        _PENDING.exception = e


def raise_pending() -> None:
    """Raise again a BaseException a callback turned into a trap on this thread."""
    e = _PENDING.exception
    if e is not None:
        _PENDING.exception = None
        raise e
