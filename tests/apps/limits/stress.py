"""Functions that push the engine's limits."""
import time

from engine import mutation, query, v


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
