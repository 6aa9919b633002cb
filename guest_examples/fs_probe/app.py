"""Filesystem probe guest: calls wasi:filesystem directly (not through libc) so the host's
answers are seen exactly. Subcommands (argv[1]):

  escape            try to reach outside the first preopen in many ways; one line per try
  readonly          try to change the first (read-only) preopen; one line per try
  write-large NAME MIB   write NAME with MIB MiB of the shared pattern, print its sha256
  read-large NAME   read NAME through a stream, print "SIZE SHA256"
  fds N             open N descriptors, drop them, open N again and exit holding them
  errors            error codes of ordinary failures (no-entry, exist, not-empty, ...)

Lines are "label: ok" or "label: error-code".
"""

import hashlib
import sys

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import preopens, streams
from wit_world.imports.types import Descriptor, DescriptorFlags, OpenFlags, PathFlags, NewTimestamp_Now

FOLLOW = PathFlags.SYMLINK_FOLLOW
NOFOLLOW = PathFlags(0)
READ = DescriptorFlags.READ
WRITE = DescriptorFlags.WRITE
NONE = OpenFlags(0)


def say(line: str) -> None:
    print(line, flush=True)


def code_of(e: Err) -> str:
    value = e.value
    return value.name.lower().replace("_", "-") if hasattr(value, "name") else repr(value)


def attempt(label: str, action) -> object:
    try:
        result = action()
    except Err as e:
        say(f"{label}: {code_of(e)}")
        return None
    say(f"{label}: ok")
    return result


def drop(resource) -> None:
    resource.__exit__(None, None, None)


def first_dir() -> Descriptor:
    return preopens.get_directories()[0][0]


def pattern_chunk(i: int) -> bytes:
    # 64 KiB, different for every index: the host recomputes it to check the file.
    return hashlib.sha256(i.to_bytes(8, "little")).digest() * 2048


def escape() -> None:
    root = first_dir()
    o = lambda flags, path, oflags=NONE, dflags=READ: lambda: root.open_at(flags, path, oflags, dflags)
    attempt("dotdot", o(FOLLOW, "../outside/secret.txt"))
    attempt("dotdot-deep", o(FOLLOW, "sub/../../outside/secret.txt"))
    attempt("dotdot-etc", o(FOLLOW, "../../../../../../etc/passwd"))
    attempt("absolute", o(FOLLOW, "/etc/passwd"))
    attempt("absolute-stat", lambda: root.stat_at(FOLLOW, "/etc"))
    attempt("host-symlink-to-root", o(FOLLOW, "to_root/etc/passwd"))
    attempt("host-symlink-to-root-stat", lambda: root.stat_at(FOLLOW, "to_root"))
    attempt("host-symlink-trailing-slash-stat", lambda: root.stat_at(NOFOLLOW, "to_root/"))
    attempt("host-symlink-readlink", lambda: root.readlink_at("to_root"))
    attempt("host-symlink-chain", o(FOLLOW, "chain_a"))
    attempt("host-symlink-chain-dir", o(FOLLOW, "chain_a/secret.txt"))
    # symlinks the guest makes itself
    attempt("make-absolute-symlink", lambda: root.symlink_at("/etc", "guest_abs"))
    attempt("make-relative-symlink", lambda: root.symlink_at("../outside", "guest_out"))
    attempt("guest-symlink-open", o(FOLLOW, "guest_out/secret.txt"))
    attempt("guest-symlink-write", o(FOLLOW, "guest_out/secret.txt", OpenFlags.TRUNCATE, WRITE))
    attempt("make-dangling-symlink", lambda: root.symlink_at("../outside/created.txt", "guest_dangling"))
    attempt("dangling-create", o(FOLLOW, "guest_dangling", OpenFlags.CREATE, WRITE))
    attempt("guest-symlink-mkdir", lambda: root.create_directory_at("guest_out/newdir"))
    attempt("guest-symlink-unlink", lambda: root.unlink_file_at("guest_out/secret.txt"))
    attempt("guest-symlink-set-times", lambda: root.set_times_at(FOLLOW, "guest_out/secret.txt", NewTimestamp_Now(), NewTimestamp_Now()))
    attempt("guest-symlink-stat", lambda: root.stat_at(FOLLOW, "guest_out/secret.txt"))
    attempt("guest-symlink-hash", lambda: root.metadata_hash_at(FOLLOW, "guest_out/secret.txt"))
    # hard links and renames
    attempt("hardlink-dotdot", lambda: root.link_at(NOFOLLOW, "../outside/secret.txt", root, "hard"))
    attempt("make-file-symlink", lambda: root.symlink_at("../outside/secret.txt", "guest_secret"))
    attempt("hardlink-through-symlink", lambda: root.link_at(FOLLOW, "guest_secret", root, "hard2"))
    attempt("hardlink-to-outside", lambda: root.link_at(NOFOLLOW, "inside.txt", root, "../outside/hard3"))
    attempt("rename-dir-out", lambda: root.rename_at("sub", root, "../outside/moved"))
    attempt("rename-dir-through-symlink", lambda: root.rename_at("sub", root, "guest_out/moved"))
    attempt("rename-in-from-outside", lambda: root.rename_at("../outside/secret.txt", root, "stolen"))
    attempt("mkdir-dotdot", lambda: root.create_directory_at("../newdir"))
    attempt("rmdir-dotdot", lambda: root.remove_directory_at(".."))
    attempt("unlink-dotdot", lambda: root.unlink_file_at("../outside/secret.txt"))
    # a subdirectory's descriptor is a sandbox of its own
    sub = root.open_at(FOLLOW, "sub", OpenFlags.DIRECTORY, READ)
    attempt("sub-dotdot-sibling", lambda: sub.open_at(FOLLOW, "../inside.txt", NONE, READ))
    attempt("sub-dotdot-outside", lambda: sub.open_at(FOLLOW, "../../outside/secret.txt", NONE, READ))
    drop(sub)
    # what must still work
    attempt("inside-read", o(FOLLOW, "inside.txt"))
    attempt("inside-dotdot", o(FOLLOW, "sub/../inside.txt"))
    attempt("inside-symlink", o(FOLLOW, "to_inside"))


