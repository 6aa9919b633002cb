"""Loading components for the core backend, with their compiled core modules cached on disk.

Artifacts sit next to the component backend's (``ComponentCache.directory``), keyed by the
component's sha256, the wasmtime version and the backend (``-core-N.cwasm`` per core
module, ``-core.plan`` for the instantiation plan and the modules' import lists), written
atomically and recompiled when unusable, like ``runtime.cache``.

Every file is authenticated like the component backend's artifacts (an HMAC under the
cache's per-user key, runtime/artifact_auth.py): compiled modules are native code wasmtime
maps and runs, so only files this cache wrote are loaded; anything else is a miss that
recompiles. The plan is pickled, and unpickled with only this backend's own plan and type
classes allowed, as a second line of defence. The plan is the entry's primary file for the
cache's size bound: its lease and last use (runtime/cache_space.py).
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any

from wasmtime import Module, WasmtimeError

from ..cache import ComponentCache
from . import canon
from .instance import CoreComponent
from .plan import Plan, make_plan

log = logging.getLogger("wasi_tls_host.cache")


PLAN_FORMAT = 3  # 2: the async ABI (built-ins, stream/future types, async options); 3: component instances
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

    def key(self, wasm: bytes, sha256_hex: str | None = None) -> str:
        # The component cache's key names the digest, wasmtime version and engine settings;
        # PLAN_FORMAT the shape of the pickled plan (bumped when the planner changes, so
        # hosts of two versions sharing the cache never read each other's plans).
        return f"{self.cache.key(wasm, sha256_hex)}-core-v{PLAN_FORMAT}"

    def load(self, wasm: bytes, sha256_hex: str | None = None) -> CoreComponent:
        """Plan ``wasm`` and get its compiled modules (memory, disk, or compile).

        Raises ``types.Unsupported`` for constructs this backend does not run.
        """
        key = self.key(wasm, sha256_hex)
        hit = self._loaded(key)
        if hit is not None:
            return hit
        with self.cache.compiling(key) as waited:  # one process compiles (runtime.cache)
            cached = self._load_artifacts(key) if waited else None
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

    def load_cached(self, sha256_hex: str) -> CoreComponent | None:
        """The component with this SHA-256 if it is in memory or on disk, else None (its
        bytes are not needed: a start whose component file is known by its digest)."""
        return self._loaded(self.key(b"", sha256_hex))

    def _loaded(self, key: str) -> CoreComponent | None:
        hit = self._memory.get(key)
        if hit is not None:
            return hit
        cached = self._load_artifacts(key) if self.cache.enabled else None
        if cached is None:
            return None
        plan, imports, modules = cached
        component = CoreComponent(plan, modules, imports, key)
        self._memory[key] = component
        return component

    def close(self) -> None:
        """Forget the compiled modules kept in memory (each maps its cached file and holds
        its descriptor, and the entry its lease); instances already made keep what they use."""
        for key, component in self._memory.items():
            for module in component.modules:
                module.close()
            self.cache.release(key)
            canon.forget(component.plan)  # its types' conversions, kept for good otherwise
        self._memory.clear()

    def _path(self, key: str, i: int) -> Path:
        return self.cache.directory / f"{key}-{i}.cwasm"

    def _plan_path(self, key: str) -> Path:
        return self.cache.directory / f"{key}.plan"

    def _load_artifacts(self, key: str) -> tuple[Plan, list[list[tuple[str, str]]], list[Module]] | None:
        plan_path = self._plan_path(key)
        lease = self.cache.lease(key)  # the plan: no process evicts the modules while we read them
        if lease is None:
            return None
        loaded = self._load_leased(key, plan_path)
        if loaded is None:
            lease.release()
        else:
            self.cache.hold(key, lease)
        return loaded

    def _load_leased(self, key: str, plan_path: Path) -> tuple[Plan, list[list[tuple[str, str]]], list[Module]] | None:
        auth = self.cache.auth
        paths: list[Path] = []
        try:
            def read_file(p: str) -> bytes:
                with open(p, "rb") as f:
                    return f.read()

            plan_bytes = auth.load_verified(plan_path, plan_path.name, read_file, lambda data: data)
            if plan_bytes is None:
                return None
            plan, imports = _PlanUnpickler(io.BytesIO(plan_bytes)).load()
            paths = [self._path(key, i) for i in range(len(imports))]
            modules = []
            for p in paths:
                # Mapped, not copied; files are only ever replaced atomically (see runtime.cache).
                module = auth.load_verified(p, p.name, lambda f: Module.deserialize_file(self.cache.engine, f),
                                            lambda data: Module.deserialize(self.cache.engine, data))
                if module is None:
                    return None
                modules.append(module)
            return plan, imports, modules
        except (WasmtimeError, OSError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, EOFError) as e:
            log.warning("ignoring unusable cached core modules %s: %s", key, e)
            for p in [plan_path, *paths]:
                p.unlink(missing_ok=True)
            return None

    def _store_artifacts(self, key: str, modules: list[Module], plan: tuple[Plan, list[list[tuple[str, str]]]]) -> None:
        if self.cache.auth.key() is None:
            return  # files that could not be authenticated would never be loaded
        try:
            directory = self.cache.directory
            directory.mkdir(parents=True, exist_ok=True)
            blobs = [(self._path(key, i), module.serialize()) for i, module in enumerate(modules)]
            blobs.append((self._plan_path(key), pickle.dumps(plan)))  # last: it marks the set complete
            for path, blob in blobs:
                self.cache.auth.store(path, path.name, blob)
        except OSError as e:  # a read-only cache must not stop the guest from running
            log.warning("could not write core module cache in %s: %s", self.cache.directory, e)
            return
        self.cache.trim(key)
