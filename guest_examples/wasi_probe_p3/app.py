"""The WASI 0.3 counterpart of ``wasi_probe``: a command guest that exercises wasi:cli,
wasi:clocks and wasi:random at 0.3.0, one subcommand per behaviour.

Output lines are meant for tests to assert on. Everything this guest says goes through
wasi:cli@0.3.0's streams (``out``/``err`` below); ``print`` goes through componentize-py's
own WASI 0.2 stdout and is used only where that is the point (``mixed``). A failing run raises ``Err``, which ``run``
returns as its error.
"""

import time

from componentize_py_types import Err, Ok
from wit_world import byte_stream, exports
from wit_world.imports import (
    environment,
    exit,
    insecure,
    insecure_seed,
    monotonic_clock,
    random,
    stderr,
    stdin,
    stdout,
    system_clock,
    terminal_stderr,
    terminal_stdin,
    terminal_stdout,
)


async def write_to(sink, data: bytes):
    """Write ``data`` through a new stream into ``sink`` (stdout or stderr) and wait for the
    host to report the outcome."""
    tx, rx = byte_stream()
    done = sink.write_via_stream(rx)
    with tx:
        await tx.write_all(data)
    return await done.read()


async def out(text: str) -> None:
    await write_to(stdout, text.encode())


async def err(text: str) -> None:
    await write_to(stderr, text.encode())


async def cmd_args(rest):
    await out("args=" + "|".join(environment.get_arguments()) + "\n")


async def cmd_env(rest):
    env = dict(environment.get_environment())
    for key in rest:
        await out(f"{key}={env.get(key, '<unset>')}\n")
    await out(f"count={len(env)} cwd={environment.get_initial_cwd()}\n")


async def cmd_bytes(rest):
    # Exact bytes, including NUL and non-UTF-8, through both output streams.
    await write_to(stdout, bytes(range(256)))
    await write_to(stderr, b"\xff\xfeerr\x00")


async def cmd_cat(rest):
    # stdin to stdout through one stream each way, in chunks of the given size.
    chunk = int(rest[0]) if rest else 65536
    src, src_done = stdin.read_via_stream()
    tx, rx = byte_stream()
    dst_done = stdout.write_via_stream(rx)
    total = 0
    with src, tx:
        while not src.writer_dropped:
            data = await src.read(chunk)
            total += len(data)
            await tx.write_all(data)
    read_result, write_result = await src_done.read(), await dst_done.read()
    await err(f"copied {total} read={read_result} write={write_result}\n")


async def cmd_stdin_closed(rest):
    src, done = stdin.read_via_stream()
    with src:
        data = await src.read(10)
        first = (data, src.writer_dropped)
        data2 = await src.read(10)
    await out(f"read={first[0]!r} dropped={first[1]} then={data2!r} result={await done.read()}\n")


