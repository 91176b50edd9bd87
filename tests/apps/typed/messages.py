"""A small chat app whose functions declare `returns=`, for `tape codegen` tests."""
from engine import internal_mutation, mutation, query, v


@query(args={"channel": v.string()},
       returns=v.array(v.object({"author": v.string(), "body": v.string(), "likes": v.int64()})))
async def list(ctx, channel):
    rows = await ctx.db.query("messages").with_index("by_channel", lambda q: q.eq("channel", channel)).collect()
    return [{"author": r["author"], "body": r["body"], "likes": r["likes"]} for r in rows]


@mutation(args={"channel": v.string(), "author": v.string(), "body": v.string(),
                "tags": v.optional(v.array(v.string()))},
          returns=v.id("messages"))
async def send(ctx, channel, author, body, tags=None):
    doc = {"channel": channel, "author": author, "body": body, "likes": 0}
    if tags is not None:
        doc["tags"] = tags
    return await ctx.db.insert("messages", doc)


@query(args={})
async def count(ctx):
    return len(await ctx.db.query("messages").collect())


@internal_mutation(args={"id": v.id("messages")}, returns=v.null())
async def purge(ctx, id):
    await ctx.db.delete(id)
    return None
