"""Loading components for the core backend, with their compiled core modules cached on disk.

Artifacts sit next to the component backend's (``ComponentCache.directory``), keyed by the
component's sha256, the wasmtime version and the backend (``-core-N.cwasm`` per core
module), written atomically and recompiled when unusable, like ``runtime.cache``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from wasmtime import Module, WasmtimeError

from ..cache import WASMTIME_VERSION, ComponentCache
from .instance import CoreComponent
from .plan import make_plan

log = logging.getLogger("wasi_tls_host.cache")


class CoreModuleCache:
    def __init__(self, cache: ComponentCache) -> None:
        self.cache = cache
        self._memory: dict[str, CoreComponent] = {}

    def key(self, wasm: bytes) -> str:
        return f"{hashlib.sha256(wasm).hexdigest()}-wasmtime{WASMTIME_VERSION}-core"

    def load(self, wasm: bytes) -> CoreComponent:
        """Plan ``wasm`` and get its compiled modules (memory, disk, or compile).

        Raises ``types.Unsupported`` for constructs this backend does not run.
        """
        key = self.key(wasm)
        hit = self._memory.get(key)
        if hit is not None:
            return hit
        plan = make_plan(wasm)
        engine = self.cache.engine
        modules = self._load_artifacts(key, len(plan.modules)) if self.cache.enabled else None
        if modules is None:
            modules = [Module(engine, m) for m in plan.modules]
            self.cache.compiled += 1
            if self.cache.enabled:
                self._store_artifacts(key, modules)
        plan.modules = []  # the binaries are compiled: do not keep 18 MB of them alive
        imports = [[(i.module, i.name or "") for i in m.imports] for m in modules]
        component = CoreComponent(plan, modules, imports, key)
        self._memory[key] = component
        return component

    def _path(self, key: str, i: int) -> Path:
        return self.cache.directory / f"{key}-{i}.cwasm"

    def _load_artifacts(self, key: str, count: int) -> list[Module] | None:
        paths = [self._path(key, i) for i in range(count)]
        if not all(p.exists() for p in paths):
            return None
        try:
            # Mapped, not copied; files are only ever replaced atomically (see runtime.cache).
            return [Module.deserialize_file(self.cache.engine, str(p)) for p in paths]
        except (WasmtimeError, OSError) as e:
            log.warning("ignoring unusable cached core modules %s: %s", key, e)
            for p in paths:
                p.unlink(missing_ok=True)
            return None

    def _store_artifacts(self, key: str, modules: list[Module]) -> None:
        try:
            directory = self.cache.directory
            directory.mkdir(parents=True, exist_ok=True)
            for i, module in enumerate(modules):
                fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
                with os.fdopen(fd, "wb") as f:
                    f.write(module.serialize())
                os.replace(tmp, self._path(key, i))
        except OSError as e:  # a read-only cache must not stop the guest from running
            log.warning("could not write core module cache in %s: %s", self.cache.directory, e)
