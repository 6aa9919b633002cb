"""The core runtime's copy-free paths, observed on a real socket: input-stream.read puts
socket bytes straight into the guest's buffer (``recv_into`` through ``fill``), and
output-stream.write hands the socket stream a view of guest memory. The bytes must arrive
intact, and the paths must actually be taken (on the component runtime they are not).
"""

from __future__ import annotations

import ctypes
from typing import Any

import pytest
from sockets_util import ServerThread, echo_until_eof, loopback_policy

from wasi_tls_host import Host, WasiConfig
from wasi_tls_host.wasi import socket_streams


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    counts = {"filled": 0, "views": 0}
    read_into = socket_streams.SocketInput.read_into
    write = socket_streams.SocketOutput._write

    def counting_read_into(self: Any, n: int, fill: Any) -> Any:
        result = read_into(self, n, fill)
        if type(result).__name__ == "Filled" and len(result):
            counts["filled"] += 1
        return result

    def counting_write(self: Any, data: Any) -> None:
        if isinstance(data, memoryview) and isinstance(data.obj, ctypes.Array):  # guest memory, not host bytes
            counts["views"] += 1
        write(self, data)

    monkeypatch.setattr(socket_streams.SocketInput, "read_into", counting_read_into)
    monkeypatch.setattr(socket_streams.SocketOutput, "_write", counting_write)
    return counts


def test_echo_moves_bytes_without_copies_on_core(guest_path, counted: dict[str, int], runtime: str) -> None:
    server = ServerThread(echo_until_eof)
    message = "".join(chr(0x20 + i % 90) for i in range(200_000))
    out = bytearray()
    config = WasiConfig(args=["p", "echo-client", "127.0.0.1", str(server.port), message], stdout=out, network=loopback_policy())
    result = Host(runtime=runtime).run(guest_path("sockets_probe"), config)
    server.close()
    assert result.exit_code == 0, out
    assert out.decode().splitlines()[1] == f"echo: {message}"
    if runtime == "core":
        assert counted["filled"] > 0 and counted["views"] > 0, counted
    else:
        assert counted == {"filled": 0, "views": 0}
