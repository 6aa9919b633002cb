"""Loading components for the core backend, with their compiled core modules cached on disk.

Artifacts sit next to the component backend's (``ComponentCache.directory``), keyed by the
component's sha256, the wasmtime version and the backend (``-core-N.cwasm`` per core
module, ``-core.plan`` for the instantiation plan and the modules' import lists), written
atomically and recompiled when unusable, like ``runtime.cache``.

The plan is pickled, and unpickled with only this backend's own plan and type classes
allowed (nothing else can be named, so a tampered file cannot run code through pickle). The
compiled modules beside it are native code wasmtime maps and runs: the cache directory must
be as trusted as for ``runtime.cache``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from wasmtime import Module, WasmtimeError

from ..cache import WASMTIME_VERSION, ComponentCache
from .instance import CoreComponent
from .plan import Plan, make_plan

log = logging.getLogger("wasi_tls_host.cache")


_PLAN_MODULES = {"wasi_tls_host.runtime.core.plan", "wasi_tls_host.runtime.core.types"}


class _PlanUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in _PLAN_MODULES and not name.startswith("_"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a cached plan may not name {module}.{name}")


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
        cached = self._load_artifacts(key) if self.cache.enabled else None
        if cached is not None:
            plan, imports, modules = cached
        else:
            plan = make_plan(wasm)
            modules = [Module(self.cache.engine, m) for m in plan.modules]
            self.cache.compiled += 1
            plan.modules = []  # the binaries are compiled: do not keep 18 MB of them alive
            imports = [[(i.module, i.name or "") for i in m.imports] for m in modules]
            if self.cache.enabled:
                self._store_artifacts(key, modules, (plan, imports))
        component = CoreComponent(plan, modules, imports, key)
        self._memory[key] = component
        return component

    def _path(self, key: str, i: int) -> Path:
        return self.cache.directory / f"{key}-{i}.cwasm"

    def _plan_path(self, key: str) -> Path:
        return self.cache.directory / f"{key}.plan"

    def _load_artifacts(self, key: str) -> tuple[Plan, list[list[tuple[str, str]]], list[Module]] | None:
        plan_path = self._plan_path(key)
        if not plan_path.exists():
            return None
        paths: list[Path] = []
        try:
            plan, imports = _PlanUnpickler(io.BytesIO(plan_path.read_bytes())).load()
            paths = [self._path(key, i) for i in range(len(imports))]
            # Mapped, not copied; files are only ever replaced atomically (see runtime.cache).
            return plan, imports, [Module.deserialize_file(self.cache.engine, str(p)) for p in paths]
        except (WasmtimeError, OSError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, EOFError) as e:
            log.warning("ignoring unusable cached core modules %s: %s", key, e)
            for p in [plan_path, *paths]:
                p.unlink(missing_ok=True)
            return None

    def _store_artifacts(self, key: str, modules: list[Module], plan: tuple[Plan, list[list[tuple[str, str]]]]) -> None:
        try:
            directory = self.cache.directory
            directory.mkdir(parents=True, exist_ok=True)
            blobs = [(self._path(key, i), module.serialize()) for i, module in enumerate(modules)]
            blobs.append((self._plan_path(key), pickle.dumps(plan)))  # last: it marks the set complete
            for path, blob in blobs:
                fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                os.replace(tmp, path)
        except OSError as e:  # a read-only cache must not stop the guest from running
            log.warning("could not write core module cache in %s: %s", self.cache.directory, e)
