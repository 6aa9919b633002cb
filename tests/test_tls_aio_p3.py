"""The asyncio-style guest binding (``guest_examples/common/wasi_tls_aio.py``) in a real WASI
0.3 componentize-py guest, ``https_get_p3``, run by the CLI against a CPython ``ssl`` server
on loopback whose certificate comes from a trustme CA given with ``--trust``.

``tls_echo_server_p3`` is the server side: ``start_server`` with ``select_identity`` choosing
a preopened identity by SNI, against concurrent CPython ``ssl`` clients.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
import trustme

from wasi_tls_host.cli import main as cli_main
from wasi_tls_host.guests import build

pytestmark = pytest.mark.timeout(180)

BODY = bytes(range(256)) * 400  # 100 KiB: several TLS records and stream reads


class HttpsServer:
    """CPython ssl serving one fixed response per connection; records how each ended."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # accept() wakes to see `stopping`
        self.stopping = threading.Event()
        self.port = self.listener.getsockname()[1]
        self.endings: list[str] = []  # one per connection, in order: it serves one at a time
        self.accepted = 0
        self.ended = threading.Condition()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            with conn:
                conn.settimeout(30)
                try:
                    with self.ctx.wrap_socket(conn, server_side=True) as tls:
                        request = b""
                        while b"\r\n\r\n" not in request and (chunk := tls.recv(4096)):
                            request += chunk
                        if b"\r\n\r\n" not in request:  # a client that only shook hands
                            self.endings.append("closed without a request")
                            continue
                        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
                        if request.startswith(b"GET /truncate "):
                            tls.sendall(head + BODY[:1000])
                            self.endings.append("truncated")
                            continue  # the TCP connection ends without close_notify
                        tls.sendall(head + BODY)
                        tls.unwrap()  # our close_notify, then the guest's
                        self.endings.append("close_notify " + request.split(b"\r\n")[0].decode())
                except (OSError, ssl.SSLError) as e:
                    self.endings.append(f"error {e}")
                finally:
                    with self.ended:
                        self.ended.notify_all()

    def endings_since(self, accepted: int, timeout: float = 30.0) -> list[str]:
        """How the connections after the first ``accepted`` ended, once the last accepted
        one has (a guest may exit before this thread saw its close_notify and recorded it,
        as an earlier test's connection may still be ending when the next test starts)."""
        with self.ended:
            self.ended.wait_for(lambda: len(self.endings) >= max(self.accepted, accepted + 1), timeout)
        return self.endings[accepted:]

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("aio") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


