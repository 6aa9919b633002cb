"""Regenerate ``runtime/signatures.json`` from components built against ``wit/``.

    python -m devtools.signatures    (from the checkout's root)

The guests used import every interface this host serves (wasi:*, wasi:tls, this project's
wasi-tls-host:tls); tests/test_signatures.py fails when the file is out of date. WASI 0.3
guests use the async ABI, which only the core runtime reads: their imports' types come from
its parse of the component.
"""

from __future__ import annotations

import json

from typing import Any, Iterable

from wasi_tls_host import Host, guests
from wasi_tls_host.runtime.binding import SIGNATURES_FILE, Interface, collect_signatures, interface_key

REFERENCE_GUESTS = ("tls_server", "https_get", "wasi_probe", "exit_code")
P3_REFERENCE_GUESTS = ("fs_probe_p3",)


def core_signatures(component: Any, interfaces: Iterable[Interface]) -> dict[str, str]:
    """``collect_signatures`` for a component the core runtime parsed (async ones too)."""
    by_key = {interface_key(iface.name): iface for iface in interfaces}
    found = {}
    for hi in component.plan.host_imports:
        iface = by_key.get(interface_key(hi.interface))
        fn = iface.funcs.get(hi.name) if iface is not None else None
        if fn is not None:
            found[fn.qualname] = hi.type.signature()
    return found


def current_signatures() -> dict[str, str]:
    host = Host(runtime="component")  # reads the types through wasmtime's component API
    found: dict[str, str] = {}
    for name in REFERENCE_GUESTS:
        found.update(collect_signatures(host.load(guests.build(name)), host.engine, host.interfaces))
    core = Host(runtime="core")
    for name in P3_REFERENCE_GUESTS:
        found.update(core_signatures(core.load(guests.build(name)), core.interfaces))
    return dict(sorted(found.items()))


def main() -> None:
    signatures = current_signatures()
    SIGNATURES_FILE.write_text(json.dumps(signatures, indent=1) + "\n")
    print(f"wrote {len(signatures)} signatures to {SIGNATURES_FILE}")


if __name__ == "__main__":
    main()
