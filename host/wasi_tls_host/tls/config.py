"""What the embedder decides about TLS for a guest: which roots to trust, which versions."""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from OpenSSL import SSL, crypto

from .limits import TlsLimits
from .names import DEFAULT_MIN_VERSION, ROTATION_LOG, VERSION_NAMES
from .profiles import DEFAULT_PROFILE, TlsProfile, profile as lookup_profile
from .ticket_keys import KeyRing, TicketKeys, log_reload as log_ticket_keys, openssl_tickets

# A trust anchor: PEM bytes (one or more certificates), a path to a PEM file, or a
# cryptography certificate.
TrustAnchor = Union[bytes, str, Path, x509.Certificate]

_log = logging.getLogger("wasi_tls_host.tls")
# Certificate rotation: one line per identity per reload (the command line shows its INFO).
rotation_log = logging.getLogger(ROTATION_LOG)

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
assert tuple(_VERSIONS) == VERSION_NAMES
# The versions guests may name, by their IANA (wire) value: the OpenSSL constant.
_WIRE_VERSIONS = {0x0303: SSL.TLS1_2_VERSION, 0x0304: SSL.TLS1_3_VERSION}


def openssl_version(wire: int) -> int:
    """The OpenSSL constant of a protocol version a guest names by its IANA value
    (ValueError, saying which are supported, for any other)."""
    try:
        return _WIRE_VERSIONS[wire]
    except KeyError:
        raise ValueError(f"protocol version 0x{wire:04x} is not supported (0x0303 = TLS 1.2, 0x0304 = TLS 1.3)") from None


def load_certificates(anchor: TrustAnchor) -> list[x509.Certificate]:
    if isinstance(anchor, x509.Certificate):
        return [anchor]
    if isinstance(anchor, (str, Path)):
        path = Path(anchor)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read trust anchors from {path}: {e.strerror}") from None
    else:
        data = bytes(anchor)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except (ValueError, x509.InvalidVersion):
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except (ValueError, x509.InvalidVersion):
            raise ValueError("certificates must be PEM or DER X.509 certificates") from None
    for index, cert in enumerate(certs):
        _check_parses(cert, index)
    return certs


def _check_parses(cert: x509.Certificate, index: int) -> None:
    """cryptography decodes names, validity and extensions only when asked: ask now, so a
    malformed certificate is refused here (ValueError) rather than by a later accessor a
    guest calls (which would be a host error)."""
    try:
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        cert.not_valid_before_utc, cert.not_valid_after_utc
        for extension in cert.extensions:
            extension.value
    except (ValueError, x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType, UnsupportedAlgorithm) as e:
        raise ValueError(f"certificate {index + 1} is malformed: {e}") from None


def log_rotation(name: str, outcome: Any) -> str:
    """Log (once) and return the line saying what a reload did to identity ``name``:
    ``outcome`` is the reloaded PrivateIdentity, or the ValueError that kept the old one."""
    if isinstance(outcome, ValueError):
        reason = str(outcome).removeprefix(f"identity {name!r}: ")  # the identity is named once
        line = f"identity {name!r}: kept the certificate in use: {reason}"
        rotation_log.warning("%s", line)
    else:
        line = f"identity {name!r}: reloaded from {outcome.files.cert} (sha256 {outcome.public.fingerprint.hex()[:16]}...)"
        rotation_log.info("%s", line)
    return line


