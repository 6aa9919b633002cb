"""The filesystem engine both WASI surfaces share (``filesystem.py`` for 0.2,
``p3/filesystem.py`` for 0.3): preopened directories, descriptors and what they permit,
every descriptor operation on the OS, and errno -> error-code.

A guest reaches files only through descriptors: the preopened directories (``Preopen``)
and what it opens beneath them. Every path is resolved by ``sandbox.open_beneath`` relative
to the descriptor it is given with, so nothing outside that directory is reachable (see
sandbox.py for how). Path operations other than open act on one final name inside a parent
directory that was itself opened beneath the base.

Permissions follow the WIT and wasmtime, which keep two things apart: what a tree allows
(``Descriptor.mutable``: every descriptor of a read-only preopen refuses to create, remove,
rename or modify anything, and to open files for writing, with ``read-only``) and what a
descriptor was opened for (its ``flags``, which ``get-flags`` reports: a file descriptor
without ``write`` refuses writes with ``bad-descriptor``, like a POSIX descriptor opened
O_RDONLY).

Operations raise ``FsError`` (a policy refusal), ``sandbox.Escape`` or ``OSError``;
``error_code`` names each as a WIT error-code case, which each surface returns in its own
shape (``raising``). So the two versions cannot disagree on what is allowed: only on how
the answer is spelled.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import stat as stat_mod
from typing import Any, Callable, Iterator, TypeVar

from ..runtime.binding import is_async_function
from ..runtime.records import FrozenFields
from ..runtime.resources import HostResource
from ..runtime.store import StoreState
from ..runtime.values import Trap, Variant, WitError
from .sandbox import Escape, open_beneath, split_parent


class Preopen(FrozenFields):
    """A host directory shown to the guest as ``guest_path``."""

    _fields = ("host_path", "guest_path", "read_only")

    def __init__(self, host_path: str, guest_path: str, read_only: bool = False) -> None:
        object.__setattr__(self, "host_path", host_path)
        object.__setattr__(self, "guest_path", guest_path)
        object.__setattr__(self, "read_only", read_only)

    @classmethod
    def parse(cls, spec: str, read_only: bool = False) -> Preopen:
        """``HOST_PATH[::GUEST_PATH]`` (the wasmtime CLI's ``--dir`` syntax)."""
        host, sep, guest = spec.partition("::")
        if not host:
            raise ValueError(f"--dir wants HOST_PATH[::GUEST_PATH], got {spec!r}")
        return cls(host, guest if sep and guest else host, read_only)


# ---------------------------------------------------------------------------------------
# errors


class FsError(Exception):
    """A refusal by the engine's own policy, as a WIT error-code case name."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


_ERRNO_CODES: dict[int, str] = {
    errno.EACCES: "access", errno.EAGAIN: "would-block", errno.EALREADY: "already",
    errno.EBADF: "bad-descriptor", errno.EBUSY: "busy", errno.EDEADLK: "deadlock",
    errno.EDQUOT: "quota", errno.EEXIST: "exist", errno.EFBIG: "file-too-large",
    errno.EILSEQ: "illegal-byte-sequence", errno.EINPROGRESS: "in-progress",
    errno.EINTR: "interrupted", errno.EINVAL: "invalid", errno.EIO: "io",
    errno.EISDIR: "is-directory", errno.ELOOP: "loop", errno.EMLINK: "too-many-links",
    errno.EMSGSIZE: "message-size", errno.ENAMETOOLONG: "name-too-long",
    errno.ENODEV: "no-device", errno.ENOENT: "no-entry", errno.ENOLCK: "no-lock",
    errno.ENOMEM: "insufficient-memory", errno.ENOSPC: "insufficient-space",
    errno.ENOTDIR: "not-directory", errno.ENOTEMPTY: "not-empty",
    errno.ENOTRECOVERABLE: "not-recoverable", errno.ENOTSUP: "unsupported",
    errno.EOPNOTSUPP: "unsupported", errno.ENOTTY: "no-tty", errno.ENXIO: "no-such-device",
    errno.EOVERFLOW: "overflow", errno.EPERM: "not-permitted", errno.EPIPE: "pipe",
    errno.EROFS: "read-only", errno.ESPIPE: "invalid-seek", errno.ETXTBSY: "text-file-busy",
    errno.EXDEV: "cross-device",
}

# What the engine raises that ``error_code`` names (anything else is a host bug).
FAILURES = (FsError, OSError, Escape, ValueError, OverflowError)


def error_code(e: BaseException) -> str:
    if isinstance(e, FsError):
        return e.code
    if isinstance(e, Escape):
        return "not-permitted"
    if isinstance(e, OSError) and e.errno is not None:
        return _ERRNO_CODES.get(e.errno, "io")
    if isinstance(e, (ValueError, OverflowError)):  # NUL in a path, offsets beyond off_t
        return "invalid"
    return "io"


F = TypeVar("F", bound=Callable[..., Any])


def raising(shape: Callable[[str], Any]) -> Callable[[F], F]:
    """A decorator for a surface's host functions (plain or ``async def``): engine failures
    become ``WitError(shape(code))``, the error case of the function's WIT ``result``."""

    def decorate(func: F) -> F:
        if is_async_function(func):
            @functools.wraps(func)
            async def async_wrapper(*args: Any) -> Any:
                try:
                    return await func(*args)
                except FAILURES as e:
                    raise WitError(shape(error_code(e))) from e

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any) -> Any:
            try:
                return func(*args)
            except FAILURES as e:
                raise WitError(shape(error_code(e))) from e

        return wrapper  # type: ignore[return-value]

    return decorate


