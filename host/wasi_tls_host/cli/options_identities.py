"""``--identity NAME=CERT.pem,KEY.pem`` and ``--client-ca``: private identities preopened for
the guest (``PrivateIdentity.from_files``) and the CAs client certificates must chain to.

An encrypted key's passphrase comes from ``$WASI_TLS_HOST_PASSPHRASE_<NAME>`` or, on a
terminal, a prompt: asking people is the command line's business, not the library's.

With ``--workers`` the supervisor reads the identities (and asks for passphrases) once, keeps
the bytes of the ones in use (``IdentitySource``: a SIGHUP that fails to load a file keeps
the previous bytes, as each worker keeps its certificate) and hands them to every worker it
starts through a private in-memory file (``write_sources``; its descriptor number in
``IDENTITIES_ENV``), so a worker restarted after a refused reload starts with the identities
in use, never with a broken file, and without asking for a passphrase again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.records import FrozenFields
from ..wasi.context import WasiConfig
from .errors import UsageError
from .options_server import worker_number

if TYPE_CHECKING:
    from ..tls.identities import PrivateIdentity

# The TLS modules (pyOpenSSL) load only when an identity is given: a run without one never
# needs them (start-up time).

# In a worker: the descriptor of the private in-memory file holding the identities in use.
IDENTITIES_ENV = "WASI_TLS_HOST_IDENTITIES_FD"


class IdentitySpec(FrozenFields):
    """Where an identity's files are, so they can be read again (certificate rotation)."""

    name: str
    cert: Path
    key: Path
    _fields = ("name", "cert", "key")

    def __init__(self, name: str, cert: Path, key: Path) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "cert", cert)
        object.__setattr__(self, "key", key)

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
        import getpass  # termios: only to ask

        return getpass.getpass(f"passphrase for identity {spec.name!r}: ").encode()
    return None


class IdentitySource(FrozenFields):
    """An identity's files as last read and accepted: what a worker started later loads."""

    spec: IdentitySpec
    cert_pem: bytes
    key_pem: bytes
    passphrase: bytes | None
    _fields = ("spec", "cert_pem", "key_pem", "passphrase")
    _hidden = frozenset({"cert_pem", "key_pem", "passphrase"})  # never in a repr (a log line)

    def __init__(self, spec: IdentitySpec, cert_pem: bytes, key_pem: bytes, passphrase: bytes | None = None) -> None:
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "cert_pem", cert_pem)
        object.__setattr__(self, "key_pem", key_pem)
        object.__setattr__(self, "passphrase", passphrase)

    def identity(self) -> PrivateIdentity:
        """The identity these bytes make, reloadable from its files (ValueError if none)."""
        from ..tls.identities import IdentityFiles, PrivateIdentity

        files = IdentityFiles(self.spec.cert, self.spec.key, self.passphrase)
        return PrivateIdentity.from_pem(self.spec.name, self.cert_pem, self.key_pem, self.passphrase, files=files)


def read_source(spec: IdentitySpec, *, known_passphrase: bytes | None = None, prompt: bool = True) -> tuple[IdentitySource, PrivateIdentity]:
    """Read an identity's files and load them (ValueError naming the identity and the file);
    ask for a passphrase only when the key is encrypted and none was given."""
    from ..tls.identities import PassphraseNeeded

    try:
        cert_pem, key_pem = spec.cert.read_bytes(), spec.key.read_bytes()
    except OSError as e:
        raise ValueError(f"identity {spec.name!r}: cannot read {e.filename}: {e.strerror}") from None
    source = IdentitySource(spec, cert_pem, key_pem, known_passphrase)
    try:
        return source, source.identity()
    except PassphraseNeeded as e:
        secret = passphrase(spec, prompt=prompt)
        if secret is None:
            raise ValueError(f"{e}; set {spec.passphrase_variable}") from None
    source = IdentitySource(source.spec, source.cert_pem, source.key_pem, secret)
    return source, source.identity()


def load_identity(spec: IdentitySpec, *, prompt: bool = True) -> PrivateIdentity:
    """Read an identity's files; ask for a passphrase only when the key is encrypted."""
    return read_source(spec, prompt=prompt)[1]


def parse_identity_option(text: str) -> PrivateIdentity:
    """``NAME=CERT.pem,KEY.pem`` -> a loaded ``PrivateIdentity``."""
    return load_identity(parse_identity_spec(text))


def read_sources(texts: list[str]) -> list[IdentitySource]:
    """Every ``--identity``, read and checked (UsageError naming the identity and file)."""
    try:
        return [read_source(parse_identity_spec(text))[0] for text in texts]
    except ValueError as e:
        raise UsageError(str(e)) from None


