"""Installing the peers that are missing (``wasi-tls-host interop --install-peers``): their
Debian packages through ``apt-get`` (as root, else through ``sudo``), then what the peers
build themselves (the Go peer, the JSSE peer's classes) into the peer cache.

NSS is not a peer yet: Debian 12's ``libnss3-tools`` (3.87) has ``tstclnt`` and
``selfserv``, but no adapter for them is written, so nothing installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .peers import Peer, RunContext
from .peers.gotls import peer_cache_dir
from .pki import Pki
from .processes import Processes

APT_TIMEOUT = 1800.0  # seconds apt-get gets (a JDK is a large download)


class InstallError(Exception):
    """Installing could not start (no apt-get, not root and no sudo): one line."""


@dataclass
class InstallResult:
    packages: list[str] = field(default_factory=list)  # what apt-get was asked to install
    ready: list[str] = field(default_factory=list)  # peers that can run now
    missing: dict[str, str] = field(default_factory=dict)  # peer -> why it still cannot


def packages_for(peers: Sequence[Peer]) -> list[str]:
    """The Debian packages of the peers that are missing here, in order, once each."""
    return list(dict.fromkeys(pkg for peer in peers if peer.missing() is not None for pkg in peer.debian_packages))


def _apt_get() -> list[str]:
    apt = shutil.which("apt-get")
    if apt is None:
        raise InstallError("apt-get not found: install the peers with your system's package manager")
    if os.geteuid() == 0:
        return [apt]
    sudo = shutil.which("sudo")
    if sudo is None:
        raise InstallError("installing packages needs root: run as root (or install sudo)")
    return [sudo, apt]


def install_peers(peers: Sequence[Peer], *, cache: Path | None = None) -> InstallResult:
    """Install the Debian packages of the missing ``peers``, then build what they build."""
    result = InstallResult(packages=packages_for(peers))
    if result.packages:
        apt = _apt_get()
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for args in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", *result.packages]):
            done = subprocess.run([*apt, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=APT_TIMEOUT)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
                raise InstallError(f"apt-get {args[0]} failed (exit status {done.returncode}): {tail[0]}")
    with tempfile.TemporaryDirectory(prefix="wasi-tls-host-install-") as scratch:
        processes = Processes(Path(scratch))
        ctx = RunContext(Path(scratch), Pki(Path(scratch) / "pki"), processes, 60.0, cache or peer_cache_dir())
        try:
            for peer in peers:
                reason = peer.make_ready(ctx)
                if reason is None:
                    result.ready.append(peer.name)
                else:
                    result.missing[peer.name] = reason
        finally:
            processes.close()
    return result
