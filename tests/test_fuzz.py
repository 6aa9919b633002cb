"""Property tests (Hypothesis) over the host's parsers and value conversion: hostile input
gives the module's own error type, never another exception, never a hang.

- ClientHello: structurally generated hellos (random suites, versions, session ids, well-
  and ill-formed extensions, random record fragmentation) parse to what was sent or raise
  ``ClientHelloError`` (tests/test_client_hello.py covers random bytes and mutations of
  captured hellos).
- Certificates and keys (tls/config.load_certificates, PrivateIdentity.from_pem): PEM and
  DER, chains, encrypted keys with right, wrong and needless passphrases, truncated and
  bit-flipped input: ``ValueError`` with a message, or a loaded identity.
- ``--invoke`` parsing (cli.parse_invoke): random text gives ``UsageError``; random values
  written as WAVE text parse back to themselves.
- Component binaries: real components (a WAT one with resources, the TLS handshake guest)
  with bytes flipped, inserted or cut off load on the core runtime or raise ``GuestError``;
  what loads instantiates or raises ``GuestError``/a wasmtime error, never another exception.
- Value lifting: random values of random WIT types (every primitive, string, list, option,
  result, tuple, record, variant, enum, flags, nested) go host -> guest export -> guest's
  import of a host function -> back, through a WAT component generated for each type, and
  come back equal.

Example counts are bounded for CI (``FUZZ_EXAMPLES`` scales them; the per-test counts run are
printed with ``pytest -s``), every test has a deadline-free Hypothesis setting and the
module a pytest timeout.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasi_tls_host import Host
from wasi_tls_host.cli import UsageError, format_value, parse_invoke
from wasi_tls_host.runtime.binding import Interface
from wasi_tls_host.runtime.values import Err, Ok, Some, Variant
from wasi_tls_host.tls.client_hello import ClientHello, ClientHelloError, ClientHelloReader
from wasi_tls_host.tls.config import load_certificates
from wasi_tls_host.runtime.values import WitError
from wasi_tls_host.tls.identities import (
    PrivateIdentity,
    PublicIdentity,
    public_identity_issuer,
    public_identity_not_after,
    public_identity_not_before,
    public_identity_subject,
    public_identity_subject_alt_names,
)

pytestmark = pytest.mark.timeout(300)

SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
RUNS: dict[str, int] = {}


def fuzz(examples: int) -> Any:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])


def count(name: str) -> None:
    RUNS[name] = RUNS.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Any:
    yield
    print("\nfuzz examples run:", ", ".join(f"{k}={v}" for k, v in sorted(RUNS.items())))


# --- ClientHello ------------------------------------------------------------------------------


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def vec(width: int, data: bytes) -> bytes:
    return len(data).to_bytes(width, "big") + data


@st.composite
def extensions(draw: st.DrawFn) -> tuple[list[tuple[int, bytes]], dict[str, Any]]:
    """Extensions in random order: well-formed SNI/ALPN/versions (remembered in ``expect``)
    or random bytes under any type."""
    exts: dict[int, bytes] = {}
    expect: dict[str, Any] = {}
    if draw(st.booleans()):
        labels = draw(st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20), min_size=1, max_size=4))
        name = ".".join(labels)
        exts[0] = vec(2, b"\x00" + vec(2, name.encode()))
        expect["server_name"] = name
    if draw(st.booleans()):
        protocols = draw(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=5))
        exts[16] = vec(2, b"".join(vec(1, p) for p in protocols))
        expect["alpn"] = protocols
    if draw(st.booleans()):
        versions = draw(st.lists(st.sampled_from([0x0303, 0x0304, 0x0A0A, 0x0302]), min_size=1, max_size=5))
        exts[43] = vec(1, b"".join(u16(v) for v in versions))
        expect["versions"] = versions
    for ext_type, data in draw(st.lists(st.tuples(st.integers(0, 65535), st.binary(max_size=64)), max_size=6)):
        if ext_type not in exts:
            exts[ext_type] = data
            expect["garbage"] = True
    order = draw(st.permutations(list(exts)))
    return [(t, exts[t]) for t in order], expect


@st.composite
def client_hellos(draw: st.DrawFn) -> tuple[bytes, list[int], dict[str, Any]]:
    suites = draw(st.lists(st.integers(0, 65535), min_size=1, max_size=40))
    exts, expect = draw(extensions())
    body = (u16(draw(st.sampled_from([0x0301, 0x0303, 0x0303, 0x0200])))
            + draw(st.binary(min_size=32, max_size=32))
            + vec(1, draw(st.binary(max_size=32)))
            + vec(2, b"".join(u16(s) for s in suites))
            + vec(1, draw(st.sampled_from([b"\x00", b"\x01\x00", b"\x01"])))
            + vec(2, b"".join(u16(t) + vec(2, d) for t, d in exts)))
    message = b"\x01" + vec(3, body)
    # Records of random sizes (1..2^14), the way clients and middleboxes fragment.
    records, pos = [], 0
    while pos < len(message):
        n = draw(st.integers(1, 1 << 14))
        records.append(b"\x16\x03\x01" + vec(2, message[pos:pos + n]))
        pos += n
    return b"".join(records), suites, expect


@fuzz(300)
@given(client_hellos(), st.integers(0, 2**32))
def test_generated_client_hellos_parse_to_what_was_sent(case: tuple[bytes, list[int], dict[str, Any]], seed: int) -> None:
    count("client_hello")
    data, suites, expect = case
    reader = ClientHelloReader()
    rnd = random.Random(seed)
    hello: ClientHello | None = None
    try:
        pos = 0
        while pos < len(data) and hello is None:
            n = rnd.randint(1, 3000)
            hello = reader.feed(data[pos:pos + n])
            pos += n
    except ClientHelloError as e:
        assert e.code and str(e)
        return
    assert hello is not None, "a complete hello must be parsed or refused, not left waiting"
    assert hello.cipher_suites == suites
    if "server_name" in expect:
        assert hello.server_name == expect["server_name"]
    if "alpn" in expect:
        assert hello.alpn_protocols == expect["alpn"]
    if "versions" in expect:
        assert hello.supported_versions == expect["versions"]


# --- certificates and keys ------------------------------------------------------------------


class Material:
    """One key type's certificate chain and key in every encoding (a plain class: Hypothesis
    prints its repr, not its bytes)."""

    def __init__(self, **fields: Any) -> None:
        self.chain_pem: bytes = fields["chain_pem"]
        self.chain_der: list[bytes] = fields["chain_der"]
        self.key_pem: bytes = fields["key_pem"]
        self.key_der: bytes = fields["key_der"]
        self.encrypted_key_pem: bytes = fields["encrypted_key_pem"]
        self.passphrase: bytes = fields["passphrase"]
        self.kind: str = fields["kind"]

    def __repr__(self) -> str:
        return f"Material({self.kind})"


@pytest.fixture(scope="module")
def material() -> list[Material]:
    ca = trustme.CA()
    out = []
    for key_type in (trustme.KeyType.ECDSA, trustme.KeyType.RSA):
        leaf = ca.issue_cert("fuzz.test", key_type=key_type)
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        chain_pem = b"".join(c.bytes() for c in leaf.cert_chain_pems)
        out.append(Material(
            chain_pem=chain_pem,
            chain_der=[c.public_bytes(serialization.Encoding.DER) for c in load_certificates(chain_pem)],
            key_pem=leaf.private_key_pem.bytes(),
            key_der=key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            encrypted_key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.BestAvailableEncryption(b"right")),
            passphrase=b"right",
            kind=key_type.name,
        ))
    return out


def damage(data: bytes, draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["keep", "truncate", "flip", "splice", "garbage-before", "garbage-after"]))
    if how == "keep" or not data:
        return data
    if how == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "flip":
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(b)
    if how == "splice":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.binary(max_size=40)) + data[i:]
    if how == "garbage-before":
        return draw(st.binary(max_size=40)) + data
    return data + draw(st.binary(max_size=40))


@fuzz(250)
@given(st.data())
def test_certificate_loader_gives_certificates_or_value_error(material: list[Material], data: st.DataObject) -> None:
    count("certificates")
    m = data.draw(st.sampled_from(material))
    source = data.draw(st.sampled_from(["pem", "der", "der-chain", "random"]))
    raw = {"pem": m.chain_pem, "der": m.chain_der[0], "der-chain": b"".join(m.chain_der),
           "random": data.draw(st.binary(max_size=600))}[source]
    text = damage(raw, data.draw)
    try:
        certs = load_certificates(text)
    except ValueError as e:
        assert str(e)
        return
    assert certs
    # What a guest can then ask of it (parse-certificate + public-identity methods): answers,
    # or the module's error for the guest, never a host exception (which would trap).
    identity = PublicIdentity(certs)
    for method in (public_identity_subject, public_identity_issuer, public_identity_subject_alt_names,
                   public_identity_not_before, public_identity_not_after):
        try:
            method(None, identity)  # type: ignore[arg-type]
        except WitError:
            pass


@fuzz(150)
@given(st.data())
def test_identity_loader_gives_identities_or_value_error(material: list[Material], data: st.DataObject) -> None:
    count("identities")
    m = data.draw(st.sampled_from(material))
    other = data.draw(st.sampled_from(material))
    key, passphrase = data.draw(st.sampled_from([
        (m.key_pem, None), (m.key_der, None), (other.key_pem, None),
        (m.encrypted_key_pem, m.passphrase), (m.encrypted_key_pem, b"wrong"), (m.encrypted_key_pem, None),
        (m.key_pem, b"needless"),
    ]))
    chain = damage(m.chain_pem, data.draw)
    key = damage(key, data.draw)
    try:
        identity = PrivateIdentity.from_pem("fuzz", chain, key, passphrase)
    except ValueError as e:
        message = str(e)
        assert message.startswith("identity 'fuzz'") or "certificate" in message, message
        if passphrase == b"needless" and "is encrypted" in message:
            raise AssertionError(f"an unencrypted key given a passphrase is not 'encrypted': {message}") from None
        return
    assert identity.chain


# --- --invoke ---------------------------------------------------------------------------------


@fuzz(400)
@given(st.text(max_size=80))
def test_invoke_parser_on_random_text(text: str) -> None:
    count("invoke_text")
    try:
        name, args = parse_invoke(text)
    except UsageError as e:
        assert str(e).startswith("--invoke")
        return
    assert name and isinstance(args, list)


invoke_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.tuples(inner, inner)
                   | st.builds(Some, inner.filter(lambda v: v is not None))
                   | st.builds(Ok, inner) | st.builds(Err, inner)),
    max_leaves=10,
)


@fuzz(300)
@given(st.from_regex(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", fullmatch=True), st.lists(invoke_values, max_size=4))
def test_invoke_values_round_trip_through_their_text(name: str, values: list[Any]) -> None:
    count("invoke_round_trip")
    text = f"{name}({', '.join(format_value(v) for v in values)})"
    assert parse_invoke(text) == (name, values)


def test_invoke_bare_names_reach_enum_and_result_parameters(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--invoke 'echo(e2)'` names an enum case; `err` is a result's error case."""
    from wasi_tls_host.host import Host as _Host

    for ty, literal, expected in ((_enum(3), "e2", "e2"), (("(result u8 (error u8))", ["i32", "i32"], st.none(), ()), "err(7)", Err(7)),
                                  (("(result)", ["i32"], st.none(), ()), "err", Err(None))):
        iface = Interface(f"wasi-tls-host:fuzz{next(_wat_counter)}/echo")
        iface.func("echo")(lambda cx, v: v)
        wasm = _compile(echo_component(ty[0], ty[1], iface.name, ty[3]), tmp_path)
        with _Host(interfaces=[iface], use_cache=False).instantiate(wasm) as guest:
            name, args = parse_invoke(f"echo({literal})")
            assert guest.call(name, *args) == expected


