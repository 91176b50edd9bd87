"""Functions of the lifecycle benchmark app: post a message, read a channel's latest."""
from engine import mutation, query, v


@mutation(args={"channel": v.string(), "body": v.string()})
async def send(ctx, channel, body):
    return await ctx.db.insert("messages", {"channel": channel, "author": "bench", "body": body})


@query(args={"channel": v.string()})
async def latest(ctx, channel):
    return await ctx.db.query("messages").with_index("by_channel", lambda q: q.eq("channel", channel)).order(
        "desc").take(1)
