"""A nested module: `api.admin.stats.totals`."""
from engine import query, v


@query(args={}, returns=v.object({"n": v.int64(), "kind": v.union(v.literal("a"), v.literal("b")),
                                  "ratio": v.optional(v.number()), "raw": v.bytes(), "nothing": v.null()}))
async def totals(ctx):
    n = len(await ctx.db.query("messages").collect())
    return {"n": n, "kind": "a", "raw": b"", "nothing": None}
