"""wasi:random@0.3.0 (random, insecure, insecure-seed): a thin surface over the sources WASI
0.2 reads (``wasi/random.py``). A request past ``MAX_RANDOM_BYTES`` gets that many bytes: 0.3
lets these functions return fewer than asked (0.2 refuses it)."""

from __future__ import annotations

from ...runtime.binding import Interface
from ...runtime.store import StoreState
from ..random import MAX_RANDOM_BYTES, insecure_bytes, insecure_u64, secure_bytes, secure_u64

random_iface = Interface("wasi:random/random@0.3.0")
insecure_iface = Interface("wasi:random/insecure@0.3.0")
insecure_seed_iface = Interface("wasi:random/insecure-seed@0.3.0")


@random_iface.func("get-random-bytes")
def get_random_bytes(cx: StoreState, max_len: int) -> bytes:
    return secure_bytes(min(max_len, MAX_RANDOM_BYTES))


@random_iface.func("get-random-u64")
def get_random_u64(cx: StoreState) -> int:
    return secure_u64()


@insecure_iface.func("get-insecure-random-bytes")
def get_insecure_random_bytes(cx: StoreState, max_len: int) -> bytes:
    return insecure_bytes(min(max_len, MAX_RANDOM_BYTES))


@insecure_iface.func("get-insecure-random-u64")
def get_insecure_random_u64(cx: StoreState) -> int:
    return insecure_u64()


@insecure_seed_iface.func("get-insecure-seed")
def get_insecure_seed(cx: StoreState) -> tuple[int, int]:
    return cx.wasi.insecure_seed


INTERFACES = (random_iface, insecure_iface, insecure_seed_iface)
