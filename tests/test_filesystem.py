"""wasi:filesystem: the sandbox (escapes fail and touch nothing outside), read-only
preopens, large files through streams, descriptor lifetimes, error codes, and the CLI.

Guest-side checks use guest_examples/fs_probe (which calls wasi:filesystem directly and
prints one "label: result" line per attempt); the resolver is also tested directly, in
both its openat2 and its component-by-component form.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import open_fds
from wasi_tls_host.wasi import sandbox
from wasi_tls_host.wasi.filesystem import Preopen


def results(out: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def snapshot(root: Path) -> dict[str, tuple[str, bytes | str, int]]:
    """Everything observable about a tree: kinds, contents, link targets, mtimes."""
    seen: dict[str, tuple[str, bytes | str, int]] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            seen[rel] = ("link", os.readlink(path), st.st_mtime_ns)
        elif path.is_dir():
            seen[rel] = ("dir", "", st.st_mtime_ns)
        else:
            seen[rel] = ("file", path.read_bytes(), st.st_mtime_ns)
    return seen


@pytest.fixture
def jail(tmp_path: Path) -> tuple[Path, Path]:
    """tmp/sandbox (to be preopened) next to tmp/outside (must stay untouched)."""
    inside, outside = tmp_path / "sandbox", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (inside / "inside.txt").write_text("inside")
    (inside / "sub").mkdir()
    (inside / "sub" / "keep.txt").write_text("keep")
    os.symlink("/", inside / "to_root")
    os.symlink("inside.txt", inside / "to_inside")
    # a chain whose last hop leaves: chain_a -> chain_b -> chain_c -> ../outside
    os.symlink("chain_b", inside / "chain_a")
    os.symlink("chain_c", inside / "chain_b")
    os.symlink("../outside", inside / "chain_c")
    return inside, outside


@pytest.fixture(params=["openat2", "walk"])
def resolver(request, monkeypatch):
    if request.param == "openat2" and not sandbox.HAVE_OPENAT2:
        pytest.skip("kernel without openat2")
    monkeypatch.setattr(sandbox, "use_openat2", request.param == "openat2")
    return request.param


ESCAPES = [
    "dotdot", "dotdot-deep", "dotdot-etc", "absolute", "absolute-stat",
    "host-symlink-to-root", "host-symlink-to-root-stat", "host-symlink-trailing-slash-stat",
    "host-symlink-readlink", "host-symlink-chain", "host-symlink-chain-dir",
    "make-absolute-symlink", "guest-symlink-open", "guest-symlink-write", "dangling-create",
    "guest-symlink-mkdir", "guest-symlink-unlink", "guest-symlink-set-times", "guest-symlink-stat",
    "guest-symlink-hash", "hardlink-dotdot", "hardlink-through-symlink", "hardlink-to-outside",
    "rename-dir-out", "rename-dir-through-symlink", "rename-in-from-outside", "mkdir-dotdot",
    "rmdir-dotdot", "unlink-dotdot", "sub-dotdot-sibling", "sub-dotdot-outside",
]


def test_escape_attempts_fail_and_touch_nothing_outside(run_guest, jail, resolver) -> None:
    inside, outside = jail
    before = snapshot(outside)
    run = run_guest("fs_probe", "escape", preopens=[Preopen(str(inside), "/sandbox")])
    assert run.exit_code == 0, run.err + (run.trap or "")
    got = results(run.out)
    for label in ESCAPES:
        assert got.get(label) in ("not-permitted", "access"), f"{label}: {got.get(label)}\n{run.out}"
    # relative symlinks may be made (following them is what is refused) ...
    assert got["make-relative-symlink"] == "ok"
    assert got["make-dangling-symlink"] == "ok"
    # ... and ordinary paths still work, including ".." that stays inside
    assert got["inside-read"] == got["inside-dotdot"] == got["inside-symlink"] == "ok"
    assert snapshot(outside) == before
    assert not (outside / "created.txt").exists() and not (outside / "moved").exists()
    assert (inside / "sub" / "keep.txt").read_text() == "keep"


def test_readonly_preopen_refuses_every_change(run_guest, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("read me")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_text("f")
    before = snapshot(tmp_path)
    run = run_guest("fs_probe", "readonly", preopens=[Preopen(str(tmp_path), "/ro", read_only=True)])
    assert run.exit_code == 0, run.err + (run.trap or "")
    got = results(run.out)
    assert got["flags"] == "['read']"
    assert got["sub-flags"] == "['read']"  # children of a read-only directory are read-only
    assert got["open-read"] == "ok" and got["content"] == "read me"
    assert got["sub-list"] == "ok"
    for label in ["open-write", "open-create", "open-truncate", "mkdir", "rmdir", "unlink", "rename",
                  "symlink", "hardlink", "set-times-at", "sub-create"]:
        assert got[label] == "read-only", f"{label}: {got[label]}"
    # the file was opened for reading only: writes through it are refused as on POSIX
    for label in ["write-via-stream", "pwrite", "set-size", "set-times"]:
        assert got[label] == "bad-descriptor", f"{label}: {got[label]}"
    assert snapshot(tmp_path) == before


def test_same_directory_writable_when_not_readonly(run_guest, tmp_path: Path) -> None:
    """The read-only test's refusals come from the flag, not from the directory."""
    (tmp_path / "data.txt").write_text("read me")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_text("f")  # keeps rmdir from removing it
    run = run_guest("fs_probe", "readonly", preopens=[Preopen(str(tmp_path), "/rw")])
    got = results(run.out)
    assert got["mkdir"] == "ok" and got["open-create"] == "ok" and got["sub-create"] == "ok"
    assert (tmp_path / "newdir").is_dir()


