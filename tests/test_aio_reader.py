"""The asyncio binding's ``StreamReader`` (guest_examples/common/wasi_tls_aio.py), run on
CPython: its buffering is plain Python, so ``read``/``readexactly``/``readline`` are checked
here against chunkings a real connection produces (records split anywhere, chunks larger
than a read) without building a guest for each case. The guest-built tests
(test_tls_aio_p3, test_tls_server_p3) cover the same reader over real TLS.

The binding imports its WIT bindings at load; this module gives it stand-ins for them (only
the reader's own code runs: nothing here touches a socket or TLS).
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

BINDING = Path(__file__).resolve().parents[1] / "guest_examples" / "common" / "wasi_tls_aio.py"


class Err(Exception):
    def __init__(self, value: object) -> None:
        super().__init__(value)
        self.value = value


class _Anything(types.ModuleType):
    """A generated-bindings module: any name is a placeholder class, but for ``poll``
    (wasi:io/poll, which only a WASI 0.2 world has)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "poll":
            raise AttributeError(name)
        return type(name, (), {})


class _WitWorldFinder:
    """Makes ``wit_world`` and its submodules (``wit_world.imports.poll`` missing: a WASI 0.3
    world) and ``componentize_py_types``."""

    def find_spec(self, name: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name == "wit_world.imports.poll" or not (name == "wit_world" or name.startswith("wit_world.")
                                                      or name == "componentize_py_types"):
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _Anything(spec.name)
        if spec.name == "componentize_py_types":
            module.Err = Err  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


@pytest.fixture(scope="module")
def aio() -> Iterator[Any]:
    finder = _WitWorldFinder()
    sys.meta_path.insert(0, finder)
    try:
        spec = importlib.util.spec_from_file_location("wasi_tls_aio_under_test", BINDING)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "wit_world" or n.startswith("wit_world.") or n == "componentize_py_types"]:
            del sys.modules[name]


class Chunks:
    """A ``ByteStreamReader`` handing over ``chunks`` one per read (at most ``n`` bytes of
    each, the rest on the next read), then the writer's drop."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self.chunks = list(chunks)
        self.writer_dropped = False
        self.reads: list[int] = []
        self.closed = False

    async def read(self, n: int) -> bytes:
        self.reads.append(n)
        if not self.chunks:
            self.writer_dropped = True
            return b""
        chunk = self.chunks.pop(0)
        if len(chunk) > n:
            self.chunks.insert(0, chunk[n:])
        return chunk[:n]

    def __exit__(self, *exc: object) -> None:
        self.closed = True


class Ended:
    """The future saying how the peer's data ended."""

    def __init__(self, value: object = None) -> None:
        self.value = value

    async def read(self) -> object:
        return self.value

    def __exit__(self, *exc: object) -> None:
        pass


def reader(aio: Any, chunks: Sequence[bytes], ended: object = None, limit: int = 1 << 16) -> tuple[Any, Chunks]:
    data = Chunks(chunks)
    return aio.StreamReader(data, Ended(ended), limit), data


def test_the_binding_loaded_its_wasi_0_3_api(aio: Any) -> None:
    assert aio.poll is None and hasattr(aio, "open_connection")


def test_read_n_returns_at_most_n_and_keeps_the_rest_in_order(aio: Any) -> None:
    async def scenario() -> list[bytes]:
        r, _ = reader(aio, [b"abcdefgh", b"ij", b"", b"klm"])
        return [await r.read(3), await r.read(3), await r.read(100), await r.read(100), await r.read(1),
                await r.read(100), await r.read(5), await r.read(5)]

    assert asyncio.run(scenario()) == [b"abc", b"def", b"gh", b"ij", b"k", b"lm", b"", b""]


def test_read_to_the_end_joins_what_was_buffered_and_every_later_chunk(aio: Any) -> None:
    async def scenario() -> tuple[bytes, bytes, bytes, bool]:
        r, data = reader(aio, [b"line one\nrest ", b"of the body", b"", b" and its end"])
        line = await r.readline()
        body = await r.read()
        return line, body, await r.read(), data.closed and r.at_eof()

    assert asyncio.run(scenario()) == (b"line one\n", b"rest of the body and its end", b"", True)


def test_readexactly_spans_chunks_and_reports_a_short_end(aio: Any) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        r, _ = reader(aio, [b"ab", b"cde", b"f"])
        first = await r.readexactly(4)
        with pytest.raises(asyncio.IncompleteReadError) as short:
            await r.readexactly(5)
        return first, short.value.partial

    assert asyncio.run(scenario()) == (b"abcd", b"ef")


def test_a_read_whose_chunk_fits_takes_the_chunk_without_copying_it(aio: Any) -> None:
    chunk = b"x" * 1000

    async def scenario() -> bool:
        r, _ = reader(aio, [chunk])
        return (await r.read(4096)) is chunk

    assert asyncio.run(scenario())


def test_the_end_of_a_truncated_peer_is_its_tls_error_after_the_data(aio: Any) -> None:
    class Failure:
        code = types.SimpleNamespace(name="TRUNCATED")
        message = "the peer closed the connection without close_notify"

    async def scenario() -> bytes:
        r, _ = reader(aio, [b"partial"], ended=Err(Failure()))
        got = await r.read(100)
        with pytest.raises(aio.TlsError, match="without close_notify") as failed:
            await r.read(100)
        assert failed.value.code == "truncated"
        return got

    assert asyncio.run(scenario()) == b"partial"


