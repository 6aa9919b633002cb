"""``--identity NAME=CERT.pem,KEY.pem`` and ``--client-ca``: private identities preopened for
the guest (``PrivateIdentity.from_files``) and the CAs client certificates must chain to.

An encrypted key's passphrase comes from ``$WASI_TLS_HOST_PASSPHRASE_<NAME>`` or, on a
terminal, a prompt: asking people is the command line's business, not the library's.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..tls.config import TlsConfig, load_certificates
from ..tls.identities import PrivateIdentity
from ..wasi.context import WasiConfig
from .errors import UsageError


@dataclass(frozen=True)
class IdentitySpec:
    """Where an identity's files are, so they can be read again (certificate rotation)."""

    name: str
    cert: Path
    key: Path

    @property
    def passphrase_variable(self) -> str:
        return f"WASI_TLS_HOST_PASSPHRASE_{self.name.upper().replace('-', '_')}"


def parse_identity_spec(text: str) -> IdentitySpec:
    name, sep, files = text.partition("=")
    parts = files.split(",")
    if not sep or not name or len(parts) != 2:
        raise ValueError(f"--identity wants NAME=CERT.pem,KEY.pem, got {text!r}")
    return IdentitySpec(name, Path(parts[0]), Path(parts[1]))


def passphrase(spec: IdentitySpec, *, prompt: bool = True) -> bytes | None:
    if spec.passphrase_variable in os.environ:
        return os.environ[spec.passphrase_variable].encode()
    if prompt and sys.stdin.isatty():
        return getpass.getpass(f"passphrase for identity {spec.name!r}: ").encode()
    return None


def load_identity(spec: IdentitySpec, *, prompt: bool = True) -> PrivateIdentity:
    """Read an identity's files; ask for a passphrase only when the key is encrypted."""
    try:
        return PrivateIdentity.from_files(spec.name, spec.cert, spec.key)
    except ValueError as e:
        if "encrypted" not in str(e):
            raise
        secret = passphrase(spec, prompt=prompt)
        if secret is None:
            raise ValueError(f"{e}; set {spec.passphrase_variable}") from None
        return PrivateIdentity.from_files(spec.name, spec.cert, spec.key, secret)


def parse_identity_option(text: str) -> PrivateIdentity:
    """``NAME=CERT.pem,KEY.pem`` -> a loaded ``PrivateIdentity``."""
    return load_identity(parse_identity_spec(text))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS identities (private keys stay in the host)")
    group.add_argument("--identity", action="append", default=[], metavar="NAME=CERT.pem,KEY.pem", help="preopen a certificate chain and key for the guest (repeatable)")
    group.add_argument("--client-ca", action="append", default=[], metavar="CA.pem", help="CA certificates for verifying client certificates (mutual TLS)")


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    try:
        identities = [parse_identity_option(text) for text in args.identity]
        client_ca = [cert for path in args.client_ca for cert in load_certificates(path)]
    except ValueError as e:
        raise UsageError(str(e)) from None
    if config.tls is None:
        config.tls = TlsConfig()
    config.tls.identities.extend(identities)
    config.tls.client_ca.extend(client_ca)
