"""The filesystem engine both WASI surfaces share (``wasi/filesystem_engine.py``), called
directly: the rules where wasmtime and the wasi-testsuite's 0.3 programs decide the answer,
on both path resolvers (openat2 and the component-by-component walk).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from wasi_tls_host.runtime.values import Variant
from wasi_tls_host.wasi import filesystem_engine as engine
from wasi_tls_host.wasi import sandbox


@pytest.fixture(params=["openat2", "walk"])
def resolver(request, monkeypatch) -> str:
    if request.param == "openat2" and not sandbox.HAVE_OPENAT2:
        pytest.skip("kernel without openat2")
    monkeypatch.setattr(sandbox, "use_openat2", request.param == "openat2")
    return request.param


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("a")
    (root / "sub").mkdir()
    os.symlink("..", root / "parent")
    os.symlink("sub", root / "to_sub")
    return root


@pytest.fixture
def preopen(tree: Path) -> Iterator[Callable[..., engine.Descriptor]]:
    """preopen(mutable=True): a preopened directory descriptor for ``tree``."""
    made: list[engine.Descriptor] = []

    def make(mutable: bool = True) -> engine.Descriptor:
        flags = frozenset({"read", "mutate-directory"} if mutable else {"read"})
        desc = engine.Descriptor(os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), flags, "directory", mutable)
        made.append(desc)
        return desc

    yield make
    for desc in made:
        desc.drop()


def code(action: Callable[[], Any]) -> str:
    try:
        result = action()
    except engine.FAILURES as e:
        return engine.error_code(e)
    if isinstance(result, engine.Descriptor):
        result.drop()
    return "ok"


def test_a_path_naming_the_root_is_an_escape(resolver: str, preopen, tree: Path) -> None:
    """"/" has no parent to refuse it: without this, mkdir("/") said exist."""
    root = preopen()
    assert code(lambda: engine.create_directory_at(root, "/")) == "not-permitted"
    assert code(lambda: engine.remove_directory_at(root, "/")) == "not-permitted"
    assert code(lambda: engine.unlink_file_at(root, "/")) == "not-permitted"
    assert code(lambda: engine.link_at(root, set(), "a.txt", root, "/")) == "not-permitted"
    assert code(lambda: engine.rename_at(root, "a.txt", root, "/")) == "not-permitted"
    assert code(lambda: engine.symlink_at(root, "a.txt", "/")) == "not-permitted"
    assert (tree / "a.txt").read_text() == "a"


def test_a_trailing_slash_follows_a_final_symlink_and_may_not_leave(resolver: str, preopen, tree: Path) -> None:
    root = preopen()
    assert code(lambda: engine.remove_directory_at(root, "parent/")) == "not-permitted"
    assert code(lambda: engine.create_directory_at(root, "parent/")) == "not-permitted"
    assert code(lambda: engine.remove_directory_at(root, "parent")) == "not-directory"  # the link itself: POSIX
    assert code(lambda: engine.create_directory_at(root, "new/")) == "ok"  # nothing to follow
    assert (tree / "new").is_dir()
    assert code(lambda: engine.remove_directory_at(root, "to_sub/")) == "not-directory"  # inside: the kernel's answer
    assert (tree / "sub").is_dir()


@pytest.mark.parametrize("mutable", [True, False])
def test_what_a_directory_reports_and_allows(resolver: str, preopen, tree: Path, mutable: bool) -> None:
    root = preopen(mutable)
    plain = engine.open_at(root, set(), ".", set(), set())
    asked = engine.open_at(root, set(), "sub", {"directory"}, {"read", "mutate-directory"})
    try:
        assert engine.get_flags(plain) == {"read"}  # no flags: opened for reading
        assert engine.get_flags(asked) == ({"read", "mutate-directory"} if mutable else {"read"})
        # What the tree allows does not depend on what was asked for (the preview1 adapter
        # opens directories without mutate-directory and creates files in them).
        assert code(lambda: engine.create_directory_at(plain, "made")) == ("ok" if mutable else "read-only")
    finally:
        plain.drop()
        asked.drop()
    assert code(lambda: engine.open_at(root, set(), ".", set(), {"write"})) == ("is-directory" if mutable else "read-only")


@pytest.mark.parametrize(("open_flags", "flags", "reported"), [
    (set(), set(), {"read"}),                               # nothing asked: reading
    ({"exclusive"}, set(), {"read"}),                       # exclusive without create means nothing
    (set(), {"write"}, {"write"}),                          # write does not imply read
    ({"create"}, set(), {"read", "write"}),                 # create implies write
    ({"create"}, {"read"}, {"read", "write"}),
    ({"create"}, {"write"}, {"write"}),
    ({"create"}, {"read", "mutate-directory"}, {"read", "write"}),  # mutate-directory is for directories
])
def test_what_a_file_is_opened_for(resolver: str, preopen, tree: Path, open_flags: set[str], flags: set[str],
                                   reported: set[str]) -> None:
    root = preopen()
    f = engine.open_at(root, set(), "made.txt" if "create" in open_flags else "a.txt", open_flags, flags)
    try:
        assert engine.get_flags(f) == reported
        os_mode = os.O_ACCMODE & fcntl.fcntl(f.fd, fcntl.F_GETFL)
        assert os_mode == {frozenset({"read"}): os.O_RDONLY, frozenset({"write"}): os.O_WRONLY,
                           frozenset({"read", "write"}): os.O_RDWR}[frozenset(reported)]
    finally:
        f.drop()


def test_times_of_a_file_opened_for_reading(resolver: str, preopen, tree: Path) -> None:
    """Setting times changes the tree, not the file's contents: allowed for a file opened to
    be read where the tree may change (as futimens and wasmtime allow), refused where not."""
    when = Variant("timestamp", {"seconds": 42, "nanoseconds": 0})
    f = engine.open_at(preopen(), set(), "a.txt", set(), {"read"})
    try:
        engine.set_times(f, when, when)
        assert engine.stat(f).st_mtime_ns == 42_000_000_000
    finally:
        f.drop()
    g = engine.open_at(preopen(mutable=False), set(), "a.txt", set(), {"read"})
    try:
        assert code(lambda: engine.set_times(g, Variant("now"), Variant("now"))) == "bad-descriptor"
    finally:
        g.drop()
    assert (tree / "a.txt").stat().st_mtime_ns == 42_000_000_000


def test_a_directory_is_no_file_to_write(preopen) -> None:
    root = preopen()
    assert code(root.writable_file) == "bad-descriptor"  # as wasmtime, for set-size and write streams
    assert code(root.readable_file) == "is-directory"
    assert code(lambda: engine.set_size(root, 0)) == "bad-descriptor"