# --- value lifting through a generated WAT guest ---------------------------------------------

# A WIT type: its text, its flattened core types, a strategy for its Python values, and the
# named types (records, variants, enums, flags) it needs defined first, in order.
Ty = tuple[str, list[str], st.SearchStrategy[Any], tuple[tuple[str, str], ...]]

_F32 = st.floats(width=32, allow_nan=False)
_PRIMS: list[Ty] = [
    ("bool", ["i32"], st.booleans(), ()),
    ("u8", ["i32"], st.integers(0, 255), ()), ("s8", ["i32"], st.integers(-128, 127), ()),
    ("u16", ["i32"], st.integers(0, 65535), ()), ("s16", ["i32"], st.integers(-32768, 32767), ()),
    ("u32", ["i32"], st.integers(0, 2**32 - 1), ()), ("s32", ["i32"], st.integers(-(2**31), 2**31 - 1), ()),
    ("u64", ["i64"], st.integers(0, 2**64 - 1), ()), ("s64", ["i64"], st.integers(-(2**63), 2**63 - 1), ()),
    ("f32", ["f32"], _F32, ()), ("f64", ["f64"], st.floats(allow_nan=False), ()),
    ("char", ["i32"], st.characters(exclude_categories=["Cs"]), ()),
    ("string", ["i32", "i32"], st.text(max_size=20), ()),
]
_names = iter(range(1, 1 << 40))


