# The bank example's accounts (a copy): the search benchmark runs transfers and searches on one server.
"""The bank workload: accounts with balances, transfers that refuse overdrafts."""
from engine import AppError, internal_mutation, mutation, query, v


@mutation(args={"owners": v.array(v.string()), "balance": v.number()})
async def seed(ctx, owners, balance):
    for owner in owners:
        await ctx.db.insert("accounts", {"owner": owner, "balance": balance})
    return len(owners)


@mutation(args={"src": v.string(), "dst": v.string(), "amount": v.number()})
async def transfer(ctx, src, dst, amount):
    a = await ctx.db.query("accounts").with_index("by_owner", lambda q: q.eq("owner", src)).unique()
    b = await ctx.db.query("accounts").with_index("by_owner", lambda q: q.eq("owner", dst)).unique()
    if a is None or b is None:
        raise AppError({"code": "NO_SUCH_ACCOUNT"})
    if a["balance"] < amount:
        raise AppError({"code": "INSUFFICIENT_FUNDS", "balance": a["balance"]})
    if src == dst:
        return a["balance"]
    await ctx.db.patch(a["_id"], {"balance": a["balance"] - amount})
    await ctx.db.patch(b["_id"], {"balance": b["balance"] + amount})
    return a["balance"] - amount


@query(args={"owner": v.string()})
async def balance(ctx, owner):
    a = await ctx.db.query("accounts").with_index("by_owner", lambda q: q.eq("owner", owner)).unique()
    return None if a is None else a["balance"]


@query(args={"owners": v.array(v.string())})
async def balances(ctx, owners):
    out = {}
    for owner in owners:
        a = await ctx.db.query("accounts").with_index("by_owner", lambda q: q.eq("owner", owner)).unique()
        out[owner] = None if a is None else a["balance"]
    return out


@query(args={})
async def total(ctx):
    return sum(a["balance"] for a in await ctx.db.query("accounts").collect())


@internal_mutation(args={"owner": v.string()})
async def close(ctx, owner):
    a = await ctx.db.query("accounts").with_index("by_owner", lambda q: q.eq("owner", owner)).unique()
    if a is not None:
        await ctx.db.delete(a["_id"])
