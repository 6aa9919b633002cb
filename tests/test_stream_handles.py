"""Host calls that return or take stream and future ends (as ``tcp-socket.receive``,
``send`` and upstream wasi:tls's ``connector.send``/``receive`` do), on their fast paths:
the ends the host returns cross as the guest's readable ends, many times over; whatever the
fast paths do not take (another element type, a value that is not an end, a tuple of the
wrong size) still traps with its message. And ``same_type``'s memory of equal compound
types never makes unequal types equal.
"""

from __future__ import annotations

import gc
import pickle
from typing import Any

import pytest
from wasmtime import WasmtimeError

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.runtime.core.types import Handle, Prim, Tuple, Variant, same_type
from wasi_tls_host.runtime.streams import Future, Stream, StreamReader, new_future, new_stream

# guest_examples/wat/stream_handles.wat: open() -> tuple<stream<u8>, future<result<_, u32>>>
# (as receive) and sink(stream<u8>) -> future<result<_, u32>> (as send), called n times by
# its exports, which drop every end they get.
handles = Interface("wasi-tls-host:test/stream-handles")
# What ``open`` returns next (a factory of the result), and what the host saw of each call.
RETURNS: list[Any] = []
SEEN: list[Any] = []


def _pair() -> tuple[Stream, Future]:
    stream, writer = new_stream(origin="test")
    writer.close()  # the guest sees the end of the stream (it drops it unread)
    future, _ = new_future(origin="test")
    return stream, future


@handles.func("open")
def open_(cx: Any) -> Any:
    value = RETURNS[0]() if RETURNS else _pair()
    SEEN.append(value)
    return value


@handles.func("sink")
def sink(cx: Any, data: Stream) -> Future:
    SEEN.append(data)
    StreamReader(data).close()
    future, _ = new_future(origin="test")
    return future


@pytest.fixture(scope="module")
def component(guest_path: Any) -> tuple[Host, Any]:
    host = Host(interfaces=[handles], runtime="core")
    return host, host.load(guest_path("stream_handles"))


@pytest.fixture(autouse=True)
def _fresh() -> Any:
    RETURNS.clear()
    SEEN.clear()
    yield
    RETURNS.clear()
    SEEN.clear()


def test_ends_returned_and_taken_cross_many_times(component: tuple[Host, Any]) -> None:
    host, comp = component
    with host.instantiate(comp, WasiConfig()) as g:
        assert g.call("opens", 300) == 300
        # Each host-made end learnt its element type from the import as it crossed.
        stream, future = SEEN[-1]
        assert stream.t.name == "u8"
        assert isinstance(future.t, Variant) and future.t.kind == "result"
        SEEN.clear()
        assert g.call("sinks", 300) == 300
        assert len(SEEN) == 300 and all(type(s) is Stream and s.t.name == "u8" for s in SEEN)
        # A list of two ends is a tuple too.
        RETURNS.append(lambda: list(_pair()))
        assert g.call("opens", 3) == 3


BAD_RETURNS = {
    "another element type": (lambda: (Stream(Prim("u32")), new_future()[0]),
                             r"a stream of another element type cannot cross as stream<u8>"),
    "future of another type": (lambda: (new_stream()[0], Future(Prim("u8"))),
                               r"a future of another element type cannot cross as future<result<_,u32>>"),
    "not a stream": (lambda: (b"bytes", new_future()[0]), r"expected a Stream for stream<u8>, got b'bytes'"),
    "future for a stream": (lambda: (new_future()[0], new_future()[0]), r"expected a Stream for stream<u8>, got <"),
    "three values": (lambda: (*_pair(), 3), r"expected a tuple of 2 values"),
}


@pytest.mark.parametrize("case", list(BAD_RETURNS))
def test_what_the_fast_path_does_not_take_traps_with_its_message(component: tuple[Host, Any], case: str) -> None:
    host, comp = component
    make, message = BAD_RETURNS[case]
    with host.instantiate(comp, WasiConfig()) as g:
        assert g.call("opens", 2) == 2  # the fast path first, so a remembered type is in place
        RETURNS.append(make)
        with pytest.raises(WasmtimeError, match=message):
            g.call("opens", 1)
    for value in SEEN:  # what the host made for the call that trapped: nothing left open
        for end in value if isinstance(value, (tuple, list)) else ():
            if isinstance(end, (Stream, Future)):
                end.drop()
    gc.collect()


def _result_u32() -> Variant:
    return Variant([("ok", None), ("err", Prim("u32"))], "result", (None, Prim("u32")))


def test_same_type_remembers_equal_pairs_but_never_makes_unequal_types_equal() -> None:
    a, b = _result_u32(), _result_u32()
    other = Variant([("ok", None), ("err", Prim("u64"))], "result", (None, Prim("u64")))
    assert same_type(a, b) and same_type(a, b)
    assert a._equal_to is not None  # remembered
    assert not same_type(a, other) and not same_type(a, other)
    assert not same_type(other, a)
    # A type is pickled (a cached plan) without what same_type remembered.
    copy = pickle.loads(pickle.dumps(a))
    assert copy._equal_to is None and same_type(copy, a)
    assert same_type(Tuple([a, Prim("u8")]), Tuple([b, Prim("u8")]))
    assert not same_type(Tuple([a, Prim("u8")]), Tuple([other, Prim("u8")]))


def test_remembered_types_are_held_weakly() -> None:
    # A type with a handle holds its component's resource (and destructor): remembering it
    # on another component's type must not keep it alive.
    import weakref

    class _Res:
        def resolve(self) -> Any:
            return self

    res = _Res()
    a, b = Tuple([Handle(res, True), Prim("u8")]), Tuple([Handle(res, True), Prim("u8")])
    assert same_type(a, b) and a._equal_to is not None
    gone = weakref.ref(b)
    del b
    gc.collect()
    assert gone() is None
    assert same_type(a, Tuple([Handle(res, True), Prim("u8")]))
    assert not same_type(a, Tuple([Handle(_Res(), True), Prim("u8")]))


def test_streams_and_futures_can_be_weakly_referenced() -> None:
    # wasi:sockets 0.3 keys what it knows of a stream by a weak reference (sockets/p3.py).
    import weakref

    stream, writer = new_stream()
    future, future_writer = new_future()
    refs = [weakref.ref(stream), weakref.ref(future)]
    writer.close()
    future_writer.close()
    del stream, future, writer, future_writer
    assert [r() for r in refs] == [None, None]


BAD_ARGUMENTS = {
    0: r"handle index \d+ is not the readable end of a stream \(it is a writable end of a stream\)",
    1: r"cannot lift stream while it's in a waitable set",
    2: r"cannot remove busy stream \(a copy is in progress\)",
}


@pytest.mark.parametrize("kind", list(BAD_ARGUMENTS))
def test_an_end_the_fast_lift_does_not_take_traps_with_its_message(component: tuple[Host, Any], kind: int) -> None:
    host, comp = component
    with host.instantiate(comp, WasiConfig()) as g:
        assert g.call("sinks", 2) == 2  # the fast path first
        with pytest.raises(WasmtimeError, match=BAD_ARGUMENTS[kind]):
            g.call("sink-bad", kind)
        assert len(SEEN) == 2  # the host function never ran for the bad end


def test_a_future_writer_hears_that_its_reader_went_away() -> None:
    from wasi_tls_host.runtime.streams import FutureReader

    future, writer = new_future()
    FutureReader(future).close()
    assert writer.write(1) is False and writer.reader_gone
    future, writer = new_future()
    assert writer.write(2) is True  # no reader yet: the value waits for it
