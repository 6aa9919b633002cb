"""Taking a component binary apart into a flat instantiation plan (Binary.md).

The component is evaluated once, at load time, the way wasmtime's translate/inline phase
does it: every index space of every (nested) component scope is filled with static
descriptions, nested component instantiations are inlined, and what is left is

* ``modules``: the core module binaries, in order;
* ``steps``: one entry per core instance to create, in the component's order, whose
  arguments name core items (exports of earlier instances, lowered host functions,
  ``resource.new/rep/drop`` built-ins);
* ``exports``: the component's exports, each a lifted function (or an instance of them);
* ``host_imports``: the host functions the component lowers, with their WIT types.

Anything this backend does not implement raises ``Unsupported`` with the construct's name.
"""

from __future__ import annotations

from typing import Any

from .. import leb128
from ..records import Fields, ValueFields
from .types import (
    ERROR_CONTEXT, PRIM_CODES, PRIMS, AbstractResource, Prim, ComponentT, DefinedResource, Flags, FuncT, FutureT, Handle,
    ImportedResource, InstanceT, ListT, Malformed, Record, Refused, ResourceT, StreamT, Tuple, Unsupported, ValType,
    Variant, contains_borrow, enum_type, option_type, result_type,
)

# --- core items a plan refers to --------------------------------------------------------------


class CoreExport(Fields):
    """Export ``name`` of the core instance created by step ``slot``."""

    slot: int
    name: str

    _fields = ("slot", "name")

    def __init__(self, slot: int, name: str) -> None:
        self.slot = slot
        self.name = name


class HostImport(Fields):
    """A function imported from the host: ``interface`` is the import name as the component
    spells it (with its version)."""

    interface: str
    name: str
    type: FuncT

    _fields = ("interface", "name", "type")

    def __init__(self, interface: str, name: str, type: FuncT) -> None:
        self.interface = interface
        self.name = name
        self.type = type


class Opts(Fields):
    encoding: str
    memory: Any
    realloc: Any
    post_return: Any
    async_: bool
    callback: Any

    _fields = ("encoding", "memory", "realloc", "post_return", "async_", "callback")

    def __init__(self, encoding: str = "utf8", memory: Any = None, realloc: Any = None, post_return: Any = None, async_: bool = False, callback: Any = None) -> None:
        self.encoding = encoding
        self.memory = memory
        self.realloc = realloc
        self.post_return = post_return
        self.async_ = async_
        self.callback = callback


class Lowered(Fields):
    target: HostImport | Lifted  # a host function, or another component's lifted export
    opts: Opts
    cid: int  # the component instance that lowers it (the caller)

    _fields = ("target", "opts", "cid")

    def __init__(self, target: HostImport | Lifted, opts: Opts, cid: int = 0) -> None:
        self.target = target
        self.opts = opts
        self.cid = cid


class Lifted(Fields):
    core_func: Any
    opts: Opts
    type: FuncT
    cid: int  # the component instance whose core function this lifts (the callee)

    _fields = ("core_func", "opts", "type", "cid")

    def __init__(self, core_func: Any, opts: Opts, type: FuncT, cid: int = 0) -> None:
        self.core_func = core_func
        self.opts = opts
        self.type = type
        self.cid = cid


class ResourceBuiltin(Fields):
    op: str  # new | drop | rep
    resource: ResourceT
    cid: int  # the component instance whose handle table it works on

    _fields = ("op", "resource", "cid")

    def __init__(self, op: str, resource: ResourceT, cid: int = 0) -> None:
        self.op = op
        self.resource = resource
        self.cid = cid


