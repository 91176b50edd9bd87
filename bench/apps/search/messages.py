"""The search benchmark's app: messages with a full-text index on their body."""
from engine import mutation, query, v


@mutation(args={"body": v.string(), "channel": v.string()})
async def send(ctx, body, channel):
    return await ctx.db.insert("messages", {"body": body, "channel": channel})


@query(args={"text": v.string()})
async def search(ctx, text):
    docs = await ctx.db.query("messages").with_search_index("search_body", lambda q: q.search("body", text)).take(10)
    return [d["_id"] for d in docs]


@mutation(args={"items": v.array(v.object({"body": v.string(), "channel": v.string()}))})
async def send_many(ctx, items):
    return [await ctx.db.insert("messages", dict(item)) for item in items]
