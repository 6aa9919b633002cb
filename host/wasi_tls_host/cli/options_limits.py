"""``--max-memory``, ``--max-table-elements``, ``--timeout``, ``--max-sockets``: the guest's
``GuestLimits`` (runtime/limits.py; defaults are the library's)."""

from __future__ import annotations

import argparse
from typing import Callable, TypeVar

from ..runtime.limits import GuestLimits, format_bytes, parse_bytes
from ..wasi.context import WasiConfig

T = TypeVar("T")

# Every limit flag takes "none" for no limit (None in GuestLimits and TlsLimits).
NO_LIMIT = "none"
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


class Unlimited:
    """What a limit flag given as ``none`` parses to (a flag left out parses to None)."""

    def __repr__(self) -> str:
        return NO_LIMIT


UNLIMITED = Unlimited()


def or_unlimited(parse: Callable[[str], T]) -> Callable[[str], T | Unlimited]:
    """``parse``, except that ``none`` means no limit."""

    def parse_limit(text: str) -> T | Unlimited:
        return UNLIMITED if text.strip().lower() == NO_LIMIT else parse(text)

    parse_limit.__name__ = parse.__name__  # argparse names the type in its errors
    return parse_limit


def limit_value(value: T | Unlimited) -> T | None:
    return None if isinstance(value, Unlimited) else value


def parse_size(text: str) -> int:
    """``512M``, ``2G``, ``65536``, ``64KiB`` -> bytes (binary units)."""
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_duration(text: str) -> float:
    """``30``, ``30s``, ``500ms``, ``2m``, ``1h`` -> seconds."""
    cleaned = text.strip().lower()
    number = cleaned.rstrip("smh")
    try:
        value = float(number) * _TIME_UNITS[cleaned[len(number):]]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"want a duration such as 30s, 500ms or 2m, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"a duration must be positive, got {text!r}")
    return value


def whole_number(minimum: int) -> Callable[[str], int]:
    """A parser of whole numbers no smaller than ``minimum``."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"want a number >= {minimum} (or none), got {text!r}")
        return value

    return count


_count = whole_number(0)


def _defaults() -> str:
    d = GuestLimits()
    memory = format_bytes(d.max_memory) if d.max_memory else "none"
    return f"memory {memory}, table elements {d.max_table_elements}, sockets {d.max_sockets}, no timeout"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits on the guest (defaults: " + _defaults() + "; 'none' lifts a limit)")
    group.add_argument("--max-memory", type=or_unlimited(parse_size), metavar="SIZE", help="largest size of each guest linear memory (e.g. 256M, 2G); memory.grow past it fails")
    group.add_argument("--max-table-elements", type=or_unlimited(_count), metavar="N", help="largest number of elements in each guest table")
    group.add_argument("--timeout", type=or_unlimited(parse_duration), metavar="DURATION", help="stop the guest after this much wall-clock time (e.g. 30s, 5m), whether it computes or waits")
    group.add_argument("--max-sockets", type=or_unlimited(_count), metavar="N", help="most sockets the guest may have open at once (new ones fail with new-socket-limit)")


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    changes = {name: limit_value(getattr(args, name)) for name in ("max_memory", "max_table_elements", "timeout", "max_sockets")
               if getattr(args, name) is not None}
    config.limits = config.limits._replace(**changes)