def _pattern_sha256(mib: int) -> str:
    digest = hashlib.sha256()
    for i in range(mib * 16):
        digest.update(hashlib.sha256(i.to_bytes(8, "little")).digest() * 2048)
    return digest.hexdigest()


@pytest.mark.slow
def test_large_file_streams_both_ways(run_guest, tmp_path: Path) -> None:
    mib = 100
    expected = _pattern_sha256(mib)
    preopen = [Preopen(str(tmp_path), "/data")]
    wrote = run_guest("fs_probe", "write-large", "big.bin", str(mib), preopens=preopen)
    assert wrote.exit_code == 0, wrote.err + (wrote.trap or "")
    assert wrote.out.strip() == expected
    big = tmp_path / "big.bin"
    assert big.stat().st_size == mib << 20
    with open(big, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == expected
    read = run_guest("fs_probe", "read-large", "big.bin", preopens=preopen)
    assert read.exit_code == 0, read.err + (read.trap or "")
    assert read.out.strip() == f"{mib << 20} {expected}"


def test_descriptors_closed_on_drop_and_at_instance_end(host, guest_path, tmp_path: Path) -> None:
    from wasi_tls_host import WasiConfig

    (tmp_path / "inside.txt").write_text("x")
    n = 200
    counts: dict[str, int] = {}

    def on_stdout(data: bytes) -> None:  # runs inside the guest's write: counts are live
        for line in data.decode().split():
            counts[line] = open_fds()

    # Warm up first: loading the component may keep host-wide descriptors (the compiled
    # artifact cache) open, which are not the guest's.
    host.run(guest_path("fs_probe"), WasiConfig(args=["fs_probe", "fds", "1"], preopens=[Preopen(str(tmp_path), "/d")]))
    baseline = open_fds()
    config = WasiConfig(args=["fs_probe", "fds", str(n)], stdout=on_stdout, preopens=[Preopen(str(tmp_path), "/d")])
    result = host.run(guest_path("fs_probe"), config)
    assert result.exit_code == 0, result.trap
    assert counts["opened"] >= baseline + n
    assert counts["dropped"] <= counts["opened"] - n  # dropping closed them
    assert counts["holding"] >= baseline + 2 * n  # descriptors and their streams
    assert open_fds() <= baseline  # the instance's end closed what the guest still held


def test_error_codes_and_metadata(run_guest, jail) -> None:
    inside, _ = jail
    run = run_guest("fs_probe", "errors", preopens=[Preopen(str(inside), "/s")])
    assert run.exit_code == 0, run.err + (run.trap or "")
    got = results(run.out)
    assert got["missing"] == "no-entry"
    assert got["exclusive-exists"] == "exist"
    assert got["dir-of-file"] == "not-directory"
    assert got["rmdir-nonempty"] == "not-empty"
    assert got["unlink-dir"] == "is-directory"
    assert got["nofollow-symlink"] == "loop"
    assert got["empty-path"] == "no-entry"
    assert "readlink -> inside.txt" in run.out.splitlines()
    assert "chain_a=symbolic-link" in got["entries"] and "sub=directory" in got["entries"]
    assert "inside.txt=regular-file" in got["entries"] and "." not in got["entries"].split()
    assert got["stat"] == "regular-file size=6 links=1"
    assert got["same-object"] == "True True"
    assert got["different-object"] == "False"


# --- the resolver itself, with and without openat2 ----------------------------------------


def _open(dirfd: int, path: str, flags: int = os.O_RDONLY, follow: bool = True) -> bytes:
    fd = sandbox.open_beneath(dirfd, path, flags | os.O_CLOEXEC, follow=follow)
    try:
        return os.read(fd, 100) if not flags & os.O_DIRECTORY else b"<dir>"
    finally:
        os.close(fd)


def test_resolver_refuses_escapes(resolver, jail) -> None:
    inside, outside = jail
    os.symlink("sub/../../outside/secret.txt", inside / "sneaky")
    os.symlink("../outside/new.txt", inside / "dangling")
    dirfd = os.open(inside, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path in ["..", "../outside/secret.txt", "/etc/passwd", "to_root/etc/passwd", "chain_a/secret.txt",
                     "sneaky", "sub/../../outside/secret.txt", "sub/../.."]:
            with pytest.raises(sandbox.Escape):
                _open(dirfd, path)
        with pytest.raises(sandbox.Escape):
            sandbox.open_beneath(dirfd, "dangling", os.O_CREAT | os.O_WRONLY)
        assert not (outside / "new.txt").exists()
        assert _open(dirfd, "sub/../inside.txt") == b"inside"
        assert _open(dirfd, "to_inside") == b"inside"
        assert _open(dirfd, "sub/./keep.txt") == b"keep"
        assert _open(dirfd, "sub/", os.O_DIRECTORY) == b"<dir>"
        with pytest.raises(OSError) as e:
            _open(dirfd, "to_inside", follow=False)
        assert e.value.errno == errno.ELOOP
        with pytest.raises(OSError) as e:
            _open(dirfd, "inside.txt/")
        assert e.value.errno == errno.ENOTDIR
        os.symlink("loop_b", inside / "loop_a")
        os.symlink("loop_a", inside / "loop_b")
        with pytest.raises(OSError) as e:
            _open(dirfd, "loop_a")
        assert e.value.errno == errno.ELOOP
    finally:
        os.close(dirfd)


def test_resolver_split_parent() -> None:
    assert sandbox.split_parent("a/b/c") == ("a/b", "c")
    assert sandbox.split_parent("a/b/c/") == ("a/b", "c/")
    assert sandbox.split_parent("c") == (".", "c")
    assert sandbox.split_parent("/c") == ("/", "c")  # the caller's resolver rejects "/"


# --- CLI ------------------------------------------------------------------------------------


def test_cli_dir_options(guest_path, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("read me")
    (tmp_path / "sub").mkdir()
    guest = str(guest_path("fs_probe"))
    # (not "-m wasi_tls_host.cli": as __main__ it would miss the registered option groups)
    cli = [sys.executable, "-c", "import sys; from wasi_tls_host.cli import main; sys.exit(main())", "run"]
    ro = subprocess.run([*cli, "--dir-readonly", f"{tmp_path}::/ro", guest, "readonly"], capture_output=True, text=True, timeout=120)
    assert ro.returncode == 0, ro.stderr
    assert results(ro.stdout)["mkdir"] == "read-only"
    rw = subprocess.run([*cli, "--dir", f"{tmp_path}::/rw", guest, "readonly"], capture_output=True, text=True, timeout=120)
    assert results(rw.stdout)["mkdir"] == "ok"
    bad = subprocess.run([*cli, "--dir", f"{tmp_path}/missing", guest, "readonly"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a directory" in bad.stderr


def test_preopen_parse() -> None:
    assert Preopen.parse("/a/b") == Preopen("/a/b", "/a/b")
    assert Preopen.parse("/a/b::/x", read_only=True) == Preopen("/a/b", "/x", True)
