"""Component-model value types as the core backend sees them, with the Canonical ABI's
sizes, alignments and flattenings (CanonicalABI.md: ``elem_size``, ``alignment``,
``flatten_type``), computed once per type object.
"""

from __future__ import annotations

import weakref
from typing import Any

from ..records import Fields  # plain classes, not dataclasses: start-up time (see records.py)

MAX_FLAT_PARAMS = 16
MAX_FLAT_RESULTS = 1
MAX_FLAT_ASYNC_PARAMS = 4  # async lower: more flat parameters than this go by pointer


class Unsupported(Exception):
    """A construct this backend does not implement: the host falls back to the component backend."""


class Refused(Unsupported):
    """A construct no backend of this host runs (the component runtime has no async ABI, so
    falling back would only fail later): the component is refused at load, naming it."""


class Malformed(Exception):
    """The component binary is not well formed (reported, never run)."""


class ValType(Fields):
    size: int
    align: int
    flat: list[str]
    # The types found structurally equal to this one, by id (``same_type``): not part of the
    # type (a cached plan is pickled without it).
    _equal_to: dict[int, weakref.ref[ValType]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__
        return {k: v for k, v in state.items() if k != "_equal_to"} if "_equal_to" in state else state

    def signature(self) -> str:  # the text form runtime.abi.signature gives the same type
        raise NotImplementedError


class Prim(ValType):
    name: str

    _fields = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name
        self._layout()

    def _layout(self) -> None:
        self.size, self.align, self.flat = _PRIM_LAYOUT[self.name]

    def signature(self) -> str:
        return self.name


_PRIM_LAYOUT: dict[str, tuple[int, int, list[str]]] = {
    "bool": (1, 1, ["i32"]), "s8": (1, 1, ["i32"]), "u8": (1, 1, ["i32"]),
    "s16": (2, 2, ["i32"]), "u16": (2, 2, ["i32"]), "s32": (4, 4, ["i32"]), "u32": (4, 4, ["i32"]),
    "s64": (8, 8, ["i64"]), "u64": (8, 8, ["i64"]), "f32": (4, 4, ["f32"]), "f64": (8, 8, ["f64"]),
    "char": (4, 4, ["i32"]), "string": (8, 4, ["i32", "i32"]),
}
PRIM_CODES = {
    0x7F: "bool", 0x7E: "s8", 0x7D: "u8", 0x7C: "s16", 0x7B: "u16", 0x7A: "s32", 0x79: "u32",
    0x78: "s64", 0x77: "u64", 0x76: "f32", 0x75: "f64", 0x74: "char", 0x73: "string",
}
PRIMS = {name: Prim(name) for name in PRIM_CODES.values()}


def align_to(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def join(a: str, b: str) -> str:
    if a == b:
        return a
    if {a, b} == {"i32", "f32"}:
        return "i32"
    return "i64"


class ListT(ValType):
    elem: ValType

    _fields = ("elem",)

    def __init__(self, elem: ValType) -> None:
        self.elem = elem
        self._layout()

    def _layout(self) -> None:
        self.size, self.align, self.flat = 8, 4, ["i32", "i32"]

    def signature(self) -> str:
        return f"list<{self.elem.signature()}>"


def _record_layout(types: list[ValType]) -> tuple[int, int, list[int], list[str]]:
    size, align, offsets, flat = 0, 1, [], []
    for t in types:
        size = align_to(size, t.align)
        offsets.append(size)
        size += t.size
        align = max(align, t.align)
        flat += t.flat
    return align_to(size, align), align, offsets, flat


class Record(ValType):
    fields: list[tuple[str, ValType]]

    _fields = ("fields",)

    def __init__(self, fields: list[tuple[str, ValType]]) -> None:
        self.fields = fields
        self._layout()

    def _layout(self) -> None:
        self.size, self.align, self.offsets, self.flat = _record_layout([t for _, t in self.fields])

    def signature(self) -> str:
        return "record{" + ",".join(f"{n}:{t.signature()}" for n, t in self.fields) + "}"


class Tuple(ValType):
    elems: list[ValType]

    _fields = ("elems",)

    def __init__(self, elems: list[ValType]) -> None:
        self.elems = elems
        self._layout()

    def _layout(self) -> None:
        self.size, self.align, self.offsets, self.flat = _record_layout(self.elems)

    def signature(self) -> str:
        return "tuple<" + ",".join(t.signature() for t in self.elems) + ">"


def _disc_size(n: int) -> int:
    return 1 if n <= 256 else 2 if n <= 65536 else 4


class Variant(ValType):
    """Also the layout of enum, option and result (``kind`` says which Python shape)."""

    cases: list[tuple[str, ValType | None]]
    kind: str  # variant | enum | option | result
    extra: Any  # option/result: the WIT-level payload types, for signatures

    _fields = ("cases", "kind", "extra")

    def __init__(self, cases: list[tuple[str, ValType | None]], kind: str = "variant", extra: Any = None) -> None:
        self.cases = cases
        self.kind = kind
        self.extra = extra
        self._layout()

    def _layout(self) -> None:
        n = len(self.cases)
        self.disc_size = _disc_size(n)
        max_align = self.disc_size
        max_size = 0
        flat_payload: list[str] = []
        for _, t in self.cases:
            if t is None:
                continue
            max_align = max(max_align, t.align)
            max_size = max(max_size, t.size)
            for i, ft in enumerate(t.flat):
                if i < len(flat_payload):
                    flat_payload[i] = join(flat_payload[i], ft)
                else:
                    flat_payload.append(ft)
        self.align = max_align
        self.payload_offset = align_to(self.disc_size, max_align)
        self.size = align_to(self.payload_offset + max_size, max_align)
        self.flat = ["i32", *flat_payload]

    def signature(self) -> str:
        if self.kind == "enum":
            return "enum{" + ",".join(n for n, _ in self.cases) + "}"
        if self.kind == "option":
            return f"option<{self.cases[1][1].signature()}>"  # type: ignore[union-attr]
        if self.kind == "result":
            ok, err = self.cases[0][1], self.cases[1][1]
            return f"result<{ok.signature() if ok else '_'},{err.signature() if err else '_'}>"
        return "variant{" + ",".join(n if t is None else f"{n}({t.signature()})" for n, t in self.cases) + "}"


def enum_type(names: list[str]) -> Variant:
    return Variant([(n, None) for n in names], "enum")


def option_type(t: ValType) -> Variant:
    return Variant([("none", None), ("some", t)], "option")


def result_type(ok: ValType | None, err: ValType | None) -> Variant:
    return Variant([("ok", ok), ("error", err)], "result")


class Flags(ValType):
    names: list[str]

    _fields = ("names",)

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._layout()

    def _layout(self) -> None:
        n = len(self.names)
        if n == 0:
            self.size, self.align, self.flat = 0, 1, []
        elif n <= 8:
            self.size, self.align, self.flat = 1, 1, ["i32"]
        elif n <= 16:
            self.size, self.align, self.flat = 2, 2, ["i32"]
        else:
            words = (n + 31) // 32
            self.size, self.align, self.flat = 4 * words, 4, ["i32"] * words

    def signature(self) -> str:
        return "flags{" + ",".join(self.names) + "}"


# --- resources -----------------------------------------------------------------------------


class ResourceT(Fields):
    """A resource type: identity matters (two handles' types are compared with ``is``)."""

    def resolve(self) -> ResourceT:
        return self


class AbstractResource(ResourceT):
    """``(export "x" (type (sub resource)))`` inside an instance or component type; bound
    to a concrete resource when an import of that type is made."""

    name: str
    target: ResourceT | None

    _fields = ("name", "target")

    def __init__(self, name: str, target: ResourceT | None = None) -> None:
        self.name = name
        self.target = target

    def resolve(self) -> ResourceT:
        t: ResourceT = self
        while isinstance(t, AbstractResource) and t.target is not None:
            t = t.target
        return t


class ImportedResource(ResourceT):
    """A resource the host implements, named by the importing interface."""

    interface: str
    name: str
    kind: Any  # the host's ResourceKind, bound when the component is prepared

    _fields = ("interface", "name", "kind")

    def __init__(self, interface: str, name: str, kind: Any = None) -> None:
        self.interface = interface
        self.name = name
        self.kind = kind


class DefinedResource(ResourceT):
    """A resource the component defines itself (``(type (resource (rep i32) (dtor f)))``)."""

    dtor: Any  # a core func reference (planned), or None
    cid: int  # the component instance that defines it (its implementation)

    _fields = ("dtor", "cid")

    def __init__(self, dtor: Any = None, cid: int = 0) -> None:
        self.dtor = dtor
        self.cid = cid


class Handle(ValType):
    resource: ResourceT
    own: bool

    _fields = ("resource", "own")

    def __init__(self, resource: ResourceT, own: bool) -> None:
        self.resource = resource
        self.own = own
        self._layout()

    def _layout(self) -> None:
        self.size, self.align, self.flat = 4, 4, ["i32"]

    def signature(self) -> str:
        return "own" if self.own else "borrow"


# --- async values (streams, futures, error contexts) --------------------------------------------


class _EndT(ValType):
    """``KIND<T>`` (``elem`` None for a bare ``KIND``): an i32 index of a readable end."""

    KIND = ""
    elem: ValType | None

    _fields = ("elem",)

    def __init__(self, elem: ValType | None) -> None:
        self.elem = elem
        self._layout()

    def _layout(self) -> None:
        self.size, self.align, self.flat = 4, 4, ["i32"]

    def signature(self) -> str:
        return f"{self.KIND}<{self.elem.signature()}>" if self.elem is not None else self.KIND


class StreamT(_EndT):
    """``stream<T>``: an i32 index of a readable end."""

    KIND = "stream"


class FutureT(_EndT):
    """``future<T>``: an i32 index of a readable end."""

    KIND = "future"


class ErrorContextT(ValType):
    def __init__(self) -> None:
        self._layout()

    def _layout(self) -> None:
        self.size, self.align, self.flat = 4, 4, ["i32"]

    def signature(self) -> str:
        return "error-context"


ERROR_CONTEXT = ErrorContextT()


def same_type(a: ValType | None, b: ValType | None) -> bool:
    """Structural equality of two value types, as the spec's ``trap_if(e.shared.t != t)``
    compares them (resource types by identity)."""
    if a is b:
        return True
    if a is None or b is None or type(a) is not type(b):
        return False
    if isinstance(a, Prim):
        return a.name == b.name  # type: ignore[attr-defined]
    # Compound types are compared on every stream/future crossing and built-in (a future's
    # result<_, error> against each import's own copy of it): a pair found equal once stays
    # equal (types are not changed once built; a resource bound to a host kind stays bound),
    # so it is remembered on ``a``, by a weak reference to ``b`` (``a`` must not keep another
    # component's types, their resources and destructors, alive; a dead ``b`` never matches).
    equal_to = a._equal_to
    if equal_to is not None:
        known = equal_to.get(id(b))
        if known is not None and known() is b:
            return True
    if not _same_compound(a, b):
        return False
    if equal_to is None:
        equal_to = a._equal_to = {}
    if len(equal_to) < 64:
        equal_to[id(b)] = weakref.ref(b)
    return True


def _same_compound(a: ValType, b: ValType) -> bool:
    if isinstance(a, Handle):
        return a.own == b.own and same_resource(a.resource, b.resource)  # type: ignore[attr-defined]
    if isinstance(a, (ListT, StreamT, FutureT)):
        return same_type(a.elem, b.elem)  # type: ignore[attr-defined]
    if isinstance(a, Record):
        return [n for n, _ in a.fields] == [n for n, _ in b.fields] and all(  # type: ignore[attr-defined]
            same_type(x, y) for (_, x), (_, y) in zip(a.fields, b.fields))  # type: ignore[attr-defined]
    if isinstance(a, Tuple):
        return len(a.elems) == len(b.elems) and all(same_type(x, y) for x, y in zip(a.elems, b.elems))  # type: ignore[attr-defined]
    if isinstance(a, Variant):
        return a.kind == b.kind and [n for n, _ in a.cases] == [n for n, _ in b.cases] and all(  # type: ignore[attr-defined]
            same_type(x, y) for (_, x), (_, y) in zip(a.cases, b.cases))  # type: ignore[attr-defined]
    return a.signature() == b.signature()  # flags, error-context


def same_resource(a: ResourceT, b: ResourceT) -> bool:
    ra, rb = a.resolve(), b.resolve()
    if ra is rb:
        return True
    # Two imports of one host resource are one type once bound to the host's kind.
    return isinstance(ra, ImportedResource) and isinstance(rb, ImportedResource) and ra.kind is not None and ra.kind is rb.kind


def contains_borrow(t: ValType | None) -> bool:
    if t is None or isinstance(t, (Prim, StreamT, FutureT, ErrorContextT)):
        return False
    if isinstance(t, Handle):
        return not t.own
    if isinstance(t, ListT):
        return contains_borrow(t.elem)
    if isinstance(t, Record):
        return any(contains_borrow(ft) for _, ft in t.fields)
    if isinstance(t, Tuple):
        return any(contains_borrow(et) for et in t.elems)
    if isinstance(t, Variant):
        return any(contains_borrow(ct) for _, ct in t.cases)
    return False


# --- functions and instance types -----------------------------------------------------------


class FuncT(Fields):
    params: list[tuple[str, ValType]]
    result: ValType | None
    is_async: bool  # ``async func`` (may block its caller)

    _fields = ("params", "result", "is_async")

    def __init__(self, params: list[tuple[str, ValType]], result: ValType | None, is_async: bool = False) -> None:
        self.params = params
        self.result = result
        self.is_async = is_async
        self._layout()

    def _layout(self) -> None:
        flat_params: list[str] = []
        for _, t in self.params:
            flat_params += t.flat
        self.params_spill = len(flat_params) > MAX_FLAT_PARAMS
        self.flat_params = ["i32"] if self.params_spill else flat_params
        flat_results = self.result.flat if self.result is not None else []
        self.results_spill = len(flat_results) > MAX_FLAT_RESULTS
        self.flat_results = flat_results if not self.results_spill else ["i32"]
        self.param_tuple = Tuple([t for _, t in self.params]) if self.params else None

    def signature(self) -> str:
        params = ",".join(t.signature() for _, t in self.params)
        text = f"({params})->{self.result.signature() if self.result is not None else '()'}"
        return f"async{text}" if self.is_async else text

    def lower_core_type(self) -> tuple[list[str], list[str]]:
        """The core signature of ``canon lower`` of this function (results by pointer)."""
        if self.results_spill:
            return [*self.flat_params, "i32"], []
        return list(self.flat_params), list(self.flat_results)

    def lift_core_type(self) -> tuple[list[str], list[str]]:
        """The core signature a ``canon lift`` of this function must have."""
        return list(self.flat_params), list(self.flat_results)

    @property
    def all_flat_params(self) -> list[str]:
        flat: list[str] = []
        for _, t in self.params:
            flat += t.flat
        return flat

    @property
    def async_params_spill(self) -> bool:
        return len(self.all_flat_params) > MAX_FLAT_ASYNC_PARAMS

    def async_lower_core_type(self) -> tuple[list[str], list[str]]:
        """``canon lower ... async``: at most 4 flat parameters (else one pointer), the
        result always by pointer, and an i32 status returned (CanonicalABI flatten_functype)."""
        params = ["i32"] if self.async_params_spill else self.all_flat_params
        if self.result is not None:
            params = [*params, "i32"]
        return params, ["i32"]

    def async_lift_core_type(self, callback: bool) -> tuple[list[str], list[str]]:
        """``canon lift ... async``: the parameters as for a sync lift; an i32 callback code
        returned with a callback, nothing without (the result goes through task.return)."""
        return list(self.flat_params), (["i32"] if callback else [])


class InstanceT(Fields):
    exports: dict[str, tuple[str, Any]]  # name -> (sort, type)

    _fields = ("exports",)

    def __init__(self, exports: dict[str, tuple[str, Any]] | None = None) -> None:
        self.exports = {} if exports is None else exports


class ComponentT(Fields):
    pass


def types_in(root: Any) -> list[ValType]:
    """Every value type reachable from ``root`` (a plan, a function type...), following
    record fields (``Fields``, dataclasses), lists, tuples and dicts; each once."""
    found: list[ValType] = []
    seen: set[int] = set()
    todo = [root]
    while todo:
        item = todo.pop()
        if isinstance(item, (str, bytes, bytearray, int, float, bool)) or item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ValType):
            found.append(item)
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo.extend(item)
        elif isinstance(item, Fields):
            todo.extend(getattr(item, name) for name in item._fields)
        elif hasattr(item, "__dataclass_fields__"):  # dataclasses.is_dataclass, whose module only a dataclass brings
            import dataclasses

            todo.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return found
