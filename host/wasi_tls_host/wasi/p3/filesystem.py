"""wasi:filesystem@0.3.0 (types, preopens): the WASI 0.3 surface of the filesystem engine
(``wasi/filesystem_engine.py``, which WASI 0.2 uses too: the same preopens, sandbox,
permissions and error codes).

What is new in 0.3 is how data moves. ``read-via-stream`` and ``read-directory`` hand the
guest a stream the host writes and a future with the outcome; ``write-via-stream`` and
``append-via-stream`` take a stream the guest writes. Each is pumped by a host coroutine on
the store's scheduler in bounded chunks (``filesystem_engine.MAX_CHUNK``), straight between
the file and guest memory: ``preadv`` into the buffer the guest's read offers
(``StreamWriter.fill``), ``pwrite`` from the buffer its write offers (``StreamReader.drain``).
A regular file is always ready, so no pump waits on the kernel; each chunk completes the
guest's read or write, and the pump goes on only when the guest reads or writes again, so
other host work runs in between. Pumps use their own duplicate of the file's descriptor: a
stream outlives the descriptor it came from, as in wasmtime.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from ...runtime.binding import Interface
from ...runtime.scheduler import Cancelled, HostTask
from ...runtime.store import StoreState
from ...runtime.streams import (
    Future, FutureWriter, Stream, StreamClosed, StreamReader, StreamWriter, new_future, new_stream,
)
from ...runtime.values import Err, Variant
from .. import filesystem_engine as engine

log = logging.getLogger("wasi_tls_host.runtime")

# 0.3's error-code variant has no would-block (0.2's enum does): such a failure is other.
_NOT_IN_0_3 = frozenset({"would-block"})


def error_code(code: str) -> Variant:
    """An engine error-code name as 0.3's ``error-code`` variant."""
    return Variant("other", code) if code in _NOT_IN_0_3 else Variant(code)


def descriptor_type(kind: str) -> Variant:
    return Variant("other", None) if kind == "unknown" else Variant(kind)


def _stat_record(st: os.stat_result) -> dict[str, Any]:
    return engine.stat_record(st, descriptor_type)


def _failure(e: BaseException) -> Err[Variant]:
    return Err(error_code(engine.error_code(e)))


class Descriptor(engine.Descriptor):
    """``wasi:filesystem/types@0.3.0#descriptor``."""


types_iface = Interface("wasi:filesystem/types@0.3.0")
preopens_iface = Interface("wasi:filesystem/preopens@0.3.0")
types_iface.resource("descriptor", Descriptor)

_guard = engine.raising(error_code)