def reload_sources(sources: list[IdentitySource]) -> list[IdentitySource]:
    """SIGHUP in a supervisor: each identity read again from its files, or kept as it was
    when they fail to load (one line each, as a worker logs its own reload)."""
    from ..tls.config import log_rotation

    reloaded = []
    for source in sources:
        try:
            fresh, identity = read_source(source.spec, known_passphrase=source.passphrase, prompt=False)
        except ValueError as e:
            log_rotation(source.spec.name, e)
            reloaded.append(source)
        else:
            log_rotation(source.spec.name, identity)
            reloaded.append(fresh)
    return reloaded


def _b64(data: bytes | None) -> str | None:
    import base64  # (--workers only: start-up time)

    return None if data is None else base64.b64encode(data).decode()


def write_sources(sources: list[IdentitySource]) -> int:
    """A descriptor (close-on-exec, readable by this user only) of an in-memory file holding
    ``sources``, for a worker to inherit: keys never go through the environment or a file
    others could open."""
    document = [{"name": s.spec.name, "cert": str(s.spec.cert), "key": str(s.spec.key), "cert_pem": _b64(s.cert_pem),
                 "key_pem": _b64(s.key_pem), "passphrase": _b64(s.passphrase)} for s in sources]
    return private_file("wasi-tls-host-identities", json.dumps(document).encode())


def private_file(name: str, data: bytes) -> int:
    """A descriptor (close-on-exec, readable by this user only) of an in-memory file holding
    ``data``: how a supervisor hands secrets to a worker."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    else:  # an unlinked private temporary file
        import tempfile

        fd, path = tempfile.mkstemp(prefix=name)
        os.unlink(path)
    try:
        os.fchmod(fd, 0o600)
        while data:
            data = data[os.write(fd, data):]
        return fd
    except BaseException:
        os.close(fd)
        raise


def take_handed(variable: str, what: str) -> bytes | None:
    """In a worker: the bytes of the private file its supervisor handed down under the
    environment ``variable`` (read once, descriptor closed); None outside a worker."""
    value = os.environ.pop(variable, None)
    if value is None or worker_number() is None:
        return None
    try:
        fd = int(value)
    except ValueError:
        raise UsageError(f"{variable} is not a descriptor number: {value!r}") from None
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read the {what} the supervisor handed down (descriptor {fd}): {e}") from None
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def take_handed_sources() -> dict[IdentitySpec, IdentitySource]:
    """In a worker: the identities its supervisor handed down (read once, descriptor closed)."""
    data = take_handed(IDENTITIES_ENV, "identities")
    if data is None:
        return {}
    import base64

    try:
        document = json.loads(data)
        sources = [IdentitySource(IdentitySpec(d["name"], Path(d["cert"]), Path(d["key"])), base64.b64decode(d["cert_pem"]),
                                  base64.b64decode(d["key_pem"]), None if d["passphrase"] is None else base64.b64decode(d["passphrase"]))
                   for d in document]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot read the identities the supervisor handed down: {e}") from None
    return {source.spec: source for source in sources}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS identities (private keys stay in the host)")
    group.add_argument("--identity", action="append", default=[], metavar="NAME=CERT.pem,KEY.pem", help="preopen a certificate chain and key for the guest (repeatable)")
    group.add_argument("--client-ca", action="append", default=[], metavar="[NAME=]CA.pem",
                       help="CA certificates for verifying client certificates (mutual TLS); with NAME=, a set a guest server "
                            "chooses by name (set-client-ca, wasi_tls_aio's client_ca=) instead of the default one (repeatable)")


def apply(args: argparse.Namespace, config: WasiConfig) -> None:
    try:
        specs = [parse_identity_spec(text) for text in args.identity]
        handed = take_handed_sources()
        if not specs and not args.client_ca:
            return
        from ..tls.config import TlsConfig, load_certificates

        identities = [handed[spec].identity() if spec in handed else load_identity(spec) for spec in specs]
        client_ca: list[Any] = []
        client_ca_sets: dict[str, list[Any]] = {}
        for text in args.client_ca:
            name, path = parse_client_ca(text)
            (client_ca if name is None else client_ca_sets.setdefault(name, [])).extend(load_certificates(path))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if config.tls is None:
        config.tls = TlsConfig()
    config.tls.identities.extend(identities)
    config.tls.client_ca.extend(client_ca)
    for name, anchors in client_ca_sets.items():
        config.tls.client_ca_sets.setdefault(name, []).extend(anchors)


def parse_client_ca(text: str) -> tuple[str | None, str]:
    """``--client-ca [NAME=]CA.pem``: (NAME or None, path). A path that exists as given is
    a path even if it has ``=`` in it."""
    name, sep, path = text.partition("=")
    if not sep or Path(text).exists() or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        return None, text
    if not path:
        raise ValueError(f"--client-ca {text!r}: expected NAME=CA.pem")
    return name, path