async def cmd_write(rest):
    # N bytes of a pattern to stdout in writes of CHUNK bytes (the benchmark's guest).
    total, chunk = int(rest[0]), int(rest[1]) if len(rest) > 1 else 1 << 20
    block = bytes(range(256)) * (chunk // 256 + 1)
    tx, rx = byte_stream()
    done = stdout.write_via_stream(rx)
    with tx:
        left = total
        while left > 0:
            n = min(left, chunk)
            await tx.write_all(block[:n])
            left -= n
    result = await done.read()
    if not isinstance(result, Ok):
        await err(f"write result={result}\n")
        raise Err(None)


async def cmd_exit(rest):
    await out("before exit\n")
    exit.exit(Ok(None) if rest[0] == "ok" else Err(None))
    await out("after exit (must not appear)\n")


async def cmd_exit_code(rest):
    await out("before exit\n")
    exit.exit_with_code(int(rest[0]))
    await out("after exit (must not appear)\n")


async def cmd_exit_undropped(rest):
    # Exit while a stdout stream (and a stdin stream) is still open: what was written
    # before the exit still comes out; the host closes the rest.
    src, _ = stdin.read_via_stream()
    tx, rx = byte_stream()
    stdout.write_via_stream(rx)
    # Two writes: the second lands in a read the host has already posted, so the host
    # holds its bytes when the guest exits.
    await tx.write_all(b"written ")
    await tx.write_all(b"before exit\n")
    KEEP.extend([src, tx, rx])
    exit.exit_with_code(int(rest[0]) if rest else 0)


async def cmd_return_undropped(rest):
    # Return from run with the stream's writable end still open.
    tx, rx = byte_stream()
    done = stdout.write_via_stream(rx)
    await tx.write_all(b"written, ")
    await tx.write_all(b"stream left open\n")
    KEEP.extend([tx, done])


async def cmd_drop_future(rest):
    # The future is dropped at once: the bytes are written all the same.
    tx, rx = byte_stream()
    done = stdout.write_via_stream(rx)
    with done:
        pass
    with tx:
        await tx.write_all(b"future dropped, bytes written\n")


async def cmd_write_after_error(rest):
    # stdout is a pipe nobody reads: the first write's future reports the error, and the
    # stream's readable end is gone, so a later write delivers nothing.
    tx, rx = byte_stream()
    done = stdout.write_via_stream(rx)
    sent = await tx.write(b"x" * 65536)
    result = await done.read()
    again = await tx.write(b"after the error")
    with tx:
        pass
    await err(f"sent={sent > 0} result={result} again={again} dropped={tx.reader_dropped}\n")


async def cmd_mixed(rest):
    # componentize-py's print goes through WASI 0.2's stdout, out() through 0.3's: one
    # stdout, in the order written.
    print("one (0.2)", flush=True)
    await out("two (0.3)\n")
    print("three (0.2)", flush=True)


async def cmd_parts(rest):
    # One line in two writes, 200 ms apart, on one stream.
    tx, rx = byte_stream()
    done = stdout.write_via_stream(rx)
    with tx:
        await tx.write_all(b"first half, ")
        await monotonic_clock.wait_for(200_000_000)
        await tx.write_all(b"second half\n")
    await done.read()


async def cmd_fail(rest):
    raise RuntimeError("guest failure on purpose")


async def cmd_err(rest):
    await out("returning an error\n")
    raise Err(None)


async def cmd_clocks(rest):
    a = monotonic_clock.now()
    b = monotonic_clock.now()
    wall = system_clock.now()
    await out(f"monotonic_ok={b >= a}\n")
    await out(f"monotonic_resolution_ok={monotonic_clock.get_resolution() > 0}\n")
    await out(f"wall_ok={abs(wall.seconds - int(time.time())) < 5} nanos_ok={0 <= wall.nanoseconds < 1_000_000_000}\n")
    await out(f"wall_resolution_ok={system_clock.get_resolution() > 0}\n")


async def cmd_sleep(rest):
    ms = int(rest[0])
    start = monotonic_clock.now()
    await monotonic_clock.wait_for(ms * 1_000_000)
    slept = monotonic_clock.now() - start
    await monotonic_clock.wait_until(monotonic_clock.now() + ms * 1_000_000)
    both = monotonic_clock.now() - start
    await monotonic_clock.wait_until(0)  # in the past: at once
    await monotonic_clock.wait_for(0)
    await out(f"slept_enough={slept >= ms * 1_000_000} both_enough={both >= 2 * ms * 1_000_000}\n")


async def cmd_forever(rest):
    # A wait only the embedder can end (timeout, interrupt).
    await monotonic_clock.wait_for(2**64 - 1)


async def cmd_random(rest):
    a = random.get_random_bytes(32)
    b = random.get_random_bytes(32)
    await out(f"len={len(a)} distinct={a != b}\n")
    await out(f"u64_distinct={random.get_random_u64() != random.get_random_u64()}\n")
    await out(f"insecure_len={len(insecure.get_insecure_random_bytes(17))} zero={len(random.get_random_bytes(0))}\n")
    await out(f"insecure_u64_distinct={insecure.get_insecure_random_u64() != insecure.get_insecure_random_u64()}\n")
    await out(f"seed_stable={insecure_seed.get_insecure_seed() == insecure_seed.get_insecure_seed()}\n")
    await out(f"big={len(random.get_random_bytes(1 << 20))}\n")


async def cmd_terminal(rest):
    await out(f"stdin={terminal_stdin.get_terminal_stdin() is not None} "
              f"stdout={terminal_stdout.get_terminal_stdout() is not None} "
              f"stderr={terminal_stderr.get_terminal_stderr() is not None}\n")


# Stream ends a subcommand leaves open on purpose (kept from the finalizers).
KEEP = []
COMMANDS = {name[4:].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("cmd_")}


class Run(exports.Run):
    async def run(self) -> None:
        argv = environment.get_arguments()
        if len(argv) < 2 or argv[1] not in COMMANDS:
            await err("usage: wasi_probe_p3 " + "|".join(sorted(COMMANDS)) + "\n")
            raise Err(None)
        await COMMANDS[argv[1]](argv[2:])