def _join(a: str, b: str) -> str:
    if a == b:
        return a
    if {a, b} == {"i32", "f32"}:
        return "i32"
    return "i64"


def _joined(*flats: list[str]) -> list[str]:
    out: list[str] = []
    for flat in flats:
        for i, t in enumerate(flat):
            out[i:i + 1] = [_join(out[i], t)] if i < len(out) else [t]
    return out


def _defs(*types: Ty | None) -> tuple[tuple[str, str], ...]:
    return tuple(d for t in types if t is not None for d in t[3])


def _named(body: str, flat: list[str], values: st.SearchStrategy[Any], needs: tuple[tuple[str, str], ...]) -> Ty:
    name = f"t{next(_names)}"
    return (f"${name}", flat, values, (*needs, (name, body)))


def _compound(inner: st.SearchStrategy[Ty]) -> st.SearchStrategy[Ty]:
    def list_of(t: Ty) -> Ty:
        if t[0] == "u8":
            return ("(list u8)", ["i32", "i32"], st.binary(max_size=40), ())
        return (f"(list {t[0]})", ["i32", "i32"], st.lists(t[2], max_size=4), t[3])

    def option_of(t: Ty) -> Ty:
        payload = t[2].map(Some) if t[0].startswith("(option") else t[2]
        return (f"(option {t[0]})", ["i32", *t[1]], st.none() | payload, t[3])

    def result_of(pair: tuple[Ty | None, Ty | None]) -> Ty:
        ok, err = pair
        wat = "(result" + (f" {ok[0]}" if ok else "") + (f" (error {err[0]})" if err else "") + ")"
        flat = ["i32", *_joined(ok[1] if ok else [], err[1] if err else [])]
        oks = st.builds(Ok, ok[2]) if ok else st.just(Ok(None))
        errs = st.builds(Err, err[2]) if err else st.just(Err(None))
        return (wat, flat, oks | errs, _defs(ok, err))

    def tuple_of(ts: list[Ty]) -> Ty:
        return ("(tuple " + " ".join(t[0] for t in ts) + ")", [f for t in ts for f in t[1]],
                st.tuples(*(t[2] for t in ts)), _defs(*ts))

    def record_of(ts: list[Ty]) -> Ty:
        body = "(record " + " ".join(f'(field "f{i}" {t[0]})' for i, t in enumerate(ts)) + ")"
        values = st.fixed_dictionaries({f"f{i}": t[2] for i, t in enumerate(ts)})
        return _named(body, [f for t in ts for f in t[1]], values, _defs(*ts))

    def variant_of(cases: list[Ty | None]) -> Ty:
        body = "(variant " + " ".join(f'(case "c{i}"' + (f" {t[0]})" if t else ")") for i, t in enumerate(cases)) + ")"
        flat = ["i32", *_joined(*(t[1] for t in cases if t))]
        values = st.one_of(*(st.builds(Variant, st.just(f"c{i}"), t[2]) if t else st.just(Variant(f"c{i}"))
                             for i, t in enumerate(cases)))
        return _named(body, flat, values, _defs(*cases))

    return (inner.map(list_of) | inner.map(option_of)
            | st.tuples(st.none() | inner, st.none() | inner).map(result_of)
            | st.lists(inner, min_size=1, max_size=4).map(tuple_of)
            | st.lists(inner, min_size=1, max_size=4).map(record_of)
            | st.lists(st.none() | inner, min_size=1, max_size=4).map(variant_of))


