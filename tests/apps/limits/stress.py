"""Functions that push the engine's limits."""
import time

from engine import action, mutation, query, v


@mutation(args={"n": v.number()})
async def insert_many(ctx, n):
    for i in range(int(n)):
        await ctx.db.insert("things", {"i": float(i)})


@mutation(args={"size": v.number()})
async def big_doc(ctx, size):
    return await ctx.db.insert("things", {"blob": "x" * int(size)})


@mutation(args={"depth": v.number()})
async def deep_doc(ctx, depth):
    value = {}
    for _ in range(int(depth)):
        value = {"a": value}
    return await ctx.db.insert("things", {"deep": value})


@query(args={})
async def read_all(ctx):
    return len(await ctx.db.query("things").collect())


@query(args={})
async def spin(ctx):
    deadline = time.monotonic() + 1.5
    n = 0
    while time.monotonic() < deadline:  # pure CPU: no database call to interrupt it
        n += 1
    return n


@query(args={})
async def spin_reading(ctx):
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        sum(range(20_000))  # some computation between reads
        await ctx.db.query("things").first()
    return 0


@query(args={})
async def spin_forever(ctx):
    while True:  # pure CPU, no database call, never returns: only preemption stops it
        pass


@query(args={})
async def spin_swallowing(ctx):
    while True:  # swallows every exception it can: preemption must still stop it
        try:
            while True:
                pass
        except Exception:
            pass


@mutation(args={})
async def write_then_spin(ctx):
    await ctx.db.insert("things", {"n": 1})
    while True:
        pass


@action(args={})
async def spin_action(ctx):
    while True:
        pass


@query(args={"seconds": v.number()})
async def count_twice_slowly(ctx, seconds):
    """Counts `things`, computes for `seconds`, counts again: a consistent snapshot gives equal counts."""
    first = len(await ctx.db.query("things").collect())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    second = len(await ctx.db.query("things").collect())
    return [first, second]


@mutation(args={"seconds": v.number()})
async def insert_slowly(ctx, seconds):
    """Computes for `seconds`, then inserts one document."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return await ctx.db.insert("things", {"n": seconds})
