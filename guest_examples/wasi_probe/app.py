"""A command guest that exercises WASI 0.2 core interfaces, one subcommand per behaviour.

Output lines are meant for tests to assert on; everything goes through the guest's own
wasi:cli streams (print uses stdout; some subcommands use the raw wasi:io API).
"""

import os
import sys

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import (
    environment,
    exit,
    insecure,
    insecure_seed,
    monotonic_clock,
    poll,
    random,
    stderr,
    stdin,
    stdout,
    streams,
    wall_clock,
)


def cmd_args(rest):
    print("args=" + "|".join(environment.get_arguments()))
    print("sys.argv=" + "|".join(sys.argv))


def cmd_env(rest):
    for key in rest:
        print(f"{key}={os.environ.get(key, '<unset>')}")
    print("count=%d" % len(environment.get_environment()))


def cmd_bytes(rest):
    # Exact bytes, including NUL and non-UTF-8, straight through wasi:io.
    out = stdout.get_stdout()
    err = stderr.get_stderr()
    out.blocking_write_and_flush(bytes(range(256)))
    err.blocking_write_and_flush(b"\xff\xfeerr\x00")


def cmd_cat(rest):
    # Copy stdin to stdout through the raw streams, with poll between reads.
    src = stdin.get_stdin()
    dst = stdout.get_stdout()
    total = 0
    while True:
        try:
            data = src.blocking_read(65536)
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise
        total += len(data)
        view = data
        while view:
            n = dst.check_write()
            if n == 0:
                poll.poll([dst.subscribe()])
                continue
            dst.write(view[:n])
            view = view[n:]
    dst.blocking_flush()
    stderr.get_stderr().blocking_write_and_flush(f"copied {total}\n".encode())


def cmd_exit(rest):
    # wasi:cli/exit's exit-with-code is @unstable and componentize-py's own runtime cannot
    # be built with it; exit codes other than 0 and 1 are tested with the WAT guest exit_code.
    code = int(rest[0])
    print("before exit", flush=True)
    exit.exit(Ok(None) if code == 0 else Err(None))
    print("after exit (must not appear)")


def cmd_fail(rest):
    raise RuntimeError("guest failure on purpose")


def cmd_clocks(rest):
    a = monotonic_clock.now()
    b = monotonic_clock.now()
    wall = wall_clock.now()
    print(f"monotonic_ok={b >= a}")
    print(f"monotonic_resolution={monotonic_clock.resolution()}")
    print(f"wall_seconds={wall.seconds}")
    print(f"wall_nanos_ok={0 <= wall.nanoseconds < 1_000_000_000}")


def cmd_sleep(rest):
    # Sleep with poll on a duration pollable; report elapsed monotonic time in ns.
    ms = int(rest[0])
    start = monotonic_clock.now()
    p = monotonic_clock.subscribe_duration(ms * 1_000_000)
    ready_before = p.ready()
    poll.poll([p])
    elapsed = monotonic_clock.now() - start
    print(f"ready_before={ready_before}")
    print(f"elapsed_ns={elapsed}")


def cmd_poll_mix(rest):
    # Two timers: 20 ms and 200 ms; poll must report only the first, then both.
    now = monotonic_clock.now()
    short = monotonic_clock.subscribe_instant(now + 20_000_000)
    long = monotonic_clock.subscribe_duration(200_000_000)
    first = poll.poll([long, short])
    print(f"first={first}")
    long.block()
    print(f"second={poll.poll([long, short])}")


def cmd_random(rest):
    a = random.get_random_bytes(32)
    b = random.get_random_bytes(32)
    print(f"len={len(a)} distinct={a != b}")
    print(f"u64_distinct={random.get_random_u64() != random.get_random_u64()}")
    print(f"insecure_len={len(insecure.get_insecure_random_bytes(17))}")
    s1 = insecure_seed.insecure_seed()
    s2 = insecure_seed.insecure_seed()
    print(f"seed_stable={s1 == s2}")
    print(f"big={len(random.get_random_bytes(1 << 20))}")


def cmd_write_past_permit(rest):
    out = stdout.get_stdout()
    permit = out.check_write()
    out.write(b"x" * (permit + 1))
    print("survived (must not appear)")


def cmd_write_without_check(rest):
    out = stdout.get_stdout()
    out.write(b"hello")
    print("survived (must not appear)")


def cmd_big_blocking_write(rest):
    stdout.get_stdout().blocking_write_and_flush(b"y" * 5000)
    print("survived (must not appear)")


def cmd_permits(rest):
    out = stdout.get_stdout()
    permit = out.check_write()
    out.write(b"a" * 10)
    out.flush()
    after_flush = out.check_write()
    out.blocking_flush()
    again = out.check_write()
    out.write_zeroes(3)
    out.blocking_flush()
    print(f"\npermit_positive={permit > 0} after_flush_ready={after_flush >= 0} again={again > 0}")


def cmd_stdin_closed(rest):
    src = stdin.get_stdin()
    try:
        data = src.read(10)
        print(f"read={data!r}")
    except Err as e:
        print(f"error={type(e.value).__name__}")


def cmd_splice(rest):
    # stdin -> stdout through splice, entirely in the host.
    src = stdin.get_stdin()
    dst = stdout.get_stdout()
    total = 0
    while True:
        try:
            total += dst.blocking_splice(src, 1 << 20)
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise
    dst.blocking_flush()
    stderr.get_stderr().blocking_write_and_flush(f"spliced {total}\n".encode())


def cmd_wait_stdin(rest):
    # Poll on stdin together with a timer; report which fired first.
    src = stdin.get_stdin()
    timer = monotonic_clock.subscribe_duration(int(rest[0]) * 1_000_000)
    ready = poll.poll([src.subscribe(), timer])
    print(f"ready={ready}")


def cmd_forever(rest):
    # Waits on nothing that can ever fire except a far-away timer: the embedder must be
    # able to interrupt this.
    poll.poll([monotonic_clock.subscribe_duration(3600 * 1_000_000_000)])


COMMANDS = {name[4:].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("cmd_")}


class Run(exports.Run):
    def run(self) -> None:
        argv = environment.get_arguments()
        if len(argv) < 2 or argv[1] not in COMMANDS:
            print("usage: wasi_probe " + "|".join(sorted(COMMANDS)), file=sys.stderr)
            exit.exit(Err(None))
        COMMANDS[argv[1]](argv[2:])
