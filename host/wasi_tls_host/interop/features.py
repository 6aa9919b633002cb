"""The matrix's features: what each asks of the server and the client, and how it is judged.

A feature turns into one ``ServerSpec`` and one ``ClientSpec`` per TLS version; each side of
a case (a peer or a guest) says which of the abilities the feature ``needs`` it has (the
names in ``ABILITIES``), and a case whose side lacks one is "n/a" with the reason. The judge
reads both sides' ``Observation``s and answers pass or fail with a detail a person can act
on: on a pass what was negotiated, on a failure what was expected and what came back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from .pki import CertificateSource
from .specs import LINE, SNI_NAME, ClientSpec, Observation, Seen, ServerSpec, Version

# Abilities a side may lack, and how a "n/a" detail words the lack.
ABILITIES = {
    "pin-version": "pin the TLS version",
    "alpn": "offer any list of ALPN protocols, or choose among them",
    "http": "answer HTTP requests",
    "client-cert": "present a client certificate",
    "client-auth": "ask for a client certificate",
    "client-auth-optional": "ask for a client certificate without requiring one",
    "sni-select": "pick its certificate by the client's server name",
    "resume": "make a second connection resuming the first's session",
    "close": "send data and end with close_notify",
    "truncate": "end a connection without close_notify",
    "read-to-end": "read until the server ends the stream and say how it ended",
    "report-end": "say how the client ended its connection",
    "groups": "restrict key exchange groups",
    "key-ecdsa-p384": "use an ECDSA P-384 certificate",
    "key-rsa": "use an RSA certificate",
    "key-ed25519": "use an Ed25519 certificate",
    "echo": "echo a line back",
    "verify": "verify the server against a given CA",
}

Verdict = tuple[str, str]  # (outcome, detail)
Judge = Callable[["Feature", ServerSpec, ClientSpec, Observation, Observation], Verdict]


@dataclass(frozen=True)
class Feature:
    name: str
    about: str
    server: Callable[[CertificateSource, Version], ServerSpec]
    client: Callable[[CertificateSource, Version], ClientSpec]
    judge: Judge
    server_needs: frozenset[str] = field(default_factory=frozenset)
    client_needs: frozenset[str] = field(default_factory=frozenset)
    # Words of which one must appear in the error a failing side reports (lower case).
    expect_error: tuple[str, ...] = ()


# --- helpers -----------------------------------------------------------------------------


def _facts(seen: Seen) -> str:
    parts = []
    if seen.version:
        parts.append(f"TLS {seen.version}")
    if seen.alpn:
        parts.append(f"alpn={seen.alpn}")
    if seen.resumed:
        parts.append("resumed")
    return ", ".join(parts)


def _client_failed(client: Observation) -> str | None:
    """Why the client side itself broke (no connection reported at all), or None."""
    if client.problem:
        return client.problem
    if not client.connections:
        if client.timed_out:
            return f"the client did not finish in time; it said: {client.excerpt() or '(nothing)'}"
        return f"the client reported no connection (exit status {client.exit_code}); it said: {client.excerpt() or '(nothing)'}"
    return None


def _version_of(server: Observation, client: Observation) -> str | None:
    for obs in (client, server):
        if obs.first is not None and obs.first.version:
            return obs.first.version
    return None


def _established(feature: Feature, server_spec: ServerSpec, client_spec: ClientSpec, server: Observation,
                 client: Observation) -> Verdict | None:
    """A failure verdict unless the first connection completed, verified, at the asked
    version, with the line echoed (when one was sent); None when all of that holds."""
    broken = _client_failed(client)
    if broken:
        return "fail", broken
    first = client.connections[0]
    if not first.ok:
        said = f"; the server said: {server.excerpt(200)}" if server.output and server.first is not None and server.first.error else ""
        return "fail", f"expected a verified handshake, got: {first.error or 'a failure without a reason'}{said}"
    version = _version_of(server, client)
    if version is not None and version != client_spec.version:
        return "fail", f"expected TLS {client_spec.version}, negotiated TLS {version}"
    if client_spec.send is not None and not client_spec.read_to_end and first.reply is not None and first.reply != LINE:
        return "fail", f"expected the line {LINE!r} back, got {first.reply!r}"
    if client_spec.send is not None and not client_spec.read_to_end and first.reply is None and first.error:
        return "fail", f"the handshake completed, then: {first.error}"
    return None


def _mentions(text: str | None, words: tuple[str, ...]) -> bool:
    lowered = (text or "").lower()
    return any(word in lowered for word in words)


# --- judges ------------------------------------------------------------------------------


def judge_established(feature: Feature, server_spec: ServerSpec, client_spec: ClientSpec, server: Observation,
                      client: Observation) -> Verdict:
    failed = _established(feature, server_spec, client_spec, server, client)
    if failed:
        return failed
    first = client.connections[0]
    facts = _facts(first) or (_facts(server.first) if server.first is not None else "")
    return "pass", facts or "established"


def judge_sni(feature: Feature, server_spec: ServerSpec, client_spec: ClientSpec, server: Observation,
              client: Observation) -> Verdict:
    failed = _established(feature, server_spec, client_spec, server, client)
    if failed:
        return failed
    seen = server.first.server_name if server.first is not None else None
    if seen is not None and seen != client_spec.server_name:
        return "fail", f"the server saw SNI {seen!r}, expected {client_spec.server_name!r}"
    how = f"the server saw {seen}" if seen else "the certificate for that name was chosen"
    return "pass", f"sent {client_spec.server_name}: {how}"


def judge_alpn_agreed(feature: Feature, server_spec: ServerSpec, client_spec: ClientSpec, server: Observation,
                      client: Observation) -> Verdict:
    failed = _established(feature, server_spec, client_spec, server, client)
    if failed:
        return failed
    expected = next(p for p in server_spec.alpn if p in client_spec.alpn)
    reports = [obs.first.alpn for obs in (client, server) if obs.first is not None and obs.first.alpn is not None]
    if not reports:
        return "fail", "neither side reported the ALPN protocol"
    wrong = [r for r in reports if r != expected]
    if wrong:
        return "fail", f"expected ALPN {expected!r} (client offered {','.join(client_spec.alpn)}, server accepts {','.join(server_spec.alpn)}), got {wrong[0] or 'none'!r}"
    return "pass", f"alpn={expected}"


def judge_alpn_refused(feature: Feature, server_spec: ServerSpec, client_spec: ClientSpec, server: Observation,
                       client: Observation) -> Verdict:
    broken = _client_failed(client)
    if broken:
        return "fail", broken
    first = client.connections[0]
    if not first.ok:
        if _mentions(first.error, feature.expect_error):
            return "pass", f"refused with an alert: {first.error}"
        return "fail", f"expected no_application_protocol, got: {first.error}"
    if first.alpn:
        return "fail", f"the client offered only {','.join(client_spec.alpn)} to a server accepting {','.join(server_spec.alpn)}, yet ALPN {first.alpn!r} was agreed"
    return "pass", "no protocol agreed: the server ignored ALPN instead of refusing (RFC 7301 asks for no_application_protocol)"


def judge_mtls(feature: Feature, server_spec: ServerSpec, client_spec: ClientSpec, server: Observation,
               client: Observation) -> Verdict:
    failed = _established(feature, server_spec, client_spec, server, client)
    if failed:
        return failed
    subject = server.first.peer_subject if server.first is not None else None
    assert client_spec.identity is not None
    if subject is not None and client_spec.identity.subject not in subject:
        return "fail", f"the server saw client certificate {subject or 'none'!r}, expected {client_spec.identity.subject}"
    return "pass", f"client certificate {subject or client_spec.identity.subject} accepted"


def judge_optional_without_cert(feature: Feature, server_spec: ServerSpec, client_spec: ClientSpec, server: Observation,
                                client: Observation) -> Verdict:
    failed = _established(feature, server_spec, client_spec, server, client)
    if failed:
        return failed
    subject = server.first.peer_subject if server.first is not None else None
    if subject:
        return "fail", f"no client certificate was given, yet the server saw {subject!r}"
    return "pass", "established without a client certificate"


def judge_refused(feature: Feature, server_spec: ServerSpec, client_spec: ClientSpec, server: Observation,
                  client: Observation) -> Verdict:
    """The connection must fail, and the side that failed must say why in the feature's words."""
    broken = _client_failed(client)
    if broken:
        return "fail", broken
    first = client.connections[0]
    if first.ok and first.error is None and (client_spec.send is None or first.reply is not None):
        return "fail", f"expected the connection to be refused ({feature.about}), it succeeded: {_facts(first)}"
    error = first.error or ""
    server_error = server.first.error if server.first is not None else None
    if feature.expect_error and not (_mentions(error, feature.expect_error) or _mentions(server_error, feature.expect_error)):
        return "fail", f"refused, but not for the expected reason ({' / '.join(feature.expect_error)}): client: {error or '-'}; server: {server_error or '-'}"
    words = f"client saw: {error}" if error else "the client saw no error"
    if server_error:
        words += f"; server saw: {server_error}"
    return "pass", words


