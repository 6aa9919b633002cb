"""The collector while ``wasi-tls-host run`` runs a guest: young collections come later than
the interpreter's default (a server's connections each hold tens of short-lived objects), and
``main`` leaves the thresholds as it found them for a process that goes on."""

from __future__ import annotations

import subprocess
import sys


def test_a_run_collects_young_objects_less_often_and_leaves_the_thresholds_as_they_were(guest_path) -> None:
    check = f"""
import gc
from wasi_tls_host import host
from wasi_tls_host.cli import main
seen = []
run = host.GuestInstance.run
def watched(self):
    seen.append(gc.get_threshold())
    return run(self)
host.GuestInstance.run = watched
before = gc.get_threshold()
status = main(["run", {str(guest_path("wasi_probe"))!r}, "exit", "0"])
print(status, before, seen, gc.get_threshold())
"""
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, timeout=120)
    assert r.stdout.decode().strip().splitlines()[-1] == "0 (700, 10, 10) [(7000, 10, 10)] (700, 10, 10)", r.stderr.decode()