@pytest.fixture(scope="module")
def server(ca_file: tuple[trustme.CA, Path]) -> Iterator[HttpsServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca_file[0].issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    srv = HttpsServer(ctx)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def https_get_p3() -> Path:
    return build("https_get_p3")


def run_guest(guest: Path, ca: Path, port: int, *args: str) -> int:
    return cli_main(["run", "--trust", str(ca), "--allow-connect", f"127.0.0.1:{port}", "--allow-dns",
                     str(guest), *args])


def test_open_connection_gets_a_page_and_closes_with_close_notify(
        https_get_p3: Path, ca_file: tuple[trustme.CA, Path], server: HttpsServer,
        capfd: pytest.CaptureFixture[str]) -> None:
    accepted = server.accepted
    assert run_guest(https_get_p3, ca_file[1], server.port, f"https://localhost:{server.port}/page?q=1") == 0
    out = capfd.readouterr().out.splitlines()
    # The WASI 0.2 https_get's lines for the same URL, after the negotiated version and ALPN.
    assert out == ["version: TLSv1.3", "alpn: http/1.1", "status: HTTP/1.1 200 OK", "headers: 1", f"body-bytes: {len(BODY)}",
                   f"body-sha256: {hashlib.sha256(BODY).hexdigest()}"]
    # writer.close() + wait_closed() sent close_notify after the request: unwrap() saw it.
    assert server.endings_since(accepted) == ["close_notify GET /page?q=1 HTTP/1.1"]


def test_wrong_hostname_is_a_clear_tls_error(
        https_get_p3: Path, ca_file: tuple[trustme.CA, Path], server: HttpsServer,
        capfd: pytest.CaptureFixture[str]) -> None:
    assert run_guest(https_get_p3, ca_file[1], server.port, f"https://127.0.0.1:{server.port}/", "--server-name", "wrong.example") == 1
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: TlsError: name-mismatch: ")
    assert "not valid for 'wrong.example'" in captured.err


def test_a_peer_ending_without_close_notify_is_truncated(
        https_get_p3: Path, ca_file: tuple[trustme.CA, Path], server: HttpsServer,
        capfd: pytest.CaptureFixture[str]) -> None:
    assert run_guest(https_get_p3, ca_file[1], server.port, f"https://localhost:{server.port}/truncate") == 1
    captured = capfd.readouterr()
    assert captured.out.splitlines() == ["version: TLSv1.3", "alpn: http/1.1"]
    # Reading to the end reports the TLS error, not a clean end of a short body.
    assert captured.err.startswith("error: TlsError: truncated: "), captured.err


def test_untrusted_server_is_unknown_issuer(
        https_get_p3: Path, server: HttpsServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    assert run_guest(https_get_p3, other, server.port, f"https://localhost:{server.port}/") == 1
    assert capfd.readouterr().err.startswith("error: TlsError: unknown-issuer: ")


def test_https_get_p3_refuses_what_is_not_an_https_url(https_get_p3: Path, ca_file: tuple[trustme.CA, Path],
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    assert run_guest(https_get_p3, ca_file[1], 1, "http://localhost/") == 1
    assert capfd.readouterr().err.startswith("error: ValueError: usage: https_get_p3 https://HOST[:PORT]/PATH")


def test_open_connection_through_the_upstream_connector(
        ca_file: tuple[trustme.CA, Path], server: HttpsServer, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    """A world with only wasi:tls@0.3.0-draft: the same call goes through upstream's connector."""
    guest = build("https_get_upstream_p3")
    accepted = server.accepted
    assert run_guest(guest, ca_file[1], server.port, "localhost", str(server.port)) == 0
    head = b"Content-Length: %d\r\n\r\n" % len(BODY)
    assert capfd.readouterr().out.splitlines() == ["status HTTP/1.1 200 OK", f"rest {len(head) + len(BODY)} bytes"]
    assert server.endings_since(accepted) == ["close_notify GET / HTTP/1.1"]
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    assert run_guest(guest, other, server.port, "localhost", str(server.port)) == 1
    assert capfd.readouterr().out.startswith("tls error: unknown-issuer: ")


def test_tls_probe_p3_times_handshakes_and_a_download(
        ca_file: tuple[trustme.CA, Path], server: HttpsServer, capfd: pytest.CaptureFixture[str]) -> None:
    """The benchmark guest (bench_tls_p3.py's figures): timings taken inside it, through the
    upstream connector, of connections that really happened."""
    guest = build("tls_probe_p3")
    accepted = server.accepted
    assert run_guest(guest, ca_file[1], server.port, "bench-handshake", "127.0.0.1", str(server.port), "2", "localhost") == 0
    timings = capfd.readouterr().out.strip().removeprefix("handshake-us=").split(",")
    assert len(timings) == 2 and all(int(t) > 0 for t in timings), timings
    assert run_guest(guest, ca_file[1], server.port, "bench-download", "127.0.0.1", str(server.port), "localhost") == 0
    facts = dict(line.split("=", 1) for line in capfd.readouterr().out.splitlines())
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    assert int(facts["bytes"]) == len(head) + len(BODY) and int(facts["download-us"]) > 0, facts
    assert server.endings_since(accepted) == ["closed without a request"] * 2 + ["close_notify GET / HTTP/1.0"]
    assert run_guest(guest, ca_file[1], server.port, "bench-handshake", "127.0.0.1", str(server.port), "1", "other.test") == 1
    assert capfd.readouterr().out.startswith("tls error: ")


@pytest.fixture(scope="module")
def tls_echo_server_p3() -> Path:
    return build("tls_echo_server_p3")


def echo_client(port: int, ctx: ssl.SSLContext, name: str, results: dict[str, object]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        stream = tls.makefile("rwb")
        first = stream.readline()
        stream.write(f"hello {name}\n".encode())
        stream.flush()
        echoed = stream.readline()
        san = tls.getpeercert()["subjectAltName"]
        stream.close()
        tls.unwrap()  # the guest's writer.close() sent close_notify
        results[name] = (first, echoed, san)


def start_echo_server(guest: Path, tmp_path: Path, ca: trustme.CA, *args: str) -> tuple[subprocess.Popen[str], int]:
    """tls_echo_server_p3 with identities `a.test` and `default` from ``ca``; ``args``: more
    CLI options, then `--` and the guest's arguments after HOST PORT. Returns it and its port."""
    identities = []
    for name, host_name in (("a.test", "a.test"), ("default", "default.test")):
        cert = ca.issue_cert(host_name)
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.crt"))
        cert.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
        identities += ["--identity", f"{name}={tmp_path / f'{name}.crt'},{tmp_path / f'{name}.key'}"]
    split = args.index("--")
    cli = Path(sys.executable).parent / "wasi-tls-host"
    proc = subprocess.Popen([str(cli), "run", "--allow-listen", "127.0.0.1:*", *identities, *args[:split], str(guest),
                             "127.0.0.1", "0", *args[split + 1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    listening = proc.stdout.readline().split()
    if not listening or listening[0] != "listening":
        proc.kill()
        raise AssertionError(f"{listening} {proc.communicate()}")
    return proc, int(listening[1])


def test_start_server_selects_identities_by_sni_and_serves_concurrently(
        tls_echo_server_p3: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    proc, port = start_echo_server(tls_echo_server_p3, tmp_path, ca, "--", "2", "a.test")
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ctx.set_alpn_protocols(["h2", "echo"])
        results: dict[str, object] = {}
        # Both connections are open at once: the second is served while the first waits.
        clients = [threading.Thread(target=echo_client, args=(port, ctx, n, results)) for n in ("a.test", "default.test")]
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=60)
        assert results == {
            "a.test": (b"TLSv1.3 echo\n", b"HELLO A.TEST\n", (("DNS", "a.test"),)),
            "default.test": (b"TLSv1.3 echo\n", b"HELLO DEFAULT.TEST\n", (("DNS", "default.test"),)),
        }
        # close() in the second connection's handler ends serve_forever at once (its
        # pending accept ends): the run ends with no further connection.
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (0, "closed after 2\n", "")


def echo_hi(port: int, ctx: ssl.SSLContext, *, close_notify: bool = True) -> tuple[bytes, str | None]:
    """One connection to tls_echo_server_p3 as "default.test": its first line and the
    version negotiated; "hi" comes back as "HI"; then close_notify, or (``close_notify=False``)
    the TCP connection closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="default.test") as tls:
        stream = tls.makefile("rwb")
        first, version = stream.readline(), tls.version()
        stream.write(b"hi\n")
        stream.flush()
        assert stream.readline() == b"HI\n"
        stream.close()
        if close_notify:
            tls.unwrap()
    return first, version


def refused_client(port: int, ctx: ssl.SSLContext) -> str:
    """The reason a client's first read fails (TLS 1.3 checks the client's certificate after
    the client's side of the handshake is done)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="default.test") as tls:
        try:
            data = tls.recv(100)
        except ssl.SSLError as e:
            return str(e.reason)
        return f"read {data!r}"


def test_start_server_client_ca_verifies_clients_against_a_named_ca_set(
        tls_echo_server_p3: Path, tmp_path: Path) -> None:
    """client_ca="clients" verifies against --client-ca clients=CA.pem, not the default
    --client-ca; the client's certificate is get_extra_info("peercert") in the shape (and
    with the values) CPython's getpeercert() gives for the same certificate."""
    ca, clients_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    clients_ca.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    other_ca.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    proc, port = start_echo_server(tls_echo_server_p3, tmp_path, ca, "--client-ca", str(tmp_path / "other-ca.pem"),
                                   "--client-ca", f"clients={tmp_path / 'clients-ca.pem'}", "--", "1", "--client-ca", "clients")
    try:
        def client(issuer: trustme.CA | None) -> ssl.SSLContext:
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            ctx.set_alpn_protocols(["echo"])
            if issuer is not None:
                issuer.issue_cert("client.test", "127.0.0.1", common_name="Client Example").configure_cert(ctx)
            return ctx

        assert refused_client(port, client(None)) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
        # A certificate from the default --client-ca is not one of the named set's.
        assert refused_client(port, client(other_ca)) == "TLSV1_ALERT_UNKNOWN_CA"
        good = clients_ca.issue_cert("client.test", "127.0.0.1", common_name="Client Example")
        good.cert_chain_pems[0].write_to_path(str(tmp_path / "client.crt"))
        ctx = client(None)
        good.configure_cert(ctx)
        first, _ = echo_hi(port, ctx)
        version, alpn, peercert = first.decode().split(" ", 2)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (version, alpn) == ("TLSv1.3", "echo")
    expected = ssl._ssl._test_decode_cert(str(tmp_path / "client.crt"))  # what getpeercert() gives
    assert json.loads(peercert) == json.loads(json.dumps(expected))
    assert expected["notBefore"] and expected["serialNumber"] and expected["version"] == 3
    assert (proc.returncode, out) == (0, "closed after 1\n")
    refusals = err.splitlines()
    assert len(refusals) == 2, err
    assert "TlsError: " in refusals[0] and "TlsError: " in refusals[1], err


def test_start_server_refuses_at_once_when_its_answer_cannot_be_made(tls_echo_server_p3: Path, tmp_path: Path) -> None:
    """client_ca= names a set the embedder did not give: the server hello cannot be made
    (access-denied), and the binding refuses the client with internal_error at once rather
    than leaving the hello unanswered until the host's handshake deadline (10 minutes here;
    the client gives up after 30 s, so without the refusal this test fails). The next
    client is refused the same way: an answer that could not be made is not kept for the
    connections after (the binding makes the one answer of identity= at the first
    connection it can make it for)."""
    ca = trustme.CA()
    proc, port = start_echo_server(tls_echo_server_p3, tmp_path, ca, "--tls-handshake-timeout", "600s", "--", "1", "--client-ca", "nosuch")
    reasons, said = [], []
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ctx.set_alpn_protocols(["echo"])
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
                with pytest.raises(ssl.SSLError) as refused:
                    ctx.wrap_socket(raw, server_hostname="default.test")
            reasons.append(refused.value.reason)
            assert proc.stderr is not None
            said.append(proc.stderr.readline())  # the guest's line for the refused connection (it goes on serving)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert reasons == ["TLSV1_ALERT_INTERNAL_ERROR"] * 2
    assert all("TlsError: access-denied" in line and "nosuch" in line for line in said), said


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_guest(name: str) -> tuple[str, list[str]]:
    """The README's Python block that starts with ``# NAME, built with: COMMAND``: its
    code and COMMAND's words."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        first = block.splitlines()[0]
        if first.startswith(f"# {name}, built with: "):
            return block, shlex.split(first.partition("built with: ")[2])
    raise AssertionError(f"README.md has no python block starting with '# {name}, built with: '")


def build_as_readme_says(name: str, folder: Path, capfd: pytest.CaptureFixture[str]) -> Path:
    code, command = readme_guest(name)
    folder.mkdir()
    (folder / name).write_text(code)
    assert command[:2] == ["wasi-tls-host", "build-guest"] and name in command, command
    assert cli_main([str(folder / word) if word == name else word for word in command[1:]]) == 0
    return Path(capfd.readouterr().out.splitlines()[-1])


@pytest.mark.timeout(600)  # two componentize-py builds and their compilation, on a cold cache
def test_readme_client_and_server_build_and_run_as_shown(
        ca_file: tuple[trustme.CA, Path], server: HttpsServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The README's guest client and server, built with its one command from a folder of
    their own: the client fetches from a CPython ssl server, CPython ssl clients fetch from
    the server, which stops by itself after its COUNT requests."""
    client = build_as_readme_says("client.py", tmp_path / "client", capfd)
    accepted = server.accepted
    assert run_guest(client, ca_file[1], server.port, "localhost", str(server.port)) == 0
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    assert capfd.readouterr().out.splitlines() == ["HTTP/1.1 200 OK over TLSv1.3",
                                                   f"body and headers: {len(head) + len(BODY) - 17} bytes"]
    assert server.endings_since(accepted) == ["close_notify GET / HTTP/1.1"]

    guest = build_as_readme_says("server.py", tmp_path / "server", capfd)
    cert = ca_file[0].issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cli = Path(sys.executable).parent / "wasi-tls-host"
    proc = subprocess.Popen([str(cli), "run", "--allow-listen", "127.0.0.1:*", "--identity",
                             f"web={tmp_path / 'cert.pem'},{tmp_path / 'key.pem'}", str(guest), "0", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        listening = proc.stdout.readline().split()
        assert listening[:2] == ["listening", "on"], listening
        ctx = ssl.create_default_context()
        ca_file[0].configure_trust(ctx)
        ctx.set_alpn_protocols(["http/1.1"])
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", int(listening[2])), timeout=30) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                response = b""
                while chunk := tls.recv(4096):
                    response += chunk
                assert tls.selected_alpn_protocol() == "http/1.1"
            assert response == b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\nhello over TLSv1.3\n"
        out, err = proc.communicate(timeout=30)  # the second request closed the server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (0, "", "")


def test_get_extra_info_version_is_the_negotiated_one_for_tls_1_2_and_1_3(tls_echo_server_p3: Path, tmp_path: Path) -> None:
    """The binding reads TLS 1.3 off the suite (0x13XX suites are TLS 1.3's alone) and asks
    the host otherwise: each client's version is what the server's get_extra_info says."""
    ca = trustme.CA()
    proc, port = start_echo_server(tls_echo_server_p3, tmp_path, ca, "--", "2")
    try:
        firsts = []
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            ctx.minimum_version = ctx.maximum_version = version
            ctx.set_alpn_protocols(["echo"])
            firsts.append(echo_hi(port, ctx))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert firsts == [(b"TLSv1.2 echo\n", "TLSv1.2"), (b"TLSv1.3 echo\n", "TLSv1.3")], err
    assert (proc.returncode, out) == (0, "closed after 2\n")


def test_a_connection_whose_callback_fails_is_closed_at_once(tls_echo_server_p3: Path, tmp_path: Path) -> None:
    """As asyncio's start_server does, the binding closes a connection whose callback raised
    (here: the echo's read of a client that left without close_notify), instead of leaving
    its socket open until the guest's garbage collector gets to it."""
    import os
    import time

    ca = trustme.CA()
    proc, port = start_echo_server(tls_echo_server_p3, tmp_path, ca, "--", "3")
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)

    def descriptors() -> int:
        return len(os.listdir(f"/proc/{proc.pid}/fd"))

    def left_open(baseline: int) -> int:
        """Descriptors above ``baseline`` once they stopped going (at most 10 s)."""
        deadline = time.monotonic() + 10
        while descriptors() > baseline and time.monotonic() < deadline:
            time.sleep(0.05)
        return descriptors() - baseline

    try:
        baseline = descriptors()
        echo_hi(port, ctx)
        after_clean = left_open(baseline)
        echo_hi(port, ctx, close_notify=False)
        after_truncated = left_open(baseline)
        echo_hi(port, ctx)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (after_clean, after_truncated) == (0, 0), err
    assert "truncated" in err and (proc.returncode, out) == (0, "closed after 3\n")


def test_start_server_alpn_is_chosen_by_the_server_preference_and_refused_when_none_is_shared(
        tls_echo_server_p3: Path, tmp_path: Path) -> None:
    """With one identity the binding gives the host its protocols in preference order
    (set-alpn-preferences) instead of asking for the client's first: the host chooses the
    first of the server's the client offered, none when the client offered none, and
    refuses a client offering only others with no_application_protocol (RFC 7301 3.2),
    which the binding reports with the client's address."""
    ca = trustme.CA()
    proc, port = start_echo_server(tls_echo_server_p3, tmp_path, ca, "--", "2")  # alpn=["echo", "http/1.1"]
    try:
        def client(offer: list[str]) -> ssl.SSLContext:
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            if offer:
                ctx.set_alpn_protocols(offer)
            return ctx

        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        client_port = raw.getsockname()[1]
        with raw, pytest.raises(ssl.SSLError, match="no application protocol"):
            client(["h2"]).wrap_socket(raw, server_hostname="default.test")
        firsts = [echo_hi(port, client([])), echo_hi(port, client(["http/1.1", "echo"]))]
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert firsts == [(b"TLSv1.3 None\n", "TLSv1.3"), (b"TLSv1.3 echo\n", "TLSv1.3")], err
    assert (proc.returncode, out) == (0, "closed after 2\n")
    # The refusal is reported with the client's address (accept-socket's, as get-remote-address gives it).
    assert (f"wasi_tls_aio: connection from ('127.0.0.1', {client_port}): TlsError: handshake-failure: "
            "the client offered ALPN ids [b'h2'], none of those this server speaks") in err, err
