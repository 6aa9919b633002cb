"""The README's first command must work: the self-contained demo (a WASI 0.3 guest), and
the WASI 0.2 one it leads to (``demo --wasi 0.2``)."""

from __future__ import annotations

import subprocess
import sys


def demo(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", "demo", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "peer certificate (verified by the host):" in r.stdout
    assert "issuer:      CN=wasi-tls-host demo CA" in r.stdout
    assert "server saw: GET /hello.txt HTTP/1.1" in r.stdout
    assert "result: OK" in r.stdout
    return r.stdout


def test_demo_fetches_over_tls_with_a_throwaway_ca_from_a_wasi_03_guest() -> None:
    out = demo()
    assert "a WebAssembly guest (WASI 0.3, asyncio)" in out
    # The 0.2 guest's lines (it takes the same URL), after the negotiated version and ALPN.
    assert "version: TLSv1.3\nalpn: http/1.1\nstatus: HTTP/1.1 200 OK\nheaders: 3\nbody-bytes: 4352\nbody-sha256: " in out
    assert "wasi-tls-host demo --wasi 0.2" in out


def test_the_wasi_02_demo_stays_reachable() -> None:
    out = demo("--wasi", "0.2")
    assert "a WebAssembly guest (WASI 0.2)" in out
    assert "status: HTTP/1.1 200 OK\nheaders: 3\nbody-bytes: 4352\n" in out
