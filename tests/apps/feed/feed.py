"""A newest-first message feed for the reactive pagination tests (pages by `rank`, descending)."""
from engine import mutation, query, v


@query(args={"paginationOpts": v.any()})
async def list(ctx, paginationOpts):
    return await ctx.db.query("messages").with_index("by_rank").order("desc").paginate(paginationOpts)


@query(args={"paginationOpts": v.any()})
async def bounded(ctx, paginationOpts):
    """The feed, reading at most 4 rows per page (pages that grow past that must be split)."""
    opts = {**paginationOpts, "maximumRowsRead": 4}
    return await ctx.db.query("messages").with_index("by_rank").order("desc").paginate(opts)


@query(args={"paginationOpts": v.any(), "author": v.string()})
async def by_author(ctx, paginationOpts, author):
    return await (ctx.db.query("messages").with_index("by_rank").order("desc")
                  .filter(lambda m: m["author"] == author).paginate(paginationOpts))


@query(args={})
async def all(ctx):
    return await ctx.db.query("messages").with_index("by_rank").order("desc").collect()


@mutation(args={"count": v.number(), "author": v.optional(v.string())})
async def seed(ctx, count, author="ann"):
    """Messages with ranks 10, 20, ... (count of them)."""
    return [await ctx.db.insert("messages", {"author": author, "body": f"m{i}", "rank": float(i * 10)})
            for i in range(1, int(count) + 1)]


@mutation(args={"body": v.string(), "rank": v.number(), "author": v.optional(v.string())})
async def send(ctx, body, rank, author="ann"):
    return await ctx.db.insert("messages", {"author": author, "body": body, "rank": rank})


@mutation(args={"id": v.id("messages")})
async def remove(ctx, id):
    await ctx.db.delete(id)


@mutation(args={"id": v.id("messages"), "rank": v.number()})
async def move(ctx, id, rank):
    await ctx.db.patch(id, {"rank": rank})