class Builtin(Fields):
    """A ``canon`` built-in of the async ABI (task, waitable, stream, future, error-context,
    context and backpressure built-ins): ``op`` is its name in CanonicalABI.md
    (``stream.read``, ``waitable-set.wait``, ...)."""

    op: str
    type: Any  # stream.*/future.*: the StreamT/FutureT; task.return: the result type
    opts: Opts | None
    flag: bool  # the async? or cancellable? immediate
    index: int  # context.get/set: the slot
    cid: int  # the component instance whose tasks and handle table it works on

    _fields = ("op", "type", "opts", "flag", "index", "cid")

    def __init__(self, op: str, type: Any = None, opts: Opts | None = None, flag: bool = False, index: int = 0, cid: int = 0) -> None:
        self.op = op
        self.type = type
        self.opts = opts
        self.flag = flag
        self.index = index
        self.cid = cid


class Instantiate(Fields):
    module: int
    args: dict[str, int]  # import module name -> step slot

    _fields = ("module", "args")

    def __init__(self, module: int, args: dict[str, int]) -> None:
        self.module = module
        self.args = args


class Bag(Fields):
    items: dict[str, Any]  # export name -> core item

    _fields = ("items",)

    def __init__(self, items: dict[str, Any]) -> None:
        self.items = items


class Plan(ValueFields):
    modules: list[bytes]
    steps: list[Instantiate | Bag]
    exports: dict[str, Any]  # name -> Lifted | dict (instance)
    host_imports: list[HostImport]
    imported_resources: list[ImportedResource]
    # One entry per component instance (0: the outermost; one more for each nested
    # component it instantiates): the index of the instance that instantiated it.
    component_parents: list[int | None]

    _fields = ("modules", "steps", "exports", "host_imports", "imported_resources", "component_parents")

    def __init__(self, modules: list[bytes] | None = None, steps: list[Instantiate | Bag] | None = None,
                 exports: dict[str, Any] | None = None, host_imports: list[HostImport] | None = None,
                 imported_resources: list[ImportedResource] | None = None, component_parents: list[int | None] | None = None) -> None:
        self.modules = [] if modules is None else modules
        self.steps = [] if steps is None else steps
        self.exports = {} if exports is None else exports
        self.host_imports = [] if host_imports is None else host_imports
        self.imported_resources = [] if imported_resources is None else imported_resources
        self.component_parents = [None] if component_parents is None else component_parents



# --- binary reading --------------------------------------------------------------------------


