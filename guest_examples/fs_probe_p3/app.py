"""Filesystem probe guest for WASI 0.3 (the counterpart of fs_probe): calls
wasi:filesystem@0.3.0 directly so the host's answers are seen exactly (world filesystem-p3:
componentize-py's own runtime does stdio and arguments through WASI 0.2). Subcommands
(argv[1]):

  escape            try to reach outside the first preopen in many ways; one line per try
  readonly          try to change the first (read-only) preopen; one line per try
  write-large NAME MIB   write NAME with MIB MiB of the shared pattern (write-via-stream), print its sha256
  read-large NAME   read NAME through read-via-stream, print "SIZE SHA256"
  fds N             open N descriptors, drop them, open N again and exit holding them and their streams
  errors            error codes of ordinary failures (no-entry, exist, not-empty, ...)
  streams           read/write/append streams and directory streams, including their failures
  stream-on-directory   read-via-stream on a directory (a line, or a trap)
  drop-early        drop a read stream before its end, then read its future

Lines are "label: ok" or "label: error-code".
"""

import hashlib
import sys

import wit_world
from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import preopens
from wit_world.imports.wasi_filesystem_types import (
    Advice, Descriptor, DescriptorFlags, NewTimestamp_Now, OpenFlags, PathFlags,
)

FOLLOW = PathFlags.SYMLINK_FOLLOW
NOFOLLOW = PathFlags(0)
READ = DescriptorFlags.READ
WRITE = DescriptorFlags.WRITE
NONE = OpenFlags(0)


def say(line: str) -> None:
    print(line, flush=True)


def name_of(value: object) -> str:
    """ErrorCode_NoEntry() -> "no-entry" (and the same for descriptor types)."""
    cls = type(value).__name__
    case = cls.split("_", 1)[1] if "_" in cls else cls
    return "".join("-" + c.lower() if c.isupper() else c for c in case).lstrip("-")


async def attempt(label: str, action) -> object:
    try:
        result = await action()
    except Err as e:
        say(f"{label}: {name_of(e.value)}")
        return None
    say(f"{label}: ok")
    return result


def outcome(result: object) -> str:
    if isinstance(result, Err):
        return name_of(result.value)
    if isinstance(result, Ok) or result is None:
        return "ok"
    return repr(result)


def drop(resource) -> None:
    resource.__exit__(None, None, None)


def first_dir() -> Descriptor:
    return preopens.get_directories()[0][0]


def pattern_chunk(i: int) -> bytes:
    # 64 KiB, different for every index (the same pattern as fs_probe).
    return hashlib.sha256(i.to_bytes(8, "little")).digest() * 2048


async def read_all(desc: Descriptor, offset: int = 0, chunk: int = 1 << 16) -> tuple[bytes, str]:
    """Everything read-via-stream gives from ``offset``, and what its future says."""
    rx, done = desc.read_via_stream(offset)
    parts = []
    with rx:
        while not rx.writer_dropped:
            parts.append(await rx.read(chunk))
    return b"".join(parts), outcome(await done.read())


async def write_all(start, data: bytes) -> str:
    """Write ``data`` through a stream given to ``start`` (write- or append-via-stream)."""
    tx, rx = wit_world.byte_stream()
    done = start(rx)
    with tx:
        await tx.write_all(data)
    return outcome(await done.read())


async def list_dir(desc: Descriptor) -> tuple[list[str], str]:
    entries, done = desc.read_directory()
    names = []
    with entries:
        while not entries.writer_dropped:
            for entry in await entries.read(4):
                names.append(f"{entry.name}={name_of(entry.type)}")
    return sorted(names), outcome(await done.read())


