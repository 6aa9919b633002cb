"""Authentication of compiled artifacts: the component cache loads only what it wrote.

Loading a compiled artifact runs native code with no validation by wasmtime, so a writable
cache directory would otherwise be a way to run arbitrary code in the host. Each artifact
gets an HMAC-SHA256 tag (over its cache key and its bytes) under a per-user key kept beside
the artifacts (``artifact.key``, 32 random bytes, mode 0600, created once). An artifact
without a valid tag is a cache miss: the component is compiled again.

The key is refused (and the on-disk cache disabled, with a warning) if another user owns it
or anyone else may read it. Python's ``hmac`` over OpenSSL's SHA-256 is used; the tag
covers exactly the bytes wasmtime then maps (the same open file, not the path again).

Hashing an 18 MB guest's 35 MB of compiled modules is a good part of every start, so once an
artifact has been verified its open file's identity is remembered too (``.seen``: an HMAC
over the tag and the file's device, inode, size, mtime and ctime). A later load whose open
file has that identity maps it without reading it again. Replacing or rewriting the file
changes its inode or its ctime, which only the kernel sets (to the current time: nobody but
root can put it back), so a substitute never matches; the identity is only remembered of a
file whose ctime is a few seconds old, so a write within the same timestamp tick as the
last one cannot go unnoticed either.

The same holds for the component a host loads from a file: hashing it (SHA-256, the cache
key) means reading 18 MB at every start. Once hashed, its SHA-256 is remembered under
``sources/`` for the file's identity (``remember_digest``, an HMAC over the digest and that
identity), and a later load of a file with the same identity takes the digest from there
(``remembered_digest``) and reads the file only on a cache miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import stat
import mmap
import time
from pathlib import Path
from typing import Callable, TypeVar

log = logging.getLogger("wasi_tls_host.cache")

KEY_FILE = "artifact.key"
TAG_SUFFIX = ".mac"
SEEN_SUFFIX = ".seen"
SOURCES_DIR = "sources"  # remembered digests of component files, one per (device, inode)
# How old an artifact's ctime must be before its identity is remembered: longer than any
# filesystem's timestamp granularity (ext4 and tmpfs tick in milliseconds, some in seconds).
SETTLED_NS = 3_000_000_000
T = TypeVar("T")


class ArtifactAuthenticator:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._key: bytes | None = None
        self._unusable = False
        self.content_checks = 0  # artifacts whose bytes were hashed (the others matched their .seen)

    def key(self) -> bytes | None:
        """The per-user key (created on first use); None if the key cannot be trusted."""
        if self._key is not None or self._unusable:
            return self._key
        path = self.directory / KEY_FILE
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                self._create(path)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                info = os.fstat(fd)
                data = os.read(fd, 64)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("component cache disabled: cannot use its key %s: %s", path, e)
            self._unusable = True
            return None
        problem = None
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            problem = "it belongs to another user"
        elif stat.S_IMODE(info.st_mode) & 0o077:
            problem = f"its mode is {stat.S_IMODE(info.st_mode):o}, not 600"
        elif len(data) != 32:
            problem = "it is not 32 bytes long"
        if problem:
            log.warning("component cache disabled: its key %s is unusable: %s", path, problem)
            self._unusable = True
            return None
        self._key = data
        return data

    @staticmethod
    def _create(path: Path) -> None:
        import tempfile  # only to write (start-up time)

        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key")  # mkstemp: mode 0600
        try:
            os.write(fd, os.urandom(32))
            os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path)  # atomic and never replaces a key another process made
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)

    def _mac(self, key: bytes, name: str) -> hmac.HMAC:
        mac = hmac.new(key, digestmod=hashlib.sha256)
        mac.update(name.encode() + b"\0")
        return mac

    def tag(self, name: str, data: bytes) -> bytes | None:
        key = self.key()
        if key is None:
            return None
        mac = self._mac(key, name)
        mac.update(data)
        return mac.digest()

    def store(self, artifact: Path, name: str, data: bytes) -> None:
        """Write ``data`` to ``artifact`` and then its tag, each atomically (a reader sees
        a whole file or none; an artifact whose tag is missing or stale is a miss)."""
        write_atomically(artifact, data)
        tag = self.tag(name, data)
        if tag is not None:
            write_atomically(Path(str(artifact) + TAG_SUFFIX), tag)

    def load_verified(self, artifact: Path, name: str, load_file: Callable[[str], T], load_bytes: Callable[[bytes], T]) -> T | None:
        """The loaded artifact if its tag is valid, else None (a miss).

        The artifact is opened once and authenticated through that descriptor; wasmtime
        then maps ``/proc/self/fd/N``, the same open file, so a file swapped in after the
        check is not the one loaded. Without /proc the authenticated bytes are loaded."""
        key = self.key()
        if key is None:
            return None
        try:
            expected = Path(str(artifact) + TAG_SUFFIX).read_bytes()
            fd = os.open(artifact, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            by_fd = f"/proc/self/fd/{fd}"
            mapped = os.path.exists(by_fd)
            info = os.fstat(fd)
            seen_path = Path(str(artifact) + SEEN_SUFFIX)
            seen = self._seen_tag(key, name, expected, info)
            if mapped and _read_or_none(seen_path) == seen:
                return load_file(by_fd)  # the very file verified before (see the module's notes)
            self.content_checks += 1
            mac = self._mac(key, name)
            data = b""
            if info.st_size:
                with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as view:
                    mac.update(view)
                    if not mapped:
                        data = view[:]
            if not hmac.compare_digest(mac.digest(), expected):
                log.warning("ignoring cached artifact %s: it was not written by this cache (authentication failed)", artifact)
                return None
            if mapped and time.time_ns() - info.st_ctime_ns > SETTLED_NS:
                with contextlib.suppress(OSError):  # only a shortcut: a read-only cache still works
                    write_atomically(seen_path, seen)
            return load_file(by_fd) if mapped else load_bytes(data)
        finally:
            os.close(fd)

    def _seen_tag(self, key: bytes, name: str, tag: bytes, info: os.stat_result) -> bytes:
        mac = self._mac(key, "seen\0" + name)
        mac.update(tag + _identity(info))
        return mac.digest()

    def remembered_digest(self, info: os.stat_result) -> str | None:
        """The SHA-256 (hex) remembered for the file whose identity ``info`` is, if any."""
        key = self.key()
        if key is None:
            return None
        path = self._source_record(info)
        record = _read_or_none(path)
        if record is None or len(record) != 64 + 32:
            return None
        digest, tag = record[:64], record[64:]
        if not hmac.compare_digest(self._source_tag(key, digest, info), tag):
            return None
        with contextlib.suppress(OSError):  # its last use, as an entry's: the cache's bound evicts by it
            os.utime(path)
        return digest.decode("ascii", "replace")

    def remember_digest(self, info: os.stat_result, sha256_hex: str) -> None:
        """Remember that the file with identity ``info`` (taken before its bytes were read)
        hashes to ``sha256_hex``; only for a file whose ctime is settled (see the notes)."""
        key = self.key()
        if key is None or time.time_ns() - info.st_ctime_ns <= SETTLED_NS or len(sha256_hex) != 64:
            return
        digest = sha256_hex.encode("ascii")
        path = self._source_record(info)
        with contextlib.suppress(OSError):  # only a shortcut: a read-only cache still works
            path.parent.mkdir(exist_ok=True, mode=0o700)
            write_atomically(path, digest + self._source_tag(key, digest, info))

    def _source_record(self, info: os.stat_result) -> Path:
        return self.directory / SOURCES_DIR / f"{info.st_dev}-{info.st_ino}"

    def _source_tag(self, key: bytes, digest: bytes, info: os.stat_result) -> bytes:
        mac = self._mac(key, "source")
        mac.update(digest + b"\0" + _identity(info))
        return mac.digest()


def _identity(info: os.stat_result) -> bytes:
    """What changes when a file is replaced or written (ctime: only the kernel sets it)."""
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}".encode()


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def write_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` through a temporary file beside it, which a failure
    (a full disk, say) removes again. The file is private (0600) unless ``mode`` says."""
    import tempfile  # only to write (start-up time)

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
