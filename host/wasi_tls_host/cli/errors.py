"""The one error type of the command line: something the operator can fix (exit status 2)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, TypeVar

from .startup import process_name, worker_number

T = TypeVar("T")


class UsageError(Exception):
    """A bad option or input, reported as one line on stderr with exit status 2."""


def print_error(message: str) -> None:
    """``error: MESSAGE`` on stderr; a worker says which one it is, as its log lines do."""
    prefix = f"{process_name()}: " if worker_number() is not None else ""
    print_line(f"{prefix}error: {message}")


def print_line(text: str) -> None:
    """One line on stderr in one write: workers share it, and print() writes the newline
    apart, so two workers' lines could run into each other."""
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


def argument_type(parse: Callable[[str], T], prefix: str = "") -> Callable[[str], T]:
    """Wrap a library parser (raising ValueError) as an argparse ``type=`` converter, so
    argparse reports the library's message against the option's name."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{prefix}{e}") from None

    return convert
