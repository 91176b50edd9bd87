"""A test app exercising most of the engine surface."""
import asyncio

from engine import DELETE, AppError, action, internal_query, mutation, query, v


@mutation(args={"name": v.string()})
async def create(ctx, name):
    return await ctx.db.insert("lists", {"name": name})


@mutation(args={"list_id": v.id("lists"), "text": v.string(), "rank": v.optional(v.number())})
async def add(ctx, list_id, text, rank=None):
    if not text:
        raise AppError({"code": "EMPTY_TEXT"})
    doc = {"list_id": list_id, "text": text, "done": False}
    if rank is not None:
        doc["rank"] = rank
    return await ctx.db.insert("items", doc)


@mutation(args={"id": v.id("items")})
async def toggle(ctx, id):
    doc = await ctx.db.get(id)
    await ctx.db.patch(id, {"done": not doc["done"]})


@mutation(args={"id": v.id("items")})
async def unrank(ctx, id):
    await ctx.db.patch(id, {"rank": DELETE})


@mutation(args={"id": v.id("items")})
async def remove(ctx, id):
    await ctx.db.delete(id)


@mutation(args={"list_id": v.id("lists"), "n": v.number()})
async def add_then_fail(ctx, list_id, n):
    for i in range(int(n)):
        await ctx.db.insert("items", {"list_id": list_id, "text": f"x{i}", "done": False})
    raise AppError("rolled back")


@mutation(args={})
async def crash(ctx):
    raise RuntimeError("secret internal detail")


@mutation(args={})
async def sleepy(ctx):
    await asyncio.sleep(0.01)


@query(args={"list_id": v.id("lists")})
async def items(ctx, list_id):
    return await ctx.db.query("items").with_index("by_list", lambda q: q.eq("list_id", list_id)).collect()


@query(args={"list_id": v.id("lists"), "n": v.number()})
async def latest(ctx, list_id, n):
    return await ctx.db.query("items").with_index("by_list", lambda q: q.eq("list_id", list_id)).order("desc").take(int(n))


@query(args={"list_id": v.id("lists"), "lo": v.number(), "hi": v.number()})
async def ranked(ctx, list_id, lo, hi):
    return await ctx.db.query("items").with_index(
        "by_list_rank", lambda q: q.eq("list_id", list_id).gte("rank", lo).lt("rank", hi)).collect()


@query(args={"list_id": v.id("lists")})
async def open_items(ctx, list_id):
    q = ctx.db.query("items").with_index("by_list", lambda q: q.eq("list_id", list_id))
    return [d["text"] for d in await q.filter(lambda d: not d["done"]).collect()]


@query(args={"list_id": v.id("lists"), "paginationOpts": v.any()})
async def page(ctx, list_id, paginationOpts):
    return await ctx.db.query("items").with_index("by_list", lambda q: q.eq("list_id", list_id)).paginate(paginationOpts)


@query(args={})
async def all_lists(ctx):
    return await ctx.db.query("lists").order("desc").collect()


@query(args={"id": v.id("lists")})
async def get(ctx, id):
    return await ctx.db.get(id)


@query(args={})
async def tries_to_write(ctx):
    await ctx.db.insert("lists", {"name": "nope"})


@internal_query(args={})
async def secret(ctx):
    return "internal"


@action(args={"name": v.string()})
async def create_via_action(ctx, name):
    await asyncio.sleep(0)
    list_id = await ctx.run_mutation("lists:create", {"name": name})
    got = await ctx.run_query("lists:get", {"id": list_id})
    return {"id": list_id, "name": got["name"], "secret": await ctx.run_query("lists:secret", {})}