def judge_resumption(feature: Feature, server_spec: ServerSpec, client_spec: ClientSpec, server: Observation,
                     client: Observation) -> Verdict:
    failed = _established(feature, server_spec, client_spec, server, client)
    if failed:
        return failed
    if len(client.connections) < 2:
        return "fail", f"expected 2 connections, the client reported {len(client.connections)}: {client.excerpt()}"
    second = client.connections[1]
    if not second.ok:
        return "fail", f"the second connection failed: {second.error}"
    said = [(who, obs.connections[1].resumed) for who, obs in (("client", client), ("server", server))
            if len(obs.connections) > 1 and obs.connections[1].resumed is not None]
    if not said:
        return "fail", "neither side said whether the second connection resumed"
    refused = [who for who, resumed in said if not resumed]
    if refused:
        return "fail", f"the second connection was a full handshake ({' and '.join(refused)} said so); expected it to resume the first's session"
    return "pass", f"second connection resumed (said by {' and '.join(who for who, _ in said)}), TLS {_version_of(server, client) or client_spec.version}"


def judge_close_notify(feature: Feature, server_spec: ServerSpec, client_spec: ClientSpec, server: Observation,
                       client: Observation) -> Verdict:
    failed = _established(feature, server_spec, client_spec, server, client)
    if failed:
        return failed
    first = client.connections[0]
    if client_spec.read_to_end:  # the server ends: the client must see a clean end after all the data
        if not first.received or first.end != "close_notify":
            return "fail", f"expected data then close_notify, got {first.received} bytes then {first.end or first.error!r}"
        return "pass", f"{first.received} bytes, then a clean end (close_notify)"
    end = server.first.end if server.first is not None else None
    if end != "close_notify":
        return "fail", f"the client ended with close_notify; the server saw {end or 'nothing about the end'!r}"
    return "pass", "the server saw the client's close_notify"