class Reader:
    def __init__(self, data: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise Malformed("unexpected end of component binary")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        try:
            value, self.pos = leb128.decode_u32(self.data, self.pos, self.end)
        except ValueError as e:
            raise Malformed(f"{e} in the component binary") from None
        return value

    def s33(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b & 0x40:
                    result -= 1 << shift
                return result
            if shift > 35:
                raise Malformed("integer too long")

    def bytes(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise Malformed("unexpected end of component binary")
        b = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return b

    def name(self) -> str:
        try:
            return self.bytes(self.u32()).decode()
        except UnicodeDecodeError:
            raise Malformed("a name is not valid UTF-8") from None

    def extern_name(self) -> str:
        tag = self.byte()
        if tag in (0x00, 0x01):
            return self.name()
        if tag == 0x02:
            name = self.name()
            for _ in range(self.u32()):
                kind = self.byte()
                if kind in (0x00, 0x01, 0x02):
                    self.name()
                else:
                    raise Malformed(f"unknown name attribute 0x{kind:02x}")
            return name
        raise Malformed(f"unknown name encoding 0x{tag:02x}")


CORE_SORTS = {0x00: "core func", 0x01: "core table", 0x02: "core memory", 0x03: "core global", 0x04: "core tag",
              0x10: "core type", 0x11: "core module", 0x12: "core instance"}
SORTS = {0x01: "func", 0x02: "value", 0x03: "type", 0x04: "component", 0x05: "instance"}


def read_sort(r: Reader) -> str:
    b = r.byte()
    if b == 0x00:
        cs = r.byte()
        if cs not in CORE_SORTS:
            raise Malformed(f"unknown core sort 0x{cs:02x}")
        return CORE_SORTS[cs]
    if b not in SORTS:
        raise Malformed(f"unknown sort 0x{b:02x}")
    return SORTS[b]


# --- scopes ------------------------------------------------------------------------------------


class Scope:
    """The index spaces of one component definition (or of one instance/component type)."""

    def __init__(self, parent: Scope | None, cid: int | None = None) -> None:
        self.parent = parent
        # The component instance this scope's definitions belong to (type scopes: their parent's).
        self.cid: int = cid if cid is not None else (parent.cid if parent is not None else 0)
        self.spaces: dict[str, list[Any]] = {s: [] for s in (*CORE_SORTS.values(), *SORTS.values())}

    def get(self, sort: str, idx: int) -> Any:
        space = self.spaces[sort]
        if idx >= len(space):
            raise Malformed(f"{sort} index {idx} out of range")
        return space[idx]

    def add(self, sort: str, item: Any) -> None:
        self.spaces[sort].append(item)

    def outer(self, count: int) -> Scope:
        s: Scope | None = self
        for _ in range(count):
            s = s.parent if s is not None else None
        if s is None:
            raise Malformed("outer alias reaches past the outermost component")
        return s


class ComponentDef(Fields):
    data: bytes
    parent: Scope

    _fields = ("data", "parent")

    def __init__(self, data: bytes, parent: Scope) -> None:
        self.data = data
        self.parent = parent


class ImportedInstance(Fields):
    name: str
    exports: dict[str, tuple[str, Any]]

    _fields = ("name", "exports")

    def __init__(self, name: str, exports: dict[str, tuple[str, Any]]) -> None:
        self.name = name
        self.exports = exports


# --- the evaluator -------------------------------------------------------------------------------


class Planner:
    def __init__(self) -> None:
        self.plan = Plan()

    # types ------------------------------------------------------------------------------
    def valtype(self, r: Reader, scope: Scope) -> ValType:
        code = r.s33()
        if code >= 0:
            t = scope.get("type", code)
            if not isinstance(t, ValType):
                raise Malformed(f"type index {code} is not a value type")
            return t
        prim = PRIM_CODES.get(code & 0x7F)
        if prim is None:
            raise Unsupported(f"value type 0x{code & 0x7F:02x}")
        return PRIMS[prim]

    def resource_of(self, scope: Scope, idx: int) -> ResourceT:
        t = scope.get("type", idx)
        if not isinstance(t, ResourceT):
            raise Malformed(f"type index {idx} is not a resource")
        return t

    def opt_valtype(self, r: Reader, scope: Scope) -> ValType | None:
        flag = r.byte()
        if flag == 0x00:
            return None
        if flag == 0x01:
            return self.valtype(r, scope)
        raise Malformed("bad optional value type")

    def deftype(self, r: Reader, scope: Scope) -> Any:
        code = r.byte()
        if code in PRIM_CODES:
            return PRIMS[PRIM_CODES[code]]
        if code == 0x72:
            return Record([(r.name(), self.valtype(r, scope)) for _ in range(r.u32())])
        if code == 0x71:
            cases = []
            for _ in range(r.u32()):
                label = r.name()
                t = self.opt_valtype(r, scope)
                if r.byte() != 0x00:
                    raise Unsupported("variant case refinements")
                cases.append((label, t))
            return Variant(cases)
        if code == 0x70:
            return ListT(self.valtype(r, scope))
        if code == 0x6F:
            return Tuple([self.valtype(r, scope) for _ in range(r.u32())])
        if code == 0x6E:
            return Flags([r.name() for _ in range(r.u32())])
        if code == 0x6D:
            return enum_type([r.name() for _ in range(r.u32())])
        if code == 0x6B:
            return option_type(self.valtype(r, scope))
        if code == 0x6A:
            ok = self.opt_valtype(r, scope)
            err = self.opt_valtype(r, scope)
            return result_type(ok, err)
        if code == 0x69:
            return Handle(self.resource_of(scope, r.u32()), True)
        if code == 0x68:
            return Handle(self.resource_of(scope, r.u32()), False)
        if code in (0x40, 0x43):
            params = [(r.name(), self.valtype(r, scope)) for _ in range(r.u32())]
            tag = r.byte()
            if tag == 0x00:
                result = self.valtype(r, scope)
            elif tag == 0x01 and r.byte() == 0x00:
                result = None
            else:
                raise Unsupported("functions with named results")
            return FuncT(params, result, is_async=code == 0x43)
        if code == 0x66:
            elem = self.opt_valtype(r, scope)
            if isinstance(elem, Prim) and elem.name == "char":
                raise Malformed("`stream<char>` is not valid (the Canonical ABI does not define it yet)")
            return StreamT(elem)
        if code == 0x65:
            return FutureT(self.opt_valtype(r, scope))
        if code == 0x64:
            return ERROR_CONTEXT
        if code == 0x42:
            return self.instance_type(r, Scope(scope))
        if code == 0x41:
            self.instance_type(r, Scope(scope), component=True)
            return ComponentT()
        if code == 0x3F:
            if r.byte() != 0x7F:
                raise Malformed("resource representation must be i32")
            dtor = None
            if r.byte() == 0x01:
                dtor = ("core func", r.u32())
            res = DefinedResource(dtor, scope.cid)
            return res
        names = {0x67: "fixed-length lists", 0x63: "maps", 0x3E: "async resources"}
        raise Unsupported(names.get(code, f"type constructor 0x{code:02x}"))

    def externtype(self, r: Reader, scope: Scope) -> tuple[str, Any]:
        tag = r.byte()
        if tag == 0x00:
            r.byte()
            r.u32()
            raise Unsupported("core module imports")
        if tag == 0x01:
            t = scope.get("type", r.u32())
            if not isinstance(t, FuncT):
                raise Malformed("func import of a non-function type")
            return "func", t
        if tag == 0x02:
            raise Unsupported("value imports")
        if tag == 0x03:
            bound = r.byte()
            if bound == 0x00:
                return "type", ("eq", scope.get("type", r.u32()))
            if bound == 0x01:
                return "type", ("sub", None)
            raise Malformed("bad type bound")
        if tag == 0x04:
            r.u32()
            return "component", None
        if tag == 0x05:
            t = scope.get("type", r.u32())
            if not isinstance(t, InstanceT):
                raise Malformed("instance import of a non-instance type")
            return "instance", t
        raise Malformed(f"bad extern type 0x{tag:02x}")

    def instance_type(self, r: Reader, local: Scope, component: bool = False) -> InstanceT:
        it = InstanceT()
        for _ in range(r.u32()):
            tag = r.byte()
            if tag == 0x00:
                self.skip_core_type(r)
            elif tag == 0x01:
                local.add("type", self.deftype(r, local))
            elif tag == 0x02:
                self.alias(r, local)
            elif tag in (0x03, 0x04):
                if tag == 0x03 and not component:
                    raise Malformed("import declaration in an instance type")
                name = r.extern_name()
                sort, t = self.externtype(r, local)
                if sort == "type":
                    bound, target = t
                    t = target if bound == "eq" else AbstractResource(name)
                    local.add("type", t)
                elif sort == "instance":
                    local.add("instance", t)
                elif sort == "func":
                    local.add("func", t)
                if tag == 0x04:
                    it.exports[name] = (sort, t)
            else:
                raise Malformed(f"bad instance type declaration 0x{tag:02x}")
        return it

    def skip_core_type(self, r: Reader) -> None:
        if r.byte() != 0x60:
            raise Unsupported("core module types inside component types")
        for _ in range(2):
            for _ in range(r.u32()):
                if r.byte() not in (0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F):
                    raise Unsupported("core reference types")

    # aliases ----------------------------------------------------------------------------
    def alias(self, r: Reader, scope: Scope) -> None:
        sort = read_sort(r)
        target = r.byte()
        if target == 0x00:
            inst = scope.get("instance", r.u32())
            name = r.name()
            exports = inst.exports if isinstance(inst, ImportedInstance) else inst
            if isinstance(inst, InstanceT):
                exports = inst.exports
            entry = exports.get(name)
            if entry is None:
                raise Malformed(f"instance has no export {name!r}")
            esort, item = entry
            if esort != sort:
                raise Malformed(f"export {name!r} is a {esort}, not a {sort}")
            scope.add(sort, item)
        elif target == 0x01:
            slot = scope.get("core instance", r.u32())
            name = r.name()
            scope.add(sort, self.core_export(slot, name))
        elif target == 0x02:
            count, idx = r.u32(), r.u32()
            scope.add(sort, scope.outer(count).get(sort, idx))
        else:
            raise Malformed(f"bad alias target 0x{target:02x}")

    def core_export(self, slot: int, name: str) -> Any:
        step = self.plan.steps[slot]
        if isinstance(step, Bag):
            if name not in step.items:
                raise Malformed(f"core instance has no export {name!r}")
            return step.items[name]
        return CoreExport(slot, name)

    # canon --------------------------------------------------------------------------------
    def opts(self, r: Reader, scope: Scope) -> Opts:
        o = Opts()
        for _ in range(r.u32()):
            tag = r.byte()
            if tag == 0x00:
                o.encoding = "utf8"
            elif tag == 0x01:
                o.encoding = "utf16"
            elif tag == 0x02:
                o.encoding = "latin1+utf16"
            elif tag == 0x03:
                o.memory = scope.get("core memory", r.u32())
            elif tag == 0x04:
                o.realloc = scope.get("core func", r.u32())
            elif tag == 0x05:
                o.post_return = scope.get("core func", r.u32())
            elif tag == 0x06:
                o.async_ = True
            elif tag == 0x07:
                o.callback = scope.get("core func", r.u32())
            else:
                raise Unsupported(f"canon option 0x{tag:02x}")
        return o

    def canon(self, r: Reader, scope: Scope) -> None:
        tag = r.byte()
        if tag == 0x00:
            if r.byte() != 0x00:
                raise Malformed("canon lift of a non-function")
            core_func = scope.get("core func", r.u32())
            opts = self.opts(r, scope)
            ft = scope.get("type", r.u32())
            if not isinstance(ft, FuncT):
                raise Malformed("canon lift with a non-function type")
            check_lift_opts(opts, ft)
            scope.add("func", Lifted(core_func, opts, ft, scope.cid))
        elif tag == 0x01:
            if r.byte() != 0x00:
                raise Malformed("canon lower of a non-function")
            func = scope.get("func", r.u32())
            opts = self.opts(r, scope)
            if not isinstance(func, (HostImport, Lifted)):
                raise Malformed("canon lower of something that is not a function")
            if opts.callback is not None or opts.post_return is not None:
                raise Malformed("canon lower takes no callback or post-return option")
            name = func.name if isinstance(func, HostImport) else "a lifted function"
            if opts.async_ and not func.type.is_async:
                raise Malformed(f"the `async` canonical option requires an async function type ({name})")
            if opts.async_ and opts.memory is None and (func.type.result is not None or func.type.async_params_spill):
                raise Malformed(f"canon lower async of {name} has no memory option")
            scope.add("core func", Lowered(func, opts, scope.cid))
        elif tag in (0x02, 0x03, 0x04):
            res = self.resource_of(scope, r.u32()).resolve()
            scope.add("core func", ResourceBuiltin({0x02: "new", 0x03: "drop", 0x04: "rep"}[tag], res, scope.cid))
        else:
            item = self.builtin(tag, r, scope)
            item.cid = scope.cid
            scope.add("core func", item)

    def builtin(self, tag: int, r: Reader, scope: Scope) -> Builtin:
        """The async ABI's built-ins (Binary.md ``canon``); the thread built-ins that need a
        second wasm stack are refused, naming the feature."""
        simple = BUILTINS_WITHOUT_IMMEDIATES.get(tag)
        if simple is not None:
            return Builtin(simple)
        if tag == 0x09:  # task.return
            result = None
            flag = r.byte()
            if flag == 0x00:
                result = self.valtype(r, scope)
            elif flag == 0x01:
                if r.byte() != 0x00:
                    raise Unsupported("task.return with named results")
            else:
                raise Malformed("bad task.return result list")
            return Builtin("task.return", result, self.opts(r, scope))
        if tag in (0x0A, 0x0B):  # context.get/set
            if r.byte() != 0x7F:
                raise Refused("64-bit context.get/set (the memory64 ABI)")
            index = r.u32()
            if index > 1:
                raise Malformed(f"context slot {index} (there are two)")
            return Builtin("context.get" if tag == 0x0A else "context.set", index=index)
        if tag in STREAM_FUTURE_BUILTINS:
            op, with_opts, with_flag = STREAM_FUTURE_BUILTINS[tag]
            t = scope.get("type", r.u32())
            want = StreamT if op.startswith("stream.") else FutureT
            if not isinstance(t, want):
                raise Malformed(f"{op} of a type that is not a {want.__name__[:-1].lower()}")
            if contains_borrow(t.elem):
                raise Malformed(f"{op} of a type holding borrowed handles")
            opts = self.opts(r, scope) if with_opts else None
            flag = r.byte() == 0x01 if with_flag else False
            if opts is not None and t.elem is not None and opts.memory is None:
                raise Malformed(f"{op} of {t.signature()} has no memory option")
            return Builtin(op, t, opts, flag)
        if tag == 0x06:  # subtask.cancel async?
            return Builtin("subtask.cancel", flag=r.byte() == 0x01)
        if tag == 0x0C:  # thread.yield cancellable?
            return Builtin("thread.yield", flag=r.byte() == 0x01)
        if tag in (0x20, 0x21):  # waitable-set.wait/poll cancellable? memory
            flag = r.byte() == 0x01
            opts = Opts(memory=scope.get("core memory", r.u32()))
            return Builtin("waitable-set.wait" if tag == 0x20 else "waitable-set.poll", opts=opts, flag=flag)
        if tag in (0x1C, 0x1D):  # error-context.new/debug-message opts
            return Builtin("error-context.new" if tag == 0x1C else "error-context.debug-message", opts=self.opts(r, scope))
        if tag in THREAD_BUILTINS:
            raise Refused(f"canon {THREAD_BUILTINS[tag]} (cooperative threads need stack switching, which "
                          "wasmtime's core API does not offer)")
        raise Unsupported(f"canon built-in 0x{tag:02x}")

    # sections ------------------------------------------------------------------------------
    def component(self, data: bytes | memoryview, scope: Scope, args: dict[str, tuple[str, Any]] | None) -> dict[str, tuple[str, Any]]:
        """Evaluate one component body; ``args`` is None for the outermost (host) component."""
        if bytes(data[:8]) != b"\0asm\x0d\x00\x01\x00":
            raise Malformed("not a component binary (bad preamble)")
        exports: dict[str, tuple[str, Any]] = {}
        r = Reader(data, 8)
        while r.pos < r.end:
            sid = r.byte()
            size = r.u32()
            end = r.pos + size
            if end > r.end:
                raise Malformed("section runs past the end of the component")
            sec = Reader(data, r.pos, end)
            if sid == 0x00:
                pass
            elif sid == 0x01:
                self.plan.modules.append(bytes(data[r.pos:end]))
                scope.add("core module", len(self.plan.modules) - 1)
            elif sid == 0x02:
                for _ in range(sec.u32()):
                    self.core_instance(sec, scope)
            elif sid == 0x03:
                pass  # core types: only module types of core module imports use them (unsupported there)
            elif sid == 0x04:
                scope.add("component", ComponentDef(bytes(data[r.pos:end]), scope))
            elif sid == 0x05:
                for _ in range(sec.u32()):
                    self.instance(sec, scope)
            elif sid == 0x06:
                for _ in range(sec.u32()):
                    self.alias(sec, scope)
            elif sid == 0x07:
                for _ in range(sec.u32()):
                    t = self.deftype(sec, scope)
                    if isinstance(t, DefinedResource):
                        if t.dtor is not None:
                            t.dtor = scope.get("core func", t.dtor[1])
                    scope.add("type", t)
            elif sid == 0x08:
                for _ in range(sec.u32()):
                    self.canon(sec, scope)
            elif sid == 0x09:
                raise Unsupported("start functions")
            elif sid == 0x0A:
                for _ in range(sec.u32()):
                    self.import_(sec, scope, args)
            elif sid == 0x0B:
                for _ in range(sec.u32()):
                    name = sec.extern_name()
                    sort = read_sort(sec)
                    item = scope.get(sort, sec.u32())
                    if sec.byte() == 0x01:
                        self.externtype(sec, scope)  # ascribed type: structurally the same
                    scope.add(sort, item)
                    exports[name] = (sort, item)
            elif sid == 0x0C:
                raise Unsupported("value definitions")
            else:
                raise Malformed(f"unknown section id {sid}")
            r.pos = end
        return exports

    def core_instance(self, r: Reader, scope: Scope) -> None:
        tag = r.byte()
        if tag == 0x00:
            module = scope.get("core module", r.u32())
            args = {}
            for _ in range(r.u32()):
                name = r.name()
                if r.byte() != 0x12:
                    raise Malformed("core instantiation argument is not an instance")
                args[name] = scope.get("core instance", r.u32())
            self.plan.steps.append(Instantiate(module, args))
        elif tag == 0x01:
            items = {}
            for _ in range(r.u32()):
                name = r.name()
                cs = r.byte()
                sort = CORE_SORTS.get(cs)
                if sort is None:
                    raise Malformed("bad core sort")
                items[name] = scope.get(sort, r.u32())
            self.plan.steps.append(Bag(items))
        else:
            raise Malformed("bad core instance")
        scope.add("core instance", len(self.plan.steps) - 1)

    def instance(self, r: Reader, scope: Scope) -> None:
        tag = r.byte()
        if tag == 0x00:
            comp = scope.get("component", r.u32())
            args = {}
            for _ in range(r.u32()):
                name = r.name()
                sort = read_sort(r)
                args[name] = (sort, scope.get(sort, r.u32()))
            if not isinstance(comp, ComponentDef):
                raise Unsupported("instantiating an imported component")
            cid = len(self.plan.component_parents)
            self.plan.component_parents.append(scope.cid)
            exports = self.component(comp.data, Scope(comp.parent, cid), args)
            scope.add("instance", exports)
        elif tag == 0x01:
            exports = {}
            for _ in range(r.u32()):
                name = r.extern_name()
                sort = read_sort(r)
                exports[name] = (sort, scope.get(sort, r.u32()))
            scope.add("instance", exports)
        else:
            raise Malformed("bad instance")

    def import_(self, r: Reader, scope: Scope, args: dict[str, tuple[str, Any]] | None) -> None:
        name = r.extern_name()
        sort, t = self.externtype(r, scope)
        if args is not None:
            if name not in args:
                raise Malformed(f"nested component import {name!r} has no argument")
            asort, item = args[name]
            if asort != sort:
                raise Malformed(f"nested component import {name!r} given a {asort}")
            if sort == "type" and t[0] == "eq" and not isinstance(item, (ValType, ResourceT)):
                item = t[1]
            scope.add(sort, item)
            return
        if sort == "instance":
            exports: dict[str, tuple[str, Any]] = {}
            for ename, (esort, ety) in t.exports.items():
                if esort == "func":
                    hi = HostImport(name, ename, ety)
                    self.plan.host_imports.append(hi)
                    exports[ename] = ("func", hi)
                elif esort == "type":
                    if isinstance(ety, AbstractResource) and ety.target is None:
                        ety.target = ImportedResource(name, ename)
                        self.plan.imported_resources.append(ety.target)
                    exports[ename] = ("type", ety)
                else:
                    raise Unsupported(f"{esort} exports of imported instance {name}")
            scope.add("instance", ImportedInstance(name, exports))
        elif sort == "func":
            hi = HostImport("", name, t)
            self.plan.host_imports.append(hi)
            scope.add("func", hi)
        elif sort == "type":
            bound, target = t
            if bound == "sub":
                res = ImportedResource("", name)
                self.plan.imported_resources.append(res)
                scope.add("type", res)
            else:
                scope.add("type", target)
        else:
            raise Unsupported(f"{sort} imports")


BUILTINS_WITHOUT_IMMEDIATES = {
    0x05: "task.cancel", 0x0D: "subtask.drop", 0x1E: "error-context.drop", 0x1F: "waitable-set.new",
    0x22: "waitable-set.drop", 0x23: "waitable.join", 0x24: "backpressure.inc", 0x25: "backpressure.dec",
    0x26: "thread.index",
}
# tag -> (op, has canon options, has an async? immediate)
STREAM_FUTURE_BUILTINS = {
    0x0E: ("stream.new", False, False), 0x0F: ("stream.read", True, False), 0x10: ("stream.write", True, False),
    0x11: ("stream.cancel-read", False, True), 0x12: ("stream.cancel-write", False, True),
    0x13: ("stream.drop-readable", False, False), 0x14: ("stream.drop-writable", False, False),
    0x15: ("future.new", False, False), 0x16: ("future.read", True, False), 0x17: ("future.write", True, False),
    0x18: ("future.cancel-read", False, True), 0x19: ("future.cancel-write", False, True),
    0x1A: ("future.drop-readable", False, False), 0x1B: ("future.drop-writable", False, False),
}
THREAD_BUILTINS = {
    0x27: "thread.new-indirect", 0x28: "thread.resume-later", 0x29: "thread.suspend",
    0x2A: "thread.suspend-then-resume", 0x2B: "thread.yield-then-resume", 0x2C: "thread.suspend-then-promote",
    0x2D: "thread.yield-then-promote", 0x40: "thread.spawn-ref", 0x41: "thread.spawn-indirect",
    0x42: "thread.available-parallelism",
}


def check_lift_opts(opts: Opts, ft: FuncT) -> None:
    """``canonopt`` validation of a ``canon lift`` (CanonicalABI.md, canon lift)."""
    if opts.async_:
        if not ft.is_async:
            raise Malformed("the `async` canonical option requires an async function type")
        if opts.post_return is not None:
            raise Malformed("canon lift async takes no post-return option")
    elif opts.callback is not None:
        raise Malformed("canon lift has a callback but is not async")


def make_plan(wasm: bytes) -> Plan:
    planner = Planner()
    try:
        exports = planner.component(memoryview(wasm), Scope(None), None)
    except (IndexError, KeyError) as e:
        raise Malformed(f"malformed component: {e}") from None
    planner.plan.exports = _export_tree(exports)
    return planner.plan


def _export_tree(exports: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, (sort, item) in exports.items():
        if sort == "func":
            if isinstance(item, Lifted):
                tree[name] = item
            else:
                raise Unsupported(f"re-exporting imported function {name}")
        elif sort == "instance":
            if isinstance(item, dict):
                tree[name] = _export_tree(item)
            else:
                raise Unsupported(f"re-exporting imported instance {name}")
        # types, components: nothing to call
    return tree