@dataclass
class TlsConfig:
    """TLS policy for a guest, client and server side.

    ``trust`` adds anchors to the system's trust store, or replaces it when
    ``use_system_roots`` is False. ``profile`` ("intermediate", "modern", "compat"; see
    ``tls.profiles``) bounds versions, suites and groups; ``min_version``/``max_version``
    ("1.2", "1.3") narrow it further, and guests can only narrow what is left.
    ``resumption``: TLS servers issue session tickets (encrypted under keys the host
    replaces every ``ticket_key_lifetime`` seconds) and resume sessions; TLS clients keep
    the tickets servers give them (per guest instance, ``tls.sessions``) and offer them on
    the next connection to the same server. 0-RTT is never sent or accepted.
    ``ticket_keys`` (a ``tls.ticket_keys.TicketKeys``, ``--ticket-keys FILE``): servers
    encrypt tickets with the first of these keys and accept tickets under any of them
    instead of the host's own random keys, so hosts sharing the keys resume each other's
    sessions; ``reload_identities`` reads a key file again.
    """

    trust: list[TrustAnchor] = field(default_factory=list)
    use_system_roots: bool = True
    min_version: str = DEFAULT_MIN_VERSION
    max_version: str | None = None
    # Called on the host with a HandshakeInfo after each completed handshake (for logs,
    # audits, the demo); exceptions it raises are logged, never passed to the guest.
    on_handshake: Callable[[Any], None] | None = None
    # Private identities (tls.identities.PrivateIdentity) preopened for the guest, and the
    # CAs that client certificates must chain to (mutual TLS on guest servers).
    identities: list[Any] = field(default_factory=list)
    client_ca: list[TrustAnchor] = field(default_factory=list)
    # Named client CA sets (``--client-ca NAME=CA.pem``): a guest server names one in its
    # answer (set-client-ca) to verify that server's clients against it instead.
    client_ca_sets: dict[str, list[TrustAnchor]] = field(default_factory=dict)
    # Code-bound identities (attestation.py, tls/code_identity.py): the CA that certifies
    # each guest instance's own key with its code (an attestation.AttestationCA), and the
    # CAs whose code claims this guest may rely on in expect-peer-code.
    attest_ca: Any = None
    attest_trust: list[TrustAnchor] = field(default_factory=list)
    # Per-guest bounds: handshake deadline, open connections and handshakes, ClientHello size.
    limits: TlsLimits = field(default_factory=TlsLimits)
    profile: str = DEFAULT_PROFILE
    resumption: bool = True
    ticket_key_lifetime: float = 3600.0
    ticket_keys: TicketKeys | None = None
    # Client contexts by client identity (None: none) and version bounds. Held weakly by
    # identity: an instance's attested identity goes with the instance, its contexts too.
    _client_contexts: dict[tuple[int, int], SSL.Context] = field(default_factory=dict, init=False, repr=False, compare=False)
    _identity_client_contexts: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], SSL.Context]] = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for version in (self.min_version, self.max_version):
            if version is not None and version not in _VERSIONS:
                raise ValueError(f"TLS version must be one of {sorted(_VERSIONS)}, not {version!r}")
        self.policy: TlsProfile = lookup_profile(self.profile)
        low, high = _VERSIONS[self.min_version], _VERSIONS[self.max_version or "1.3"]
        if low > high:
            raise ValueError(f"the lowest TLS version {self.min_version} is above the highest {self.max_version}")
        self.policy.narrow_versions(low, high)  # ValueError if nothing of the profile is left
        if not self.ticket_key_lifetime > 0:
            raise ValueError(f"ticket_key_lifetime must be a positive number of seconds, not {self.ticket_key_lifetime!r}")
        self.ticket_key_ring: KeyRing | None = None
        if self.ticket_keys is not None:
            if not self.resumption:
                raise ValueError("ticket keys are for session resumption, which is off (--no-resumption)")
            openssl_tickets()  # TicketKeysUnsupported (a ValueError) now, not at the first handshake
            self.ticket_key_ring = KeyRing(self.ticket_keys)
        self._server_contexts: dict[Any, SSL.Context] = {}
        self._server_contexts_born = time.monotonic()
        self.anchors = [cert for anchor in self.trust for cert in load_certificates(anchor)]
        # Read (and checked) now, not at each handshake that expects a peer's code.
        self.attest_trust = [cert for anchor in self.attest_trust for cert in load_certificates(anchor)]
        names = [i.name for i in self.identities]
        if len(set(names)) != len(names):
            raise ValueError(f"identity names must be unique, got {names}")

    def current_identity(self, identity: Any) -> Any:
        """The identity now preopened under ``identity``'s name (a reload may have replaced
        it), or ``identity`` itself if it is no longer there."""
        for current in self.identities:
            if current.name == identity.name:
                return current
        return identity

    def reload_identities(self) -> list[str]:
        """Read every identity loaded from files again (certificate rotation). Connections
        that start afterwards present the new certificates; open ones keep theirs. An
        identity whose files fail to load keeps the old one, and the returned line says why.
        Returns one line per identity, each also logged once (``rotation_log``: INFO when
        reloaded, WARNING when kept)."""
        report = []
        for index, identity in enumerate(list(self.identities)):
            if identity.files is None:
                continue
            try:
                fresh = identity.reloaded()
            except ValueError as e:
                report.append(log_rotation(identity.name, e))
            else:
                self.identities[index] = fresh
                report.append(log_rotation(identity.name, fresh))
        # Server contexts are built per identity object: drop them with the old objects.
        self._server_contexts = {}
        return report + self.reload_ticket_keys()

    def reload_ticket_keys(self) -> list[str]:
        """Read the ticket key file again (a SIGHUP): new tickets are encrypted with its first
        key, and tickets under any of its keys resume, from the next handshake on. A file that
        fails to load keeps the keys in use. One line (logged), or none without a key file."""
        ring = self.ticket_key_ring
        if ring is None or ring.keys.path is None:
            return []
        try:
            fresh = TicketKeys.from_file(ring.keys.path)
        except ValueError as e:
            return [log_ticket_keys(ring.keys, e)]
        line = log_ticket_keys(ring.keys, fresh)
        ring.keys = self.ticket_keys = fresh
        return [line]

    def client_anchors(self, name: str | None = None) -> list[x509.Certificate]:
        """The CAs client certificates must chain to: ``client_ca``, or the set named
        ``name`` (KeyError if there is none)."""
        anchors = self.client_ca if name is None else self.client_ca_sets[name]
        return [cert for anchor in anchors for cert in load_certificates(anchor)]

    def version_bounds(self) -> tuple[int, int]:
        """OpenSSL (min, max) protocol versions the embedder allows: its min/max within the
        profile."""
        return self.policy.narrow_versions(_VERSIONS[self.min_version], _VERSIONS[self.max_version or "1.3"])

    def server_context_cache(self) -> dict[Any, SSL.Context]:
        """Server contexts built for this policy, keyed by the guest's answer. Emptied every
        ``ticket_key_lifetime`` seconds: each new OpenSSL context draws fresh random
        session-ticket keys, so this is how the host rotates them (tickets under the old
        keys then fall back to a full handshake). A period starts when the cache is empty
        (its first context makes the keys), so a key lives its whole lifetime however long
        the host sat idle before its first handshake."""
        now = time.monotonic()
        if not self._server_contexts or now - self._server_contexts_born >= self.ticket_key_lifetime:
            self._server_contexts = {}
            self._server_contexts_born = now
        return self._server_contexts

    def client_context(self, versions: tuple[int, int] | None = None, identity: Any = None) -> SSL.Context:
        """The OpenSSL context for client connections with these version bounds (default:
        the config's own) presenting ``identity`` (a PrivateIdentity: its whole chain) when a
        server asks for a certificate; built once per bounds and identity."""
        versions = versions or self.version_bounds()
        if identity is None:
            contexts = self._client_contexts
        else:
            contexts = self._identity_client_contexts.setdefault(identity, {})
        ctx = contexts.get(versions)
        if ctx is not None:
            return ctx
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.policy.configure(ctx, self.policy.narrow_versions(*versions))
        ctx.set_verify(SSL.VERIFY_PEER)
        if self.use_system_roots:
            ctx.set_default_verify_paths()
        store = ctx.get_cert_store()
        assert store is not None
        for cert in self.anchors:
            store.add_cert(crypto.X509.from_cryptography(cert))
        if not self.resumption:
            ctx.set_options(SSL.OP_NO_TICKET)  # TLS 1.2 servers then issue none
        if identity is not None:
            identity.use_in(ctx)
        contexts[versions] = ctx
        return ctx


DEFAULT_TLS = TlsConfig()


def tls_config(cx: Any) -> TlsConfig:
    """The TLS policy of the store a host function runs in (defaults if none was given)."""
    config = getattr(cx.wasi, "tls", None)
    return config if isinstance(config, TlsConfig) else DEFAULT_TLS
