"""A WASI 0.3 command that does nothing, built against all of world command-p3 and the
unstable clocks-timezone feature: it imports every WASI 0.3 function, so
``python -m devtools.signatures`` reads their signatures from it."""

from wit_world import exports


class Run(exports.Run):
    async def run(self) -> None:
        pass
