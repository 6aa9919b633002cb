"""wasi:filesystem@0.2 (types, preopens): the WASI 0.2 surface of the filesystem engine
(``filesystem_engine.py``: preopens, the sandbox, permissions, every operation), with
wasi:io streams over files.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from ..runtime.binding import Interface
from ..runtime.resources import HostResource
from ..runtime.store import StoreState
from . import filesystem_engine as engine
from .filesystem_engine import Preopen, error_code
from .io import InputStream, IoError, OutputStream, Pollable, ReadyPollable, StreamClosed, StreamFailed

T = TypeVar("T")

# Failures become the error-code enum's case name.
_guard = engine.raising(lambda code: code)


def _stat_record(st: os.stat_result) -> dict[str, Any]:
    return engine.stat_record(st, str)


# ---------------------------------------------------------------------------------------
# Streams over files


_MAX_CHUNK = 1 << 22  # bytes per read: the list<u8> crossing costs more than the syscall


class FileInputStream(InputStream):
    """Reads a file from an offset with pread (its own descriptor: independent of the
    descriptor it came from, which the guest may drop first)."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = engine.own_fd(fd)
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
        self.fd = engine.own_fd(fd)
        self.position = offset
        self.append = append
        self.failed: StreamFailed | None = None

    def _check_write(self) -> int:
        if self.failed is not None:
            failed, self.failed = self.failed, None
            raise failed
        return self.capacity

    def _write(self, data: bytes) -> None:
        try:
            if self.append:
                engine.append_all(self.fd, data)
            else:
                self.position = engine.pwrite_all(self.fd, data, self.position)
        except (OSError, OverflowError) as e:
            raise StreamFailed(f"write failed: {e}", error_code(e), "filesystem") from e

    def subscribe(self) -> Pollable:
        return ReadyPollable()

    def drop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------------------------------
# Resources


class Descriptor(engine.Descriptor):
    """``wasi:filesystem/types@0.2#descriptor``."""


class DirectoryEntryStream(engine.DirectoryListing, HostResource):
    """``wasi:filesystem/types@0.2#directory-entry-stream``."""

    def drop(self) -> None:
        self.close()


types_iface = Interface("wasi:filesystem/types@0.2.8")
preopens_iface = Interface("wasi:filesystem/preopens@0.2.8")
types_iface.resource("descriptor", Descriptor)
types_iface.resource("directory-entry-stream", DirectoryEntryStream)


def _method(name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    def register(impl: Callable[..., T]) -> Callable[..., T]:
        types_iface.func(f"[method]{name}")(_guard(impl))
        return impl

    return register


def _engine_method(name: str, operation: Callable[..., Any]) -> None:
    """A method that is the engine's operation as it is (the store is not needed)."""
    def impl(cx: StoreState, *args: Any) -> Any:
        return operation(*args)

    impl.__name__ = operation.__name__
    types_iface.func(f"[method]{name}")(_guard(impl))


@_method("descriptor.read-via-stream")
def read_via_stream(cx: StoreState, desc: Descriptor, offset: int) -> InputStream:
    return FileInputStream(desc.readable_file(), offset)


@_method("descriptor.write-via-stream")
def write_via_stream(cx: StoreState, desc: Descriptor, offset: int) -> OutputStream:
    return FileOutputStream(desc.writable_file(), offset)


@_method("descriptor.append-via-stream")
def append_via_stream(cx: StoreState, desc: Descriptor) -> OutputStream:
    return FileOutputStream(desc.writable_file(), 0, append=True)


for _name, _operation in [
    ("advise", engine.advise), ("sync-data", engine.sync_data), ("sync", engine.sync),
    ("get-flags", engine.get_flags), ("get-type", engine.get_type), ("set-size", engine.set_size),
    ("set-times", engine.set_times), ("create-directory-at", engine.create_directory_at),
    ("set-times-at", engine.set_times_at), ("link-at", engine.link_at), ("open-at", engine.open_at),
    ("readlink-at", engine.readlink_at), ("remove-directory-at", engine.remove_directory_at),
    ("rename-at", engine.rename_at), ("symlink-at", engine.symlink_at), ("unlink-file-at", engine.unlink_file_at),
    ("metadata-hash", engine.metadata_hash), ("metadata-hash-at", engine.metadata_hash_at),
]:
    _engine_method(f"descriptor.{_name}", _operation)


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
    return DirectoryEntryStream(desc)


@_method("descriptor.stat")
def stat(cx: StoreState, desc: Descriptor) -> dict[str, Any]:
    return _stat_record(engine.stat(desc))


@_method("descriptor.stat-at")
def stat_at(cx: StoreState, desc: Descriptor, path_flags: set[str], path: str) -> dict[str, Any]:
    return _stat_record(engine.stat_at(desc, path_flags, path))


@types_iface.func("[method]descriptor.is-same-object")
def is_same_object(cx: StoreState, desc: Descriptor, other: Descriptor) -> bool:
    return engine.is_same_object(desc, other)


@_method("directory-entry-stream.read-directory-entry")
def read_directory_entry(cx: StoreState, stream: DirectoryEntryStream) -> dict[str, Any] | None:
    return stream.next()


@types_iface.func("filesystem-error-code")
def filesystem_error_code(cx: StoreState, err: IoError) -> str | None:
    return err.code if err.domain == "filesystem" else None


@preopens_iface.func("get-directories")
def get_directories(cx: StoreState) -> list[tuple[Descriptor, str]]:
    return engine.preopened_directories(cx, Descriptor)


INTERFACES = (types_iface, preopens_iface)
__all__ = ["Descriptor", "DirectoryEntryStream", "FileInputStream", "FileOutputStream", "INTERFACES", "Preopen"]