def judge_truncation(feature: Feature, server_spec: ServerSpec, client_spec: ClientSpec, server: Observation,
                     client: Observation) -> Verdict:
    failed = _established(feature, server_spec, client_spec, server, client)
    if failed:
        return failed
    first = client.connections[0]
    if client_spec.read_to_end:
        if first.end == "close_notify" or first.end is None:
            return "fail", f"the server ended without close_notify; the client saw {first.end or 'no end'!r} after {first.received} bytes (a truncation must be an error)"
        return "pass", f"{first.received} bytes, then an error: {first.end}"
    end = server.first.end if server.first is not None else None
    if end is None or end == "close_notify":
        return "fail", f"the client ended without close_notify; the server saw {end or 'nothing about the end'!r} (a truncation must be an error)"
    return "pass", f"the server saw an error: {end}"


# --- the features ------------------------------------------------------------------------


def _plain(pki: CertificateSource, version: Version, **fields: object) -> ServerSpec:
    return ServerSpec(version=version, cert=pki.server(), **fields)  # type: ignore[arg-type]


def _client(version: Version, **fields: object) -> ClientSpec:
    return ClientSpec(version=version, server_name="localhost", **fields)  # type: ignore[arg-type]


def _key_feature(kind: str, title: str) -> Feature:
    return Feature(
        f"sig-{kind}" if kind != "rsa" else "sig-rsa-pss", f"the server signs with {title}",
        lambda pki, v: ServerSpec(version=v, cert=pki.server(kind)), lambda pki, v: _client(v),
        judge_established, server_needs=frozenset({f"key-{kind}"}))


