"""Cron test app: a tick counter."""
from engine import internal_mutation, query, v


@internal_mutation(args={"source": v.string()})
async def tick(ctx, source):
    await ctx.db.insert("ticks", {"source": source})


@query(args={})
async def ticks(ctx):
    return [t["source"] for t in await ctx.db.query("ticks").collect()]


@query(args={})
async def runs(ctx):
    return await ctx.db.system.query("_scheduled_functions").collect()
