"""wasi-tls-host: WebAssembly components get TLS through wasi:tls; the host does the
cryptography with OpenSSL and implements WASI 0.2 in Python on wasmtime.

Typical embedding::

    from wasi_tls_host import Host, WasiConfig

    host = Host()
    result = host.run("guest.wasm", WasiConfig(args=["guest"]).inherit_stdio())

or, wasmtime-py style::

    linker = wasmtime.component.Linker(engine)
    wasi_tls_host.add_to_linker(linker)
    store = wasmtime.Store(engine)
    wasi_tls_host.set_wasi(store, WasiConfig(...))
    instance = linker.instantiate(store, component)
"""

from .host import GuestError, GuestInstance, Host, RunResult, add_to_linker, set_wasi
from .runtime.values import Err, Ok, Some, Trap, Variant, WitError
from .wasi.context import WasiConfig, WasiCtx

__all__ = [
    "Err", "GuestError", "GuestInstance", "Host", "Ok", "RunResult", "Some", "Trap",
    "Variant", "WasiConfig", "WasiCtx", "WitError", "add_to_linker", "set_wasi",
]
