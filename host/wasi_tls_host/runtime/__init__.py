"""The layer between WIT interfaces written in Python and wasmtime-py's component API.

It is the only code that touches wasmtime-py internals: resource tables, value conversion,
host-function registration, export calls and the component cache.
"""
