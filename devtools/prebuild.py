"""Build the example guests the test suite uses and compile them for both runtimes, into the
caches the tests read (the guest cache and the compiled-component cache).

    python -m devtools.prebuild [NAME ...]    (from the checkout's root; default: SUITE_GUESTS)

tests/conftest.py starts this beside a whole-suite run: on a cold cache each componentize-py
guest costs 10-30 s to build and as much to compile, and a test worker needing a guest the
other worker is building only waits for it. Here the builds and compiles run as one more
stream of work from the start, in the order the test modules first need them; a worker that
gets to a guest first builds it itself (the caches' locks: nothing is built twice).
"""

from __future__ import annotations

import sys

from wasi_tls_host import Host, guests
from wasi_tls_host.host import RUNTIMES

# The componentize-py guests the suite uses, in about the order (alphabetical by test
# module) the workers first need them.
SUITE_GUESTS = (
    "tls_server", "tls_client", "attest_p3", "https_get_p3", "https_get", "fs_probe", "fs_probe_p3", "tls_echo_server_p3",
    "https_get_upstream_p3", "tls_probe_p3", "hello", "sockets_probe", "tls_probe", "wasi_probe", "tls_echo_server", "hello_p3",
    "wasi_probe_p3", "sockets_probe_p3", "echo_server_p3", "tls_server_p3", "tls_states", "reference_p3",
)


def prebuild(names: tuple[str, ...] | list[str]) -> int:
    failed = 0
    for name in names:
        try:
            path = guests.build(name)
        except guests.BuildError as e:
            print(f"prebuild: {name}: {e}", file=sys.stderr)
            failed += 1
            continue
        for runtime in RUNTIMES:
            with Host(runtime=runtime) as host:  # closed: its compiled guest leaves memory
                try:
                    host.load(path)
                except Exception as e:  # noqa: BLE001 - e.g. a WASI 0.3 guest on the component runtime
                    print(f"prebuild: {name} on the {runtime} runtime: {e}", file=sys.stderr)
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(prebuild(sys.argv[1:] or SUITE_GUESTS))
