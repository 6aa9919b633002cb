"""Name lookups for both WASI versions: getaddrinfo on a small shared thread pool, so a guest
never blocks the host and cannot make it start a thread per name.

At most ``MAX_PENDING`` lookups wait for the pool; beyond that the guest hears
``temporary-resolver-failure`` and may retry. Each ``Lookup`` signals an eventfd when it is
done: WASI 0.2's pollable and WASI 0.3's awaiting coroutine both wait on it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import TYPE_CHECKING, Any

from ...runtime.values import WitError
from ..io import Notifier
from .policy import IPAddress, check_dns

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None  # made by the first lookup (start-up time)
MAX_PENDING = 256


_pending = 0
_pending_lock = threading.Lock()


def _lookup_pool() -> ThreadPoolExecutor:
    global _pool
    with _pending_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="wasi-dns")
        return _pool


_GAI_ERRORS = {
    socket.EAI_NONAME: "name-unresolvable",
    getattr(socket, "EAI_NODATA", -5): "name-unresolvable",
    getattr(socket, "EAI_ADDRFAMILY", -9): "name-unresolvable",
    socket.EAI_AGAIN: "temporary-resolver-failure",
    socket.EAI_FAIL: "permanent-resolver-failure",
    socket.EAI_MEMORY: "out-of-memory",
}


def parse_name(wasi: Any, name: str) -> IPAddress | str:
    """What to resolve: an address literal (returned as-is, no lookup and no DNS grant
    needed), else the name in ASCII (IDNA). invalid-argument for what is no host name;
    access-denied unless the policy allows lookups."""
    text = name.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        ascii_name = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise WitError("invalid-argument") from None
    if not ascii_name or len(ascii_name) > 253 or any(c in ascii_name for c in " /\\\0:%") or ".." in ascii_name:
        raise WitError("invalid-argument")
    check_dns(wasi, ascii_name)
    return ascii_name


class Lookup:
    """One getaddrinfo on the pool. ``done`` once ``addresses`` or ``error`` is set; the
    notifier's descriptor is readable from then on."""

    def __init__(self, name: str) -> None:
        global _pending
        self._lock = threading.Lock()
        self.addresses: list[IPAddress] | None = None
        self.error: str | None = None
        with _pending_lock:
            if _pending >= MAX_PENDING:
                raise WitError("temporary-resolver-failure")
            _pending += 1
        self.notifier = Notifier()
        _lookup_pool().submit(self._run, name)

    @property
    def done(self) -> bool:
        with self._lock:
            return self.addresses is not None

    @property
    def fd(self) -> int | None:
        """The descriptor to wait on, None once closed (then there is nothing to wait for)."""
        with self._lock:
            return None if self.notifier.closed else self.notifier.fd

    def _run(self, name: str) -> None:
        global _pending
        try:
            addresses, error = resolve(name)
            with self._lock:
                self.addresses, self.error = addresses, error
                self.notifier.notify()  # after close() this does nothing
        finally:
            with _pending_lock:
                _pending -= 1

    def close(self) -> None:
        # The pool thread may still run; it notifies under the same lock.
        with self._lock:
            self.notifier.close()


def resolve(name: str) -> tuple[list[IPAddress], str | None]:
    """getaddrinfo's addresses in its order (no IPv4-mapped IPv6 ones, as the spec asks)
    and the error code when there are none."""
    addresses: list[IPAddress] = []
    try:
        for _, _, _, _, sa in socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM):
            ip = ipaddress.ip_address(sa[0].split("%")[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                continue
            if ip not in addresses:
                addresses.append(ip)
    except socket.gaierror as e:
        return [], _GAI_ERRORS.get(e.errno, "unknown")
    except Exception:
        return [], "unknown"
    return addresses, None if addresses else "name-unresolvable"
