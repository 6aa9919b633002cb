"""The one error type of the command line: something the operator can fix (exit status 2)."""

from __future__ import annotations

import argparse
from typing import Callable, TypeVar

T = TypeVar("T")


class UsageError(Exception):
    """A bad option or input, reported as one line on stderr with exit status 2."""


def argument_type(parse: Callable[[str], T], prefix: str = "") -> Callable[[str], T]:
    """Wrap a library parser (raising ValueError) as an argparse ``type=`` converter, so
    argparse reports the library's message against the option's name."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{prefix}{e}") from None

    return convert
