"""The wasmtime engine configuration guests run under (``Host()`` builds its engine with it;
an embedder bringing its own engine should start from ``engine_config()`` too)."""

from __future__ import annotations

from wasmtime import Config
from wasmtime import _ffi as ffi

# Names the settings below in compiled-artifact cache keys and precompiled-artifact labels:
# wasmtime refuses artifacts compiled under another concurrency setting.
CONCURRENCY_OFF = "no-concurrency"


def engine_config(*, epoch_interruption: bool = True) -> Config:
    """A ``Config`` for this host: epoch interruption (``GuestLimits.timeout`` and
    ``GuestInstance.interrupt`` reach a guest that computes without waiting) and wasmtime's
    component-model concurrency support off.

    Why off: wasmtime 50 (measured on 50.0.1) traps with "BUG: deferred host scope has no
    call context" (``resources.rs:328``) before the host function runs whenever a host call
    from a guest carries two ``borrow`` handles (two parameters, as ``output-stream.splice``
    or ``tcp-socket.start-connect``, or a list, as ``poll``), on any engine with concurrency
    support, its default; without it the call works, as on 49 and on 51 (which fixed it).
    Neither runtime needs it: the component runtime refuses async guests, and the core
    runtime does the async ABI itself on wasmtime's core API.
    """
    config = Config()
    config.epoch_interruption = epoch_interruption
    ffi.wasmtime_config_concurrency_support_set(config.ptr(), False)
    return config
