"""``wasi-tls-host cache info|clear``: the compiled-component cache (runtime/cache_space.py):
where it is, how big, its limit; clearing what no running host uses."""

from __future__ import annotations

import argparse

from ..runtime.cache import default_cache_dir
from ..runtime.cache_space import clear, describe, max_size_from_environment, usage
from .errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    cache = sub.add_parser("cache", help="the compiled-component cache: where it is, its size and limit (info); empty it (clear)")
    cache.add_argument("action", choices=["info", "clear"], help="info: location, size, entries, limit; clear: remove every entry no running host uses")
    return cache


def command(args: argparse.Namespace) -> int:
    directory = default_cache_dir()
    try:
        max_size = max_size_from_environment()
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.action == "info":
        for line in usage(directory, max_size).lines():
            print(line)
        return 0
    trimmed = clear(directory)
    if trimmed is None:
        raise UsageError(f"another process is trimming the cache in {directory}; try again")
    print(f"{directory}: {describe(trimmed)}")
    return 0
