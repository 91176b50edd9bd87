"""The dashboard test app: messages, an internal clean-up, and functions reading ctx.env."""
from engine import action, internal_mutation, mutation, query, v


@query(args={})
async def list(ctx):
    return await ctx.db.query("messages").collect()


@mutation(args={"author": v.string(), "body": v.string()})
async def send(ctx, author, body):
    return await ctx.db.insert("messages", {"author": author, "body": body, "likes": 0})


@mutation(args={"id": v.id("messages")})
async def like(ctx, id):
    doc = await ctx.db.get(id)
    await ctx.db.patch(id, {"likes": doc["likes"] + 1})


@mutation(args={"id": v.id("messages")})
async def remove(ctx, id):
    await ctx.db.delete(id)


@internal_mutation(args={"author": v.string()})
async def purge_author(ctx, author):
    """Internal: delete every message of `author`; returns how many."""
    docs = await ctx.db.query("messages").with_index("by_author", lambda q: q.eq("author", author)).collect()
    for doc in docs:
        await ctx.db.delete(doc["_id"])
    return float(len(docs))


@query(args={})
async def greeting(ctx):
    """Reads ctx.env in a query (subscriptions re-run when the variable changes)."""
    return f"{ctx.env.get('GREETING', 'hello')}, {len(ctx.env)} variable(s)"


@mutation(args={"body": v.string()})
async def send_signed(ctx, body):
    return await ctx.db.insert("messages", {"author": ctx.env["SIGNATURE"], "body": body, "likes": 0})


@action(args={})
async def env_in_action(ctx):
    return {"greeting": ctx.env.get("GREETING"), "names": sorted(ctx.env)}


@mutation(args={"author": v.string(), "body": v.string(), "delay_ms": v.number()})
async def send_later(ctx, author, body, delay_ms):
    """Schedules messages:send (the Scheduled jobs page shows it pending until it runs or is cancelled)."""
    return await ctx.scheduler.run_after(delay_ms, "messages:send", {"author": author, "body": body})