def _group_feature(group: str) -> Feature:
    # An RSA certificate: with TLS 1.2 a client's supported groups also bound the curves of
    # the ECDSA certificates it accepts, so an X25519-only client refuses a P-256 one.
    return Feature(
        f"group-{group.lower()}", f"key exchange on {group} only (the peer allows no other group; an RSA certificate)",
        lambda pki, v: ServerSpec(version=v, cert=pki.server("rsa"), groups=(group,)), lambda pki, v: _client(v, groups=(group,)),
        judge_established, server_needs=frozenset({"key-rsa"}))


# JSSE words two of them its own way: "validity check failed" (PKIX) and "No subject
# alternative DNS name matching localhost found".
CERT_ERRORS = {
    "expired": ("expired", "validity check failed"),
    "wrong-host": ("name-mismatch", "mismatch", "host name", "hostname", "valid for", "does not match", "doesn't match",
                   "notvalidforname", "ip address", "no subject alternative"),
    "unknown-ca": ("unknown-issuer", "unknownissuer", "issuer", "unknown ca", "unknown_ca", "unknown authority", "self-signed",
                   "self signed", "not trusted", "untrusted", "unable to find valid certification path"),
}


FEATURES: list[Feature] = [
    Feature("handshake", "a full handshake, then a line echoed back",
            lambda pki, v: _plain(pki, v), lambda pki, v: _client(v), judge_established),
    Feature("sni", "the client names b.test; the server has a certificate for localhost (default) and one for b.test",
            lambda pki, v: _plain(pki, v, sni_cert=pki.server(names=(SNI_NAME,))), lambda pki, v: ClientSpec(version=v, server_name=SNI_NAME),
            judge_sni, server_needs=frozenset({"sni-select"})),
    Feature("alpn-agreed", "the client offers h2,http/1.1; the server accepts http/1.1",
            lambda pki, v: _plain(pki, v, alpn=("http/1.1",)), lambda pki, v: _client(v, alpn=("h2", "http/1.1")),
            judge_alpn_agreed, server_needs=frozenset({"alpn"}), client_needs=frozenset({"alpn"})),
    Feature("alpn-refused", "the client offers only h2; the server accepts only http/1.1",
            lambda pki, v: _plain(pki, v, alpn=("http/1.1",)), lambda pki, v: _client(v, alpn=("h2",)),
            judge_alpn_refused, server_needs=frozenset({"alpn"}), client_needs=frozenset({"alpn"}),
            expect_error=("no_application_protocol", "no application protocol", "no-application-protocol", "alert 120", "alert [120]", "handshake-failure", "no_alpn", "no suitable application protocol",
                          "no supported application protocol")),
    Feature("mtls", "the server requires a client certificate; the client presents one from the trusted CA",
            lambda pki, v: _plain(pki, v, client_auth="required"), lambda pki, v: _client(v, identity=pki.client()),
            judge_mtls, server_needs=frozenset({"client-auth"}), client_needs=frozenset({"client-cert"})),
    Feature("mtls-no-cert", "the server requires a client certificate; the client has none: refused",
            lambda pki, v: _plain(pki, v, client_auth="required"), lambda pki, v: _client(v),
            judge_refused, server_needs=frozenset({"client-auth"}),
            # What a client sees depends on the server: its alert, or (GnuTLS with TLS 1.3) just
            # the connection closing under the client's next write.
            expect_error=("certificate", "handshake", "alert", "peer-alert", "closed", "reset", "broken pipe", "bad_certificate",
                          "handshake_failure")),
    Feature("mtls-optional", "the server asks for a client certificate but does not require one; the client has none",
            lambda pki, v: _plain(pki, v, client_auth="optional"), lambda pki, v: _client(v),
            judge_optional_without_cert, server_needs=frozenset({"client-auth-optional"})),
    Feature("client-cert-unknown-ca", "the server requires a client certificate; the client's is from an unknown CA: refused",
            lambda pki, v: _plain(pki, v, client_auth="required"), lambda pki, v: _client(v, identity=pki.client(unknown_ca=True)),
            judge_refused, server_needs=frozenset({"client-auth"}), client_needs=frozenset({"client-cert"}),
            expect_error=("unknown", "certificate", "alert", "verify", "issuer", "closed", "reset")),
    Feature("resumption", "two connections: the second resumes the first's session",
            lambda pki, v: _plain(pki, v), lambda pki, v: _client(v, connections=2),
            judge_resumption, client_needs=frozenset({"resume"})),
    Feature("close-notify-server", "the server sends 1000 bytes and ends with close_notify: a clean end for the client",
            lambda pki, v: _plain(pki, v, behaviour="close"), lambda pki, v: _client(v, send=None, read_to_end=True),
            judge_close_notify, server_needs=frozenset({"close"}), client_needs=frozenset({"read-to-end"})),
    Feature("truncation-server", "the server sends 1000 bytes and closes TCP without close_notify: an error for the client",
            lambda pki, v: _plain(pki, v, behaviour="truncate"), lambda pki, v: _client(v, send=None, read_to_end=True),
            judge_truncation, server_needs=frozenset({"truncate"}), client_needs=frozenset({"read-to-end"})),
    Feature("close-notify-client", "the client ends with close_notify after its line: a clean end for the server",
            lambda pki, v: _plain(pki, v), lambda pki, v: _client(v),
            judge_close_notify, server_needs=frozenset({"report-end"})),
    Feature("truncation-client", "the client closes TCP without close_notify after its line: an error for the server",
            lambda pki, v: _plain(pki, v), lambda pki, v: _client(v, ending="truncate"),
            judge_truncation, server_needs=frozenset({"report-end"}), client_needs=frozenset({"truncate"})),
    Feature("cert-expired", "the server's certificate expired yesterday: the client refuses it",
            lambda pki, v: ServerSpec(version=v, cert=pki.server(expired=True)), lambda pki, v: _client(v),
            judge_refused, client_needs=frozenset({"verify"}), expect_error=CERT_ERRORS["expired"]),
    Feature("cert-wrong-host", "the server's certificate names other.test, the client asks for localhost: refused",
            lambda pki, v: ServerSpec(version=v, cert=pki.server(names=("other.test",))), lambda pki, v: _client(v),
            judge_refused, client_needs=frozenset({"verify"}), expect_error=CERT_ERRORS["wrong-host"]),
    Feature("cert-unknown-ca", "the server's certificate is from a CA the client does not trust: refused",
            lambda pki, v: ServerSpec(version=v, cert=pki.server(unknown_ca=True)), lambda pki, v: _client(v),
            judge_refused, client_needs=frozenset({"verify"}), expect_error=CERT_ERRORS["unknown-ca"]),
    _group_feature("X25519"),
    _group_feature("P-256"),
    _group_feature("P-384"),
    _key_feature("ecdsa-p384", "an ECDSA P-384 certificate"),
    _key_feature("rsa", "an RSA certificate (RSA-PSS signatures: rsa_pss_rsae)"),
    _key_feature("ed25519", "an Ed25519 certificate"),
]

FEATURE_NAMES = [f.name for f in FEATURES]
BY_NAME = {f.name: f for f in FEATURES}


def pick(names: list[str] | None) -> list[Feature]:
    """The features named (globs allowed: ``cert-*``), in the matrix's order; all by default."""
    if not names:
        return list(FEATURES)
    chosen: list[Feature] = []
    for name in names:
        pattern = re.compile("^" + re.escape(name).replace(r"\*", ".*") + "$")
        matched = [f for f in FEATURES if pattern.match(f.name)]
        if not matched:
            raise ValueError(f"unknown feature {name!r} (known: {', '.join(FEATURE_NAMES)})")
        chosen += [f for f in matched if f not in chosen]
    return [f for f in FEATURES if f in chosen]
