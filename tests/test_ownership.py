"""The runtime's one rule for own<T> arguments (runtime/resources.py,
``drop_consumed_arguments``): a consumed argument is dropped when the call returns unless
the function keeps it and the call succeeded. The TLS and socket tests see its effect (no
socket waits for the garbage collector: ResourceWarning is an error in this suite); these
pin the rule itself, which every runtime backend applies."""

from __future__ import annotations

import pytest

from wasi_tls_host.runtime.binding import HostFunc
from wasi_tls_host.runtime.resources import HostResource, drop_consumed_arguments
from wasi_tls_host.runtime.values import Trap


class Tracked(HostResource):
    def __init__(self) -> None:
        self.drops = 0

    def drop(self) -> None:
        self.drops += 1


def test_unkept_arguments_are_dropped_and_kept_ones_are_not() -> None:
    this, input, output = Tracked(), Tracked(), Tracked()
    drop_consumed_arguments([this, input, output, 7], owned=(0, 1, 2), kept={1, 2}, call_succeeded=True)
    assert (this.drops, input.drops, output.drops) == (1, 0, 0)


def test_a_failed_call_keeps_nothing() -> None:
    this, input = Tracked(), Tracked()
    drop_consumed_arguments([this, input], owned=(0, 1), kept={1}, call_succeeded=False)
    assert (this.drops, input.drops) == (1, 1)


def test_arguments_taken_before_a_lifting_failure_are_dropped() -> None:
    first = Tracked()
    drop_consumed_arguments([first], owned=(0, 1), kept=set(), call_succeeded=False)
    assert first.drops == 1


def test_a_destructor_failure_does_not_stop_the_others() -> None:
    class Broken(HostResource):
        def drop(self) -> None:
            raise OSError("boom")

    after = Tracked()
    drop_consumed_arguments([Broken(), after], owned=(0, 1), kept=set(), call_succeeded=True)
    assert after.drops == 1


def test_keeping_a_parameter_that_is_not_own_is_a_host_bug() -> None:
    fn = HostFunc("x:y/z", "[static]r.f", lambda cx: None, keeps=("input",))
    with pytest.raises(Trap, match="declared to keep"):
        fn.note_ownership([("this", True), ("input", False)])
    fn.note_ownership([("this", True), ("input", True)])
    assert fn.owned == (0, 1) and fn.kept == {1}


def test_ownership_follows_the_implementation_not_an_importers_parameter_names() -> None:
    """Parameter names are no part of a signature: a guest importing the shared host function
    with renamed parameters neither changes which arguments are kept nor, when refused,
    leaves anything changed for the next importer."""

    def connect(cx: object, this: object, input: object, output: object) -> None:
        return None

    fn = HostFunc("x:y/z", "[static]r.connect", connect, keeps=("input", "output"))
    fn.note_ownership([("a", True), ("b", True), ("c", True)])  # renamed: the impl's names count
    assert fn.owned == (0, 1, 2) and fn.kept == {1, 2}
    with pytest.raises(Trap, match="own<T> parameters"):
        fn.note_ownership([("this", True), ("input", True), ("output", False)])
    assert fn.owned == (0, 1, 2) and fn.kept == {1, 2}  # untouched by the refused importer


def test_parameter_names_are_read_as_inspect_reads_them() -> None:
    """The implementation's names are read from its code object (start-up time), following
    ``functools.wraps`` and skipping a bound method's self as ``inspect.signature`` does;
    every host function of this host gives the same names both ways."""
    import functools
    import inspect

    from wasi_tls_host.host import all_interfaces

    def wraps_it(f):  # type: ignore[no-untyped-def]
        @functools.wraps(f)
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            return f(*args, **kwargs)
        return wrapper

    class Impl:
        def method(self, cx: object, this: object, input: object, /, output: object, *, fill: object = None) -> None:
            return None

    def plain(cx: object, this: object, input: object, *rest: object) -> None:
        return None

    impls = [Impl().method, wraps_it(Impl().method), plain, wraps_it(plain)]
    impls += [fn.impl for iface in all_interfaces() for fn in iface.funcs.values()]
    for impl in impls:
        fn = HostFunc("x:y/z", "f", impl)
        parameters = list(inspect.signature(impl).parameters.values())[1:]
        assert fn._param_names() == [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert HostFunc("x:y/z", "f", Impl().method)._param_names() == ["this", "input", "output"]
