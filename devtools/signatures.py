"""Regenerate ``runtime/signatures.json`` from components built against ``wit/``.

    python -m devtools.signatures    (from the checkout's root)

The guests used import every interface this host serves (wasi:*, wasi:tls, this project's
wasi-tls-host:tls); tests/test_signatures.py fails when the file is out of date.
"""

from __future__ import annotations

import json

from wasi_tls_host import Host, guests
from wasi_tls_host.runtime.binding import SIGNATURES_FILE, collect_signatures

REFERENCE_GUESTS = ("tls_server", "https_get", "wasi_probe", "exit_code")


def current_signatures() -> dict[str, str]:
    host = Host(runtime="component")  # reads the types through wasmtime's component API
    found: dict[str, str] = {}
    for name in REFERENCE_GUESTS:
        found.update(collect_signatures(host.load(guests.build(name)), host.engine, host.interfaces))
    return dict(sorted(found.items()))


def main() -> None:
    signatures = current_signatures()
    SIGNATURES_FILE.write_text(json.dumps(signatures, indent=1) + "\n")
    print(f"wrote {len(signatures)} signatures to {SIGNATURES_FILE}")


if __name__ == "__main__":
    main()
