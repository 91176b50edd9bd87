"""Functions that print and log, for the function-log tests."""
import asyncio
import logging
import sys
import time

from engine import AppError, action, mutation, query, v

log = logging.getLogger(__name__)


@query(args={"who": v.string()})
async def hello(ctx, who):
    """Prints, logs through the module's logger (INFO and DEBUG), answers `who`."""
    print("hello", who)
    log.info("info for %s", who)
    log.debug("debug detail")
    return who


@mutation(args={"n": v.number()})
async def chatty(ctx, n):
    """Prints `n` lines; returns n."""
    for i in range(int(n)):
        print(f"line {i}")
    return n


@mutation(args={})
async def warn_and_fail(ctx):
    """Prints, warns through a third-party logger, then fails with ConvexError data."""
    print("about to fail")
    logging.getLogger("thirdparty.client").warning("careful: %d", 3)
    raise AppError({"code": "NOPE"})


@action(args={"tag": v.string(), "lines": v.number(), "pause": v.number()})
async def tagged(ctx, tag, lines, pause):
    """Prints `lines` lines tagged `tag`, sleeping between them (so concurrent calls interleave), one on stderr."""
    for i in range(int(lines)):
        print(f"{tag} {i}")
        await asyncio.sleep(pause)
    print(f"{tag} done", file=sys.stderr)
    return tag


@query(args={"tag": v.string(), "spin": v.number()})
async def slow_tagged(ctx, tag, spin):
    """Prints its tag, burns CPU for `spin` seconds (so it runs on a query worker thread), prints again."""
    print(f"{tag} start")
    end = time.monotonic() + spin
    while time.monotonic() < end:
        pass
    print(f"{tag} end")
    return tag


@query(args={"size": v.number()})
async def huge_line(ctx, size):
    """Prints one line of `size` characters."""
    print("x" * int(size))
    return None
