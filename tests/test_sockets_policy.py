"""The network policy: denied operations return access-denied, are logged, and never reach
the OS (asserted on the target port); the CLI options build the policy."""

from __future__ import annotations

import ipaddress
import logging
import socket
import subprocess
import sys

import pytest

from conftest import free_port
from sockets_util import TIMEOUT
from wasi_tls_host import cli
from wasi_tls_host.runtime.values import Variant, WitError
from wasi_tls_host.wasi.context import WasiConfig
from wasi_tls_host.wasi.sockets import AddressPattern, NetworkPolicy
from wasi_tls_host.wasi.sockets.addresses import local_address, remote_address

GUEST = "sockets_probe"


def nothing_accepted(listener: socket.socket) -> bool:
    listener.setblocking(False)
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def test_connect_outside_the_allow_list_is_denied_and_sends_nothing(run_guest, caplog):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    policy = NetworkPolicy().allow_connect(f"127.0.0.1:{port + 1 if port < 65535 else port - 1}")
    with caplog.at_level(logging.WARNING, logger="wasi_tls_host.sockets"):
        run = run_guest(GUEST, "connect", "127.0.0.1", str(port), network=policy)
    assert run.out == "connect error access-denied\n"
    assert nothing_accepted(listener), "a denied connect must not reach the network"
    listener.close()
    assert any("denied TCP connect to 127.0.0.1:%d" % port in r.getMessage() for r in caplog.records)


def test_no_policy_denies_everything(run_guest):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    assert run_guest(GUEST, "connect", "127.0.0.1", str(port)).out == "connect error access-denied\n"
    assert run_guest(GUEST, "bind", "127.0.0.1", "0").out == "bind error access-denied\n"
    assert run_guest(GUEST, "lookup", "localhost").out == "error access-denied\n"
    assert nothing_accepted(listener)
    listener.close()


def test_allowed_connect_succeeds(run_guest):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]
    policy = NetworkPolicy().allow_connect(f"127.0.0.1:{port}")
    assert run_guest(GUEST, "connect", "127.0.0.1", str(port), network=policy).out == "connected\n"
    conn, _ = listener.accept()
    conn.close()
    listener.close()


def test_listen_only_on_granted_addresses(run_guest):
    allowed, denied = free_port(), free_port()
    while denied == allowed:
        denied = free_port()
    policy = NetworkPolicy().allow_listen(f"127.0.0.1:{allowed}")
    assert run_guest(GUEST, "bind", "127.0.0.1", str(allowed), network=policy).out == f"listening 127.0.0.1:{allowed}\n"
    assert run_guest(GUEST, "bind", "127.0.0.1", str(denied), network=policy).out == "bind error access-denied\n"
    # Listening does not imply connecting.
    assert run_guest(GUEST, "connect", "127.0.0.1", str(allowed), network=policy).out == "connect error access-denied\n"


def test_udp_to_a_denied_address_sends_no_datagram(run_guest):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    policy = NetworkPolicy().allow_listen("127.0.0.1:*")  # may bind, may not send there
    run = run_guest(GUEST, "udp-client", "127.0.0.1", str(port), "secret", network=policy)
    assert run.out == "unexpected error access-denied\n"
    receiver.setblocking(False)
    with pytest.raises(BlockingIOError):
        receiver.recvfrom(100)
    receiver.close()


def test_address_patterns():
    ip = ipaddress.ip_address
    p = AddressPattern.parse("127.0.0.1:*")
    assert p.matches(ip("127.0.0.1"), 1) and not p.matches(ip("127.0.0.2"), 1)
    p = AddressPattern.parse("10.0.0.0/8:1000-2000")
    assert p.matches(ip("10.9.8.7"), 1500) and not p.matches(ip("10.9.8.7"), 2001)
    p = AddressPattern.parse("[::1]:443")
    assert p.matches(ip("::1"), 443) and not p.matches(ip("127.0.0.1"), 443)
    p = AddressPattern.parse("localhost:8443")
    assert p.matches(ip("127.0.0.1"), 8443) and p.matches(ip("::1"), 8443)
    assert AddressPattern.parse("*:*").matches(ip("::ffff:1.2.3.4"), 0)
    for bad in ("127.0.0.1", "::1:80", "example.com:80", "1.2.3.4:70000", "1.2.3.4:x", "[::1]80"):
        with pytest.raises(ValueError):
            AddressPattern.parse(bad)


def test_cli_options_build_the_policy(guest_path):
    from wasi_tls_host.cli.options import OPTION_GROUPS

    parser = cli.build_parser()
    args = parser.parse_args(["run", "--allow-connect", "127.0.0.1:*", "--allow-listen", "[::1]:8443", "--allow-dns", "x.wasm"])
    config = WasiConfig()
    for _, apply in OPTION_GROUPS:
        apply(args, config)
    policy = config.network
    assert isinstance(policy, NetworkPolicy) and policy.dns
    assert policy.may_connect(ipaddress.ip_address("127.0.0.1"), 5) and not policy.may_connect(ipaddress.ip_address("::1"), 5)
    assert policy.may_bind(ipaddress.ip_address("::1"), 8443) and not policy.may_bind(ipaddress.ip_address("::1"), 8444)

    # End to end through the command line (a subprocess: the CLI inherits real stdio).
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]
    wasm = str(guest_path(GUEST))

    def run_cli(*options: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "wasi_tls_host.cli", "run", *options, wasm, "connect", "127.0.0.1", str(port)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    assert run_cli("--inherit-network").stdout == "connected\n"
    listener.accept()[0].close()
    denied = run_cli("--allow-connect", "127.0.0.2:*")
    assert denied.stdout == "connect error access-denied\n"
    assert "denied TCP connect" in denied.stderr
    bad = run_cli("--allow-connect", "nonsense")
    assert bad.returncode == 2 and "network policy" in bad.stderr
    assert nothing_accepted(listener)
    listener.close()


@pytest.mark.parametrize("family, tag, payload", [
    ("ipv4", "ipv4", {"port": 0, "address": (127, 0, 0, 1)}),  # port 0
    ("ipv4", "ipv4", {"port": 80, "address": (0, 0, 0, 0)}),  # unspecified
    ("ipv4", "ipv4", {"port": 80, "address": (224, 0, 0, 1)}),  # multicast
    ("ipv6", "ipv4", {"port": 80, "address": (127, 0, 0, 1)}),  # another family
    ("ipv6", "ipv6", {"port": 80, "address": (0, 0, 0, 0, 0, 0xFFFF, 0x7F00, 1), "flow_info": 0, "scope_id": 0}),  # mapped
])
def test_a_refused_address_is_refused_every_time(family: str, tag: str, payload: dict) -> None:
    # Checked addresses are kept (addresses._checked); refusals must not be.
    for _ in range(2):
        with pytest.raises(WitError) as refused:
            remote_address(family, Variant(tag, payload))
        assert refused.value.payload == "invalid-argument"


def test_a_checked_address_is_the_one_given() -> None:
    v6 = {"port": 443, "address": (0x2001, 0xDB8, 0, 0, 0, 0, 0, 1), "flow_info": 7, "scope_id": 3}
    for _ in range(2):
        assert remote_address("ipv4", Variant("ipv4", {"port": 443, "address": (10, 1, 2, 3)})).os_tuple() == ("10.1.2.3", 443)
        assert remote_address("ipv6", Variant("ipv6", v6)).os_tuple() == ("2001:db8::1", 443, 7, 3)
        assert local_address("ipv4", Variant("ipv4", {"port": 0, "address": (0, 0, 0, 0)})).os_tuple() == ("0.0.0.0", 0)
