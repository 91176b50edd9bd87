"""What the webhook writes, and the query that reads it back."""
from engine import action, internal_mutation, mutation, query, v


@internal_mutation(args={"kind": v.string(), "amount": v.number()})
async def record(ctx, kind, amount):
    return await ctx.db.insert("events", {"kind": kind, "amount": amount})


@query(args={})
async def all(ctx):
    return [{"kind": e["kind"], "amount": e["amount"]} for e in await ctx.db.query("events").collect()]


@mutation(args={"kind": v.string(), "amount": v.number()})
async def add(ctx, kind, amount):
    """The same write as `record`, public: the peer of the webhook in bench/http_actions_bench.py."""
    return await ctx.db.insert("events", {"kind": kind, "amount": amount})


@action(args={})
async def ping(ctx):
    """A constant from an action: the peer of a trivial HTTP action in bench/http_actions_bench.py."""
    return "exact"
