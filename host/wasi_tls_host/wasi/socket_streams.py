"""WASI 0.2's wasi:io streams over OS sockets, under the name they had before wasi:sockets
became a package (``sockets/p2_streams.py``; the socket registry is ``sockets/registry.py``)."""

from .sockets.p2_streams import SocketInput, SocketOutput, SocketPollable
from .sockets.registry import ConnectionRecord, SharedSocket, SocketRegistry, access_log, error_code, poll_now

__all__ = ["ConnectionRecord", "SharedSocket", "SocketInput", "SocketOutput", "SocketPollable", "SocketRegistry",
           "access_log", "error_code", "poll_now"]