async def escape() -> None:
    root = first_dir()

    def o(flags, path, oflags=NONE, dflags=READ):
        return lambda: root.open_at(flags, path, oflags, dflags)

    await attempt("dotdot", o(FOLLOW, "../outside/secret.txt"))
    await attempt("dotdot-deep", o(FOLLOW, "sub/../../outside/secret.txt"))
    await attempt("dotdot-etc", o(FOLLOW, "../../../../../../etc/passwd"))
    await attempt("absolute", o(FOLLOW, "/etc/passwd"))
    await attempt("absolute-stat", lambda: root.stat_at(FOLLOW, "/etc"))
    await attempt("host-symlink-to-root", o(FOLLOW, "to_root/etc/passwd"))
    await attempt("host-symlink-to-root-stat", lambda: root.stat_at(FOLLOW, "to_root"))
    await attempt("host-symlink-trailing-slash-stat", lambda: root.stat_at(NOFOLLOW, "to_root/"))
    await attempt("host-symlink-readlink", lambda: root.readlink_at("to_root"))
    await attempt("host-symlink-chain", o(FOLLOW, "chain_a"))
    await attempt("host-symlink-chain-dir", o(FOLLOW, "chain_a/secret.txt"))
    await attempt("make-absolute-symlink", lambda: root.symlink_at("/etc", "guest_abs"))
    await attempt("make-relative-symlink", lambda: root.symlink_at("../outside", "guest_out"))
    await attempt("guest-symlink-open", o(FOLLOW, "guest_out/secret.txt"))
    await attempt("guest-symlink-write", o(FOLLOW, "guest_out/secret.txt", OpenFlags.TRUNCATE, WRITE))
    await attempt("make-dangling-symlink", lambda: root.symlink_at("../outside/created.txt", "guest_dangling"))
    await attempt("dangling-create", o(FOLLOW, "guest_dangling", OpenFlags.CREATE, WRITE))
    await attempt("guest-symlink-mkdir", lambda: root.create_directory_at("guest_out/newdir"))
    await attempt("guest-symlink-unlink", lambda: root.unlink_file_at("guest_out/secret.txt"))
    await attempt("guest-symlink-set-times",
                  lambda: root.set_times_at(FOLLOW, "guest_out/secret.txt", NewTimestamp_Now(), NewTimestamp_Now()))
    await attempt("guest-symlink-stat", lambda: root.stat_at(FOLLOW, "guest_out/secret.txt"))
    await attempt("guest-symlink-hash", lambda: root.metadata_hash_at(FOLLOW, "guest_out/secret.txt"))
    await attempt("hardlink-dotdot", lambda: root.link_at(NOFOLLOW, "../outside/secret.txt", root, "hard"))
    await attempt("make-file-symlink", lambda: root.symlink_at("../outside/secret.txt", "guest_secret"))
    await attempt("hardlink-through-symlink", lambda: root.link_at(FOLLOW, "guest_secret", root, "hard2"))
    await attempt("hardlink-to-outside", lambda: root.link_at(NOFOLLOW, "inside.txt", root, "../outside/hard3"))
    await attempt("rename-dir-out", lambda: root.rename_at("sub", root, "../outside/moved"))
    await attempt("rename-dir-through-symlink", lambda: root.rename_at("sub", root, "guest_out/moved"))
    await attempt("rename-in-from-outside", lambda: root.rename_at("../outside/secret.txt", root, "stolen"))
    await attempt("mkdir-dotdot", lambda: root.create_directory_at("../newdir"))
    await attempt("rmdir-dotdot", lambda: root.remove_directory_at(".."))
    await attempt("unlink-dotdot", lambda: root.unlink_file_at("../outside/secret.txt"))
    await attempt("open-dotdot-dir", o(FOLLOW, "..", OpenFlags.DIRECTORY))
    sub = await root.open_at(FOLLOW, "sub", OpenFlags.DIRECTORY, READ)
    await attempt("sub-dotdot-sibling", lambda: sub.open_at(FOLLOW, "../inside.txt", NONE, READ))
    await attempt("sub-dotdot-outside", lambda: sub.open_at(FOLLOW, "../../outside/secret.txt", NONE, READ))
    drop(sub)
    await attempt("inside-read", o(FOLLOW, "inside.txt"))
    await attempt("inside-dotdot", o(FOLLOW, "sub/../inside.txt"))
    await attempt("inside-symlink", o(FOLLOW, "to_inside"))


async def readonly() -> None:
    root = first_dir()
    flags = await root.get_flags()
    say(f"flags: {sorted(f.name.lower() for f in DescriptorFlags if f in flags)}")
    f = await attempt("open-read", lambda: root.open_at(FOLLOW, "data.txt", NONE, READ))
    if f is not None:
        data, result = await read_all(f)
        say(f"content: {data.decode()} ({result})")
        say(f"write-via-stream: {await write_all(lambda rx: f.write_via_stream(rx, 0), b'x')}")
        say(f"append-via-stream: {await write_all(f.append_via_stream, b'x')}")
        await attempt("set-size", lambda: f.set_size(0))
        await attempt("set-times", lambda: f.set_times(NewTimestamp_Now(), NewTimestamp_Now()))
    await attempt("open-write", lambda: root.open_at(FOLLOW, "data.txt", NONE, READ | WRITE))
    await attempt("open-create", lambda: root.open_at(FOLLOW, "new.txt", OpenFlags.CREATE, READ | WRITE))
    await attempt("open-truncate", lambda: root.open_at(FOLLOW, "data.txt", OpenFlags.TRUNCATE, WRITE))
    await attempt("mkdir", lambda: root.create_directory_at("newdir"))
    await attempt("rmdir", lambda: root.remove_directory_at("sub"))
    await attempt("unlink", lambda: root.unlink_file_at("data.txt"))
    await attempt("rename", lambda: root.rename_at("data.txt", root, "renamed.txt"))
    await attempt("symlink", lambda: root.symlink_at("data.txt", "link"))
    await attempt("hardlink", lambda: root.link_at(NOFOLLOW, "data.txt", root, "hard"))
    await attempt("set-times-at", lambda: root.set_times_at(FOLLOW, "data.txt", NewTimestamp_Now(), NewTimestamp_Now()))
    sub = await root.open_at(FOLLOW, "sub", OpenFlags.DIRECTORY, READ | DescriptorFlags.MUTATE_DIRECTORY)
    flags = await sub.get_flags()
    say(f"sub-flags: {sorted(f.name.lower() for f in DescriptorFlags if f in flags)}")
    await attempt("sub-create", lambda: sub.open_at(FOLLOW, "new.txt", OpenFlags.CREATE, WRITE))
    names, result = await list_dir(sub)
    say(f"sub-list: {result} {' '.join(names)}")


