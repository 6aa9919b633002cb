"""Host functions are linked untyped; the host must hold every import to the signature it
serves, and its table of signatures must match the WIT in wit/."""

from __future__ import annotations

import json

import pytest
from wasmtime import Engine, Store, WasmtimeError
from wasmtime.component import Component, Linker

from wasi_tls_host import GuestError, Host, WasiConfig, add_to_linker, set_wasi
from wasi_tls_host.runtime.binding import SIGNATURES_FILE
from devtools.signatures import current_signatures


def test_signature_table_matches_the_wit() -> None:
    committed = json.loads(SIGNATURES_FILE.read_text())
    assert committed == current_signatures(), "run `python -m devtools.signatures` and commit the result"


def test_a_component_importing_another_signature_is_refused(host: Host, guest_path) -> None:
    with pytest.raises(GuestError) as info:
        host.instantiate(guest_path("wrong_signature"))
    message = str(info.value)
    assert "wasi:io/streams@0.2#[method]input-stream.read is imported as (borrow,u32)->u32" in message
    assert "this host implements (borrow,u64)->result<list<u8>," in message


def test_linked_anyway_it_traps_instead_of_misreading(guest_path, run_guest) -> None:
    # A well-typed guest calls input-stream.read first (on the component runtime), so the
    # host's converters for it exist.
    out = bytearray()
    Host(runtime="component").run(guest_path("wasi_probe"), WasiConfig(args=["p", "stdin-closed"], stdin=b"abc", stdout=out))
    assert out == b"read=b'abc'\n"
    # The wasmtime-py way, without the host's link-time check.
    engine = Engine()
    linker = Linker(engine)
    add_to_linker(linker)
    store = Store(engine)
    set_wasi(store, WasiConfig(stdin=b"0123456789abcdef"))
    instance = linker.instantiate(store, Component.from_file(engine, str(guest_path("wrong_signature"))))
    read = instance.get_func(store, "read")
    with pytest.raises(WasmtimeError, match="the component imports this function with another signature"):
        read(store)
    # The host is unharmed: a well-typed guest still runs.
    assert run_guest("wasi_probe", "cat", stdin=b"still fine").stdout == b"still fine"