# ---------------------------------------------------------------------------------------
# metadata


def descriptor_type(mode: int) -> str:
    """The WIT descriptor-type case of a ``st_mode`` ("unknown" when it has none)."""
    return {
        stat_mod.S_IFREG: "regular-file", stat_mod.S_IFDIR: "directory",
        stat_mod.S_IFLNK: "symbolic-link", stat_mod.S_IFIFO: "fifo",
        stat_mod.S_IFSOCK: "socket", stat_mod.S_IFCHR: "character-device",
        stat_mod.S_IFBLK: "block-device",
    }.get(stat_mod.S_IFMT(mode), "unknown")


def timestamp(ns: int) -> dict[str, int]:
    """A ``datetime`` (0.2) or ``instant`` (0.3) record: the two have the same fields."""
    return {"seconds": ns // 1_000_000_000, "nanoseconds": ns % 1_000_000_000}


def stat_record(st: os.stat_result, type_shape: Callable[[str], Any]) -> dict[str, Any]:
    """A ``descriptor-stat`` record (the same fields in 0.2 and 0.3; ``type_shape`` spells
    the descriptor-type case as the version's type)."""
    return {
        "type": type_shape(descriptor_type(st.st_mode)),
        "link_count": st.st_nlink,
        "size": st.st_size,
        "data_access_timestamp": timestamp(st.st_atime_ns),
        "data_modification_timestamp": timestamp(st.st_mtime_ns),
        "status_change_timestamp": timestamp(st.st_ctime_ns),
    }


# Keyed so the hash identifies an object without revealing host inode numbers.
_HASH_KEY = os.urandom(16)  # what secrets.token_bytes gives, without importing secrets (and random)


def metadata_hash_value(st: os.stat_result) -> dict[str, int]:
    digest = hashlib.blake2b(f"{st.st_dev}:{st.st_ino}".encode(), digest_size=16, key=_HASH_KEY).digest()
    return {"lower": int.from_bytes(digest[:8], "little"), "upper": int.from_bytes(digest[8:], "little")}


# utimensat through ctypes: os.utime cannot express "now" or "leave unchanged" per field.
_libc = ctypes.CDLL(None, use_errno=True)
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _timespec(ts: Variant) -> _Timespec:
    """A ``new-timestamp`` (the same cases in 0.2 and 0.3) as a timespec."""
    if ts.tag == "no-change":
        return _Timespec(0, _UTIME_OMIT)
    if ts.tag == "now":
        return _Timespec(0, _UTIME_NOW)
    when = ts.payload
    if when["nanoseconds"] >= 1_000_000_000:
        raise OSError(errno.EINVAL, "nanoseconds out of range")
    return _Timespec(when["seconds"], when["nanoseconds"])


def _utimensat(dirfd: int, path: str | None, atime: Variant, mtime: Variant, nofollow: bool) -> None:
    """utimensat(dirfd, path), or futimens(dirfd) when ``path`` is None."""
    times = (_Timespec * 2)(_timespec(atime), _timespec(mtime))
    if path is None:
        rc = _libc.futimens(dirfd, times)
    else:
        rc = _libc.utimensat(dirfd, os.fsencode(path), times, _AT_SYMLINK_NOFOLLOW if nofollow else 0)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# ---------------------------------------------------------------------------------------
# descriptors


class Descriptor(HostResource):
    """An open file or directory: ``flags`` are the WIT descriptor-flags it was opened with,
    ``mutable`` whether the tree it belongs to may be changed (its preopen is not
    read-only). Each surface subclasses it (its WIT resource); what a descriptor opens is of
    its own class."""

    def __init__(self, fd: int, flags: frozenset[str], kind: str, mutable: bool) -> None:
        self.fd = fd
        self.flags = flags
        self.kind = kind  # descriptor-type at open time
        self.mutable = mutable

    @property
    def is_dir(self) -> bool:
        return self.kind == "directory"

    def drop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # permission checks ---------------------------------------------------------------
    def directory(self) -> int:
        if not self.is_dir:
            raise FsError("not-directory")
        return self.fd

    def mutable_directory(self) -> int:
        fd = self.directory()
        if not self.mutable:
            raise FsError("read-only")
        return fd

    def readable_file(self) -> int:
        if self.is_dir:
            raise FsError("is-directory")
        if "read" not in self.flags:
            raise FsError("bad-descriptor")
        return self.fd

    def writable_file(self) -> int:
        # A directory is no file to write (bad-descriptor, as wasmtime says for both versions).
        if self.is_dir or "write" not in self.flags:
            raise FsError("bad-descriptor")
        return self.fd


D = TypeVar("D", bound=Descriptor)


def _refuse_escape(base: int, path: str) -> None:
    """Raise ``Escape`` if following ``path`` leaves ``base``; nothing otherwise."""
    try:
        os.close(open_beneath(base, path, os.O_PATH))
    except OSError:
        pass


class _Parent:
    """The directory holding a path's final component, opened beneath a base descriptor:
    ``with _Parent(base_fd, path) as (dirfd, name): os.mkdir(name, dir_fd=dirfd)``."""

    def __init__(self, base_fd: int, path: str) -> None:
        self.base_fd, self.path = base_fd, path
        self.fd = -1

    def __enter__(self) -> tuple[int, str]:
        if not self.path:
            raise OSError(errno.ENOENT, "empty path")
        parent, name = split_parent(self.path)
        self.fd = open_beneath(self.base_fd, parent, os.O_PATH | os.O_DIRECTORY)
        if name.rstrip("/") in ("..", "."):
            # The kernel refuses to create/remove/rename "." and "..", but ".." must not even
            # be looked at when it leads out of the base.
            os.close(open_beneath(self.base_fd, self.path, os.O_PATH))
        elif name.endswith("/"):
            # A trailing slash follows a final symlink, which may lead out ("/" itself,
            # which has no parent, is refused here too).
            _refuse_escape(self.base_fd, self.path)
        return self.fd, name

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def _stat_path(desc: Descriptor, path: str, follow: bool) -> os.stat_result:
    fd = open_beneath(desc.directory(), path, os.O_PATH, follow=follow)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


# --- operations on a descriptor (in the WIT's order) -----------------------------------------

_ADVICE = {
    "normal": os.POSIX_FADV_NORMAL, "sequential": os.POSIX_FADV_SEQUENTIAL,
    "random": os.POSIX_FADV_RANDOM, "will-need": os.POSIX_FADV_WILLNEED,
    "dont-need": os.POSIX_FADV_DONTNEED, "no-reuse": os.POSIX_FADV_NOREUSE,
}


def advise(desc: Descriptor, offset: int, length: int, advice: str) -> None:
    if desc.is_dir:
        raise FsError("bad-descriptor")
    os.posix_fadvise(desc.fd, offset, length, _ADVICE[advice])


def sync_data(desc: Descriptor) -> None:
    os.fdatasync(desc.fd)


def sync(desc: Descriptor) -> None:
    os.fsync(desc.fd)


def get_flags(desc: Descriptor) -> set[str]:
    return set(desc.flags)


def get_type(desc: Descriptor) -> str:
    return descriptor_type(os.fstat(desc.fd).st_mode)


def set_size(desc: Descriptor, size: int) -> None:
    os.ftruncate(desc.writable_file(), size)


def set_times(desc: Descriptor, atime: Variant, mtime: Variant) -> None:
    # Changing metadata is a change to the tree (not a write to the file: a file opened for
    # reading may have its times set, as with futimens), refused in a read-only one.
    if desc.is_dir:
        desc.mutable_directory()
    elif not desc.mutable:
        raise FsError("bad-descriptor")
    _utimensat(desc.fd, None, atime, mtime, nofollow=False)


def create_directory_at(desc: Descriptor, path: str) -> None:
    with _Parent(desc.mutable_directory(), path) as (dirfd, name):
        os.mkdir(name, 0o777, dir_fd=dirfd)


def stat(desc: Descriptor) -> os.stat_result:
    return os.fstat(desc.fd)


def stat_at(desc: Descriptor, path_flags: set[str], path: str) -> os.stat_result:
    return _stat_path(desc, path, "symlink-follow" in path_flags)


def set_times_at(desc: Descriptor, path_flags: set[str], path: str, atime: Variant, mtime: Variant) -> None:
    base = desc.mutable_directory()
    fd = open_beneath(base, path, os.O_PATH, follow="symlink-follow" in path_flags)
    try:
        if stat_mod.S_ISLNK(os.fstat(fd).st_mode):
            # Only reachable without symlink-follow and without a trailing slash: change the
            # link itself through its (sandboxed) parent.
            with _Parent(base, path) as (dirfd, name):
                _utimensat(dirfd, name, atime, mtime, nofollow=True)
        else:
            # The object is already resolved beneath the base: reach it via its descriptor.
            _utimensat(_AT_FDCWD, f"/proc/self/fd/{fd}", atime, mtime, nofollow=False)
    finally:
        os.close(fd)


def link_at(desc: Descriptor, old_flags: set[str], old_path: str, new_desc: Descriptor, new_path: str) -> None:
    base = desc.mutable_directory()
    new_base = new_desc.mutable_directory()
    source = open_beneath(base, old_path, os.O_PATH, follow="symlink-follow" in old_flags)
    try:
        if stat_mod.S_ISDIR(os.fstat(source).st_mode):
            raise FsError("not-permitted")  # hard links to directories: never
        with _Parent(new_base, new_path) as (dirfd, name):
            # Link the already-resolved object through its /proc descriptor link, so the
            # source can never be re-resolved to something outside the sandbox.
            os.link(f"/proc/self/fd/{source}", name, dst_dir_fd=dirfd, follow_symlinks=True)
    finally:
        os.close(source)


_OPEN_FLAG_BITS = {"create": os.O_CREAT, "directory": os.O_DIRECTORY, "exclusive": os.O_EXCL, "truncate": os.O_TRUNC}


def _file_flags(flags: set[str], open_flags: set[str]) -> set[str]:
    """What a file is opened for (as wasmtime decides): reading when neither reading nor
    writing was asked for, and writing whenever it is created."""
    granted = set(flags) - {"mutate-directory"}
    if not granted & {"read", "write"}:
        granted.add("read")
    if "create" in open_flags:
        granted.add("write")
    return granted


def open_at(desc: D, path_flags: set[str], path: str, open_flags: set[str], flags: set[str]) -> D:
    """Open ``path`` beneath ``desc``: a descriptor of ``desc``'s own class."""
    base = desc.directory()
    writes = "write" in flags or "create" in open_flags or "truncate" in open_flags
    if writes and not desc.mutable:
        raise FsError("read-only")
    if "truncate" in open_flags and "write" not in flags:
        raise FsError("invalid")  # POSIX leaves O_TRUNC|O_RDONLY undefined; refuse it
    granted = _file_flags(flags, open_flags)
    os_flags = os.O_NOCTTY
    for name in open_flags:
        os_flags |= _OPEN_FLAG_BITS[name]
    if "write" in granted:
        os_flags |= os.O_RDWR if "read" in granted else os.O_WRONLY
    if "file-integrity-sync" in flags:
        os_flags |= os.O_SYNC
    elif "data-integrity-sync" in flags:
        os_flags |= os.O_DSYNC
    if "requested-write-sync" in flags:
        os_flags |= os.O_RSYNC
    follow = "symlink-follow" in path_flags
    fd = open_beneath(base, path, os_flags, 0o666, follow=follow)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    kind = descriptor_type(st.st_mode)
    if kind == "directory":
        # What a directory allows comes from the tree, whatever the guest asked for (as in
        # wasmtime): the preview1 adapter opens directories without asking for
        # mutate-directory and then creates files in them, and a read-only preopen must
        # hand out read-only directories only. It reports what was asked for and allowed.
        granted = {"read"} | ({"mutate-directory"} & set(flags) if desc.mutable else set())
    return type(desc)(fd, frozenset(granted), kind, desc.mutable)


def readlink_at(desc: Descriptor, path: str) -> str:
    with _Parent(desc.directory(), path) as (dirfd, name):
        if name.endswith("/"):
            raise FsError("not-directory")  # a trailing slash would make the kernel follow it
        target = os.readlink(name, dir_fd=dirfd)
    if target.startswith("/"):
        raise FsError("not-permitted")  # the WIT: absolute contents are not shown
    return target


def remove_directory_at(desc: Descriptor, path: str) -> None:
    with _Parent(desc.mutable_directory(), path) as (dirfd, name):
        os.rmdir(name, dir_fd=dirfd)


def rename_at(desc: Descriptor, old_path: str, new_desc: Descriptor, new_path: str) -> None:
    base = desc.mutable_directory()
    new_base = new_desc.mutable_directory()
    with _Parent(base, old_path) as (old_dirfd, old_name), _Parent(new_base, new_path) as (new_dirfd, new_name):
        os.rename(old_name, new_name, src_dir_fd=old_dirfd, dst_dir_fd=new_dirfd)


def symlink_at(desc: Descriptor, old_path: str, new_path: str) -> None:
    if old_path.startswith("/"):
        raise FsError("not-permitted")
    with _Parent(desc.mutable_directory(), new_path) as (dirfd, name):
        os.symlink(old_path, name, dir_fd=dirfd)


def unlink_file_at(desc: Descriptor, path: str) -> None:
    with _Parent(desc.mutable_directory(), path) as (dirfd, name):
        os.unlink(name, dir_fd=dirfd)


def is_same_object(desc: Descriptor, other: Descriptor) -> bool:
    try:
        a, b = os.fstat(desc.fd), os.fstat(other.fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def metadata_hash(desc: Descriptor) -> dict[str, int]:
    return metadata_hash_value(os.fstat(desc.fd))


def metadata_hash_at(desc: Descriptor, path_flags: set[str], path: str) -> dict[str, int]:
    return metadata_hash_value(_stat_path(desc, path, "symlink-follow" in path_flags))


# --- file contents ---------------------------------------------------------------------------

# Bytes per read or write: a bounded piece of work, so a stream pump never holds the store
# (and a guest waiting on other things) for long.
MAX_CHUNK = 1 << 20


def own_fd(fd: int) -> int:
    """A duplicate for a stream: it lives on when the guest drops the descriptor first."""
    return os.dup(fd)


def pread_into(fd: int, view: memoryview, position: int) -> int:
    """Read at ``position`` straight into ``view`` (at most MAX_CHUNK bytes); 0 at the end."""
    return os.preadv(fd, [view[:MAX_CHUNK]], position)


def pwrite_all(fd: int, data: Any, position: int) -> int:
    """Write all of ``data`` at ``position``; the position after it."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, position)
        if n == 0:
            raise OSError(errno.ENOSPC, "no progress writing")
        position += n
        view = view[n:]
    return position


def append_all(fd: int, data: Any) -> None:
    """Write all of ``data`` at the file's end."""
    pwrite_all(fd, data, os.fstat(fd).st_size)


def pwrite_some(fd: int, view: memoryview, position: int | None) -> int:
    """Write from ``view`` (at most MAX_CHUNK bytes) at ``position``, or at the file's end
    when None; how many bytes were written."""
    n = os.pwrite(fd, view[:MAX_CHUNK], os.fstat(fd).st_size if position is None else position)
    if n == 0 and len(view):
        raise OSError(errno.ENOSPC, "no progress writing")
    return n


# --- directory listings ----------------------------------------------------------------------


class DirectoryListing:
    """The entries of a directory, without ``.`` and ``..``: ``next()`` gives
    ``{"type": case, "name": name}`` records (``type`` a descriptor-type case name) until
    None. Its own descriptor: the guest may drop the directory's first."""

    def __init__(self, desc: Descriptor) -> None:
        dir_fd = desc.directory()
        if "read" not in desc.flags:
            raise FsError("bad-descriptor")
        # A fresh open file description of the same directory: scandir(fd) would dup() the
        # descriptor, sharing its position with every other listing of it.
        own = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            self._scan: Iterator[os.DirEntry[str]] | None = os.scandir(own)
        finally:
            os.close(own)  # scandir keeps its own duplicate

    def next(self) -> dict[str, str] | None:
        if self._scan is None:
            return None
        entry = next(self._scan, None)
        if entry is None:
            self.close()
            return None
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            # WIT strings are Unicode; a name that is not cannot be shown to the guest.
            raise FsError("illegal-byte-sequence") from None
        if entry.is_symlink():
            kind = "symbolic-link"
        elif entry.is_dir(follow_symlinks=False):
            kind = "directory"
        elif entry.is_file(follow_symlinks=False):
            kind = "regular-file"
        else:
            try:
                kind = descriptor_type(entry.stat(follow_symlinks=False).st_mode)
            except OSError:
                kind = "unknown"
        return {"type": kind, "name": entry.name}

    def close(self) -> None:
        scan, self._scan = self._scan, None
        if scan is not None:
            scan.close()  # type: ignore[attr-defined]


# --- preopens --------------------------------------------------------------------------------


class _PreopenFds:
    """The store's preopened directories, opened once for both WASI versions; each
    get-directories call hands out duplicates, so a guest dropping one handle leaves the
    others working."""

    def __init__(self, preopens: list[Preopen]) -> None:
        self.entries: list[tuple[int, Preopen]] = []
        try:
            for p in preopens:
                try:
                    fd = os.open(p.host_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as e:
                    raise Trap(f"preopened directory {p.host_path!r}: {e.strerror}") from None
                self.entries.append((fd, p))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd, _ in self.entries:
            os.close(fd)
        self.entries = []


def _preopen_fds(cx: StoreState) -> _PreopenFds:
    state: _PreopenFds | None = getattr(cx.wasi, "filesystem_preopens", None)
    if state is None:
        preopens = [p if isinstance(p, Preopen) else Preopen(*p) for p in cx.wasi.preopens]
        state = _PreopenFds(preopens)
        cx.wasi.filesystem_preopens = state
        cx.wasi.on_close(state.close)
    return state


def preopened_directories(cx: StoreState, make: type[D]) -> list[tuple[D, str]]:
    """A fresh descriptor (of class ``make``) for each preopen, with its guest path."""
    out = []
    for fd, p in _preopen_fds(cx).entries:
        flags = frozenset({"read"} if p.read_only else {"read", "mutate-directory"})
        out.append((make(os.dup(fd), flags, "directory", not p.read_only), p.guest_path))
    return out


__all__ = [
    "Descriptor", "DirectoryListing", "FAILURES", "FsError", "MAX_CHUNK", "Preopen", "append_all", "descriptor_type",
    "error_code", "metadata_hash_value", "own_fd", "preopened_directories", "pread_into", "pwrite_all", "pwrite_some",
    "raising", "stat_record", "timestamp",
]