async def write_large(name: str, mib: int) -> None:
    root = first_dir()
    f = await root.open_at(FOLLOW, name, OpenFlags.CREATE | OpenFlags.TRUNCATE, WRITE)
    tx, rx = wit_world.byte_stream()
    done = f.write_via_stream(rx, 0)
    digest = hashlib.sha256()
    with tx:
        for i in range(mib * 16):
            chunk = pattern_chunk(i)
            digest.update(chunk)
            await tx.write_all(chunk)
    result = outcome(await done.read())
    drop(f)
    say(digest.hexdigest() if result == "ok" else f"write failed: {result}")


async def read_large(name: str) -> None:
    root = first_dir()
    f = await root.open_at(FOLLOW, name, NONE, READ)
    rx, done = f.read_via_stream(0)
    digest, size = hashlib.sha256(), 0
    with rx:
        while not rx.writer_dropped:
            data = await rx.read(1 << 20)
            digest.update(data)
            size += len(data)
    result = outcome(await done.read())
    drop(f)
    say(f"{size} {digest.hexdigest()}" if result == "ok" else f"read failed: {result}")


HELD: list = []


async def fds(n: int) -> None:
    root = first_dir()
    held = [await root.open_at(FOLLOW, "inside.txt", NONE, READ) for _ in range(n)]
    say("opened")
    for d in held:
        drop(d)
    say("dropped")
    held = [await root.open_at(FOLLOW, "inside.txt", NONE, READ) for _ in range(n)]
    HELD.extend(held)
    HELD.extend(d.read_via_stream(0) for d in held)
    HELD.extend(root.read_directory() for _ in range(n))
    say("holding")


async def errors() -> None:
    root = first_dir()
    await attempt("missing", lambda: root.open_at(FOLLOW, "missing.txt", NONE, READ))
    await attempt("exclusive-exists", lambda: root.open_at(FOLLOW, "inside.txt", OpenFlags.CREATE | OpenFlags.EXCLUSIVE, WRITE))
    await attempt("dir-of-file", lambda: root.open_at(FOLLOW, "inside.txt", OpenFlags.DIRECTORY, READ))
    await attempt("rmdir-nonempty", lambda: root.remove_directory_at("sub"))
    await attempt("unlink-dir", lambda: root.unlink_file_at("sub"))
    await attempt("nofollow-symlink", lambda: root.open_at(NOFOLLOW, "to_inside", NONE, READ))
    await attempt("empty-path", lambda: root.stat_at(FOLLOW, ""))
    say("readlink -> " + await root.readlink_at("to_inside"))
    names, result = await list_dir(root)
    say(f"entries: {result} " + " ".join(names))
    f = await root.open_at(FOLLOW, "inside.txt", NONE, READ)
    st = await f.stat()
    say(f"stat: {name_of(st.type)} size={st.size} links={st.link_count} times={st.data_modification_timestamp is not None}")
    say(f"type: {name_of(await f.get_type())} {name_of(await root.get_type())}")
    same = await root.open_at(FOLLOW, "sub/../inside.txt", NONE, READ)
    say(f"same-object: {await f.is_same_object(same)} {await f.metadata_hash() == await root.metadata_hash_at(FOLLOW, 'inside.txt')}")
    say(f"different-object: {await f.is_same_object(root)}")
    await attempt("file-as-directory", lambda: f.open_at(FOLLOW, "x", NONE, READ))
    await attempt("file-stat-at", lambda: f.stat_at(FOLLOW, "x"))
    await attempt("dir-set-size", lambda: root.set_size(0))
    await attempt("file-sync", lambda: f.sync())
    await attempt("dir-advise", lambda: root.advise(0, 0, Advice.NORMAL))