def _method(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(impl: Callable[..., Any]) -> Callable[..., Any]:
        types_iface.func(f"[method]descriptor.{name}")(_guard(impl))
        return impl

    return register


# --- streams ---------------------------------------------------------------------------------


def _failed_stream(e: BaseException) -> tuple[Stream, Future]:
    """An empty stream and a future with the error: how a refused stream is answered."""
    stream, writer = new_stream()
    writer.close()
    future, outcome = new_future()
    outcome.write(_failure(e))
    return stream, future


class _Pump:
    """One stream's host side: a coroutine moving data, and what it holds (the stream's
    host end, the outcome future's writer, a descriptor). ``release`` frees them when the
    coroutine ends, however it ends: finished, failed, or cancelled with the store, even
    before it first ran (a coroutine that never started runs no ``finally``)."""

    def __init__(self, fd: int, outcome: FutureWriter, end: StreamWriter | StreamReader) -> None:
        self.fd, self.outcome, self.end = fd, outcome, end

    async def run(self) -> None:
        raise NotImplementedError

    def start(self, cx: StoreState, name: str) -> None:
        try:
            task = cx.scheduler.spawn(self.run(), name)
        except BaseException:  # the store is closing
            self.release()
            raise
        task.add_done_callback(self._ended)

    def _ended(self, task: HostTask) -> None:
        self.release()
        if task.error is not None and not isinstance(task.error, Cancelled):
            log.error("host task %s failed: %s: %s", task.name, type(task.error).__name__, task.error)

    def release(self) -> None:
        self.end.close()  # a reader at the end of the stream, or a writer cut off
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.outcome.close()  # only if nothing was written: the store is going away


class _FileToStream(_Pump):
    """``read-via-stream``: the file from ``position`` on, read straight into the buffers
    the guest offers."""

    end: StreamWriter

    def __init__(self, fd: int, position: int, outcome: FutureWriter, writer: StreamWriter) -> None:
        super().__init__(fd, outcome, writer)
        self.position = position

    async def run(self) -> None:
        fd, writer = self.fd, self.end
        try:
            while True:
                at = self.position
                # Each fill waits for the guest's next read: other host work runs meanwhile.
                n = await writer.fill(lambda view: engine.pread_into(fd, view, at))
                if n == 0:
                    break
                self.position += n
        except StreamClosed:  # the guest dropped the stream: nothing failed
            pass
        except engine.FAILURES as e:
            self.outcome.write(_failure(e))
            return
        self.outcome.write(None)


class _StreamToFile(_Pump):
    """``write-via-stream`` (at ``position`` onwards) and ``append-via-stream`` (position
    None: each chunk at the end of the file)."""

    end: StreamReader

    def __init__(self, fd: int, position: int | None, outcome: FutureWriter, reader: StreamReader) -> None:
        super().__init__(fd, outcome, reader)
        self.position = position

    async def run(self) -> None:
        fd, reader = self.fd, self.end
        try:
            while True:
                # Straight from the guest's buffer; its write completes with what was taken,
                # so each chunk waits for the guest's next write: other host work runs.
                at = self.position
                n = await reader.drain(lambda view: engine.pwrite_some(fd, view, at))
                if n is None:
                    break
                if self.position is not None:
                    self.position += n
        except engine.FAILURES as e:
            # The stream is dropped when the pump ends: the guest's next write sees that.
            self.outcome.write(_failure(e))
            return
        self.outcome.write(None)


@types_iface.func("[method]descriptor.read-via-stream")
def read_via_stream(cx: StoreState, desc: Descriptor, offset: int) -> tuple[Stream, Future]:
    try:
        fd = engine.own_fd(desc.readable_file())
    except engine.FAILURES as e:
        return _failed_stream(e)
    stream, writer = new_stream()
    future, outcome = new_future()
    _FileToStream(fd, offset, outcome, writer).start(cx, "read-via-stream")
    return stream, future


def _write_stream(cx: StoreState, desc: Descriptor, data: Stream, position: int | None) -> Future:
    reader = StreamReader(data, is_bytes=True)
    future, outcome = new_future()
    try:
        fd = engine.own_fd(desc.writable_file())
    except engine.FAILURES as e:
        reader.close()
        outcome.write(_failure(e))
        return future
    _StreamToFile(fd, position, outcome, reader).start(cx, "write-via-stream" if position is not None else "append-via-stream")
    return future


@types_iface.func("[method]descriptor.write-via-stream")
def write_via_stream(cx: StoreState, desc: Descriptor, data: Stream, offset: int) -> Future:
    return _write_stream(cx, desc, data, offset)


@types_iface.func("[method]descriptor.append-via-stream")
def append_via_stream(cx: StoreState, desc: Descriptor, data: Stream) -> Future:
    return _write_stream(cx, desc, data, None)


class _ListingToStream(_Pump):
    """``read-directory``: directory-entry records, as many as the guest's buffer takes."""

    end: StreamWriter
    per_batch = 64

    def __init__(self, listing: engine.DirectoryListing, outcome: FutureWriter, writer: StreamWriter) -> None:
        super().__init__(-1, outcome, writer)
        self.listing = listing

    async def run(self) -> None:
        listing, writer = self.listing, self.end
        try:
            batch: list[dict[str, Any]] = []
            while True:
                if not batch:
                    while len(batch) < self.per_batch and (entry := listing.next()) is not None:
                        batch.append({"type": descriptor_type(entry["type"]), "name": entry["name"]})
                    if not batch:
                        break
                batch = batch[await writer.write_some(batch):]  # waits for the guest's next read
        except StreamClosed:
            pass
        except engine.FAILURES as e:
            self.outcome.write(_failure(e))
            return
        self.outcome.write(None)

    def release(self) -> None:
        self.listing.close()
        super().release()


@types_iface.func("[method]descriptor.read-directory")
def read_directory(cx: StoreState, desc: Descriptor) -> tuple[Stream, Future]:
    try:
        listing = engine.DirectoryListing(desc)
    except engine.FAILURES as e:
        return _failed_stream(e)
    stream, writer = new_stream()
    future, outcome = new_future()
    _ListingToStream(listing, outcome, writer).start(cx, "read-directory")
    return stream, future


# --- everything else: the engine's operations as async functions ----------------------------


@_method("advise")
async def advise(cx: StoreState, desc: Descriptor, offset: int, length: int, advice: str) -> None:
    engine.advise(desc, offset, length, advice)


@_method("sync-data")
async def sync_data(cx: StoreState, desc: Descriptor) -> None:
    engine.sync_data(desc)


@_method("get-flags")
async def get_flags(cx: StoreState, desc: Descriptor) -> set[str]:
    return engine.get_flags(desc)


@_method("get-type")
async def get_type(cx: StoreState, desc: Descriptor) -> Variant:
    return descriptor_type(engine.get_type(desc))


@_method("set-size")
async def set_size(cx: StoreState, desc: Descriptor, size: int) -> None:
    engine.set_size(desc, size)


@_method("set-times")
async def set_times(cx: StoreState, desc: Descriptor, atime: Variant, mtime: Variant) -> None:
    engine.set_times(desc, atime, mtime)


@_method("sync")
async def sync(cx: StoreState, desc: Descriptor) -> None:
    engine.sync(desc)


@_method("create-directory-at")
async def create_directory_at(cx: StoreState, desc: Descriptor, path: str) -> None:
    engine.create_directory_at(desc, path)


@_method("stat")
async def stat(cx: StoreState, desc: Descriptor) -> dict[str, Any]:
    return _stat_record(engine.stat(desc))


@_method("stat-at")
async def stat_at(cx: StoreState, desc: Descriptor, path_flags: set[str], path: str) -> dict[str, Any]:
    return _stat_record(engine.stat_at(desc, path_flags, path))


@_method("set-times-at")
async def set_times_at(cx: StoreState, desc: Descriptor, path_flags: set[str], path: str, atime: Variant, mtime: Variant) -> None:
    engine.set_times_at(desc, path_flags, path, atime, mtime)


@_method("link-at")
async def link_at(cx: StoreState, desc: Descriptor, old_flags: set[str], old_path: str, new_desc: Descriptor, new_path: str) -> None:
    engine.link_at(desc, old_flags, old_path, new_desc, new_path)


@_method("open-at")
async def open_at(cx: StoreState, desc: Descriptor, path_flags: set[str], path: str, open_flags: set[str], flags: set[str]) -> Descriptor:
    return engine.open_at(desc, path_flags, path, open_flags, flags)


@_method("readlink-at")
async def readlink_at(cx: StoreState, desc: Descriptor, path: str) -> str:
    return engine.readlink_at(desc, path)


@_method("remove-directory-at")
async def remove_directory_at(cx: StoreState, desc: Descriptor, path: str) -> None:
    engine.remove_directory_at(desc, path)


@_method("rename-at")
async def rename_at(cx: StoreState, desc: Descriptor, old_path: str, new_desc: Descriptor, new_path: str) -> None:
    engine.rename_at(desc, old_path, new_desc, new_path)


@_method("symlink-at")
async def symlink_at(cx: StoreState, desc: Descriptor, old_path: str, new_path: str) -> None:
    engine.symlink_at(desc, old_path, new_path)


@_method("unlink-file-at")
async def unlink_file_at(cx: StoreState, desc: Descriptor, path: str) -> None:
    engine.unlink_file_at(desc, path)


@types_iface.func("[method]descriptor.is-same-object")
async def is_same_object(cx: StoreState, desc: Descriptor, other: Descriptor) -> bool:
    return engine.is_same_object(desc, other)


@_method("metadata-hash")
async def metadata_hash(cx: StoreState, desc: Descriptor) -> dict[str, int]:
    return engine.metadata_hash(desc)


@_method("metadata-hash-at")
async def metadata_hash_at(cx: StoreState, desc: Descriptor, path_flags: set[str], path: str) -> dict[str, int]:
    return engine.metadata_hash_at(desc, path_flags, path)


@preopens_iface.func("get-directories")
def get_directories(cx: StoreState) -> list[tuple[Descriptor, str]]:
    return engine.preopened_directories(cx, Descriptor)


INTERFACES = (types_iface, preopens_iface)
__all__ = ["Descriptor", "INTERFACES", "descriptor_type", "error_code"]
