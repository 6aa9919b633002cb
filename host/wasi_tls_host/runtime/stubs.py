"""Interfaces that trap on every call, generated from WIT text.

Guests built with componentize-py import every WASI interface, including ones a given run
never calls. A host that lacks an interface can still run such guests: each function of a
stub traps with a message naming it. Used by ``--trap-unknown-imports``-style fallbacks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .binding import Interface
from .resources import HostResource
from .store import StoreState
from .values import Trap

_BLOCK = re.compile(r"\b(interface|resource)\s+([a-z][a-z0-9-]*)\s*(\{|;)")
_FUNC = re.compile(r"^\s*%?([a-z][a-z0-9-]*)\s*:\s*(static\s+)?func\b", re.M)
_CTOR = re.compile(r"^\s*constructor\s*\(", re.M)


class StubResource(HostResource):
    pass


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """(kind, name, body) for every interface and resource block, resources nested."""
    out = []
    for m in _BLOCK.finditer(text):
        if m.group(3) == ";":
            out.append((m.group(1), m.group(2), ""))
            continue
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append((m.group(1), m.group(2), text[m.end() : i - 1]))
    return out


def stub_interfaces(wit_dir: Path, package: str, version: str) -> list[Interface]:
    result = []
    for path in sorted(wit_dir.glob("*.wit")):
        text = re.sub(r"//[^\n]*", "", path.read_text())
        for kind, name, body in _blocks(text):
            if kind != "interface":
                continue
            iface = Interface(f"{package}/{name}@{version}")
            inner = body
            for rkind, rname, rbody in _blocks(body):
                if rkind != "resource":
                    continue
                iface.resource(rname, StubResource)
                inner = inner.replace(rbody, "")
                for fm in _FUNC.finditer(rbody):
                    prefix = "[static]" if fm.group(2) else "[method]"
                    _add(iface, f"{prefix}{rname}.{fm.group(1)}")
                if _CTOR.search(rbody):
                    _add(iface, f"[constructor]{rname}")
            for fm in _FUNC.finditer(inner):
                _add(iface, fm.group(1))
            result.append(iface)
    return result


def _add(iface: Interface, name: str) -> None:
    qual = f"{iface.name}#{name}"

    def trap(cx: StoreState, *args: Any) -> Any:
        raise Trap(f"{qual} is not implemented by this host")

    iface.func(name)(trap)