def _enum(n: int) -> Ty:
    cases = [f"e{i}" for i in range(n)]
    return _named("(enum " + " ".join(f'"{c}"' for c in cases) + ")", ["i32"], st.sampled_from(cases), ())


def _flags(n: int) -> Ty:
    names = [f"g{i}" for i in range(n)]
    return _named("(flags " + " ".join(f'"{g}"' for g in names) + ")", ["i32"], st.sets(st.sampled_from(names)), ())


_LEAVES = st.sampled_from(_PRIMS) | st.integers(1, 6).map(_enum) | st.integers(1, 32).map(_flags)
wit_types: st.SearchStrategy[Ty] = st.recursive(_LEAVES, _compound, max_leaves=6)

_LIBC = """
  (core module $Libc
    (memory (export "memory") 2)
    (global $next (mut i32) (i32.const 65536))
    ;; A bump allocator (each instance serves one call); grows memory as needed.
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $next (i32.add (local.get $p) (local.get 3)))
      (block $fits (loop $grow
        (br_if $fits (i32.le_u (global.get $next) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
      (local.get $p)))
  (core instance $libc (instantiate $Libc))
  (alias core export $libc "memory" (core memory $mem))
  (alias core export $libc "realloc" (core func $realloc))
"""


def echo_component(ty: str, flat: list[str], iface: str, defs: tuple[tuple[str, str], ...] = ()) -> str:
    """A component exporting ``echo: func(v: T) -> T`` that passes the value to the host's
    ``echo`` and returns what the host returns (canon lower, then canon lift, with a core
    adapter for the canonical ABI's pointer conventions)."""
    params = flat if len(flat) <= 16 else ["i32"]
    spill = len(flat) > 1  # results: more than one flat value travel through memory
    lowered = f"(param {' '.join(params + (['i32'] if spill else []))})" + ("" if spill or not flat else f" (result {flat[0]})")
    lifted = f"(param {' '.join(params)})" + (" (result i32)" if spill else (f" (result {flat[0]})" if flat else ""))
    gets = " ".join(f"(local.get {i})" for i in range(len(params)))
    ret = "(i32.const 8)" if spill else ""
    # Named types must be exported where a function signature uses them: from the imported
    # instance's type, and from this component for the lifted export.
    instance_types = "\n".join(f'    (type ${n}-def {body}) (export "{n}" (type ${n} (eq ${n}-def)))' for n, body in defs)
    component_types = "\n".join(f'  (type ${n}-def {body}) (export ${n} "{n}" (type ${n}-def))' for n, body in defs)
    return f"""(component
  (import "{iface}" (instance $host
{instance_types}
    (export "echo" (func (param "v" {ty}) (result {ty})))))
{_LIBC}
{component_types}
  (core func $echo (canon lower (func $host "echo") (memory $mem) (realloc $realloc) string-encoding=utf8))
  (core module $Adapter
    (import "host" "echo" (func $echo {lowered}))
    (func (export "echo") {lifted} (call $echo {gets} {ret}) {ret}))
  (core instance $adapter (instantiate $Adapter (with "host" (instance (export "echo" (func $echo))))))
  (func (export "echo") (param "v" {ty}) (result {ty})
    (canon lift (core func $adapter "echo") (memory $mem) (realloc $realloc) string-encoding=utf8))
)"""


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (Ok, Err, Some)):
        return type(a) is type(b) and same(a.value, b.value)
    if isinstance(a, Variant):
        return isinstance(b, Variant) and a.tag == b.tag and same(a.payload, b.payload)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


