"""Code provenance on the command line: digests and pins, module signatures, the module
store, pre-compiled artifacts and code-bound (attested) identities. Every command maps onto
a library function in ``provenance/`` or ``attestation.py``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..host import Host
from ..provenance import CodePolicy
from ..runtime.artifact_auth import write_atomically
from ..wasi.context import WasiConfig
from .errors import UsageError
from .options_limits import whole_number




def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """``run``'s provenance and attestation options."""
    group = run.add_argument_group("code provenance (checked before the component is compiled)")
    group.add_argument("--require-digest", action="append", default=[], metavar="sha256:HEX", help="run the component only if it has this digest (repeatable: any of them)")
    group.add_argument("--require-signer", action="append", default=[], metavar="PUB.pem", help="run the component only if signed by this Ed25519 key (repeatable: any of them)")
    group.add_argument("--require-all-signers", action="store_true", help="with several --require-signer, require a signature by each")
    group.add_argument("--signature", metavar="SIG.bin", help="a detached signature for the component")
    group.add_argument("--module-store", action="append", default=[], metavar="DIR|URL", help="where to find a component named sha256:<hex> (a directory or an https:// base URL laid out as sha256/<hex>.wasm; repeatable)")
    group.add_argument("--precompiled", metavar="X.cwasm", help="an artifact compiled elsewhere (signature in X.cwasm.sig); used only if a --trust-compiled key vouches for it")
    group.add_argument("--trust-compiled", action="append", default=[], metavar="PUB.pem", help="an Ed25519 key trusted to vouch for pre-compiled artifacts (repeatable)")
    group.add_argument("--module-max-size", type=whole_number(1), default=None, metavar="BYTES", help="refuse a fetched component larger than this (default 256 MiB)")

    attest = run.add_argument_group("code-bound identities (a key per instance, certified with its code)")
    attest.add_argument("--attest-ca", metavar="CA.pem,CA.key", help="certify each instance's own key with this CA, with the component's digest and grants (Open DICE extension)")
    attest.add_argument("--attest-name", action="append", default=[], metavar="NAME", help="DNS name or IP address for the attested certificate (repeatable)")
    attest.add_argument("--attest-lifetime", default="24h", metavar="24h", help="how long each attested certificate is valid (default 24h)")
    attest.add_argument("--attest-trust", action="append", default=[], metavar="CA.pem", help="an attestation CA whose code claims the guest may rely on (expect-peer-code)")


def add_parsers(sub: Any) -> None:
    """The provenance subcommands (``store``, ``inspect-cert``, ``sign``...)."""
    store = sub.add_parser("store", help="content-addressed module store")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    store_add = store_sub.add_parser("add", help="put components into a directory store and print their names")
    store_add.add_argument("files", nargs="+", metavar="GUEST.wasm")
    store_add.add_argument("--module-store", metavar="DIR", help="the store (default: the per-user store)")

    inspect = sub.add_parser("inspect-cert", help="print the code claims of a certificate (a PEM/DER file or a TLS server HOST:PORT)")
    inspect.add_argument("source", metavar="FILE|HOST:PORT")
    verify_cert = sub.add_parser("verify-cert", help="check a certificate's code claims against an attestation CA")
    verify_cert.add_argument("source", metavar="FILE|HOST:PORT")
    verify_cert.add_argument("--ca", required=True, action="append", metavar="CA.pem", help="the attestation CA (repeatable)")
    verify_cert.add_argument("--expect-code", metavar="sha256:HEX", help="the component that must hold the key")
    verify_cert.add_argument("--expect-config", metavar="FILE", help="the configuration document (as printed by inspect-cert) it must have been given")
    verify_cert.add_argument("--expect-signer", action="append", metavar="PUB.pem", help="a key that must have verified the component's signature (repeatable; all of them, exactly)")
    verify_cert.add_argument("--expect-unsigned", action="store_true", help="the component must not have been verified against any signer")

    precompile = sub.add_parser("precompile", help="compile a component for this wasmtime and platform and sign the artifact")
    precompile.add_argument("file", metavar="GUEST.wasm")
    precompile.add_argument("--key", required=True, metavar="KEY.pem", help="Ed25519 key that vouches for the artifact")
    precompile.add_argument("-o", "--output", required=True, metavar="OUT.cwasm", help="the artifact (its signature goes to OUT.cwasm.sig)")

    digest = sub.add_parser("digest", help="print a component's content digest (sha256:<hex>)")
    digest.add_argument("files", nargs="+", metavar="GUEST.wasm")

    sign = sub.add_parser("sign", help="sign a module or component (Ed25519, the wasmsign2 format)")
    sign.add_argument("file", metavar="GUEST.wasm")
    sign.add_argument("--key", required=True, metavar="KEY.pem", help="Ed25519 private key (PEM, or wasmsign2's raw key pair)")
    sign.add_argument("-o", "--output", metavar="OUT.wasm", help="write the signed module here (default: replace GUEST.wasm)")
    sign.add_argument("--detached", metavar="SIG.bin", help="write the signature here instead of embedding it (adds to an existing SIG.bin)")
    sign.add_argument("--key-id", default="", help="a key identifier stored beside the signature")
    sign.add_argument("--allow-extensions", action="store_true", help="end the signed content with a delimiter, so sections added later can be signed separately")

    verify = sub.add_parser("verify", help="verify a module's or component's signature")
    verify.add_argument("file", metavar="GUEST.wasm")
    verify.add_argument("--public-key", action="append", required=True, metavar="PUB.pem", help="a trusted key (repeatable: any of them)")
    verify.add_argument("--signature", metavar="SIG.bin", help="a detached signature")
    verify.add_argument("--require-all-signers", action="store_true", help="require a valid signature by every --public-key")
    verify.add_argument("--parts", type=int, metavar="N", help="verify only the first N parts (partial verification)")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None


