"""Regenerate ``runtime/signatures.json`` from components built against ``wit/``.

    python -m devtools.signatures    (from the checkout's root)

The guests used import every interface this host serves (wasi:* 0.2 and 0.3, wasi:tls, this
project's wasi-tls-host:tls); tests/test_signatures.py fails when the file is out of date.
WASI 0.2 guests are read through wasmtime's component API (the reference for the types the
component runtime converts); WASI 0.3 guests, which that API cannot load (the async ABI),
through the core runtime's planner, whose ``FuncT.signature()`` writes the same text.
"""

from __future__ import annotations

import json
from typing import Iterable

from wasi_tls_host import Host, guests
from wasi_tls_host.runtime.binding import SIGNATURES_FILE, Interface, collect_signatures, interface_key
from wasi_tls_host.runtime.core.plan import make_plan

REFERENCE_GUESTS = ("tls_server", "https_get", "wasi_probe", "exit_code")
# Built against all of WASI 0.3 (command-p3, with the unstable timezone).
REFERENCE_GUESTS_P3 = ("reference_p3",)


def planned_signatures(wasm: bytes, interfaces: Iterable[Interface]) -> dict[str, str]:
    """Signatures of every host function the component lowers, from its binary alone."""
    by_name = {interface_key(iface.name): iface for iface in interfaces}
    found = {}
    for hi in make_plan(wasm).host_imports:
        iface = by_name.get(interface_key(hi.interface))
        fn = iface.funcs.get(hi.name) if iface is not None else None
        if fn is not None:
            found[fn.qualname] = hi.type.signature()
    return found


def current_signatures() -> dict[str, str]:
    host = Host(runtime="component")  # reads the 0.2 types through wasmtime's component API
    found: dict[str, str] = {}
    for name in REFERENCE_GUESTS:
        found.update(collect_signatures(host.load(guests.build(name)), host.engine, host.interfaces))
    for name in REFERENCE_GUESTS_P3:  # its WASI 0.2 imports were read above already
        for qualname, signature in planned_signatures(guests.build(name).read_bytes(), host.interfaces).items():
            found.setdefault(qualname, signature)
    return dict(sorted(found.items()))


def main() -> None:
    signatures = current_signatures()
    SIGNATURES_FILE.write_text(json.dumps(signatures, indent=1) + "\n")
    print(f"wrote {len(signatures)} signatures to {SIGNATURES_FILE}")


if __name__ == "__main__":
    main()