async def streams() -> None:
    root = first_dir()
    f = await root.open_at(FOLLOW, "rw.txt", OpenFlags.CREATE | OpenFlags.TRUNCATE, READ | WRITE)
    say(f"write: {await write_all(lambda rx: f.write_via_stream(rx, 0), b'hello world')}")
    say(f"write-past-end: {await write_all(lambda rx: f.write_via_stream(rx, 16), b'!')}")
    say(f"append: {await write_all(f.append_via_stream, b'+tail')}")
    data, result = await read_all(f)
    say(f"read: {result} {data!r}")
    data, result = await read_all(f, 6, chunk=2)
    say(f"read-offset: {result} {data!r}")
    data, result = await read_all(f, 1000)
    say(f"read-past-end: {result} {data!r}")
    # two streams of one file, read in turns
    a, a_done = f.read_via_stream(0)
    b, b_done = f.read_via_stream(6)
    say(f"interleaved: {await a.read(5)!r} {await b.read(5)!r} {await a.read(1)!r}")
    drop(a)
    drop(b)
    say(f"interleaved-results: {outcome(await a_done.read())} {outcome(await b_done.read())}")
    # a stream outlives its descriptor
    g = await root.open_at(FOLLOW, "rw.txt", NONE, READ)
    rx, done = g.read_via_stream(0)
    drop(g)
    parts = []
    with rx:
        while not rx.writer_dropped:
            parts.append(await rx.read(4))
    say(f"after-descriptor-drop: {outcome(await done.read())} {b''.join(parts)!r}")
    # a write stream outlives its descriptor too
    h = await root.open_at(FOLLOW, "rw.txt", NONE, WRITE)
    tx, rx = wit_world.byte_stream()
    done = h.write_via_stream(rx, 0)
    drop(h)
    with tx:
        await tx.write_all(b"HELLO")
    say(f"write-after-descriptor-drop: {outcome(await done.read())}")
    data, result = await read_all(f)
    say(f"read-back: {result} {data!r}")
    # wrong kinds of descriptor
    w = await root.open_at(FOLLOW, "rw.txt", NONE, WRITE)
    data, result = await read_all(w)
    say(f"read-write-only: {result} {data!r}")
    r = await root.open_at(FOLLOW, "rw.txt", NONE, READ)
    say(f"write-read-only: {await write_all(lambda rx: r.write_via_stream(rx, 0), b'no')}")
    say(f"append-read-only: {await write_all(r.append_via_stream, b'no')}")
    names, result = await list_dir(r)
    say(f"read-directory-of-file: {result} {names}")
    await root.create_directory_at("listed")
    for name in ("b", "a", "c"):
        drop(await root.open_at(FOLLOW, f"listed/{name}", OpenFlags.CREATE, WRITE))
    await root.create_directory_at("listed/d")
    await root.symlink_at("a", "listed/l")
    listed = await root.open_at(FOLLOW, "listed", OpenFlags.DIRECTORY, READ)
    names, result = await list_dir(listed)
    say(f"read-directory: {result} {' '.join(names)}")
    await root.create_directory_at("many")
    many = await root.open_at(FOLLOW, "many", OpenFlags.DIRECTORY, READ | DescriptorFlags.MUTATE_DIRECTORY)
    for i in range(300):
        drop(await many.open_at(FOLLOW, f"entry-{i:03}-" + "x" * 40, OpenFlags.CREATE, WRITE))
    names, result = await list_dir(many)
    say(f"read-directory-many: {result} {len(names)} {names[0]} {names[-1]}")
    # a directory stream dropped half way
    entries, done = many.read_directory()
    first = await entries.read(3)
    drop(entries)
    say(f"directory-dropped-early: {len(first)} {outcome(await done.read())}")


async def stream_on_directory() -> None:
    root = first_dir()
    data, result = await read_all(root)
    say(f"read-via-stream-directory: {result} {data!r}")
    say(f"write-via-stream-directory: {await write_all(lambda rx: root.write_via_stream(rx, 0), b'x')}")


async def drop_early() -> None:
    root = first_dir()
    f = await root.open_at(FOLLOW, "inside.txt", NONE, READ)
    rx, done = f.read_via_stream(0)
    first = await rx.read(2)
    drop(rx)
    say(f"dropped-early: {first!r} {outcome(await done.read())}")


COMMANDS = {
    "escape": escape, "readonly": readonly, "errors": errors, "streams": streams,
    "stream-on-directory": stream_on_directory, "drop-early": drop_early,
}


class Run(exports.Run):
    async def run(self) -> None:
        command, args = sys.argv[1], sys.argv[2:]
        if command == "write-large":
            await write_large(args[0], int(args[1]))
        elif command == "read-large":
            await read_large(args[0])
        elif command == "fds":
            await fds(int(args[0]))
        elif command in COMMANDS:
            await COMMANDS[command]()
        else:
            say(f"unknown command {command!r}")
            raise Err(None)
