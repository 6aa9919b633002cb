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

from .host import GuestError, GuestInstance, Host, RunResult, add_to_linker, set_wasi
from .runtime.values import Err, Ok, Some, Trap, Variant, WitError
from .tls.config import TlsConfig
from .tls.identities import PrivateIdentity
from .wasi.context import WasiConfig, WasiCtx
from .wasi.filesystem import Preopen
from .wasi.sockets import NetworkPolicy

__all__ = [
    "Err", "GuestError", "GuestInstance", "Host", "NetworkPolicy", "Ok", "Preopen",
    "PrivateIdentity", "RunResult", "Some", "TlsConfig", "Trap", "Variant", "WasiConfig",
    "WasiCtx", "WitError", "add_to_linker", "set_wasi",
]
