"""wasi:clocks@0.3.0 (monotonic-clock with async waits, system-clock, timezone, types): a thin
surface over the clocks WASI 0.2 reads (``wasi/clocks.py``). Waits are deadlines on the
store's scheduler: a waiting guest sleeps in the kernel, and the store's interrupt ends it."""

from __future__ import annotations

from typing import Any

from ...runtime.binding import Interface
from ...runtime.scheduler import sleep_until
from ...runtime.store import StoreState
from ..clocks import (
    TIMEZONE_NAME,
    TIMEZONE_OFFSET_S,
    monotonic_deadline,
    monotonic_ns,
    monotonic_resolution_ns,
    wall_ns,
    wall_resolution_ns,
)

types_iface = Interface("wasi:clocks/types@0.3.0")
monotonic_iface = Interface("wasi:clocks/monotonic-clock@0.3.0")
system_iface = Interface("wasi:clocks/system-clock@0.3.0")
timezone_iface = Interface("wasi:clocks/timezone@0.3.0")


@monotonic_iface.func("now")
def monotonic_now(cx: StoreState) -> int:
    return monotonic_ns()


@monotonic_iface.func("get-resolution")
def monotonic_get_resolution(cx: StoreState) -> int:
    return monotonic_resolution_ns()


@monotonic_iface.func("wait-until")
async def wait_until(cx: StoreState, when: int) -> None:
    if when > monotonic_ns():
        await sleep_until(when)


@monotonic_iface.func("wait-for")
async def wait_for(cx: StoreState, how_long: int) -> None:
    if how_long > 0:
        await sleep_until(monotonic_deadline(how_long))


@system_iface.func("now")
def system_now(cx: StoreState) -> dict[str, int]:
    ns = wall_ns()
    return {"seconds": ns // 1_000_000_000, "nanoseconds": ns % 1_000_000_000}


@system_iface.func("get-resolution")
def system_get_resolution(cx: StoreState) -> int:
    return wall_resolution_ns()


@timezone_iface.func("iana-id")
def timezone_iana_id(cx: StoreState) -> str | None:
    return TIMEZONE_NAME


@timezone_iface.func("utc-offset")
def timezone_utc_offset(cx: StoreState, when: dict[str, Any]) -> int | None:
    return TIMEZONE_OFFSET_S * 1_000_000_000


@timezone_iface.func("to-debug-string")
def timezone_to_debug_string(cx: StoreState) -> str:
    return TIMEZONE_NAME


INTERFACES = (types_iface, monotonic_iface, system_iface, timezone_iface)