def readonly() -> None:
    root = first_dir()
    say(f"flags: {sorted(f.name.lower() for f in DescriptorFlags if f in root.get_flags())}")
    f = attempt("open-read", lambda: root.open_at(FOLLOW, "data.txt", NONE, READ))
    if f is not None:
        data, _ = f.read(100, 0)
        say(f"content: {data.decode()}")
        attempt("write-via-stream", lambda: f.write_via_stream(0))
        attempt("pwrite", lambda: f.write(b"x", 0))
        attempt("set-size", lambda: f.set_size(0))
        attempt("set-times", lambda: f.set_times(NewTimestamp_Now(), NewTimestamp_Now()))
    attempt("open-write", lambda: root.open_at(FOLLOW, "data.txt", NONE, READ | WRITE))
    attempt("open-create", lambda: root.open_at(FOLLOW, "new.txt", OpenFlags.CREATE, READ | WRITE))
    attempt("open-truncate", lambda: root.open_at(FOLLOW, "data.txt", OpenFlags.TRUNCATE, WRITE))
    attempt("mkdir", lambda: root.create_directory_at("newdir"))
    attempt("rmdir", lambda: root.remove_directory_at("sub"))
    attempt("unlink", lambda: root.unlink_file_at("data.txt"))
    attempt("rename", lambda: root.rename_at("data.txt", root, "renamed.txt"))
    attempt("symlink", lambda: root.symlink_at("data.txt", "link"))
    attempt("hardlink", lambda: root.link_at(NOFOLLOW, "data.txt", root, "hard"))
    attempt("set-times-at", lambda: root.set_times_at(FOLLOW, "data.txt", NewTimestamp_Now(), NewTimestamp_Now()))
    sub = root.open_at(FOLLOW, "sub", OpenFlags.DIRECTORY, READ | DescriptorFlags.MUTATE_DIRECTORY)
    say(f"sub-flags: {sorted(f.name.lower() for f in DescriptorFlags if f in sub.get_flags())}")
    attempt("sub-create", lambda: sub.open_at(FOLLOW, "new.txt", OpenFlags.CREATE, WRITE))
    attempt("sub-list", lambda: [sub.read_directory().read_directory_entry()])


