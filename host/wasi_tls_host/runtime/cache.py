"""On-disk cache of compiled components.

Compiling an 18 MB componentize-py guest takes seconds; deserializing the compiled artifact
takes milliseconds. Artifacts are keyed by the component's sha256 and the wasmtime version
(an artifact from another version is rejected by wasmtime anyway), written atomically, and
a corrupt or foreign artifact is recompiled instead of failing. Loading an artifact runs
native code, so each one is authenticated (runtime/artifact_auth.py): the cache loads only
artifacts it wrote itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
from importlib.metadata import version
from pathlib import Path

from wasmtime import Engine, WasmtimeError
from wasmtime.component import Component

from .artifact_auth import ArtifactAuthenticator

log = logging.getLogger("wasi_tls_host.cache")

WASMTIME_VERSION = version("wasmtime")


def user_cache_dir(name: str, override_env: str) -> Path:
    """``$override_env`` if set, else ``name`` in this package's folder of the user's cache
    (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    override = os.environ.get(override_env)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wasi-tls-host" / name


def default_cache_dir() -> Path:
    return user_cache_dir("components", "WASI_TLS_HOST_CACHE")


class ComponentCache:
    def __init__(self, engine: Engine, directory: Path | None = None, enabled: bool = True, engine_tag: str = "") -> None:
        self.engine = engine
        # Names the engine settings that change compiled code (e.g. "epochs"), so artifacts
        # compiled under other settings are never looked up.
        self.engine_tag = engine_tag
        self.directory = directory or default_cache_dir()
        self.enabled = enabled
        self._memory: dict[str, Component] = {}
        self.compiled = 0  # components compiled (not found in memory or on disk), for reports
        # Shared with the core runtimes module cache (runtime/core/loader.py).
        self.auth = ArtifactAuthenticator(self.directory)

    def key(self, wasm: bytes, sha256_hex: str | None = None) -> str:
        """``sha256_hex``: the digest when the caller has it already (hashing an 18 MB guest
        costs ~16 ms, a good part of a cached start)."""
        digest = sha256_hex or hashlib.sha256(wasm).hexdigest()
        tag = f"-{self.engine_tag}" if self.engine_tag else ""
        return f"{digest}-wasmtime{WASMTIME_VERSION}{tag}"

    def load(self, wasm: bytes, sha256_hex: str | None = None) -> Component:
        key = self.key(wasm, sha256_hex)
        cached = self._memory.get(key)
        if cached is not None:
            return cached
        component = self._load_artifact(key) if self.enabled else None
        if component is None:
            component = Component(self.engine, wasm)
            self.compiled += 1
            if self.enabled:
                self._store_artifact(key, component)
        self._memory[key] = component
        return component

    def close(self) -> None:
        """Forget the compiled components kept in memory. A component loaded from disk maps
        its artifact file and holds its descriptor until closed; instances already made keep
        what they use."""
        for component in self._memory.values():
            component.close()
        self._memory.clear()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.cwasm"

    def _load_artifact(self, key: str) -> Component | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            # deserialize_file maps the artifact instead of copying it twice (30 MB for an
            # 18 MB guest). Mapped files must never be rewritten in place (that would raise
            # SIGBUS in every process using them): this cache only ever replaces them
            # atomically, and a replaced or deleted file stays valid for its current users.
            return self.auth.load_verified(
                path, key,
                lambda p: Component.deserialize_file(self.engine, p),
                lambda data: Component.deserialize(self.engine, data),
            )
        except (WasmtimeError, OSError) as e:
            log.warning("ignoring unusable cached artifact %s: %s", path, e)
            path.unlink(missing_ok=True)
            return None

    def _store_artifact(self, key: str, component: Component) -> None:
        if self.auth.key() is None:
            return  # an artifact that could not be authenticated would never be loaded
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.auth.store(self._path(key), key, component.serialize())
        except OSError as e:  # a read-only cache must not stop the guest from running
            log.warning("could not write component cache in %s: %s", self.directory, e)
