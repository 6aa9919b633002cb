"""wasi:clocks@0.3.0 (monotonic-clock with async waits, system-clock, timezone, types): a thin
surface over the clocks WASI 0.2 reads (``wasi/clocks.py``). Waits are deadlines on the
store's scheduler: a waiting guest sleeps in the kernel, and the store's interrupt ends it."""

from __future__ import annotations

from typing import Any

from ...runtime.binding import Interface
from ...runtime.scheduler import sleep_until
from ...runtime.store import StoreState
from .. import clocks as p2

types_iface = Interface("wasi:clocks/types@0.3.0")
monotonic_iface = Interface("wasi:clocks/monotonic-clock@0.3.0")
system_iface = Interface("wasi:clocks/system-clock@0.3.0")
timezone_iface = Interface("wasi:clocks/timezone@0.3.0")

# What 0.3 does as 0.2 does is served by the same functions (0.3's instant is 0.2's
# datetime with signed seconds).
monotonic_iface.func("now")(p2.monotonic_now)
monotonic_iface.func("get-resolution")(p2.monotonic_resolution)
system_iface.func("now")(p2.wall_now)


@monotonic_iface.func("wait-until")
async def wait_until(cx: StoreState, when: int) -> None:
    if when > p2.monotonic_ns():
        await sleep_until(when)


@monotonic_iface.func("wait-for")
async def wait_for(cx: StoreState, how_long: int) -> None:
    if how_long > 0:
        await sleep_until(p2.monotonic_deadline(how_long))


@system_iface.func("get-resolution")
def system_get_resolution(cx: StoreState) -> int:
    return p2.wall_resolution_ns()


@timezone_iface.func("iana-id")
def timezone_iana_id(cx: StoreState) -> str | None:
    return p2.TIMEZONE_NAME


@timezone_iface.func("utc-offset")
def timezone_utc_offset(cx: StoreState, when: dict[str, Any]) -> int | None:
    return p2.TIMEZONE_OFFSET_S * 1_000_000_000


@timezone_iface.func("to-debug-string")
def timezone_to_debug_string(cx: StoreState) -> str:
    return p2.TIMEZONE_NAME


INTERFACES = (types_iface, monotonic_iface, system_iface, timezone_iface)