def write_large(name: str, mib: int) -> None:
    root = first_dir()
    f = root.open_at(FOLLOW, name, OpenFlags.CREATE | OpenFlags.TRUNCATE, WRITE)
    out = f.write_via_stream(0)
    digest = hashlib.sha256()
    for i in range(mib * 16):
        chunk = memoryview(pattern_chunk(i))
        digest.update(chunk)
        while chunk:
            permit = out.check_write()
            if permit == 0:
                out.subscribe().block()
                continue
            out.write(bytes(chunk[:permit]))
            chunk = chunk[permit:]
    out.blocking_flush()
    drop(out)
    drop(f)
    say(digest.hexdigest())


def read_large(name: str) -> None:
    root = first_dir()
    f = root.open_at(FOLLOW, name, NONE, READ)
    stream = f.read_via_stream(0)
    digest, size = hashlib.sha256(), 0
    while True:
        try:
            data = stream.blocking_read(1 << 20)
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise
        digest.update(data)
        size += len(data)
    drop(stream)
    drop(f)
    say(f"{size} {digest.hexdigest()}")


def fds(n: int) -> None:
    root = first_dir()
    held = [root.open_at(FOLLOW, "inside.txt", NONE, READ) for _ in range(n)]
    say("opened")
    for d in held:
        drop(d)
    say("dropped")
    held = [root.open_at(FOLLOW, "inside.txt", NONE, READ) for _ in range(n)]
    streams_held = [d.read_via_stream(0) for d in held]
    entries = [root.read_directory() for _ in range(n)]
    say("holding")


def errors() -> None:
    root = first_dir()
    attempt("missing", lambda: root.open_at(FOLLOW, "missing.txt", NONE, READ))
    attempt("exclusive-exists", lambda: root.open_at(FOLLOW, "inside.txt", OpenFlags.CREATE | OpenFlags.EXCLUSIVE, WRITE))
    attempt("dir-of-file", lambda: root.open_at(FOLLOW, "inside.txt", OpenFlags.DIRECTORY, READ))
    attempt("rmdir-nonempty", lambda: root.remove_directory_at("sub"))
    attempt("unlink-dir", lambda: root.unlink_file_at("sub"))
    attempt("nofollow-symlink", lambda: root.open_at(NOFOLLOW, "to_inside", NONE, READ))
    attempt("empty-path", lambda: root.stat_at(FOLLOW, ""))
    attempt("readlink", lambda: say("readlink -> " + root.readlink_at("to_inside")))
    names = []
    entries = root.read_directory()
    while (entry := entries.read_directory_entry()) is not None:
        names.append(f"{entry.name}={entry.type.name.lower().replace('_', '-')}")
    say("entries: " + " ".join(sorted(names)))
    f = root.open_at(FOLLOW, "inside.txt", NONE, READ)
    st = f.stat()
    say(f"stat: {st.type.name.lower().replace('_', '-')} size={st.size} links={st.link_count}")
    same = root.open_at(FOLLOW, "sub/../inside.txt", NONE, READ)
    say(f"same-object: {f.is_same_object(same)} {f.metadata_hash() == root.metadata_hash_at(FOLLOW, 'inside.txt')}")
    say(f"different-object: {f.is_same_object(root)}")


class Run(exports.Run):
    def run(self) -> None:
        command, args = sys.argv[1], sys.argv[2:]
        if command == "escape":
            escape()
        elif command == "readonly":
            readonly()
        elif command == "write-large":
            write_large(args[0], int(args[1]))
        elif command == "read-large":
            read_large(args[0])
        elif command == "fds":
            fds(int(args[0]))
        elif command == "errors":
            errors()
        else:
            raise SystemExit(f"unknown command {command!r}")
