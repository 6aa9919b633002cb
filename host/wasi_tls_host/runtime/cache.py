"""On-disk cache of compiled components.

Compiling an 18 MB componentize-py guest takes seconds; deserializing the compiled artifact
takes milliseconds. Artifacts are keyed by the component's sha256 and the wasmtime version
(an artifact from another version is rejected by wasmtime anyway), written atomically, and
a corrupt or foreign artifact is recompiled instead of failing. Loading an artifact runs
native code, so each one is authenticated (runtime/artifact_auth.py): the cache loads only
artifacts it wrote itself. Its size on disk is bounded (``max_size``, default 1 GiB or
``$WASI_TLS_HOST_CACHE_MAX_SIZE``): after each compile the least recently used entries
go, never one a running host has loaded (runtime/cache_space.py: every load marks its entry
used and leases it until ``close``).
Processes that miss the same entry at once (parallel test workers, a server's workers) compile
it once: a compile holds the entry's compile lock, and whoever waited for it looks on disk
again before compiling (compiles of other entries do not wait).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import wasmtime
from wasmtime import Engine, WasmtimeError

from .artifact_auth import ArtifactAuthenticator
from .cache_space import Lease, describe, flock_within, max_size_from_environment, primary_name, trim

if TYPE_CHECKING:
    from wasmtime.component import Component

log = logging.getLogger("wasi_tls_host.cache")



def installed_version(distribution: str, package_dir: Path) -> str:
    """The version of ``distribution`` whose package lives in ``package_dir``: read from the
    one ``NAME-VERSION.dist-info`` folder beside it (how pip installs a wheel), else asked of
    importlib.metadata, whose imports cost about 40 ms of every start-up."""
    found = list(package_dir.parent.glob(f"{distribution}-*.dist-info"))
    if len(found) == 1:
        return found[0].name[len(distribution) + 1:-len(".dist-info")]
    from importlib.metadata import version

    return version(distribution)


WASMTIME_VERSION = installed_version("wasmtime", Path(wasmtime.__file__).parent)
TRIM_WAIT_S = 2.0
# Another process's compile is waited for this long at most (an 18 MB guest compiles in
# seconds, a minute on a loaded machine), then this one compiles too.
COMPILE_WAIT_S = 120.0
COMPILE_LOCK_SUFFIX = ".compile-lock"  # ".KEY.compile-lock", removed after the compile


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


class FromEnvironment:
    """The default size limit: ``$WASI_TLS_HOST_CACHE_MAX_SIZE``, else 1 GiB."""

    def __repr__(self) -> str:
        return "FROM_ENVIRONMENT"


FROM_ENVIRONMENT = FromEnvironment()
CacheSize = int | None | FromEnvironment


def resolve_max_size(max_size: CacheSize) -> int | None:
    """The limit in bytes (None: none); ValueError for anything but a positive size."""
    if isinstance(max_size, FromEnvironment):
        return max_size_from_environment()
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0):
        raise ValueError(f"the cache's max_size must be a positive number of bytes or None, not {max_size!r}")
    return max_size


def _release_all(leases: dict[str, Lease]) -> None:
    for lease in leases.values():
        lease.release()
    leases.clear()


class ComponentCache:
    def __init__(self, engine: Engine, directory: Path | None = None, enabled: bool = True, engine_tag: str = "",
                 max_size: CacheSize = FROM_ENVIRONMENT) -> None:
        """``max_size``: bytes the cache directory may hold (None: no limit)."""
        self.max_size = resolve_max_size(max_size)
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
        # Entries loaded from disk, each leased until close() (no process evicts them); the
        # finalizer only releases what a host dropped without closing.
        self._leases: dict[str, Lease] = {}
        self._finalizer = weakref.finalize(self, _release_all, self._leases)

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
            with self.compiling(key) as waited:
                # Another process may have compiled it while this one waited.
                component = self._load_artifact(key) if waited else None
                if component is None:
                    from wasmtime.component import Component  # the component runtime's only

                    component = Component(self.engine, wasm)
                    self.compiled += 1
                    if self.enabled:
                        self._store_artifact(key, component)
        self._memory[key] = component
        return component

    @contextlib.contextmanager
    def compiling(self, entry: str) -> Iterator[bool]:
        """Held around the compile of ``entry`` and the store of its artifacts: one process
        compiles it at a time. Yields True when another process held it meanwhile (its
        artifact may be on disk now). Best effort and bounded: a cache that is disabled or
        not writable, or a lock held past COMPILE_WAIT_S, yields False without it. The lock
        file goes afterwards (a process that raced past its removal at worst compiles too)."""
        if not self.enabled:
            yield False
            return
        path = self.directory / f".{entry}{COMPILE_LOCK_SUFFIX}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError:
            yield False
            return
        held = False
        try:
            free = flock_within(fd, fcntl.LOCK_EX, 0.0, 0.0)
            held = free or flock_within(fd, fcntl.LOCK_EX, COMPILE_WAIT_S, 0.05)
            yield held and not free
        finally:
            if held:
                path.unlink(missing_ok=True)
            os.close(fd)  # releases the lock

    def close(self) -> None:
        """Forget the compiled components kept in memory. A component loaded from disk maps
        its artifact file and holds its descriptor until closed (and its entry's lease:
        runtime/cache_space.py); instances already made keep what they use."""
        for component in self._memory.values():
            component.close()
        self._memory.clear()
        _release_all(self._leases)

    # --- the size bound (runtime/cache_space.py) ---------------------------------------------
    def lease(self, entry: str) -> Lease | None:
        """Mark ``entry`` used and lease it; None if it is not there (or being evicted)."""
        return Lease.take(self.directory / primary_name(entry))

    def hold(self, entry: str, lease: Lease) -> None:
        """Keep ``lease`` until close(): the entry is loaded."""
        previous = self._leases.pop(entry, None)
        if previous is not None:
            previous.release()
        self._leases[entry] = lease

    def release(self, entry: str) -> None:
        lease = self._leases.pop(entry, None)
        if lease is not None:
            lease.release()

    def trim(self, just_written: str) -> None:
        """After a compile wrote ``just_written``: evict least recently used entries past
        ``max_size`` (never that one, nor one in use)."""
        if self.max_size is None:
            return
        try:
            # Waits for another process's trim (milliseconds), so that what this compile
            # wrote is counted by one of them.
            trimmed = trim(self.directory, self.max_size, keep=[just_written], wait=TRIM_WAIT_S)
        except OSError as e:  # the cache is best effort: never a reason not to run the guest
            log.warning("could not trim the component cache in %s: %s", self.directory, e)
            return
        if trimmed is not None and trimmed.removed:
            log.info("component cache %s over its limit: %s", self.directory, describe(trimmed))

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.cwasm"

    def _load_artifact(self, key: str) -> Component | None:
        path = self._path(key)
        lease = self.lease(key)
        if lease is None:
            return None
        from wasmtime.component import Component

        try:
            # deserialize_file maps the artifact instead of copying it twice (30 MB for an
            # 18 MB guest). Mapped files must never be rewritten in place (that would raise
            # SIGBUS in every process using them): this cache only ever replaces them
            # atomically, and a replaced or deleted file stays valid for its current users.
            component = self.auth.load_verified(
                path, key,
                lambda p: Component.deserialize_file(self.engine, p),
                lambda data: Component.deserialize(self.engine, data),
            )
        except (WasmtimeError, OSError) as e:
            log.warning("ignoring unusable cached artifact %s: %s", path, e)
            path.unlink(missing_ok=True)
            component = None
        if component is None:
            lease.release()
        else:
            self.hold(key, lease)
        return component

    def _store_artifact(self, key: str, component: Component) -> None:
        if self.auth.key() is None:
            return  # an artifact that could not be authenticated would never be loaded
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.auth.store(self._path(key), key, component.serialize())
        except OSError as e:  # a read-only cache must not stop the guest from running
            log.warning("could not write component cache in %s: %s", self.directory, e)
            return
        self.trim(key)
