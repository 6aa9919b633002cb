"""The command line, a layer above the library: it parses flags, calls the library's
constructors (``NetworkPolicy``, ``Preopen``, ``TlsConfig``, ``PrivateIdentity``...) and
turns their ``ValueError``s into usage errors. Nothing in the library imports from here."""

from __future__ import annotations

from .errors import UsageError
from .invoke import format_value, parse_invoke
from .main import build_parser, main

__all__ = ["UsageError", "build_parser", "format_value", "main", "parse_invoke"]
