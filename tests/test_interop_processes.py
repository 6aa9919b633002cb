"""The interop run's process tracking when a stop signal lands between starting a peer and
tracking it (the handler raises to unwind the run; the peer must still be ended)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wasi_tls_host.interop import processes
from wasi_tls_host.interop.processes import Processes


class Stop(BaseException):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop(signum)


@pytest.mark.parametrize("how", ["start", "run"])
def test_a_stop_signal_just_after_the_fork_still_leaves_the_process_tracked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                           how: str) -> None:
    real_popen = subprocess.Popen
    children: list[subprocess.Popen[bytes]] = []

    def popen_then_signal(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        child = real_popen(*args, **kwargs)
        children.append(child)
        os.kill(os.getpid(), signal.SIGTERM)  # lands before the caller could track the child
        return child

    monkeypatch.setattr(processes.subprocess, "Popen", popen_then_signal)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    procs = Processes(tmp_path)
    try:
        with pytest.raises(Stop):
            if how == "start":
                procs.start([sys.executable, "-c", "import time; time.sleep(60)"], name="sleeper")
            else:
                procs.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=60, name="sleeper")
        assert signal.getsignal(signal.SIGTERM) is _raise_stop  # the real handler is back
    finally:
        procs.close()
        signal.signal(signal.SIGTERM, previous)
    [child] = children
    assert child.wait(5) == -signal.SIGKILL  # ended by close(), not left running
    assert not list(tmp_path.glob(f"{processes.LIVE_MARK}*"))
