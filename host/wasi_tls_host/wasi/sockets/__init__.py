"""wasi:sockets for both WASI versions: one engine, two surfaces.

* ``policy.py``: the network policy (``NetworkPolicy``, ``--allow-connect/listen/dns``,
  ``--inherit-network``) and the checks both surfaces call before any system call.
* ``addresses.py``: socket addresses between WIT, ``ipaddress`` and the OS.
* ``registry.py``: a store's OS sockets (``SharedSocket``), ``--max-sockets``, graceful stop,
  the access log's connection records.
* ``tcp.py``, ``udp.py``, ``lookup.py``: the engine (non-blocking OS sockets, the TCP state
  table, the ``--workers`` listener hand-down, name lookups on a small thread pool).
* ``p2.py`` (with ``p2_streams.py``): WASI 0.2, pollables and wasi:io streams.
* ``p3.py``: WASI 0.3, async functions, streams and futures.

The functions below are what the embedder (``GuestInstance``, ``cli/serve.py``) calls for
server operation; they take a store's WASI context and are safe from any thread.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from ...runtime.binding import Interface
from . import lookup, p2, p3
from .addresses import SockAddr
from .p2 import ResolveAddressStream
from .policy import AddressPattern, IPAddress, IPNetwork, NetworkPolicy, format_address
from .registry import SocketRegistry, registry


def stop_accepting(wasi: Any) -> None:
    """Graceful stop of a store's servers: its listeners close at the guest's next look at
    them and accept nothing more; accepted connections go on."""
    registry(wasi).stop_accepting()
    policy = getattr(wasi, "network", None)
    if isinstance(policy, NetworkPolicy):
        # Handed-down listeners the guest never took over: this process must not keep them
        # open, or the kernel would queue clients nobody accepts instead of refusing them.
        while policy.listeners:
            _, fd = policy.listeners.popitem()
            os.close(fd)
    wasi.interruptor.wake()


def cut_connections(wasi: Any) -> None:
    """Before the embedder ends a guest that still has connections: the access log says
    the host cut them."""
    registry(wasi).cutting = True


def open_connections(wasi: Any) -> int:
    """Accepted connections of a store that are not closed yet."""
    return registry(wasi).open_connections()


def is_listening(wasi: Any) -> bool:
    return registry(wasi).listening()


INTERFACES: Iterable[Interface] = (*p2.INTERFACES, *p3.INTERFACES)

__all__ = [
    "AddressPattern", "INTERFACES", "IPAddress", "IPNetwork", "NetworkPolicy", "ResolveAddressStream", "SockAddr",
    "SocketRegistry", "cut_connections", "format_address", "is_listening", "lookup", "open_connections", "registry",
    "stop_accepting",
]
