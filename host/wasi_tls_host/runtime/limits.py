"""Limits on what one guest may consume, in the manner of wasmtime's ``StoreLimits`` and epoch
interruption.

- Memory and tables: ``Store.set_limits``; a ``memory.grow`` or ``table.grow`` past the limit
  returns -1 to the guest (wasm semantics: the guest decides what to do, usually trap with
  an out-of-memory message), and an instantiation that needs more fails.
- CPU and wall-clock time: the engine is built with epoch interruption; one ticker thread per
  engine advances the epoch every ``TICK`` seconds while guests are alive, and each store's
  epoch callback (running on the guest's own thread) traps with a reason once the guest's
  deadline has passed or the embedder has stopped it. Waits inside host functions are
  interrupted separately, through the WASI context's ``Interruptor``.
- Sockets: counted per store by ``wasi.sockets``.

Defaults are generous: no honest guest should meet them.
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from typing import Callable

from wasmtime import Engine, Store
from wasmtime import _ffi as ffi

from .records import ValueFields

# Seconds between epoch increments: the precision of deadlines and of stopping a spinning
# guest, and how often a running guest calls back into Python (20 times a second).
TICK = 0.05

DEFAULT_MAX_MEMORY = 2 << 30  # bytes per linear memory (a 32-bit memory can reach 4 GiB)
DEFAULT_MAX_TABLE_ELEMENTS = 1_000_000  # per table (componentize-py guests use thousands)
DEFAULT_MAX_SOCKETS = 1024  # open sockets per guest, listeners and accepted ones included


class GuestLimits(ValueFields):
    """What one guest (one store) may use. ``None`` means unlimited."""

    _fields = ("max_memory", "max_table_elements", "timeout", "max_sockets")

    def __init__(self, max_memory: int | None = DEFAULT_MAX_MEMORY, max_table_elements: int | None = DEFAULT_MAX_TABLE_ELEMENTS,
                 timeout: float | None = None, max_sockets: int | None = DEFAULT_MAX_SOCKETS) -> None:
        self.max_memory = max_memory
        self.max_table_elements = max_table_elements
        # Wall-clock seconds for the whole run, from instantiation; spinning and waiting alike.
        self.timeout = timeout
        self.max_sockets = max_sockets
        self._check()

    def _check(self) -> None:
        for name in ("max_memory", "max_table_elements", "max_sockets"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, not {value!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {self.timeout!r}")

    def apply_to_store(self, store: Store) -> None:
        store.set_limits(
            memory_size=-1 if self.max_memory is None else self.max_memory,
            table_elements=-1 if self.max_table_elements is None else self.max_table_elements,
        )


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_bytes(text: str) -> int:
    """``512M``, ``2G``, ``65536``, ``64KiB`` -> bytes (binary units; ValueError if it is not
    a positive size)."""
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = cleaned.rstrip("kmg"), cleaned[len(cleaned.rstrip("kmg")):]
    try:
        value = int(number) * _SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise ValueError(f"want a size such as 512M, 2G or 1048576, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return value


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_size_t,  # wasmtime_error_t* (NULL: continue)
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)
_NO_FINALIZER = ctypes.cast(None, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE


class RunGuard:
    """One store's deadline and stop flag, checked by its epoch callback.

    ``stop`` may be called from any thread; the guest traps at its next epoch check (within
    about ``TICK``) and ``on_stop`` wakes any wait it is in.
    """

    def __init__(self, timeout: float | None, on_stop: Callable[[str], None]) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.reason: str | None = None
        self._on_stop = on_stop
        self._callback = _CALLBACK(self._check)  # kept alive as long as the store uses it

    def install(self, store: Store) -> None:
        """Make ``store`` (of an engine with epoch interruption) call back at every tick."""
        # wasmtime-py has no wrapper for the deadline callback; its raw binding is public.
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), self._callback, None, _NO_FINALIZER)
        store.set_epoch_deadline(1)

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._on_stop(reason)

    def expire_if_due(self, now: float) -> None:
        if self.deadline is not None and now >= self.deadline and self.reason is None:
            self.stop(f"the guest ran out of time: its limit of {self.timeout:g} s of wall-clock time (timeout) has passed")

    def _check(self, context: object, data: object, delta: ctypes.Array, kind: ctypes.Array) -> int:  # type: ignore[type-arg]
        # Runs on the guest's thread; an exception must never unwind through wasm frames.
        try:
            self.expire_if_due(time.monotonic())
        except KeyboardInterrupt:
            # Python delivers SIGINT to the main thread when it next runs Python code, which
            # for a guest computing on the main thread is this callback: stop the guest.
            self.stop("interrupted (SIGINT)")
        except Exception:
            pass
        if self.reason is not None:
            error = ffi.wasmtime_error_new(self.reason.encode())
            return ctypes.cast(error, ctypes.c_void_p).value or 0
        delta[0] = 1
        kind[0] = _CONTINUE
        return 0


class EpochTicker:
    """Advances an engine's epoch every ``TICK`` seconds while any guard is registered, and
    expires guards whose deadline passed (so a guest blocked in a wait is woken too)."""

    def __init__(self, engine: Engine, tick: float = TICK) -> None:
        self.engine = engine
        self.tick = tick
        # Weak: a guest its embedder never closed must not keep this thread ticking (each
        # GuestInstance holds its own guard).
        self._guards: weakref.WeakSet[RunGuard] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def register(self, guard: RunGuard) -> None:
        with self._lock:
            self._guards.add(guard)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wasi-tls-host-epoch", daemon=True)
                self._thread.start()

    def unregister(self, guard: RunGuard) -> None:
        """Forget ``guard``; after the last one the ticker thread has ended when this returns
        (so closing the last guest leaves no thread of ours behind)."""
        with self._lock:
            self._guards.discard(guard)
            last = self._thread if not self._guards else None
            self._wake.notify_all()
        if last is not None and last is not threading.current_thread():
            last.join(1.0)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._guards:
                    self._thread = None  # a later register starts a new thread
                    return
                self._wake.wait(self.tick)
                guards = list(self._guards)
            self.engine.increment_epoch()
            now = time.monotonic()
            for guard in guards:
                guard.expire_if_due(now)
