"""wasi:filesystem (types, preopens): host directories given to a guest, sandboxed.

A guest reaches files only through descriptors: the preopened directories (``Preopen``)
and what it opens beneath them. Every path is resolved by ``sandbox.open_beneath`` relative
to the descriptor it is given with, so nothing outside that directory is reachable (see
sandbox.py for how). Path operations other than open act on one final name inside a parent
directory that was itself opened beneath the base.

Permissions follow the WIT: a directory descriptor without ``mutate-directory`` (every
descriptor of a read-only preopen) refuses to create, remove, rename or modify anything,
and to open files for writing, with ``read-only``; a file descriptor without ``write``
refuses writes with ``bad-descriptor``, like a POSIX descriptor opened O_RDONLY.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import secrets
import stat as stat_mod
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from ..runtime.binding import Interface
from ..runtime.resources import HostResource
from ..runtime.store import StoreState
from ..runtime.values import Trap, Variant, WitError
from .io import InputStream, IoError, OutputStream, Pollable, ReadyPollable, StreamClosed, StreamFailed
from .sandbox import Escape, open_beneath, split_parent


@dataclass(frozen=True)
class Preopen:
    """A host directory shown to the guest as ``guest_path``."""

    host_path: str
    guest_path: str
    read_only: bool = False

    @classmethod
    def parse(cls, spec: str, read_only: bool = False) -> Preopen:
        """``HOST_PATH[::GUEST_PATH]`` (the wasmtime CLI's ``--dir`` syntax)."""
        host, sep, guest = spec.partition("::")
        if not host:
            raise ValueError(f"--dir wants HOST_PATH[::GUEST_PATH], got {spec!r}")
        return cls(host, guest if sep and guest else host, read_only)


# ---------------------------------------------------------------------------------------
# errno -> error-code

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


def error_code(e: BaseException) -> str:
    if isinstance(e, Escape):
        return "not-permitted"
    if isinstance(e, OSError) and e.errno is not None:
        return _ERRNO_CODES.get(e.errno, "io")
    if isinstance(e, (ValueError, OverflowError)):  # NUL in a path, offsets beyond off_t
        return "invalid"
    return "io"


T = TypeVar("T")


def _guard(func: Callable[..., T]) -> Callable[..., T]:
    """Turn OS errors raised by a host function into the WIT ``error-code``."""

    def wrapper(*args: Any) -> T:
        try:
            return func(*args)
        except (OSError, Escape, ValueError, OverflowError) as e:
            raise WitError(error_code(e)) from e

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


def _fail(code: str) -> WitError:
    return WitError(code)


# ---------------------------------------------------------------------------------------
# stat helpers


def _descriptor_type(mode: int) -> str:
    return {
        stat_mod.S_IFREG: "regular-file", stat_mod.S_IFDIR: "directory",
        stat_mod.S_IFLNK: "symbolic-link", stat_mod.S_IFIFO: "fifo",
        stat_mod.S_IFSOCK: "socket", stat_mod.S_IFCHR: "character-device",
        stat_mod.S_IFBLK: "block-device",
    }.get(stat_mod.S_IFMT(mode), "unknown")


def _datetime(ns: int) -> dict[str, int]:
    return {"seconds": ns // 1_000_000_000, "nanoseconds": ns % 1_000_000_000}


def _stat_record(st: os.stat_result) -> dict[str, Any]:
    return {
        "type": _descriptor_type(st.st_mode),
        "link_count": st.st_nlink,
        "size": st.st_size,
        "data_access_timestamp": _datetime(st.st_atime_ns),
        "data_modification_timestamp": _datetime(st.st_mtime_ns),
        "status_change_timestamp": _datetime(st.st_ctime_ns),
    }


# Keyed so the hash identifies an object without revealing host inode numbers.
_HASH_KEY = secrets.token_bytes(16)


def _metadata_hash(st: os.stat_result) -> dict[str, int]:
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
# Streams over files


_MAX_CHUNK = 1 << 22  # bytes per read: the list<u8> crossing costs more than the syscall


class FileInputStream(InputStream):
    """Reads a file from an offset with pread (its own descriptor: independent of the
    descriptor it came from, which the guest may drop first)."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = os.dup(fd)
        self.position = offset

    def read(self, n: int) -> bytes:
        if self.fd < 0:
            raise StreamClosed()
        if n == 0:
            return b""
        try:
            data = os.pread(self.fd, min(n, _MAX_CHUNK), self.position)
        except (OSError, OverflowError) as e:
            raise StreamFailed(f"read failed: {e}", error_code(e), "filesystem") from e
        if not data:
            raise StreamClosed()
        self.position += len(data)
        return data

    def subscribe(self) -> Pollable:
        return ReadyPollable()  # regular files never make a reader wait

    def drop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FileOutputStream(OutputStream):
    """Writes at an offset (``append=True``: at the end of the file each time)."""

    capacity = 1 << 20

    def __init__(self, fd: int, offset: int, append: bool = False) -> None:
        super().__init__()
        self.fd = os.dup(fd)
        self.position = offset
        self.append = append
        self.failed: StreamFailed | None = None

    def _check_write(self) -> int:
        if self.failed is not None:
            failed, self.failed = self.failed, None
            raise failed
        return self.capacity

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            if self.append:
                self.position = os.fstat(self.fd).st_size
            while view:
                n = os.pwrite(self.fd, view, self.position)
                if n == 0:
                    raise OSError(errno.ENOSPC, "no progress writing")
                self.position += n
                view = view[n:]
        except (OSError, OverflowError) as e:
            raise StreamFailed(f"write failed: {e}", error_code(e), "filesystem") from e

    def subscribe(self) -> Pollable:
        return ReadyPollable()

    def drop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------------------------------
# Descriptors


class Descriptor(HostResource):
    """An open file or directory; ``flags`` are the WIT descriptor-flags it grants."""

    def __init__(self, fd: int, flags: frozenset[str], kind: str) -> None:
        self.fd = fd
        self.flags = flags
        self.kind = kind  # descriptor-type at open time

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
            raise _fail("not-directory")
        return self.fd

    def mutable_directory(self) -> int:
        fd = self.directory()
        if "mutate-directory" not in self.flags:
            raise _fail("read-only")
        return fd

    def readable_file(self) -> int:
        if self.is_dir:
            raise _fail("is-directory")
        if "read" not in self.flags:
            raise _fail("bad-descriptor")
        return self.fd

    def writable_file(self) -> int:
        if self.is_dir:
            raise _fail("is-directory")
        if "write" not in self.flags:
            raise _fail("bad-descriptor")
        return self.fd


class _Parent:
    """The directory holding a path's final component, opened beneath a base descriptor:
    ``with _Parent(desc, path) as (dirfd, name): os.mkdir(name, dir_fd=dirfd)``."""

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
        return self.fd, name

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def _open_path(desc: Descriptor, path: str, follow: bool) -> int:
    """An O_PATH descriptor for ``path`` (the symlink itself when not following)."""
    return open_beneath(desc.directory(), path, os.O_PATH, follow=follow)


def _stat_path(desc: Descriptor, path: str, follow: bool) -> os.stat_result:
    fd = _open_path(desc, path, follow)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


class DirectoryEntryStream(HostResource):
    def __init__(self, dir_fd: int) -> None:
        # A fresh open file description of the same directory: scandir(fd) would dup() the
        # descriptor, sharing its position with every other listing of it.
        own_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            self._scan: Iterator[os.DirEntry[str]] | None = os.scandir(own_fd)
        finally:
            os.close(own_fd)  # scandir keeps its own duplicate

    def next_entry(self) -> dict[str, Any] | None:
        if self._scan is None:
            return None
        entry = next(self._scan, None)
        if entry is None:
            self.drop()
            return None
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            # WIT strings are Unicode; a name that is not cannot be shown to the guest.
            raise _fail("illegal-byte-sequence") from None
        if entry.is_symlink():
            kind = "symbolic-link"
        elif entry.is_dir(follow_symlinks=False):
            kind = "directory"
        elif entry.is_file(follow_symlinks=False):
            kind = "regular-file"
        else:
            try:
                kind = _descriptor_type(entry.stat(follow_symlinks=False).st_mode)
            except OSError:
                kind = "unknown"
        return {"type": kind, "name": entry.name}

    def drop(self) -> None:
        scan, self._scan = self._scan, None
        if scan is not None:
            scan.close()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------
# Interfaces

types_iface = Interface("wasi:filesystem/types@0.2.8")
preopens_iface = Interface("wasi:filesystem/preopens@0.2.8")
types_iface.resource("descriptor", Descriptor)
types_iface.resource("directory-entry-stream", DirectoryEntryStream)


def _method(name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    def register(impl: Callable[..., T]) -> Callable[..., T]:
        types_iface.func(f"[method]{name}")(_guard(impl))
        return impl

    return register


@_method("descriptor.read-via-stream")
def read_via_stream(cx: StoreState, desc: Descriptor, offset: int) -> InputStream:
    return FileInputStream(desc.readable_file(), offset)


@_method("descriptor.write-via-stream")
def write_via_stream(cx: StoreState, desc: Descriptor, offset: int) -> OutputStream:
    return FileOutputStream(desc.writable_file(), offset)


@_method("descriptor.append-via-stream")
def append_via_stream(cx: StoreState, desc: Descriptor) -> OutputStream:
    return FileOutputStream(desc.writable_file(), 0, append=True)


_ADVICE = {
    "normal": os.POSIX_FADV_NORMAL, "sequential": os.POSIX_FADV_SEQUENTIAL,
    "random": os.POSIX_FADV_RANDOM, "will-need": os.POSIX_FADV_WILLNEED,
    "dont-need": os.POSIX_FADV_DONTNEED, "no-reuse": os.POSIX_FADV_NOREUSE,
}


@_method("descriptor.advise")
def advise(cx: StoreState, desc: Descriptor, offset: int, length: int, advice: str) -> None:
    if desc.is_dir:
        raise _fail("bad-descriptor")
    os.posix_fadvise(desc.fd, offset, length, _ADVICE[advice])


@_method("descriptor.sync-data")
def sync_data(cx: StoreState, desc: Descriptor) -> None:
    os.fdatasync(desc.fd)


@_method("descriptor.sync")
def sync(cx: StoreState, desc: Descriptor) -> None:
    os.fsync(desc.fd)


@_method("descriptor.get-flags")
def get_flags(cx: StoreState, desc: Descriptor) -> set[str]:
    return set(desc.flags)


@_method("descriptor.get-type")
def get_type(cx: StoreState, desc: Descriptor) -> str:
    return _descriptor_type(os.fstat(desc.fd).st_mode)


@_method("descriptor.set-size")
def set_size(cx: StoreState, desc: Descriptor, size: int) -> None:
    os.ftruncate(desc.writable_file(), size)


@_method("descriptor.set-times")
def set_times(cx: StoreState, desc: Descriptor, atime: Variant, mtime: Variant) -> None:
    # Changing metadata is a write: refused on read-only files and directories.
    if desc.is_dir:
        desc.mutable_directory()
    else:
        desc.writable_file()
    _utimensat(desc.fd, None, atime, mtime, nofollow=False)


@_method("descriptor.read")
def read(cx: StoreState, desc: Descriptor, length: int, offset: int) -> tuple[bytes, bool]:
    fd = desc.readable_file()
    want = min(length, _MAX_CHUNK)
    data = os.pread(fd, want, offset) if want else b""
    return data, bool(length) and len(data) < want


@_method("descriptor.write")
def write(cx: StoreState, desc: Descriptor, buffer: bytes, offset: int) -> int:
    return os.pwrite(desc.writable_file(), buffer, offset)


@_method("descriptor.read-directory")
def read_directory(cx: StoreState, desc: Descriptor) -> DirectoryEntryStream:
    if "read" not in desc.flags:
        raise _fail("bad-descriptor")
    return DirectoryEntryStream(desc.directory())


@_method("descriptor.create-directory-at")
def create_directory_at(cx: StoreState, desc: Descriptor, path: str) -> None:
    with _Parent(desc.mutable_directory(), path) as (dirfd, name):
        os.mkdir(name, 0o777, dir_fd=dirfd)


@_method("descriptor.stat")
def stat(cx: StoreState, desc: Descriptor) -> dict[str, Any]:
    return _stat_record(os.fstat(desc.fd))


@_method("descriptor.stat-at")
def stat_at(cx: StoreState, desc: Descriptor, path_flags: set[str], path: str) -> dict[str, Any]:
    return _stat_record(_stat_path(desc, path, "symlink-follow" in path_flags))


@_method("descriptor.set-times-at")
def set_times_at(cx: StoreState, desc: Descriptor, path_flags: set[str], path: str, atime: Variant, mtime: Variant) -> None:
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


@_method("descriptor.link-at")
def link_at(cx: StoreState, desc: Descriptor, old_flags: set[str], old_path: str, new_desc: Descriptor, new_path: str) -> None:
    base = desc.mutable_directory()
    new_base = new_desc.mutable_directory()
    source = open_beneath(base, old_path, os.O_PATH, follow="symlink-follow" in old_flags)
    try:
        if stat_mod.S_ISDIR(os.fstat(source).st_mode):
            raise _fail("not-permitted")  # hard links to directories: never
        with _Parent(new_base, new_path) as (dirfd, name):
            # Link the already-resolved object through its /proc descriptor link, so the
            # source can never be re-resolved to something outside the sandbox.
            os.link(f"/proc/self/fd/{source}", name, dst_dir_fd=dirfd, follow_symlinks=True)
    finally:
        os.close(source)


_OPEN_FLAG_BITS = {"create": os.O_CREAT, "directory": os.O_DIRECTORY, "exclusive": os.O_EXCL, "truncate": os.O_TRUNC}


@_method("descriptor.open-at")
def open_at(cx: StoreState, desc: Descriptor, path_flags: set[str], path: str, open_flags: set[str], flags: set[str]) -> Descriptor:
    base = desc.directory()
    writes = "write" in flags or "create" in open_flags or "truncate" in open_flags
    if writes and "mutate-directory" not in desc.flags:
        raise _fail("read-only")
    if "truncate" in open_flags and "write" not in flags:
        raise _fail("invalid")  # POSIX leaves O_TRUNC|O_RDONLY undefined; refuse it
    os_flags = os.O_NOCTTY
    for name in open_flags:
        os_flags |= _OPEN_FLAG_BITS[name]
    if "write" in flags:
        os_flags |= os.O_RDWR if "read" in flags else os.O_WRONLY
    if "file-integrity-sync" in flags:
        os_flags |= os.O_SYNC
    elif "data-integrity-sync" in flags:
        os_flags |= os.O_DSYNC
    if "requested-write-sync" in flags:
        os_flags |= os.O_RSYNC
    follow = "symlink-follow" in path_flags
    fd = open_beneath(base, path, os_flags, 0o666, follow=follow)
    st = os.fstat(fd)
    kind = _descriptor_type(st.st_mode)
    granted = set(flags)
    if kind == "directory":
        # A directory's rights come from the directory it was opened from, whatever the
        # guest asked for (as in wasmtime): the preview1 adapter opens directories without
        # asking for mutate-directory and then creates files in them, and a read-only
        # preopen must hand out read-only directories only.
        granted = {"read"} | (set(desc.flags) & {"mutate-directory"})
    else:
        granted.discard("mutate-directory")
    return Descriptor(fd, frozenset(granted), kind)


@_method("descriptor.readlink-at")
def readlink_at(cx: StoreState, desc: Descriptor, path: str) -> str:
    with _Parent(desc.directory(), path) as (dirfd, name):
        if name.endswith("/"):
            raise _fail("not-directory")  # a trailing slash would make the kernel follow it
        target = os.readlink(name, dir_fd=dirfd)
    if target.startswith("/"):
        raise _fail("not-permitted")  # the WIT: absolute contents are not shown
    return target


@_method("descriptor.remove-directory-at")
def remove_directory_at(cx: StoreState, desc: Descriptor, path: str) -> None:
    with _Parent(desc.mutable_directory(), path) as (dirfd, name):
        os.rmdir(name, dir_fd=dirfd)


@_method("descriptor.rename-at")
def rename_at(cx: StoreState, desc: Descriptor, old_path: str, new_desc: Descriptor, new_path: str) -> None:
    base = desc.mutable_directory()
    new_base = new_desc.mutable_directory()
    with _Parent(base, old_path) as (old_dirfd, old_name), _Parent(new_base, new_path) as (new_dirfd, new_name):
        os.rename(old_name, new_name, src_dir_fd=old_dirfd, dst_dir_fd=new_dirfd)


@_method("descriptor.symlink-at")
def symlink_at(cx: StoreState, desc: Descriptor, old_path: str, new_path: str) -> None:
    if old_path.startswith("/"):
        raise _fail("not-permitted")
    with _Parent(desc.mutable_directory(), new_path) as (dirfd, name):
        os.symlink(old_path, name, dir_fd=dirfd)


@_method("descriptor.unlink-file-at")
def unlink_file_at(cx: StoreState, desc: Descriptor, path: str) -> None:
    with _Parent(desc.mutable_directory(), path) as (dirfd, name):
        os.unlink(name, dir_fd=dirfd)


@types_iface.func("[method]descriptor.is-same-object")
def is_same_object(cx: StoreState, desc: Descriptor, other: Descriptor) -> bool:
    try:
        a, b = os.fstat(desc.fd), os.fstat(other.fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@_method("descriptor.metadata-hash")
def metadata_hash(cx: StoreState, desc: Descriptor) -> dict[str, int]:
    return _metadata_hash(os.fstat(desc.fd))


@_method("descriptor.metadata-hash-at")
def metadata_hash_at(cx: StoreState, desc: Descriptor, path_flags: set[str], path: str) -> dict[str, int]:
    return _metadata_hash(_stat_path(desc, path, "symlink-follow" in path_flags))


@_method("directory-entry-stream.read-directory-entry")
def read_directory_entry(cx: StoreState, stream: DirectoryEntryStream) -> dict[str, Any] | None:
    return stream.next_entry()


@types_iface.func("filesystem-error-code")
def filesystem_error_code(cx: StoreState, err: IoError) -> str | None:
    return err.code if err.domain == "filesystem" else None


# --- preopens ---------------------------------------------------------------------------


class _PreopenFds:
    """The store's preopened directories, opened once; each get-directories call hands
    out duplicates, so a guest dropping one handle leaves the others working."""

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


@preopens_iface.func("get-directories")
def get_directories(cx: StoreState) -> list[tuple[Descriptor, str]]:
    out = []
    for fd, p in _preopen_fds(cx).entries:
        flags = frozenset({"read"} if p.read_only else {"read", "mutate-directory"})
        out.append((Descriptor(os.dup(fd), flags, "directory"), p.guest_path))
    return out


INTERFACES = (types_iface, preopens_iface)
