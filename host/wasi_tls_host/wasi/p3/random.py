"""wasi:random@0.3.0 (random, insecure, insecure-seed): a thin surface over the sources WASI
0.2 reads (``wasi/random.py``). A request past ``MAX_RANDOM_BYTES`` gets that many bytes: 0.3
lets these functions return fewer than asked (0.2 refuses it)."""

from __future__ import annotations

from ...runtime.binding import Interface
from ...runtime.store import StoreState
from .. import random as p2

random_iface = Interface("wasi:random/random@0.3.0")
insecure_iface = Interface("wasi:random/insecure@0.3.0")
insecure_seed_iface = Interface("wasi:random/insecure-seed@0.3.0")

# What 0.3 does as 0.2 does is served by the same functions.
random_iface.func("get-random-u64")(p2.get_random_u64)
insecure_iface.func("get-insecure-random-u64")(p2.get_insecure_random_u64)
insecure_seed_iface.func("get-insecure-seed")(p2.insecure_seed)


@random_iface.func("get-random-bytes")
def get_random_bytes(cx: StoreState, max_len: int) -> bytes:
    return p2.secure_bytes(min(max_len, p2.MAX_RANDOM_BYTES))


@insecure_iface.func("get-insecure-random-bytes")
def get_insecure_random_bytes(cx: StoreState, max_len: int) -> bytes:
    return p2.insecure_bytes(min(max_len, p2.MAX_RANDOM_BYTES))


INTERFACES = (random_iface, insecure_iface, insecure_seed_iface)
