"""Functions for returns validators, the int/float rule, ConvexError and value limits."""
from engine import AppError, mutation, query, v


@query(args={}, returns=v.string())
async def wrong(ctx):
    """Declares a string, returns a number."""
    return 42


@query(args={}, returns=v.object({"items": v.array(v.object({"n": v.string()}))}))
async def wrong_deep(ctx):
    """The second item's `n` breaks the declared shape."""
    return {"items": [{"n": "a"}, {"n": 5}]}


@mutation(args={}, returns=v.null())
async def wrong_mutation(ctx):
    """Writes, then returns what `returns` refuses: nothing is committed."""
    await ctx.db.insert("counters", {"count": 1, "score": 1.0, "other": 1})
    return "oops"


@query(args={"n": v.number()})
async def count(ctx, n):
    """len() of a list: a Python int, undeclared."""
    return len(list(range(int(n))))


@query(args={}, returns=v.object({"exact": v.int64(), "approx": v.number(), "plain": v.any(),
                                  "maybe": v.optional(v.union(v.int64(), v.string()))}))
async def numbers(ctx):
    """The same int under four validators."""
    return {"exact": 5, "approx": 5, "plain": 5, "maybe": 7}


@query(args={})
async def big(ctx):
    """An int a float64 cannot hold exactly stays int64."""
    return [2**60, -(2**53), 2**53 + 1]


@mutation(args={"count": v.int64(), "score": v.number(), "other": v.any()})
async def add_counter(ctx, count, score, other):
    """Stores a counter; returns its id."""
    return await ctx.db.insert("counters", {"count": count, "score": score, "other": other})


@query(args={})
async def counters(ctx):
    """Every counter document (count is int64 by the schema, other is untyped)."""
    return await ctx.db.query("counters").collect()


@mutation(args={"code": v.string()})
async def refuse(ctx, code):
    """Fails with ConvexError-style data."""
    raise AppError({"code": code, "n": 3})


@query(args={"n": v.number()})
async def long_list(ctx, n):
    """A list of `n` elements (Convex refuses more than 8192)."""
    return {"rows": list(range(int(n)))}


@mutation(args={"doc": v.any()})
async def store(ctx, doc):
    """Inserts `doc` as given into the schemaless `bag` table."""
    return await ctx.db.insert("bag", doc)


@query(args={"key": v.string()})
async def odd_key(ctx, key):
    """An object with the field name `key`."""
    return {key: 1.0}


@mutation(args={"n": v.number()})
async def store_long(ctx, n):
    """Inserts a document holding a list of `n` numbers built here (not passed in)."""
    return await ctx.db.insert("bag", {"rows": [1.0] * int(n)})
