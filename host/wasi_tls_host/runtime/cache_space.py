"""The compiled-component cache's bound on disk: its files grouped into entries, the least
recently used entries evicted past a size limit, and leases so that no process evicts what a
running host has loaded.

An entry is what one load reads: the component runtime's ``KEY.cwasm``, or the core
runtime's ``KEY-core-vN.plan`` with its ``KEY-core-vN-I.cwasm`` modules, each file with its
``.mac`` tag (and ``.seen``, runtime/artifact_auth.py). The entry's primary file (the artifact, or the plan, which is written last) carries:

* its last use, as its modification time, set at every load (access times are unreliable
  under ``relatime``/``noatime``);
* its lease: a host that loaded the entry holds a shared ``flock`` on it until it closes. A
  process evicting takes an exclusive one without waiting and leaves the entry if it cannot,
  so the limit can be exceeded by what is in use, never by deleting it. (Deleting a mapped
  file would not break its user, but its space would come back only when that process ends
  and the next start would compile again.)

One process evicts at a time (an exclusive ``flock`` on ``.lock``; another waits for it, a
bounded while, so what it wrote is counted by one of them). Eviction runs after a compile has
written an entry, the only time the cache grows. Files a writer may not have finished (modules whose
plan is not there yet, temporary files) are left alone for ``GRACE_S``, then are debris.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from pathlib import Path
from typing import Iterable, Iterator

from .artifact_auth import SEEN_SUFFIX, SOURCES_DIR, TAG_SUFFIX
from .limits import format_bytes, parse_bytes
from .records import ValueFields

log = logging.getLogger("wasi_tls_host.cache")

DEFAULT_MAX_SIZE = 1 << 30
MAX_SIZE_ENV = "WASI_TLS_HOST_CACHE_MAX_SIZE"
LOCK_FILE = ".lock"
GRACE_S = 600.0  # an unfinished entry or temporary file this old is debris (a writer died)
TEMPORARY_SUFFIX = ".tmp"  # artifact_auth.write_atomically's temporary files

# The core runtime's entries end in -core-vN (N: its plan format; plain -core before there was
# one), its modules in -core-vN-I.cwasm; anything else is a component runtime artifact.
_CORE_ENTRY = r".+-core(?:-v\d+)?"
_CORE_MODULE = re.compile(rf"^(?P<entry>{_CORE_ENTRY})-\d+\.cwasm$")
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def max_size_from_environment() -> int | None:
    """``$WASI_TLS_HOST_CACHE_MAX_SIZE`` (``2G``, ``512M``, bytes, or ``none`` for no
    limit), else ``DEFAULT_MAX_SIZE`` (ValueError naming the variable if it is not a size)."""
    text = os.environ.get(MAX_SIZE_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_SIZE
    if text.lower() == "none":
        return None
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise ValueError(f"${MAX_SIZE_ENV}: {e}") from None


def entry_name(file_name: str) -> str | None:
    """The entry a cache file belongs to (None: not an entry's file, e.g. the key)."""
    name = file_name.removesuffix(TAG_SUFFIX).removesuffix(SEEN_SUFFIX)
    if name.startswith("."):
        return None
    match = _CORE_MODULE.match(name)
    if match:
        return match["entry"]
    for suffix in (".plan", ".cwasm"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def primary_name(entry: str) -> str:
    """The file that holds an entry's last use and lease: the core runtime's plan, or the
    component runtime's artifact."""
    return f"{entry}.plan" if re.fullmatch(_CORE_ENTRY, entry) else f"{entry}.cwasm"


class Entry(ValueFields):
    _fields = ("name", "files", "size", "last_used", "complete")

    def __init__(self, name: str, files: list[str] | None = None, size: int = 0, last_used: float = 0.0, complete: bool = False) -> None:
        self.name = name
        self.files: list[str] = [] if files is None else files  # file names in the cache directory
        self.size = size
        self.last_used = last_used  # the primary file's modification time (newest file if none)
        self.complete = complete  # its primary file is there


class Contents(ValueFields):
    _fields = ("entries", "temporary", "size", "records")

    def __init__(self, entries: dict[str, Entry], temporary: list[Entry], size: int, records: list[Entry] | None = None) -> None:
        self.entries = entries
        self.temporary = temporary  # one per temporary file
        self.size = size  # bytes of every file counted (entries, temporary files, records)
        # One per remembered digest of a component file (artifact_auth.SOURCES_DIR, named
        # ``sources/NAME``): a hint, evicted like an entry (the next load hashes the file again).
        self.records: list[Entry] = [] if records is None else records


def scan(directory: Path) -> Contents:
    entries: dict[str, Entry] = {}
    temporary: list[Entry] = []
    try:
        listing = list(os.scandir(directory))
    except FileNotFoundError:
        listing = []
    for item in listing:
        try:
            info = item.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed meanwhile
        if item.name.endswith(TEMPORARY_SUFFIX):
            temporary.append(Entry(item.name, [item.name], info.st_size, info.st_mtime))
            continue
        name = entry_name(item.name)
        if name is None:
            continue
        entry = entries.setdefault(name, Entry(name))
        entry.files.append(item.name)
        entry.size += info.st_size
        if item.name == primary_name(name):
            entry.complete, entry.last_used = True, info.st_mtime
        elif not entry.complete:
            entry.last_used = max(entry.last_used, info.st_mtime)
    records: list[Entry] = []
    try:
        remembered = list(os.scandir(directory / SOURCES_DIR))
    except (FileNotFoundError, NotADirectoryError):
        remembered = []
    for item in remembered:
        try:
            info = item.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        name = f"{SOURCES_DIR}/{item.name}"
        records.append(Entry(name, [name], info.st_size, info.st_mtime))
    size = sum(e.size for e in entries.values()) + sum(t.size for t in temporary) + sum(r.size for r in records)
    return Contents(entries, temporary, size, records)


_LEASE_WAIT_S = 0.05  # an exclusive lock is held for an instant: to evict, or to see if in use


def flock_within(fd: int, operation: int, seconds: float, poll: float) -> bool:
    """``flock(fd, operation)``, trying every ``poll`` seconds for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)


class Lease:
    """A shared lock on an entry's primary file, held while a host has the entry loaded."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    @classmethod
    def take(cls, primary: Path) -> Lease | None:
        """Lease the entry and mark it used now; None if its primary file is not there or is
        being evicted (a miss)."""
        try:
            fd = os.open(primary, _OPEN_FLAGS)
        except OSError:
            return None
        try:
            if not flock_within(fd, fcntl.LOCK_SH, _LEASE_WAIT_S, 0.001):
                raise BlockingIOError  # being evicted
            if os.stat(primary, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError  # evicted (or replaced) between the open and the lock
        except OSError:
            os.close(fd)
            return None
        with contextlib.suppress(OSError):
            os.utime(fd)  # last use (by descriptor: the file the lease holds)
        return cls(fd)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def in_use(primary: Path) -> bool:
    """Whether some host holds a lease on this entry."""
    try:
        fd = os.open(primary, _OPEN_FLAGS)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock
    return False


@contextlib.contextmanager
def _evicting(directory: Path, wait: float) -> Iterator[bool]:
    """The directory's eviction lock, if no other process holds it for ``wait`` seconds
    (False: skip)."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileNotFoundError:
        yield False  # the directory went meanwhile: nothing to evict
        return
    try:
        yield flock_within(fd, fcntl.LOCK_EX, wait, 0.01)
    finally:
        os.close(fd)


def _remove(entry: Entry, directory: Path) -> bool:
    """Delete an entry's files unless a host holds its lease (primary first: a loader arriving
    meanwhile finds no entry, rather than a plan without its modules)."""
    if not entry.complete:
        for name in entry.files:
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
        return True
    primary = directory / primary_name(entry.name)
    try:
        fd = os.open(primary, _OPEN_FLAGS)
    except FileNotFoundError:
        return False  # evicted by someone else already
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # in use
        primary.unlink()
        for name in entry.files:
            if name != primary.name:
                with contextlib.suppress(FileNotFoundError):
                    (directory / name).unlink()
        return True
    finally:
        os.close(fd)


class Trimmed(ValueFields):
    _fields = ("removed", "freed", "size", "kept_in_use")

    def __init__(self, removed: int, freed: int, size: int, kept_in_use: int) -> None:
        self.removed = removed  # entries (and temporary files) removed; remembered digests are not counted
        self.freed = freed  # bytes
        self.size = size  # bytes left
        self.kept_in_use = kept_in_use  # entries over the limit left because a host holds them


def trim(directory: Path, max_size: int, keep: Iterable[str] = (), grace: float = GRACE_S, wait: float = 0.0) -> Trimmed | None:
    """Evict least recently used entries until the cache holds at most ``max_size`` bytes,
    never one in ``keep`` (just written) or leased; None if another process is trimming
    (still after ``wait`` seconds)."""
    if not directory.is_dir():
        return Trimmed(0, 0, 0, 0)  # no cache yet
    with _evicting(directory, wait) as mine:
        if not mine:
            return None
        contents = scan(directory)
        size, removed, freed, kept = contents.size, 0, 0, 0
        if size <= max_size:
            return Trimmed(0, 0, size, 0)
        now = time.time()
        keep = set(keep)
        candidates = [e for e in contents.entries.values() if e.name not in keep and (e.complete or now - e.last_used >= grace)]
        candidates += [t for t in contents.temporary if now - t.last_used >= grace]
        candidates += contents.records  # written whole (atomically): never unfinished
        records = {id(r) for r in contents.records}
        for entry in sorted(candidates, key=lambda e: e.last_used):
            if size <= max_size:
                break
            if _remove(entry, directory):
                size, freed = size - entry.size, freed + entry.size
                removed += id(entry) not in records
            else:
                kept += 1
        return Trimmed(removed, freed, size, kept)


class Usage(ValueFields):
    _fields = ("directory", "size", "files", "entries", "in_use", "max_size")

    def __init__(self, directory: Path, size: int, files: int, entries: int, in_use: int, max_size: int | None) -> None:
        self.directory = directory
        self.size = size
        self.files = files
        self.entries = entries
        self.in_use = in_use
        self.max_size = max_size

    def lines(self) -> list[str]:
        limit = "none" if self.max_size is None else format_bytes(self.max_size)
        return [
            f"location: {self.directory}",
            f"size: {_megabytes(self.size)} in {self.files} files",
            f"entries: {self.entries} ({self.in_use} in use by running hosts)",
            f"limit: {limit} (${MAX_SIZE_ENV}; least recently used entries are evicted past it)",
        ]


def _megabytes(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def usage(directory: Path, max_size: int | None) -> Usage:
    contents = scan(directory)
    complete = [e for e in contents.entries.values() if e.complete]
    files = sum(len(e.files) for e in contents.entries.values()) + len(contents.temporary) + len(contents.records)
    busy = sum(in_use(directory / primary_name(e.name)) for e in complete)
    return Usage(directory, contents.size, files, len(complete), busy, max_size)


def describe(trimmed: Trimmed) -> str:
    kept = f"; kept {trimmed.kept_in_use} in use by running hosts" if trimmed.kept_in_use else ""
    return f"removed {trimmed.removed} entries ({_megabytes(trimmed.freed)}); {_megabytes(trimmed.size)} left{kept}"


def clear(directory: Path, wait: float = 5.0) -> Trimmed | None:
    """Remove every entry no running host holds, every temporary file, and the remembered
    digests of component files (artifact_auth.SOURCES_DIR: hints, taken again when missing)."""
    trimmed = trim(directory, 0, grace=0.0, wait=wait)
    with contextlib.suppress(FileNotFoundError):
        for record in os.scandir(directory / SOURCES_DIR):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(record.path)
    return trimmed