def public_keys(paths: list[str]) -> list[Any]:
    if not paths:
        return []  # cryptography loads only for keys (start-up time)
    from ..provenance.signatures import load_public_key

    try:
        return [load_public_key(_read(p, "public key")) for p in paths]
    except ValueError as e:
        raise UsageError(str(e)) from None


def _signing_key(path: str) -> Any:
    from ..provenance.signatures import load_private_key

    try:
        return load_private_key(_read(path, "signing key"))
    except ValueError as e:
        raise UsageError(str(e)) from None


def code_policy(args: argparse.Namespace) -> CodePolicy | None:
    if not (args.require_digest or args.require_signer):
        return None
    try:
        return CodePolicy(
            digests=list(args.require_digest), signers=public_keys(args.require_signer),
            require_all_signers=args.require_all_signers,
            signature=_read(args.signature, "signature") if args.signature else None,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def guest_source(args: argparse.Namespace) -> str | bytes:
    """The guest's path, or the verified bytes of a component named sha256:<hex>."""
    from ..provenance import is_digest

    if not is_digest(args.guest) or os.path.exists(args.guest):
        return args.guest
    from ..provenance import store  # urllib and ssl: only for a guest named by its digest
    try:
        stores = [store.open_store(loc, max_bytes=args.module_max_size or store.DEFAULT_MAX_BYTES) for loc in args.module_store]
    except ValueError as e:
        raise UsageError(str(e)) from None
    return store.resolve(args.guest, stores, progress=_progress_line(args.guest) if sys.stderr.isatty() else None)


def _progress_line(name: str) -> Any:
    def show(received: int, total: int | None) -> None:
        of = f" of {total / 1e6:.1f}" if total else ""
        end = "\n" if total is not None and received >= total else ""
        print(f"\rfetching {name[:19]}...: {received / 1e6:.1f}{of} MB", end=end, file=sys.stderr, flush=True)

    return show


def _store_command(args: argparse.Namespace) -> int:
    from ..provenance import store

    target = store.DirectoryStore(args.module_store or store.default_store_dir())
    for path in args.files:
        print(target.add(_read(path, "component")) + ("" if len(args.files) == 1 else f"  {path}"))
    return 0


def precompiled_artifact(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    if not args.precompiled:
        return None
    return _read(args.precompiled, "pre-compiled artifact"), _read(args.precompiled + ".sig", "artifact signature")


def _precompile_command(args: argparse.Namespace) -> int:
    from ..provenance import precompiled
    from ..runtime.cache import WASMTIME_VERSION

    key = _signing_key(args.key)
    wasm = _read(args.file, "component")
    host = Host(use_cache=False, runtime="component")  # the runtime whose artifacts ship
    artifact = host.load(wasm).serialize()
    _write_atomically(args.output, artifact)
    _write_atomically(args.output + ".sig", precompiled.sign_artifact(wasm, artifact, precompiled.Target(WASMTIME_VERSION, host.engine_label), key))
    print(f"{args.output}: {precompiled.artifact_digest(artifact)} for {precompiled.digest(wasm)}")
    return 0


def _digest_command(args: argparse.Namespace) -> int:
    from ..provenance import digest

    for path in args.files:
        print(digest(_read(path, "component")) + ("" if len(args.files) == 1 else f"  {path}"))
    return 0


def _sign_command(args: argparse.Namespace) -> int:
    from ..provenance import signatures

    key = _signing_key(args.key)
    wasm = _read(args.file, "module")
    if args.allow_extensions:
        wasm = signatures.add_delimiter(wasm)
    existing = _read(args.detached, "signature") if args.detached and os.path.exists(args.detached) else None
    out, sig = signatures.sign(wasm, key, key_id=args.key_id.encode(), signature=existing, detached=bool(args.detached))
    if args.detached:
        _write_atomically(args.detached, sig)
    if not args.detached or args.allow_extensions or args.output:
        _write_atomically(args.output or args.file, out)
    return 0


def _verify_command(args: argparse.Namespace) -> int:
    from ..provenance import signatures

    keys = public_keys(args.public_key)
    verified = signatures.verify(
        _read(args.file, "module"), keys, _read(args.signature, "signature") if args.signature else None,
        parts=args.parts, require_all=args.require_all_signers,
    )
    names = ", ".join(signatures.key_fingerprint(k) for k in verified.signers)
    print(f"ok: signed by {names} ({verified.parts_verified} of {verified.parts_total} parts verified)")
    return 0


def _write_atomically(path: str, data: bytes) -> None:
    """An output file of a command, with the permissions ``open`` would give it."""
    umask = os.umask(0)
    os.umask(umask)
    write_atomically(Path(path), data, mode=0o666 & ~umask)


def apply_attestation(args: argparse.Namespace, config: WasiConfig) -> None:
    if not args.attest_ca and not args.attest_trust:
        return
    from .. import attestation
    from ..tls.config import TlsConfig, load_certificates

    try:
        if config.tls is None:
            config.tls = TlsConfig()
        config.tls.attest_trust.extend(c for path in args.attest_trust for c in load_certificates(path))
        if args.attest_ca:
            # Inheriting the host's environment or network weakens isolation: say so.
            cert_path, _, key_path = args.attest_ca.partition(",")
            if not cert_path or not key_path or "," in key_path:
                raise ValueError(f"--attest-ca wants CA.pem,CA.key, got {args.attest_ca!r}")
            config.tls.attest_ca = attestation.AttestationCA.from_files(
                cert_path, key_path, names=list(args.attest_name), lifetime=attestation.parse_lifetime(args.attest_lifetime),
                debug=bool(args.inherit_env or args.inherit_network),
            )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _certificate_chain(source: str) -> list[Any]:
    from .. import attestation

    try:
        if os.path.exists(source):
            return attestation.load_certificates(source)
        return attestation.fetch_chain(source)
    except (ValueError, OSError) as e:
        raise UsageError(f"{source}: {e}") from None


def _inspect_cert_command(args: argparse.Namespace) -> int:
    from .. import attestation

    chain = _certificate_chain(args.source)
    if not chain:
        raise UsageError(f"{args.source}: no certificate")
    leaf = chain[0]
    print(f"subject: {leaf.subject.rfc4514_string()}")
    print(f"issuer: {leaf.issuer.rfc4514_string()}")
    print(f"valid: {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} to {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    try:
        claims = attestation.claims_of(leaf)
    except ValueError as e:
        raise UsageError(f"the DICE extension is malformed: {e}") from None
    if claims is None:
        print("code claims: none (no Open DICE extension)")
        return 0
    for line in attestation.describe(claims):
        print(line)
    return 0


def _verify_cert_command(args: argparse.Namespace) -> int:
    from .. import attestation

    chain = _certificate_chain(args.source)
    authority: Any = None
    if args.expect_unsigned:
        authority = []
    elif args.expect_signer:
        authority = public_keys(args.expect_signer)
    try:
        anchors = [c for path in args.ca for c in attestation.load_certificates(path)]
    except (OSError, ValueError) as e:
        raise UsageError(f"--ca: {e}") from None
    try:
        claims = attestation.verify(
            chain, anchors,
            expect_code=args.expect_code, expect_config=_read(args.expect_config, "configuration document") if args.expect_config else None,
            expect_authority=authority,
        )
    except attestation.AttestationError as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    print(f"ok: {claims.digest} attested by {args.ca[0]}")
    return 0


COMMANDS = {"precompile": _precompile_command, "inspect-cert": _inspect_cert_command, "verify-cert": _verify_cert_command, "store": _store_command, "digest": _digest_command, "sign": _sign_command, "verify": _verify_command}
