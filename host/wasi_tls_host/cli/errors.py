"""The one error type of the command line: something the operator can fix (exit status 2)."""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """A bad option or input, reported as one line on stderr with exit status 2."""


def argument_type(parse, prefix: str = ""):  # type: ignore[no-untyped-def]
    """Wrap a library parser (raising ValueError) as an argparse ``type=`` converter, so
    argparse reports the library's message against the option's name."""

    def convert(text: str):  # type: ignore[no-untyped-def]
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{prefix}{e}") from None

    return convert
