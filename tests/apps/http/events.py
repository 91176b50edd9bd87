"""What the webhook writes, and the query that reads it back."""
from engine import internal_mutation, query, v


@internal_mutation(args={"kind": v.string(), "amount": v.number()})
async def record(ctx, kind, amount):
    return await ctx.db.insert("events", {"kind": kind, "amount": amount})


@query(args={})
async def all(ctx):
    return [{"kind": e["kind"], "amount": e["amount"]} for e in await ctx.db.query("events").collect()]
