"""wasi:clocks (monotonic-clock, wall-clock, timezone): the host's clocks, and their WASI 0.2
surface (``p3/clocks.py`` is the 0.3 one, on the same clocks)."""

from __future__ import annotations

import time
from typing import Any

from ..runtime.binding import Interface
from ..runtime.store import StoreState
from .io import DeadlinePollable, Pollable

monotonic_iface = Interface("wasi:clocks/monotonic-clock@0.2.8")
wall_iface = Interface("wasi:clocks/wall-clock@0.2.8")
timezone_iface = Interface("wasi:clocks/timezone@0.2.8")

# Deadlines are held as time.monotonic_ns() values; the guest sees the same clock.
MAX_INSTANT = 2**64 - 1


# --- the clocks both WASI versions read --------------------------------------------------


def monotonic_ns() -> int:
    return time.monotonic_ns()


def monotonic_resolution_ns() -> int:
    return max(1, int(time.clock_getres(time.CLOCK_MONOTONIC) * 1e9))


def monotonic_deadline(duration_ns: int) -> int:
    """The instant ``duration_ns`` from now (saturating at the largest instant)."""
    return min(time.monotonic_ns() + duration_ns, MAX_INSTANT)


def wall_ns() -> int:
    return time.time_ns()


def wall_resolution_ns() -> int:
    return max(1, int(time.clock_getres(time.CLOCK_REALTIME) * 1e9))


# Guests see UTC: the host's local zone is configuration the guest was not given.
TIMEZONE_NAME = "UTC"
TIMEZONE_OFFSET_S = 0


# --- WASI 0.2 --------------------------------------------------------------------------


@monotonic_iface.func("now")
def monotonic_now(cx: StoreState) -> int:
    return monotonic_ns()


@monotonic_iface.func("resolution")
def monotonic_resolution(cx: StoreState) -> int:
    return monotonic_resolution_ns()


@monotonic_iface.func("subscribe-instant")
def subscribe_instant(cx: StoreState, when: int) -> Pollable:
    return DeadlinePollable(when)


@monotonic_iface.func("subscribe-duration")
def subscribe_duration(cx: StoreState, when: int) -> Pollable:
    return DeadlinePollable(monotonic_deadline(when))


def _datetime(ns: int) -> dict[str, int]:
    return {"seconds": ns // 1_000_000_000, "nanoseconds": ns % 1_000_000_000}


@wall_iface.func("now")
def wall_now(cx: StoreState) -> dict[str, int]:
    return _datetime(wall_ns())


@wall_iface.func("resolution")
def wall_resolution(cx: StoreState) -> dict[str, int]:
    return _datetime(wall_resolution_ns())


@timezone_iface.func("display")
def timezone_display(cx: StoreState, when: dict[str, Any]) -> dict[str, Any]:
    return {"utc_offset": TIMEZONE_OFFSET_S, "name": TIMEZONE_NAME, "in_daylight_saving_time": False}


@timezone_iface.func("utc-offset")
def timezone_utc_offset(cx: StoreState, when: dict[str, Any]) -> int:
    return TIMEZONE_OFFSET_S


INTERFACES = (monotonic_iface, wall_iface, timezone_iface)
