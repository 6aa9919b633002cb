"""wasi:random (random, insecure, insecure-seed): the host's random sources, and their WASI
0.2 surface (``p3/random.py`` is the 0.3 one, on the same sources)."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from ..runtime.binding import Interface
from ..runtime.store import StoreState
from ..runtime.values import Trap

if TYPE_CHECKING:
    import random

random_iface = Interface("wasi:random/random@0.2.8")
insecure_iface = Interface("wasi:random/insecure@0.2.8")
insecure_seed_iface = Interface("wasi:random/insecure-seed@0.2.8")

# The most bytes one call returns: more could not be returned into a 32-bit guest. WASI 0.2
# refuses a larger request (its functions return exactly what was asked for); WASI 0.3
# returns this many (its functions may return fewer).
MAX_RANDOM_BYTES = 1 << 26


# --- the sources both WASI versions read ------------------------------------------------

@functools.cache
def _insecure() -> random.Random:
    """The insecure source, made on first use (importing ``random`` is ~1 ms of a start)."""
    import random

    return random.Random()


def secure_bytes(n: int) -> bytes:
    return os.urandom(n)


def secure_u64() -> int:
    return int.from_bytes(os.urandom(8), "little")


def insecure_bytes(n: int) -> bytes:
    return _insecure().randbytes(n)


def insecure_u64() -> int:
    return _insecure().getrandbits(64)


# --- WASI 0.2 ---------------------------------------------------------------------------


def _check(n: int) -> int:
    if n > MAX_RANDOM_BYTES:
        raise Trap(f"asked for {n} random bytes; at most {MAX_RANDOM_BYTES} per call")
    return n


@random_iface.func("get-random-bytes")
def get_random_bytes(cx: StoreState, len: int) -> bytes:
    return secure_bytes(_check(len))


@random_iface.func("get-random-u64")
def get_random_u64(cx: StoreState) -> int:
    return secure_u64()


@insecure_iface.func("get-insecure-random-bytes")
def get_insecure_random_bytes(cx: StoreState, len: int) -> bytes:
    return insecure_bytes(_check(len))


@insecure_iface.func("get-insecure-random-u64")
def get_insecure_random_u64(cx: StoreState) -> int:
    return insecure_u64()


@insecure_seed_iface.func("insecure-seed")
def insecure_seed(cx: StoreState) -> tuple[int, int]:
    return cx.wasi.insecure_seed


INTERFACES = (random_iface, insecure_iface, insecure_seed_iface)
