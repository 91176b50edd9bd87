"""Scheduled statements: a mutation schedules one statement per account; each runs as its own mutation."""
from engine import internal_mutation, mutation, v


@mutation(args={"owners": v.array(v.string()), "at_ms": v.number(), "every_ms": v.optional(v.number())})
async def schedule(ctx, owners, at_ms, every_ms=0.0):
    """Schedule the i-th owner's statement at `at_ms + i * every_ms` (ms since the epoch); returns the job ids."""
    return [await ctx.scheduler.run_at(at_ms + i * every_ms, record, {"owner": owner})
            for i, owner in enumerate(owners)]


@internal_mutation(args={"owner": v.string()})
async def record(ctx, owner):
    """Write the owner's balance as of now into `statements`."""
    account = await ctx.db.query("accounts").with_index("by_owner", lambda q: q.eq("owner", owner)).unique()
    balance = None if account is None else account["balance"]
    return await ctx.db.insert("statements", {"owner": owner, "balance": balance})
