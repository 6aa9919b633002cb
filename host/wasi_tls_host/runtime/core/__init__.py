"""The core runtime backend: this host's own Canonical ABI on wasmtime's core API.

``plan`` takes a component binary apart into core instantiation steps, ``types`` gives
sizes, alignments and flattenings, ``canon`` converts between Python values and linear
memory, ``instance`` runs the steps with native trampolines and keeps the handle tables,
``loader`` caches the compiled core modules. ``host.Host(runtime="core")`` selects it.
"""
