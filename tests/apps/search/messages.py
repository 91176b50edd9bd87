"""Full-text search over messages (the search tests' app)."""
from engine import mutation, query, v


@mutation(args={"body": v.string(), "channel": v.string()})
async def send(ctx, body, channel):
    return await ctx.db.insert("messages", {"body": body, "channel": channel})


@mutation(args={"items": v.array(v.object({"body": v.string(), "channel": v.string()}))})
async def send_many(ctx, items):
    return [await ctx.db.insert("messages", dict(item)) for item in items]


@mutation(args={"id": v.id("messages"), "body": v.optional(v.string()), "author": v.optional(v.string())})
async def edit(ctx, id, body=None, author=None):
    fields = {}
    if body is not None:
        fields["body"] = body
    if author is not None:
        fields["author"] = author
    await ctx.db.patch(id, fields)


@mutation(args={"id": v.id("messages")})
async def remove(ctx, id):
    await ctx.db.delete(id)


@mutation(args={"text": v.string()})
async def note(ctx, text):
    return await ctx.db.insert("notes", {"text": text})


@query(args={"text": v.string(), "channel": v.optional(v.string()), "n": v.optional(v.number())})
async def search(ctx, text, channel=None, n=10):
    def build(q):
        q = q.search("body", text)
        return q.eq("channel", channel) if channel is not None else q
    docs = await ctx.db.query("messages").with_search_index("search_body", build).take(int(n))
    return [d["body"] for d in docs]


@query(args={"text": v.string(), "paginationOpts": v.any()})
async def search_page(ctx, text, paginationOpts):
    return await ctx.db.query("messages").with_search_index(
        "search_body", lambda q: q.search("body", text)).paginate(paginationOpts)


@mutation(args={"body": v.string(), "text": v.string()})
async def send_and_search(ctx, body, text):
    """Insert, then search in the same mutation: the new message must be found."""
    await ctx.db.insert("messages", {"body": body, "channel": "c"})
    docs = await ctx.db.query("messages").with_search_index("search_body", lambda q: q.search("body", text)).collect()
    return [d["body"] for d in docs]


@mutation(args={"id": v.id("messages"), "body": v.string(), "text": v.string()})
async def edit_and_search(ctx, id, body, text):
    await ctx.db.patch(id, {"body": body})
    docs = await ctx.db.query("messages").with_search_index("search_body", lambda q: q.search("body", text)).collect()
    return [d["body"] for d in docs]


@query(args={"mode": v.string()})
async def bad(ctx, mode):
    q = ctx.db.query("messages")
    if mode == "unknown_index":
        return await q.with_search_index("nope", lambda s: s.search("body", "x")).take(1)
    if mode == "wrong_field":
        return await q.with_search_index("search_body", lambda s: s.search("channel", "x")).take(1)
    if mode == "bad_filter":
        return await q.with_search_index("search_body", lambda s: s.search("body", "x").eq("author", "a")).take(1)
    return await q.with_search_index("search_body", lambda s: s.search("body", 5)).take(1)
