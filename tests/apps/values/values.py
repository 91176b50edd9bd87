"""Echo functions and value cells for round-trip tests of the Convex value model."""
import asyncio

from engine import AppError, action, mutation, query, v


@query(args={"value": v.any()})
async def echo(ctx, value):
    """Return the argument unchanged."""
    return value


@mutation(args={"value": v.any()})
async def echo_mutation(ctx, value):
    """Return the argument unchanged (through the mutation path)."""
    return value


@action(args={"value": v.any()})
async def echo_action(ctx, value):
    """Return the argument unchanged (through the action path)."""
    return value


@action(args={"seconds": v.number()})
async def slow_action(ctx, seconds):
    """Sleep, then answer: keeps an action in flight for a while."""
    await asyncio.sleep(seconds)
    return "done"


async def _cell(ctx, key):
    return await ctx.db.query("cells").with_index("by_key", lambda q: q.eq("key", key)).unique()


@mutation(args={"key": v.string(), "value": v.any()})
async def put(ctx, key, value):
    """Set cell `key` to `value`; returns the value stored."""
    cell = await _cell(ctx, key)
    if cell is None:
        await ctx.db.insert("cells", {"key": key, "value": value})
    else:
        await ctx.db.patch(cell["_id"], {"value": value})
    return value


@query(args={"key": v.string()})
async def get(ctx, key):
    """The value of cell `key` (None when unset)."""
    cell = await _cell(ctx, key)
    return None if cell is None else cell["value"]


@query(args={"key": v.string()})
async def strict_get(ctx, key):
    """Like `get`, but fails with AppError data when the cell holds the string "bad"."""
    cell = await _cell(ctx, key)
    value = None if cell is None else cell["value"]
    if value == "bad":
        raise AppError({"code": "BAD_CELL", "key": key})
    return value


@mutation(args={"data": v.any()})
async def fail(ctx, data):
    """Always raise AppError carrying `data`."""
    raise AppError(data)


@action(args={"data": v.any()})
async def fail_action(ctx, data):
    """Always raise AppError carrying `data` (from an action)."""
    raise AppError(data)
