"""Opening paths strictly beneath a directory descriptor (the filesystem sandbox).

Every path a guest gives is resolved relative to one of its directory descriptors and must
never leave it: not through ``..``, not through an absolute path, not through a symlink
(whoever made it, dangling or not, chained or not). The check has to happen *while* the
kernel resolves the path, not before: checking a string first and opening it afterwards
(``realpath`` + prefix test) is a time-of-check/time-of-use race, since the guest or anyone
else can swap a directory for a symlink in between.

Linux 5.6+ does exactly this in one syscall: ``openat2(dirfd, path, {RESOLVE_BENEATH})``
fails with EXDEV whenever resolution would step outside ``dirfd``. Python has no binding for
it, so it is called through ``ctypes`` (``syscall(437, ...)``, the same number on every
architecture since the syscall tables were unified). Where the kernel lacks it or a seccomp
filter blocks it, ``_walk_beneath`` resolves one component at a time with ``O_NOFOLLOW``
directory descriptors and expands symlinks itself, which is race-free for the same reason:
each step is relative to a descriptor already known to be inside.

Operations other than open (mkdir, unlink, rename, ...) open the *parent* directory this
way and then act on a single final name with the ``*at`` syscalls; see ``split_parent``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections import deque

_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_MAX_SYMLINK_HOPS = 40  # the kernel's own limit (ELOOP beyond it)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Escape(Exception):
    """The path would leave its base directory (guest-visible as ``not-permitted``)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _openat2(dirfd: int, path: bytes, flags: int, mode: int) -> int:
    # openat2 rejects a mode without O_CREAT/O_TMPFILE, unlike openat.
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    for _ in range(64):
        fd = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(dirfd), ctypes.c_char_p(path), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        # EAGAIN: a concurrent rename made the kernel unsure the walk stayed beneath; retry.
        if err in (errno.EINTR, errno.EAGAIN):
            continue
        if err == errno.EXDEV:
            raise Escape(path.decode(errors="replace"))
        raise OSError(err, os.strerror(err))
    raise OSError(errno.EAGAIN, "path kept changing during resolution")


def _probe_openat2() -> bool:
    try:
        root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.close(_openat2(root, b".", os.O_PATH, 0))
        return True
    except OSError:  # ENOSYS (old kernel) or EPERM (seccomp): use the portable walk
        return False
    finally:
        os.close(root)


HAVE_OPENAT2 = _probe_openat2()
# Tests flip this to exercise the fallback on kernels that have openat2.
use_openat2 = HAVE_OPENAT2


def open_beneath(dirfd: int, path: str, flags: int, mode: int = 0o666, *, follow: bool = True) -> int:
    """``openat(dirfd, path, flags)`` that never resolves outside ``dirfd``.

    ``follow=False`` adds O_NOFOLLOW (only the final component is affected, as in POSIX).
    Raises ``Escape`` for absolute paths and escapes, ``OSError`` otherwise.
    """
    if not path:
        raise OSError(errno.ENOENT, "empty path")
    if path.startswith("/"):
        raise Escape(path)
    if not follow:
        flags |= os.O_NOFOLLOW
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise OSError(errno.EINVAL, "path contains a NUL byte")
    if use_openat2:
        return _openat2(dirfd, raw, flags, mode)
    return _walk_beneath(dirfd, path, flags | os.O_CLOEXEC, mode)


def _walk_beneath(dirfd: int, path: str, flags: int, mode: int) -> int:
    """The portable resolver: one component at a time, never letting the kernel follow a
    symlink or ``..`` on its own."""
    follow_last = not flags & os.O_NOFOLLOW
    flags &= ~os.O_NOFOLLOW
    pending: deque[str] = deque(path.split("/"))
    must_be_dir = path.endswith("/")
    owned: list[int] = []  # descriptors of the directories walked into, innermost last
    hops = 0

    def current() -> int:
        return owned[-1] if owned else dirfd

    try:
        while True:
            # Skip empty and "." components; what remains decides whether this is the last.
            while pending and pending[0] in ("", "."):
                pending.popleft()
            if not pending:
                # Path ended on a directory we already hold ("a/b/", "a/..", ".").
                return os.open(".", flags & ~(os.O_CREAT | os.O_EXCL), mode, dir_fd=current())
            name = pending.popleft()
            is_last = all(c in ("", ".") for c in pending)
            if name == "..":
                if not owned:
                    raise Escape(path)
                os.close(owned.pop())
                continue
            if not is_last:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current())
                kind = stat.S_IFMT(os.fstat(fd).st_mode)
                if kind == stat.S_IFDIR:
                    owned.append(fd)
                    continue
                os.close(fd)
                if kind != stat.S_IFLNK:
                    raise OSError(errno.ENOTDIR, "not a directory", name)
                hops = _expand_symlink(current(), name, pending, hops, path)
                continue
            want_follow = follow_last or must_be_dir or bool(pending)  # "link/." also follows
            last_flags = flags | os.O_NOFOLLOW | (os.O_DIRECTORY if must_be_dir or pending else 0)
            try:
                fd = os.open(name, last_flags, mode, dir_fd=current())
            except OSError as e:
                # ELOOP (or ENOTDIR with O_DIRECTORY) may mean "this is a symlink".
                if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST) or not want_follow or flags & os.O_EXCL:
                    raise
                if not _is_symlink(current(), name):
                    raise
                hops = _expand_symlink(current(), name, pending, hops, path)
                continue
            if want_follow and flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
                os.close(fd)  # O_PATH|O_NOFOLLOW opened the link itself: follow it ourselves
                hops = _expand_symlink(current(), name, pending, hops, path)
                continue
            return fd
    finally:
        for fd in owned:
            os.close(fd)


def _is_symlink(dirfd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _expand_symlink(dirfd: int, name: str, pending: deque[str], hops: int, path: str) -> int:
    hops += 1
    if hops > _MAX_SYMLINK_HOPS:
        raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
    target = os.readlink(name, dir_fd=dirfd)
    if target.startswith("/"):
        raise Escape(path)
    pending.extendleft(reversed(target.split("/")))
    return hops


def split_parent(path: str) -> tuple[str, str]:
    """``("a/b", "c/")`` for ``"a/b/c/"``: the directory to open beneath the base, and the
    final name the ``*at`` call acts on (trailing slashes kept: they mean "a directory")."""
    stripped = path.rstrip("/")
    if not stripped:
        return ".", path  # "" or "/": callers reject these before
    head, sep, last = stripped.rpartition("/")
    trailing = path[len(stripped):]
    return (head or ("/" if sep else ".")), last + trailing
