"""wasi:random (random, insecure, insecure-seed)."""

from __future__ import annotations

import os
import random as _pyrandom

from ..runtime.binding import Interface
from ..runtime.store import StoreState
from ..runtime.values import Trap

random_iface = Interface("wasi:random/random@0.2.8")
insecure_iface = Interface("wasi:random/insecure@0.2.8")
insecure_seed_iface = Interface("wasi:random/insecure-seed@0.2.8")

# A single request larger than this is refused: it could not be returned into a 32-bit guest.
MAX_RANDOM_BYTES = 1 << 26


def _check(n: int) -> int:
    if n > MAX_RANDOM_BYTES:
        raise Trap(f"asked for {n} random bytes; at most {MAX_RANDOM_BYTES} per call")
    return n


@random_iface.func("get-random-bytes")
def get_random_bytes(cx: StoreState, len: int) -> bytes:
    return os.urandom(_check(len))


@random_iface.func("get-random-u64")
def get_random_u64(cx: StoreState) -> int:
    return int.from_bytes(os.urandom(8), "little")


_insecure = _pyrandom.Random()


@insecure_iface.func("get-insecure-random-bytes")
def get_insecure_random_bytes(cx: StoreState, len: int) -> bytes:
    return _insecure.randbytes(_check(len))


@insecure_iface.func("get-insecure-random-u64")
def get_insecure_random_u64(cx: StoreState) -> int:
    return _insecure.getrandbits(64)


@insecure_seed_iface.func("insecure-seed")
def insecure_seed(cx: StoreState) -> tuple[int, int]:
    return cx.wasi.insecure_seed


INTERFACES = (random_iface, insecure_iface, insecure_seed_iface)
