"""The pytest plugin (entry point ``pytest11: wasi_tls_host``) as another project's suite uses
it: each test writes a test module into a fresh folder and runs pytest there in a
subprocess (pytester), away from this suite's conftest.py, whose ``run_guest`` would
otherwise shadow the plugin's. The inner tests run real guests against real peers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(600)

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error::ResourceWarning
    error::pytest.PytestUnraisableExceptionWarning
"""


# The user's cache, read before pytester points HOME at its folder: compiled guests and the
# built Go peer are reused instead of built again in the inner session.
USER_CACHE = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")


def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, *args: str) -> pytest.RunResult:
    monkeypatch.setenv("XDG_CACHE_HOME", USER_CACHE)
    pytester.makeini(INI)
    pytester.makepyfile(test_inner=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-rs", *args, timeout=500)


# One inner session for all of it: one Host, each guest loaded once (the CI budget).
INNER = '''
import sys

import pytest


async def test_alpn(tls_peer, run_guest_async):
    server = tls_peer.server("openssl", version="1.3", alpn=("http/1.1",))
    result = await run_guest_async("tls_client", "127.0.0.1", str(server.port), "--server-name", "localhost",
                                   "--alpn", "h2,http/1.1", "--send", "level")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "alpn=http/1.1" in result.stdout and "reply=level" in result.stdout


def test_client_certificate_with_go(go_peer, run_guest):
    server = go_peer.server(version="1.2", client_auth="required")
    result = run_guest("tls_client", "127.0.0.1", str(server.port), "--server-name", "localhost", "--identity", "client",
                       "--send", "level")
    assert result.exit_code == 0, result.stdout + result.stderr
    [seen] = server.observe(1, 5.0).connections
    assert seen.ok and "interop-client" in seen.peer_subject and seen.version == "1.2"


def test_resumption_seen_by_the_host(python_peer, run_guest):
    server = python_peer.server(version="1.3")
    result = run_guest("tls_probe", "resume", "127.0.0.1", str(server.port), "2", "localhost")
    assert result.exit_code == 0, result.stdout
    assert [h.resumed for h in result.handshakes] == [False, True]


def test_gnutls_and_curl_clients(serve_guest, gnutls_peer, curl_peer):
    server = serve_guest("tls_server", "--count", "0", "--concurrent", "--mode", "http", "--alpn", "http/1.1")
    seen = gnutls_peer.client(port=server.port, version="1.3", send=None, alpn=("http/1.1",))
    assert seen.first.ok and seen.first.alpn == "http/1.1", seen.output
    fetched = curl_peer.client(port=server.port, version="1.2")
    assert fetched.first.ok and fetched.first.version == "1.2", fetched.output
    assert "#2 connection" in server.output


def test_mutual_tls_refused_without_a_certificate(serve_guest, tls_peer):
    server = serve_guest("tls_server", "--count", "0", "--client-auth", "required", client_auth=True)
    seen = tls_peer.client("python", port=server.port, version="1.3")
    assert not (seen.first.ok and seen.first.reply == "level"), seen.output


def test_unknown_peer_and_unknown_options_are_errors(tls_peer):
    with pytest.raises(ValueError, match="unknown peer 'nss-nope'"):
        tls_peer.server("nss-nope")
    with pytest.raises(TypeError, match="unknown client options"):
        tls_peer.client("python", 1, colour="blue")


def test_needs_gnutls(gnutls_peer, monkeypatch, tmp_path):
    # Only this interpreter on PATH: no gnutls-serv, so the fixture skips the test, saying why.
    (tmp_path / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path))
    gnutls_peer.server()
'''


def test_the_plugins_fixtures_in_another_projects_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_inner(pytester, monkeypatch, INNER)
    result.assert_outcomes(passed=6, skipped=1)
    result.stdout.fnmatch_lines(["*gnutls: gnutls-serv, gnutls-cli not installed (Debian: gnutls-bin)*"])


def test_the_plugin_is_registered_as_an_entry_point() -> None:
    from importlib.metadata import entry_points

    found = [e for e in entry_points(group="pytest11") if e.name == "wasi_tls_host"]
    assert [e.value for e in found] == ["wasi_tls_host.interop.pytest_plugin"]
