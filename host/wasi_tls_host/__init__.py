"""wasi-tls-host: WebAssembly components get TLS through wasi:tls; the host does the
cryptography with OpenSSL and implements WASI 0.2 in Python on wasmtime.

Typical embedding::

    from wasi_tls_host import Host, NetworkPolicy, TlsConfig, WasiConfig

    host = Host()
    config = WasiConfig(args=["guest"], network=NetworkPolicy().allow_connect("127.0.0.1:*"),
                        tls=TlsConfig(trust=["ca.pem"])).inherit_stdio()
    result = host.run("guest.wasm", config)

or, wasmtime-py style::

    linker = wasmtime.component.Linker(engine)
    wasi_tls_host.add_to_linker(linker)
    store = wasmtime.Store(engine)
    wasi_tls_host.set_wasi(store, WasiConfig(...))
    instance = linker.instantiate(store, component)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .host import GuestError, GuestInstance, Host, RunResult, add_to_linker, set_wasi
    from .runtime.values import Err, Ok, Some, Trap, Variant, WitError
    from .tls.config import TlsConfig
    from .tls.identities import PrivateIdentity
    from .tls.ticket_keys import TicketKeys
    from .wasi.context import WasiConfig, WasiCtx
    from .wasi.filesystem import Preopen
    from .wasi.sockets import NetworkPolicy

__all__ = [
    "Err", "GuestError", "GuestInstance", "Host", "NetworkPolicy", "Ok", "Preopen",
    "PrivateIdentity", "RunResult", "Some", "TicketKeys", "TlsConfig", "Trap", "Variant", "WasiConfig",
    "WasiCtx", "WitError", "add_to_linker", "set_wasi",
]

# Loaded on first use (PEP 562): importing the package costs nothing until a name is used,
# so the command line can hold signals before wasmtime and OpenSSL load (cli/startup.py).
_EXPORTS = {
    ".host": ("GuestError", "GuestInstance", "Host", "RunResult", "add_to_linker", "set_wasi"),
    ".runtime.values": ("Err", "Ok", "Some", "Trap", "Variant", "WitError"),
    ".tls.config": ("TlsConfig",),
    ".tls.identities": ("PrivateIdentity",),
    ".tls.ticket_keys": ("TicketKeys",),
    ".wasi.context": ("WasiConfig", "WasiCtx"),
    ".wasi.filesystem": ("Preopen",),
    ".wasi.sockets": ("NetworkPolicy",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value  # looked up once
        return value
    try:
        return importlib.import_module(f".{name}", __name__)  # a subpackage, as an eager import made it an attribute
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
