"""The WASI 0.3 counterpart of ``hello``: its arguments, written to stdout through
wasi:cli/stdout@0.3.0's write-via-stream (``print`` would go through componentize-py's own
WASI 0.2 stdout)."""

from wit_world import byte_stream, exports
from wit_world.imports import environment, stdout


class Run(exports.Run):
    async def run(self) -> None:
        tx, rx = byte_stream()
        written = stdout.write_via_stream(rx)
        with tx:
            await tx.write_all(f"hello {environment.get_arguments()}\n".encode())
        await written.read()