_wat_counter = iter(range(1, 1 << 30))


@pytest.fixture(scope="module")
def shared_engine() -> Any:
    from wasmtime import Engine

    return Engine()


@fuzz(60)
@given(st.data())
def test_random_values_of_random_wit_types_round_trip(shared_engine: Any, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    count("value_types")
    ty, flat, values, defs = data.draw(wit_types, label="type")
    iface = Interface(f"wasi-tls-host:fuzz{next(_wat_counter)}/echo")
    received: list[Any] = []

    @iface.func("echo")
    def echo(cx: Any, v: Any) -> Any:
        received.append(v)
        return v

    wasm = _compile(echo_component(ty, flat, iface.name, defs), tmp_path_factory.mktemp("wat"))
    host = Host(shared_engine, interfaces=[iface], use_cache=False)
    with host.instantiate(wasm) as guest:
        for value in data.draw(st.lists(values, min_size=1, max_size=4), label="values"):
            count("values")
            back = guest.call("echo", value)
            assert same(received[-1], value), (ty, value, received[-1])
            assert same(back, value), (ty, value, back)


def _compile(wat: str, directory: Any) -> bytes:
    import subprocess

    from wasi_tls_host.guests import _tool

    source, out = directory / "echo.wat", directory / "echo.wasm"
    source.write_text(wat)
    proc = subprocess.run([_tool("wasm-tools"), "parse", str(source), "-o", str(out)], capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"wasm-tools rejected the generated component:\n{proc.stderr}\n{wat}")
    return out.read_bytes()


@pytest.fixture(scope="module")
def component_bytes(guest_path: Any) -> dict[str, bytes]:
    return {name: guest_path(name).read_bytes() for name in ("runtime_probe", "tls_handshake", "hostile")}


@pytest.fixture(scope="module")
def epoch_engine() -> Any:
    from wasmtime import Config, Engine

    config = Config()
    config.epoch_interruption = True  # damaged code may loop: the run's timeout must reach it
    return Engine(config)


@fuzz(150)
@given(st.data())
def test_mutated_components_load_or_fail_with_guest_error(epoch_engine: Any, component_bytes: dict[str, bytes], data: st.DataObject) -> None:
    """The core runtime parses component binaries itself, before wasmtime sees any of it: a
    damaged one must give a GuestError naming the problem, never another exception."""
    from wasmtime import WasmtimeError

    from wasi_tls_host import GuestError, WasiConfig
    from wasi_tls_host.runtime.limits import GuestLimits
    from wasi_tls_host.runtime.values import Trap

    count("components")
    name = data.draw(st.sampled_from(sorted(component_bytes)), label="component")
    wasm = bytearray(component_bytes[name])
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        at = data.draw(st.integers(8, len(wasm) - 1), label="at")
        edit = data.draw(st.sampled_from(["set", "insert", "cut"]), label="edit")
        if edit == "set":
            wasm[at] = data.draw(st.integers(0, 255))
        elif edit == "insert":
            wasm[at:at] = data.draw(st.binary(min_size=1, max_size=6))
        else:
            del wasm[at:]
            break
    host = Host(epoch_engine, epoch_interruption=True, use_cache=False, runtime="core")
    try:
        component = host.load(bytes(wasm))
    except GuestError as e:
        assert str(e), "a GuestError must say what is wrong"
        return
    try:
        with host.instantiate(component, WasiConfig(limits=GuestLimits(timeout=5.0))):
            pass
    except (GuestError, WasmtimeError, Trap) as e:
        assert str(e)
