"""The README's first command must work: the self-contained demo."""

from __future__ import annotations

import subprocess
import sys


def test_demo_fetches_over_tls_with_a_throwaway_ca() -> None:
    r = subprocess.run([sys.executable, "-m", "wasi_tls_host.cli", "demo"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "status: HTTP/1.1 200 OK" in r.stdout
    assert "peer certificate (verified by the host):" in r.stdout
    assert "issuer:      CN=wasi-tls-host demo CA" in r.stdout
    assert "result: OK" in r.stdout