def test_readline_past_the_limit_is_limit_overrun(aio: Any) -> None:
    async def scenario() -> None:
        r, _ = reader(aio, [b"x" * 40, b"y" * 40, b"\n"], limit=64)
        await r.readline()

    with pytest.raises(asyncio.LimitOverrunError):
        asyncio.run(scenario())


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "255.255.255.255", "10.1.2.3", "127.0.0.01", "256.0.0.1", "1.2.3",
                                  "1.2.3.4.5", "1..2.3", "١.2.3.4", "+1.2.3.4", " 1.2.3.4", "1.2.3.4 ", "0x7f.0.0.1", "localhost",
                                  "::1", ""])
def test_the_connect_path_reads_an_ipv4_literal_as_ipaddress_does(aio: Any, host: str) -> None:
    # open_connection skips the ipaddress module for a dotted quad (its parsing cost tens
    # of microseconds per connection in a guest): the same strings must be literals.
    import ipaddress

    try:
        expected: tuple[int, ...] | None = tuple(ipaddress.IPv4Address(host).packed)
    except ValueError:
        expected = None
    assert aio._ipv4_quad(host) == expected


def test_address_literals_are_kept_and_names_are_not(aio: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # open_connection keeps the socket address records of a literal host per (host, port)
    # (building them costs tens of microseconds in a guest); a name is looked up each time.
    monkeypatch.setattr(aio, "Ipv4SocketAddress", lambda port, quad: ("v4", port, quad))
    monkeypatch.setattr(aio, "IpSocketAddress_Ipv4", lambda value: ("ipv4", value))
    monkeypatch.setattr(aio, "Ipv6SocketAddress", lambda port, flow, words, scope: ("v6", port, words))
    monkeypatch.setattr(aio, "IpSocketAddress_Ipv6", lambda value: ("ipv6", value))
    monkeypatch.setattr(aio, "IpAddressFamily", types.SimpleNamespace(IPV4="IPV4", IPV6="IPV6"))
    monkeypatch.setattr(aio, "_LITERAL_TARGETS", {})
    first = aio._literal_targets("10.0.0.7", 443)
    assert first == [("IPV4", ("ipv4", ("v4", 443, (10, 0, 0, 7))))]
    assert aio._literal_targets("10.0.0.7", 443) is first
    assert aio._literal_targets("10.0.0.7", 80) == [("IPV4", ("ipv4", ("v4", 80, (10, 0, 0, 7))))]
    assert aio._literal_targets("::1", 443) == [("IPV6", ("ipv6", ("v6", 443, (0, 0, 0, 0, 0, 0, 0, 1))))]
    assert aio._literal_targets("localhost", 443) is None
    assert ("localhost", 443) not in aio._LITERAL_TARGETS


class End:
    """A stream or future end of the writer's (``__exit__`` is its drop)."""

    def __init__(self, value: object = None) -> None:
        self.value = value
        self.closed = False

    async def read(self) -> object:
        return self.value

    async def write_all(self, data: bytes) -> int:
        return len(data)

    def __exit__(self, *exc: object) -> None:
        self.closed = True


def test_a_client_closing_its_writer_drops_the_readers_ends_and_keeps_what_it_buffered(aio: Any) -> None:
    # asyncio's writer.close() closes the transport, both ways: the reader keeps what it
    # buffered, then ends. The host's stream and future go at the close, not whenever the
    # guest's garbage collector reaches the reader (the host's work for them then landed in
    # the guest's next connection's handshake).
    async def scenario() -> tuple[bool, bool, bytes, bytes, bool]:
        r, data = reader(aio, [b"hello\nworld", b"never read"])
        done = Ended()
        r._done = done
        dropped: list[object] = []
        done.__exit__ = lambda *exc: dropped.append(done)  # type: ignore[method-assign]
        w = aio.StreamWriter(End(), None, End(), End(), End(), {})
        w._reader = r
        line = await r.readline()
        await w.wait_closed()
        return data.closed, dropped == [done], line, await r.read(100) + await r.read(100), r.at_eof()

    assert asyncio.run(scenario()) == (True, True, b"hello\n", b"world", True)


def test_a_read_in_flight_when_the_writer_closes_keeps_the_readers_ends(aio: Any) -> None:
    # Dropping a stream with a read pending traps in the Component Model: that read keeps
    # them (the garbage collector or the end of the data drops them later).
    async def scenario() -> tuple[bool, bytes]:
        gate = asyncio.Event()

        class Slow(Chunks):
            async def read(self, n: int) -> bytes:
                await gate.wait()
                return await super().read(n)

        data = Slow([b"late"])
        r = aio.StreamReader(data, Ended(), 1 << 16)
        w = aio.StreamWriter(End(), None, End(), End(), End(), {})
        w._reader = r
        pending = asyncio.ensure_future(r.read(100))
        await asyncio.sleep(0)
        await w.wait_closed()
        closed_at_close = data.closed
        gate.set()
        return closed_at_close, await pending

    assert asyncio.run(scenario()) == (False, b"late")
