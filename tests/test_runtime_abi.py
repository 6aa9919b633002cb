"""Canonical ABI shapes through a WAT guest (guest_examples/wat/abi_probe.wat), on both
runtimes: each value goes embedder -> guest (lift) -> host (lower) -> guest -> embedder, so
both directions of every conversion are exercised, and the component runtime (wasmtime's own
Canonical ABI) is the reference the core runtime must match.
"""

from __future__ import annotations

from typing import Any

import pytest

from wasi_tls_host import Host
from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.runtime.values import Variant

abi = Interface("wasi-tls-host:test/abi")
SEEN: list[Any] = []  # what the host functions received


@abi.func("echo-string")
def echo_string(cx: object, s: str) -> str:
    SEEN.append(s)
    return s


@abi.func("sum17")
def sum17(cx: object, *values: int) -> int:
    SEEN.append(values)
    return sum(values)


@abi.func("echo-variant")
def echo_variant(cx: object, v: Variant) -> Variant:
    SEEN.append(v)
    return v


@abi.func("echo-record")
def echo_record(cx: object, r: dict[str, Any]) -> dict[str, Any]:
    SEEN.append(r)
    return r


@abi.func("echo-char")
def echo_char(cx: object, c: str) -> str:
    SEEN.append(c)
    return c


@pytest.fixture(scope="module")
def abi_guest(runtime: str, guest_path):
    host = Host(interfaces=[abi], runtime=runtime)
    with host.instantiate(guest_path("abi_probe")) as g:
        assert g.runtime == runtime
        yield g


STRINGS = ["", "plain ascii", "héllo wörld", "ÿ is latin-1", "snowman ☃ and clef 𝄞", "nul\0inside"]


@pytest.mark.parametrize("export", ["echo-utf8", "echo-utf16", "echo-latin1-utf16"])
@pytest.mark.parametrize("text", STRINGS)
def test_strings_in_every_encoding(abi_guest, export: str, text: str) -> None:
    SEEN.clear()
    assert abi_guest.call(export, text) == text
    assert SEEN == [text]


def test_seventeen_params_go_through_memory(abi_guest) -> None:
    values = [i * 0x0101_0101 for i in range(17)]
    values[-1] = 0xFFFF_FFFF
    SEEN.clear()
    assert abi_guest.call("sum17", *values) == sum(values)
    assert SEEN == [tuple(values)]


@pytest.mark.parametrize("value", [
    Variant("a", 1.5), Variant("a", -0.0), Variant("b", 0), Variant("b", 2**64 - 1), Variant("b", 2**32 + 7),
    Variant("c", ""), Variant("c", "joined with f32 and u64 ☃"), Variant("d"),
])
def test_variant_cases_sharing_flat_slots(abi_guest, value: Variant) -> None:
    SEEN.clear()
    assert abi_guest.call("echo-variant", value) == value
    assert SEEN == [value]


@pytest.mark.parametrize("record", [
    {"x": 0, "y": "", "z": [], "w": None, "f": set(), "e": "red"},
    {"x": 255, "y": "why ☃", "z": [0, 1, 65535], "w": -(2**63), "f": {"read", "exec"}, "e": "blue"},
    {"x": 7, "y": "z" * 1000, "z": list(range(3000)), "w": 2**63 - 1, "f": {"read", "write", "exec"}, "e": "green"},
])
def test_record_of_every_kind(abi_guest, record: dict[str, Any]) -> None:
    SEEN.clear()
    assert abi_guest.call("echo-record", record) == record
    assert SEEN == [record]


@pytest.mark.parametrize("char", ["a", "\0", "ÿ", "☃", "𝄞", "\U0010FFFF"])
def test_chars(abi_guest, char: str) -> None:
    assert abi_guest.call("echo-char", char) == char
