"""Functions of the isolation benchmark: one cheap read for the bystander, CPU hogs for the attackers.

The hogs never touch the database while they spin, so nothing but the
engine's time bound (or running them away from the event loop) can keep
them from holding the server's thread.
"""
import time

from engine import mutation, query, v


@mutation(args={"count": v.number()})
async def seed(ctx, count: float) -> list:
    """Insert `count` small items; returns their ids."""
    return [await ctx.db.insert("items", {"n": float(i), "text": f"item {i}"}) for i in range(int(count))]


@query(args={"id": v.id("items")})
async def get_one(ctx, id: str) -> dict | None:
    """The bystander's query: one document by id."""
    return await ctx.db.get(id)


@mutation(args={})
async def spin_forever(ctx) -> None:
    """A mutation that never returns on its own: only its time bound stops it."""
    while True:
        pass


@query(args={"nonce": v.number()})
async def spin_query(ctx, nonce: float) -> None:
    """A query that never returns on its own (`nonce` makes every subscription a new execution)."""
    while True:
        pass


@query(args={"seconds": v.number(), "nonce": v.number()})
async def spin_for(ctx, seconds: float, nonce: float) -> float:
    """A query that computes for `seconds` of wall time, then returns `nonce`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return nonce


@mutation(args={"seconds": v.number()})
async def burn(ctx, seconds: float) -> str:
    """Pure CPU for `seconds` of wall time, then one small write."""
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        pass
    return await ctx.db.insert("burns", {"seconds": seconds, "spun": time.monotonic() - start})
